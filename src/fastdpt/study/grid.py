"""A study's grid: a preset group (``study@192x640``), a list of names, or a YAML/JSON file of axes
whose product is the grid::

    backbone: [r50, effb0, timm-mobilenetv3_large_100]
    hooks: [[0, 1], [2, 5], [8, 11]]
    attention: [softmax, performer]
    heads: 12                      # one value: one level
    input_size: [192, 640]         # one size (a list of sizes is an axis)
    features: 256
    output: m0.01_0.0125           # kitti | nyu | relative | m<scale>_<shift>
    train:                         # any TrainConfig option; a list is an axis (tuple options: a list of lists)
      max_steps: 200
      lr: [1e-4, 3e-4]
    compress: [none, prune-0.3, qat-int8, prune-0.3+qat-int8]   # optional: see below

Each trial is one variant with one set of training options; its id is the canonical name, plus the
training options that vary in the grid (``<name>~lr=0.0003``).

``compress:`` levels (:func:`fastdpt.compress.config.level_options`) multiply the rows, not the
trainings: a trial trains its variant once, writes its row, then compresses the trained model at each
level (pruning recovered by training on the study's data with the trial's step budget) and writes one
more row per level, ``<trial id>~compress=<level>``. The uncompressed row is always there: it is what
each compression is measured against.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from itertools import product
from pathlib import Path

from ..config import ModelConfig, parse_metric_head
from ..errors import ConfigError
from ..presets import get_config, list_models, resolve_names
from ..training.config import TrainConfig

MODEL_AXES = ("backbone", "hooks", "heads", "attention", "performer_features", "features", "input_size",
              "keep_aspect", "output", "norm")
MAX_TRIALS = 256  # a grid larger than this is refused unless max_trials allows it (10^6 combinations were accepted once)
TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}
MODEL_DEFAULT = ModelConfig().name  # any variant: training options are checked against one
FIXED_TRAIN = ("model", "out", "data_root", "raw_root", "gt_root", "train_split", "val_split", "init",
               "backbone_weights", "tracking_uri", "progress")


@dataclass(frozen=True)
class TrialSpec:
    """One trial: ``model`` (canonical name), ``train`` (options over the study's), ``baseline`` (the
    reference row: timed always, trained only when asked), ``fail_once`` (fault injection for tests:
    a marker path; the first attempt fails after training a little)."""

    id: str
    model: str
    train: dict = field(default_factory=dict)
    baseline: bool = False
    fail_once: str | None = None
    compress: list = field(default_factory=list)  # levels applied to the trained model, a row each

    def as_dict(self) -> dict:
        return asdict(self)

    def row_ids(self) -> list[str]:
        """The rows this trial writes: its own, then one per compression level."""
        return row_ids(self.id, self.compress)


def compressed_id(trial_id: str, level: str) -> str:
    return f"{trial_id}~compress={level}"


def row_ids(trial_id: str, levels=()) -> list[str]:
    """The rows of a trial with these compression levels (also read from trials.json as written)."""
    return [trial_id] + [compressed_id(trial_id, level) for level in levels]


def compress_levels(value) -> list[str]:
    """The grid's ``compress:`` entry -> the levels other than ``none``, each checked when the grid is read."""
    from ..compress.config import level_options

    levels = [str(v) for v in (value if isinstance(value, list) else [value])] if value is not None else []
    for level in levels:
        level_options(level)
    if len(set(levels)) != len(levels):
        raise ConfigError(f"the grid's compress: levels repeat: {levels}")
    return [level for level in levels if level != "none"]


def _output(value) -> tuple[float, float] | None:
    return parse_metric_head(None if value is None else str(value))


def _levels(key: str, value) -> list:
    """An axis' levels: a list is an axis, except for pair-valued keys, where a list of lists is."""
    pair = key in ("hooks", "input_size")
    if isinstance(value, list) and (not pair or (value and isinstance(value[0], (list, tuple)))):
        return value
    return [value]


def _number(key: str, value):
    """YAML reads ``1e-4`` (no dot) as a string: a numeric training option takes it as the number."""
    kind = str(TRAIN_FIELDS[key].type)
    if isinstance(value, str) and ("float" in kind or "int" in kind):
        for cast in ((int, float) if "int" in kind and "float" not in kind else (float,)):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def _train_levels(key: str, value) -> list:
    if key not in TRAIN_FIELDS or key in FIXED_TRAIN:
        raise ConfigError(f"unknown or study-wide training option {key!r} in the grid's train: section")
    tuple_typed = isinstance(TRAIN_FIELDS[key].default, tuple) or "tuple" in str(TRAIN_FIELDS[key].type)
    if isinstance(value, list) and (not tuple_typed or (value and isinstance(value[0], (list, tuple)))):
        return [_number(key, v) for v in value]
    return [_number(key, value)]


