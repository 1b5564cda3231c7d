"""The offline demo: synthetic drives -> a few minutes of training -> online run on a held-out drive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from .presets import get_config
from .errors import FastDPTError

# the fast presets carry the official KITTI head, which only trains from the official weights; from
# scratch the demo uses a head whose depth range starts sensible: 1 / (0.01 y + 0.0125) <= 80 m
SCRATCH_HEAD = (0.01, 0.0125)


def run_demo(out: str | Path = "demo", minutes: float = 3.0, preset: str = "fast-effb0-f64-128x416",
             drives: int = 4, frames: int = 40, seed: int = 0, force: bool = False,
             say: Callable[[str], None] = print, size: tuple[int, int] = (375, 1242), lr: float = 3e-4) -> dict:
    from .api import load
    from .data.kitti import fits_kb_crop, read_split
    from .data.synthetic import DATE, synth
    from .evaluation import Protocol, evaluate
    from .io import read_image, write_png
    from .predict import Predictor
    from .stream import ImageSequence, VideoSink, run_stream
    from .training import TrainConfig, train
    from .viz import colorize

    out = Path(out)
    data, run = out / "data", out / "run"
    if run.exists():
        if not force:
            raise FastDPTError(f"{run} holds an earlier demo run; pass --force to replace it or choose another --out")
        shutil.rmtree(run)
    if not (data / "splits" / "test_files_with_gt.txt").is_file():
        say(f"rendering {drives} synthetic drives x {frames} frames into {data} ...")
        res = synth(data, drives, frames, size=size, seed=seed)
        say(f"  {res.frames} frames in {res.seconds:.0f} s")
    cfg = get_config(preset).replace(metric=SCRATCH_HEAD)
    say(f"training {cfg.name} for {minutes:g} min on the CPU ...")
    kb = fits_kb_crop(*size)  # the KB crop needs KITTI-sized frames
    train(TrainConfig(model=cfg.name, out=str(run), data_root=str(data), epochs=1000, max_time_s=minutes * 60,
                      batch_size=4, lr=lr, workers=1, kb_crop=kb, seed=seed))
    model = load(run / "best.safetensors")
    predictor = Predictor(model)
    test = read_split(data / "splits" / "test_files_with_gt.txt")
    metrics = evaluate(predictor, test, data / "raw", data / "data_depth_annotated", Protocol("garg", kb_crop=kb))
    drive = Path(test[0].rgb).parts[1]
    frames_dir = data / "raw" / DATE / drive / "image_02" / "data"
    say(f"running online over held-out drive {drive} ...")
    stats = run_stream(ImageSequence(frames_dir, fps=10.0), predictor, VideoSink(out / "demo.mp4", 10.0))
    pngs = []
    for f in sorted(frames_dir.iterdir())[:: max(1, frames // 4)][:4]:
        rgb = read_image(f)
        vis = np.concatenate([rgb, colorize(predictor.predict(rgb).depth, "metric")], axis=0)
        pngs.append(str(write_png(out / f"frame_{f.stem}.png", vis)))
    summary = {"model": cfg.name, "checkpoint": str(run / "best.safetensors"), "test_metrics": metrics,
               "stream": stats.summary(), "video": str(out / "demo.mp4"), "pngs": pngs,
               "mlflow": f"sqlite:///{(run / 'mlflow.db').resolve()}"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    say(f"test drive: AbsRel {metrics['abs_rel']:.3f}, RMSE {metrics['rmse']:.2f} m, d1 {metrics['d1']:.3f}; "
        f"online {stats.summary()['effective_fps']:.1f} FPS end to end, latency p50 "
        f"{stats.summary()['latency_ms_p50']:.0f} ms")
    say(f"wrote {out / 'demo.mp4'}, {len(pngs)} PNGs and {out / 'summary.json'}")
    return summary
