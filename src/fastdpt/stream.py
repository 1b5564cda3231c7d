"""Online depth on frame streams: a source -> bounded queues -> stages -> sinks pipeline.

Three threads run side by side: the reader decodes the source (:class:`VideoSource`,
:class:`ImageSequence`), the worker runs the stages over each batch of frames (:class:`Infer` on the
predictor's device, :class:`Stabilise`, stages of your own, :class:`Colour` on the device), and the
caller's thread hands every frame, in source order, to the sinks (:class:`VideoOut`,
:class:`FlickerOut`, :class:`CallbackOut`, sinks of your own). A new step (a filter, a second output, a
point-cloud writer) is one :class:`Stage` or :class:`Sink` subclass passed to :func:`run_stream`.

Queues are bounded, so memory stays flat. Without ``realtime`` every frame is processed (the reader
waits when the worker is busy). With ``realtime`` the reader keeps the source's pace and drops a frame
whenever the worker is still busy; the output then pairs every input frame with the most recent
depth, so the output video keeps the source frame rate, and the drops are counted.

Nothing is lost silently: frames that cannot be decoded, that are larger than the pixel limit, or a
video that ends before the frame count its container declares are counted as ``problems`` (with
``strict=True`` the first one stops the stream); frames of another size than the first are processed
and resized for the output video, and counted as ``resized``. Ctrl-C stops within about a second:
the video written so far is kept under ``<name>.partial<ext>`` and :class:`StreamInterrupted` says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from .errors import FastDPTError, ImageError, ImageTooLargeError, StreamError
from .options import DEFAULT_CMAP
from .io import (IMAGE_EXTS, MAX_PIXELS, atomic_write, check_output_dir, check_size, looks_like_video, new_temp_file,
                 read_image, same_file)
from .predict import Predictor
from .viz import beside

_END = object()
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")


class StreamInterrupted(StreamError):
    """The stream was stopped (Ctrl-C) before its end; ``stats`` and ``partial`` tell what was kept."""

    def __init__(self, message: str, stats: "StreamStats", partial: Path | None):
        super().__init__(message)
        self.stats, self.partial = stats, partial


@dataclass
class Problem:
    """A frame the source could not deliver: ``kind`` (``unreadable``, ``too_large``, ``truncated``)."""

    kind: str
    message: str
    count: int = 1


# -- sources ---------------------------------------------------------------------------------------
class VideoSource:
    """Frames of a video file (RGB), or of a camera when ``path`` is an int index. Frames over
    ``max_pixels`` are refused up front; a file that ends before its declared frame count yields a
    ``truncated`` problem at the end."""

    def __init__(self, path: str | int, fps: float | None = None, max_pixels: int = MAX_PIXELS) -> None:
        if isinstance(path, int) and path < 0:
            raise StreamError(f"camera index must be 0 or more, got {path}")
        self.name = str(path)
        self.path = None if isinstance(path, int) else Path(path)
        if self.path is not None and not self.path.is_file():
            raise StreamError(f"video not found: {path}")
        if self.path is not None and not looks_like_video(self.path):
            raise StreamError(f"{path} is not a video file (by its content: no known container signature)")
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise StreamError(f"cannot open {'camera' if isinstance(path, int) else 'video'} {path}")
        self.fps = fps or self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.live = isinstance(path, int)
        self.declared = 0 if self.live else max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        w, h = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            check_size(w, h, max_pixels, self.name)
        except ImageError as e:
            self.cap.release()
            raise StreamError(str(e)) from None
        ok, first = self.cap.read()
        if not ok or first is None:
            self.cap.release()
            raise StreamError(f"{path}: no frame could be decoded (empty, truncated or not a video)")
        self._first = first

    def __iter__(self) -> Iterator[np.ndarray | Problem]:
        frame, n = self._first, 0
        try:
            while frame is not None:
                n += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = self.cap.read()
                if not ok:
                    frame = None
        finally:
            self.cap.release()
        if self.declared and n < self.declared:
            yield Problem("truncated", f"{self.name}: the video ends after {n} of its {self.declared} frames "
                                       "(truncated or damaged)", self.declared - n)


class ImageSequence:
    """Sorted image files of a folder (e.g. a KITTI drive's ``image_02/data``) replayed at ``fps``.
    Unreadable or oversized files become problems; the sequence goes on."""

    def __init__(self, folder: str | os.PathLike, fps: float = 10.0, max_pixels: int = MAX_PIXELS) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise StreamError(f"image folder not found: {folder}")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise StreamError(f"no images in {folder}")
        if not fps > 0:
            raise StreamError(f"--fps must be positive, got {fps:g}")
        self.fps, self.live, self.name, self.max_pixels = fps, False, str(folder), max_pixels
        self.path = folder

    def __iter__(self) -> Iterator[np.ndarray | Problem]:
        for p in self.files:
            try:
                yield read_image(p, self.max_pixels)
            except ImageTooLargeError as e:
                yield Problem("too_large", str(e))
            except ImageError as e:
                yield Problem("unreadable", str(e))


# -- sinks -----------------------------------------------------------------------------------------
CODECS = ("auto", "h264", "mp4v")


def h264_available() -> bool:
    """Whether PyAV (``pip install av``, or ``.[video]``) with an H.264 encoder is installed."""
    try:
        import av

        av.codec.Codec("libx264", "w")
        return True
    except Exception:  # noqa: BLE001 - missing module or encoder
        return False


class _Mp4vWriter:
    """OpenCV's mp4v (MPEG-4 part 2): always available, but browsers do not play it."""

    def __init__(self, path: str, fps: float, size: tuple[int, int]):
        self.writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise StreamError(f"cannot write video {path}")

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()


class _H264Writer:
    """H.264 (yuv420p) through PyAV's FFmpeg: what browsers and phones play. Odd sides are padded by
    one pixel (4:2:0 needs even ones)."""

    def __init__(self, path: str, fps: float, size: tuple[int, int]):
        import av
        from fractions import Fraction

        self.container = av.open(path, mode="w")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = size[0] + size[0] % 2, size[1] + size[1] % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "20", "preset": "veryfast"}
        self.av = av

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if (w, h) != (self.stream.width, self.stream.height):
            rgb = np.pad(rgb, ((0, self.stream.height - h), (0, self.stream.width - w), (0, 0)), mode="edge")
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()


