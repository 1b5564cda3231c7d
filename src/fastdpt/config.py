"""One description of a DPT-Hybrid variant, its canonical name, and how its images are prepared.

A variant's canonical name carries every field of :class:`ModelConfig` and parses back to the same
config::

    <backbone>.h<a>-<b>.heads<n>.<attention>.f<features>[.<output>][.<norm>]@<H>x<W>[-keep]

    r50.h8-11.heads12.softmax.f256@384x384-keep          DPT-Hybrid (MiDaS), relative output
    r50.h8-11.heads12.softmax.f256.kitti@352x1216-keep   DPT-Hybrid KITTI head (metres)
    effb0.h0-1.heads1.performer.f256.kitti@192x640       a study variant
    r50.h2-5.heads24.performer128.f128@192x640           Performer with 128 random features

``<output>`` is omitted for relative inverse depth, ``kitti``/``nyu`` for the official metric heads,
or ``m<scale>_<shift>`` for any other metric head. ``<norm>`` is omitted for DPT's normalisation
(mean = std = 0.5) and ``imagenet`` for ImageNet's. ``-keep`` means the image is resized with its
aspect ratio kept (the official "minimal" rule) so that the network size varies per image;
without it every image is resized to exactly H x W, as the reference study did.

When parsing, ``heads<n>``, the attention and ``f<features>`` may be left out; they then take
their defaults (12 heads, softmax, 256). The canonical name always spells them out.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass, replace

from .errors import ConfigError

BACKBONES = ("r50", "effb0")


@dataclass(frozen=True)
class AttentionKind:
    """An attention kernel as a variant name knows it: its name field, whether a random-feature count may
    follow it (``performer128``), and a line for the name's help. Its computation lives beside it in
    :mod:`fastdpt.models.attention` (``KERNELS``): a new kernel is one file registering both, and the name
    grammar, validation, the model and the study report's legend follow."""

    name: str
    takes_features: bool = False
    what: str = ""


ATTENTIONS: dict[str, AttentionKind] = {}


def register_attention(kind: AttentionKind) -> AttentionKind:
    ATTENTIONS[kind.name] = kind
    if "_name_re" in globals():  # (the built-in kernels register before the pattern is defined)
        _name_re.cache_clear()
    return kind


register_attention(AttentionKind("softmax", what="exact, through scaled_dot_product_attention"))
register_attention(AttentionKind("performer", takes_features=True, what="FAVOR+ on the same qkv; performer<M>: M random features"))
EMBED_DIM = 768
MAX_INPUT_SIDE = 2048  # network input side; the official KITTI size is 352x1216
MAX_FEATURES = 1024  # decoder width; DPT's is 256
MAX_BLOCKS = 12
CONFIG_KEY = "fastdpt.config"  # metadata key that stamps the canonical name on every artefact
EXPORTED_SUFFIXES = (".onnx", ".xml")  # files exported by fastdpt: ONNX and OpenVINO IR
FINGERPRINT_KEY = "fastdpt.fingerprint"  # the saved config's fingerprint: an edited name no longer matches it


