"""What every command shares: consoles, the one-line error exit, shared options, the predictor
builder, and options derived from a dataclass (so the command line never copies the library)."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import sys
import types
import typing
import warnings
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import FastDPTError

class _ClosableStdout:
    """Standard output that a closed pipe (``fastdpt predict dir | head -1``) cannot stop: the first
    ``BrokenPipeError`` points file descriptor 1 at /dev/null and the command's work goes on (its
    files, its exit code and its stderr are unchanged); only the lines nobody reads are dropped."""

    closed_pipe = False

    def write(self, text: str) -> int:
        if not self.closed_pipe:
            try:
                return sys.stdout.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.closed_pipe:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.closed_pipe = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's own flush at exit finds a sink, not EPIPE
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(sys.stdout, name)


console = Console(stderr=True)
out = Console(file=_ClosableStdout())

# options shared by every command that runs a model
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="preset, canonical name, .safetensors, .onnx or OpenVINO .xml")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", "-w", help="weight file (official .pt, HF or fastdpt)")]
BackendOpt = Annotated[str, typer.Option("--backend", envvar="FASTDPT_BACKEND", help="auto | torch | compile | cudagraph | onnxruntime | openvino "
                                         "(auto: the fastest this machine runs; it says which and why)")]
PrecisionOpt = Annotated[str, typer.Option("--precision", envvar="FASTDPT_PRECISION", help="auto | fp32 | bf16 (GPU, or a CPU with AMX/AVX512-BF16) | "
                                           "fp16 | tf32 (GPU) | int8 (openvino, onnxruntime)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="torch / ONNX Runtime threads (at least 1)")]
CmapOpt = Annotated[str, typer.Option("--cmap", help="Spectral_r | inferno | magma | turbo | viridis | gray")]
StatsOpt = Annotated[Optional[Path], typer.Option("--stats", help="write latency/FPS/drops as JSON")]


# warnings of the libraries' that are chatter, behind --verbose: Lightning's MLflow logger announces at WARNING
# that it creates the experiment it was told to use ("Experiment ... not found. Creating it.")
CHATTY = {"lightning.pytorch.loggers.mlflow": logging.ERROR}


def quiet_libraries() -> None:
    """Quiet the libraries fastdpt drives (a CLI process owns its logging; the library itself never
    touches it). They set their own levels and handlers when imported (later, on first use), so records
    at INFO and below are switched off for the process (fastdpt prints its own progress, never through
    logging), and the few warnings in CHATTY that are not the user's to act on go too; their deprecation
    notices are not the user's either."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.disable(logging.INFO)
    for name, level in CHATTY.items():
        logging.getLogger(name).setLevel(level)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)


def show_warnings_on_one_line() -> None:
    """Library warnings (``warnings.warn``) in the CLI as ``warning: message``, not file:line and source."""
    def show(message, category, filename, lineno, file=None, line=None):
        console.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False, soft_wrap=True)

    warnings.showwarning = show


def fail(e: Exception) -> typing.NoReturn:
    console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


# permission denied, not permitted, a read-only file system, a file where a folder must be (or the reverse)
USER_FS_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


