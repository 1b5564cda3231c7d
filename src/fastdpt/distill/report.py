"""The distillation report: the student beside its teacher on held-out frames, measured here.

Agreement: the student scored against the teacher's labels of the held-out sequences (the nine
metrics), beside the best constant depth on the same labels. Ground truth (when ``--gt-root`` and
``--gt-split`` are given): student, teacher and the best constant against it. Flicker of both on the
held-out sequences, parameters, MACs, and the whole online step of each (decode-free: resize,
normalise, network, resize back) timed in interleaved rounds in this process, so the speed-up is a
ratio measured on one machine at one time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..bench import interleaved_ms
from ..data.kitti import read_split
from ..errors import DataError, DistillError
from ..evaluation.metrics import METRIC_KEYS, Protocol
from ..evaluation.protocol import best_constant, evaluate
from ..evaluation.temporal import flicker
from ..io import atomic_write, read_image
from .labels import LabelSet, Teacher, teacher_predictor


def _sequences(labels: LabelSet, split: str, limit: int) -> list[list[str]]:
    m = labels.manifest() or {}
    return [[labels.rel(n, i) for i in s.get(split, [])[:limit]] for n, s in m.get("sequences", {}).items()
            if len(s.get(split, [])) >= 2]


def _flicker(predictor, labels: LabelSet, limit: int) -> float | None:
    scores, weights = [], []
    for rels in _sequences(labels, "val", limit):
        frames = [read_image(labels.frame(r)) for r in rels]
        depths = [predictor.predict(f).depth for f in frames]
        value = flicker(frames, depths, predictor.config.output_kind)
        if np.isfinite(value):
            scores.append(value)
            weights.append(len(rels))
    return float(np.average(scores, weights=weights)) if scores else None


def _metrics(res: dict) -> dict | None:
    """Rounded metrics; None when no frame could be scored (no depth in the scored range)."""
    if res.get("images", 1) == 0:
        return None
    return {k: round(float(res[k]), 5) for k in (*METRIC_KEYS, "images") if k in res}


def _constant(entries, gt_root, protocol: Protocol, log) -> dict | None:
    """The best constant's metrics, or None (said) when the teacher's labels have no depth in the scored
    range (a teacher that is not a metric model of such scenes): the report is still written."""
    try:
        return _metrics(best_constant(entries, gt_root, protocol))
    except DataError as e:
        log(f"warning: {e}")
        return None


def build_report(cfg, teacher: Teacher, labels: LabelSet, student_path: Path, stats, train_result: dict,
                 times: dict, log=print) -> dict:
    import torch

    from ..bench import count_macs, count_params
    from ..predict import Predictor
    from ..transforms import network_size

    student = Predictor(student_path)
    # both timed on torch fp32, like for like (auto would give the teacher bf16 on a CPU with bf16 units)
    teach = teacher_predictor(teacher, "cpu", cfg.threads, "torch", "fp32")
    val = labels.entries("val")
    label_gt = labels.root / "data_depth_annotated"
    raw = labels.root / "raw"
    relative = teacher.kind == "relative" or student.config.output_kind == "relative"
    agree = Protocol(crop=None, kb_crop=False, align=relative)
    log(f"scoring the student on {len(val)} held-out frames against the teacher")
    report: dict = {
        "teacher": {"name": teacher.name, "source": teacher.source, "sha256": teacher.sha256, "kind": teacher.kind},
        "student": {"name": student.config.name, "path": str(student_path), "kind": student.config.output_kind},
        "labels": {**stats.as_dict(), "folder": str(labels.root)},
        "training": {"global_step": train_result.get("global_step"), "best_epoch": train_result.get("best_epoch"),
                     "best_val": train_result.get("best_metrics"), "run": train_result.get("run")},
        "times": times,
        "agreement": {"protocol": "held-out frames, the teacher's labels as ground truth, no crop"
                                  + (", scale and shift fitted per image" if relative else ""),
                      "student": _metrics(evaluate(student, val, raw, label_gt, agree)),
                      "best_constant": _constant(val, label_gt, Protocol(crop=None), log)},
    }
    if cfg.gt_root and cfg.gt_split:
        entries = read_split(cfg.gt_split)
        gt_raw = cfg.gt_raw_root or _kitti_root(cfg.frames)
        if gt_raw is None:
            raise DistillError("--gt-split needs the raw root of its images: pass --gt-raw-root")
        p_student = Protocol(align=student.config.output_kind == "relative")
        p_teacher = Protocol(align=teacher.kind == "relative")
        log(f"scoring student and teacher on {len(entries)} ground-truth frames")
        report["ground_truth"] = {
            "split": str(cfg.gt_split), "protocol": "Garg crop, 1e-3..80 m" + (" (relative: aligned)" if relative else ""),
            "student": _metrics(evaluate(student, entries, gt_raw, cfg.gt_root, p_student)),
            "teacher": _metrics(evaluate(teach, entries, gt_raw, cfg.gt_root, p_teacher)),
            "best_constant": _metrics(best_constant(entries, cfg.gt_root, Protocol()))}
    if cfg.flicker_frames:
        log("flicker on the held-out sequences")
        report["flicker"] = {"student": _flicker(student, labels, cfg.flicker_frames),
                             "teacher": _flicker(teach, labels, cfg.flicker_frames)}
    frame = read_image(labels.frame(val[0].rgb)) if val else read_image(labels.frame(labels.frames()[0]))
    sizes = {}
    for key, p in (("student", student), ("teacher", teach)):
        net = network_size(*frame.shape[:2], p.config)
        sizes[key] = {"params": count_params(p.model) if p.model is not None else None,
                      "gmacs": round(count_macs(p.config, net) / 1e9, 2), "net_size": f"{net[0]}x{net[1]}"}
    log(f"timing both models on a {frame.shape[0]}x{frame.shape[1]} frame ({cfg.bench_runs} interleaved rounds)")
    speed = interleaved_ms({"student": student, "teacher": teach}, frame, cfg.bench_runs)
    report["models"] = {k: {**sizes[k], **speed[k]} for k in sizes}
    report["speedup"] = round(speed["teacher"]["median_ms"] / speed["student"]["median_ms"], 2)
    student.close()
    teach.close()
    report["default_runtime"] = default_runtime_speed(cfg, teacher, student_path, frame, log)
    report["machine"] = _machine(torch.get_num_threads())
    report["frame_size"] = f"{frame.shape[0]}x{frame.shape[1]}"
    return report


def default_runtime_speed(cfg, teacher: Teacher, student_path: Path, frame: np.ndarray, log) -> dict:
    """Both models on this machine's default CPU runtime (``--backend auto --precision auto``, what
    `fastdpt video` and the labelling run), each resolved by the same rule, timed in interleaved rounds:
    the speed-up a user of the defaults gets by swapping the teacher for the student."""
    from ..predict import Predictor
    from ..runtime import RuntimeOptions

    student = Predictor(student_path, options=RuntimeOptions("auto", "auto", "cpu", cfg.threads))
    teach = teacher_predictor(teacher, "cpu", cfg.threads, "auto", "auto")
    try:
        log(f"timing both on the default runtime ({cfg.bench_runs} interleaved rounds)")
        speed = interleaved_ms({"student": student, "teacher": teach}, frame, cfg.bench_runs)
        runtime = {k: f"{p.options.backend} {p.options.precision}" for k, p in (("student", student), ("teacher", teach))}
    finally:
        student.close()
        teach.close()
    return {"runtime": runtime, **speed,
            "speedup": round(speed["teacher"]["median_ms"] / speed["student"]["median_ms"], 2)}


def _kitti_root(sources) -> str | None:
    from .sources import is_kitti_raw

    return next((str(s) for s in sources if Path(s).is_dir() and is_kitti_raw(Path(s))), None)


def _machine(threads: int) -> dict:
    from ..bench import environment

    env = environment()
    return {**env, "threads": threads}


def _row(name: str, m: dict | None) -> str:
    if not m:
        return f"| {name} | " + " | ".join("-" for _ in METRIC_KEYS) + " | - |"
    return f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in METRIC_KEYS) + f" | {int(m.get('images', 0))} |"


def to_markdown(r: dict) -> str:
    head = "| | " + " | ".join(METRIC_KEYS) + " | images |\n|---|" + "---|" * (len(METRIC_KEYS) + 1)
    lines = [f"# Distillation: {r['student']['name']} from {r['teacher']['name']}", "",
             f"Teacher `{r['teacher']['source']}` (sha256 `{r['teacher']['sha256'][:16]}`), "
             f"student `{r['student']['path']}`.", "",
             "## Agreement with the teacher on held-out frames", "", r["agreement"]["protocol"] + ".", "", head,
             _row("student", r["agreement"]["student"]), _row("best constant", r["agreement"]["best_constant"]), ""]
    if "ground_truth" in r:
        g = r["ground_truth"]
        lines += ["## Against ground truth", "", f"`{g['split']}`, {g['protocol']}.", "", head, _row("student", g["student"]),
                  _row("teacher", g["teacher"]), _row("best constant", g["best_constant"]), ""]
    m = r["models"]
    lines += ["## Size and speed (measured in the same process)", "",
              f"Frame {r['frame_size']}, {r['machine'].get('processor', '?')}, {r['machine']['threads']} torch threads, "
              f"torch {r['machine'].get('torch', '?')}; whole online step (resize, normalise, network, resize back), "
              "median of interleaved rounds (min-max).", "",
              "| model | params | GMACs | network input | step ms | flicker |", "|---|---|---|---|---|---|"]
    fl = r.get("flicker", {})
    for k in ("student", "teacher"):
        params = f"{m[k]['params'] / 1e6:.1f} M" if m[k]["params"] else "-"
        f = fl.get(k)
        lines.append(f"| {k} | {params} | {m[k]['gmacs']} | {m[k]['net_size']} | {m[k]['median_ms']} "
                     f"({m[k]['min_ms']}-{m[k]['max_ms']}) | {f'{f:.4f}' if f is not None else '-'} |")
    lab, t = r["labels"], r["times"]
    lines += ["", f"**Speed-up of the student: {r['speedup']}x** (both through torch fp32, like for like)"
              + (": the student is slower than the teacher." if r["speedup"] < 1 else ".")]
    d = r.get("default_runtime")
    if d:
        lines += ["", f"On this machine's default runtime (`--backend auto --precision auto`, what `fastdpt video` runs): "
                      f"student {d['student']['median_ms']} ms ({d['runtime']['student']}), teacher "
                      f"{d['teacher']['median_ms']} ms ({d['runtime']['teacher']}): **{d['speedup']}x**."]
    lines += ["", "## Time spent", "",
              f"- labelling: {t.get('label_s', 0):.0f} s ({lab['train']} training + {lab['val']} held-out frames; "
              f"{lab['duplicates']} near-duplicates skipped, {lab['unreadable']} unreadable, {lab['gap']} left out as a gap; "
              f"{lab['workers']} worker(s))"
              + (f"; the student also trained on {lab['ground_truth']} frames with ground truth" if lab.get("ground_truth") else ""),
              f"- training: {t.get('train_s', 0):.0f} s ({r['training']['global_step']} steps)", ""]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    atomic_write(out / "report.json", lambda p: p.write_text(json.dumps(report, indent=1, default=str)))
    atomic_write(out / "report.md", lambda p: p.write_text(to_markdown(report)))
