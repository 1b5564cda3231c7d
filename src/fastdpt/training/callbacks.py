"""Callbacks of a run: fastdpt checkpoints (last / best safetensors) and the full resume state."""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L

from ..io import disk_full, is_disk_full
from ..weights import save_checkpoint


class SaveCheckpoints(L.Callback):
    """Every epoch: ``last.safetensors`` and, when the monitored validation metric improves,
    ``best.safetensors`` (with that epoch's metrics in its metadata), then ``resume.ckpt`` (weights,
    optimiser, loops, callbacks); also ``resume.ckpt`` every ``every_n_steps`` optimiser steps.

    ``best_metrics`` / ``best_epoch`` hold the validation metrics of the best epoch so far, exactly as
    validation computed them (the evaluation protocol's own averages)."""

    def __init__(self, run: str | os.PathLike, monitor: str = "abs_rel", every_n_steps: int = 0) -> None:
        self.run = Path(run)
        self.monitor = monitor
        self.every_n_steps = every_n_steps
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict | None = None

    def higher_is_better(self) -> bool:
        return self.monitor.startswith("d")

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics}

    def load_state_dict(self, state):
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.best_metrics = state.get("best_metrics")

    def _resume_state(self, trainer) -> None:
        tmp = self.run / "resume.ckpt.part"
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # full state: optimiser, loops, callbacks
        except BaseException as e:  # a full disk or Ctrl-C mid-save: no half-written file is left behind
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)
            if is_disk_full(e):
                raise disk_full(self.run / "resume.ckpt", written) from None
            raise
        if trainer.is_global_zero:
            os.replace(tmp, self.run / "resume.ckpt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loader = getattr(trainer.datamodule, "train_loader", None) if trainer.datamodule is not None else None
        if loader is not None:  # the position the resume state records: batches trained this epoch
            loader.batches_done = batch_idx + 1
        if self.every_n_steps and trainer.global_step and trainer.global_step % self.every_n_steps == 0 \
                and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self._resume_state(trainer)

    def on_train_epoch_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        loader = getattr(trainer.datamodule, "train_loader", None) if trainer.datamodule is not None else None
        if loader is not None:  # the epoch is complete: a resume starts the next one from its beginning
            loader.batches_done = 0
            loader.sampler.epoch = trainer.current_epoch + 1
        if trainer.is_global_zero:
            meta = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
            save_checkpoint(module.model, self.run / "last.safetensors", meta)
            metrics = getattr(module, "val_metrics", None) or {}
            value = metrics.get(self.monitor)
            if value is not None and math.isfinite(value):
                better = self.best is None or (value > self.best if self.higher_is_better() else value < self.best)
                if better:
                    self.best, self.best_epoch, self.best_metrics = value, trainer.current_epoch, dict(metrics)
                    save_checkpoint(module.model, self.run / "best.safetensors",
                                    {**meta, **{f"val/{k}": repr(v) for k, v in metrics.items()}})
        self._resume_state(trainer)
