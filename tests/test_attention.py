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


def test_an_attention_kernel_is_one_registration(monkeypatch):
    """A toy kernel (ELU+1 linear attention, written out here) registered in the test alone: the name grammar
    takes it and round-trips it, the model runs it (against the formula), the study's preset grid does not
    grow, and the report's legend gives it a marker of its own."""
    import torch.nn.functional as F

    from fastdpt import config as config_module
    from fastdpt.config import ATTENTIONS, AttentionKind
    from fastdpt.models import attention as attention_module
    from fastdpt.presets import list_models
    from fastdpt.study.report import _marker

    class Linear(attention_module.Kernel):
        name = "linear"

        def __call__(self, attn, q, k, v):
            q, k = F.elu(q) + 1, F.elu(k) + 1
            return (q @ (k.transpose(-2, -1) @ v)) / (q @ k.sum(-2, keepdim=True).transpose(-2, -1))

    monkeypatch.setitem(ATTENTIONS, "linear", AttentionKind("linear", what="ELU+1 linear attention"))
    monkeypatch.setitem(attention_module.KERNELS, "linear", Linear())
    config_module._name_re.cache_clear()
    try:
        cfg = ModelConfig.from_name("r50.h0-1.heads4.linear.f32@64x96")
        assert cfg.attention == "linear" and ModelConfig.from_name(cfg.name) == cfg
        with pytest.raises(Exception, match="random features"):
            ModelConfig.from_name("r50.h0-1.heads4.linear64.f32@64x96")  # it takes no feature count
        attn = Attention(64, 4, kernel="linear").eval()
        x = torch.randn(2, 10, 64)
        q, k, v = attn.qkv(x).reshape(2, 10, 3, 4, 16).permute(2, 0, 3, 1, 4)
        qf, kf = F.elu(q) + 1, F.elu(k) + 1
        weights = (qf @ kf.transpose(-2, -1))
        expected = attn.proj(((weights / weights.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(2, 10, 64))
        torch.testing.assert_close(attn(x), expected, rtol=1e-4, atol=1e-5)
        model = DPT(cfg).eval()
        with torch.no_grad():
            assert torch.isfinite(model(torch.randn(1, 3, 64, 96))).all()
        assert len(list_models("study")) == 72
        assert _marker("linear") not in (_marker("softmax"), _marker("performer"))
    finally:
        monkeypatch.undo()
        config_module._name_re.cache_clear()
    with pytest.raises(Exception, match="neither a preset nor a variant"):
        ModelConfig.from_name("r50.h0-1.heads4.linear.f32@64x96")
