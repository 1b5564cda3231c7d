"""Distillation benchmark on synthetic drives whose ground truth is withheld from the student.

    PYTHONPATH=src python benchmarks/distill.py --out .bench/distill --threads 2 [--quick]

1. Render drives (KITTI format, exact dense depth + LiDAR-like annotations).
2. Teacher: a DPT-Hybrid-sized variant (ResNet-50 + 12 ViT-B blocks, 256-wide decoder) trained on the
   dense depth of drives 1-3 (validated on drive 4).
3. Distil it into the student on drives 5-9 given only as image folders (no ground truth passed);
   score teacher, student and the best constant depth on drive 10's annotations; speed-up measured
   in the same process (the distillation report).
4. Labelled data cut to one drive: a teacher trained on drive 1 alone, distilled on the 5x more
   unlabelled frames of drives 5-9 (alone, and with drive 1's ground truth beside the labels:
   ``distill --labelled-root``), against the same student trained for the same steps on drive 1; and
   self-training: that directly trained student as the teacher of a new one, its labels of drives 5-9
   beside drive 1's ground truth, for the same steps.
5. Labelling throughput: in this process, and on a 2-worker local Ray instance.

Writes ``OUT/results.json`` and ``OUT/results.md``; every stage is skipped when its output exists.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from fastdpt.bench import environment  # noqa: E402
from fastdpt.data.kitti import SplitEntry, read_split, write_split  # noqa: E402
from fastdpt.data.synthetic import DATE, drive_name, synth  # noqa: E402
from fastdpt.distill import DistillConfig, LabelSet, distill, label, prepare, resolve_teacher  # noqa: E402
from fastdpt.evaluation.metrics import Protocol  # noqa: E402
from fastdpt.evaluation.protocol import evaluate  # noqa: E402
from fastdpt.predict import Predictor  # noqa: E402
from fastdpt.training import TrainConfig, train  # noqa: E402

TEACHER = "r50.h8-11.heads12.softmax.f256.m0.01_0.0125@128x416"   # DPT-Hybrid-sized, a head that trains from scratch
STUDENT = "fast-effb0-f64-128x416"


def drive_entries(data: Path, drives: list[int]) -> list[SplitEntry]:
    names = {drive_name(d) for d in drives}
    rows = read_split(data / "splits" / "train_files_with_gt.txt") + read_split(data / "splits" / "val_files_with_gt.txt") \
        + read_split(data / "splits" / "test_files_with_gt.txt")
    return [e for e in rows if e.rgb.split("/")[1] in names]


def train_on(data: Path, out: Path, model: str, train_drives: list[int], val_drives: list[int], steps: int,
             batch: int, lr: float, lr_schedule: str = "constant", warmup_steps: int = 0, color: bool = False) -> Path:
    if not (out / "result.json").is_file():  # an interrupted run of the same options resumes
        resume = (out / "resume.ckpt").is_file()
        splits = out.parent / f"{out.name}-splits"
        write_split(drive_entries(data, train_drives), splits / "train.txt")
        write_split(drive_entries(data, val_drives), splits / "val.txt")
        train(TrainConfig(model=model, out=str(out), data_root=str(data), train_split=str(splits / "train.txt"),
                          val_split=str(splits / "val.txt"), dense_gt=True, max_steps=steps, epochs=10**6,
                          batch_size=batch, lr=lr, lr_schedule=lr_schedule, warmup_steps=warmup_steps, color=color, workers=1,
                          kb_crop=False, eval_crop=None, progress=False,
                          limit_val_batches=12, val_every=max(1, steps // (len(drive_entries(data, train_drives)) // batch) // 4)),
              logger=False, resume=resume, overwrite=out.exists() and not resume)
    return out / "best.safetensors"


def footage(data: Path, out: Path, drives: list[int], name: str = "clip") -> Path:
    """The drives' camera frames as image folders ``out/<name>NN`` (the ones already there are kept)."""
    for d in drives:
        if not (out / f"{name}{d:02d}").is_dir():
            shutil.copytree(data / "raw" / DATE / drive_name(d) / "image_02" / "data", out / f"{name}{d:02d}")
    return out


def distilled(run: Path, **options) -> dict:
    """The report of the distillation in ``run``: read back when it finished, else made now."""
    if (run / "report.json").is_file():
        return json.loads((run / "report.json").read_text())
    return distill(DistillConfig(out=str(run), **options), log=lambda m: print("   ", m, flush=True))