def _check_train(train: dict, model: str) -> None:
    """A trial's training options are checked when the grid is read (``epochs: -5`` or ``lr: -1`` would
    otherwise reach trials.json and fail on a worker later)."""
    try:
        TrainConfig(model=model, out="grid", **train)
    except ConfigError as e:
        raise ConfigError(f"the grid's train: section: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the grid's train: section has a value of the wrong type ({train}): {e}") from None


def grid_from_axes(axes: dict, max_trials: int = MAX_TRIALS) -> list[TrialSpec]:
    axes = dict(axes)
    train_axes = axes.pop("train", {}) or {}
    compress = compress_levels(axes.pop("compress", None))
    unknown = sorted(set(axes) - set(MODEL_AXES))
    if unknown:
        raise ConfigError(f"unknown grid axes {unknown}; model axes are {', '.join(MODEL_AXES)} (and train:, compress:)")
    model_keys = list(axes)
    model_levels = [_levels(k, axes[k]) for k in model_keys]
    train_keys = list(train_axes)
    train_levels = [_train_levels(k, train_axes[k]) for k in train_keys]
    varying = [k for k, lv in zip(train_keys, train_levels) if len(lv) > 1]
    count = math.prod(len(lv) for lv in model_levels + train_levels)
    if count > max_trials:
        raise ConfigError(f"the grid has {count} combinations, over the limit of {max_trials}; pass "
                          f"--max-trials {count} to run it anyway, or use fewer levels")
    for tcombo in product(*train_levels):
        _check_train(dict(zip(train_keys, tcombo)), MODEL_DEFAULT)
    specs, seen = [], set()
    for combo in product(*model_levels):
        values = dict(zip(model_keys, combo))
        if "output" in values:
            values["metric"] = _output(values.pop("output"))
        for key in ("hooks", "input_size"):
            if key in values:
                values[key] = tuple(values[key])
        cfg = ModelConfig(**values)
        for tcombo in product(*train_levels):
            train = dict(zip(train_keys, tcombo))
            suffix = ",".join(f"{k}={train[k]}" for k in varying)
            sid = cfg.name + (f"~{suffix}" if suffix else "")
            if sid not in seen:
                seen.add(sid)
                specs.append(TrialSpec(sid, cfg.name, train, compress=list(compress)))
    return specs


def load_grid(spec: str | os.PathLike | list[str], max_trials: int = MAX_TRIALS) -> list[TrialSpec]:
    """Trials from a preset group or glob, a list of names, or a ``.yaml``/``.yml``/``.json`` file of
    axes; more than ``max_trials`` trials are refused."""
    if isinstance(spec, (list, tuple)):
        names = resolve_names(list(spec))
        if len(names) > max_trials:
            raise ConfigError(f"the grid names {len(names)} variants, over the limit of {max_trials}; pass "
                              f"--max-trials {len(names)} to run them all")
        return [TrialSpec(get_config(n).name, get_config(n).name) for n in names]
    path = Path(str(spec))
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ConfigError(f"grid file not found: {path}")
        text = path.read_text()
        try:
            if path.suffix.lower() == ".json":
                axes = json.loads(text)
            else:
                import yaml

                axes = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - YAML and JSON parse errors
            raise ConfigError(f"cannot read the grid file {path}: {e}") from None
        if not isinstance(axes, dict):
            raise ConfigError(f"{path}: a grid file maps axes to levels (a mapping at the top)")
        return grid_from_axes(axes, max_trials)
    if not list_models(str(spec)) and "," not in str(spec):
        get_config(str(spec))  # a single name: its error says what is wrong
    return load_grid(str(spec).split(","), max_trials)


def default_baseline(specs: list[TrialSpec]) -> str:
    """The unmodified DPT-Hybrid (ResNet-50, hooks 8/11, 12 heads, softmax, 256 features) with the grid's
    input size and output head: what every speed-up is measured against."""
    first = get_config(specs[0].model)
    return ModelConfig(input_size=first.input_size, keep_aspect=first.keep_aspect, metric=first.metric,
                       norm=first.norm).name
