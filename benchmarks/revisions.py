"""Same-run CPU speed of two revisions: `fastdpt bench` from each, interleaved, on one machine.

Each revision is checked out into a temporary git worktree and run with its own ``src`` on
``PYTHONPATH`` (same venv, same libraries). Rounds alternate A, B, A, B so that drift in the
machine's speed hits both alike; the table reports the median over rounds of each row's median.

    python benchmarks/revisions.py a215aba HEAD --names dpt-hybrid-kitti fast-effb0-f64-192x640 \
        --threads 2 --runs 5 --rounds 2 --json benchmarks/results/revisions-cpu.json [--video]

With ``--video``, each round also runs ``fastdpt video`` on a 40-frame 375x1242 synthetic clip with a
``fast-effb0-f64-128x416`` checkpoint, writing a side-by-side video (each revision's default codec;
``--video-args`` adds flags for the second revision only, e.g. ``--codec mp4v``), and reports FPS.
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


def make_clip(tmp: Path) -> tuple[Path, Path]:
    import cv2
    import numpy as np

    import fastdpt
    from fastdpt.data.synthetic import make_scene, render

    clip = tmp / "clip.mp4"
    scene = make_scene(np.random.default_rng(0), 40)
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (1242, 375))
    for f in range(40):
        w.write(cv2.cvtColor(render(scene, f, (375, 1242))[0], cv2.COLOR_RGB2BGR))
    w.release()
    ckpt = fastdpt.save_checkpoint(fastdpt.create_model("fast-effb0-f64-128x416"), tmp / "fast.safetensors")
    return clip, ckpt


def video_fps(src: Path, clip: Path, ckpt: Path, args, out: Path, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    stats = out.with_suffix(".json")
    cmd = [sys.executable, "-m", "fastdpt.cli", "video", str(clip), "-m", str(ckpt), "-o", str(out), "--threads",
           str(args.threads), "--stats", str(stats), *extra]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out.unlink()
    return json.loads(stats.read_text())["effective_fps"]


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
    p.add_argument("--video", action="store_true")
    p.add_argument("--video-args", default="", help="extra flags for the second revision's `fastdpt video`")
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
        clip, ckpt = make_clip(Path(tmp)) if args.video else (None, None)
        try:
            for rnd in range(args.rounds):
                for k, (short, tree) in enumerate(trees.items()):
                    for row in bench(tree / "src", args.names, args, Path(tmp) / f"{short}-{rnd}.json"):
                        results[short].setdefault(row["name"], []).append(row["latency_ms_median"])
                        print(f"round {rnd} {short} {row['name']}: {row['latency_ms_median']:.1f} ms", flush=True)
                    if args.video:
                        extra = args.video_args.split() if k == 1 else []
                        fps = video_fps(tree / "src", clip, ckpt, args, Path(tmp) / f"v-{short}-{rnd}.mp4", extra)
                        results[short].setdefault("video FPS", []).append(fps)
                        print(f"round {rnd} {short} video: {fps:.2f} FPS", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    before, after = revs[args.before], revs[args.after]
    lines = [f"| variant | {before} ms | {after} ms | after / before |", "|---|---|---|---|"]
    for name in args.names + (["video FPS"] if args.video else []):
        a, b = statistics.median(results[before][name]), statistics.median(results[after][name])
        lines.append(f"| `{name}` | {a:.1f} | {b:.1f} | {b / a:.3f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join([Path(sys.executable).name, *sys.argv]),
                                               "threads": args.threads, "runs": args.runs, "revisions": revs,
                                               "latency_ms": results}, indent=1))


if __name__ == "__main__":
    main()
