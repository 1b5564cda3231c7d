"""The offline demo: synthetic drives -> a fixed number of training steps -> scoring against the best
constant depth -> an online run on a held-out drive. Every phase reports its progress."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np

from .errors import FastDPTError
from .options import DEMO_PRESET
from .presets import get_config

# the fast presets carry the official KITTI head, which only trains from the official weights; from
# scratch the demo uses a head whose depth range starts sensible: 1 / (0.01 y + 0.0125) <= 80 m
SCRATCH_HEAD = (0.01, 0.0125)


class StepProgress(L.Callback):
    """One line every ``every`` optimiser steps: step, loss, time a step, time left."""

    def __init__(self, total: int, say: Callable[[str], None], every: int = 10) -> None:
        self.total, self.say, self.every = total, say, every
        self.t0 = None

    def on_train_start(self, trainer, module):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step and (step % self.every == 0 or step == self.total):
            per = (time.perf_counter() - self.t0) / step
            loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
            self.say(f"  step {step}/{self.total}: loss {loss:.3f}, {per:.1f} s a step, ~{per * (self.total - step):.0f} s left")

    def on_validation_end(self, trainer, module):
        m = getattr(module, "val_metrics", {})
        if m:
            self.say(f"  validation after step {trainer.global_step}: AbsRel {m['abs_rel']:.3f} over {m['images']} frames")


def run_demo(out: str | Path = "demo", steps: int = 120, preset: str = DEMO_PRESET,
             drives: int = 4, frames: int = 40, seed: int = 0, force: bool = False,
             say: Callable[[str], None] = print, size: tuple[int, int] = (375, 1242), lr: float = 3e-4,
             dense_gt: bool = False) -> dict:
    """Render ``drives`` synthetic drives, train ``preset`` (with a from-scratch metric head) for
    ``steps`` optimiser steps on the renderer's exact depth (``dense_gt``; else the sparse LiDAR-like
    annotations), score the held-out drive (sparse annotations, BTS protocol) beside the best
    constant depth, run the drive online and write ``demo.mp4``, a few PNGs and ``summary.json``."""
    from .api import load
    from .data.kitti import fits_kb_crop, read_split
    from .data.synthetic import DATE, synth
    from .evaluation import Protocol, best_constant, evaluate
    from .io import read_image, write_png, write_text
    from .predict import Predictor
    from .stream import ImageSequence, VideoSink, run_stream
    from .training import TrainConfig, train
    from .viz import colorize

    if steps < 1:
        raise FastDPTError(f"--steps must be at least 1, got {steps}")
    out = Path(out)
    data, run = out / "data", out / "run"
    if run.exists() or (out / "summary.json").exists():
        if not force:
            raise FastDPTError(f"{out} holds an earlier demo run; pass --force to replace it or choose another --out")
        shutil.rmtree(run, ignore_errors=True)
        for name in ("demo.mp4", "summary.json"):
            (out / name).unlink(missing_ok=True)
    if not (data / "splits" / "test_files_with_gt.txt").is_file():
        say(f"[1/4] rendering {drives} synthetic drives x {frames} frames into {data} ...")
        marks = {int(drives * frames * f / 4) for f in (1, 2, 3)}
        res = synth(data, drives, frames, size=size, seed=seed,
                    progress=lambda done, total: say(f"  {done}/{total} frames") if done in marks else None)
        say(f"  {res.frames} frames in {res.seconds:.0f} s")
    else:
        say(f"[1/4] using the drives already rendered in {data}")
    cfg = get_config(preset).replace(metric=SCRATCH_HEAD)
    kb = fits_kb_crop(*size)  # the KB crop needs KITTI-sized frames
    say(f"[2/4] training {cfg.name} for {steps} steps (batch 4, {'dense' if dense_gt else 'sparse'} depth) ...")
    t0 = time.perf_counter()
    train(TrainConfig(model=cfg.name, out=str(run), data_root=str(data), epochs=10_000, max_steps=steps,
                      batch_size=4, lr=lr, workers=1, kb_crop=kb, seed=seed, progress=False, val_every=4, keep_resume=False,
                      dense_gt=dense_gt),
          callbacks=[StepProgress(steps, say)])
    train_s = time.perf_counter() - t0
    model = load(run / "best.safetensors")
    predictor = Predictor(model)
    test = read_split(data / "splits" / "test_files_with_gt.txt")
    protocol = Protocol("garg", kb_crop=kb)
    say(f"[3/4] scoring the held-out drive ({len(test)} frames, BTS protocol) ...")
    metrics = evaluate(predictor, test, data / "raw", data / "data_depth_annotated", protocol,
                       progress=lambda i, n: say(f"  {i}/{n} frames") if i in {n // 2, n} else None)
    baseline = best_constant(test, data / "data_depth_annotated", protocol)
    drive = Path(test[0].rgb).parts[1]
    frames_dir = data / "raw" / DATE / drive / "image_02" / "data"
    say(f"[4/4] running online over held-out drive {drive} ...")
    stats = run_stream(ImageSequence(frames_dir, fps=10.0), predictor, VideoSink(out / "demo.mp4", 10.0, overwrite=True),
                       on_frame=lambda st: say(f"  {st.frames_out} frames") if st.frames_out % 10 == 0 else None)
    pngs = []
    for f in sorted(frames_dir.iterdir())[:: max(1, frames // 4)][:4]:
        rgb = read_image(f)
        vis = np.concatenate([rgb, colorize(predictor.predict(rgb).depth, "metric")], axis=0)
        pngs.append(str(write_png(out / f"frame_{f.stem}.png", vis)))
    beats = metrics["abs_rel"] < baseline["abs_rel"]
    summary = {"model": cfg.name, "checkpoint": str(run / "best.safetensors"), "steps": steps,
               "train_s": round(train_s, 1), "test_metrics": metrics, "best_constant": baseline,
               "beats_best_constant": bool(beats), "stream": stats.summary(), "video": str(out / "demo.mp4"),
               "pngs": pngs, "mlflow": f"sqlite:///{(run / 'mlflow.db').resolve()}"}
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    say(f"test drive: AbsRel {metrics['abs_rel']:.3f}, RMSE {metrics['rmse']:.2f} m, d1 {metrics['d1']:.3f}; "
        f"the best constant depth ({baseline['depth']:.1f} m) scores AbsRel {baseline['abs_rel']:.3f}")
    if beats:
        say(f"the model beats the best constant by {100 * (1 - metrics['abs_rel'] / baseline['abs_rel']):.0f}% AbsRel "
            f"after {steps} steps ({train_s:.0f} s of training)")
    else:
        say(f"the model does NOT beat the best constant depth yet: {steps} steps were too few; "
            "train longer (fastdpt demo --steps N --force)")
    say(f"online: {stats.summary()['effective_fps']:.1f} FPS end to end, latency p50 "
        f"{stats.summary()['latency_ms_p50']:.0f} ms; wrote {out / 'demo.mp4'}, {len(pngs)} PNGs and {out / 'summary.json'}")
    return summary
