"""Evaluation: the KITTI metrics and crops (metrics), the BTS protocol over a split (protocol)."""

from .metrics import METRIC_KEYS, MetricAverager, Protocol, compute_errors, crop_mask, score_image
from .protocol import best_constant, eval_pngs, evaluate, predict_and_score, prediction_png_name

__all__ = ["METRIC_KEYS", "best_constant", "MetricAverager", "Protocol", "compute_errors", "crop_mask", "eval_pngs", "evaluate",
           "predict_and_score", "prediction_png_name", "score_image"]