@contextlib.contextmanager
def _sigint_deferred():
    """Ctrl-C waits until the block is done (main thread only): a frame is muxed whole or not at all,
    so a partial video never loses the packet it starts with (a first packet that is not a key frame
    left a .partial.mp4 that decoded to 0 frames). Only Python's own Ctrl-C handler is deferred: a
    process started with SIGINT ignored (a background job of a script) keeps ignoring it, and a
    handler of the caller's is left alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt


class VideoSink:
    """Writes side-by-side (input | depth) or depth-only frames to a video at the source rate.

    ``codec``: ``h264`` (PyAV; browsers play it), ``mp4v`` (OpenCV, always there) or ``auto``
    (H.264 when PyAV is installed). The path is checked at construction (a known video suffix, a
    writable folder, not an existing file unless ``overwrite``). Frames go to a private temporary
    file beside it; ``close()`` renames it to the final name, ``close(partial=True)`` to
    ``<stem>.partial<suffix>``. A frame of another size than the first is resized to the video's
    size (``resized`` counts them)."""

    def __init__(self, path: str | os.PathLike, fps: float, side_by_side: bool = True, cmap: str = DEFAULT_CMAP,
                 overwrite: bool = False, codec: str = "auto"):
        self.path, self.fps, self.side_by_side, self.cmap = Path(path), fps, side_by_side, cmap
        if self.path.suffix.lower() not in VIDEO_EXTS:
            raise StreamError(f"{self.path}: the output must be a video file ({', '.join(VIDEO_EXTS)})")
        if self.path.exists() and not overwrite:
            raise StreamError(f"{self.path} exists; pass --overwrite to replace it or choose another output")
        if codec not in CODECS:
            raise StreamError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        if codec == "h264" and not h264_available():
            raise StreamError("H.264 output needs PyAV: pip install av (or -e '.[video]'), or use --codec mp4v")
        self.codec = ("h264" if h264_available() else "mp4v") if codec == "auto" else codec
        try:
            check_output_dir(self.path.parent)
        except ImageError as e:
            raise StreamError(str(e)) from None
        from .viz import lookup_table

        lookup_table(cmap)
        self.tmp: Path | None = None
        self.writer = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.resized = 0

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".partial" + self.path.suffix)

    def write(self, frame: np.ndarray, vis: np.ndarray) -> None:
        """One output frame: the input frame and its colour-mapped depth (H x W x 3 uint8)."""
        out = beside(frame, vis) if self.side_by_side else vis
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = tmp = new_temp_file(self.path.parent, f".{self.path.stem}.", self.path.suffix)
            self.size = (out.shape[1], out.shape[0])
            self.writer = (_H264Writer if self.codec == "h264" else _Mp4vWriter)(str(tmp), self.fps, self.size)
        if (out.shape[1], out.shape[0]) != self.size:
            out = cv2.resize(out, self.size, interpolation=cv2.INTER_AREA)
            self.resized += 1
        with _sigint_deferred():
            self.writer.write(out)
            self.frames += 1

    def close(self, partial: bool = False) -> Path | None:
        """Finish the file; returns where it is (None when no frame was written)."""
        if self.writer is None:
            return None
        with _sigint_deferred():  # a second Ctrl-C cuts neither the encoder's flush nor the rename
            self.writer.close()
            self.writer = None
            target = self.partial_path if partial else self.path
            os.replace(self.tmp, target)
        return target


# -- the pipeline ----------------------------------------------------------------------------------
@dataclass
class StreamStats:
    frames_in: int = 0
    frames_out: int = 0
    inferred: int = 0
    dropped: int = 0
    resized: int = 0
    wall_s: float = 0.0
    source_fps: float = 0.0
    problems: dict = field(default_factory=dict)  # kind -> count (unreadable, too_large, truncated)
    flicker: float = float("nan")  # of the output depth (0: perfectly stable; see evaluation.temporal)
    stabilize: str = "none"
    stabilize_ms: list = field(default_factory=list, repr=False)
    messages: list = field(default_factory=list)  # the first few problem messages
    latencies_ms: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        d = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "stabilize_ms")}
        d["stabilize_ms_median"] = float(np.median(self.stabilize_ms)) if self.stabilize_ms else 0.0
        d.update(latency_ms_p50=float(np.percentile(lat, 50)), latency_ms_p90=float(np.percentile(lat, 90)),
                 latency_ms_p99=float(np.percentile(lat, 99)),
                 effective_fps=self.frames_out / self.wall_s if self.wall_s else 0.0,
                 inference_fps=self.inferred / self.wall_s if self.wall_s else 0.0)
        return d


def check_paths(source, output: str | os.PathLike | None) -> None:
    """The output may never be the input (also through a link)."""
    src = getattr(source, "path", None)
    if output is not None and src is not None and (same_file(src, output) or Path(output).resolve() == Path(src).resolve()):
        raise StreamError(f"the output {output} is the input; choose another output")


@dataclass
class Frame:
    """One frame on its way through the pipeline. ``depth``: after :class:`Infer` a tensor on the
    predictor's device, after a host stage (the stabiliser) an array, and a float32 array when it
    reaches the sinks; ``vis``: its colour map (H x W x 3 uint8) after :class:`Colour`; ``flow``: the
    stabiliser's flow to the previous inferred frame. A frame the realtime reader dropped reaches the
    sinks with the latest depth and ``fresh`` False."""

    index: int
    image: np.ndarray
    read_at: float = 0.0
    depth: Any = None
    vis: np.ndarray | None = None
    kind: str = "metric"
    flow: np.ndarray | None = None
    fresh: bool = True


class Stage:
    """One step of the worker's part. It is called with a run of frames of one size, in source order,
    and fills in what it adds (depth, a filtered depth, a colour map ...). A new step is a subclass."""

    def __call__(self, frames: list[Frame]) -> None:
        raise NotImplementedError


class Infer(Stage):
    """The network (with its transforms and the resize back) on the predictor's device, one batch."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.kind = predictor, predictor.config.output_kind

    def __call__(self, frames: list[Frame]) -> None:
        depth = self.predictor.predict_batch([f.image for f in frames])
        for f, d in zip(frames, depth):
            f.depth, f.kind = d, self.kind


