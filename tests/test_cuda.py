"""The GPU runtime on a real CUDA device. Every test here skips without one (CI has none); run them on
a GPU machine with `python -m pytest -q tests/test_cuda.py` (benchmarks/gpu.py does, first)."""

import numpy as np
import pytest
import torch

import fastdpt
from conftest import TINY, TINY_EFF
from fastdpt.predict import Predictor
from fastdpt.stream import ImageSequence, run_stream
from fastdpt.transforms import Transforms
from fastdpt.viz import DeviceColorizer, colorize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def frames():
    from fastdpt.data.synthetic import sample_frames

    return sample_frames(3, (375, 1242))


def test_device_transforms_equal_the_cpu_ones(frames):
    cfg = fastdpt.get_config("fast-effb0-f64-192x640")
    cpu, gpu = Transforms(cfg, "cpu"), Transforms(cfg, "cuda")
    assert gpu.resize == "torch"
    for f in frames + frames:  # twice: the pinned staging buffers are reused
        a, b = cpu.preprocess(f), gpu.preprocess(f).cpu()
        assert (a - b).abs().max() < 3.3e-4
    y = torch.rand(2, 192, 640)
    torch.testing.assert_close(gpu.postprocess(y.cuda(), (375, 1242)).cpu(), cpu.postprocess(y, (375, 1242)),
                               rtol=1e-5, atol=1e-5)


def test_predictor_on_cuda_matches_the_cpu(frames):
    model = fastdpt.create_model(TINY_EFF).eval()
    ref = Predictor(model).predict(frames[0]).depth
    got = Predictor(model, device="cuda").predict(frames[0]).depth
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-3 * np.abs(ref).max())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_equal_eager(frames, precision):
    model = fastdpt.create_model(TINY_EFF).eval()
    eager = Predictor(model, device="cuda", precision=precision)
    graph = Predictor(model, device="cuda", backend="cudagraph", precision=precision)
    other = Predictor(fastdpt.create_model(TINY).eval(), device="cuda", backend="cudagraph")  # a second graph pool
    for f in frames:
        a, b = eager.predict(f).depth, graph.predict(f).depth
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * np.abs(a).max())
        other.predict(f)
    assert len(graph.backend.cached_shapes) == 1


def test_half_precision_stays_close_to_fp32(frames):
    model = fastdpt.create_model(TINY_EFF).eval()
    ref = Predictor(model, device="cuda").predict(frames[1]).depth
    for precision in ("bf16", "fp16"):
        got = Predictor(model, device="cuda", precision=precision).predict(frames[1]).depth
        assert np.median(np.abs(got - ref) / np.abs(ref)) < 0.02


def test_device_colour_maps_within_one_step():
    d = torch.rand(2, 64, 96, device="cuda") * 50 + 1
    got = DeviceColorizer("Spectral_r", "cuda")(d, "metric").cpu().numpy().astype(int)
    ref = np.stack([colorize(x, "metric") for x in d.cpu().numpy()]).astype(int)
    assert np.abs(got - ref).max() <= 40 and (got == ref).all(axis=-1).mean() > 0.99


def test_pipelined_stream_on_cuda_keeps_order(tmp_path):
    import cv2

    for i in range(9):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((60, 90, 3), 25 * i, np.uint8))
    pred = Predictor(fastdpt.create_model(TINY).eval(), device="cuda")
    seen = []
    stats = run_stream(ImageSequence(tmp_path), pred, batch_size=4, on_output=lambda i, f, o: seen.append(i))
    assert seen == list(range(9)) and stats.inferred == 9
