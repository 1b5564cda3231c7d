"""Every GPU measurement of BENCHMARKS.md in one command (a few minutes on one H100/H200-class GPU).

    PYTHONPATH=src python benchmarks/gpu.py --out benchmarks/results/gpu      # on the GPU machine
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu-smoke         # the script's own check, here

Steps (each writes its JSON under --out as soon as it is done, so a cut-off run keeps what it did):
  0. environment: card, driver, torch; the CUDA tests (tests/test_cuda.py) with their result
  1. online step, batch 1, 352x1216 frames in host memory -> depth in host memory: per variant and
     precision, eager and CUDA graphs (and torch.compile reduce-overhead with --compile), the whole
     step beside the network alone, peak memory of the measured passes, speed-up over dpt-hybrid-kitti
     in the same run
  2. `fastdpt video` on a 375x1242 synthetic clip, fast preset: without an output file, and writing a
     side-by-side video
  3. training, batch 8, bf16 mixed, channels-last: steps/s and images/s for the study's fastest variant
     and dpt-hybrid-kitti; a few hundred steps of the fast preset with a finite-loss check
  4. accuracy cost of bf16/fp16 against fp32: max/median relative depth error on synthetic frames and
     AbsRel on the held-out synthetic drive, with the checkpoint trained in step 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["dpt-hybrid-kitti", "r50.h0-1.heads1.softmax.f256.kitti@192x640",
            "effb0.h0-1.heads12.softmax.f256.kitti@192x640", "fast-effb0-f64-192x640", "fast-effb0-f64-128x416"]
STUDY_FASTEST = "r50.h0-1.heads1.softmax.f256.kitti@192x640"


def save(out: Path, name: str, data) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))
    print(f"== {name}: written", flush=True)


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = "nvidia-smi not found"
    return env


def run_tests() -> dict:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_cuda.py")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    return {"returncode": r.returncode, "summary": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]}


def online(args) -> list[dict]:
    from fastdpt.bench import bench_variant

    rows = []
    precisions = ["fp32"] if args.device == "cpu" else ["tf32", "bf16", "fp16"]
    backends = ["torch"] + (["cudagraph"] if args.device == "cuda" else []) + (["compile"] if args.compile else [])
    variants = VARIANTS[3:] if args.quick else VARIANTS
    for name in variants:
        for precision in precisions:
            for backend in backends:
                mode = "reduce-overhead" if backend == "compile" else None
                try:
                    r = bench_variant(name, (352, 1216), device=args.device, precision=precision, backend=backend,
                                      runs=args.runs, warmup=args.warmup, channels_last=args.device == "cuda",
                                      compile_mode=mode, threads=args.threads)
                    row = r.as_dict()
                except Exception as e:  # noqa: BLE001 - one failing combination must not stop the rest
                    row = {"name": name, "precision": precision, "backend": backend, "error": f"{type(e).__name__}: {e}"}
                rows.append(row)
                print(f"{name} {precision} {backend}: {row.get('latency_ms_median')} ms step, "
                      f"{row.get('net_ms_median')} ms net", flush=True)
    base = {(r["precision"], r["backend"]): r["latency_ms_median"] for r in rows
            if r["name"] == variants[0] and "error" not in r}
    for r in rows:
        if "error" not in r and (r["precision"], r["backend"]) in base:
            r["speedup_vs_first"] = round(base[(r["precision"], r["backend"])] / r["latency_ms_median"], 2)
    return rows


def video(args, tmp: Path, ckpt: Path) -> list[dict]:
    import cv2

    from fastdpt.data.synthetic import make_scene, render

    clip = tmp / "clip.mp4"
    frames = 60 if args.quick else 300
    scene = make_scene(np.random.default_rng(0), frames)
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (1242, 375))
    for f in range(frames):
        w.write(cv2.cvtColor(render(scene, f, (375, 1242))[0], cv2.COLOR_RGB2BGR))
    w.release()
    rows = []
    precision = "bf16" if args.device == "cuda" else "fp32"
    backend = "cudagraph" if args.device == "cuda" else "torch"
    for label, extra in (("no output", []), ("side-by-side video", ["-o", str(tmp / "out.mp4"), "--overwrite"])):
        stats = tmp / "stats.json"
        cmd = [sys.executable, "-m", "fastdpt.cli", "video", str(clip), "-m", str(ckpt), "--device", args.device,
               "--precision", precision, "--backend", backend, "--stats", str(stats), *extra]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        row = {"mode": label, "wall_s": round(time.perf_counter() - t0, 1), "returncode": r.returncode,
               "precision": precision, "backend": backend}
        if r.returncode == 0:
            row.update(json.loads(stats.read_text()))
        else:
            row["error"] = r.stdout[-500:] + r.stderr[-500:]
        rows.append(row)
        print(f"video {label}: {row.get('effective_fps')} FPS", flush=True)
    return rows


def training(args, data: Path, tmp: Path) -> tuple[list[dict], Path]:
    import lightning as L

    from fastdpt.training import TrainConfig, train

    class Clock(L.Callback):
        def __init__(self, skip: int):
            self.skip, self.t0, self.steps = skip, None, 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == self.skip:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()
            elif trainer.global_step > self.skip:
                self.steps = trainer.global_step - self.skip

    rows, ckpt = [], None
    batch = 2 if args.quick else 8
    precision = "bf16" if args.device == "cuda" else "fp32"
    plan = [("fast-effb0-f64-192x640", 20 if args.quick else 300, True), (STUDY_FASTEST, 6 if args.quick else 60, False),
            ("dpt-hybrid-kitti", 4 if args.quick else 40, False)]
    for name, steps, keep in plan:
        from fastdpt.presets import get_config

        cfg_name = get_config(name).replace(metric=(0.01, 0.0125), keep_aspect=False).name  # trainable from scratch
        clock = Clock(skip=2 if args.quick else 10)
        run = tmp / f"train-{len(rows)}"
        cfg = TrainConfig(model=cfg_name, out=str(run), data_root=str(data), epochs=10_000, max_steps=steps,
                          batch_size=batch, lr=3e-4, precision=precision, workers=min(8, os.cpu_count() or 1),
                          kb_crop=True, progress=False, val_every=10_000, limit_val_batches=0,
                          channels_last=args.device == "cuda", accelerator="gpu" if args.device == "cuda" else "cpu")
        t0 = time.perf_counter()
        try:
            res = train(cfg, callbacks=[clock], logger=False)
            if args.device == "cuda":
                torch.cuda.synchronize()
            timed = time.perf_counter() - clock.t0
            row = {"variant": name, "trained_as": cfg_name, "batch": batch, "precision": precision, "steps": res["global_step"],
                   "steps_per_s": round(clock.steps / timed, 2), "images_per_s": round(clock.steps * batch / timed, 1),
                   "ms_per_step": round(1000 * timed / clock.steps, 1), "finite_loss": True,
                   "final_loss": res["metrics"].get("train/loss_step"), "wall_s": round(time.perf_counter() - t0, 1)}
            if keep:
                ckpt = run / "last.safetensors"
        except Exception as e:  # noqa: BLE001 - NonFiniteLossError included: recorded, not fatal
            row = {"variant": name, "error": f"{type(e).__name__}: {e}", "finite_loss": "NonFinite" not in type(e).__name__}
        rows.append(row)
        print(f"train {name}: {row.get('ms_per_step')} ms a step", flush=True)
    return rows, ckpt


def accuracy(args, data: Path, ckpt: Path) -> list[dict]:
    import fastdpt
    from fastdpt.data.kitti import read_split
    from fastdpt.data.synthetic import sample_frames
    from fastdpt.evaluation import Protocol, evaluate

    test = read_split(data / "splits" / "test_files_with_gt.txt")
    model = fastdpt.load(ckpt)
    precisions = ["fp32"] + (["bf16", "fp16"] if args.device == "cuda" else [])
    frames = sample_frames(4 if args.quick else 16, seed=7)
    ref = [fastdpt.Predictor(model, device=args.device).predict(f).depth for f in frames]
    rows = []
    for p in precisions:
        pred = fastdpt.Predictor(model, device=args.device, precision=p)
        rel = np.concatenate([(np.abs(pred.predict(f).depth - r) / np.abs(r)).ravel() for f, r in zip(frames, ref)])
        m = evaluate(pred, test, data / "raw", data / "data_depth_annotated", Protocol("garg", kb_crop=True))
        rows.append({"precision": p, "max_rel_err": float(rel.max()), "median_rel_err": float(np.median(rel)),
                     "abs_rel": m["abs_rel"], "d1": m["d1"], "images": m["images"]})
        print(f"accuracy {p}: AbsRel {m['abs_rel']:.4f}, median rel err {np.median(rel):.2e}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="also torch.compile(mode='reduce-overhead') (slow to build)")
    p.add_argument("--quick", action="store_true", help="tiny settings, to check the script itself")
    p.add_argument("--skip", nargs="*", default=[], help="steps to leave out: tests online video train accuracy")
    args = p.parse_args()
    if args.quick:
        args.runs, args.warmup = 2, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --quick to check the script")
    out = Path(args.out)
    import tempfile

    from fastdpt.data.synthetic import synth

    t_start = time.perf_counter()
    env = environment(args.device)
    if "tests" not in args.skip and args.device == "cuda":
        env["cuda_tests"] = run_tests()
    save(out, "environment", env)
    if "online" not in args.skip:
        save(out, "online", online(args))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "synth"
        synth(data, drives=3 if args.quick else 6, frames=14 if args.quick else 40, size=(375, 1242), seed=5)
        ckpt = None
        if "train" not in args.skip:
            rows, ckpt = training(args, data, tmp)
            save(out, "training", rows)
        if ckpt is None:
            import fastdpt

            ckpt = fastdpt.save_checkpoint(fastdpt.create_model("fast-effb0-f64-192x640"), tmp / "random.safetensors")
        if "video" not in args.skip:
            save(out, "video", video(args, tmp, ckpt))
        if "accuracy" not in args.skip:
            save(out, "accuracy", accuracy(args, data, ckpt))
    save(out, "done", {"wall_s": round(time.perf_counter() - t_start, 1), "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
