"""Options of a training run. Defaults are the reference study's recipe (REFERENCE.md section 4).

Each field's metadata carries its command-line help; ``fastdpt train`` derives its options from
these fields, so the command line and the library cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..options import at_least, fraction, option, positive
from ..evaluation.metrics import METRIC_KEYS, Protocol

if TYPE_CHECKING:  # the data module imports torch; options are checked without it
    from ..data.kitti import DataPaths


LR_SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: str, warmup_steps: int) -> None:
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if warmup_steps < 0:
        raise ConfigError(f"--warmup-steps must not be negative, got {warmup_steps}")


@dataclass
class TrainConfig:
    """Everything a training run needs; stored as ``train_config.json`` in the run folder."""

    model: str = option("variant to train: preset or canonical name (a metric head for silog); with --resume, "
                      "the run's", flags=("--model", "-m"))
    out: str = option("run folder", flags=("--out",), required=True)
    data_root: str | None = option("KITTI-format root with raw/, data_depth_annotated/, splits/ (e.g. from `data synth`)")
    raw_root: str | None = option("KITTI raw root (default <data-root>/raw)")
    gt_root: str | None = option("annotated depth root (default <data-root>/data_depth_annotated)")
    train_split: str | None = option("training split list (default <data-root>/splits/train_files_with_gt.txt)")
    val_split: str | None = option("validation split list (default <data-root>/splits/val_files_with_gt.txt)")
    init: str | None = option("warm-start weights (official, Hugging Face or fastdpt)")
    backbone_weights: str | None = option("timm ImageNet weights for new CNN tensors, or 'hub'")
    epochs: int = option("epochs", 20)
    max_steps: int = option("stop after this many optimiser steps (-1: no limit)", -1)
    batch_size: int = option("batch size", 1)
    accumulate: int = option("gradient accumulation (batches per optimiser step)", 1)
    lr: float = option("AdamW learning rate", 1e-5)
    betas: tuple[float, float] = option("AdamW betas", (0.9, 0.999))
    eps: float = option("AdamW eps", 1e-8)
    weight_decay: float = option("AdamW weight decay", 0.01)
    lr_schedule: str = option("constant | cosine (decays to 0 over the run's optimiser steps, after the warm-up)",
                              "constant")
    warmup_steps: int = option("linear learning-rate warm-up over this many optimiser steps", 0)
    clip_value: float | None = option("clip gradients by value (0 or none: off)", 0.5)
    loss: str = option("silog (metric heads) | ssi (scale-and-shift-invariant + gradient, any head)", "silog")
    silog_lambda: float = option("lambda of the SILog loss", 0.5)
    grad_weight: float = option("weight of multi-scale gradient matching added to silog (ssi has it at 0.5)", 0.0)
    trim: float = option("leave out this fraction of each image's largest-loss pixels (pseudo-labels: 0.1)", 0.0)
    exact_split: str | None = option("split list of the training frames whose depth is ground truth among "
                                     "pseudo-labels: --trim leaves them whole")
    dense_gt: bool = option("train on dense depth maps (synthetic data's dense/) instead of sparse annotations",
                          False, flags=("--dense-gt/--sparse-gt",))
    precision: str = option("fp32 | fp16 | bf16 (mixed precision, GPU only)", "fp32")
    channels_last: bool = option("channels-last convolutions (faster on GPUs)", False,
                               flags=("--channels-last/--no-channels-last",))
    workers: int = option("data loader processes", 2)
    seed: int = option("random seed (recorded in the run)", 0)
    monitor: str = option(f"validation metric that picks best.safetensors ({', '.join(METRIC_KEYS)})", "abs_rel")
    kb_crop: bool = option("KB crop (352x1216) for training and validation", True, flags=("--kb-crop/--no-kb-crop",))
    eval_crop: str | None = option("validation crop on the GT: garg | eigen | none", "garg")
    hflip: float = option("horizontal flip probability", 0.5)
    random_crop: tuple[int, int] | None = option("random crop HxW")
    rotate_deg: float = option("max random rotation, degrees", 0.0, flags=("--rotate",))
    color: bool = option("colour jitter", False, flags=("--color-jitter",))
    limit_train_batches: float = option("fraction (<= 1) or number (> 1) of training batches an epoch", 1.0)
    limit_val_batches: float = option("fraction (<= 1) or number (> 1) of validation batches", 1.0)
    val_every: int = option("validate (and choose best.safetensors) every N epochs", 1)
    checkpoint_every: int = option("also save the resume state every N optimiser steps (0: epoch ends only)", 0)
    keep_resume: bool = option("keep resume.ckpt (weights + optimiser state, ~3x a checkpoint) once the run has "
                               "finished, so --resume can extend it; --drop-resume deletes it then", True,
                               flags=("--keep-resume/--drop-resume",))
    max_time_s: float | None = option("stop after this much training time, seconds", None)
    tracking_uri: str | None = option("MLflow tracking URI (default: SQLite in the run folder)")
    log_checkpoints: bool = option("also copy the checkpoints into MLflow's artefact store (by default it records "
                                   "their paths: one copy on disk)", False,
                                   flags=("--log-checkpoints/--no-log-checkpoints",))
    accelerator: str = option("Lightning accelerator: auto | cpu | gpu", "auto")
    devices: str = option("Lightning devices: auto, a count, or a list", "auto")
    progress: bool = option("show a progress bar", True, flags=("--progress/--no-progress",))

    def __post_init__(self) -> None:
        if not self.model or not self.out:
            raise ConfigError("a training run needs a model (--model) and a run folder (--out)")
        if self.betas is not None:
            self.betas = tuple(float(b) for b in self.betas)
        if self.random_crop is not None:
            self.random_crop = tuple(int(v) for v in self.random_crop)
        if self.eval_crop == "none":
            self.eval_crop = None
        if self.monitor not in METRIC_KEYS:
            raise ConfigError(f"--monitor must be one of {', '.join(METRIC_KEYS)}, got {self.monitor!r}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"--precision must be fp32, fp16 or bf16, got {self.precision!r}")
        at_least(self, "epochs", "batch_size", "accumulate", "val_every")
        fraction(self, "trim")
        if self.grad_weight < 0:
            raise ConfigError(f"--grad-weight must not be negative, got {self.grad_weight}")
        positive(self, "lr")
        check_schedule(self.lr_schedule, self.warmup_steps)
        if self.clip_value is not None and self.clip_value <= 0:
            self.clip_value = None
        Protocol(self.eval_crop, self.kb_crop)  # validates the crop

    @property
    def protocol(self) -> Protocol:
        """The evaluation protocol of validation (and of `fastdpt eval` for the same numbers); relative
        variants are scored after per-image scale-and-shift alignment (`fastdpt eval --align`)."""
        from ..presets import get_config

        return Protocol(crop=self.eval_crop, kb_crop=self.kb_crop, align=get_config(self.model).metric is None)

    def paths(self) -> DataPaths:
        from ..data.kitti import DataPaths

        return DataPaths.resolve(self.data_root, self.raw_root, self.gt_root, train_split=self.train_split,
                                 val_split=self.val_split)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training options {unknown}")
        return cls(**data)
