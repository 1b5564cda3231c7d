"""One trial of a study, start to finish, in one process: warm start -> train -> evaluate on the test
split (BTS protocol) -> benchmark on the trial's device -> one row, written as soon as the trial ends.

A trial is idempotent: a finished trial's row is returned as it is (a resumed study never trains it
again), and an interrupted one resumes its training from its run folder's ``resume.ckpt``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import FastDPTError, NonFiniteLossError
from .grid import TrialSpec
from .settings import StudySettings  # noqa: F401 - the settings' home before they moved
from .results import read_row, write_row

Reporter = Callable[[dict], None]


def trial_dir(settings: StudySettings, spec: TrialSpec) -> Path:
    return Path(settings.out) / "trials" / spec.id.replace("/", "_")


def _child_run(settings: StudySettings, spec: TrialSpec, previous: dict | None) -> str | None:
    """The trial's MLflow run, a child of the study's (reused when the trial is retried)."""
    if not settings.parent_run_id:
        return None
    from mlflow.tracking import MlflowClient

    if previous and previous.get("mlflow_run_id"):
        return previous["mlflow_run_id"]
    client = MlflowClient(tracking_uri=settings.tracking)
    parent = client.get_run(settings.parent_run_id)
    child = client.create_run(parent.info.experiment_id, run_name=spec.id,
                              tags={"mlflow.parentRunId": settings.parent_run_id, "fastdpt.model": spec.model})
    return child.info.run_id


class _Report:
    """Lightning callback: the epoch's validation metrics to Ray Tune with a checkpoint that points at
    the run folder (Tune keeps it; a retried trial resumes from the run folder's resume.ckpt)."""

    def __new__(cls, reporter: Reporter | None, run: Path, fail_once: str | None):
        import lightning as L

        class Report(L.Callback):
            def on_train_epoch_end(self, trainer, module):
                metrics = {f"val_{k}": v for k, v in (getattr(module, "val_metrics", {}) or {}).items()
                           if isinstance(v, float) and math.isfinite(v)}
                if reporter is not None:
                    reporter({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics,
                              "phase": "train"}, run)
                if fail_once and not Path(fail_once).exists():  # fault injection (tests): fail after a checkpoint
                    Path(fail_once).write_text(str(os.getpid()))
                    raise RuntimeError("injected failure (fail_once)")

        return Report()


def run_trial(spec: TrialSpec, settings: StudySettings, reporter: Callable[[dict, Path | None], None] | None = None,
              resumed: bool = False) -> dict:
    """Run (or resume, or return the finished row of) one trial; returns its row. ``resumed``: Ray
    restarted this trial from its last checkpoint (recorded in the row). A trial with ``compress``
    levels then compresses its trained model at each level, a row each (finished ones are kept)."""
    row = _trained_row(spec, settings, reporter, resumed)
    if row.get("status") == "ok" and row.get("checkpoint"):
        for level in spec.compress:
            compressed_row(spec, level, row, settings)
    return row


def _protocol(settings: StudySettings):
    """The evaluation protocol of a study's data (the KB crop where its frames fit it) and its test split."""
    from ..data.kitti import fits_kb_crop, read_split
    from ..evaluation import Protocol
    from ..io import read_image

    paths = settings.paths()
    test = read_split(paths.splits["test_split"])
    first = next((e for e in test if (paths.raw_root / e.rgb).is_file()), None)
    frame = read_image(paths.raw_root / first.rgb).shape[:2] if first else settings.bench_frame
    return Protocol("garg", kb_crop=fits_kb_crop(*frame)), test


def _trained_row(spec: TrialSpec, settings: StudySettings, reporter, resumed: bool) -> dict:
    from ..api import create_model, load
    from ..bench import bench_variant
    from ..evaluation import METRIC_KEYS, evaluate
    from ..predict import Predictor
    from ..presets import get_config
    from ..training import TrainConfig, train

    previous = read_row(settings.out, spec.id)
    if previous and (previous.get("status") in ("ok", "baseline") or previous.get("diverged")):
        if reporter is not None:
            reporter(_numbers(previous, phase="done"), None)
        return previous  # finished: a resumed study does not redo it
    device = "cuda" if torch.cuda.is_available() else "cpu"
    row = {"name": spec.id, "model": spec.model, "status": "running", "baseline": spec.baseline,
           "host": socket.gethostname(), "device": device, "started": time.time(),
           "attempts": (previous or {}).get("attempts", 0) + 1, "train": spec.train, "resumed": resumed}
    row["mlflow_run_id"] = _child_run(settings, spec, previous)
    write_row(settings.out, row)
    paths = settings.paths()
    protocol, test = _protocol(settings)
    run = trial_dir(settings, spec)
    model, train_s, result = None, None, None
    if not spec.baseline or settings.train_baseline:
        options = {**settings.train, **spec.train}
        cfg = TrainConfig(model=spec.model, out=str(run / "run"), data_root=settings.data_root, raw_root=settings.raw_root,
                          gt_root=settings.gt_root, train_split=settings.train_split, val_split=settings.val_split,
                          init=settings.init, backbone_weights=settings.backbone_weights, progress=False,
                          tracking_uri=settings.tracking if row["mlflow_run_id"] else None,
                          **{"kb_crop": protocol.kb_crop, "keep_resume": False, **options})
        resume = (run / "run" / "resume.ckpt").is_file()
        logger = False
        if row["mlflow_run_id"]:
            from lightning.pytorch.loggers import MLFlowLogger

            logger = MLFlowLogger(tracking_uri=settings.tracking, run_id=row["mlflow_run_id"])
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "trainings.log", "a") as log:  # one line per training started (resumes included)
            log.write(f"{time.time():.3f} {socket.gethostname()} pid {os.getpid()} resume={resume}\n")
        t0 = time.perf_counter()
        finished = run / "run" / "result.json"
        try:
            if finished.is_file() and not resume:  # trained already (a retry after a later step failed)
                result = json.loads(finished.read_text())
            else:
                result = train(cfg, resume=resume, callbacks=[_Report(reporter, run, spec.fail_once)], logger=logger,
                               overwrite=not resume)
        except NonFiniteLossError as e:  # diverged: recorded as failed with its reason, not retried
            row.update(status="failed", diverged=True, error=str(e), finished=time.time())
            write_row(settings.out, row)
            _log_mlflow(settings, row)
            if reporter is not None:
                reporter(_numbers(row, phase="failed"), None)
            return row
        train_s = time.perf_counter() - t0  # this attempt's (a retried trial's earlier attempts are not added)
        best = run / "run" / "best.safetensors"
        if not best.is_file():  # the step budget ended before any validation: the last weights it is
            best = run / "run" / "last.safetensors"
        model = load(best)
    elif settings.init:  # the baseline, not trained: scored with the weights it starts from (e.g. official)
        model = create_model(spec.model, init=settings.init, backbone_weights=settings.backbone_weights).eval()
    metrics = {k: float("nan") for k in METRIC_KEYS}
    stability = {}
    if model is not None:
        with Predictor(model, device=device) as predictor:
            metrics = evaluate(predictor, test, paths.raw_root, paths.gt_root, protocol)
        with Predictor(model, device=device) as predictor:  # a fresh one: no state from the scoring
            stability = temporal_columns(settings, predictor, test)
    cfg = get_config(spec.model)
    sizes = [tuple(s) for s in settings.bench_sizes] or [cfg.input_size]
    if cfg.input_size not in sizes:
        sizes = [cfg.input_size] + sizes
    bench = {}
    for size in sizes:
        b = bench_variant(cfg.replace(input_size=size).name, settings.bench_frame, device=device,
                          runs=settings.bench_runs, warmup=settings.bench_warmup)
        tag = f"{size[0]}x{size[1]}"
        bench[f"latency_ms_{tag}"] = b.latency_ms_median
        bench[f"fps_{tag}"] = b.fps
        bench[f"macs_{tag}"] = b.macs
        if size == cfg.input_size:
            bench.update(latency_ms_median=b.latency_ms_median, fps=b.fps, params=b.params, macs=b.macs,
                         net_ms_median=b.net_ms_median, bench_threads=b.threads)
    row.update(status="baseline" if spec.baseline else "ok", **{k: metrics[k] for k in METRIC_KEYS},
               images=metrics.get("images"), **bench, **stability, train_s=round(train_s, 1) if train_s else None,
               steps=result["global_step"] if result else None, best_epoch=result["best_epoch"] if result else None,
               checkpoint=str(best) if result else settings.init,
               file_mb=round(best.stat().st_size / 2**20, 2) if result else None, finished=time.time(), error=None)
    write_row(settings.out, row)
    _log_mlflow(settings, row)
    if reporter is not None:
        reporter(_numbers(row, phase="done"), None)
    return row