class Stabilise(Stage):
    """The causal stabiliser of :mod:`fastdpt.stabilize`, on the host, each frame against the
    stabilised past; ``ms`` holds its time per frame of each run."""

    def __init__(self, mode: str, kind: str) -> None:
        from .stabilize import Stabilizer

        self.stabilizer, self.ms = Stabilizer(mode, kind), []

    def __call__(self, frames: list[Frame]) -> None:
        t0 = time.perf_counter()
        for f in frames:
            f.depth = self.stabilizer(f.image, _host(f.depth))
            f.flow = self.stabilizer.pair_flow
        self.ms.append((time.perf_counter() - t0) * 1000 / len(frames))


class Colour(Stage):
    """The colour map, on the predictor's device (only the uint8 image comes back)."""

    def __init__(self, predictor: Predictor, cmap: str) -> None:
        self.colorize = predictor.colorizer(cmap)

    def __call__(self, frames: list[Frame]) -> None:
        import torch

        depth = torch.stack([torch.as_tensor(f.depth) for f in frames])
        for f, v in zip(frames, self.colorize(depth, frames[0].kind).cpu().numpy()):
            f.vis = v


def _host(depth) -> np.ndarray:
    return depth if isinstance(depth, np.ndarray) else depth.detach().cpu().numpy()


