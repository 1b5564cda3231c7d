"""``DistillConfig``: the options of a distillation (stored as ``distill.json``); importing it costs no
torch, so the command line can derive its options from it quickly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import ConfigError
from ..options import at_least, fraction, option, positive, usable_threads
from ..training.config import check_schedule

DEFAULT_STUDENT = "fast-effb0-f64-192x640"


@dataclass
class DistillConfig:
    """Everything a distillation needs; stored as ``distill.json`` in the run folder."""

    teacher: str = option("teacher: a preset with weights (dpt-hybrid-kitti ...), a fastdpt checkpoint or an "
                        "exported .onnx", required=True)
    out: str = option("run folder", required=True)
    frames: tuple = option("video files, image folders (recursive) or KITTI raw roots", (), required=True)
    student: str = option("student variant (preset or canonical name)", DEFAULT_STUDENT)
    teacher_weights: str | None = option("weights file for a preset teacher (else the cache or a download)")
    val_frames: tuple = option("sources held out for validation (default: the last sequences, or a single "
                             "sequence's tail)", ())
    gt_root: str | None = option("annotated depth root: also score student and teacher against ground truth")
    gt_split: str | None = option("split list of the ground-truth frames (with --gt-root)")
    gt_raw_root: str | None = option("raw root of --gt-split's images (default: the KITTI raw root among --frames)")
    labelled_root: str | None = option("KITTI-format data root of frames you have depth for (raw/, "
                                       "data_depth_annotated/, dense/ when exact): the student also trains on "
                                       "their ground truth, beside the teacher's labels")
    labelled_split: str | None = option("split list of those frames (default <labelled-root>/splits/"
                                        "train_files_with_gt.txt)")
    every: int = option("keep every K-th frame", 1)
    max_frames: int | None = option("label at most N frames")
    duplicate_level: float = option("skip a frame whose 32-px grey thumbnail differs from the last kept one by "
                                  "less than this many grey levels (0: keep all)", 1.0)
    val_fraction: float = option("fraction of frames held out (whole sequences)", 0.2)
    hflip: bool = option("average the teacher over the frame and its mirror image", False, flags=("--hflip/--no-hflip",))
    steps: int | None = option("optimiser steps of the student (default: --epochs)")
    epochs: int | None = option("epochs of the student (default 10 when --steps is not given)")
    batch_size: int = option("batch size", 4)
    lr: float = option("AdamW learning rate (a new decoder learns fastest near 5e-4..1e-3)", 5e-4)
    lr_schedule: str = option("constant | cosine (to 0 at the last step, after the warm-up)", "constant")
    warmup_steps: int = option("linear learning-rate warm-up steps", 0)
    color_jitter: bool = option("colour jitter on the student's frames (gamma, brightness, per-channel gain; the "
                                "labels come from the clean frame; -11 % AbsRel on a new drive, BENCHMARKS.md)", True,
                                flags=("--color-jitter/--no-color-jitter",))
    trim: float = option("leave out each teacher label's largest-loss pixels (fraction; frames with ground truth keep "
                         "all theirs)", 0.1)
    grad_weight: float = option("gradient-matching weight beside SILog (metric teachers)", 0.5)
    student_init: str | None = option("start the student from this checkpoint of its variant (a pruned model from "
                                      "fastdpt compress keeps its shapes) instead of the teacher's tensors")
    warm_start: bool = option("warm-start the student from the teacher's tensors where names and shapes fit", True,
                            flags=("--warm-start/--no-warm-start",))
    workers: int = option("labelling workers (more than 1, or --address: Ray actors, each holding the teacher)", 1)
    address: str | None = option("Ray cluster address for labelling (ray start --head; default: this machine)")
    threads: int | None = option("torch threads (labelling, training, the speed comparison)")
    teacher_backend: str = option("the teacher's CPU backend for labelling (auto: the fastest this machine runs)", "auto")
    data_workers: int = option("data loader processes of the student's training", 2)
    seed: int = option("random seed", 0)
    bench_runs: int = option("timed runs of each model for the speed-up (interleaved)", 5)
    flicker_frames: int = option("frames a held-out sequence for the flicker comparison (0: off)", 40)
    tracking_uri: str | None = option("MLflow tracking URI (default: SQLite in the run folder)")
    progress: bool = option("show progress", True, flags=("--progress/--no-progress",))

    def __post_init__(self) -> None:
        if not self.teacher or not self.out:
            raise ConfigError("a distillation needs a teacher (--teacher) and a run folder (--out)")
        self.frames = tuple(str(f) for f in (self.frames or ()))
        self.val_frames = tuple(str(f) for f in (self.val_frames or ()))
        at_least(self, "every", "batch_size", "workers", "bench_runs", "steps", "epochs", "max_frames", "threads")
        self.threads = usable_threads(self.threads)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give --steps or --epochs, not both")
        fraction(self, "val_fraction", low_open=True)
        fraction(self, "trim")
        if self.labelled_split is not None and self.labelled_root is None:
            raise ConfigError("--labelled-split needs --labelled-root")
        if (self.gt_root is None) != (self.gt_split is None):
            raise ConfigError("--gt-root and --gt-split go together")
        positive(self, "lr")
        check_schedule(self.lr_schedule, self.warmup_steps)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["frames"], d["val_frames"] = list(self.frames), list(self.val_frames)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# what a resume may change (everything else is the run's)
RESUME_MAY_CHANGE = {"steps", "epochs", "workers", "address", "threads", "teacher_backend", "data_workers", "bench_runs", "progress",
                     "tracking_uri", "flicker_frames", "gt_root", "gt_split", "gt_raw_root"}
# options added after runs were already made: what a run's distill.json without them was made with
LATER_OPTIONS = {"lr_schedule": "constant", "warmup_steps": 0, "color_jitter": False, "labelled_root": None,
                 "labelled_split": None}


def stored_options(out) -> dict:
    """The options the run in ``out`` was started with (its ``distill.json``), options added since at the
    values such runs were made with. Raises ``OSError`` / ``ValueError`` / ``KeyError`` when unreadable."""
    import json
    from pathlib import Path

    return {**LATER_OPTIONS, **json.loads((Path(out) / "distill.json").read_text())["config"]}


def resume_values(values: dict, given) -> dict:
    """``--resume`` without repeating the run's options: each option not in ``given`` (the names passed on
    the command line) takes the value the run in ``values["out"]`` was started with, so ``fastdpt distill
    --teacher T --out DIR --resume`` continues the run as it was made. Options that were passed are kept,
    and checked against the run as before (only ``RESUME_MAY_CHANGE`` may differ). Without a readable
    record the values are returned unchanged (the run's own check says why)."""
    try:
        stored = stored_options(values["out"])
    except (OSError, ValueError, KeyError, TypeError):
        return values
    known = {f.name for f in fields(DistillConfig)}
    return {k: (tuple(stored[k]) if isinstance(stored[k], list) else stored[k])
            if k in known and k in stored and k not in given and k != "out" else v for k, v in values.items()}