RECOVERY_STEPS = 100  # recovery training steps of a pruned model when the study's trials have no max_steps


def compressed_row(spec: TrialSpec, level: str, trained: dict, settings: StudySettings) -> dict:
    """The trial's trained model compressed at ``level`` (``fastdpt compress`` in the trial's folder:
    pruning recovered by training on the study's data with the trial's step budget; quantisation-aware
    int8 fine-tuned on the training drives' frames), scored on the test split and timed like every row;
    a finished row is returned as it is."""
    import shutil

    from ..api import load
    from ..compress.config import CompressConfig, level_options
    from ..compress.run import compress
    from ..evaluation import METRIC_KEYS, evaluate
    from ..predict import Predictor
    from ..presets import get_config
    from .grid import compressed_id

    cid = compressed_id(spec.id, level)
    previous = read_row(settings.out, cid)
    if previous and previous.get("status") == "ok":
        return previous
    folder = trial_dir(settings, spec) / f"compress-{level.replace('+', '_')}"
    if folder.exists():  # an attempt that did not finish: this row's own folder, started again
        shutil.rmtree(folder)
    row = {"name": cid, "model": spec.model, "status": "running", "compress": level, "compressed_from": spec.id,
           "baseline": False, "host": socket.gethostname(), "started": time.time(), "train": spec.train,
           "attempts": (previous or {}).get("attempts", 0) + 1}
    row["mlflow_run_id"] = _child_run(settings, TrialSpec(cid, spec.model), previous)
    write_row(settings.out, row)
    opts = level_options(level)
    paths = settings.paths()
    options = {**settings.train, **spec.train}
    if opts.get("qat"):  # the training drives' frames (never the test drives')
        from ..data.kitti import read_split

        drives = sorted({str((paths.raw_root / e.rgb).parent) for e in read_split(paths.splits["train_split"])})
        opts["frames"] = tuple(d for d in drives if Path(d).is_dir())
    recover = "train" if opts.get("prune") and settings.data_root else "none"
    t0 = time.perf_counter()
    try:
        cfg = CompressConfig(checkpoint=trained["checkpoint"], out=str(folder), recover=recover,
                             data_root=settings.data_root, steps=int(options.get("max_steps") or 0) or RECOVERY_STEPS,
                             qat_steps=int(options.get("max_steps") or 0) or RECOVERY_STEPS,
                             batch_size=int(options.get("batch_size", 4)), backend="torch",
                             frame_size=f"{settings.bench_frame[0]}x{settings.bench_frame[1]}",
                             bench_runs=max(1, settings.bench_runs), progress=False, compare=False, **opts)
        report = compress(cfg, log=lambda m: None)
        weights = folder / "model.safetensors"
        int8 = folder / "model-int8.xml" if opts.get("qat") else None
        device = "cpu" if int8 else ("cuda" if torch.cuda.is_available() else "cpu")
        protocol, test = _protocol(settings)
        with (Predictor(str(int8), backend="openvino") if int8 else Predictor(load(weights), device=device)) as predictor:
            metrics = evaluate(predictor, test, paths.raw_root, paths.gt_root, protocol)
            stability = temporal_columns(settings, predictor, test)
        b = bench_row({"model": spec.model, "compress": level, "weights": str(weights),
                       "checkpoint": str(int8 or weights)}, settings, device)
    except Exception as e:  # noqa: BLE001 - recorded in the row (a library's own errors too), not retried
        error = str(e) if isinstance(e, FastDPTError) else f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        row.update(status="failed", error=error, finished=time.time())
        write_row(settings.out, row)
        _log_mlflow(settings, row)
        return row
    tag = "x".join(str(v) for v in get_config(spec.model).input_size)
    row.update(status="ok", **{k: metrics[k] for k in METRIC_KEYS}, images=metrics.get("images"), device=device,
               latency_ms_median=b.latency_ms_median, fps=b.fps, params=b.params, macs=b.macs,
               net_ms_median=b.net_ms_median, bench_threads=b.threads,
               runtime="openvino int8" if int8 else f"{b.backend} {b.precision}",
               file_mb=b.file_mb, compress_s=round(time.perf_counter() - t0, 1), weights=str(weights),
               checkpoint=str(int8 or weights), report=str(folder / "report.json"),
               recover=recover, agreement=report.get("agreement"), finished=time.time(), error=None,
               **{f"latency_ms_{tag}": b.latency_ms_median, f"fps_{tag}": b.fps, f"macs_{tag}": b.macs},
               **stability)
    write_row(settings.out, row)
    _log_mlflow(settings, row)
    return row


