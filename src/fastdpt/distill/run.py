"""``distill``: a slow teacher labels the user's own frames, a fast student learns from the labels.

Run folder (``out``)::

    distill.json            the options of the run (teacher identity included) and the time spent so far
    labels/                 the teacher's labels as a KITTI-format dense dataset (see :mod:`.labels`)
    train/                  the student's training run (Lightning + MLflow; resumable)
    student.safetensors     the best student by held-out agreement with the teacher (canonical name,
                            teacher name and weights sha256 in the metadata)
    report.json, report.md  student vs teacher (agreement, ground truth when given, best constant,
                            flicker, parameters, MACs, speed-up measured here, time spent)
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..errors import DistillError, LabelError
from ..evaluation.metrics import Protocol
from ..io import atomic_write
from ..options import resume_differences
from ..training.run import LOCK
from .config import RESUME_MAY_CHANGE, DistillConfig, stored_options
from .sources import MIN_SIDE
from .labels import LabelSet, Teacher, check_teacher, label, labelled_frames, prepare, resolve_teacher

def check_pair(teacher: Teacher, student: str) -> str:
    """The loss the student learns with, or a refusal when its head cannot learn from the teacher."""
    from ..presets import get_config

    s = get_config(student)
    if teacher.kind == "relative" and s.output_kind == "metric":
        raise DistillError(f"the student {s.name} predicts metres but the teacher {teacher.name} predicts relative "
                           "depth, which has no scale to learn: choose a relative student (its name without the "
                           ".kitti/.nyu head) or a metric teacher (dpt-hybrid-kitti)")
    return "silog" if teacher.kind == "metric" and s.output_kind == "metric" else "ssi"


def _check_out(out: Path, cfg: DistillConfig, resume: bool) -> bool:
    """Refuse, before anything is written: a file, an unrelated folder, a second run without --resume,
    a resume with other options. True: a new run may start over in ``out``, whose earlier run stopped
    before its frames were planned (a bad source found while sampling), with nothing labelled or trained."""
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out} is a file; choose a folder")
    record = out / "distill.json"
    if record.is_file():
        try:
            stored = stored_options(out)
        except (ValueError, KeyError) as e:
            raise DistillError(f"{record} cannot be read ({e}); choose another --out") from None
        if not resume:
            if _unplanned(out):
                return True
            raise DistillError(f"{out} already holds a distillation; pass --resume to continue it or choose another --out")
        given = cfg.as_dict()
        diff = resume_differences(stored, given, RESUME_MAY_CHANGE)
        if diff:
            raise DistillError("--resume with other options than the run was started with: " + "; ".join(diff[:3]))
    elif out.exists() and any(p.name != LOCK for p in out.iterdir()):  # LOCK: a run that stopped early held it
        raise DistillError(f"{out} is not empty and holds no distillation; choose another --out")
    elif resume:
        raise DistillError(f"nothing to resume: {record} does not exist")
    return False


def _unplanned(out: Path) -> bool:
    """``out`` holds a run that stopped while sampling: its label folder is absent, empty or a fastdpt
    manifest not yet planned (frames copied, no label of the teacher's), and nothing was trained."""
    if any((out / n).exists() for n in ("train", "student.safetensors", "report.json")):
        return False
    labels = LabelSet(out / "labels")
    try:
        m = labels.manifest()
    except LabelError:
        return False
    if m is None:
        return not labels.root.exists() or not any(labels.root.iterdir())
    return not m.get("planned")


def _record(out: Path, cfg: DistillConfig, teacher: Teacher, times: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {"config": cfg.as_dict(), "teacher": asdict(teacher), "times": times}
    atomic_write(out / "distill.json", lambda p: p.write_text(json.dumps(data, indent=1)))


def _times(out: Path) -> dict:
    try:
        return json.loads((out / "distill.json").read_text()).get("times", {})
    except (OSError, ValueError):
        return {}


def warm_start_file(teacher: Teacher, student: str, path: Path, label_median: float | None = None) -> Path | None:
    """The teacher's tensors that fit the student, as a safetensors file to warm-start from (None:
    an ONNX teacher and nothing to set). The decoder and head are taken whole or not at all: a trained
    last layer on top of new fusion layers can start with its ReLU dead everywhere (a constant depth
    that never learns). A new head starts at the labels' median depth (its last bias), alive."""
    import torch
    from safetensors.torch import save_file

    from ..models import DPT
    from ..presets import get_config
    from ..weights import read_state_dict, to_fastdpt_keys

    if path.is_file():
        return path
    cfg = get_config(student)
    own = DPT(cfg).state_dict()
    fits = {}
    if not teacher.onnx:
        sd, _ = to_fastdpt_keys(read_state_dict(teacher.weights))
        fits = {k: v.contiguous() for k, v in sd.items() if k in own and v.shape == own[k].shape}
    top = ("decoder.", "head.")
    if any(k.startswith(top) and k not in fits for k in own):
        fits = {k: v for k, v in fits.items() if not k.startswith(top)}
        last = max(k for k in own if k.startswith("head.") and k.endswith(".bias"))
        if cfg.metric is not None and label_median:
            scale, shift = cfg.metric
            y0 = (1.0 / label_median - shift) / scale
        else:
            y0 = 1.0 if cfg.metric is None else 0.0
        if y0 > 0:
            fits[last] = torch.full_like(own[last], y0)
    if not fits:
        return None
    return atomic_write(path, lambda p: save_file(fits, str(p)))


def label_median(labels: LabelSet, frames: int = 16) -> float | None:
    """The median labelled depth over a few training frames (for a new head's starting point)."""
    import numpy as np

    rels = labels.frames("train")[:: max(1, len(labels.frames("train")) // frames)][:frames]
    values = [v[v > 0] for r in rels if (v := labels.read_label(r)).size]
    values = np.concatenate(values) if values else np.zeros(0)
    return float(np.median(values)) if values.size else None


def train_config(cfg: DistillConfig, loss: str, teacher: Teacher, labels: LabelSet):
    """The student's training options: the labels as a dense data root, the teacher's kind of loss."""
    from ..training import TrainConfig

    steps = cfg.steps or -1
    epochs = 10**6 if cfg.steps else (cfg.epochs or 10)
    init = cfg.student_init
    if init is None and cfg.warm_start:
        init = warm_start_file(teacher, cfg.student, Path(cfg.out) / "warm_start.safetensors", label_median(labels))
    sizes = labels.frame_sizes("train")
    # frames of several sizes (KITTI dates, mixed sources) cannot share a batch: random crops of the smallest
    crop = (min(h for h, _ in sizes), min(w for _, w in sizes)) if len(sizes) > 1 else None
    return TrainConfig(
        model=cfg.student, out=str(Path(cfg.out) / "train"), data_root=str(labels.root), dense_gt=True, loss=loss,
        grad_weight=cfg.grad_weight if loss == "silog" else 0.0, trim=cfg.trim, kb_crop=False, eval_crop=None,
        exact_split=str(labels.ground_truth_path) if labels.ground_truth_path.is_file() else None,
        init=str(init) if init else None,
        epochs=epochs, max_steps=steps,
        batch_size=cfg.batch_size, lr=cfg.lr, lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
        workers=cfg.data_workers, seed=cfg.seed, hflip=0.5, color=cfg.color_jitter, random_crop=crop,
        tracking_uri=cfg.tracking_uri, progress=cfg.progress)


def distill(cfg: DistillConfig, resume: bool = False, log: Callable[[str], None] = print,
            label_progress: Callable[[int, int, float, float], None] | None = None) -> dict:
    """Label, train, compare; returns the report (also ``out/report.json`` and ``report.md``).

    ``resume``: continue an interrupted run (labels already written are kept, training continues from
    its ``resume.ckpt``); the options must be the run's, except those in ``RESUME_MAY_CHANGE``.
    """
    from ..presets import get_config
    from ..training.run import run_lock

    out = Path(cfg.out)
    get_config(cfg.student)  # a bad name fails before anything is loaded
    if cfg.student_init is not None:
        from ..weights import read_checkpoint_config

        held = read_checkpoint_config(cfg.student_init) if Path(cfg.student_init).is_file() else None
        if held is None or held != get_config(cfg.student):
            raise DistillError(f"--student-init {cfg.student_init}: not a fastdpt checkpoint of the student "
                               f"{get_config(cfg.student).name}" + (f" (it holds {held.name})" if held else ""))
    start_over = _check_out(out, cfg, resume)
    if not cfg.frames:
        raise DistillError("no frames given: pass --frames with video files, image folders or a KITTI raw root")
    for src in (*cfg.frames, *cfg.val_frames):
        if not Path(src).exists():
            raise DistillError(f"frames source not found: {src}")
    if cfg.labelled_root is not None and (start_over or not (out / "distill.json").is_file()):
        labelled_frames(cfg.labelled_root, cfg.labelled_split)  # a wrong path fails before anything is written
    teacher = resolve_teacher(cfg.teacher, cfg.teacher_weights)
    loss = check_pair(teacher, cfg.student)
    if start_over or not (out / "distill.json").is_file():  # a new run: unusable weights fail before any work
        teacher_params = check_teacher(teacher)
        from ..bench import config_params

        student_params = config_params(get_config(cfg.student))
        if teacher_params and student_params >= teacher_params:  # said before minutes of labelling and training
            warnings.warn(f"the student {get_config(cfg.student).name} has {student_params / 1e6:.1f} M parameters, "
                          f"the teacher {teacher_params / 1e6:.1f} M: it will hardly be faster; pick a smaller "
                          "--student (fastdpt models)", stacklevel=2)
    with run_lock(out, "distillation"):  # makes out; two runs into one folder would label and train over each other
        if start_over:
            _start_over(out, log)
        return _run(cfg, teacher, loss, resume, log, label_progress)


def _start_over(out: Path, log: Callable[[str], None]) -> None:
    """Remove what a run that stopped while sampling left: its record and its sampled frames."""
    import shutil

    log(f"{out}: the earlier run stopped before its frames were planned (nothing labelled): starting over")
    shutil.rmtree(out / "labels", ignore_errors=True)
    (out / "distill.json").unlink(missing_ok=True)


def _run(cfg: DistillConfig, teacher: Teacher, loss: str, resume: bool, log: Callable[[str], None],
         label_progress: Callable[[int, int, float, float], None] | None) -> dict:
    """``distill`` once the run folder is checked and held."""
    import torch

    from ..presets import get_config
    from ..training import train
    from ..training.run import stored_config

    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    times = _times(out) if resume else {}
    _record(out, cfg, teacher, times)

    labels = LabelSet(out / "labels")
    t0 = time.perf_counter()
    log(f"teacher {teacher.name} (sha256 {teacher.sha256[:12]}), student {get_config(cfg.student).name}, loss {loss}")
    m = prepare(labels, teacher, list(cfg.frames), list(cfg.val_frames), cfg.every, cfg.max_frames,
                cfg.duplicate_level, cfg.val_fraction, cfg.hflip, resume=resume, progress=log,
                labelled_root=cfg.labelled_root, labelled_split=cfg.labelled_split)
    c = m["counts"]
    log(f"frames: {c['kept']} kept of {c['seen']} sampled ({c['duplicates']} near-duplicates skipped, "
        f"{c['unreadable']} unreadable, {c.get('too_small', 0)} under {MIN_SIDE} pixels a side, {c['gap']} left "
        "out between training and held-out frames)"
        + (f"; {c['ground_truth']} frames with ground truth from {cfg.labelled_root}" if c.get("ground_truth") else ""))
    stats = label(labels, teacher, cfg.hflip, cfg.workers, cfg.address, cfg.threads, progress=label_progress,
                  backend=cfg.teacher_backend)
    times["label_s"] = round(times.get("label_s", 0.0) + (time.perf_counter() - t0), 2)
    times["label_fps"] = stats.as_dict()["fps"]
    _record(out, cfg, teacher, times)
    log(f"labels: {stats.labelled} written now, {stats.already} already there "
        f"({stats.train} training, {stats.val} held out){f', {stats.fps:.2f} frames/s' if stats.labelled else ''}")
    median = label_median(labels)
    scored = Protocol()
    if teacher.kind == "metric" and median is not None and not scored.min_depth < median < scored.max_depth:
        warnings.warn(f"the teacher's labels have a median depth of {median:.4g} m, outside the "
                      f"{scored.min_depth:g}..{scored.max_depth:g} m that agreement and the KITTI metrics score: is the "
                      "teacher a trained metric model of such scenes?", stacklevel=2)

    tcfg = train_config(cfg, loss, teacher, labels)
    if tcfg.random_crop:
        warnings.warn(f"the training frames differ in size: the student trains on random {tcfg.random_crop[0]}x"
                      f"{tcfg.random_crop[1]} crops of them", stacklevel=2)
    run = Path(tcfg.out)
    t1 = time.perf_counter()
    if (run / "result.json").is_file() and resume:
        result = json.loads((run / "result.json").read_text())
        log(f"student already trained ({result['global_step']} steps)")
    else:
        can_resume = resume and (run / "resume.ckpt").is_file()
        if can_resume:
            tcfg = type(tcfg).from_dict({**stored_config(run).as_dict(), "epochs": tcfg.epochs,
                                         "max_steps": tcfg.max_steps, "workers": tcfg.workers,
                                         "progress": tcfg.progress, "tracking_uri": tcfg.tracking_uri})
        result = train(tcfg, resume=can_resume, overwrite=not can_resume and run.exists())
    times["train_s"] = round(times.get("train_s", 0.0) + (time.perf_counter() - t1), 2)
    _record(out, cfg, teacher, times)

    student_path = _keep_best(run, out / "student.safetensors", teacher)
    from .report import build_report, write_report

    report = build_report(cfg, teacher, labels, student_path, stats, result, times, log)
    write_report(report, out)
    return report


def _keep_best(run: Path, target: Path, teacher: Teacher) -> Path:
    """The run's best student (by held-out agreement), with the teacher named in its metadata."""
    from ..api import load
    from ..weights import save_checkpoint

    best = run / "best.safetensors"
    if not best.is_file():
        best = run / "last.safetensors"
    if not best.is_file():
        raise DistillError(f"the student's training left no checkpoint in {run}")
    model = load(best)
    return save_checkpoint(model, target, {"distilled_from": teacher.name, "teacher_sha256": teacher.sha256})
