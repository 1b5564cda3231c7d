"""Pruned shapes: what makes a structurally pruned network differ from its canonical variant.

A pruned model (fewer attention heads, MLP or decoder channels) can no longer be described by its
canonical name alone. Its *structure* is a small JSON-able dict stored next to the name in the
checkpoint's metadata::

    {"heads": {"3": 6}, "layers": {"encoder.blocks.3.mlp.fc1": [2048, 768], ...}}

``heads``: attention heads left in a block (head width unchanged); ``layers``: ``[out, in]`` of every
Linear / Conv2d whose size differs from the variant's. :func:`apply_structure` rebuilds exactly that
network from the canonical variant, so a strict key-for-key load then checks every tensor's shape.
Pruning only ever shrinks: a structure that grows a layer, names a module the variant lacks or
leaves a block without heads is refused.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from ..errors import WeightsError
from .attention import Attention

STRUCTURE_KEY = "fastdpt.structure"  # checkpoint metadata key holding the JSON structure
MAX_STRUCTURE_BYTES = 1 << 20


def _prunable(m: nn.Module) -> bool:
    return type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1)


def _shape(m: nn.Module) -> list[int]:
    w = m.weight
    return [int(w.shape[0]), int(w.shape[1])]


def base_model(model: nn.Module) -> nn.Module:
    """The canonical variant of ``model``, built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return type(model)(model.config)


def structure_of(model: nn.Module) -> dict:
    """The model's structure against its canonical variant; ``{}`` for an unpruned model."""
    base = dict(base_model(model).named_modules())
    heads, layers = {}, {}
    for name, m in model.named_modules():
        b = base.get(name)
        if isinstance(m, Attention) and b is not None and m.num_heads != b.num_heads:
            heads[name.split(".")[2]] = int(m.num_heads)
        if _prunable(m) and b is not None and _shape(m) != _shape(b):
            layers[name] = _shape(m)
    return {"heads": heads, "layers": layers} if heads or layers else {}


def dump_structure(structure: dict) -> str:
    """The structure as the compact JSON text stored in metadata (checkpoints, ONNX, OpenVINO IR);
    :func:`parse_structure` reads it back."""
    return json.dumps(structure, sort_keys=True, separators=(",", ":"))


def parse_structure(text: str | None, source: str = "checkpoint") -> dict:
    """The structure stored as JSON text (metadata); ``{}`` when there is none. Malformed text is one
    :class:`WeightsError`."""
    if not text:
        return {}
    if len(text) > MAX_STRUCTURE_BYTES:
        raise WeightsError(f"{source}: its pruned structure is {len(text)} bytes, more than any DPT variant needs")
    try:
        s = json.loads(text)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{source}: its pruned structure is not valid JSON ({e.msg})") from None
    if not isinstance(s, dict) or set(s) - {"heads", "layers"}:
        raise WeightsError(f"{source}: its pruned structure is not of the fastdpt layout (keys heads, layers)")
    return s


def apply_structure(model: nn.Module, structure: dict, source: str = "checkpoint") -> nn.Module:
    """Shrink ``model`` (a canonical variant) in place to ``structure``; returns it.

    Layers named in the structure are replaced by layers of the stored size (their weights are
    placeholders until a state dict is loaded). Anything that does not fit the variant is a
    :class:`WeightsError` naming it.
    """
    if not structure:
        return model
    modules = dict(model.named_modules())
    blocks = model.encoder.blocks
    for key, n in (structure.get("heads") or {}).items():
        if not (str(key).isdigit() and int(key) < len(blocks)):
            raise WeightsError(f"{source}: pruned structure names block {key!r}; {model.config.name} has "
                               f"{len(blocks)} blocks")
        attn = blocks[int(key)].attn
        if not (isinstance(n, int) and 1 <= n <= attn.num_heads):
            raise WeightsError(f"{source}: block {key} keeps {n!r} heads; it must keep 1..{attn.num_heads}")
        attn.num_heads = n
    for name, shape in (structure.get("layers") or {}).items():
        m = modules.get(name)
        if m is None or not _prunable(m):
            raise WeightsError(f"{source}: pruned structure names {name!r}, not a prunable layer of "
                               f"{model.config.name}")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) for v in shape)
                and all(1 <= v <= b for v, b in zip(shape, _shape(m)))):
            raise WeightsError(f"{source}: {name} has the pruned shape {shape!r}; it must be [out, in] with "
                               f"1 <= out <= {_shape(m)[0]}, 1 <= in <= {_shape(m)[1]}")
        out_c, in_c = shape
        if isinstance(m, nn.Linear):
            new = nn.Linear(in_c, out_c, bias=m.bias is not None)
        else:
            new = nn.Conv2d(in_c, out_c, m.kernel_size, m.stride, m.padding, m.dilation, bias=m.bias is not None,
                            padding_mode=m.padding_mode)
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent] if parent else model, leaf, new)
    for blk in blocks:  # the heads left must fill the shrunken projections exactly
        attn = blk.attn
        if attn.qkv.out_features != 3 * attn.num_heads * attn.head_dim or \
                attn.proj.in_features != attn.num_heads * attn.head_dim:
            raise WeightsError(f"{source}: pruned structure leaves {attn.num_heads} heads of width {attn.head_dim} "
                               f"but qkv {attn.qkv.out_features} / proj {attn.proj.in_features} channels")
    model.structure = structure_of(model)
    return model
