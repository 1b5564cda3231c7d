import json
import os

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import fastdpt
from conftest import TINY
from fastdpt.cli import app
from fastdpt.predict import Predictor
from fastdpt.errors import StreamError
from fastdpt.stream import ImageSequence, VideoSink, VideoSource, run_stream
from fastdpt.weights import save_checkpoint

runner = CliRunner()


def make_video(path, n=12, size=(48, 80), fps=10.0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for _ in range(n):
        w.write(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    w.release()
    return path


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n, cap.get(cv2.CAP_PROP_FPS)


def test_one_output_frame_per_input_frame(tmp_path):
    video = make_video(tmp_path / "in.mp4")
    pred = Predictor(fastdpt.create_model(TINY))
    stats = run_stream(VideoSource(str(video)), pred, VideoSink(tmp_path / "out.mp4", 10.0))
    assert stats.frames_in == stats.frames_out == stats.inferred == 12 and stats.dropped == 0
    n, fps = count_frames(tmp_path / "out.mp4")
    assert n == 12 and fps == pytest.approx(10.0)
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 160  # side by side
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.mp4").stat().st_mode & 0o777 == 0o666 & ~umask  # as images are, not private
    s = stats.summary()
    assert s["latency_ms_p50"] <= s["latency_ms_p90"] <= s["latency_ms_p99"]


def test_realtime_drops_frames_and_keeps_the_rate(tmp_path):
    video = make_video(tmp_path / "in.mp4", n=20, fps=200.0)  # far faster than the model
    pred = Predictor(fastdpt.create_model(TINY))
    stats = run_stream(VideoSource(str(video)), pred, VideoSink(tmp_path / "out.mp4", 200.0, side_by_side=False),
                       realtime=True)
    assert stats.dropped > 0 and stats.inferred + stats.dropped == 20
    assert stats.frames_out == 20  # dropped frames are shown with the latest depth
    assert count_frames(tmp_path / "out.mp4")[0] == 20


def test_bad_videos_give_clear_errors(tmp_path):
    with pytest.raises(StreamError, match="not found"):
        VideoSource(str(tmp_path / "none.mp4"))
    for name in ("notes.txt", "notes.mp4"):  # FFmpeg would render a text file as frames of text
        (tmp_path / name).write_text("Good morning, this is not a video.\n" * 200)
        with pytest.raises(StreamError, match="not a video"):
            VideoSource(str(tmp_path / name))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(StreamError):
        VideoSource(str(empty))
    good = make_video(tmp_path / "good.mp4", n=30)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(StreamError):
        VideoSource(str(truncated))


def test_cli_stream_folder_with_stats(tmp_path):
    frames = tmp_path / "drive"
    frames.mkdir()
    for i in range(5):
        cv2.imwrite(str(frames / f"{i:010d}.png"), np.full((40, 64, 3), i * 40, np.uint8))
    ckpt = save_checkpoint(fastdpt.create_model(TINY), tmp_path / "m.safetensors")
    r = runner.invoke(app, ["stream", str(frames), "--fps", "10", "--model", str(ckpt), "-o", str(tmp_path / "o.mp4"),
                            "--stats", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames_in"] == s["frames_out"] == 5 and s["source_fps"] == 10.0
    assert count_frames(tmp_path / "o.mp4")[0] == 5
    assert len(ImageSequence(frames).files) == 5
    r = runner.invoke(app, ["video", str(tmp_path / "nope.mp4"), "--model", str(ckpt)])
    assert r.exit_code == 2 and "video not found" in r.output


def test_a_stage_and_a_sink_of_your_own_plug_into_the_pipeline(tmp_path):
    # a filter is one Stage subclass, a second output one Sink subclass: the filter runs after the
    # stabiliser and before the colour map, and every sink gets every frame in source order
    import torch

    from fastdpt.stream import Sink, Stage
    from fastdpt.viz import colorize

    frames = tmp_path / "f"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        cv2.imwrite(str(frames / f"{i:03d}.png"), rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))

    class Ramp(Stage):  # a filter: adds 0..10 m across the width
        def __call__(self, batch):
            for f in batch:
                d = torch.as_tensor(f.depth)
                f.depth = d + torch.linspace(0, 10, d.shape[-1], device=d.device)

    class Collect(Sink):
        def __init__(self):
            self.seen, self.closed = [], None

        def write(self, frame):
            self.seen.append((frame.index, frame.depth.copy(), frame.vis.copy()))

        def close(self, failed):
            self.closed = failed

    pred = Predictor(fastdpt.create_model(TINY.replace(metric=(0.01, 0.0125))))  # depth that varies
    plain, ramped = Collect(), Collect()
    run_stream(ImageSequence(frames), pred, VideoSink(tmp_path / "a.mp4", 10.0), stabilize="scale", sinks=[plain])
    stats = run_stream(ImageSequence(frames), pred, VideoSink(tmp_path / "b.mp4", 10.0), stabilize="scale",
                       stages=[Ramp()], sinks=[ramped])
    assert [i for i, _, _ in ramped.seen] == list(range(6)) == [i for i, _, _ in plain.seen]
    assert stats.frames_out == 6 and plain.closed is False and ramped.closed is False
    ramp = np.linspace(0, 10, 80, dtype=np.float32)
    for (_, d0, v0), (_, d1, v1) in zip(plain.seen, ramped.seen):
        assert d1.dtype == np.float32 and np.allclose(d1, d0 + ramp, atol=1e-4)
        assert np.array_equal(v1, colorize(d1, "metric"))  # one colour path: of what the stages made
        assert not np.array_equal(v1, v0)
    assert count_frames(tmp_path / "b.mp4")[0] == 6
