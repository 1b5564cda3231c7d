"""What the GPU runtime is made of, checked where it can be on a CPU: colour maps on the device,
weights cast with float32 norms, the throughput mode's order and counts, H.264 output, and clean
refusals of the GPU-only options. The same paths on CUDA are in test_cuda.py."""

import cv2
import numpy as np
import pytest
import torch

import fastdpt
from conftest import TINY, TINY_EFF
from fastdpt.errors import ConfigError
from fastdpt.predict import Predictor
from fastdpt.runtime import cast_for_inference
from fastdpt.stream import ImageSequence, VideoSink, h264_available, run_stream
from fastdpt.viz import CMAPS, DeviceColorizer, HostColorizer, colorize, index_scale, lookup_table, normalized


def test_device_colour_maps_equal_the_numpy_ones():
    """The torch path (a GPU's) equals the NumPy one, run here on the CPU; so does what a CPU predictor
    colours with (the host path, faster there), for a batch and for one frame."""
    rng = np.random.default_rng(0)
    d = rng.uniform(0.5, 80, (3, 40, 60)).astype(np.float32)
    d[0, 0, 0], d[1, 1, 1], d[2] = np.inf, np.nan, 7.0  # a non-finite value, a hole, a flat frame
    for cmap in CMAPS:
        for kind in ("metric", "relative"):
            got = DeviceColorizer(cmap)(torch.from_numpy(d), kind).numpy()
            host = HostColorizer(cmap)(torch.from_numpy(d), kind).numpy()
            for b in range(3):
                np.testing.assert_array_equal(got[b], colorize(d[b], kind, cmap), err_msg=f"{cmap} {kind} {b}")
                np.testing.assert_array_equal(host[b], got[b], err_msg=f"host {cmap} {kind} {b}")
            np.testing.assert_array_equal(HostColorizer(cmap)(d[1], kind).numpy(), got[1])
            assert HostColorizer(cmap)(d[:0], kind).shape == DeviceColorizer(cmap)(torch.from_numpy(d[:0]), kind).shape
            lut = lookup_table(cmap)
            norm = np.nan_to_num(np.clip(normalized(d[0], kind) * index_scale(cmap), 0, 255))
            np.testing.assert_array_equal(colorize(d[0], kind, cmap), lut[norm.astype(np.uint8)])  # the table rule
            f64 = DeviceColorizer(cmap, dtype=torch.float64)(torch.from_numpy(d), kind).numpy()
            lut = DeviceColorizer(cmap).lut.numpy().astype(int)
            steps = np.abs(lut[1:] - lut[:-1]).max()  # float64 may take the neighbouring entry
            assert np.abs(f64.astype(int) - got.astype(int)).max() <= steps


