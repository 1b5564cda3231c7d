"""Distillation: a slow teacher labels unlabelled frames (a KITTI-format dense dataset, in parallel on
Ray), a fast student learns from the labels through the ordinary training, and a report compares them."""

from .._lazy import lazy_attributes
from ..errors import DistillError, LabelError
from .config import DEFAULT_STUDENT, DistillConfig

__getattr__ = lazy_attributes(__name__, {
    **{n: ".labels" for n in ("LabelSet", "LabelStats", "Teacher", "label", "prepare", "resolve_teacher",
                              "teacher_predictor")},
    "distill": ".run", "discover": ".sources", "sample": ".sources",
})

__all__ = ["DEFAULT_STUDENT", "DistillConfig", "DistillError", "LabelError", "LabelSet", "LabelStats", "Teacher",
           "discover", "distill", "label", "prepare", "resolve_teacher", "sample", "teacher_predictor"]
