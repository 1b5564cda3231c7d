"""How long `fastdpt stream -o` takes to end after Ctrl-C with a slow (DPT-Hybrid-sized) model.

SIGINT is sent while a later frame is being inferred; the time is from the signal to the process's exit,
and the kept partial video is decoded to check it holds the frames the command claims.

    python benchmarks/ctrl_c.py --threads 2 --runs 3 [--json benchmarks/results/ctrl-c.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

MODEL = "r50.h8-11.heads12.softmax.f256.kitti@352x1216"  # DPT-Hybrid's layout (random weights: speed only)


def frames_in(path: Path) -> int:
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    import fastdpt
    import torch
    from fastdpt.runtime import matrix_features
    from fastdpt.weights import save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        ckpt = save_checkpoint(fastdpt.create_model(MODEL), root / "hybrid.safetensors")
        frames = root / "frames"
        frames.mkdir()
        rng = np.random.default_rng(0)
        for i in range(20):
            cv2.imwrite(str(frames / f"{i:04d}.png"), rng.integers(0, 256, (375, 1242, 3), dtype=np.uint8))
        for run in range(args.runs):
            out = root / f"o{run}.mp4"
            cmd = [sys.executable, "-m", "fastdpt.cli", "stream", str(frames), "-m", str(ckpt), "-o", str(out),
                   "--threads", str(args.threads)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            while proc.poll() is None and not any(p.name.startswith(f".o{run}.") for p in root.iterdir()):
                time.sleep(0.05)
            time.sleep(1.0 + run)  # the first frame is written; a later one is being inferred
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=120)
            took = time.perf_counter() - t0
            claimed = re.search(r"interrupted after (\d+) frames", output)
            partial = out.with_name(out.stem + ".partial.mp4")
            row = {"run": run, "exit_code": proc.returncode, "exit_s": round(took, 2),
                   "frames_claimed": int(claimed.group(1)) if claimed else None,
                   "frames_decoded": frames_in(partial) if partial.is_file() else 0}
            rows.append(row)
            print(row, flush=True)
    result = {"model": MODEL, "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
              "cpu": platform.processor() or platform.machine(), "cpu_features": matrix_features(), "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
