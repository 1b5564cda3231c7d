"""The BTS evaluation protocol over a split: predict each frame, score it, average over frames.

:func:`predict_and_score` is the one per-frame step; ``fastdpt eval`` (:func:`evaluate`) and
training's validation both call it, so the numbers that choose ``best.safetensors`` are the
numbers ``fastdpt eval`` reports.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.kitti import SplitEntry, apply_kb_crop, find_gt
from ..errors import DataError
from ..io import read_depth_png, read_image, write_depth_png
from .metrics import MetricAverager, Protocol, score_image

DepthFn = Callable[[np.ndarray], np.ndarray]  # H x W x 3 frame -> H x W depth (metres)


def prediction_png_name(frame_id: str) -> str:
    """``2011_09_26/..._sync/image_02/data/0000000069.png`` -> ``2011_09_26_..._sync_image_02_data_0000000069.png``."""
    return frame_id + ".png"


def predict_and_score(depth_fn: DepthFn, image: np.ndarray, gt: np.ndarray,
                      protocol: Protocol = Protocol()) -> tuple[np.ndarray, dict[str, float] | None]:
    """One frame of the protocol: (KB crop), predict, score against the full-resolution GT.
    Returns the prediction as made (352 x 1216 with the KB crop) and its metrics (None: no valid GT)."""
    if gt.shape != image.shape[:2]:
        raise DataError(f"GT {gt.shape} and image {image.shape[:2]} differ in size")
    if protocol.kb_crop:
        image = apply_kb_crop(image)
    pred = depth_fn(image)
    return pred, score_image(pred, gt, protocol.crop, protocol.kb_crop, protocol.min_depth, protocol.max_depth,
                             protocol.align)


def evaluate(predictor, entries: list[SplitEntry], raw_root: str | os.PathLike, gt_root: str | os.PathLike,
             protocol: Protocol = Protocol(), save_png: str | os.PathLike | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Score a model (a :class:`~fastdpt.predict.Predictor`) on a split and time it. Relative models
    need ``protocol.align`` (scale and shift fitted per image, the MiDaS protocol).

    Frames whose GT is listed as None or missing on disk are skipped, as BTS does. ``save_png``
    writes each prediction (as made: 352x1216 with the KB crop, else full size) as a uint16 PNG of
    depth x 256, named after the split line's RGB path. Returns the nine metrics, ``images``,
    ``skipped`` and ``fps`` (prediction only).
    """
    if predictor.config.output_kind != "metric" and not protocol.align:
        raise DataError(f"{predictor.config.name} predicts relative depth: score it with scale-and-shift "
                        "alignment (--align), or use a metric model")
    if save_png and protocol.align:
        raise DataError("--save-png writes metric depth (x 256); it cannot be combined with --align")
    avg = MetricAverager()
    seconds, skipped = 0.0, 0

    def timed(image: np.ndarray) -> np.ndarray:
        nonlocal seconds
        t0 = time.perf_counter()
        depth = predictor.predict(image).depth
        seconds += time.perf_counter() - t0
        return depth

    for i, e in enumerate(entries):
        gt_path = find_gt(gt_root, e.gt)
        img_path = Path(raw_root) / e.rgb
        if gt_path is None or not img_path.is_file():
            skipped += 1
        else:
            pred, metrics = predict_and_score(timed, read_image(img_path), read_depth_png(gt_path), protocol)
            if save_png:
                write_depth_png(Path(save_png) / prediction_png_name(e.frame_id), pred)
            avg.add(metrics)
        if progress:  # every line counts, scored or skipped, so the count reaches the total
            progress(i + 1, len(entries))
    res = avg.result()
    res["images"] = avg.count
    res["skipped"] = skipped
    res["fps"] = avg.count / seconds if seconds else float("nan")
    return res


def eval_pngs(pred_dir: str | os.PathLike, gt_root: str | os.PathLike, entries: list[SplitEntry],
              protocol: Protocol = Protocol()) -> dict:
    """Score existing prediction PNGs named after the split lines, as BTS's ``eval_with_pngs.py``."""
    avg = MetricAverager()
    missing_pred, skipped = [], 0
    for e in entries:
        gt_path = find_gt(gt_root, e.gt)
        if gt_path is None:
            skipped += 1
            continue
        p = Path(pred_dir) / prediction_png_name(e.frame_id)
        if not p.is_file():
            missing_pred.append(p.name)
            continue
        avg.add(score_image(read_depth_png(p), read_depth_png(gt_path), protocol.crop, protocol.kb_crop,
                            protocol.min_depth, protocol.max_depth, protocol.align))
    if missing_pred:
        raise DataError(f"{len(missing_pred)} predictions missing in {pred_dir}, e.g. {missing_pred[0]}")
    res = avg.result()
    res["images"] = avg.count
    res["skipped"] = skipped
    return res


def best_constant(entries: list[SplitEntry], gt_root: str | os.PathLike, protocol: Protocol = Protocol(),
                  candidates: int = 99) -> dict:
    """The best a model that ignores its input can score: the constant depth (among ``candidates``
    quantiles of the valid GT) with the lowest mean AbsRel over the frames, and all its metrics.
    A trained model that does not beat it has learnt nothing useful yet."""
    gts = [read_depth_png(p) for e in entries if (p := find_gt(gt_root, e.gt)) is not None]
    if not gts:
        raise DataError(f"no annotated frame under {gt_root}")
    values = np.concatenate([g[(g > protocol.min_depth) & (g < protocol.max_depth)] for g in gts])
    if not values.size:
        raise DataError(f"no depth within {protocol.min_depth:g}..{protocol.max_depth:g} m in the {len(gts)} annotated "
                        f"frames under {gt_root}: nothing to score against")
    best = None
    for c in np.quantile(values, np.linspace(0.01, 0.99, candidates)):
        avg = MetricAverager()
        for g in gts:
            avg.add(score_image(np.full_like(g, c), g, protocol.crop, False, protocol.min_depth, protocol.max_depth))
        m = avg.result()
        if best is None or m["abs_rel"] < best["abs_rel"]:
            best = {**m, "depth": float(c), "images": avg.count}
    return best