def test_weights_cast_once_with_float32_norms():
    model = fastdpt.create_model(TINY_EFF).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        half = cast_for_inference(model, torch.bfloat16)
        got = half(x.to(torch.bfloat16))
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not touched
    norms = [m for m in half.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert half.encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert got.dtype == torch.float32  # the metric head converts in float32
    rel = ((got - ref).abs() / ref.abs().clamp_min(1e-6)).median()
    assert rel < 0.05, float(rel)


def test_gpu_only_options_are_refused_cleanly_on_a_cpu():
    model = fastdpt.create_model(TINY)
    from fastdpt.runtime import native_bf16

    cases = [("cudagraph", "fp32", "CUDA device"), ("torch", "tf32", "a GPU precision"), ("torch", "fp16", "a GPU precision")]
    if not native_bf16():  # bf16 runs on CPUs with AMX / AVX512-BF16
        cases.append(("torch", "bf16", "far slower"))
    for backend, precision, text in cases:
        with pytest.raises(ConfigError, match=text):
            Predictor(model, backend=backend, precision=precision)


def test_throughput_mode_keeps_order_and_counts(tmp_path):
    frames = tmp_path / "f"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        size = (40, 64) if i != 6 else (48, 72)  # one frame of another size splits a batch
        cv2.imwrite(str(frames / f"{i:04d}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    pred = Predictor(fastdpt.create_model(TINY).eval())
    got = {}
    for batch in (1, 4):
        seen = []
        stats = run_stream(ImageSequence(frames), pred, batch_size=batch,
                           on_output=lambda i, frame, out: seen.append((i, frame.shape, out.depth.copy())))
        assert stats.frames_in == stats.frames_out == stats.inferred == 11
        assert [i for i, _, _ in seen] == list(range(11))
        got[batch] = seen
    for (_, s1, d1), (_, s4, d4) in zip(got[1], got[4]):
        assert s1 == s4 and d1.shape == s1[:2]
        np.testing.assert_allclose(d4, d1, rtol=1e-5, atol=1e-6)
    # offline, the worker waits for a whole batch: fewer frames only where the size changes or the source
    # ends, however fast the decoder is (the first call is a batch too)
    sizes = []
    real = pred.predict_batch
    pred.predict_batch = lambda fs: sizes.append(len(fs)) or real(fs)
    run_stream(ImageSequence(frames), pred, batch_size=4)
    assert sizes == [4, 2, 1, 1, 3]


def test_offline_batches_on_openvino_build_the_throughput_model_alone(tmp_path):
    """`fastdpt video --batch 2` on OpenVINO: one model (the throughput one) converted and compiled, not a
    latency model for the first frame and the throughput one after (a second conversion made --batch 2
    slower than --batch 1 on short clips: 7.7 vs 10.2 FPS over 60 frames of the fast preset)."""
    from fastdpt.runtime import REGISTRY

    if REGISTRY["openvino"].missing("cpu"):
        pytest.skip("OpenVINO not installed")
    frames = tmp_path / "f"
    frames.mkdir()
    for i in range(5):
        cv2.imwrite(str(frames / f"{i:04d}.png"), np.full((40, 64, 3), 30 * i, np.uint8))
    pred = Predictor(fastdpt.create_model(TINY).eval(), backend="openvino", threads=2)
    compiled = []
    real = pred.backend._compile
    pred.backend._compile = lambda om, throughput=False: compiled.append(throughput) or real(om, throughput)
    try:
        stats = run_stream(ImageSequence(frames), pred, batch_size=2)
    finally:
        pred.close()
    assert stats.frames_out == 5 and compiled == [True]


@pytest.mark.skipif(not h264_available(), reason="PyAV with libx264 is not installed")
def test_videos_are_h264_when_pyav_is_there(tmp_path):
    import av

    frames = tmp_path / "f"
    frames.mkdir()
    for i in range(5):
        cv2.imwrite(str(frames / f"{i:04d}.png"), np.full((41, 63, 3), 40 * i, np.uint8))  # odd sides
    pred = Predictor(fastdpt.create_model(TINY).eval())
    for codec, name in (("auto", "h264"), ("mp4v", "mpeg4")):
        out = tmp_path / f"{codec}.mp4"
        run_stream(ImageSequence(frames), pred, VideoSink(out, 10.0, codec=codec))
        with av.open(str(out)) as c:
            assert c.streams.video[0].codec_context.name == name
            assert sum(1 for _ in c.decode(video=0)) == 5


def test_fastdpt_video_runs_openvino_frames_together_by_default_and_alone_when_asked(tmp_path):
    """Offline video on OpenVINO takes as many frames at a time as the backend runs together (2 threads:
    2), says so, and writes the same frames; --batch 1 and --realtime keep one frame at a time."""
    from typer.testing import CliRunner

    from fastdpt.cli import app
    from fastdpt.runtime import REGISTRY

    if REGISTRY["openvino"].missing("cpu"):
        pytest.skip("OpenVINO not installed")
    clip = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 40))
    for i in range(5):
        w.write(np.full((40, 64, 3), 40 * i, np.uint8))
    w.release()
    ckpt = tmp_path / "m.safetensors"
    fastdpt.save_checkpoint(fastdpt.create_model(TINY), ckpt)
    runner = CliRunner()
    for extra, together in (([], True), (["--batch", "1"], False), (["--realtime"], False)):
        out = tmp_path / f"out{len(extra)}{extra[:1]}.mp4"
        res = runner.invoke(app, ["video", str(clip), "-o", str(out), "-m", str(ckpt), "--backend", "openvino",
                                  "--threads", "2", *extra])
        assert res.exit_code == 0, res.output
        assert ("throughput mode: 2 frames at a time" in res.output) == together, res.output
        assert "5 frames out of 5" in res.output and out.is_file()