def fingerprint(name: str) -> str:
    """A checkpoint's config fingerprint: sha256 of the canonical name it was saved with (16 hex digits)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]

# Official metric heads: depth = 1 / max(scale * y + shift, 1e-8)
METRIC_HEADS = {
    "kitti": (0.00006016, 0.00579),
    "nyu": (0.000305, 0.1378),
}

# input normalisation: name -> (mean, std) per RGB channel, applied to [0, 1] images
NORMALIZATIONS = {
    "dpt": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes network input and the output becomes depth at the image's size.

    Args:
        input_size: network input (H, W); with ``keep_aspect`` the target of the "minimal" rule.
        keep_aspect: official ``Resize(keep_aspect_ratio=True, ensure_multiple_of=32,
            resize_method="minimal")``: the scale closer to 1 for both sides, sides rounded to
            multiples of ``multiple_of``.
        mean, std: per-channel normalisation of [0, 1] RGB.
        interpolation: resize into the network (the official pipeline: bicubic).
        output_interpolation: resize of the prediction back to the image (official: bicubic,
            align_corners=False).
    """

    input_size: tuple[int, int]
    keep_aspect: bool = False
    mean: tuple[float, float, float] = NORMALIZATIONS["dpt"][0]
    std: tuple[float, float, float] = NORMALIZATIONS["dpt"][1]
    interpolation: str = "bicubic"
    output_interpolation: str = "bicubic"
    multiple_of: int = 32

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of ``height x width`` is resized to before the network."""
        th, tw = self.input_size
        if not self.keep_aspect:
            return th, tw
        sh, sw = th / height, tw / width
        if abs(1 - sw) < abs(1 - sh):
            sh = sw
        else:
            sw = sh
        return _multiple_of(sh * height, self.multiple_of), _multiple_of(sw * width, self.multiple_of)


def _is_timm_cnn(backbone: str) -> bool:
    """``timm-<name>`` where <name> is a model timm knows (checked offline, in timm's registry)."""
    if not backbone.startswith("timm-") or not re.fullmatch(r"[a-z0-9_]+", backbone[5:]):
        return False
    import timm

    return timm.is_model(backbone[5:])


def _multiple_of(x: float, m: int) -> int:
    # np.round semantics (halves to even), as the official code
    return max(m, int(round(x / m)) * m)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a DPT-Hybrid variant.

    Args:
        backbone: convolutional stem. ``r50``: the ViT-Hybrid ResNetV2 (stages 3, 4, 9; conv hooks are
            stages 0 and 1). ``effb0``: timm EfficientNet-B0 (conv hooks are block groups 1 and 2;
            its 1280-channel 1/32 map is brought to 1/16 tokens by ConvTranspose2d(1280, 768, 2, 2)).
            ``timm-<name>``: any timm CNN through ``features_only`` (hooks at strides 4 and 8, tokens
            from its last map at stride 16 or 32), e.g. ``timm-mobilenetv3_large_100``.
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
        norm: input normalisation, a key of ``NORMALIZATIONS`` (``dpt``: mean = std = 0.5).
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
    norm: str = "dpt"

    def __post_init__(self) -> None:
        # normalise sequences to tuples so that configs built from lists compare and hash equal
        object.__setattr__(self, "hooks", tuple(int(h) for h in self.hooks))
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        if self.metric is not None:
            object.__setattr__(self, "metric", tuple(float(v) for v in self.metric))
        if self.backbone not in BACKBONES and not _is_timm_cnn(self.backbone):
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {list(BACKBONES)} or timm-<name> "
                              "for any timm CNN (e.g. timm-mobilenetv3_large_100, timm-resnet18)")
        if len(self.hooks) != 2 or not (0 <= self.hooks[0] < self.hooks[1] < MAX_BLOCKS):
            raise ConfigError(f"hooks must be two increasing block indices in 0..{MAX_BLOCKS - 1}, got {self.hooks}")
        if self.heads < 1 or EMBED_DIM % self.heads:
            raise ConfigError(f"heads must divide {EMBED_DIM}, got {self.heads}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"unknown attention {self.attention!r}; choose one of {tuple(ATTENTIONS)}")
        if self.performer_features is not None and (not ATTENTIONS[self.attention].takes_features
                                                     or self.performer_features < 1):
            raise ConfigError("performer_features (random features) must be a positive number and only goes with an "
                              "attention that takes them: " + ", ".join(n for n, k in ATTENTIONS.items() if k.takes_features))
        if not 2 <= self.features <= MAX_FEATURES:
            raise ConfigError(f"features must be in 2..{MAX_FEATURES}, got {self.features}")
        if self.performer_features is not None and self.performer_features > MAX_FEATURES * 4:
            raise ConfigError(f"performer features must be at most {MAX_FEATURES * 4}, got {self.performer_features}")
        if len(self.input_size) != 2 or any(s < 32 or s % 32 for s in self.input_size):
            raise ConfigError(f"input_size must be (H, W), multiples of 32, got {self.input_size}")
        if any(s > MAX_INPUT_SIDE for s in self.input_size):  # names come from files too: bound what they build
            raise ConfigError(f"input_size sides must be at most {MAX_INPUT_SIDE}, got {self.input_size[0]}x"
                              f"{self.input_size[1]} (DPT-Hybrid runs at 384 to 1216)")
        if self.metric is not None and (len(self.metric) != 2 or not all(math.isfinite(v) for v in self.metric)):
            raise ConfigError(f"metric must be (scale, shift) of finite numbers, got {self.metric}")
        if self.norm not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalisation {self.norm!r}; choose one of {list(NORMALIZATIONS)}")

    # -- derived -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks built and run (the blocks after the last hook are pruned)."""
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
    def preprocessing(self) -> Preprocessing:
        mean, std = NORMALIZATIONS[self.norm]
        return Preprocessing(self.input_size, self.keep_aspect, mean, std)

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
        norm = "" if self.norm == "dpt" else f".{self.norm}"
        h, w = self.input_size
        keep = "-keep" if self.keep_aspect else ""
        return (
            f"{self.backbone}.h{self.hooks[0]}-{self.hooks[1]}.heads{self.heads}.{attn}"
            f".f{self.features}{out}{norm}@{h}x{w}{keep}"
        )

    def replace(self, **changes) -> "ModelConfig":
        return replace(self, **changes)

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        """Parse a canonical name (not a preset alias; see :func:`fastdpt.presets.get_config` for both).
        ``heads``, the attention and ``f`` may be omitted and take their defaults."""
        m = _name_re().fullmatch(name.strip())
        if not m:
            raise ConfigError(f"{name!r} is neither a preset nor a variant name: {diagnose_name(name)}; "
                              "`fastdpt models` lists the presets")
        g = m.groupdict()
        metric = parse_metric_head(g["out"]) if g["out"] else None
        default = cls()
        return cls(
            backbone=g["backbone"],
            hooks=(int(g["h0"]), int(g["h1"])),
            heads=int(g["heads"]) if g["heads"] else default.heads,
            attention=g["attn"] or default.attention,
            performer_features=int(g["m"]) if g["m"] else None,
            features=int(g["f"]) if g["f"] else default.features,
            input_size=(int(g["H"]), int(g["W"])),
            keep_aspect=bool(g["keep"]),
            metric=metric,
            norm=g["norm"] or default.norm,
        )


def parse_metric_head(text: str | None) -> tuple[float, float] | None:
    """An output field as names and grids write it -> (scale, shift): ``kitti``, ``nyu`` (the official
    heads), ``m<scale>_<shift>``; ``None`` or ``relative``: no metric head (relative inverse depth)."""
    if text in (None, "relative"):
        return None
    if text in METRIC_HEADS:
        return METRIC_HEADS[text]
    m = re.fullmatch(rf"m({_FLOAT})_({_FLOAT})", str(text))
    if not m:
        raise ConfigError(f"an output is kitti, nyu, relative or m<scale>_<shift>, got {text!r}")
    return float(m[1]), float(m[2])


NAME_GRAMMAR = ("<backbone>.h<a>-<b>.heads<n>.<attention[M]>.f<F>[.<kitti|nyu|m<s>_<t>>][.imagenet]"
                "@<H>x<W>[-keep]")
_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _attention_pattern() -> str:
    """The attention field's alternatives, from the registry (longest first)."""
    return "|".join(re.escape(n) for n in sorted(ATTENTIONS, key=len, reverse=True))


@functools.lru_cache(maxsize=1)
def _name_re() -> re.Pattern:
    """The canonical-name pattern; rebuilt when an attention kernel is registered."""
    return re.compile(
        r"(?P<backbone>[a-z0-9_]+|timm-[a-z0-9_]+)\.h(?P<h0>\d+)-(?P<h1>\d+)(?:\.heads(?P<heads>\d+))?"
        rf"(?:\.(?P<attn>{_attention_pattern()})(?P<m>\d+)?)?(?:\.f(?P<f>\d+))?"
        rf"(?:\.(?P<out>kitti|nyu|m(?P<ms>{_FLOAT})_(?P<mt>{_FLOAT})))?"
        r"(?:\.(?P<norm>imagenet))?"
        r"@(?P<H>\d+)x(?P<W>\d+)(?P<keep>-keep)?"
    )


# -- saying which field of a name is wrong --------------------------------------------------------------
def _fields() -> list:
    """Optional fields after the hooks, in grammar order: (what, pattern)."""
    return [("heads<n>", re.compile(r"heads\d+")),
            ("|".join(ATTENTIONS) + "[M]", re.compile(rf"({_attention_pattern()})\d*")), *_FIELDS]


_FIELDS = [  # the fields after the attention
    ("f<features>", re.compile(r"f\d+")),
    ("kitti|nyu|m<scale>_<shift>", re.compile(rf"(kitti|nyu|m{_FLOAT}_{_FLOAT})")),
    ("imagenet", re.compile(r"imagenet")),
]


def diagnose_name(name: str) -> str:
    """Which field of a would-be canonical name is missing or wrong, in words."""
    name = name.strip()
    if "@" not in name:
        if "." not in name:
            return f"it has no fields (a variant name reads {NAME_GRAMMAR}, e.g. effb0.h0-1@192x640)"
        return "the network input size is missing (@<H>x<W> at the end, e.g. @192x640)"
    head, _, size = name.rpartition("@")
    if not re.fullmatch(r"\d+x\d+(-keep)?", size):
        return f"the input size {size!r} should be <H>x<W> or <H>x<W>-keep, e.g. 192x640"
    backbone, _, rest = head.partition(".")
    if backbone not in BACKBONES and not _is_timm_cnn(backbone):
        return f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)} or timm-<a timm CNN>"
    m = re.match(r"h\d+-\d+", rest)
    if not m:
        token = rest.split(".")[0] if rest else ""
        return f"the hook field after the backbone should be h<a>-<b> (e.g. h0-1), got {token!r}"
    pos, expected = m.end(), 0
    while pos < len(rest):
        if rest[pos] != ".":
            return f"unexpected {rest[pos:]!r} after {rest[:pos]!r}"
        fields_ = _fields()
        for i in range(expected, len(fields_)):
            fm = fields_[i][1].match(rest, pos + 1)
            if fm and (fm.end() == len(rest) or rest[fm.end()] == "."):
                pos, expected = fm.end(), i + 1
                break
        else:
            token = rest[pos + 1:].split(".")[0]
            allowed = ", ".join(w for w, _ in fields_[expected:]) or "nothing more"
            return f"unknown or misplaced field {token!r} (after {rest[:pos]!r} come, in order: {allowed})"
    return "its fields are in order but a value is out of range"
