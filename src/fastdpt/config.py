"""One description of a DPT-Hybrid variant, its canonical name, and the preset registry.

A variant's canonical name carries every field of :class:`ModelConfig` and parses back to the same
config::

    <backbone>.h<a>-<b>.heads<n>.<attention>.f<features>[.<output>]@<H>x<W>[-keep]

    r50.h8-11.heads12.softmax.f256@384x384-keep          DPT-Hybrid (MiDaS), relative output
    r50.h8-11.heads12.softmax.f256.kitti@352x1216-keep   DPT-Hybrid KITTI head (metres)
    effb0.h0-1.heads1.performer.f256.kitti@192x640       a study variant
    r50.h2-5.heads24.performer128.f128@192x640           Performer with 128 random features

``<output>`` is omitted for relative inverse depth, ``kitti``/``nyu`` for the official metric heads,
or ``m<scale>_<shift>`` for any other metric head. ``-keep`` means the image is resized with its
aspect ratio kept (the official "minimal" rule) so that the network size varies per image;
without it every image is resized to exactly H x W, as the reference study did.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from itertools import product

from .errors import ConfigError

BACKBONES = {
    # name: (channels of conv hook 1, conv hook 2)
    "r50": (256, 512),
    "effb0": (24, 40),
}
ATTENTIONS = ("softmax", "performer")
EMBED_DIM = 768
MAX_BLOCKS = 12

# Official metric heads: depth = 1 / max(scale * y + shift, 1e-8)
METRIC_HEADS = {
    "kitti": (0.00006016, 0.00579),
    "nyu": (0.000305, 0.1378),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a DPT-Hybrid variant.

    Args:
        backbone: convolutional stem. ``r50``: the ViT-Hybrid ResNetV2 (stages 3, 4, 9; conv hooks are
            stages 0 and 1). ``effb0``: timm EfficientNet-B0 (conv hooks are block groups 1 and 2;
            its 1280-channel 1/32 map is brought to 1/16 tokens by ConvTranspose2d(1280, 768, 2, 2)).
        hooks: the two 0-indexed transformer blocks whose outputs feed the decoder. Blocks after
            ``max(hooks)`` are not built at all.
        heads: attention heads; any divisor of 768. The qkv projection is shared, so the number of
            heads changes no parameter count.
        attention: ``softmax`` (exact, via ``scaled_dot_product_attention``) or ``performer`` (FAVOR+).
        performer_features: random features per head for Performer; ``None`` means
            ``int(d * ln d)`` with d the head dimension (266 for d = 64). Must be None for softmax.
        features: decoder width (256 in DPT).
        input_size: network input (H, W); multiples of 32.
        keep_aspect: resize each image keeping its aspect ratio ("minimal" rule, sides rounded to
            multiples of 32) instead of to exactly ``input_size``.
        metric: ``None`` for relative inverse depth, else ``(scale, shift)`` of a metric head:
            depth = 1 / max(scale * y + shift, 1e-8) in metres.
    """

    backbone: str = "r50"
    hooks: tuple[int, int] = (8, 11)
    heads: int = 12
    attention: str = "softmax"
    performer_features: int | None = None
    features: int = 256
    input_size: tuple[int, int] = (384, 384)
    keep_aspect: bool = False
    metric: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        # normalise sequences to tuples so that configs built from lists compare and hash equal
        object.__setattr__(self, "hooks", tuple(int(h) for h in self.hooks))
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        if self.metric is not None:
            object.__setattr__(self, "metric", tuple(float(v) for v in self.metric))
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
        if len(self.hooks) != 2 or not (0 <= self.hooks[0] < self.hooks[1] < MAX_BLOCKS):
            raise ConfigError(f"hooks must be two increasing block indices in 0..{MAX_BLOCKS - 1}, got {self.hooks}")
        if self.heads < 1 or EMBED_DIM % self.heads:
            raise ConfigError(f"heads must divide {EMBED_DIM}, got {self.heads}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"unknown attention {self.attention!r}; choose one of {ATTENTIONS}")
        if self.performer_features is not None and (self.attention != "performer" or self.performer_features < 1):
            raise ConfigError("performer_features must be a positive number and only goes with attention='performer'")
        if self.features < 1:
            raise ConfigError(f"features must be positive, got {self.features}")
        if len(self.input_size) != 2 or any(s < 32 or s % 32 for s in self.input_size):
            raise ConfigError(f"input_size must be (H, W), multiples of 32, got {self.input_size}")
        if self.metric is not None and (len(self.metric) != 2 or not all(math.isfinite(v) for v in self.metric)):
            raise ConfigError(f"metric must be (scale, shift) of finite numbers, got {self.metric}")

    # -- derived -------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of transformer blocks built and run."""
        return self.hooks[1] + 1

    @property
    def head_dim(self) -> int:
        return EMBED_DIM // self.heads

    @property
    def num_features(self) -> int:
        """Performer random features actually used (per head)."""
        if self.performer_features is not None:
            return self.performer_features
        d = self.head_dim
        return max(1, int(d * math.log(d))) if d > 1 else 1

    @property
    def output_kind(self) -> str:
        return "metric" if self.metric is not None else "relative"

    @property
    def name(self) -> str:
        """The canonical short name; ``ModelConfig.from_name(cfg.name) == cfg``."""
        attn = self.attention
        if self.performer_features is not None:
            attn += str(self.performer_features)
        out = ""
        if self.metric is not None:
            known = [k for k, v in METRIC_HEADS.items() if v == self.metric]
            out = "." + (known[0] if known else f"m{self.metric[0]!r}_{self.metric[1]!r}")
        h, w = self.input_size
        keep = "-keep" if self.keep_aspect else ""
        return (
            f"{self.backbone}.h{self.hooks[0]}-{self.hooks[1]}.heads{self.heads}.{attn}"
            f".f{self.features}{out}@{h}x{w}{keep}"
        )

    def replace(self, **changes) -> "ModelConfig":
        return replace(self, **changes)

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        """Parse a canonical name (not a preset alias; see :func:`get_config` for both)."""
        m = _NAME_RE.fullmatch(name.strip())
        if not m:
            raise ConfigError(
                f"{name!r} is neither a preset nor a canonical variant name "
                "(<backbone>.h<a>-<b>.heads<n>.<softmax|performer[M]>.f<F>[.<kitti|nyu|m<s>_<t>>]@<H>x<W>[-keep]); "
                "run `fastdpt models` to list presets"
            )
        g = m.groupdict()
        metric = None
        if g["out"] in METRIC_HEADS:
            metric = METRIC_HEADS[g["out"]]
        elif g["out"]:
            try:
                metric = (float(g["ms"]), float(g["mt"]))
            except (TypeError, ValueError):
                raise ConfigError(f"cannot read the metric head in {name!r}") from None
        return cls(
            backbone=g["backbone"],
            hooks=(int(g["h0"]), int(g["h1"])),
            heads=int(g["heads"]),
            attention=g["attn"],
            performer_features=int(g["m"]) if g["m"] else None,
            features=int(g["f"]),
            input_size=(int(g["H"]), int(g["W"])),
            keep_aspect=bool(g["keep"]),
            metric=metric,
        )


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NAME_RE = re.compile(
    r"(?P<backbone>[a-z0-9_]+)\.h(?P<h0>\d+)-(?P<h1>\d+)\.heads(?P<heads>\d+)"
    r"\.(?P<attn>softmax|performer)(?P<m>\d+)?\.f(?P<f>\d+)"
    rf"(?:\.(?P<out>kitti|nyu|m(?P<ms>{_FLOAT})_(?P<mt>{_FLOAT})))?"
    r"@(?P<H>\d+)x(?P<W>\d+)(?P<keep>-keep)?"
)


# -- presets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named variant, with where its weights come from (kept apart from the architecture)."""

    name: str
    config: ModelConfig
    description: str
    weights: str | None = None  # key into fastdpt.weights.OFFICIAL_WEIGHTS
    groups: tuple[str, ...] = field(default=())


_DPT = ModelConfig()
STUDY_HOOKS = ((0, 1), (2, 5), (8, 11))
STUDY_HEADS = (1, 12, 24)
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
        STUDY_SIZES, BACKBONES, STUDY_HOOKS, ATTENTIONS, STUDY_HEADS
    ):
        cfg = ModelConfig(backbone=backbone, hooks=hooks, heads=heads, attention=attention,
                          input_size=size, metric=METRIC_HEADS["kitti"])
        presets.append(Preset(cfg.name, cfg, "reference-study grid variant (KITTI head)",
                              groups=("study", f"study@{size[0]}x{size[1]}")))
    return {p.name: p for p in presets}


PRESETS: dict[str, Preset] = _build_registry()


def list_models(pattern: str | None = None) -> list[str]:
    """Preset names, optionally filtered by a group (``study``, ``study@192x640``, ``official``)
    or an fnmatch pattern."""
    from fnmatch import fnmatchcase

    names = list(PRESETS)
    if pattern is None:
        return names
    if any(pattern in p.groups for p in PRESETS.values()):
        return [n for n, p in PRESETS.items() if pattern in p.groups]
    return [n for n in names if fnmatchcase(n, pattern)]


def get_config(name_or_config: str | ModelConfig) -> ModelConfig:
    """A preset name or a canonical name -> its config."""
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    if name_or_config in PRESETS:
        return PRESETS[name_or_config].config
    return ModelConfig.from_name(name_or_config)


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


def _is_group(name: str) -> bool:
    return any(name in p.groups for p in PRESETS.values())
