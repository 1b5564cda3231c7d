"""``train``: one run, from a :class:`TrainConfig` to checkpoints, metrics and an MLflow record.

Run folder (``out``)::

    last.safetensors, best.safetensors   fastdpt checkpoints (variant name in the metadata; best also
                                         carries its validation metrics)
    resume.ckpt                          full training state (weights, optimiser, loops, RNG), for resume
    mlflow.db, mlartifacts/              MLflow tracking store (unless tracking_uri is given)
    train_config.json                    the options of the run (seed included)
    result.json                          what train() returned
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import TrainingError
from ..io import write_text
from ..options import resume_differences
from ..presets import get_config
from .config import TrainConfig


def _lightning():
    try:
        import lightning as L
    except ImportError:
        raise TrainingError("training needs Lightning: pip install -e '.[train]'") from None
    return L


def build(cfg: TrainConfig):
    """The run's LightningModule and LightningDataModule (not yet trained)."""
    from ..data.augment import Augment
    from .datamodule import KittiDataModule
    from .module import DepthModule

    options = {"lam": cfg.silog_lambda, "grad": cfg.grad_weight} if cfg.loss == "silog" else {}
    options["trim"] = cfg.trim
    from ..weights import read_checkpoint_structure

    # a pruned init (fastdpt compress) is trained in its own shapes, not warm-started into the full variant
    structure = read_checkpoint_structure(cfg.init) if cfg.init else {}
    module = DepthModule(cfg.model, loss=cfg.loss, loss_options=options, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                         weight_decay=cfg.weight_decay, lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                         protocol=cfg.protocol, channels_last=cfg.channels_last,
                         structure=structure or None)
    paths = cfg.paths()
    dense = None
    if cfg.dense_gt:
        if paths.dense_root is None:
            raise TrainingError("--dense-gt needs --data-root with a dense/ folder (as `fastdpt data synth` writes)")
        dense = str(paths.dense_root)
    aug = Augment(hflip=cfg.hflip, kb_crop=cfg.kb_crop, random_crop=cfg.random_crop, rotate_deg=cfg.rotate_deg,
                  color=cfg.color)
    data = KittiDataModule(paths, aug, cfg.batch_size, cfg.workers, dense_root=dense, seed=cfg.seed,
                           exact_split=cfg.exact_split)
    return module, data


def default_logger(cfg: TrainConfig, run: Path):
    """MLflow: SQLite in the run folder, or ``cfg.tracking_uri``."""
    from lightning.pytorch.loggers import MLFlowLogger

    uri = cfg.tracking_uri or f"sqlite:///{(run / 'mlflow.db').resolve()}"
    return MLFlowLogger(experiment_name="fastdpt", run_name=f"{get_config(cfg.model).name}-seed{cfg.seed}",
                        tracking_uri=uri, artifact_location=(run / "mlartifacts").resolve().as_uri()
                        if cfg.tracking_uri is None else None)


RUN_FILES = ("train_config.json", "resume.ckpt", "last.safetensors", "best.safetensors", "result.json", "mlflow.db",
             "resume.ckpt.part")
RUN_FOLDERS = ("mlartifacts", "previews", "checkpoints")
# what may differ between a run and its resume; everything else must be what the run was started with
RESUME_MAY_CHANGE = {"epochs", "max_steps", "max_time_s", "progress", "workers", "checkpoint_every", "keep_resume",
                     "limit_val_batches", "tracking_uri", "accelerator", "devices"}


LOCK = ".lock"  # the file run_lock holds (left behind after the run: it is no content)


