"""``fastdpt distill``: options derived from DistillConfig; the sources are repeatable flags."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..distill.config import DistillConfig, resume_values
from .common import console, dataclass_command, given_options, interrupted, one_line_errors, out


def _progress(done: int, total: int, fps: float, eta: float) -> None:
    eta_text = f"{eta:.0f} s" if eta == eta else "?"
    console.print(f"labelled {done}/{total} frames, {fps:.2f} frames/s, ETA {eta_text}", highlight=False)


def _distill(values: dict) -> None:
    from ..distill import distill

    resume, ctx = values.pop("resume"), values.pop("ctx")
    values["frames"] = tuple(str(p) for p in values.pop("frames") or ())
    values["val_frames"] = tuple(str(p) for p in values.pop("val_frames") or ())
    if resume:  # the options not passed are the run's own
        values = resume_values(values, given_options(ctx, values))
    cfg = DistillConfig(**values)
    log = (lambda m: console.print(m, highlight=False)) if cfg.progress else (lambda m: None)
    try:
        report = distill(cfg, resume=resume, log=log, label_progress=_progress if cfg.progress else None)
    except KeyboardInterrupt:
        interrupted(f"what was written in {cfg.out} is kept; run the same command with --resume to continue")
    a = report["agreement"]
    scored = (f"held-out AbsRel vs the teacher {a['student']['abs_rel']:.4f} (best constant "
              f"{a['best_constant']['abs_rel']:.4f})" if a["student"] and a["best_constant"] else
              "agreement with the teacher not scored (its labels have no depth in the scored range)")
    out.print(f"student {report['student']['path']}: {scored}, {_speed(report['speedup'])} than the teacher; "
              f"report in {Path(cfg.out) / 'report.md'}")


def _speed(speedup: float) -> str:
    """A speed-up in words: below 1 the student is slower, and says so."""
    return f"{speedup}x faster" if speedup >= 1 else f"{round(1 / speedup, 2)}x slower"


def _param(name: str, annotation) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None if name != "resume" else False,
                             annotation=annotation)


distill = one_line_errors(dataclass_command(
    DistillConfig, _distill, exclude=("frames", "val_frames"),
    extra=[_param("frames", Annotated[Optional[List[Path]], typer.Option(
               "--frames", help="video file, image folder (recursive) or KITTI raw root; repeat for several")]),
           _param("val_frames", Annotated[Optional[List[Path]], typer.Option(
               "--val-frames", help="held-out source (repeatable); default: the last sequences")]),
           _param("resume", Annotated[bool, typer.Option("--resume", help="continue the run in --out with its own "
                                                                          "options (those passed must match it)")]),
           inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]))
distill.__doc__ = ("Distil a slow teacher into a fast student on your own unlabelled frames: label them (in parallel "
                   "on Ray), train the student on the labels, and compare the two.")