def score(model_path: Path, data: Path, test: list[SplitEntry]) -> dict:
    res = evaluate(Predictor(model_path), test, data / "raw", data / "data_depth_annotated", Protocol())
    return {k: round(res[k], 4) for k in ("abs_rel", "rmse", "d1", "images")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".bench/distill")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher", default=TEACHER)
    ap.add_argument("--student", default=STUDENT)
    ap.add_argument("--frame-size", default="192x640")
    ap.add_argument("--frames", type=int, default=40, help="frames a drive")
    ap.add_argument("--teacher-steps", type=int, default=240)
    ap.add_argument("--student-steps", type=int, default=300)
    ap.add_argument("--teacher1-steps", type=int, default=None, help="steps of the one-drive teacher (default: --teacher-steps)")
    ap.add_argument("--student1-steps", type=int, default=None,
                    help="steps of both one-drive students, distilled and trained (default: --student-steps)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-schedule", default="constant", help="the students' schedule: constant | cosine "
                    "(not constant: their run folders and results files get the schedule's name as a suffix)")
    ap.add_argument("--warmup-steps", type=int, default=0, help="the students' learning-rate warm-up")
    ap.add_argument("--extra-clips", type=int, default=0,
                    help="render this many more drives (another seed) as more unlabelled footage for stage A")
    ap.add_argument("--color-jitter", action="store_true", help="the students' colour jitter (distill --color-jitter)")
    ap.add_argument("--stages", default="A,B,labelling", help="which of A (three labelled drives), B (one), labelling")
    ap.add_argument("--quick", action="store_true", help="tiny everything: checks the script runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in args.frame_size.split("x"))
    if args.quick:
        args.teacher = args.student = "effb0.h0-1.heads4.softmax.f16.m0.01_0.0125@64x192"
        args.frames, args.teacher_steps, args.student_steps, size = 12, 6, 6, (96, 320)
        args.teacher1_steps = args.student1_steps = None
    stages = set(args.stages.split(","))
    tag_b = ("" if args.lr_schedule == "constant" else f"-{args.lr_schedule}") + ("-jitter" if args.color_jitter else "")
    tag = tag_b + (f"-extra{args.extra_clips}" if args.extra_clips else "")
    args.teacher1_steps = args.teacher1_steps or args.teacher_steps
    args.student1_steps = args.student1_steps or args.student_steps
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "splits").is_dir():
        synth(data, drives=10, frames=args.frames, size=size, seed=7, workers=2)
    test = read_split(data / "splits" / "test_files_with_gt.txt")  # drive 10
    clips = footage(data, out / "footage", [5, 6, 7, 8, 9])
    clips_a = clips
    if args.extra_clips:
        extra = out / f"data-extra{args.extra_clips}"
        if not (extra / "splits").is_dir():
            synth(extra, drives=max(2, args.extra_clips), frames=args.frames, size=size, seed=8, workers=2)
        clips_a = footage(data, out / f"footage-extra{args.extra_clips}", [5, 6, 7, 8, 9])
        footage(extra, clips_a, list(range(1, args.extra_clips + 1)), name="extra")
    results: dict = {"machine": environment(), "threads": args.threads, "teacher": args.teacher, "student": args.student,
                     "frame_size": f"{size[0]}x{size[1]}", "teacher_steps": args.teacher_steps,
                     "teacher1_steps": args.teacher1_steps,
                     "student_steps": args.student_steps, "student1_steps": args.student1_steps,
                     "lr_schedule": args.lr_schedule, "warmup_steps": args.warmup_steps,
                     "extra_clips": args.extra_clips, "color_jitter": args.color_jitter,
                     "command": " ".join(sys.argv)}

    def stage(name: str) -> None:
        print(f"[{time.perf_counter() - t0:7.0f} s] {name}", flush=True)

    common = dict(student=args.student, frames=(str(clips_a),), steps=args.student_steps, batch_size=4, lr=args.lr,
                  lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, color_jitter=args.color_jitter,
                  data_workers=1, threads=args.threads, progress=False, bench_runs=3 if args.quick else 7,
                  gt_root=str(data / "data_depth_annotated"), gt_split=str(data / "splits" / "test_files_with_gt.txt"),
                  gt_raw_root=str(data / "raw"), flicker_frames=20)
    if stages & {"A", "labelling"}:
        # A: labelled drives 1-3 (+4 to validate) -> teacher -> distilled on drives 5-9
        stage("teacher on drives 1-3")
        teacher = train_on(data, out / "teacher-3drives", args.teacher, [1, 2, 3], [4], args.teacher_steps, 2, args.lr)
    if "A" in stages:
        stage(f"distilling it on drives 5-9{f' and {args.extra_clips} more clips' if args.extra_clips else ''}")
        run_a = out / f"distill-3drives{tag}"
        rep = distilled(run_a, teacher=str(teacher), **common)
        g = rep["ground_truth"]
        results["A"] = {"teacher": g["teacher"], "student": g["student"], "best_constant": g["best_constant"],
                        "agreement": rep["agreement"]["student"], "speedup": rep["speedup"], "models": rep["models"],
                        "flicker": rep.get("flicker"), "times": rep["times"], "label_fps_here": rep["labels"]["fps"]}
    if "B" in stages:
        # B: one labelled drive
        stage("teacher on drive 1 alone")
        # run folders named by their steps: a run with other steps never reuses one
        teacher1 = train_on(data, out / f"teacher-1drive-{args.teacher1_steps}", args.teacher, [1], [1],
                            args.teacher1_steps, 2, args.lr)
        stage("distilling it on drives 5-9 (5x the frames)")
        run_b = out / f"distill-1drive{tag_b}-t{args.teacher1_steps}-{args.student1_steps}"
        one_drive = {**common, "frames": (str(clips),), "flicker_frames": 0, "steps": args.student1_steps}
        rep_b = distilled(run_b, teacher=str(teacher1), **one_drive)
        stage("distilling it on drives 5-9 with drive 1's ground truth beside the labels")
        run_m = out / f"distill-1drive-gt{tag_b}-t{args.teacher1_steps}-{args.student1_steps}"
        split_1 = write_split(drive_entries(data, [1]), out / "drive1-split.txt")
        with_gt = {**one_drive, "labelled_root": str(data), "labelled_split": str(split_1)}
        rep_m = distilled(run_m, teacher=str(teacher1), **with_gt)
        stage("the student trained on drive 1 for the same steps")
        direct = train_on(data, out / f"student-1drive{tag_b}-{args.student1_steps}", args.student, [1], [1], args.student1_steps, 4, args.lr,
                          args.lr_schedule, args.warmup_steps, args.color_jitter)
        stage("self-training: that student labels drives 5-9, a new one learns from them beside drive 1's ground truth")
        run_s = out / f"selftrain-1drive{tag_b}-{args.student1_steps}"
        rep_s = distilled(run_s, teacher=str(direct), warm_start=False, **with_gt)  # from scratch, as direct
        results["B"] = {"teacher": rep_b["ground_truth"]["teacher"], "distilled": rep_b["ground_truth"]["student"],
                        "distilled_with_gt": rep_m["ground_truth"]["student"],
                        "self_trained": rep_s["ground_truth"]["student"],
                        "direct": score(direct, data, test), "best_constant": rep_b["ground_truth"]["best_constant"]}
    if "labelling" in stages:
        # labelling throughput on a 2-worker local Ray instance (in-process labelling: A's report)
        stage("labelling on 2 local Ray workers")
        t = resolve_teacher(teacher)
        ray_labels = LabelSet(out / "labels-ray")
        if ray_labels.root.exists():
            shutil.rmtree(ray_labels.root)
        prepare(ray_labels, t, [clips], max_frames=80 if not args.quick else 12)
        here_labels = LabelSet(out / "labels-here")
        if here_labels.root.exists():
            shutil.rmtree(here_labels.root)
        prepare(here_labels, t, [clips], max_frames=80 if not args.quick else 12)
        here_ticks: list[tuple[int, float]] = []
        ray_ticks: list[tuple[int, float]] = []
        here = label(here_labels, t, threads=args.threads, progress=lambda n, *_: here_ticks.append((n, time.perf_counter())))
        ray = label(ray_labels, t, workers=2, threads=1, shard_size=4,
                    progress=lambda n, *_: ray_ticks.append((n, time.perf_counter())))
        results["labelling"] = {"frames": ray.labelled, "here_fps": round(here.fps, 3), "ray2_fps": round(ray.fps, 3),
                                "here_steady_fps": steady_fps(here_ticks), "ray2_steady_fps": steady_fps(ray_ticks),
                                "ray_seconds_incl_start": round(ray.seconds, 1), "here_seconds": round(here.seconds, 1)}
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / f"results{tag}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"results{tag}.md").write_text(markdown(results))
    print(markdown(results))


