"""Training on KITTI-format data with Lightning (the reference study's recipe as defaults).

Run directory (``--out``)::

    last.safetensors, best.safetensors   fastdpt checkpoints (variant name in the metadata)
    resume.ckpt                          full training state (weights, optimiser, loops, RNG), for --resume
    mlflow.db, mlartifacts/              MLflow tracking store (unless --tracking-uri is given)
    train_config.json                    the options of the run (seed included)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import get_config
from .data.kitti import Augment, KittiDepthDataset, collate, read_split
from .errors import FastDPTError
from .evaluation import KB_H, KB_W, METRIC_KEYS, kb_crop_box, kb_uncrop, score_image
from .losses import silog_loss
from .predict import network_size


class NonFiniteLossError(FastDPTError):
    """The training loss became inf or nan."""


@dataclass
class TrainConfig:
    """Options of a training run. Defaults are the reference study's (REFERENCE.md section 4)."""

    model: str
    out: str
    data_root: str | None = None  # a synthetic/KITTI-format root with raw/, data_depth_annotated/, splits/
    raw_root: str | None = None
    gt_root: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    init: str | None = None
    backbone_weights: str | None = None
    epochs: int = 20
    batch_size: int = 1
    accumulate: int = 1
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_value: float | None = 0.5
    silog_lambda: float = 0.5
    precision: str = "fp32"  # fp32 | fp16 | bf16 (mixed, GPU only)
    workers: int = 2
    seed: int = 0
    monitor: str = "abs_rel"
    kb_crop: bool = True
    hflip: float = 0.5
    random_crop: tuple[int, int] | None = None
    rotate_deg: float = 0.0
    color: bool = False
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    checkpoint_every: int = 0  # also save the resume state every N optimiser steps (0: epoch ends only)
    max_time_s: float | None = None  # stop after this much training time (at a step boundary)
    tracking_uri: str | None = None
    accelerator: str = "auto"
    devices: int | str = "auto"
    progress: bool = True

    def paths(self) -> tuple[Path, Path, Path, Path]:
        """(raw root, gt root, train split, val split), from data_root defaults or explicit paths."""
        root = Path(self.data_root) if self.data_root else None

        def pick(value, default):
            if value:
                return Path(value)
            if root is None:
                raise FastDPTError("give --data-root, or all of --raw-root, --gt-root, --train-split, --val-split")
            return root / default

        return (pick(self.raw_root, "raw"), pick(self.gt_root, "data_depth_annotated"),
                pick(self.train_split, "splits/train_files_with_gt.txt"),
                pick(self.val_split, "splits/val_files_with_gt.txt"))


