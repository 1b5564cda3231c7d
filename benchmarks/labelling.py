"""The teacher labelling frames one at a time (as distillation did) or ``LABEL_BATCH`` at a time (as it does).

    python benchmarks/labelling.py --threads 2 --out benchmarks/results/labelling-amx.json

Two predictors of one teacher on the default runtime (``--teacher-backend auto``, as ``fastdpt distill``
resolves it): one labels each frame alone (``predict``: OpenVINO's latency-mode request), the other
``LABEL_BATCH`` frames at a time (``distill.labels.teacher_depths`` -> ``predict_many``: OpenVINO's
throughput-mode requests in flight together). Both are warmed first (the first call, conversion and
compile, is timed apart), then timed in interleaved rounds over the same synthetic frames; the outputs are
compared. The teacher: a checkpoint, or a variant name with random weights (the speed does not depend on
them); default the benchmark's DPT-Hybrid-sized teacher at 128x416.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastdpt  # noqa: E402
from fastdpt.distill.labels import LABEL_BATCH, resolve_teacher, teacher_depths, teacher_predictor  # noqa: E402
from fastdpt.runtime.cpu import matrix_features  # noqa: E402

TEACHER = "r50.h8-11.heads12.softmax.f256.m0.01_0.0125@128x416"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=TEACHER, help="checkpoint, or variant name (random weights)")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="375x1242", help="frame HxW")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hflip", action="store_true", help="average each frame with its mirror image")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        source = a.teacher
        if not Path(source).is_file():
            source = str(Path(tmp) / "teacher.safetensors")
            fastdpt.save_checkpoint(fastdpt.create_model(a.teacher), source)
        teacher = resolve_teacher(source)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(a.frames)]

        def alone(pred):
            return [teacher_depths(pred, [f], a.hflip)[0] for f in frames]

        def batched(pred):
            out = []
            for i in range(0, len(frames), LABEL_BATCH):
                out += teacher_depths(pred, frames[i:i + LABEL_BATCH], a.hflip)
            return out

        preds, first = {}, {}
        for name, n in (("alone", 1), ("batched", LABEL_BATCH)):
            t = time.perf_counter()
            preds[name] = teacher_predictor(teacher, "cpu", a.threads, "auto")
            teacher_depths(preds[name], frames[:n], a.hflip)
            first[name] = round(time.perf_counter() - t, 2)
        rates = {"alone": [], "batched": []}
        outputs = {}
        for r in range(a.rounds):
            for name, fn in (("alone", alone), ("batched", batched)):
                t = time.perf_counter()
                outputs[name] = fn(preds[name])
                rates[name].append(round(len(frames) / (time.perf_counter() - t), 3))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} frames/s" for k, v in rates.items()), flush=True)
        diff = max(float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-6)))
                   for x, y in zip(outputs["alone"], outputs["batched"]))
        choice = preds["alone"].choice
        for pred in preds.values():
            pred.close()
    median = {k: float(np.median(v)) for k, v in rates.items()}
    result = {"teacher": teacher.name, "frames": f"{a.frames} random {h}x{w}", "hflip": a.hflip,
              "label_batch": LABEL_BATCH, "threads": a.threads, "runtime": f"{choice.backend} {choice.precision}",
              "cpu_features": matrix_features(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "frames_per_s": rates, "median_frames_per_s": median,
              "speedup": round(median["batched"] / median["alone"], 3), "first_call_s": first,
              "max_rel_diff": diff}
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