def steady_fps(ticks: list[tuple[int, float]]) -> float | None:
    """Frames/s after the first result came back (the workers' start and the teacher's first-call
    compilation left out)."""
    if len(ticks) < 2:
        return None
    (n0, t0), (n1, t1) = ticks[0], ticks[-1]
    return round((n1 - n0) / (t1 - t0), 3)


def markdown(r: dict) -> str:
    """The stages that ran, as BENCHMARKS.md shows them."""
    a, b, lab = r.get("A"), r.get("B"), r.get("labelling")
    rows = [f"Machine: {r['machine']['processor']}, {r['threads']} torch threads, torch {r['machine']['torch']}, "
            f"Python {r['machine']['python']}. Frames {r['frame_size']}; teacher `{r['teacher']}` "
            f"({r['teacher_steps']} steps; the one-drive teacher {r.get('teacher1_steps', r['teacher_steps'])}), student `{r['student']}` "
            f"({r['student_steps']} steps; both one-drive students {r.get('student1_steps', r['student_steps'])}; "
            f"lr schedule {r.get('lr_schedule', 'constant')}, warm-up {r.get('warmup_steps', 0)}). Command: "
            f"`{r['command']}` ({r['wall_s']:.0f} s in all).", ""]
    named = []
    if a:
        named += [("teacher (drives 1-3 labelled)", a["teacher"]), ("student distilled on drives 5-9", a["student"]),
                  ("best constant", a["best_constant"])]
    if b:
        named += [("teacher (drive 1 labelled)", b["teacher"]), ("student distilled from it on drives 5-9", b["distilled"])]
        if b.get("distilled_with_gt"):
            named.append(("the same with drive 1's ground truth beside the labels", b["distilled_with_gt"]))
        named.append(("student trained on drive 1, same steps", b["direct"]))
        if b.get("self_trained"):
            named.append(("self-trained: that student's labels of drives 5-9 beside drive 1's ground truth",
                          b["self_trained"]))
    if named:
        rows += ["| drive 10 (held out, LiDAR-like GT, Garg crop) | AbsRel | RMSE | d1 |", "|---|---|---|---|"]
        rows += [f"| {name} | {m['abs_rel']:.4f} | {m['rmse']:.3f} | {m['d1']:.3f} |" for name, m in named]
        rows.append("")
    if a:
        ratio = a["student"]["abs_rel"] / a["teacher"]["abs_rel"]
        gain = 1 - a["student"]["abs_rel"] / a["best_constant"]["abs_rel"]
        ms = a["models"]
        rows.append(f"Student / teacher AbsRel: {ratio:.3f} (target <= 1.15); student vs best constant: {gain:+.1%} "
                    f"(target >= 25 %); speed-up {a['speedup']}x through torch fp32 (student {ms['student']['median_ms']} ms, "
                    f"teacher {ms['teacher']['median_ms']} ms a frame, whole online step, interleaved; target >= 5x). "
                    f"Time: labelling {a['times']['label_s']:.0f} s, student training {a['times']['train_s']:.0f} s.")
    if b:
        with_gt = f", with the ground truth beside the labels {b['distilled_with_gt']['abs_rel']:.4f}" \
            if b.get("distilled_with_gt") else ""
        rows.append(f"One labelled drive: distilled {b['distilled']['abs_rel']:.4f}{with_gt} vs trained directly "
                    f"{b['direct']['abs_rel']:.4f}.")
    if lab:
        rows.append(f"Labelling {lab['frames']} frames: {lab['here_fps']} frames/s in this process "
                    f"({r['threads']} threads), {lab['ray2_fps']} frames/s on 2 local Ray workers of 1 thread "
                    f"(including the workers' start); after the first result: {lab.get('here_steady_fps')} here, "
                    f"{lab.get('ray2_steady_fps')} on Ray.")
    return "\n".join(rows) + "\n"

if __name__ == "__main__":
    main()