def preprocess_batch(images: torch.Tensor, config) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> network input: bicubic resize to the network size, (x - 0.5) / 0.5."""
    h, w = images.shape[-2:]
    size = network_size(h, w, config)
    if size != (h, w):
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
    return (images - 0.5) / 0.5


def _lightning():
    try:
        import lightning as L
    except ImportError:
        raise FastDPTError("training needs Lightning: pip install -e '.[train]'") from None
    return L


def make_module(cfg: TrainConfig):
    L = _lightning()

    class DepthModule(L.LightningModule):
        """A DPT variant trained with the masked SILog loss; validation with the BTS protocol."""

        def __init__(self, model_name: str, lr: float, betas, eps: float, weight_decay: float,
                     silog_lambda: float, val_kb_crop: bool) -> None:
            super().__init__()
            self.save_hyperparameters()
            from .models import DPT

            self.config = get_config(model_name)
            if self.config.metric is None:
                raise FastDPTError(f"{model_name} predicts relative depth; SILog training needs a metric head "
                                   "(a .kitti variant or .m<scale>_<shift>)")
            self.model = DPT(self.config)

        def depth(self, images: torch.Tensor, size) -> torch.Tensor:
            y = self.model(preprocess_batch(images, self.config))
            return F.interpolate(y[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]

        def training_step(self, batch, batch_idx):
            pred = self.depth(batch["image"], batch["depth"].shape[-2:])
            loss = silog_loss(pred.float(), batch["depth"], batch["mask"], lam=self.hparams.silog_lambda)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                    "training stopped (the last good checkpoint is kept)")
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(pred))
            return loss

        def validation_step(self, batch, batch_idx):
            for image, gt in zip(batch["image"], batch["depth"]):
                h, w = gt.shape
                if self.hparams.val_kb_crop:
                    top, left = kb_crop_box(h, w)
                    pred = self.depth(image[None, :, top:top + KB_H, left:left + KB_W], (KB_H, KB_W))[0]
                    pred = kb_uncrop(pred.float().cpu().numpy(), h, w)
                else:
                    pred = self.depth(image[None], (h, w))[0].float().cpu().numpy()
                m = score_image(pred, gt.cpu().numpy(), crop="garg")
                if m is not None:
                    for k in METRIC_KEYS:
                        self.log(f"val/{k}", m[k], on_epoch=True, batch_size=1, sync_dist=True, prog_bar=k == "abs_rel")

        def configure_optimizers(self):
            hp = self.hparams
            return torch.optim.AdamW(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
                                     weight_decay=hp.weight_decay)

    return DepthModule(cfg.model, cfg.lr, tuple(cfg.betas), cfg.eps, cfg.weight_decay, cfg.silog_lambda, cfg.kb_crop)


def _checkpoint_callbacks(cfg: TrainConfig, run: Path):
    L = _lightning()
    from .weights import save_checkpoint

    class SaveCheckpoints(L.Callback):
        """Every epoch: last.safetensors and (when the monitored metric improves) best.safetensors,
        then the full resume state; also the resume state every ``checkpoint_every`` steps."""

        def __init__(self) -> None:
            self.best: float | None = None

        def state_dict(self):
            return {"best": self.best}

        def load_state_dict(self, state):
            self.best = state.get("best")

        def _resume_state(self, trainer):
            tmp = run / "resume.ckpt.part"
            trainer.save_checkpoint(tmp, weights_only=False)  # full state: optimiser, loops, callbacks
            if trainer.is_global_zero:
                os.replace(tmp, run / "resume.ckpt")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if cfg.checkpoint_every and trainer.global_step and trainer.global_step % cfg.checkpoint_every == 0 \
                    and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
                self._resume_state(trainer)

        def on_train_epoch_end(self, trainer, module):
            if trainer.sanity_checking:
                return
            if trainer.is_global_zero:
                meta = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
                save_checkpoint(module.model, run / "last.safetensors", meta)
                value = trainer.callback_metrics.get(f"val/{cfg.monitor}")
                if value is not None and math.isfinite(float(value)):
                    better = self.best is None or (float(value) > self.best if cfg.monitor.startswith("d")
                                                   else float(value) < self.best)
                    if better:
                        self.best = float(value)
                        save_checkpoint(module.model, run / "best.safetensors", {**meta, cfg.monitor: str(value)})
            self._resume_state(trainer)

    return [SaveCheckpoints()]


def _logger(cfg: TrainConfig, run: Path):
    from lightning.pytorch.loggers import MLFlowLogger

    uri = cfg.tracking_uri or f"sqlite:///{(run / 'mlflow.db').resolve()}"
    return MLFlowLogger(experiment_name="fastdpt", run_name=f"{get_config(cfg.model).name}-seed{cfg.seed}",
                        tracking_uri=uri, artifact_location=(run / "mlartifacts").resolve().as_uri()
                        if cfg.tracking_uri is None else None)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train (or resume) a run; returns the final metrics and the checkpoint paths."""
    L = _lightning()
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    resume_path = run / "resume.ckpt"
    if resume and not resume_path.is_file():
        raise FastDPTError(f"nothing to resume: {resume_path} does not exist")
    if not resume and resume_path.is_file():
        raise FastDPTError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    raw, gt, train_split, val_split = cfg.paths()
    aug = Augment(hflip=cfg.hflip, kb_crop=cfg.kb_crop, random_crop=cfg.random_crop, rotate_deg=cfg.rotate_deg,
                  color=cfg.color)
    train_ds = KittiDepthDataset(read_split(train_split), raw, gt, augment=aug, train=True)
    val_ds = KittiDepthDataset(read_split(val_split), raw, gt, augment=Augment.none(kb_crop=False))
    loader_args = dict(num_workers=cfg.workers, pin_memory=torch.cuda.is_available(), collate_fn=collate,
                       persistent_workers=cfg.workers > 0)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                                           **loader_args)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=1, shuffle=False, **loader_args)
    module = make_module(cfg)
    if cfg.init and not resume:
        from .weights import warm_start

        report = warm_start(module.model, cfg.init, cfg.backbone_weights)
        print(f"warm start from {cfg.init}:\n{report}")
    (run / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    precision = {"fp32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}[cfg.precision]
    if cfg.precision != "fp32" and not torch.cuda.is_available():
        raise FastDPTError(f"--precision {cfg.precision} is for GPUs; on this machine use fp32")
    logger = _logger(cfg, run)
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accumulate_grad_batches=cfg.accumulate,
        gradient_clip_val=cfg.clip_value, gradient_clip_algorithm="value" if cfg.clip_value else None,
        precision=precision, callbacks=_checkpoint_callbacks(cfg, run), logger=logger,
        enable_checkpointing=False, enable_progress_bar=cfg.progress, enable_model_summary=False,
        limit_train_batches=cfg.limit_train_batches, limit_val_batches=cfg.limit_val_batches,
        num_sanity_val_steps=0, log_every_n_steps=1, accelerator=cfg.accelerator, devices=cfg.devices,
        default_root_dir=str(run), deterministic=False,
        max_time={"seconds": cfg.max_time_s} if cfg.max_time_s else None,
    )
    if not resume:
        logger.log_hyperparams({**asdict(cfg), "canonical_name": get_config(cfg.model).name})
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume_path) if resume else None, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    result = {"metrics": metrics, "last": str(run / "last.safetensors"), "best": str(run / "best.safetensors"),
              "epochs": trainer.current_epoch, "global_step": trainer.global_step}
    if trainer.is_global_zero:
        _log_artifacts(logger, run, module, val_ds)
        (run / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _log_artifacts(logger, run: Path, module, val_ds) -> None:
    """Checkpoints and a few validation predictions (colour maps) as MLflow artefacts."""
    from PIL import Image

    from .predict import colorize

    exp, run_id = logger.experiment, logger.run_id
    for name in ("last.safetensors", "best.safetensors"):
        if (run / name).is_file():
            exp.log_artifact(run_id, str(run / name), "checkpoints")
    preview = run / "previews"
    preview.mkdir(exist_ok=True)
    module.eval()
    with torch.no_grad():
        for i in range(min(3, len(val_ds))):
            item = val_ds[i]
            img = item["image"][None].to(module.device)
            pred = module.depth(img, img.shape[-2:])[0].float().cpu().numpy()
            rgb = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            Image.fromarray(np.concatenate([rgb, colorize(pred, "metric")], 0)).save(preview / f"{item['frame_id']}.png")
    exp.log_artifacts(run_id, str(preview), "predictions")
