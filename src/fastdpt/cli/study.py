"""Study commands: study run, study status, study report."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import ConfigError
from ..study.grid import MAX_TRIALS
from ..study.settings import StudySettings
from .common import console, dataclass_command, interrupted, one_line_errors, out, parse_size, print_table

study_app = typer.Typer(no_args_is_help=True, help="The study: a grid of variants trained, scored and timed on Ray Tune.")


def _run(values: dict) -> None:
    """``study run``: the run's own options, then the study's settings by their own names (StudySettings'
    fields, from which this command's flags are derived); run_study resolves them once."""
    from ..study.sweep import run_study

    grid, out_dir = values.pop("grid"), values["out"]
    run = {k: values.pop(k) for k in ("address", "resources", "max_failures", "resume", "max_trials", "timing_rounds")}
    if run["max_failures"] < 0:
        raise ConfigError("--max-failures must be >= 0")
    values["bench_sizes"] = [parse_size(s) for s in values.pop("bench_sizes") or []]
    resume_line = "continue it with the same command and --resume (finished trials are kept)"
    try:
        rows = run_study(grid if len(grid) > 1 else grid[0], values.pop("out"), values.pop("data_root"), **run, **values)
    except KeyboardInterrupt:
        interrupted(f"the study in {out_dir} stopped; {resume_line}")
    st = _print_status(Path(out_dir))
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


def _param(name: str, annotation, default=None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


# every setting the trials share is a StudySettings field (its flag derived from it); the run's own options here
run = one_line_errors(dataclass_command(StudySettings, _run, exclude=("train", "bench_sizes", "parent_run_id", "grid"), extra=[
    _param("grid", Annotated[List[str], typer.Argument(help="a preset group (study@192x640), names, or a YAML/JSON "
                                                       "file of axes")], ...),
    _param("epochs", Annotated[Optional[int], typer.Option("--epochs", help="epochs of every trial")]),
    _param("max_steps", Annotated[Optional[int], typer.Option("--max-steps", help="a step budget per trial")]),
    _param("address", Annotated[Optional[str], typer.Option("--address", help="a Ray cluster: auto | host:port | "
                                                            "ray://host:10001")]),
    _param("resources", Annotated[Optional[str], typer.Option("--resources", help="per trial, e.g. cpu=8,gpu=1")]),
    _param("max_failures", Annotated[int, typer.Option("--max-failures", help="retries of a failing trial (from its "
                                                        "last checkpoint)")], 2),
    _param("bench_sizes", Annotated[Optional[List[str]], typer.Option("--bench-size", help="also time every variant "
                                                                     "at this network size, HxW (repeatable)")]),
    _param("resume", Annotated[bool, typer.Option("--resume", help="continue an interrupted study (finished trials are "
                                                  "kept)")], False),
    _param("max_trials", Annotated[int, typer.Option("--max-trials", min=1, help="refuse a grid with more trials than "
                                                     "this")], MAX_TRIALS),
    _param("timing_rounds", Annotated[int, typer.Option("--timing-rounds", min=0, help="after training, time every "
                                                        "variant again in this many interleaved rounds (speed-ups "
                                                        "with their spread; < 2: off)")], 3),
]))
run.__doc__ = "Run a grid of variants: each trial warm-starts, trains, is scored on the test split and timed."
study_app.command("run")(run)


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
