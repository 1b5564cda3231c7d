"""The LightningModule: a DPT variant, an injected loss, AdamW, and validation by the evaluation
protocol itself (the same per-frame step as ``fastdpt eval``)."""

from __future__ import annotations

import math
from dataclasses import asdict
from functools import partial
from typing import Callable

import lightning as L
import torch

from ..errors import NonFiniteLossError
from ..evaluation.metrics import METRIC_KEYS, MetricAverager, Protocol
from ..evaluation.protocol import predict_and_score
from ..losses import make_loss
from ..models import DPT
from ..models.structure import apply_structure
from ..presets import get_config
from ..transforms import Transforms


class DepthModule(L.LightningModule):
    """Trains one variant.

    Args:
        model: preset or canonical name of the variant.
        loss: ``silog`` | ``ssi``, or any callable ``(pred, gt, mask) -> loss`` (module-level, so the
            module stays picklable for DDP spawn and Ray workers).
        loss_options: keyword arguments of a named loss (e.g. ``{"lam": 0.5}``).
        lr, betas, eps, weight_decay: AdamW.
        lr_schedule, warmup_steps: ``constant`` or ``cosine`` (towards 0 at the end of the run's optimiser
            steps, as Lightning estimates them), after a linear warm-up; see :func:`lr_factor`.
        protocol: how validation frames are scored (:class:`~fastdpt.evaluation.Protocol`, or its fields).
        channels_last: channels-last memory order for the convolutions (faster on GPUs with bf16).
        structure: pruned shapes (:mod:`fastdpt.models.structure`) to train a pruned model of the variant.

    The forward path is :class:`~fastdpt.transforms.Transforms` (resize in, normalise) -> DPT ->
    resize back to the ground truth's size: the Predictor's path. Validation logs ``val/<metric>``
    once an epoch, averaged over frames as ``fastdpt eval`` averages them.
    """

    def __init__(self, model: str, loss: str | Callable = "silog", loss_options: dict | None = None,
                 lr: float = 1e-5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, lr_schedule: str = "constant", warmup_steps: int = 0, protocol: Protocol | dict | None = None,
                 channels_last: bool = False, structure: dict | None = None) -> None:
        super().__init__()
        # hyperparameters hold plain values only, so resume.ckpt loads with weights_only=True
        protocol = asdict(protocol) if isinstance(protocol, Protocol) else dict(protocol or asdict(Protocol()))
        self.save_hyperparameters(ignore=["loss"] if callable(loss) else None)
        self.config = get_config(model)
        self.model = apply_structure(DPT(self.config), structure or {})  # a pruned model keeps its shapes
        self.memory = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = make_loss(loss, self.config.output_kind, **(loss_options or {})) if isinstance(loss, str) else loss
        self.protocol = Protocol(**protocol)
        self._val = MetricAverager()
        self._transforms: Transforms | None = None
        self.val_metrics: dict[str, float] = {}

    def transforms(self) -> Transforms:
        """The variant's transforms on the module's current device (built once per device)."""
        if self._transforms is None or self._transforms.device != self.device:
            self._transforms = Transforms(self.config, self.device)
        return self._transforms

    def depth(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> depth (B, H', W') at ``size`` (default H x W)."""
        t = self.transforms()
        x = t.preprocess(images).contiguous(memory_format=self.memory)
        return t.postprocess(self.model(x), size or tuple(images.shape[-2:]))

    def training_step(self, batch, batch_idx):
        pred = self.depth(batch["image"], tuple(batch["depth"].shape[-2:]))
        exact = batch.get("exact")
        if exact is not None and bool(exact.any()):  # ground truth among pseudo-labels: not trimmed
            loss = self.loss_fn(pred, batch["depth"], batch["mask"], exact=exact)
        else:
            loss = self.loss_fn(pred, batch["depth"], batch["mask"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                "training stopped (the last good checkpoint is kept)")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(pred))
        if self._scheduled():
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False,
                     batch_size=len(pred))
        return loss

    # -- validation: the evaluation protocol, frame by frame --------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = MetricAverager()

    def validation_step(self, batch, batch_idx):
        t = self.transforms()

        def depth_fn(image):
            return t(self.model, image)[0].cpu().numpy()

        for image, gt in zip(batch["image"], batch["depth"]):
            frame = image.permute(1, 2, 0).cpu().numpy()  # H x W x 3 float in [0, 1], as eval reads it
            _, metrics = predict_and_score(depth_fn, frame, gt.cpu().numpy(), self.protocol)
            self._val.add(metrics)

    def on_validation_epoch_end(self) -> None:
        sums = torch.tensor([self._val.sums[k] for k in METRIC_KEYS] + [self._val.count], dtype=torch.float64,
                            device=self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        count = int(sums[-1].item())
        self.val_metrics = {k: (float(sums[i]) / count if count else float("nan")) for i, k in enumerate(METRIC_KEYS)}
        self.val_metrics["images"] = count
        for k in METRIC_KEYS:
            self.log(f"val/{k}", self.val_metrics[k], prog_bar=k == "abs_rel", sync_dist=False)

    def _scheduled(self) -> bool:
        return self.hparams.get("lr_schedule", "constant") != "constant" or self.hparams.get("warmup_steps", 0) > 0

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
                                weight_decay=hp.weight_decay)
        if not self._scheduled():
            return opt
        total = int(self.trainer.estimated_stepping_batches)  # max_steps, or epochs x steps an epoch
        factor = partial(lr_factor, schedule=hp.lr_schedule, warmup=hp.warmup_steps, total=total)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}}


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based) as a fraction of ``lr``: a linear warm-up
    over ``warmup`` steps, then constant or half a cosine from 1 at the warm-up's end to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0
