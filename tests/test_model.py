import threading

import pytest
import torch

from conftest import TINY, TINY_EFF
from fastdpt.config import ModelConfig
from fastdpt.models import DPT
from fastdpt.weights import warm_start


@pytest.mark.parametrize("cfg", [TINY, TINY_EFF, TINY.replace(attention="performer", heads=24)])
@pytest.mark.parametrize("size", [(64, 96), (96, 64), (128, 160)])
def test_any_multiple_of_32_and_batch(cfg, size):
    m = DPT(cfg).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, *size))
    assert y.shape == (2, *size) and torch.isfinite(y).all()


def test_rejects_sizes_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        DPT(TINY)(torch.randn(1, 3, 70, 96))


def test_intermediate_shapes_match_reference_table():
    m = DPT(ModelConfig(hooks=(0, 1), features=32)).eval()
    with torch.no_grad():
        f1, f2, t3, t4, grid = m.encoder(torch.randn(1, 3, 192, 640))
    assert f1.shape == (1, 256, 48, 160) and f2.shape == (1, 512, 24, 80)
    assert t3.shape == (1, 481, 768) and grid == (12, 40)
    e = DPT(ModelConfig(backbone="effb0", hooks=(0, 1), features=32)).eval()
    with torch.no_grad():
        f1, f2, t3, _, grid = e.encoder(torch.randn(1, 3, 192, 640))
    assert f1.shape == (1, 24, 48, 160) and f2.shape == (1, 40, 24, 80) and t3.shape == (1, 481, 768)


def test_pruned_blocks_are_not_built():
    full = DPT(ModelConfig(hooks=(2, 11), features=32))
    pruned = DPT(ModelConfig(hooks=(2, 5), features=32))
    assert len(full.encoder.blocks) == 12 and len(pruned.encoder.blocks) == 6
    block = sum(p.numel() for p in full.encoder.blocks[0].parameters())
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(full) - n(pruned) == 6 * block
    assert not any(k.startswith("encoder.blocks.6.") for k in pruned.state_dict())


def test_pruned_hook_outputs_equal_unpruned_model():
    full = DPT(ModelConfig(hooks=(2, 11), features=32)).eval()
    pruned = DPT(ModelConfig(hooks=(2, 5), features=32)).eval()
    report = warm_start(pruned, full.state_dict())
    assert not report.new and not report.mismatched
    assert {k.split(".")[2] for k in report.ignored} == {str(i) for i in range(6, 12)}
    seen = {}
    handles = [full.encoder.blocks[i].register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, out))
               for i in (2, 5)]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        full(x)
        f1, f2, t3, t4, _ = pruned.encoder(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(t3, seen[2], rtol=0, atol=0)
    torch.testing.assert_close(t4, seen[5], rtol=0, atol=0)


def test_metric_head_formula():
    rel = DPT(TINY).eval()
    scale, shift = 0.02, 0.1
    met = DPT(TINY.replace(metric=(scale, shift))).eval()
    met.load_state_dict(rel.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y, d = rel(x), met(x)
    torch.testing.assert_close(d, 1.0 / torch.clamp(scale * y + shift, min=1e-8))


def test_two_models_in_threads_do_not_interfere():
    a, b = DPT(TINY).eval(), DPT(TINY.replace(hooks=(0, 2))).eval()
    xa, xb = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref_a, ref_b = a(xa), b(xb)
    results, errors = {}, []

    def run(key, model, x):
        try:
            with torch.no_grad():
                for i in range(3):
                    results[(key, i)] = model(x)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=("a", a, xa)), threading.Thread(target=run, args=("b", b, xb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(3):
        assert torch.equal(results[("a", i)], ref_a) and torch.equal(results[("b", i)], ref_b)
