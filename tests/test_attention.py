import math

import pytest
import torch

from fastdpt.config import ModelConfig
from fastdpt.models import DPT
from fastdpt.models.attention import Attention, favor_attention, gaussian_orthogonal_matrix


def reference_attention(x, attn):
    """Multi-head softmax attention written out from the formula."""
    b, n, c = x.shape
    h, d = attn.num_heads, c // attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(c, dim=-1)
    q, k, v = (t.reshape(b, n, h, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, n, c)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("heads", [1, 12, 24])
def test_softmax_attention_matches_formula(heads):
    attn = Attention(96 if heads != 24 else 96, num_heads=heads)
    x = torch.randn(2, 17, 96)
    torch.testing.assert_close(attn(x), reference_attention(x, attn), rtol=1e-5, atol=1e-5)


def _exact(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def test_favor_approaches_softmax_as_features_grow():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g) * 0.5 for _ in range(3))
    exact = _exact(q, k, v)
    errors = {}
    for m in (8, 64, 512, 8192):
        errs = []
        for seed in range(4):
            w = gaussian_orthogonal_matrix(m, 16, torch.Generator().manual_seed(seed))
            approx = favor_attention(q, k, v, w)
            errs.append(((approx - exact).norm() / exact.norm()).item())
        errors[m] = sum(errs) / len(errs)
    assert errors[8] > errors[64] > errors[512] > errors[8192], errors
    assert errors[8192] < 0.05, errors


def test_orthogonal_blocks_and_seeding():
    w = gaussian_orthogonal_matrix(40, 16, torch.Generator().manual_seed(3))
    assert w.shape == (40, 16)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    same = gaussian_orthogonal_matrix(40, 16, torch.Generator().manual_seed(3))
    assert torch.equal(w, same)
    a = Attention(64, 4, kernel="performer", seed=5)
    b = Attention(64, 4, kernel="performer", seed=5)
    assert torch.equal(a.projection, b.projection) and a.projection.shape == (int(16 * math.log(16)), 16)


def test_heads_and_kernel_change_no_parameter_count():
    counts = set()
    for heads in (1, 12, 24):
        for attention in ("softmax", "performer"):
            m = DPT(ModelConfig(hooks=(0, 1), heads=heads, attention=attention, features=32))
            counts.add(sum(p.numel() for p in m.parameters()))
    assert len(counts) == 1
    perf = DPT(ModelConfig(hooks=(0, 1), attention="performer", features=32))
    assert "encoder.blocks.0.attn.projection" in perf.state_dict()  # a buffer, saved with the model
