"""Structured pruning with Torch-Pruning: attention heads, MLP hidden channels, decoder channels.

What is removed, and how it is found:

- **heads** (ratio r): in every transformer block, the ``round(r * heads)`` least important heads;
  their rows of ``qkv`` (query, key and value) and their columns of ``proj`` are cut out with
  Torch-Pruning's layer pruners. Head width is unchanged, so a Performer's random features still fit.
- **mlp** (ratio r): in every block, the least important hidden channels of ``fc1`` -> ``fc2``.
- **decoder** (ratio r): the decoder's coupled channel groups - the fusion path's shared ``features``
  channels (every fusion block, the ``layer_rn`` outputs and the head's input are tied by the residual
  additions), each residual unit's inner channels, the reassemble projections and the head's first
  convolution. Torch-Pruning's dependency graph finds what is tied to what, so nothing is cut on one
  side of an addition and kept on the other.

The token width (768: the residual stream, layer norms and position embedding) and the CNN are never
touched. Channel counts kept are rounded to multiples of ``ROUND_TO`` (SIMD widths), never below it.

Importance: ``magnitude`` (L2 norm of every weight a channel or head owns, summed over its coupled
layers) or ``taylor`` (first order: |w * dL/dw| summed the same way; the gradient comes from a few
batches the caller passes, with the loss against the model's own unpruned output when no labels are
given).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import CompressError, ConfigError
from ..models.structure import structure_of

ROUND_TO = 8
PARTS = ("heads", "mlp", "decoder")
IMPORTANCE = ("magnitude", "taylor")


def _torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:
        raise CompressError("structured pruning needs Torch-Pruning: pip install -e '.[compress]'") from None
    return tp


@dataclass(frozen=True)
class PruneSpec:
    """Fractions removed from each part (0 leaves it alone) and how importance is measured."""

    heads: float = 0.0
    mlp: float = 0.0
    decoder: float = 0.0
    importance: str = "magnitude"

    def __post_init__(self) -> None:
        for part in PARTS:
            r = getattr(self, part)
            if not (isinstance(r, (int, float)) and (r == 0 or 0 < r < 1)):
                raise ConfigError(f"pruning ratio {part}={r!r} must be in (0, 1) (a fraction removed)")
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"unknown importance {self.importance!r}: choose {' or '.join(IMPORTANCE)}")

    @classmethod
    def parse(cls, text: str, importance: str = "magnitude") -> "PruneSpec":
        """``"heads=0.5,mlp=0.3,decoder=0.25"`` (any subset) -> PruneSpec."""
        ratios = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            part, eq, value = item.partition("=")
            part = part.strip()
            if not eq or part not in PARTS:
                raise ConfigError(f"--prune takes PART=RATIO items with PART one of {', '.join(PARTS)}; got {item!r}")
            if part in ratios:
                raise ConfigError(f"--prune names {part} twice")
            try:
                ratios[part] = float(value)
            except ValueError:
                raise ConfigError(f"--prune {part}: {value!r} is not a number") from None
        if not ratios:
            raise ConfigError("--prune needs at least one PART=RATIO (heads, mlp, decoder)")
        if any(r == 0 for r in ratios.values()):  # the dataclass takes 0 as "not pruned"; a user's 0 is a mistake
            raise ConfigError(f"pruning ratios must be in (0, 1) (a fraction removed), got {text!r}")
        return cls(**ratios, importance=importance)

    def label(self) -> str:
        """Short text for names and tables: ``heads0.5+mlp0.3``."""
        return "+".join(f"{p}{getattr(self, p):g}" for p in PARTS if getattr(self, p)) or "none"

    def as_dict(self) -> dict:
        return asdict(self)


def _kept(n: int, ratio: float) -> int:
    """Channels kept of ``n`` when ``ratio`` of them go: a multiple of ROUND_TO, at least ROUND_TO."""
    if n <= ROUND_TO:
        return n
    return max(ROUND_TO, min(n, int(round(n * (1 - ratio) / ROUND_TO)) * ROUND_TO))


def heads_removed(heads: int, ratio: float) -> int:
    return int(round(heads * ratio))


def check_spec(model: nn.Module, spec: PruneSpec) -> None:
    """Refuse a spec that cannot be applied to ``model`` (one line naming why)."""
    if spec.heads:
        for i, blk in enumerate(model.encoder.blocks):
            n = blk.attn.num_heads
            if heads_removed(n, spec.heads) >= n:
                raise ConfigError(f"heads={spec.heads:g} would remove every head of block {i} ({n} heads): "
                                  f"use a ratio below {(n - 0.5) / n:.2f}")


def _head_importance(attn, importance: str) -> torch.Tensor:
    """One score per head: the summed |w|^2 (magnitude) or |w * grad| (taylor) of its qkv rows and proj columns."""
    h, d, dim = attn.num_heads, attn.head_dim, attn.qkv.in_features

    def score(p: torch.Tensor | None) -> torch.Tensor | None:
        if p is None:
            return None
        if importance == "magnitude":
            return p.detach().float() ** 2
        if p.grad is None:
            raise CompressError("taylor importance needs gradients: pass batches to prune()")
        return (p.detach().float() * p.grad.float()).abs()

    qkv_w = score(attn.qkv.weight).reshape(3, h, d, dim).sum(dim=(0, 2, 3))
    proj_w = score(attn.proj.weight).reshape(-1, h, d).sum(dim=(0, 2))
    total = qkv_w + proj_w
    if attn.qkv.bias is not None:
        total = total + score(attn.qkv.bias).reshape(3, h, d).sum(dim=(0, 2))
    return total


def _prune_heads(model: nn.Module, ratio: float, importance: str) -> None:
    tp = _torch_pruning()
    for blk in model.encoder.blocks:
        attn = blk.attn
        h, d, dim = attn.num_heads, attn.head_dim, attn.qkv.in_features
        k = heads_removed(h, ratio)
        if k == 0:
            continue
        gone = torch.argsort(_head_importance(attn, importance))[:k].tolist()
        cols = [g * d + j for g in gone for j in range(d)]
        rows = [part * h * d + c for part in range(3) for c in cols]  # q, k and v of each head
        tp.prune_linear_out_channels(attn.qkv, sorted(rows))
        tp.prune_linear_in_channels(attn.proj, sorted(cols))
        attn.num_heads = h - k
        assert attn.qkv.out_features == 3 * attn.num_heads * d and dim == attn.qkv.in_features


def _importance(tp, importance: str):
    return (tp.importance.GroupMagnitudeImportance(p=2) if importance == "magnitude"
            else tp.importance.GroupTaylorImportance())


def _prune_group(dg, imp, group, layer: nn.Module, fn, n: int, ratio: float) -> None:
    """Remove the ``ratio`` least important of the ``n`` channels of the group rooted at ``layer``."""
    k = n - _kept(n, ratio)
    if k <= 0:
        return
    scores = imp(group)
    if scores is None:
        raise CompressError(f"no importance for the channels of {type(layer).__name__} {n}: "
                            "taylor importance needs gradients of the layer")
    gone = sorted(torch.argsort(scores)[:k].tolist())
    group = dg.get_pruning_group(layer, fn, idxs=gone)
    if not dg.check_pruning_group(group):
        raise CompressError(f"Torch-Pruning refused a channel group of {type(layer).__name__} (it would leave "
                            "a layer without channels)")
    group.prune()


def _graph(tp, model: nn.Module, example: torch.Tensor):
    with torch.inference_mode(False), torch.enable_grad():  # the graph is traced through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def _prune_mlp(model: nn.Module, example: torch.Tensor, ratio: float, importance: str) -> None:
    tp = _torch_pruning()
    dg, imp = _graph(tp, model, example), _importance(tp, importance)
    for blk in model.encoder.blocks:  # fc1's outputs go only through GELU into fc2: one group per block
        fc1 = blk.mlp.fc1
        n = fc1.out_features
        _prune_group(dg, imp, dg.get_pruning_group(fc1, tp.prune_linear_out_channels, list(range(n))),
                     fc1, tp.prune_linear_out_channels, n, ratio)


def _prune_decoder(model: nn.Module, example: torch.Tensor, ratio: float, importance: str) -> None:
    """Every channel group of reassemble -> decoder -> head, as the dependency graph finds them: the
    fusion path's channels are tied into several groups by the residual additions (each fusion block's
    output convolution starts a new one)."""
    tp = _torch_pruning()
    dg, imp = _graph(tp, model, example), _importance(tp, importance)
    ignored = [m for m in model.encoder.modules()] + [model.head[-2]]  # the depth output keeps its channel
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target.module
        fn = group[0].dep.handler
        n = root.out_features if isinstance(root, nn.Linear) else root.out_channels
        _prune_group(dg, imp, group, root, fn, n, ratio)


def _gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    """Accumulate dL/dw over ``batches`` of (input, target); no target: the model's own output (detached)
    under a small perturbation of the input, so the gradient is not zero at the start."""
    model.zero_grad(set_to_none=True)
    n = 0
    for x, target in batches:
        with torch.inference_mode(False), torch.enable_grad():
            if target is None:
                with torch.no_grad():
                    target = model(x)
                x = x + 0.05 * torch.randn_like(x)
            out = model(x)
            loss = torch.nn.functional.mse_loss(out, target)
            loss.backward()
        n += 1
    if n == 0:
        raise CompressError("taylor importance needs at least one batch of frames")


def prune(model: nn.Module, spec: PruneSpec, example: torch.Tensor,
          batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]] | Callable[[], Iterable] | None = None) -> dict:
    """Prune ``model`` in place by ``spec``; returns its new structure (:mod:`fastdpt.models.structure`).

    ``example``: one normalised network input (B, 3, H, W) to trace the dependency graph.
    ``batches``: (input, target or None) pairs for the Taylor importance (ignored for magnitude).
    """
    check_spec(model, spec)
    was_training = model.training
    model.eval()
    if spec.importance == "taylor":
        _gradients(model, batches() if callable(batches) else (batches or ()))
    if spec.mlp:
        _prune_mlp(model, example, spec.mlp, spec.importance)
    if spec.decoder:
        _prune_decoder(model, example, spec.decoder, spec.importance)
    if spec.heads:
        _prune_heads(model, spec.heads, spec.importance)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    model.structure = structure_of(model)
    return model.structure