def bench_row(row: dict, settings: StudySettings, device: str):
    """Time a row's model: a variant by its name (random weights, the same speed), a compressed one from
    its own files (a pruned model has its own shapes; an int8 one runs in OpenVINO)."""
    from ..bench import bench_variant

    if not row.get("compress"):
        return bench_variant(row["model"], tuple(settings.bench_frame), device=device, runs=settings.bench_runs,
                             warmup=settings.bench_warmup)
    from ..api import load

    source = row["checkpoint"] if str(row["checkpoint"]).endswith(".xml") else None
    runtime = {"device": "cpu", "backend": "openvino"} if source else {"device": device}
    return bench_variant(row["model"], tuple(settings.bench_frame), runs=settings.bench_runs,
                         warmup=settings.bench_warmup, model=load(row["weights"]), source=source, **runtime)


def _numbers(row: dict, **extra) -> dict:
    return {**{k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, **extra}


def temporal_columns(settings: StudySettings, predictor, test, frames: int = 40) -> dict:
    """``flicker`` (and ``tae`` where the drives have poses) of a model on the study's test drives."""
    from ..errors import DataError
    from ..workflows import evaluate_temporal

    paths = settings.paths()
    dense = paths.dense_root
    try:
        t = evaluate_temporal(predictor, test, paths.raw_root, paths.gt_root, "none", frames, dense)
    except DataError:
        return {}
    return {"flicker": t["flicker"], "tae": t["tae"]}


def fill_temporal(study: str | os.PathLike) -> int:
    """Add ``flicker``/``tae`` to the finished rows that have a checkpoint but not these columns (a study
    run before they existed); returns how many rows were filled."""
    from ..api import load
    from ..data.kitti import read_split
    from ..predict import Predictor
    from .results import read_rows

    settings = StudySettings.load(study)
    test = read_split(settings.paths().splits["test_split"])
    n = 0
    for row in read_rows(study):
        if row.get("status") in ("ok", "baseline") and "flicker" not in row and row.get("checkpoint") \
                and str(row["checkpoint"]).endswith(".safetensors") and Path(row["checkpoint"]).is_file():
            with Predictor(load(row["checkpoint"])) as predictor:
                row.update(temporal_columns(settings, predictor, test))
            write_row(study, row)
            n += 1
    return n


def _log_mlflow(settings: StudySettings, row: dict) -> None:
    if not row.get("mlflow_run_id"):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking)
    rid = row["mlflow_run_id"]
    client.log_param(rid, "canonical_name", row["model"])
    client.log_param(rid, "status", row["status"])
    if row.get("checkpoint"):
        client.log_param(rid, "checkpoint", row["checkpoint"])
    if row.get("error"):
        client.set_tag(rid, "error", str(row["error"])[:5000])
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k not in ("started", "finished"):
            client.log_metric(rid, f"study/{k}", float(v))
    client.set_terminated(rid, "FINISHED" if row["status"] in ("ok", "baseline") else "FAILED")
