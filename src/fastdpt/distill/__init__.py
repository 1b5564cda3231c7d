"""Distillation: a slow teacher labels unlabelled frames (a KITTI-format dense dataset, in parallel on
Ray), a fast student learns from the labels through the ordinary training, and a report compares them."""

from ..errors import DistillError, LabelError
from .labels import LabelSet, LabelStats, Teacher, label, prepare, resolve_teacher, teacher_predictor
from .run import DEFAULT_STUDENT, DistillConfig, distill
from .sources import discover, sample

__all__ = ["DEFAULT_STUDENT", "DistillConfig", "DistillError", "LabelError", "LabelSet", "LabelStats", "Teacher",
           "discover", "distill", "label", "prepare", "resolve_teacher", "sample", "teacher_predictor"]
