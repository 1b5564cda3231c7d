"""What each CPU backend x precision costs in accuracy, on a trained checkpoint and held-out drives.

    python benchmarks/cpu_accuracy.py --threads 2 --out .bench/cpu-accuracy

``fastdpt demo`` (built-in: synthetic KITTI-format drives, the fast preset trained on three, the fourth
held out) gives a trained model; every runtime this machine runs natively then scores the held-out
drive with the BTS protocol (AbsRel, RMSE, d1), and its depth is compared pixel by pixel with torch
fp32's (median and max relative difference). int8 calibrates on frames of the training drives, never
the held-out one. Random weights cannot show this: their output is nearly constant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    from fastdpt.bench import all_runtimes, environment
    from fastdpt.data.kitti import fits_kb_crop, read_split
    from fastdpt.demo import run_demo
    from fastdpt.evaluation import Protocol, best_constant, evaluate
    from fastdpt.io import read_image
    from fastdpt.predict import Predictor
    from fastdpt.runtime import matrix_features

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300, help="training steps of the demo's model")
    ap.add_argument("--out", default=".bench/cpu-accuracy")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    summary_path = out / "demo" / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        summary = run_demo(out / "demo", steps=args.steps, force=True)
    data = out / "demo" / "data"
    test = read_split(data / "splits" / "test_files_with_gt.txt")
    train = read_split(data / "splits" / "train_files_with_gt.txt")
    calibration = [read_image(data / "raw" / e.rgb) for e in train[:: max(1, len(train) // 16)][:16]]
    size = read_image(data / "raw" / test[0].rgb).shape[:2]
    protocol = Protocol("garg", kb_crop=fits_kb_crop(*size))
    frames = [read_image(data / "raw" / e.rgb) for e in test[:8]]
    ref = None
    rows = []
    for backend, precision in all_runtimes("cpu"):
        pred = Predictor(summary["checkpoint"], backend=backend, precision=precision, threads=args.threads,
                         calibration=calibration if precision == "int8" else None)
        metrics = evaluate(pred, test, data / "raw", data / "data_depth_annotated", protocol)
        depths = [pred.predict(f).depth for f in frames]
        if ref is None:
            ref = depths  # torch fp32 is the first runtime
        rel = np.concatenate([(np.abs(d - r) / np.maximum(np.abs(r), 1e-6)).ravel() for d, r in zip(depths, ref)])
        rows.append({"runtime": f"{backend} {precision}", "abs_rel": round(metrics["abs_rel"], 4),
                     "rmse": round(metrics["rmse"], 3), "d1": round(metrics["d1"], 4),
                     "median_rel_diff_vs_fp32": float(f"{np.median(rel):.3g}"), "max_rel_diff_vs_fp32": float(f"{rel.max():.3g}")})
        print(json.dumps(rows[-1]), flush=True)
        pred.close()
    const = best_constant(test, data / "data_depth_annotated", protocol)
    result = {"environment": environment(), "cpu_features": matrix_features(), "threads": args.threads,
              "model": summary["model"], "steps": summary["steps"], "test_frames": len(test),
              "calibration_frames": len(calibration), "best_constant_abs_rel": round(const["abs_rel"], 4), "rows": rows,
              "command": " ".join(sys.argv)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu-accuracy.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [f"{r['environment']['processor']} ({', '.join(r['cpu_features'])}), {r['threads']} threads, torch "
             f"{r['environment']['torch']}; `{r['model']}` trained {r['steps']} steps by `fastdpt demo`, "
             f"{r['test_frames']} held-out frames (BTS protocol), int8 calibrated on {r['calibration_frames']} "
             f"training-drive frames; best constant AbsRel {r['best_constant_abs_rel']}.", "",
             "| runtime | AbsRel | RMSE | d1 | depth vs torch fp32: median / max rel. difference |", "|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['runtime']} | {x['abs_rel']} | {x['rmse']} | {x['d1']} | "
                     f"{x['median_rel_diff_vs_fp32']:.2g} / {x['max_rel_diff_vs_fp32']:.2g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
