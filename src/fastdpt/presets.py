"""The registry of named variants and groups (in the spirit of timm's ``list_models``).

A preset names a :class:`~fastdpt.config.ModelConfig` and says where its weights come from; the
architecture itself lives in the config alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import difflib
from fnmatch import fnmatchcase
from itertools import product

from .config import BACKBONES, METRIC_HEADS, ModelConfig
from .errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """A named variant, with where its weights come from (kept apart from the architecture)."""

    name: str
    config: ModelConfig
    description: str
    weights: str | None = None  # key into fastdpt.hub.OFFICIAL_WEIGHTS
    groups: tuple[str, ...] = field(default=())


_DPT = ModelConfig()
STUDY_HOOKS = ((0, 1), (2, 5), (8, 11))
STUDY_HEADS = (1, 12, 24)
STUDY_ATTENTIONS = ("softmax", "performer")  # the study's axis: a newly registered kernel does not join it
STUDY_SIZES = ((352, 1216), (192, 640))


def _build_registry() -> dict[str, Preset]:
    presets = [
        Preset("dpt-hybrid-midas", _DPT.replace(input_size=(384, 384), keep_aspect=True),
               "Official DPT-Hybrid, MiDaS 3.0 mix of 10 datasets; relative inverse depth",
               weights="dpt-hybrid-midas", groups=("official",)),
        Preset("dpt-hybrid-kitti", _DPT.replace(input_size=(352, 1216), keep_aspect=True, metric=METRIC_HEADS["kitti"]),
               "Official DPT-Hybrid fine-tuned on KITTI; metres",
               weights="dpt-hybrid-kitti", groups=("official",)),
        Preset("dpt-hybrid-nyu", _DPT.replace(input_size=(480, 640), keep_aspect=True, metric=METRIC_HEADS["nyu"]),
               "Official DPT-Hybrid fine-tuned on NYUv2; metres",
               weights="dpt-hybrid-nyu", groups=("official",)),
    ]
    # the project's own fast presets: the study's fastest layout (EfficientNet-B0, 2 blocks) with a
    # slimmer decoder and, for the smallest, a smaller input
    fast = _DPT.replace(backbone="effb0", hooks=(0, 1), metric=METRIC_HEADS["kitti"])
    for name, cfg, text in [
        ("fast-effb0-f128-192x640", fast.replace(features=128, input_size=(192, 640)),
         "study's fastest layout, decoder width 128"),
        ("fast-effb0-f64-192x640", fast.replace(features=64, input_size=(192, 640)),
         "study's fastest layout, decoder width 64"),
        ("fast-effb0-f64-128x416", fast.replace(features=64, input_size=(128, 416)),
         "decoder width 64 at 128x416 input: the fastest preset"),
    ]:
        presets.append(Preset(name, cfg, text, groups=("fast",)))
    for size, backbone, hooks, attention, heads in product(
        STUDY_SIZES, BACKBONES, STUDY_HOOKS, STUDY_ATTENTIONS, STUDY_HEADS
    ):
        cfg = ModelConfig(backbone=backbone, hooks=hooks, heads=heads, attention=attention,
                          input_size=size, metric=METRIC_HEADS["kitti"])
        presets.append(Preset(cfg.name, cfg, "reference-study grid variant (KITTI head)",
                              groups=("study", f"study@{size[0]}x{size[1]}")))
    return {p.name: p for p in presets}


PRESETS: dict[str, Preset] = _build_registry()


def _is_group(name: str) -> bool:
    return any(name in p.groups for p in PRESETS.values())


def list_models(pattern: str | None = None) -> list[str]:
    """Preset names, optionally filtered by a group (``study``, ``study@192x640``, ``official``)
    or an fnmatch pattern."""
    names = list(PRESETS)
    if pattern is None:
        return names
    if _is_group(pattern):
        return [n for n, p in PRESETS.items() if pattern in p.groups]
    return [n for n in names if fnmatchcase(n, pattern)]


def get_config(name_or_config: str | ModelConfig) -> ModelConfig:
    """A preset name or a canonical name -> its config."""
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    if name_or_config in PRESETS:
        return PRESETS[name_or_config].config
    try:
        return ModelConfig.from_name(name_or_config)
    except ConfigError as e:
        close = difflib.get_close_matches(str(name_or_config), list(PRESETS), n=3, cutoff=0.75)
        if close:
            raise ConfigError(f"{e}; did you mean {' or '.join(close)}?") from None
        raise


def preset_with_weights(config: ModelConfig) -> str | None:
    """The preset whose published weights fit ``config`` exactly, if any."""
    for name, p in PRESETS.items():
        if p.config == config and p.weights:
            return name
    return None


def resolve_names(names: list[str]) -> list[str]:
    """Expand groups and patterns in a list of model names (order kept, duplicates dropped)."""
    out: list[str] = []
    for n in names:
        matched = list_models(n) if (n not in PRESETS and any(c in n for c in "*?[") or _is_group(n)) else [n]
        if not matched:
            raise ConfigError(f"no preset matches {n!r}; run `fastdpt models` to list them")
        for m in matched:
            get_config(m)  # validate early
            if m not in out:
                out.append(m)
    return out
