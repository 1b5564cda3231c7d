"""The option layer: how an option is declared once (a dataclass field with its command-line help and
flags, :func:`option`) and the checks every options object shares, each written once with one message
shape ("--batch-size must be at least 1, got 0"). ``cli.common.dataclass_command`` derives a command's
flags from such fields; ``TrainConfig``, ``DistillConfig``, ``CompressConfig`` and ``RuntimeOptions``
validate with these functions. No torch: the command line parses without it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import field

from .errors import ConfigError

# defaults and limits more than one place uses, named once (library functions, the CLI's options and the service)
DEFAULT_CMAP = "Spectral_r"  # the colour map of every depth picture
DEMO_PRESET = "fast-effb0-f64-128x416"  # the fastest preset: what the demo trains
MAX_UPLOAD_MB = 20  # the HTTP service's upload limit
MAX_CONNECTIONS = 64  # the HTTP service's open connections at most


def option(help: str, default=None, flags: tuple[str, ...] | None = None, required: bool = False):
    """A dataclass field with its command-line help, flags (default ``--field-name``) and whether it is
    required; ``cli.common.dataclass_command`` derives a command's options from such fields."""
    meta = {"help": help, "required": required}
    if flags:
        meta["flags"] = flags
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The flag of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def at_least(obj, *names: str, minimum: int = 1, prefix: str = "--") -> None:
    """Each named field of ``obj`` is ``minimum`` or more (a field left at None is not checked)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{prefix}{name.replace('_', '-')} must be at least {minimum}, got {value}")


def positive(obj, *names: str) -> None:
    """Each named field of ``obj`` is above 0 (NaN is refused too)."""
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{flag(name)} must be positive, got {value}")


def fraction(obj, name: str, low_open: bool = False) -> None:
    """A field in [0, 1) (``low_open``: in (0, 1))."""
    value = getattr(obj, name)
    if not ((0 < value) if low_open else (0 <= value)) or not value < 1:
        raise ConfigError(f"{flag(name)} must be in {'(' if low_open else '['}0, 1), got {value}")


def usable_threads(threads: int | None, cpus: int | None = None) -> int | None:
    """A thread count this machine can run: more threads than CPUs only slows inference and training down
    (they take turns on the cores), so a larger count is lowered to the CPU count, said in one warning."""
    cpus = cpus or os.cpu_count() or 1
    if threads is not None and threads > cpus:
        warnings.warn(f"--threads {threads} is more than this machine's {cpus} CPUs: using {cpus}", stacklevel=3)
        return cpus
    return threads


def resume_differences(stored: dict, given: dict, may_change: set[str] | frozenset[str]) -> list[str]:
    """The options a resume gives otherwise than its run was started with, outside ``may_change``, each as
    ``name <run's> (run) vs <given> (given)`` (``train --resume``, ``distill --resume``)."""
    return [f"{k} {stored.get(k)!r} (run) vs {given[k]!r} (given)" for k in given
            if k not in may_change and stored.get(k) != given[k]]


def parse_hw(text: str, minimum: int = 1, what: str = "size") -> tuple[int, int]:
    """``HxW`` text -> (H, W), each side at least ``minimum`` (one parser: the CLI's sizes, compress's
    --frame-size)."""
    h, x, w = str(text).strip().lower().partition("x")
    if not (x and h.isdigit() and w.isdigit() and int(h) >= minimum and int(w) >= minimum):
        raise ConfigError(f"{what} must be HxW (at least {minimum}x{minimum}), e.g. 352x1216, got {text!r}")
    return int(h), int(w)

