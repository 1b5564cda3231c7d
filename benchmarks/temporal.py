"""Temporal stability on held-out synthetic drives: flicker and TAE without and with each
stabilisation mode, the BTS metrics of the same outputs, and the stabiliser's time per frame beside the
model's own, for each given checkpoint.

    python benchmarks/temporal.py --data /tmp/tempdata --checkpoint fast=PATH --checkpoint hybrid=PATH \
        --threads 2 --json benchmarks/results/temporal-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic KITTI-format root with OXTS files (fastdpt data synth)")
    p.add_argument("--checkpoint", action="append", required=True, help="LABEL=PATH, repeatable")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=40, help="frames a drive")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import fastdpt
    from fastdpt.data.kitti import read_split
    from fastdpt.workflows import evaluate_temporal

    data = Path(args.data)
    test = read_split(data / "splits" / "test_files_with_gt.txt") + read_split(data / "splits" / "val_files_with_gt.txt")
    rows = []
    for spec in args.checkpoint:
        label, _, path = spec.partition("=")
        model = fastdpt.load(path)
        pred = fastdpt.Predictor(model)
        frame = np.zeros((375, 1242, 3), np.uint8)
        pred.predict(frame)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            pred.predict(frame)
            times.append((time.perf_counter() - t0) * 1000)
        model_ms = statistics.median(times)
        for mode in ("none", "scale", "flow"):
            r = evaluate_temporal(pred, test, data / "raw", data / "data_depth_annotated", mode, args.frames, data / "dense")
            r.update(label=label, model=model.config.name, model_ms=round(model_ms, 1),
                     added_fraction=round(r["stabilize_ms"] / model_ms, 4))
            rows.append(r)
            print(json.dumps(r), flush=True)
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "threads": args.threads, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print("| model | stabilise | flicker | TAE | AbsRel | d1 | stabiliser ms | model ms | added |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['stabilize']} | {r['flicker']:.4f} | {r['tae']:.4f} | {r['abs_rel']:.4f} | "
              f"{r['d1']:.3f} | {r['stabilize_ms']:.1f} | {r['model_ms']:.0f} | {100 * r['added_fraction']:.1f} % |")


if __name__ == "__main__":
    main()
