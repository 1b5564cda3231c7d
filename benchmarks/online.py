"""Online speed on this machine: backends per variant, and end-to-end FPS of the video pipeline.

    python benchmarks/online.py --threads 2 --json benchmarks/results/online-cpu.json
    python benchmarks/online.py --markdown benchmarks/results/online-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

VARIANTS = ["effb0.h0-1.heads12.softmax.f256.kitti@192x640", "fast-effb0-f128-192x640", "fast-effb0-f64-192x640",
            "fast-effb0-f64-128x416"]
BACKENDS = [("torch", "fp32"), ("compile", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


def make_clip(path: Path, frames: int = 40, size=(375, 1242)) -> Path:
    """A synthetic KITTI-like drive encoded as mp4 at 10 FPS."""
    from fastdpt.data.synthetic import make_scene, render

    scene = make_scene(np.random.default_rng(0), frames)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size[1], size[0]))
    for f in range(frames):
        w.write(cv2.cvtColor(render(scene, f, size)[0], cv2.COLOR_RGB2BGR))
    w.release()
    return path


def run(args) -> None:
    import fastdpt
    from fastdpt.bench import bench_variant, environment
    from fastdpt.predict import Predictor
    from fastdpt.data.synthetic import sample_frames
    from fastdpt.stream import VideoSink, VideoSource, run_stream

    torch.set_num_threads(args.threads)
    calibration = sample_frames(8)  # int8 is calibrated on synthetic driving frames
    rows, videos = [], []
    for name in VARIANTS:
        for backend, precision in BACKENDS:
            if backend == "compile" and name != VARIANTS[-1]:  # compiling on a CPU takes minutes a variant
                continue
            r = bench_variant(name, (352, 1216), runs=args.runs, warmup=3, threads=args.threads, backend=backend,
                              precision=precision, calibration=calibration)
            rows.append(r.as_dict())
            print(f"{name} {backend} {precision}: {r.latency_ms_median:.0f} ms", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4")
        for name in VARIANTS[-2:]:
            for backend, precision in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")):
                pred = Predictor(fastdpt.create_model(name).eval(), backend=backend, precision=precision,
                                 threads=args.threads, calibration=calibration)
                pred.predict(np.zeros((375, 1242, 3), np.uint8))  # export / warm up outside the timing
                stats = run_stream(VideoSource(str(clip)), pred, VideoSink(Path(tmp) / "out.mp4", 10.0))
                s = stats.summary()
                videos.append({"name": name, "backend": backend, "precision": precision, **s})
                print(f"video {name} {backend} {precision}: {s['effective_fps']:.2f} FPS", flush=True)
    accuracy = []
    if args.checkpoint:  # the effect of each backend on accuracy, on synthetic KITTI-format data
        from fastdpt.data.kitti import read_split
        from fastdpt.evaluation import Protocol, evaluate

        data = Path(args.data)
        test = read_split(data / "splits" / "test_files_with_gt.txt")
        model = fastdpt.load(args.checkpoint)
        for backend, precision in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")):
            m = evaluate(Predictor(model, backend=backend, precision=precision, threads=args.threads,
                                   calibration=calibration), test, data / "raw", data / "data_depth_annotated",
                         Protocol("garg", kb_crop=True))
            accuracy.append({"checkpoint": model.config.name, "backend": backend, "precision": precision, **m})
            print(f"accuracy {backend} {precision}: abs_rel {m['abs_rel']:.4f}", flush=True)
    out = {"environment": environment(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "rows": rows, "video": videos, "accuracy": accuracy}
    tmp = Path(args.json + ".part")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, args.json)


def markdown(path: str) -> str:
    d = json.loads(Path(path).read_text())
    env = d["environment"]
    lines = [f"Machine: {env['processor']}, {env['threads']} threads, torch {env['torch']}. Frames 352x1216, batch 1, "
             f"latency = resize in + inference + resize out, median of the runs. Command: `{d['command']}`.", "",
             "| variant | GMACs | torch eager ms | compile ms | ORT fp32 ms | ORT int8 ms | best FPS |",
             "|---|---|---|---|---|---|---|"]
    by = {}
    for r in d["rows"]:
        by.setdefault(r["name"], {})[(r["backend"], r["precision"])] = r
    for name, rs in by.items():
        cells = [rs.get(k) for k in (("torch", "fp32"), ("compile", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))]
        best = max(c["fps"] for c in cells if c)
        lines.append(f"| `{name}` | {cells[0]['macs'] / 1e9:.1f} | " + " | ".join(
            f"{c['latency_ms_median']:.0f}" if c else "-" for c in cells) + f" | {best:.2f} |")
    lines += ["", "End to end, `fastdpt video` on a generated 375x1242 clip (40 frames at 10 FPS; decode, "
              "inference, colour map, side-by-side mp4 encode; no frame dropped):", "",
              "| variant | backend | effective FPS | latency p50 / p90 / p99 ms |", "|---|---|---|---|"]
    for v in d["video"]:
        lines.append(f"| `{v['name']}` | {v['backend']} {v['precision']} | {v['effective_fps']:.2f} | "
                     f"{v['latency_ms_p50']:.0f} / {v['latency_ms_p90']:.0f} / {v['latency_ms_p99']:.0f} |")
    if d.get("accuracy"):
        lines += ["", f"Accuracy by backend: `{d['accuracy'][0]['checkpoint']}` trained on synthetic scenes "
                  "(benchmarks/training.py), scored on the held-out synthetic drive (BTS protocol, KB + Garg crop):", "",
                  "| backend | AbsRel | RMSE | d1 | SILog |", "|---|---|---|---|---|"]
        for a in d["accuracy"]:
            lines.append(f"| {a['backend']} {a['precision']} | {a['abs_rel']:.4f} | {a['rmse']:.3f} | {a['d1']:.4f} | "
                         f"{a['silog']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="benchmarks/results/online-cpu.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--checkpoint", help="a trained fastdpt checkpoint to measure each backend's accuracy with")
    p.add_argument("--data", default="/tmp/fastdpt-synth", help="synthetic KITTI-format root for --checkpoint")
    p.add_argument("--markdown", metavar="JSON")
    args = p.parse_args()
    print(markdown(args.markdown)) if args.markdown else run(args)


if __name__ == "__main__":
    main()
