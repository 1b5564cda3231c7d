"""Evaluation: the KITTI metrics and crops (metrics), the BTS protocol over a split (protocol)."""

from .._lazy import lazy_attributes
from .metrics import METRIC_KEYS, MetricAverager, Protocol, compute_errors, crop_mask, score_image

__getattr__ = lazy_attributes(__name__, {n: ".protocol" for n in (
    "best_constant", "eval_pngs", "evaluate", "predict_and_score", "prediction_png_name")})

__all__ = ["METRIC_KEYS", "best_constant", "MetricAverager", "Protocol", "compute_errors", "crop_mask", "eval_pngs", "evaluate",
           "predict_and_score", "prediction_png_name", "score_image"]
