"""Distillation on synthetic KITTI-format drives with tiny variants: a teacher trained here labels frames
of other drives given only as images; the student learns from the labels and agrees with the teacher
far better than a constant; labelling resumes without relabelling (teacher calls counted), refuses a
second teacher, runs on a real Ray cluster started with `ray start --head`, and gives the same labels
for a video and for the image folder of the same frames."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("lightning")
pytest.importorskip("mlflow")

import torch  # noqa: E402

import fastdpt  # noqa: E402
from fastdpt.cli import app  # noqa: E402
from fastdpt.data.kitti import read_split  # noqa: E402
from fastdpt.data.synthetic import DATE, drive_name, synth  # noqa: E402
from fastdpt.distill import (DistillConfig, DistillError, LabelError, LabelSet, discover, distill, label,  # noqa: E402
                             prepare, resolve_teacher, sample)
from fastdpt.distill.labels import teacher_predictor, to_label  # noqa: E402
from fastdpt.evaluation.metrics import score_image  # noqa: E402
from fastdpt.io import read_depth_png, read_image  # noqa: E402
from fastdpt.training import train  # noqa: E402
from conftest import TRAIN_MODEL, ray_head, train_config  # noqa: E402

STUDENT = "effb0.h0-1.heads4.softmax.f16.m0.01_0.0125@64x192"  # another decoder width: a partial warm start


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth(out, drives=5, frames=24, size=(96, 320), seed=4, workers=2)
    return out


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A tiny metric teacher trained on drives 1-3 (a few epochs: non-trivial, far from perfect)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(train_config(data, run, epochs=5, batch_size=4), logger=False)
    return run / "best.safetensors"


@pytest.fixture(scope="module")
def frames(data, tmp_path_factory):
    """Drives 4 and 5 as plain image folders: no ground truth, no calibration, no split lists."""
    root = tmp_path_factory.mktemp("frames") / "footage"
    for d in (4, 5):
        shutil.copytree(data / "raw" / DATE / drive_name(d) / "image_02" / "data", root / f"clip{d}")
    return root


def test_sources_sampling_and_near_duplicates(tmp_path, data):
    folder = tmp_path / "parked"
    folder.mkdir()
    frame = read_image(data / "raw" / DATE / drive_name(1) / "image_02" / "data" / "0000000000.png")
    moving = read_image(data / "raw" / DATE / drive_name(1) / "image_02" / "data" / "0000000010.png")
    rng = np.random.default_rng(0)
    for i in range(6):  # a parked car: the same view with sensor noise, then the car moves
        noisy = np.clip(frame.astype(int) + rng.integers(-2, 3, frame.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "0006.png"), cv2.cvtColor(moving, cv2.COLOR_RGB2BGR))
    (folder / "0007.png").write_bytes(b"not an image")
    cv2.imwrite(str(folder / "0008.png"), moving[:1, :1])  # a 1x1 image: no frame of footage (it became a
    cv2.imwrite(str(folder / "0009.png"), moving[:31])      # whole held-out set, timed for the speed-up)
    seqs = discover([folder])
    kept = []
    counts = sample(seqs, on_frame=lambda s: kept.append(s.index))
    assert kept == [0, 6]  # 5 near-duplicates skipped, the moved view kept
    assert (counts.duplicates, counts.unreadable, counts.too_small, counts.seen) == (5, 1, 2, 10)
    assert [s.index for s in _sampled(seqs, every=2)] == [0, 6]
    assert len(_sampled(seqs, duplicate_level=0)) == 7
    # a KITTI raw root: one sequence a drive, frame numbers kept, focal from the calibration
    kitti = discover([data / "raw"])
    assert [s.name for s in kitti] == [drive_name(i) for i in range(1, 6)]
    assert kitti[0].focal == pytest.approx(float(read_split(data / "splits" / "train_files_with_gt.txt")[0].focal), rel=1e-4)


def _sampled(seqs, **kw):
    out = []
    sample(seqs, on_frame=out.append, **kw)
    return out


def test_bad_sources_are_one_line(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(fastdpt.FastDPTError, match="not a video file"):
        discover([text])
    with pytest.raises(fastdpt.FastDPTError, match="not found"):
        discover([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(fastdpt.FastDPTError, match="holds no video"):
        discover([empty])


def test_labelling_resumes_without_relabelling_and_refuses_a_second_teacher(tmp_path, teacher, frames):
    t = resolve_teacher(teacher)
    labels = LabelSet(tmp_path / "labels")
    m = prepare(labels, t, [frames])
    planned = labels.frames()
    assert len(planned) == 48 and m["counts"]["kept"] == 48
    # held out by sequence: clip5 whole, clip4 whole for training
    assert {r.split("/")[1] for r in labels.frames("val")} == {"footage-clip5"}
    assert {r.split("/")[1] for r in labels.frames("train")} == {"footage-clip4"}
    first = label(labels, t, stop_after=10, backend="torch")  # an interruption after 10 frames
    assert first.teacher_frames == 10 and first.labelled == 10
    stamp = {r: labels.dense(r).stat().st_mtime_ns for r in planned if labels.done(r)}
    assert len(stamp) == 10
    again = label(labels, t, backend="torch")
    assert again.teacher_frames == 38 and again.already == 10  # never relabels a finished frame
    assert all(labels.dense(r).stat().st_mtime_ns == stamp[r] for r in stamp)
    assert all(labels.done(r) for r in planned)
    # the labels are the teacher's depth (through the runtime that labelled: torch, bf16 on a CPU that
    # runs it natively), as metres and as KITTI 16-bit PNGs. Frames are labelled LABEL_BATCH at a time: in
    # fp32 a batch gives each frame's depth to 1e-4; in bf16 a batch takes other kernels than one frame, so
    # the label is the frame's depth within bf16's rounding (8-bit mantissa through a dozen layers)
    pred = teacher_predictor(t, backend="torch")
    rel = planned[7]
    expected = pred.predict(read_image(labels.frame(rel))).depth
    got = labels.read_label(rel)
    if pred.choice.precision == "bf16":
        err = np.abs(got - expected) / expected
        assert np.median(err) < 1e-2 and err.max() < 5e-2, (np.median(err), err.max())
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(read_depth_png(labels.annotation(rel)), got, atol=1 / 256 + 1e-3)
    # a second teacher is refused in the same folder, and a plain re-run without --resume too
    other = tmp_path / "other.safetensors"
    fastdpt.save_checkpoint(fastdpt.create_model(TRAIN_MODEL), other)
    with pytest.raises(LabelError, match="another teacher"):
        prepare(labels, resolve_teacher(other), [frames], resume=True)
    with pytest.raises(LabelError, match="--resume"):
        prepare(labels, t, [frames])
    # the label folder is a normal data root for `fastdpt train --dense-gt`
    res = train(train_config(labels.root, tmp_path / "run", epochs=1, max_steps=2, dense_gt=True, batch_size=2),
                logger=False)
    assert res["global_step"] == 2


def test_a_video_and_its_image_folder_give_the_same_labels(tmp_path, data, teacher):
    src = data / "raw" / DATE / drive_name(4) / "image_02" / "data"
    files = sorted(src.glob("*.png"))[:8]
    folder = tmp_path / "clip"
    folder.mkdir()
    h, w = read_image(files[0]).shape[:2]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (w, h))  # lossless
    for i, f in enumerate(files):
        shutil.copy(f, folder / f"frame{i:03d}.png")
        writer.write(cv2.imread(str(f)))
    writer.release()
    t = resolve_teacher(teacher)
    out = {}
    for name, source in (("video", video), ("images", folder)):
        labels = LabelSet(tmp_path / name)
        prepare(labels, t, [source], every=2)
        label(labels, t, backend="auto")  # the fastest CPU backend installed, for both sources alike
        out[name] = {int(Path(r).stem): labels.read_label(r) for r in labels.frames()}
    # frames 0, 2, 4, 6 sampled; one sequence: 0, 2 train, 4 the gap (unlabelled), 6 held out
    assert sorted(out["video"]) == sorted(out["images"]) == [0, 2, 6]
    for k in out["video"]:
        np.testing.assert_array_equal(out["video"][k], out["images"][k])


@pytest.mark.ray
def test_labelling_on_a_ray_cluster_matches_labelling_here(tmp_path, teacher, frames):
    pytest.importorskip("ray")
    t = resolve_teacher(teacher)
    here = LabelSet(tmp_path / "here")
    prepare(here, t, [frames], max_frames=20)
    label(here, t, backend="torch")
    there = LabelSet(tmp_path / "there")
    prepare(there, t, [frames], max_frames=20)
    # a real `ray start --head` on 127.0.0.1 with 2 CPUs, reached by its address: 2 actors of 1 CPU each;
    # the driver is a process of its own (as a user's command is), so this test process never joins a cluster
    script = ("import json, sys; from fastdpt.distill import LabelSet, label, resolve_teacher; "
              "s = label(LabelSet(sys.argv[1]), resolve_teacher(sys.argv[2]), address=sys.argv[3], workers=2, "
              "shard_size=4, fail_once=sys.argv[4], backend='torch'); print(json.dumps(s.as_dict()))")
    with ray_head(cpus=2) as address:
        r = subprocess.run([sys.executable, "-c", script, str(there.root), str(teacher), address,
                            str(tmp_path / "failed-once")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["workers"] == 2 and stats["retries"] == 1  # the injected failure was retried on the cluster
    assert stats["teacher_frames"] == len(there.frames()) == 19  # 20 sampled, one left out as the gap
    # the teacher runs in torch's auto precision: float32, or bf16 on CPUs with native bf16 (AMX, AVX-512
    # BF16), where the actors' other thread count changes the bf16 accumulation order: up to ~1 % apart
    p = teacher_predictor(t, backend="torch")
    bf16 = p.options.precision == "bf16"
    p.close()
    for r in here.frames():
        np.testing.assert_allclose(there.read_label(r), here.read_label(r),
                                   rtol=3e-2 if bf16 else 1e-4, atol=1e-2 if bf16 else 1e-5)


def test_distilled_student_agrees_with_the_teacher(tmp_path, data, teacher, frames):
    cfg = DistillConfig(teacher=str(teacher), student=STUDENT, frames=(str(frames),), out=str(tmp_path / "d"),
                        epochs=12, batch_size=4, lr=1e-3, data_workers=0, progress=False, bench_runs=2,
                        flicker_frames=8, gt_root=str(data / "data_depth_annotated"),
                        gt_split=str(data / "splits" / "test_files_with_gt.txt"), gt_raw_root=str(data / "raw"),
                        teacher_backend="torch")
    report = distill(cfg, log=lambda m: None)
    out = Path(cfg.out)
    student = fastdpt.load(out / "student.safetensors")
    assert student.config.name == fastdpt.get_config(STUDENT).name
    # agreement, computed here from the files: the student against the teacher's labels on the held-out
    # clip, as the KITTI-format annotations the report scores against (16-bit PNG: a label a hair under
    # 80 m, where the teacher saturates, rounds to 80 m and leaves the valid range there)
    labels = LabelSet(out / "labels")
    pred_s = fastdpt.Predictor(student)
    rels = labels.frames("val")
    student_rel, constant_rel = [], []
    depth_t = [read_depth_png(labels.annotation(r)) for r in rels]
    c = float(np.median(np.concatenate([d[(d > 1e-3) & (d < 80)] for d in depth_t])))
    for r, dt in zip(rels, depth_t):
        ds = pred_s.predict(read_image(labels.frame(r))).depth
        student_rel.append(score_image(ds, dt, crop=None)["abs_rel"])
        constant_rel.append(score_image(np.full_like(dt, c), dt, crop=None)["abs_rel"])
    assert np.mean(student_rel) < 0.5 * np.mean(constant_rel), (np.mean(student_rel), np.mean(constant_rel))
    assert report["agreement"]["student"]["abs_rel"] == pytest.approx(np.mean(student_rel), rel=0.05)
    assert report["agreement"]["student"]["abs_rel"] < report["agreement"]["best_constant"]["abs_rel"]
    # the report: ground truth of the test drive, speed measured here, sizes, flicker, times
    assert report["ground_truth"]["student"]["images"] > 0 and report["ground_truth"]["teacher"]["images"] > 0
    assert report["models"]["student"]["params"] == sum(p.numel() for p in student.parameters())
    assert report["speedup"] > 0 and report["flicker"]["student"] is not None
    # and on the default runtime, each model resolved as `--backend auto --precision auto` resolves it here
    from fastdpt.runtime import RuntimeOptions

    d, (auto, _) = report["default_runtime"], RuntimeOptions("auto", "auto", "cpu", 2).resolve()
    assert d["runtime"]["student"] == d["runtime"]["teacher"] == f"{auto.backend} {auto.precision}"
    assert d["speedup"] == pytest.approx(d["teacher"]["median_ms"] / d["student"]["median_ms"], rel=1e-2)
    assert f"**{d['speedup']}x**" in (out / "report.md").read_text()
    assert report["times"]["label_s"] > 0 and report["times"]["train_s"] > 0
    assert json.loads((out / "report.json").read_text())["speedup"] == report["speedup"]
    assert "Agreement with the teacher" in (out / "report.md").read_text()
    # an ordinary checkpoint: predict takes it
    res = CliRunner().invoke(app, ["predict", str(labels.frame(rels[0])), "-m", str(out / "student.safetensors"),
                                   "-o", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["bench", str(out / "student.safetensors"), "--input-size", "96x320", "--runs", "1",
                                   "--warmup", "0", "--threads", "2", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["name"] == str(out / "student.safetensors") and row["canonical"] == student.config.name
    # a second run into the same folder is refused; --resume finds everything done and trains nothing
    with pytest.raises(DistillError, match="already holds a distillation"):
        distill(cfg, log=lambda m: None)
    steps = report["training"]["global_step"]
    again = distill(cfg, resume=True, log=lambda m: None)
    assert again["training"]["global_step"] == steps and again["labels"]["labelled"] == 0


def test_colour_jitter_reaches_the_student_and_runs_from_before_it_resume_without_it(tmp_path, teacher, frames):
    from fastdpt.data.augment import Augment
    from fastdpt.distill.run import _check_out
    from fastdpt.distill.run import train_config as student_options

    cfg = DistillConfig(teacher=str(teacher), frames=(str(frames),), out=str(tmp_path / "d"), color_jitter=True,
                        warm_start=False)
    assert student_options(cfg, "silog", resolve_teacher(teacher), LabelSet(tmp_path / "labels")).color is True
    assert student_options(DistillConfig(**{**cfg.as_dict(), "color_jitter": False}), "silog",
                           resolve_teacher(teacher), LabelSet(tmp_path / "labels")).color is False
    # what the jitter does to a frame: gamma, brightness and each channel's gain in [0.9, 1.1], depth untouched
    rng = np.random.default_rng(0)
    image = rng.uniform(0.05, 1.0, (24, 40, 3)).astype(np.float32)
    depth = rng.uniform(1, 80, (24, 40)).astype(np.float32)
    torch.manual_seed(0)
    seen = []
    for _ in range(6):
        im, d = Augment(hflip=0.0, kb_crop=False, color=True)(image, depth.copy())
        np.testing.assert_array_equal(d, depth)
        assert np.all(im >= np.minimum(1, image**1.1 * 0.81) - 1e-6) and np.all(im <= np.minimum(1, image**0.9 * 1.21) + 1e-6)
        seen.append(im)
    assert all(np.abs(a - b).max() > 1e-3 for a, b in zip(seen, seen[1:]))  # a new draw each time
    # a run made before --lr-schedule/--warmup-steps/--color-jitter existed resumes as made: without them
    old = tmp_path / "old"
    old.mkdir()
    stored = {k: v for k, v in DistillConfig(teacher=str(teacher), frames=(str(frames),), out=str(old)).as_dict().items()
              if k not in ("lr_schedule", "warmup_steps", "color_jitter")}
    (old / "distill.json").write_text(json.dumps({"config": stored}))
    _check_out(old, DistillConfig(**{**stored, "out": str(old), "color_jitter": False}), resume=True)
    with pytest.raises(DistillError, match="color_jitter False \\(run\\) vs True"):  # today's default: jitter on
        _check_out(old, DistillConfig(**{**stored, "out": str(old)}), resume=True)
    from fastdpt.distill.config import resume_values

    # `fastdpt distill --teacher T --out OLD --resume` takes the run's own: no jitter
    assert resume_values({**DistillConfig(teacher=str(teacher), out=str(old)).as_dict()}, {"teacher", "out"})[
        "color_jitter"] is False


def test_resume_takes_the_runs_own_options_for_those_not_passed(tmp_path, teacher, frames, monkeypatch):
    """`fastdpt distill --teacher T --out DIR --resume` continues the run as it was made (its frames, steps,
    colour jitter ... from distill.json); an option passed again is kept, and a changed one is still refused
    by the run's check; without --resume nothing is taken from the folder."""
    import fastdpt.distill as distill_module
    from fastdpt.distill.run import _check_out

    out = tmp_path / "run"
    out.mkdir()
    made = DistillConfig(teacher=str(teacher), frames=(str(frames),), out=str(out), steps=7, color_jitter=True,
                         lr=1e-3, hflip=True, every=2)
    (out / "distill.json").write_text(json.dumps({"config": made.as_dict()}))
    (out / "train").mkdir()  # it got as far as training (a run stopped while sampling may start over)
    seen = []

    def interrupted(cfg, **kwargs):
        seen.append(cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(distill_module, "distill", interrupted)
    runner = CliRunner()
    base = ["distill", "--teacher", str(teacher), "--out", str(out)]
    assert runner.invoke(app, base + ["--resume"]).exit_code == 130
    assert seen[-1] == made
    _check_out(out, seen[-1], resume=True)  # the run's check accepts it
    assert runner.invoke(app, base + ["--resume", "--steps", "9", "--lr", "1e-3"]).exit_code == 130
    assert seen[-1] == DistillConfig(**{**made.as_dict(), "frames": made.frames, "steps": 9})
    assert runner.invoke(app, base + ["--resume", "--lr", "2e-3"]).exit_code == 130
    assert seen[-1].lr == 2e-3 and seen[-1].color_jitter is True
    with pytest.raises(DistillError, match="lr 0.001 \\(run\\) vs 0.002"):
        _check_out(out, seen[-1], resume=True)
    assert runner.invoke(app, base + ["--frames", str(frames)]).exit_code == 130
    assert seen[-1].every == 1 and seen[-1].steps is None  # today's defaults: the run check refuses it
    with pytest.raises(DistillError, match="already holds a distillation"):
        _check_out(out, seen[-1], resume=False)


def test_distill_refusals_are_one_line(tmp_path, teacher, frames):
    runner = CliRunner()
    relative_teacher = tmp_path / "relative.safetensors"
    fastdpt.save_checkpoint(fastdpt.create_model("effb0.h0-1.heads4.softmax.f16@64x192"), relative_teacher)
    res = runner.invoke(app, ["distill", "--teacher", str(relative_teacher), "--student", STUDENT, "--frames",
                              str(frames), "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "no scale to learn" in res.output and len(res.output.strip().splitlines()) <= 3
    assert not (tmp_path / "a").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    res = runner.invoke(app, ["distill", "--teacher", str(teacher), "--frames", str(frames), "--out", str(busy)])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (busy / "mine.txt").read_text() == "keep me" and len(list(busy.iterdir())) == 1
    res = runner.invoke(app, ["distill", "--teacher", "dpt-hybrid-kitti", "--teacher-weights", str(tmp_path / "nope.pt"),
                              "--frames", str(frames), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["distill", "--teacher", str(teacher), "--frames", str(tmp_path / "missing"),
                              "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "not found" in res.output
    # frames with ground truth: a wrong root or split list is one line before anything is written
    for extra, says in (([str(tmp_path / "nowhere")], "labelled data root not found"),
                        ([str(frames), "--labelled-split", str(tmp_path / "no.txt")], "split list of the labelled")):
        res = runner.invoke(app, ["distill", "--teacher", str(teacher), "--frames", str(frames), "--out",
                                  str(tmp_path / "e"), "--labelled-root", *extra])
        assert res.exit_code == 2 and says in res.output and len(res.output.strip().splitlines()) <= 3, res.output
        assert not (tmp_path / "e").exists()


def test_a_run_stopped_by_a_bad_source_starts_over_in_place_and_a_busy_folder_is_refused(tmp_path, teacher, frames):
    """Unreadable footage is found while sampling, after the run folder was made: the user fixes the source and
    runs again into the same --out, which starts over (nothing was labelled); a folder another distillation
    holds is refused; a run that got further is never started over."""
    from fastdpt.training.run import run_lock

    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(4):
        (broken / f"{i:04d}.png").write_bytes(b"not a png at all " * 40)
    out = tmp_path / "d"

    def cfg(src):
        return DistillConfig(teacher=str(teacher), student=STUDENT, frames=(str(src),), out=str(out), steps=1,
                             batch_size=2, max_frames=16, data_workers=0, progress=False, bench_runs=1,
                             flicker_frames=0, warm_start=False, teacher_backend="torch")

    with pytest.raises(fastdpt.FastDPTError, match="no frame left to label"):
        distill(cfg(broken), log=lambda m: None)
    assert (out / "distill.json").is_file() and LabelSet(out / "labels").manifest()["planned"] is False
    with run_lock(out, "distillation"):  # another run holds the folder: refused, nothing removed
        with pytest.raises(fastdpt.FastDPTError, match="in use by another distillation"):
            distill(cfg(frames), log=lambda m: None)
    assert (out / "distill.json").is_file() and (out / "labels" / "manifest.json").is_file()
    said = []
    report = distill(cfg(frames), log=said.append)
    assert any("starting over" in m for m in said), said
    m = LabelSet(out / "labels").manifest()
    assert m["planned"] and m["options"]["sources"] == [str(frames.resolve())]
    assert not any("broken" in s["source"] for s in m["sequences"].values())
    assert report["training"]["global_step"] == 1 and (out / "student.safetensors").is_file()
    with pytest.raises(DistillError, match="already holds a distillation"):  # a finished run stays as it is
        distill(cfg(broken), log=lambda m: None)
    assert (out / "student.safetensors").is_file()


def test_a_teacher_whose_labels_lie_beyond_the_scored_range_is_warned_of_and_still_gets_a_report(tmp_path, frames):
    """A metric teacher that sees everything at 172.7 m (an untrained KITTI head: DPT's largest depth) gives
    labels outside the 1e-3..80 m that agreement is scored in: a warning before training, and a report
    that says agreement was not scored, instead of a crash after the training (IndexError before)."""
    model = fastdpt.create_model("effb0.h0-1.heads4.softmax.f32.kitti@64x192")
    with torch.no_grad():
        model.head[4].weight.zero_()
        model.head[4].bias.zero_()
    far = tmp_path / "far.safetensors"
    fastdpt.save_checkpoint(model, far)
    said = []
    cfg = DistillConfig(teacher=str(far), student=STUDENT, frames=(str(frames),), out=str(tmp_path / "d"), steps=1,
                        batch_size=2, max_frames=16, data_workers=0, progress=False, bench_runs=1, flicker_frames=0,
                        teacher_backend="torch")
    with pytest.warns(UserWarning, match="median depth of 172.7 m"):  # a warning, not progress: there without it
        report = distill(cfg, log=said.append)
    assert report["agreement"]["student"] is None and report["agreement"]["best_constant"] is None
    assert "NaN" not in (tmp_path / "d" / "report.json").read_text()
    assert json.loads((tmp_path / "d" / "report.json").read_text())["agreement"]["best_constant"] is None
    res = CliRunner().invoke(app, ["distill", "--teacher", str(far), "--student", STUDENT, "--out", str(tmp_path / "d"),
                                   "--resume", "--no-progress"])
    assert res.exit_code == 0 and "not scored" in res.output, res.output


def test_relative_labels_are_depth_like_and_invert_to_the_teacher():
    inv = np.array([[4.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    lab = to_label(inv, "relative")
    valid = lab > 0
    assert not valid[1, 1]
    ratio = (1.0 / lab[valid]) / inv[valid]  # the teacher's inverse depth up to one scale
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    assert np.median(lab[valid]) == pytest.approx(10.0)


def test_frames_with_ground_truth_join_the_training_split_and_mixed_sizes_train(tmp_path, data, teacher, frames):
    """--labelled-root: drive 1's frames and exact depth are copied in as training frames the teacher never
    labels; a labelled frame that is also held out is refused; frames of two sizes train on random crops."""
    from fastdpt.data.kitti import SplitEntry, collate, find_gt, write_split
    from fastdpt.distill.run import train_config as student_options
    from fastdpt.training.run import build
    from fastdpt.errors import DataError

    t = resolve_teacher(teacher)
    drive1 = [e for e in read_split(data / "splits" / "train_files_with_gt.txt") if drive_name(1) in e.rgb and e.gt]
    split = write_split(drive1[:6], tmp_path / "drive1.txt")
    # footage of another size beside the 96x320 clips: a third source, resized
    small = tmp_path / "small"
    small.mkdir()
    for i, f in enumerate(sorted((frames / "clip4").iterdir())[:8]):
        cv2.imwrite(str(small / f"{i:04d}.png"), cv2.resize(cv2.imread(str(f)), (300, 88)))
    labels = LabelSet(tmp_path / "labels")
    m = prepare(labels, t, [frames, small], val_sources=[frames / "clip5"], labelled_root=data, labelled_split=split)
    # clip5 is in --frames' folder and held out: held out only (never trained on)
    assert {r.split("/")[1] for r in labels.frames("val")} == {"clip5"}
    assert not any("clip5" in r for r in labels.frames("train"))
    gt = labels.frames(ground_truth=True)
    assert len(gt) == 6 and m["counts"]["ground_truth"] == 6
    assert len(labels.frames()) == 56 and not set(gt) & set(labels.frames())  # the teacher's frames only
    assert set(gt) <= {e.rgb for e in read_split(labels.split_path("train"))}
    assert not set(gt) & {e.rgb for e in read_split(labels.split_path("val"))}
    for rel, e in zip(gt, drive1):  # the frame and its exact dense depth, as given
        np.testing.assert_array_equal(read_image(labels.frame(rel)), read_image(data / "raw" / e.rgb))
        exact = np.load(data / "dense" / e.rgb.split("/")[1] / "image_02" / (Path(e.rgb).stem + ".npy"))
        np.testing.assert_array_equal(labels.read_label(rel), exact)
    stats = label(labels, t, backend="torch")
    assert stats.teacher_frames == 56 and stats.ground_truth == 6  # the teacher never labels a given frame
    # frames of two sizes cannot share a batch: the student trains on random crops of the smallest
    opts = student_options(DistillConfig(teacher=str(teacher), frames=(str(frames),), out=str(tmp_path / "d"),
                                         warm_start=False, steps=2, batch_size=8, data_workers=0, progress=False),
                           "silog", t, labels)
    assert opts.random_crop == (88, 300)
    # trimming is for the teacher's errors: the frames with ground truth keep every pixel
    assert {e.rgb for e in read_split(opts.exact_split)} == set(gt)
    module, dm = build(opts)
    dm.setup()
    ds = dm.train_ds
    picked = [next(i for i, (e, _) in enumerate(ds.items) if e.rgb in set(gt)),
              next(i for i, (e, _) in enumerate(ds.items) if e.rgb not in set(gt) and "small" not in e.rgb)]
    batch = collate([ds[i] for i in picked])
    seen = []
    real = module.loss_fn
    module.loss_fn = lambda *a, **k: seen.append(k.get("exact")) or real(*a, **k)
    module.training_step(batch, 0)
    assert seen[0].tolist() == [True, False]
    res = train(opts, logger=False)
    assert res["global_step"] == 2
    # a resume with other labelled frames is refused; a labelled frame that is also held out too
    with pytest.raises(LabelError, match="labelling options"):
        prepare(labels, t, [frames, small], val_sources=[frames / "clip5"], resume=True)
    held = tmp_path / "held"
    shutil.copytree(data / "raw" / DATE / drive_name(1) / "image_02" / "data", held / "clip1")
    root = tmp_path / "root"  # drive 1 under a root whose raw frames are the held-out folder's files
    (root / "raw" / DATE / drive_name(1) / "image_02").mkdir(parents=True)
    (root / "raw" / DATE / drive_name(1) / "image_02" / "data").symlink_to(held / "clip1")
    (root / "data_depth_annotated").symlink_to(data / "data_depth_annotated")
    with pytest.raises(DataError, match="held-out"):
        prepare(LabelSet(tmp_path / "l2"), t, [frames], val_sources=[held], labelled_root=root, labelled_split=split)
    # two sources of the same folder name, one trained on and one held out, stay two sequences
    twin = tmp_path / "elsewhere" / "clip4"
    shutil.copytree(frames / "clip5", twin)
    l4 = LabelSet(tmp_path / "l4")
    prepare(l4, t, [frames / "clip4"], val_sources=[twin])
    assert len(set(l4.frames("train"))) == len(set(l4.frames("val"))) == 24
    assert {r.split("/")[1] for r in l4.frames("train")}.isdisjoint({r.split("/")[1] for r in l4.frames("val")})
    # without dense/, the label is the annotation (sparse; 0 = none)
    l3 = LabelSet(tmp_path / "l3")
    prepare(l3, t, [frames], labelled_root=root, labelled_split=write_split(
        [SplitEntry(drive1[0].rgb, drive1[0].gt, drive1[0].focal)], tmp_path / "one.txt"))
    rel = l3.frames(ground_truth=True)[0]
    np.testing.assert_array_equal(l3.read_label(rel), read_depth_png(find_gt(data / "data_depth_annotated", drive1[0].gt)))
    assert (l3.read_label(rel) == 0).mean() > 0.5


def test_unusable_teacher_weights_and_an_unwritable_out_are_one_line_before_any_work(tmp_path, teacher, frames):
    """Weights that do not fit the teacher's variant are refused before a frame is sampled or --out made (the
    mended command then runs into the same --out); an --out the file system refuses is one line, no traceback."""
    from fastdpt.weights import read_checkpoint_config, save_checkpoint

    name = read_checkpoint_config(teacher).name
    wrong = save_checkpoint(fastdpt.create_model(STUDENT), tmp_path / "other.safetensors")
    out = tmp_path / "d"
    r = CliRunner().invoke(app, ["distill", "--teacher", name, "--teacher-weights", str(wrong), "--frames", str(frames),
                                 "--student", STUDENT, "--out", str(out), "--steps", "1", "--no-progress"])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()
    if os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
        pytest.skip("/sys is writable here: no read-only folder to try")
    r = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--frames", str(frames), "--student", STUDENT,
                                 "--out", "/sys/fastdpt-test/d", "--steps", "1", "--no-progress"])
    assert r.exit_code == 2 and "/sys/fastdpt-test" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and r.exception is None or isinstance(r.exception, SystemExit)
