"""Multi-head self-attention over one shared qkv projection: exact softmax or FAVOR+ (Performer).

Both kernels use the same ``qkv`` (dim -> 3 dim) and ``proj`` (dim -> dim) linear layers with the
key names of timm / the official DPT checkpoints, so official weights warm-start either kernel
and the number of heads changes no parameter count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_orthogonal_matrix(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """``rows x cols`` block-orthogonal Gaussian matrix (FAVOR+ "ORF").

    Each block of ``cols`` rows is the Q factor of a square Gaussian matrix; every row is then
    rescaled by the norm of a fresh Gaussian vector so that rows are marginally Gaussian.
    """
    blocks = []
    for _ in range(math.ceil(rows / cols)):
        q, _ = torch.linalg.qr(torch.randn(cols, cols, generator=generator, dtype=torch.float64, device="cpu"))
        blocks.append(q.T)
    w = torch.cat(blocks)[:rows]
    norms = torch.randn(rows, cols, generator=generator, dtype=torch.float64, device="cpu").norm(dim=1)
    return (norms[:, None] * w).float()


def favor_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool, eps: float = 1e-4) -> torch.Tensor:
    """Positive random features phi(x) of the softmax kernel, (..., N, d) -> (..., N, m).

    phi(x) = m^-1/2 (exp(W x' - |x'|^2 / 2 - c) + eps), x' = x d^-1/4, with a detached stabiliser c:
    the row max for queries (cancels in the normalisation) and the max over all keys of a head.
    """
    d = x.shape[-1]
    m = projection.shape[0]
    x = x * d**-0.25
    wx = x @ projection.to(x.dtype).T
    sq = 0.5 * (x * x).sum(-1, keepdim=True)
    if is_query:
        c = wx.amax(dim=-1, keepdim=True)
    else:
        c = wx.amax(dim=(-1, -2), keepdim=True)
    return m**-0.5 * (torch.exp(wx - sq - c.detach()) + eps)


def favor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Non-causal FAVOR+: D^-1 phi(Q) (phi(K)^T V), D = phi(Q) (phi(K)^T 1). Inputs (B, H, N, d)."""
    qf = favor_features(q, projection, is_query=True)
    kf = favor_features(k, projection, is_query=False)
    kv = kf.transpose(-2, -1) @ v  # (B, H, m, d)
    denom = qf @ kf.sum(dim=-2).unsqueeze(-1)  # (B, H, N, 1)
    return (qf @ kv) / denom


class Kernel:
    """How one attention kernel turns q, k, v (B, heads, tokens, head width) into its output. ``setup``
    gives the :class:`Attention` module what the kernel keeps (buffers, under names that are part of the
    state dict); ``__call__`` computes. Registered under the name its :class:`fastdpt.config.AttentionKind`
    has, with :func:`register_kernel`."""

    name = "?"

    def setup(self, attn: "Attention", nb_features: int | None, seed: int, device) -> None:
        pass

    def __call__(self, attn: "Attention", q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


KERNELS: dict[str, Kernel] = {}


def register_kernel(cls: type[Kernel]) -> type[Kernel]:
    KERNELS[cls.name] = cls()
    return cls


@register_kernel
class Softmax(Kernel):
    """Exact attention through PyTorch's ``scaled_dot_product_attention``."""

    name = "softmax"

    def __call__(self, attn, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


@register_kernel
class Performer(Kernel):
    """FAVOR+: positive orthogonal random features (a seeded ``projection`` buffer, m x head width)."""

    name = "performer"

    def setup(self, attn, nb_features, seed, device):
        d = attn.head_dim
        m = nb_features or max(1, int(d * math.log(d)) if d > 1 else 1)
        g = torch.Generator(device="cpu").manual_seed(seed)
        proj = gaussian_orthogonal_matrix(m, d, g)
        if device is not None:
            proj = proj.to(device)
        attn.register_buffer("projection", proj)

    def __call__(self, attn, q, k, v):  # exp() of random features: float32 whatever the weights' precision
        return favor_attention(q.float(), k.float(), v.float(), attn.projection.float()).to(q.dtype)


class Attention(nn.Module):
    """Replaces the ``attn`` of a timm ``Block``; same parameter names as timm's ``Attention``.

    Args:
        dim: token width.
        num_heads: heads; ``dim`` must be divisible by it.
        kernel: a registered kernel (:data:`KERNELS`): ``softmax``, ``performer`` ...
        nb_features: Performer random features per head (``None``: int(d ln d)).
        seed: seeds the Performer projection buffer (no global RNG is touched).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 12,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        kernel: str = "softmax",
        nb_features: int | None = None,
        seed: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel = kernel
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, device=device, dtype=dtype)
        if kernel not in KERNELS:
            raise ValueError(f"unknown attention kernel {kernel!r}; registered: {', '.join(KERNELS)}")
        KERNELS[kernel].setup(self, nb_features, seed, device)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        # timm's Block passes these; DPT never masks
        if attn_mask is not None or is_causal:
            raise ValueError("fastdpt Attention is bidirectional and unmasked")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = KERNELS[self.kernel](self, q, k, v)
        # heads x head width: the token width, or less in a model whose heads were pruned
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