@contextmanager
def run_lock(run: Path, what: str = "training"):
    """Hold ``<run>/.lock`` for the whole run: a second ``what`` into the same folder fails at once."""
    import fcntl

    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise TrainingError(f"{run} is in use by another {what} (pid {holder}); wait for it or choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def stored_config(run: str | os.PathLike) -> TrainConfig:
    """The options a run in ``run`` was started with (its ``train_config.json``)."""
    path = Path(run) / "train_config.json"
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise TrainingError(f"nothing to resume: {path} does not exist") from None
    except (ValueError, TypeError) as e:
        raise TrainingError(f"{path} cannot be read ({e}); start over with --overwrite") from None


def resume_config(run: str | os.PathLike, **changes) -> TrainConfig:
    """The run's stored options with ``changes`` applied (for ``fastdpt train --out RUN --resume``)."""
    return TrainConfig.from_dict({**stored_config(run).as_dict(), **changes})


def _differences(stored: TrainConfig, given: TrainConfig) -> list[str]:
    a, b = stored.as_dict(), given.as_dict()
    a["model"], b["model"] = get_config(a["model"]).name, get_config(b["model"]).name
    return resume_differences(a, b, RESUME_MAY_CHANGE)


def prepare_run(cfg: TrainConfig, resume: bool, overwrite: bool, delete: bool = True) -> None:
    """Refuse, before anything is written: a resume of nothing, a resume with other options than the
    run's, an unreadable resume state, or a new run over an old one without ``overwrite`` (which
    then removes the old run's files)."""
    run = Path(cfg.out)
    if run.exists() and not run.is_dir():
        raise TrainingError(f"--out {run} is a file; choose a folder")
    if resume and overwrite:
        raise TrainingError("choose --resume (continue the run) or --overwrite (start over), not both")
    stale = run / "resume.ckpt.part"  # a save that was killed (kill -9, power) or ran out of disk
    if resume:
        state = run / "resume.ckpt"
        if not state.is_file():
            found = (f"; only {stale.name} ({stale.stat().st_size / 2**20:.0f} MB), half-written by an interrupted "
                     "save, was found: start over with --overwrite (it removes it)") if stale.is_file() else ""
            raise TrainingError(f"nothing to resume: {state} does not exist{found}")
        if delete and stale.is_file():  # under the run's lock: nobody else is writing it
            print(f"removed {stale} ({stale.stat().st_size / 2**20:.0f} MB), half-written by an interrupted save",
                  file=sys.stderr)
            stale.unlink()
        diff = _differences(stored_config(run), cfg)
        if diff:
            raise TrainingError("--resume with other options than the run was started with: " + "; ".join(diff[:4])
                                + " (give the same options, or start a new run)")
        try:
            torch.load(state, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
            what = "empty" if state.stat().st_size == 0 else f"damaged ({type(e).__name__})"
            raise TrainingError(f"{state} is {what}: the run cannot be resumed; start over with --overwrite") from None
        return
    existing = [n for n in RUN_FILES if (run / n).exists()]
    if existing and not overwrite:
        raise TrainingError(f"{run} already holds a run ({', '.join(existing[:3])}); pass --resume to continue it, "
                            "--overwrite to start over, or choose another --out")
    if overwrite and delete:
        for n in RUN_FILES:
            (run / n).unlink(missing_ok=True)
        for n in RUN_FOLDERS:
            shutil.rmtree(run / n, ignore_errors=True)


def _count(limit: float):
    return int(limit) if limit > 1 else limit


def train(cfg: TrainConfig, resume: bool = False, callbacks: list | None = None, logger=None,
          overwrite: bool = False) -> dict:
    """Train (or resume) a run. Only one training may use a run folder at a time (a lock file).

    Args:
        cfg: the run's options.
        resume: continue the run in ``cfg.out`` from its ``resume.ckpt``; the options must be the run's
            (only ``RESUME_MAY_CHANGE`` may differ, e.g. more epochs). The data order of an interrupted
            epoch is restored exactly (the rest of that epoch's permutation).
        overwrite: start a new run in a folder that holds one (its files are removed first).
        callbacks: extra Lightning callbacks (e.g. progress reporting, Ray Tune reporting).
        logger: a Lightning logger; ``None``: MLflow in the run folder (or ``cfg.tracking_uri``);
            ``False``: none.

    Returns a dict: ``metrics`` (the last logged values), ``best_metrics`` and ``best_epoch`` (the
    validation metrics that chose ``best.safetensors``), ``last``, ``best``, ``epochs``,
    ``global_step``, ``run``.
    """
    L = _lightning()
    run = Path(cfg.out)
    if cfg.precision != "fp32" and not torch.cuda.is_available():
        raise TrainingError(f"--precision {cfg.precision} is for GPUs; on this machine use fp32")
    prepare_run(cfg, resume, overwrite, delete=False)  # refusals come before anything is written
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, data = build(cfg)
    data.setup("fit")  # the data is checked before anything is written too
    with run_lock(run):
        prepare_run(cfg, resume, overwrite)  # again under the lock: another process may have started
        return _fit(L, cfg, run, resume, callbacks, logger, module, data)


def _fit(L, cfg: TrainConfig, run: Path, resume: bool, callbacks, logger, module, data) -> dict:
    from .callbacks import SaveCheckpoints

    resume_path = run / "resume.ckpt"
    if cfg.init and not resume:
        from ..weights import warm_start

        report = warm_start(module.model, cfg.init, cfg.backbone_weights)
        print(f"warm start from {cfg.init}:\n{report}")
    write_text(run / "train_config.json", json.dumps(cfg.as_dict(), indent=1, default=str))
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    precision = {"fp32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}[cfg.precision]
    if logger is None:
        logger = default_logger(cfg, run)
    saver = SaveCheckpoints(run, cfg.monitor, cfg.checkpoint_every)
    trainer = L.Trainer(
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, accumulate_grad_batches=cfg.accumulate,
        gradient_clip_val=cfg.clip_value, gradient_clip_algorithm="value" if cfg.clip_value else None,
        precision=precision, callbacks=[saver, *(callbacks or [])], logger=logger,
        enable_checkpointing=False, enable_progress_bar=cfg.progress, enable_model_summary=False,
        limit_train_batches=_count(cfg.limit_train_batches), limit_val_batches=_count(cfg.limit_val_batches),
        num_sanity_val_steps=0, log_every_n_steps=1, check_val_every_n_epoch=cfg.val_every, accelerator=cfg.accelerator, devices=cfg.devices,
        default_root_dir=str(run), deterministic=False,
        max_time={"seconds": cfg.max_time_s} if cfg.max_time_s else None,
    )
    if logger and not resume:
        logger.log_hyperparams({**cfg.as_dict(), "canonical_name": get_config(cfg.model).name})
    try:
        with _stop_on_sigterm():
            trainer.fit(module, datamodule=data, ckpt_path=str(resume_path) if resume else None, weights_only=True)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # Ctrl-C: Lightning ends with exit(1); SIGTERM: it stops at the batch's end with
        # its SIGTERMException, or a data-loader process killed by the same signal raises: the caller is told
        # KeyboardInterrupt, says what was kept and how to resume
        if trainer.received_sigterm or _while_interrupted(e) or (isinstance(e, SystemExit) and trainer.interrupted):
            raise KeyboardInterrupt from None
        raise
    result = {"metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
              "best_metrics": saver.best_metrics, "best_epoch": saver.best_epoch,
              "last": str(run / "last.safetensors"), "best": str(run / "best.safetensors"),
              "epochs": trainer.current_epoch, "global_step": trainer.global_step, "run": str(run)}
    if trainer.is_global_zero:
        if logger:
            _log_artifacts(logger, run, module, data.val_ds, cfg.log_checkpoints)
        if not cfg.keep_resume and not trainer.interrupted:  # finished: the optimiser state is not needed
            resume_path.unlink(missing_ok=True)
            result["resume_dropped"] = True
        write_text(run / "result.json", json.dumps(result, indent=1))
    return result


@contextmanager
def _stop_on_sigterm():
    """While Lightning trains (in the main thread): SIGTERM is left to Lightning, which stops at the end of
    the batch (nothing raised in the middle of a step, or of a garbage collector's callback), and the deaths
    of the data-loader processes that the same signal ends are expected, not raised by torch's SIGCHLD
    handler over the stop. Both handlers are put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGCHLD)}

    def stopping(signum, frame):
        signal.signal(signal.SIGCHLD, lambda *a: None)  # (not SIG_DFL: a pending SIGCHLD would raise OSError)

    signal.signal(signal.SIGTERM, stopping)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _while_interrupted(e: BaseException) -> bool:
    """``e`` was raised while a KeyboardInterrupt (Ctrl-C, or SIGTERM in the CLI) was being handled."""
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__context__
    return False


def _log_artifacts(logger, run: Path, module, val_ds, copy_checkpoints: bool = False) -> None:
    """The checkpoints' paths as MLflow tags (``checkpoint.best``, ``checkpoint.last``; copies as
    artefacts only with ``copy_checkpoints``), and a few validation predictions (colour maps)."""
    from PIL import Image

    from ..viz import colorize

    exp, run_id = getattr(logger, "experiment", None), getattr(logger, "run_id", None)
    if exp is None or run_id is None or not hasattr(exp, "log_artifact"):
        return
    for name in ("last.safetensors", "best.safetensors"):
        if (run / name).is_file():
            exp.set_tag(run_id, f"checkpoint.{name.split('.')[0]}", str((run / name).resolve()))
            if copy_checkpoints:
                exp.log_artifact(run_id, str(run / name), "checkpoints")
    preview = run / "previews"
    preview.mkdir(exist_ok=True)
    module.eval()
    with torch.no_grad():
        for i in range(min(3, len(val_ds))):
            item = val_ds[i]
            pred = module.depth(item["image"][None].to(module.device))[0].cpu().numpy()
            rgb = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            Image.fromarray(np.concatenate([rgb, colorize(pred, module.config.output_kind)], 0)).save(
                preview / f"{item['frame_id']}.png")
    exp.log_artifacts(run_id, str(preview), "predictions")
