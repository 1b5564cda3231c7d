"""The KITTI metrics of BTS's ``eval_with_pngs.py`` (used for DPT's published numbers).

Per image: (KB-cropped predictions are pasted into a zero canvas of the GT size), predictions
clipped to [min, max] with inf -> max and nan -> min, valid GT = min < gt < max, optional Garg or
Eigen crop on the full-resolution GT, then the nine metrics; the reported numbers are the means over
images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, DataError

if TYPE_CHECKING:  # torch loads when a score is computed, not when options are checked
    import torch

METRIC_KEYS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "log10")
CROPS = ("garg", "eigen", None)


@dataclass(frozen=True)
class Protocol:
    """How a frame is scored: ``crop`` (``garg``, ``eigen`` or None) on the full-resolution GT,
    ``kb_crop`` (predict on the 352 x 1216 KB crop, paste into a zero canvas), the valid depth range,
    and ``align`` for relative models (the MiDaS protocol: the prediction, relative inverse depth, is
    fitted to 1 / GT by least-squares scale and shift on the scored pixels, then inverted).
    The defaults are the BTS protocol for KITTI Eigen; training's validation and ``fastdpt eval``
    share this one object."""

    crop: str | None = "garg"
    kb_crop: bool = False
    min_depth: float = 1e-3
    max_depth: float = 80.0
    align: bool = False  # relative predictions: least-squares scale and shift in inverse depth per image

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ConfigError(f"crop must be garg, eigen or none, got {self.crop!r}")
        if not 0 <= self.min_depth < self.max_depth:
            raise ConfigError(f"need 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")


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
        raise ConfigError(f"crop must be None, 'garg' or 'eigen', got {crop!r}")
    return mask


def compute_errors(gt: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray) -> dict[str, float]:
    """The nine metrics over matching 1-D arrays of valid pixels (float64)."""
    import torch

    gt = torch.as_tensor(gt, dtype=torch.float64)
    pred = torch.as_tensor(pred, dtype=torch.float64)
    if gt.numel() == 0:
        raise DataError("no valid pixel to score")
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


def align_inverse_depth(pred_inv: np.ndarray, gt: np.ndarray, valid: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """Depth from relative inverse depth: s * pred + t fitted to 1 / gt on ``valid`` (least squares),
    then inverted (inverse depth floored at 1 / max_depth)."""
    x = pred_inv[valid].astype(np.float64)
    y = 1.0 / gt[valid].astype(np.float64)
    a = np.stack([x, np.ones_like(x)], 1)
    (s, t), *_ = np.linalg.lstsq(a, y, rcond=None)
    inv = s * pred_inv.astype(np.float64) + t
    return (1.0 / np.maximum(inv, 1.0 / max_depth)).astype(np.float32)


def score_image(pred: np.ndarray, gt: np.ndarray, crop: str | None = "garg", kb_cropped: bool = False,
                min_depth: float = 1e-3, max_depth: float = 80.0, align: bool = False) -> dict[str, float] | None:
    """Metrics for one image; ``pred`` at GT size, or 352x1216 with ``kb_cropped``; with ``align``,
    ``pred`` is relative inverse depth (see :class:`Protocol`). Returns None when the image has no
    valid GT pixel."""
    gt = np.asarray(gt, dtype=np.float32)
    pred = np.asarray(pred, dtype=np.float32)
    if kb_cropped:
        from ..data.kitti import kb_uncrop

        pred = kb_uncrop(pred, *gt.shape)
    if pred.shape != gt.shape:
        raise DataError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    if align:
        valid = (gt > min_depth) & (gt < max_depth) & crop_mask(*gt.shape, crop) & np.isfinite(pred)
        if not valid.any():
            return None
        pred = align_inverse_depth(pred, gt, valid, max_depth)
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

    def merge(self, other: "MetricAverager") -> None:
        for k in METRIC_KEYS:
            self.sums[k] += other.sums[k]
        self.count += other.count

    def result(self) -> dict[str, float]:
        if not self.count:
            return {k: float("nan") for k in METRIC_KEYS}
        return {k: v / self.count for k, v in self.sums.items()}
