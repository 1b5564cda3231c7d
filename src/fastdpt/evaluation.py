"""The KITTI evaluation protocol of BTS's ``eval_with_pngs.py`` (used for DPT's published numbers).

Per image: (KB-cropped predictions are pasted into a zero canvas of the GT size), predictions
clipped to [min, max] with inf -> max and nan -> min, valid GT = min < gt < max, optional Garg or
Eigen crop on the full-resolution GT, then the nine metrics; the reported numbers are the means over
images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

METRIC_KEYS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "log10")
KB_H, KB_W = 352, 1216


def kb_crop_box(height: int, width: int) -> tuple[int, int]:
    """(top, left) of the 352 x 1216 KB crop: bottom-aligned, horizontally centred."""
    return height - KB_H, (width - KB_W) // 2


def apply_kb_crop(array: np.ndarray) -> np.ndarray:
    top, left = kb_crop_box(*array.shape[:2])
    return array[top:top + KB_H, left:left + KB_W]


def kb_uncrop(pred: np.ndarray, height: int, width: int) -> np.ndarray:
    """Paste a 352 x 1216 prediction into a zero canvas of the full GT size."""
    if pred.shape != (KB_H, KB_W):
        raise ValueError(f"a KB-cropped prediction must be {KB_H}x{KB_W}, got {pred.shape[0]}x{pred.shape[1]}")
    out = np.zeros((height, width), dtype=np.float32)
    top, left = kb_crop_box(height, width)
    out[top:top + KB_H, left:left + KB_W] = pred
    return out


def crop_mask(height: int, width: int, crop: str | None) -> np.ndarray:
    """Garg or Eigen evaluation crop on the full-resolution GT (``None``: everything)."""
    mask = np.zeros((height, width), dtype=bool)
    if crop is None:
        mask[:] = True
    elif crop == "garg":
        mask[int(0.40810811 * height):int(0.99189189 * height), int(0.03594771 * width):int(0.96405229 * width)] = True
    elif crop == "eigen":
        mask[int(0.3324324 * height):int(0.91351351 * height), int(0.03594771 * width):int(0.96405229 * width)] = True
    else:
        raise ValueError(f"crop must be None, 'garg' or 'eigen', got {crop!r}")
    return mask


def compute_errors(gt: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray) -> dict[str, float]:
    """The nine metrics over matching 1-D arrays of valid pixels (float64)."""
    gt = torch.as_tensor(gt, dtype=torch.float64)
    pred = torch.as_tensor(pred, dtype=torch.float64)
    if gt.numel() == 0:
        raise ValueError("no valid pixel to score")
    ratio = torch.maximum(gt / pred, pred / gt)
    diff = gt - pred
    err = torch.log(pred) - torch.log(gt)
    return {
        "d1": (ratio < 1.25).double().mean().item(),
        "d2": (ratio < 1.25**2).double().mean().item(),
        "d3": (ratio < 1.25**3).double().mean().item(),
        "abs_rel": (diff.abs() / gt).mean().item(),
        "sq_rel": (diff**2 / gt).mean().item(),
        "rmse": diff.pow(2).mean().sqrt().item(),
        "rmse_log": err.pow(2).mean().sqrt().item(),
        "silog": 100 * math.sqrt(max(err.pow(2).mean().item() - err.mean().item() ** 2, 0.0)),
        "log10": (torch.log10(pred) - torch.log10(gt)).abs().mean().item(),
    }


def score_image(pred: np.ndarray, gt: np.ndarray, crop: str | None = "garg", kb_cropped: bool = False,
                min_depth: float = 1e-3, max_depth: float = 80.0) -> dict[str, float] | None:
    """Metrics for one image; ``pred`` at GT size, or 352x1216 with ``kb_cropped``.
    Returns None when the image has no valid GT pixel."""
    gt = np.asarray(gt, dtype=np.float32)
    pred = np.asarray(pred, dtype=np.float32)
    if kb_cropped:
        pred = kb_uncrop(pred, *gt.shape)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    pred = pred.copy()
    pred[pred < min_depth] = min_depth
    pred[pred > max_depth] = max_depth
    pred[np.isinf(pred)] = max_depth
    pred[np.isnan(pred)] = min_depth
    gt = np.where(np.isfinite(gt), gt, 0)
    valid = (gt > min_depth) & (gt < max_depth) & crop_mask(*gt.shape, crop)
    if not valid.any():
        return None
    return compute_errors(gt[valid], pred[valid])


@dataclass
class MetricAverager:
    """Per-image metrics, averaged over images (the BTS convention)."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRIC_KEYS, 0.0))
    count: int = 0

    def add(self, metrics: dict[str, float] | None) -> None:
        if metrics is None:
            return
        for k in METRIC_KEYS:
            self.sums[k] += metrics[k]
        self.count += 1

    def result(self) -> dict[str, float]:
        if not self.count:
            return {k: float("nan") for k in METRIC_KEYS}
        return {k: v / self.count for k, v in self.sums.items()}


