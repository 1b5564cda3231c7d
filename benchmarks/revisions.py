"""Same-run CPU speed of two revisions: `fastdpt bench` from each, interleaved, on one machine.

Each revision is checked out into a temporary git worktree and run with its own ``src`` on
``PYTHONPATH`` (same venv, same libraries). Rounds alternate A, B, A, B so that drift in the
machine's speed hits both alike; the table reports the median over rounds of each row's median.

    python benchmarks/revisions.py a215aba HEAD --names dpt-hybrid-kitti fast-effb0-f64-192x640 \
        --threads 2 --runs 5 --rounds 2 --json benchmarks/results/revisions-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rev_name(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def bench(src: Path, names: list[str], args, out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "fastdpt.cli", "bench", *names, "--threads", str(args.threads), "--runs",
           str(args.runs), "--warmup", str(args.warmup), "--input-size", args.input_size, "--json", str(out)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["rows"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--names", nargs="+", default=["dpt-hybrid-kitti", "fast-effb0-f64-192x640"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--input-size", default="352x1216")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    revs = {r: rev_name(r) for r in (args.before, args.after)}
    results: dict[str, dict[str, list[float]]] = {r: {} for r in revs.values()}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for rev, short in revs.items():
            tree = Path(tmp) / short
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                           capture_output=True)
            trees[short] = tree
        try:
            for rnd in range(args.rounds):
                for short, tree in trees.items():
                    for row in bench(tree / "src", args.names, args, Path(tmp) / f"{short}-{rnd}.json"):
                        results[short].setdefault(row["name"], []).append(row["latency_ms_median"])
                        print(f"round {rnd} {short} {row['name']}: {row['latency_ms_median']:.1f} ms", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    before, after = revs[args.before], revs[args.after]
    lines = [f"| variant | {before} ms | {after} ms | after / before |", "|---|---|---|---|"]
    for name in args.names:
        a, b = statistics.median(results[before][name]), statistics.median(results[after][name])
        lines.append(f"| `{name}` | {a:.1f} | {b:.1f} | {b / a:.3f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join([Path(sys.executable).name, *sys.argv]),
                                               "threads": args.threads, "runs": args.runs, "revisions": revs,
                                               "latency_ms": results}, indent=1))


if __name__ == "__main__":
    main()
