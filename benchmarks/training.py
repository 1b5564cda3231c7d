"""Learning curves on synthetic KITTI-format scenes, on this CPU, for two variants.

Renders the data if missing, trains each variant with `fastdpt.training.train`, scores its
best checkpoint on the held-out test drive with the BTS protocol (KB crop, Garg crop) next to the
best constant-depth prediction, and writes one JSON file (curves, epoch times, metrics).

    python benchmarks/training.py --data /tmp/fastdpt-synth --runs /tmp/fastdpt-runs \
        --json benchmarks/results/training-cpu.json
    python benchmarks/training.py --markdown benchmarks/results/training-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

# variant, epochs. The study's fastest architecture and the full-depth DPT-Hybrid at 192x640, both with a
# metric head suited to training from scratch (the official KITTI head needs the official warm start).
VARIANTS = [
    ("effb0.h0-1.heads12.softmax.f256.m0.01_0.0125@192x640", 6),
    ("r50.h8-11.heads12.softmax.f256.m0.01_0.0125@192x640", 3),
]


def best_constant(data: Path, entries) -> dict:
    from fastdpt.data.kitti import find_gt
    from fastdpt.io import read_depth_png
    from fastdpt.evaluation import MetricAverager, score_image

    gts = [read_depth_png(find_gt(data / "data_depth_annotated", e.gt)) for e in entries if e.gt]
    values = np.concatenate([g[g > 0] for g in gts])
    best = None
    for c in np.quantile(values, np.linspace(0.02, 0.98, 49)):
        avg = MetricAverager()
        for g in gts:
            avg.add(score_image(np.full_like(g, c), g, crop="garg"))
        res = avg.result()
        if best is None or res["abs_rel"] < best["abs_rel"]:
            best = {**res, "constant_m": float(c)}
    return best


def run(args) -> None:
    from mlflow.tracking import MlflowClient

    import fastdpt
    from fastdpt.data.kitti import read_split
    from fastdpt.data.synthetic import synth
    from fastdpt.evaluation import Protocol, evaluate
    from fastdpt.predict import Predictor
    from fastdpt.training import TrainConfig, train

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "splits" / "test_files_with_gt.txt").is_file():
        t0 = time.perf_counter()
        synth(data, drives=args.drives, frames=args.frames, seed=0)
        print(f"rendered {args.drives}x{args.frames} frames in {time.perf_counter() - t0:.0f} s", flush=True)
    test = read_split(data / "splits" / "test_files_with_gt.txt")
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "threads": args.threads,
           "torch": torch.__version__, "data": {"drives": args.drives, "frames": args.frames, "size": "375x1242"},
           "constant": best_constant(data, test), "runs": []}
    for name, epochs in VARIANTS:
        run_dir = Path(args.runs) / name.split("@")[0]
        cfg = TrainConfig(model=name, out=str(run_dir), data_root=str(data), epochs=epochs, batch_size=2,
                          lr=args.lr, workers=1, kb_crop=True, progress=False, seed=0)
        t0 = time.perf_counter()
        res = train(cfg)
        seconds = time.perf_counter() - t0
        client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
        (mrun,) = client.search_runs([client.get_experiment_by_name("fastdpt").experiment_id])
        curve = {k: [m.value for m in sorted(client.get_metric_history(mrun.info.run_id, k), key=lambda m: m.step)]
                 for k in ("train/loss_epoch", "val/abs_rel", "val/rmse", "val/d1")}
        model = fastdpt.load(run_dir / "best.safetensors")
        metrics = evaluate(Predictor(model), test, data / "raw", data / "data_depth_annotated",
                           Protocol("garg", kb_crop=True))
        out["runs"].append({"variant": name, "epochs": epochs, "steps": res["global_step"],
                            "seconds": round(seconds, 1), "seconds_per_epoch": round(seconds / epochs, 1),
                            "curve": curve, "test": metrics})
        print(f"{name}: {seconds / epochs:.0f} s/epoch, test abs_rel {metrics['abs_rel']:.3f}", flush=True)
        tmp = Path(args.json + ".part")
        tmp.write_text(json.dumps(out, indent=1))
        os.replace(tmp, args.json)


def markdown(path: str) -> str:
    d = json.loads(Path(path).read_text())
    c = d["constant"]
    lines = [f"Data: {d['data']['drives']} synthetic drives x {d['data']['frames']} frames at {d['data']['size']} "
             f"(train / val / test drives as written by `fastdpt data synth`); {d['threads']} torch threads, "
             f"torch {d['torch']}, batch 2, KB crop + flips. Command: `{d['command']}`.", "",
             "| variant | epochs | s / epoch | val AbsRel by epoch | test AbsRel | test RMSE | test d1 | test FPS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in d["runs"]:
        t = r["test"]
        curve = " -> ".join(f"{v:.3f}" for v in r["curve"]["val/abs_rel"])
        lines.append(f"| `{r['variant']}` | {r['epochs']} | {r['seconds_per_epoch']:.0f} | {curve} | "
                     f"{t['abs_rel']:.3f} | {t['rmse']:.2f} | {t['d1']:.3f} | {t['fps']:.2f} |")
    lines.append(f"| best constant depth ({c['constant_m']:.1f} m) | - | - | - | {c['abs_rel']:.3f} | {c['rmse']:.2f} | "
                 f"{c['d1']:.3f} | - |")
    lines += ["", "Training loss (SILog) by epoch:", ""]
    for r in d["runs"]:
        lines.append(f"- `{r['variant']}`: " + " -> ".join(f"{v:.3f}" for v in r["curve"]["train/loss_epoch"]))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/fastdpt-synth")
    p.add_argument("--runs", default="/tmp/fastdpt-runs")
    p.add_argument("--json", default="benchmarks/results/training-cpu.json")
    p.add_argument("--drives", type=int, default=6)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", metavar="JSON")
    args = p.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
    else:
        run(args)


if __name__ == "__main__":
    main()
