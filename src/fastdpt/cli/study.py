"""Study commands: study run, study status, study report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError
from ..study.grid import MAX_TRIALS
from .common import console, interrupted, one_line_errors, out, parse_size, print_table

study_app = typer.Typer(no_args_is_help=True, help="The study: a grid of variants trained, scored and timed on Ray Tune.")


@study_app.command("run")
@one_line_errors
def run(
    grid: List[str] = typer.Argument(..., help="a preset group (study@192x640), names, or a YAML/JSON file of axes"),
    out_dir: Path = typer.Option(..., "--out", help="the study folder (shared storage for a cluster)"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="KITTI-format root (raw/, data_depth_annotated/, splits/)"),
    raw_root: Optional[Path] = typer.Option(None, "--raw-root"),
    gt_root: Optional[Path] = typer.Option(None, "--gt-root"),
    train_split: Optional[Path] = typer.Option(None, "--train-split"),
    val_split: Optional[Path] = typer.Option(None, "--val-split"),
    test_split: Optional[Path] = typer.Option(None, "--test-split"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="a step budget per trial"),
    init: Optional[Path] = typer.Option(None, "--init", help="warm-start weights for every trial (e.g. the official KITTI file)"),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="reference variant (default: DPT-Hybrid at the grid's size; 'none')"),
    train_baseline: bool = typer.Option(False, "--train-baseline", help="also train the baseline (otherwise only timed)"),
    address: Optional[str] = typer.Option(None, "--address", help="a Ray cluster: auto | host:port | ray://host:10001"),
    resources: Optional[str] = typer.Option(None, "--resources", help="per trial, e.g. cpu=8,gpu=1"),
    max_failures: int = typer.Option(2, "--max-failures", help="retries of a failing trial (from its last checkpoint)"),
    bench_sizes: Optional[List[str]] = typer.Option(None, "--bench-size", help="also time every variant at this network size (repeatable)"),
    bench_runs: int = typer.Option(5, "--bench-runs"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow server (default: SQLite in the study)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted study (finished trials are kept)"),
    max_trials: int = typer.Option(MAX_TRIALS, "--max-trials", min=1, help="refuse a grid with more trials than this"),
    timing_rounds: int = typer.Option(3, "--timing-rounds", min=0, help="after training, time every variant again in "
                                      "this many interleaved rounds (speed-ups with their spread; < 2: off)"),
) -> None:
    """Run a grid of variants: each trial warm-starts, trains, is scored on the test split and timed."""
    from ..study.sweep import run_study

    if max_failures < 0:
        raise ConfigError("--max-failures must be >= 0")
    def path(p: Path | None) -> str | None:
        return str(p) if p else None

    # the study's settings by their own names (StudySettings' fields); run_study resolves them once
    resume_line = "continue it with the same command and --resume (finished trials are kept)"
    try:
        rows = run_study(grid if len(grid) > 1 else grid[0], out_dir, data_root, address=address, resources=resources,
                         max_failures=max_failures, resume=resume, max_trials=max_trials, timing_rounds=timing_rounds,
                         epochs=epochs, max_steps=max_steps, init=path(init), backbone_weights=backbone_weights,
                         baseline=baseline, train_baseline=train_baseline, tracking_uri=tracking_uri,
                         bench_sizes=[parse_size(s) for s in bench_sizes or []], bench_runs=bench_runs,
                         raw_root=path(raw_root), gt_root=path(gt_root), train_split=path(train_split),
                         val_split=path(val_split), test_split=path(test_split))
    except KeyboardInterrupt:
        interrupted(f"the study in {out_dir} stopped; {resume_line}")
    st = _print_status(out_dir)
    unfinished = len(st["running"]) + len(st["waiting"])
    if unfinished:  # Ray Tune stops its trials on Ctrl-C and returns: the study did not end, it was stopped
        interrupted(f"{unfinished} trial(s) of the study in {out_dir} unfinished; {resume_line}")
    out.print(f"results: {Path(out_dir) / 'results.json'} ({len(rows)} rows); report: fastdpt study report {out_dir} -o DIR",
              highlight=False)
    trained = [r for r in rows if not str(r.get("name", "")).endswith("~baseline")]
    if trained and not any(r.get("status") in ("ok", "baseline") for r in trained):
        failed = [r for r in trained if r.get("status") == "failed"]
        why = f": {failed[0]['name']}: {failed[0].get('error')}" if failed else ""
        raise ConfigError(f"no trial succeeded ({len(failed)} of {len(trained)} failed{why})")


def _print_status(study: Path) -> dict:
    from ..study.sweep import status as study_status

    st = study_status(study)
    out.print(f"{len(st['done'])} done, {len(st['running'])} running, {len(st['failed'])} failed, "
              f"{len(st['waiting'])} waiting", highlight=False)
    def done(r) -> str:
        acc = r.get("abs_rel")
        scored = isinstance(acc, float) and acc == acc  # a timed-only baseline has no score
        return (f"AbsRel {acc:.3f}, " if scored else "") + f"{r.get('fps') or 0:.2f} FPS"

    rows = [[r["name"], "done", done(r)] for r in st["done"]]
    rows += [[r["name"], "failed", f"{r.get('error')} (attempts: {r.get('attempts')})"] for r in st["failed"]]
    rows += [[r["name"], "running", f"on {r.get('host')}, attempt {r.get('attempts')}"] for r in st["running"]]
    rows += [[r["name"], "waiting", ""] for r in st["waiting"]]
    if rows:
        print_table(f"study {study}", ["trial", "state", "detail"], rows)
    for r in st["failed"]:  # whole, whatever the terminal's width (a table cell is cut at 80 columns)
        out.print(f"failed: {r['name']}: {r.get('error')}", highlight=False, soft_wrap=True, markup=False)
    return st


@study_app.command("status")
@one_line_errors
def status(
    study: Path = typer.Argument(..., help="the study folder"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Trials done / running / failed (with the reason of each failure) / waiting."""
    st = _print_status(study)
    if json_out:
        from ..io import write_text

        write_text(json_out, json.dumps(st, indent=1))


@study_app.command("report")
@one_line_errors
def report(
    study: Path = typer.Argument(..., help="the study folder"),
    out_dir: Path = typer.Option(..., "--output", "-o", help="folder for report.md, figures/ and report.html"),
    title: Optional[str] = typer.Option(None, "--title"),
    note: Optional[str] = typer.Option(None, "--note", help="a caveat printed at the top"),
    no_qualitative: bool = typer.Option(False, "--no-qualitative", help="leave out the grid of predictions"),
    temporal: bool = typer.Option(False, "--temporal", help="first add flicker/TAE to rows that lack them (older studies)"),
) -> None:
    """Markdown and HTML report of a study: tables by factor, figures, Pareto front, summary."""
    from ..study.report import write_report
    from ..study.results import assemble
    from ..study.trial import fill_temporal

    if temporal:
        with console.status("measuring flicker on the test drives"):
            fill_temporal(study)
        assemble(study)
    with console.status("writing the report"):
        paths = write_report(study, out_dir, title=title, note=note, qualitative=not no_qualitative)
    out.print(f"{paths['markdown']}\n{paths['html']}", highlight=False)