def one_line_errors(fn: Callable) -> Callable:
    """Turn a :class:`FastDPTError` raised anywhere in a command into one line and exit code 2; a
    file-system refusal (permission denied, a file where a folder must be) too, naming the path; Ctrl-C
    or SIGTERM not handled by the command itself into one line and exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FastDPTError as e:
            fail(e)
        except OSError as e:  # a file-system refusal the user can mend (never a bug's traceback hidden)
            if e.errno not in USER_FS_ERRORS or not e.filename:
                raise
            fail(f"{e.strerror}: {e.filename}")
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def interrupted(what: str) -> typing.NoReturn:
    """The one line after Ctrl-C / SIGTERM in a command that keeps its work: ``what`` says what was kept
    and how to go on."""
    console.print(f"interrupted: {what}", highlight=False, soft_wrap=True)
    raise typer.Exit(130)


def parse_size(text: str) -> tuple[int, int]:
    from ..errors import ConfigError
    from ..options import parse_hw

    try:
        return parse_hw(text)
    except ConfigError:
        raise typer.BadParameter(f"expected HxW, e.g. 352x1216, got {text!r}") from None


def set_threads(threads: int | None) -> int | None:
    """The command's torch thread count (a CLI process owns its threads), at most the CPU count; returns it."""
    from ..options import usable_threads

    threads = usable_threads(threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return threads


def check_model(model: str, weights=None) -> None:
    """A model argument that cannot work fails here, before inputs are read or anything is loaded:
    a checkpoint, ONNX or OpenVINO file that does not exist, or a name that is no preset or variant."""
    from ..config import EXPORTED_SUFFIXES
    from ..presets import get_config

    path = Path(str(model))
    if path.suffix in (".safetensors", ".pt", ".pth", *EXPORTED_SUFFIXES):
        if not path.is_file():
            raise FastDPTError(f"model file not found: {path}")
    else:
        get_config(str(model))
    if weights is not None and not Path(weights).is_file():
        raise FastDPTError(f"weights file not found: {weights}")


def build_predictor(model, weights, device, backend, precision, threads):
    """The Predictor every model-running command uses: ``auto`` resolved for this machine (the choice
    and why printed on one line); int8 is calibrated on synthetic driving frames."""
    from ..predict import Predictor
    from ..runtime import RuntimeOptions
    from ..runtime.exported import is_exported

    threads = set_threads(threads)
    options = RuntimeOptions(backend, precision, device, threads)
    from ..runtime.quantize import calibration_for

    calibration = calibration_for(options, exported=is_exported(model))
    predictor = Predictor(model, weights, calibration=calibration, options=options)
    if predictor.choice is not None:
        console.print(predictor.choice.line(), highlight=False)
    return predictor


# -- options from a dataclass ------------------------------------------------------------------------
def _none_or(parse: Callable[[str], object]) -> Callable[[str | None], object]:
    return lambda s: None if s in (None, "", "none") else parse(s)


def _base_type(tp):
    """(type typer parses, converter to the field's type) for a dataclass field type."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    core = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if typing.get_origin(core) is tuple:  # HxW for int pairs, comma-separated otherwise
        ints = typing.get_args(core)[0] is int
        return Optional[str], _none_or(parse_size if ints else (lambda s: tuple(float(v) for v in s.split(","))))
    if core in (int, float, str, bool):
        return (Optional[core] if optional else core), (lambda v: v)
    return Optional[str], (lambda v: v)


def dataclass_command(cls, call: Callable[[dict], None], exclude: tuple[str, ...] = (),
                      extra: list[inspect.Parameter] = ()) -> Callable:
    """A typer command whose options are the fields of ``cls`` (help, flags and whether required from
    each field's metadata; defaults from the dataclass), plus ``extra`` parameters. ``call`` receives
    a dict of the field values (converted back to the field types) and the extra values."""
    hints = typing.get_type_hints(cls)
    params, converters = [], {}
    for f in fields(cls):
        if f.name in exclude:
            continue
        typ, conv = _base_type(hints[f.name])
        converters[f.name] = conv
        flags = f.metadata.get("flags", ("--" + f.name.replace("_", "-"),))
        required = f.metadata.get("required", False) or f.default is MISSING
        default = None if f.default is MISSING else f.default
        if isinstance(default, tuple):  # shown and parsed as text: 0.9,0.999 or HxW
            default = ("x" if isinstance(default[0], int) else ",").join(str(v) for v in default)
        opt = typer.Option(*flags, help=f.metadata.get("help"), show_default=not required)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=... if required else default, annotation=Annotated[typ, opt]))
    params += list(extra)

    def command(**kwargs):
        values = {k: converters[k](v) if k in converters else v for k, v in kwargs.items()}
        return call(values)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def given_options(ctx: typer.Context, values: dict) -> dict:
    """The ``values`` given on the command line (or through the environment), not left at their default:
    what ``--resume`` keeps, the rest being the run's own (``train``, ``distill``)."""
    return {k: v for k, v in values.items()
            if (source := ctx.get_parameter_source(k)) is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")}


# -- tables that never cut names -----------------------------------------------------------------------
def print_table(title: str, headers: list[str], rows: list[list[str]], names: tuple[int, ...] = (0,),
                console: Console | None = None) -> None:
    """A table whose name columns (``names``: column indexes) are never cut, whatever the terminal's
    width: columns on the right that do not fit are left out (and the caption says which; ``--json``
    has them all), what still does not fit wraps."""
    console = console or out
    widths = [max([len(h)] + [len(r[i]) for r in rows]) + 3 for i, h in enumerate(headers)]
    shown = list(range(len(headers)))
    while sum(widths[i] for i in shown) + 1 > console.width and any(i not in names for i in shown):
        shown.remove(max(i for i in shown if i not in names))
    dropped = [headers[i] for i in range(len(headers)) if i not in shown]
    table = Table(title=title, caption=f"left out at this width: {', '.join(dropped)}" if dropped else None)
    for i in shown:
        if i in names:
            table.add_column(headers[i], no_wrap=True, min_width=widths[i] - 3)
        else:
            table.add_column(headers[i], overflow="fold")
    for r in rows:
        table.add_row(*(r[i] for i in shown))
    console.print(table)