class Sink:
    """Where frames go, in source order, one call each (a dropped frame with the latest depth);
    ``close(failed)`` once at the end, also after an error or Ctrl-C. A new output is a subclass."""

    def write(self, frame: Frame) -> None:
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        pass


class VideoOut(Sink):
    """Frames (and their colour maps) into a :class:`VideoSink`; kept as ``.partial`` when failed."""

    def __init__(self, video: VideoSink) -> None:
        self.video, self.kept = video, None

    def write(self, frame: Frame) -> None:
        self.video.write(frame.image, frame.vis)

    def close(self, failed: bool) -> None:
        self.kept = self.video.close(partial=failed)


class FlickerOut(Sink):
    """The flicker of the output depth (:class:`~fastdpt.evaluation.temporal.FlickerMeter`), over the
    inferred frames in the order the stabiliser saw them."""

    def __init__(self) -> None:
        from .evaluation.temporal import FlickerMeter

        self.meter = FlickerMeter()

    def write(self, frame: Frame) -> None:
        if frame.fresh:
            self.meter.update(frame.image, frame.depth, frame.kind, flow=frame.flow)


class CallbackOut(Sink):
    """``fn(index, image, frame)`` for every output frame."""

    def __init__(self, fn: Callable[[int, np.ndarray, Frame], None]) -> None:
        self.fn = fn

    def write(self, frame: Frame) -> None:
        self.fn(frame.index, frame.image, frame)


