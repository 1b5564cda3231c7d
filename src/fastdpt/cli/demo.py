"""The demo command: the offline end-to-end job."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import ThreadsOpt, interrupted, one_line_errors, out, set_threads
from ..options import DEMO_PRESET


@one_line_errors
def demo(
    out_dir: Path = typer.Option(Path("demo"), "--out", help="folder for data, run, video and summary"),
    steps: int = typer.Option(120, "--steps", help="training steps (batch 4); the default takes ~3 min on 2 CPU cores"),
    preset: str = typer.Option(DEMO_PRESET, "--preset"),
    drives: int = typer.Option(4, "--drives"),
    frames: int = typer.Option(40, "--frames"),
    threads: ThreadsOpt = None,
    force: bool = typer.Option(False, "--force", help="replace an earlier demo run in --out"),
) -> None:
    """Offline end to end: render synthetic drives, train the fastest preset, run it online on a held-out drive."""
    import warnings

    from ..demo import run_demo

    set_threads(threads)
    warnings.filterwarnings("ignore", module="lightning")  # the demo prints its own progress
    try:
        run_demo(out_dir, steps, preset, drives, frames, force=force, say=lambda m: out.print(m, highlight=False))
    except KeyboardInterrupt:
        interrupted(f"what was written in {out_dir} is kept; run the demo again with --force to start over")