# -- running the protocol ----------------------------------------------------------------------------
def prediction_png_name(frame_id: str) -> str:
    """``2011_09_26/..._sync/image_02/data/0000000069.png`` -> ``2011_09_26_..._sync_image_02_data_0000000069.png``."""
    return frame_id + ".png"


def evaluate(predictor, entries, raw_root, gt_root, crop: str | None = "garg", kb_crop: bool = False,
             save_png: str | None = None, min_depth: float = 1e-3, max_depth: float = 80.0, progress=None) -> dict:
    """Score a metric model on a split (BTS protocol) and time it.

    Frames whose GT is listed as None or missing on disk are skipped, as BTS does. With ``kb_crop``
    the image is cropped to 352x1216 before prediction and the prediction pasted back for scoring.
    ``save_png`` writes each prediction (as made: 352x1216 with ``kb_crop``, else full size) as a
    uint16 PNG of depth x 256, named after the split line's RGB path.
    """
    import time
    from pathlib import Path

    from .data.kitti import DataError, find_gt, read_depth_png, read_rgb, write_depth_png

    if predictor.config.output_kind != "metric":
        raise ValueError(f"{predictor.config.name} predicts relative depth; KITTI scoring needs a metric model")
    avg = MetricAverager()
    seconds, skipped = 0.0, 0
    for i, e in enumerate(entries):
        gt_path = find_gt(gt_root, e.gt)
        img_path = Path(raw_root) / e.rgb
        if gt_path is None or not img_path.is_file():
            skipped += 1
            continue
        image = read_rgb(img_path)
        gt = read_depth_png(gt_path)
        if gt.shape != image.shape[:2]:
            raise DataError(f"{gt_path}: GT {gt.shape} and image {image.shape[:2]} differ in size")
        if kb_crop:
            image = apply_kb_crop(image)
        t0 = time.perf_counter()
        pred = predictor.predict(image).depth
        seconds += time.perf_counter() - t0
        if save_png:
            write_depth_png(Path(save_png) / prediction_png_name(e.frame_id), pred)
        avg.add(score_image(pred, gt, crop, kb_crop, min_depth, max_depth))
        if progress:
            progress(i + 1, len(entries))
    res = avg.result()
    res["images"] = avg.count
    res["skipped"] = skipped
    res["fps"] = avg.count / seconds if seconds else float("nan")
    return res


def eval_pngs(pred_dir, gt_root, entries, crop: str | None = "garg", kb_crop: bool = False,
              min_depth: float = 1e-3, max_depth: float = 80.0) -> dict:
    """Score existing prediction PNGs named after the split lines, as BTS's ``eval_with_pngs.py``."""
    from pathlib import Path

    from .data.kitti import DataError, find_gt, read_depth_png

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
        avg.add(score_image(read_depth_png(p), read_depth_png(gt_path), crop, kb_crop, min_depth, max_depth))
    if missing_pred:
        raise DataError(f"{len(missing_pred)} predictions missing in {pred_dir}, e.g. {missing_pred[0]}")
    res = avg.result()
    res["images"] = avg.count
    res["skipped"] = skipped
    return res