class _Run:
    """What the stream's threads share: the stop flag, the statistics (under ``lock``) and the first
    errors."""

    def __init__(self, stats: StreamStats) -> None:
        self.stats, self.stop, self.lock = stats, threading.Event(), threading.Lock()
        self.problems: Counter = Counter()
        self.errors: list[BaseException] = []

    def put(self, q: queue.Queue, item) -> bool:
        """Put unless the stream is stopping (never blocks for more than 0.1 s at a time)."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fail(self, e: BaseException) -> None:
        self.errors.append(e)
        self.stop.set()

    def problem(self, p: Problem) -> None:
        with self.lock:
            self.problems[p.kind] += p.count
            if len(self.stats.messages) < 10:
                self.stats.messages.append(p.message)


class _Reader:
    """Decodes the source into ``q_in``. With ``realtime`` it keeps the source's pace and, when the
    worker is still busy, passes the frame straight to ``q_out`` as dropped."""

    def __init__(self, run: _Run, source, q_in: queue.Queue, q_out: queue.Queue, realtime: bool,
                 max_frames: int | None, strict: bool) -> None:
        self.run, self.source, self.q_in, self.q_out = run, source, q_in, q_out
        self.realtime, self.max_frames, self.strict = realtime, max_frames, strict

    def __call__(self) -> None:
        try:
            self._read()
        except BaseException as e:  # noqa: BLE001 - reported by run_stream
            self.run.fail(e)
        finally:
            self.run.put(self.q_in, _END)  # when stopping, nobody waits for it

    def _read(self) -> None:
        run, period, start, i = self.run, 1.0 / self.source.fps, time.perf_counter(), 0
        for image in self.source:
            if run.stop.is_set() or (self.max_frames is not None and i >= self.max_frames):
                return
            if isinstance(image, Problem):
                run.problem(image)
                if self.strict:
                    raise StreamError(f"{image.message} (--strict)")
                continue
            if self.realtime and not self.source.live:  # replay a file at its own rate
                delay = start + i * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            frame = Frame(i, image, time.perf_counter())
            run.stats.frames_in += 1
            if not self._pass(frame):
                return
            i += 1

    def _pass(self, frame: Frame) -> bool:
        if not self.realtime:
            return self.run.put(self.q_in, frame)
        try:
            self.q_in.put_nowait(frame)
            return True
        except queue.Full:
            with self.run.lock:
                self.run.stats.dropped += 1
            frame.fresh = False
            return self.run.put(self.q_out, frame)  # shown with the latest depth


class _Worker:
    """Takes frames from ``q_in`` (up to ``batch_size`` waiting ones), runs the stages over each run
    of one frame size and hands the frames, depth on the host, to ``q_out``."""

    def __init__(self, run: _Run, stages: list[Stage], q_in: queue.Queue, q_out: queue.Queue, batch_size: int):
        self.run, self.stages, self.q_in, self.q_out, self.batch_size = run, stages, q_in, q_out, batch_size

    def __call__(self) -> None:
        try:
            ended = False
            while not ended and not self.run.stop.is_set():
                items, ended = self._take()
                start = 0
                for j in range(1, len(items) + 1):  # runs of one frame size
                    if j == len(items) or items[j].image.shape != items[start].image.shape:
                        if not self._process(items[start:j]):
                            ended = True
                            break
                        start = j
        except BaseException as e:  # noqa: BLE001
            self.run.fail(e)
        finally:
            self.run.put(self.q_out, _END)

    def _take(self) -> tuple[list[Frame], bool]:
        """The next frames (throughput mode, offline only: a whole batch, fewer only at the end of the
        source, so the first call is a batch too and a backend builds its throughput model alone) and
        whether the source has ended."""
        try:
            item = self.q_in.get(timeout=0.1)
        except queue.Empty:
            return [], False
        if item is _END:
            return [], True
        items = [item]
        while len(items) < self.batch_size:
            try:
                more = self.q_in.get(timeout=0.1)
            except queue.Empty:
                if self.run.stop.is_set():
                    break
                continue
            if more is _END:
                return items, True
            items.append(more)
        return items, False

    def _process(self, frames: list[Frame]) -> bool:
        """The stages over frames of one size; False when the stream is stopping."""
        for stage in self.stages:
            stage(frames)
        for f in frames:
            f.depth = _host(f.depth)
        now = time.perf_counter()
        with self.run.lock:
            self.run.stats.latencies_ms += [(now - f.read_at) * 1000 for f in frames]
            self.run.stats.inferred += len(frames)
        return all(self.run.put(self.q_out, f) for f in frames)


def _deliver(run: _Run, q_out: queue.Queue, threads: list[threading.Thread], sinks: list[Sink],
             on_frame: Callable[[StreamStats], None] | None, t0: float) -> None:
    """The caller's thread: frames to the sinks in source order; a dropped frame gets the latest depth."""
    pending: dict[int, Frame] = {}
    next_i, latest = 0, None
    while True:
        try:
            item = q_out.get(timeout=0.1)
        except queue.Empty:
            if run.stop.is_set() and not any(t.is_alive() for t in threads):
                return
            continue
        if item is _END:
            return
        pending[item.index] = item
        while next_i in pending:
            frame = pending.pop(next_i)
            if frame.fresh:
                latest = frame
            elif latest is not None:
                frame = replace(latest, index=frame.index, image=frame.image, fresh=False)
            if latest is not None:
                with _sigint_deferred():  # a frame reaches every sink and is counted, or none of that:
                    for sink in sinks:    # the partial video holds exactly the frames it claims
                        sink.write(frame)
                    run.stats.frames_out += 1
            next_i += 1
            run.stats.wall_s = time.perf_counter() - t0
            if on_frame:
                on_frame(run.stats)


