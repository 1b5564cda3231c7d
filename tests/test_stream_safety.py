"""Streams stop cleanly, keep what they wrote under an explicit partial name, count every frame that
was not as expected, and check their output before any work."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fastdpt
from conftest import TINY
from fastdpt.cli import app
from fastdpt.errors import StreamError
from fastdpt.predict import Predictor
from fastdpt.stream import ImageSequence, StreamInterrupted, VideoSink, VideoSource, run_stream
from fastdpt.weights import save_checkpoint

runner = CliRunner()


def frames_in(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def make_avi(path, n=40, size=(48, 80)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for _ in range(n):
        w.write(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    w.release()
    return path


def folder_of_frames(path, n=6, size=(40, 64)):
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(path / f"{i:010d}.png"), np.full((*size, 3), (30 * i) % 256, np.uint8))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(fastdpt.create_model(TINY), tmp_path_factory.mktemp("m") / "m.safetensors")


def test_interrupt_keeps_a_partial_video(tmp_path):
    frames = folder_of_frames(tmp_path / "f", n=20)
    sink = VideoSink(tmp_path / "out.mp4", 10.0)

    def ctrl_c_at_frame_5(stats):
        if stats.frames_out == 5:
            raise KeyboardInterrupt

    with pytest.raises(StreamInterrupted, match="interrupted after 5 frames") as e:
        run_stream(ImageSequence(frames), Predictor(fastdpt.create_model(TINY)), sink, on_frame=ctrl_c_at_frame_5)
    assert e.value.partial == tmp_path / "out.partial.mp4" and frames_in(e.value.partial) == 5
    assert not (tmp_path / "out.mp4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4"] == ["out.partial.mp4"]  # no temp file left


def test_ctrl_c_stops_the_cli_in_the_middle_and_keeps_a_partial_video(tmp_path, ckpt):
    frames = folder_of_frames(tmp_path / "f", n=400, size=(120, 200))
    out = tmp_path / "o.mp4"
    # as from a terminal: SIGINT at its default in the command, whatever this test process inherited (a
    # background job of a script starts with SIGINT ignored, and the command rightly keeps ignoring it)
    terminal = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    cmd = [sys.executable, "-c", terminal, "-m", "fastdpt.cli", "stream", str(frames), "--fps", "1000", "-m", str(ckpt),
           "-o", str(out), "--stats", str(tmp_path / "s.json"), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".o.") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)  # some frames are written
    assert proc.poll() is None, "the stream ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # say where it hangs: faulthandler prints every thread's stack on SIGABRT
        proc.send_signal(signal.SIGABRT)
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"the stream did not stop within 30 s of Ctrl-C; its threads then:\n{output[-6000:]}")
    assert proc.returncode == 130, output  # stopped (the 30 s above bound it; the frame count below shows it
    # stopped in the middle of 400 frames rather than running them out)
    partial = tmp_path / "o.partial.mp4"
    assert "stopped: interrupted after" in output and str(partial) in output, output
    s = json.loads((tmp_path / "s.json").read_text())
    assert 0 < s["frames_out"] < 400 and frames_in(partial) == s["frames_out"] and not out.exists(), \
        (s["frames_out"], frames_in(partial), output)


def test_truncated_video_is_reported_and_strict_fails(tmp_path, ckpt):
    good = make_avi(tmp_path / "good.avi")
    data = good.read_bytes()
    bad = tmp_path / "half.avi"
    bad.write_bytes(data[: len(data) // 2])
    stats = run_stream(VideoSource(str(bad)), Predictor(fastdpt.create_model(TINY)))
    assert stats.frames_out < 40 and stats.problems == {"truncated": 40 - stats.frames_out}
    assert "ends after" in stats.messages[0]
    r = runner.invoke(app, ["video", str(bad), "-m", str(ckpt)])
    assert r.exit_code == 0 and "truncated" in r.output
    r = runner.invoke(app, ["video", str(bad), "-m", str(ckpt), "--strict"])
    assert r.exit_code == 2 and "--strict" in r.output


def test_odd_frames_in_a_folder_are_counted_not_dropped_silently(tmp_path, ckpt):
    frames = folder_of_frames(tmp_path / "f", n=4)
    (frames / "0000000001.png").write_bytes(b"\x89PNG broken")  # unreadable
    Image.new("1", (6000, 5000)).save(frames / "0000000005.png")  # a small file declaring 30 MP
    cv2.imwrite(str(frames / "0000000006.png"), np.zeros((60, 90, 3), np.uint8))  # another size
    out = tmp_path / "o.mp4"
    r = runner.invoke(app, ["stream", str(frames), "-m", str(ckpt), "-o", str(out), "--stats", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["problems"] == {"unreadable": 1, "too_large": 1} and s["resized"] == 1
    assert s["frames_in"] == s["frames_out"] == 4 and frames_in(out) == 4
    assert "warning" in r.output and "unreadable" in r.output and "another size" in r.output
    r = runner.invoke(app, ["stream", str(frames), "-m", str(ckpt), "--strict"])
    assert r.exit_code == 2 and "cannot read image" in r.output


def test_output_is_checked_before_any_work(tmp_path, ckpt):
    video = make_avi(tmp_path / "in.avi", n=5)
    before = video.read_bytes()
    for args, text in [
        (["-o", str(video)], "is the input"),
        (["-o", str(tmp_path / "x.txt")], "must be a video file"),
        (["-o", str(tmp_path / "in.avi" / "o.mp4")], "is a file"),
    ]:
        r = runner.invoke(app, ["video", str(video), "-m", "no-such-model-because-it-is-never-loaded", *args])
        assert r.exit_code == 2 and text in r.output, (args, r.output)  # the model was never looked up
    assert video.read_bytes() == before
    (tmp_path / "o.mp4").write_bytes(b"keep me")
    r = runner.invoke(app, ["video", str(video), "-m", str(ckpt), "-o", str(tmp_path / "o.mp4")])
    assert r.exit_code == 2 and "--overwrite" in r.output and (tmp_path / "o.mp4").read_bytes() == b"keep me"
    r = runner.invoke(app, ["video", str(video), "-m", str(ckpt), "-o", str(tmp_path / "o.mp4"), "--overwrite"])
    assert r.exit_code == 0 and frames_in(tmp_path / "o.mp4") == 5
    with pytest.raises(StreamError, match="is the input"):
        run_stream(VideoSource(str(video)), Predictor(fastdpt.create_model(TINY)), VideoSink(video.with_suffix(".avi"), 10, overwrite=True))


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt in this process, as in a terminal, even when the test run was started
    with SIGINT ignored (a background job of a script); the previous disposition is restored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_a_packet_is_muxed_keeps_a_partial_that_decodes(tmp_path, ctrl_c_raises):
    # a Ctrl-C between encoding a frame and muxing its packets lost the first (key) packet: the
    # .partial.mp4 then decoded to 0 frames; a frame is now written whole or not at all
    pytest.importorskip("av")
    sink = VideoSink(tmp_path / "v.mp4", 10.0, side_by_side=False, codec="h264")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    sink.write(frame, frame)

    class InterruptOnFirstMux:  # Ctrl-C arrives just as the encoder's first packet is to be muxed
        def __init__(self, container):
            self.container, self.first = container, True

        def mux(self, packet):
            if self.first:
                self.first = False
                os.kill(os.getpid(), signal.SIGINT)
            self.container.mux(packet)

        def __getattr__(self, name):
            return getattr(self.container, name)

    sink.writer.container = InterruptOnFirstMux(sink.writer.container)
    with pytest.raises(KeyboardInterrupt):
        for _ in range(200):
            frame = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
            sink.write(frame, frame)
    kept = sink.close(partial=True)
    assert kept == tmp_path / "v.partial.mp4"
    assert sink.frames > 1 and frames_in(kept) == sink.frames  # every frame it claims decodes


def test_ctrl_c_during_a_frames_delivery_counts_exactly_the_frames_the_partial_holds(tmp_path, ckpt, ctrl_c_raises):
    # SIGINT landing while a frame was written (after the video had it, before it was counted) made the
    # command claim one frame fewer than its partial video held (4 claimed, 5 decoded, in CI): a frame
    # now reaches every sink and is counted, or none of that
    from fastdpt.stream import Sink

    class CtrlCAtThirdFrame(Sink):  # a sink after the video: the signal comes once the video has frame 3
        def __init__(self):
            self.seen = 0

        def write(self, frame):
            self.seen += 1
            if self.seen == 3:
                os.kill(os.getpid(), signal.SIGINT)

    frames = folder_of_frames(tmp_path / "f", n=12)
    sink = VideoSink(tmp_path / "out.mp4", 10.0)
    with pytest.raises(StreamInterrupted) as e:
        run_stream(ImageSequence(frames), Predictor(ckpt), sink, sinks=[CtrlCAtThirdFrame()])
    assert e.value.stats.frames_out == 3 and frames_in(e.value.partial) == 3 and "after 3 frames" in str(e.value)


def test_an_ignored_ctrl_c_stays_ignored_while_a_frame_is_written(tmp_path):
    # a process started with SIGINT ignored (a script's background job) must not stop when SIGINT comes
    # while a frame is written: the deferral around each write once turned an ignored SIGINT into a stop
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sink = VideoSink(tmp_path / "v.mp4", 10.0, side_by_side=False, codec="mp4v")
        frame = np.zeros((32, 48, 3), np.uint8)
        sink.write(frame, frame)
        real = sink.writer.write

        def write_with_ctrl_c(rgb):
            os.kill(os.getpid(), signal.SIGINT)
            real(rgb)

        sink.writer.write = write_with_ctrl_c
        for _ in range(5):
            sink.write(frame, frame)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sink.close() == tmp_path / "v.mp4" and frames_in(tmp_path / "v.mp4") == 6
