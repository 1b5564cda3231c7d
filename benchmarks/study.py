"""Benchmark the reference study's 36 variants at 352x1216 and 192x640 against dpt-hybrid-kitti.

Every variant is fed 352x1216 frames (KITTI after the KB crop); the pipeline resizes them to the
variant's network size and the prediction back, as the study measured. Rows are appended to the
JSON file as they finish, so an interrupted run continues where it stopped.

    python benchmarks/study.py --threads 2 --runs 3 --warmup 1 --json benchmarks/results/study-cpu.json
    python benchmarks/study.py --markdown benchmarks/results/study-cpu.json   # table for BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from fastdpt.bench import bench_variant, environment
from fastdpt.presets import get_config, list_models

BASELINE = "dpt-hybrid-kitti"


def run(args) -> None:
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {"environment": None, "rows": []}
    data["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    done = {r["name"] for r in data["rows"]}
    names = [BASELINE] + list_models("study@352x1216") + list_models("study@192x640")
    for i, name in enumerate(names, 1):
        if name in done:
            continue
        row = bench_variant(name, (352, 1216), runs=args.runs, warmup=args.warmup, threads=args.threads).as_dict()
        data["environment"] = environment()
        data["rows"].append(row)
        print(f"[{i}/{len(names)}] {name}: {row['latency_ms_median']:.0f} ms", flush=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def markdown(path: str) -> str:
    data = json.loads(Path(path).read_text())
    rows = {r["name"]: r for r in data["rows"]}
    base = rows[BASELINE]["latency_ms_median"]
    env = data["environment"]
    lines = [
        f"Machine: {env['processor']}, {env['threads']} torch threads, fp32, batch 1; "
        f"Python {env['python']}, torch {env['torch']}. Command: `{data.get('command', '')}`.",
        "",
        "| variant | net | params (M) | GMACs | latency ms (p50) | FPS | speed-up vs dpt-hybrid-kitti |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(f"| `{r['name']}` | {r['net_size']} | {r['params'] / 1e6:.1f} | {r['macs'] / 1e9:.1f} | "
                     f"{r['latency_ms_median']:.0f} | {r['fps']:.2f} | {base / r['latency_ms_median']:.2f}x |")
    lines += ["", "Mean FPS by factor (same run):", "",
              "| factor | value | 352x1216 | 192x640 |", "|---|---|---|---|"]
    study = [r for r in data["rows"] if r["name"] != BASELINE]
    factors = [("hooks", lambda c: f"{c.hooks[0]},{c.hooks[1]}"), ("heads", lambda c: str(c.heads)),
               ("backbone", lambda c: c.backbone), ("attention", lambda c: c.attention)]
    for label, key in factors:
        values = sorted({key(get_config(r["name"])) for r in study}, key=lambda v: (len(v), v))
        for v in values:
            cells = []
            for size in ("352x1216", "192x640"):
                fps = [r["fps"] for r in study if r["net_size"] == size and key(get_config(r["name"])) == v]
                cells.append(f"{statistics.mean(fps):.2f}" if fps else "-")
            lines.append(f"| {label} | {v} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="benchmarks/results/study-cpu.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--markdown", metavar="JSON", help="print the Markdown table of a finished run")
    args = p.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
    else:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        run(args)


if __name__ == "__main__":
    main()