def run_stream(source, predictor: Predictor, sink: VideoSink | None = None, realtime: bool = False,
               queue_size: int = 4, max_frames: int | None = None, strict: bool = False,
               on_frame: Callable[[StreamStats], None] | None = None, batch_size: int = 1,
               on_output: Callable[[int, np.ndarray, Frame], None] | None = None,
               stabilize: str = "none", flicker: bool = True, stages: Sequence[Stage] = (),
               sinks: Sequence[Sink] = ()) -> StreamStats:
    """Run ``predictor`` over ``source`` and write to ``sink``; returns the statistics.

    The pipeline: the reader thread decodes ``source``; the worker thread runs the stages
    (:class:`Infer` on the predictor's device, :class:`Stabilise` when ``stabilize`` is ``scale`` or
    ``flow``, then ``stages`` of your own, then :class:`Colour` on the device when there is a video) and
    brings back the depth; the caller's thread gives every frame, in source order, to the sinks
    (the video, :class:`FlickerOut`, ``on_output(index, image, frame)``, then ``sinks`` of your own).
    ``batch_size`` > 1 (not with ``realtime``) is the throughput mode for offline video: up to that many
    waiting frames of one size run as one batch; order and counts stay the same. The stream's
    ``flicker`` (see :mod:`fastdpt.evaluation.temporal`; about 5 ms a frame on a 2-core CPU) is
    measured on what comes out; ``flicker=False`` skips it and leaves ``stats.flicker`` NaN.

    Latency is measured per inferred frame from when it was read to when its depth was ready. With
    ``strict`` the first source problem raises :class:`StreamError`. Ctrl-C (KeyboardInterrupt)
    raises :class:`StreamInterrupted` within about a second, with the partial video kept.
    """
    if batch_size < 1 or (realtime and batch_size > 1):
        raise StreamError("batch_size must be 1 with realtime (online), and at least 1 otherwise")
    if sink is not None:
        check_paths(source, sink.path)
    stabiliser = Stabilise(stabilize, predictor.config.output_kind) if stabilize != "none" else None
    steps = [Infer(predictor), *([stabiliser] if stabiliser else []), *stages,
             *([Colour(predictor, sink.cmap)] if sink is not None else [])]
    video = VideoOut(sink) if sink is not None else None
    meter = FlickerOut() if flicker else None
    outs = [s for s in (video, meter, CallbackOut(on_output) if on_output else None) if s is not None] + list(sinks)
    run = _Run(StreamStats(source_fps=float(source.fps), stabilize=stabilize))
    q_in: queue.Queue = queue.Queue(maxsize=1 if realtime else max(queue_size, 2 * batch_size))
    q_out: queue.Queue = queue.Queue(maxsize=queue_size)
    threads = [threading.Thread(target=_Reader(run, source, q_in, q_out, realtime, max_frames, strict), daemon=True),
               threading.Thread(target=_Worker(run, steps, q_in, q_out, batch_size), daemon=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    interrupted = False
    try:
        _deliver(run, q_out, threads, outs, on_frame, t0)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as e:  # noqa: BLE001 - a sink failure: keep what was written, report it
        run.errors.append(e)
    finally:
        _finish(run, threads, outs, t0, failed=interrupted or bool(run.errors))
    stats = run.stats
    stats.stabilize_ms = stabiliser.ms if stabiliser else []
    stats.flicker = meter.meter.score if meter is not None else float("nan")
    stats.resized = sink.resized if sink is not None else 0
    _raise_failure(run, interrupted, video.kept if video else None)
    return stats


def _finish(run: _Run, threads: list[threading.Thread], sinks: list[Sink], t0: float, failed: bool) -> None:
    """Stop the threads (a worker in the middle of a long inference is left behind: daemon thread) and
    close every sink."""
    run.stop.set()
    deadline = time.perf_counter() + 1.0
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.perf_counter()))
    run.stats.wall_s = time.perf_counter() - t0
    run.stats.problems = dict(run.problems)
    for s in sinks:
        s.close(failed)


def _raise_failure(run: _Run, interrupted: bool, kept: Path | None) -> None:
    if interrupted:
        where = f"; the video so far is in {kept}" if kept else ""
        raise StreamInterrupted(f"interrupted after {run.stats.frames_out} frames{where}", run.stats, kept)
    if run.errors:
        e = run.errors[0]
        where = f" (the video so far is in {kept})" if kept else ""
        if isinstance(e, FastDPTError):
            if kept:
                raise StreamError(f"{e}{where}") from None
            raise e
        raise StreamError(f"stream failed: {type(e).__name__}: {e}{where}") from e


def write_stats(stats: StreamStats, path: str | os.PathLike) -> None:
    text = json.dumps(stats.summary(), indent=1)
    atomic_write(path, lambda p: p.write_text(text))
