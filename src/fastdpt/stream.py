"""Online depth on frame streams: sources -> bounded queues -> inference (batch 1) -> sinks.

Three threads run side by side: the reader decodes frames, the worker predicts depth, the writer
(the caller's thread) encodes the output. Queues are bounded, so memory stays flat. Without
``realtime`` every frame is processed (the reader waits when the worker is busy). With ``realtime``
the reader keeps the source's pace and drops a frame whenever the worker is still busy; the output
then pairs every input frame with the most recent depth, so the output video keeps the source frame
rate, and the drops are counted.

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
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from .errors import FastDPTError, ImageError, ImageTooLargeError, StreamError
from .io import (IMAGE_EXTS, MAX_PIXELS, atomic_write, check_output_dir, check_size, looks_like_video, read_image,
                 same_file)
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
    left a .partial.mp4 that decoded to 0 frames)."""
    if threading.current_thread() is not threading.main_thread():
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

    def __init__(self, path: str | os.PathLike, fps: float, side_by_side: bool = True, cmap: str = "Spectral_r",
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
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent)
            os.close(fd)
            self.tmp = Path(tmp)
            self.size = (out.shape[1], out.shape[0])
            self.writer = (_H264Writer if self.codec == "h264" else _Mp4vWriter)(tmp, self.fps, self.size)
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
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # as every other output (mkstemp made it private)
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
class FrameOutput:
    """What the worker hands to the writer: ``depth`` (H x W float32, when kept), ``vis`` (the colour
    map, H x W x 3 uint8, when there is a sink) and the depth's ``kind``."""

    depth: np.ndarray | None
    vis: np.ndarray | None
    kind: str


def run_stream(source, predictor: Predictor, sink: VideoSink | None = None, realtime: bool = False,
               queue_size: int = 4, max_frames: int | None = None, strict: bool = False,
               on_frame: Callable[[StreamStats], None] | None = None, batch_size: int = 1,
               on_output: Callable[[int, np.ndarray, FrameOutput], None] | None = None,
               stabilize: str = "none", flicker: bool = True) -> StreamStats:
    """Run ``predictor`` over ``source`` and write to ``sink``; returns the statistics.

    The worker runs the whole step on the predictor's device (upload, transforms, network, resize
    back, colour map) and brings back the colour map and the depth. ``batch_size`` > 1 (not with
    ``realtime``) is the throughput mode for offline video: up to that many waiting frames of one size
    run as one batch; order and counts stay the same. ``stabilize`` (``scale`` or ``flow``) runs the
    causal stabiliser of :mod:`fastdpt.stabilize` over the inferred frames, in order. The stream's
    ``flicker`` (see :mod:`fastdpt.evaluation.temporal`) is measured on what comes out (about 5 ms a
    frame on a 2-core CPU; ``flicker=False`` skips it and leaves ``stats.flicker`` NaN).

    Latency is measured per inferred frame from when it was read to when its depth was ready. With
    ``strict`` the first source problem raises :class:`StreamError`. Ctrl-C (KeyboardInterrupt)
    raises :class:`StreamInterrupted` within about a second, with the partial video kept.
    """
    if batch_size < 1 or (realtime and batch_size > 1):
        raise StreamError("batch_size must be 1 with realtime (online), and at least 1 otherwise")
    from .evaluation.temporal import FlickerMeter
    from .stabilize import Stabilizer
    from .viz import colorize as colorize_numpy

    colorize = predictor.colorizer(sink.cmap) if sink is not None else None
    kind = predictor.config.output_kind
    stabilizer = Stabilizer(stabilize, kind) if stabilize != "none" else None
    meter = FlickerMeter() if flicker else None
    if sink is not None:
        check_paths(source, sink.path)
    stats = StreamStats(source_fps=float(source.fps), stabilize=stabilize)
    problems: Counter = Counter()
    q_in: queue.Queue = queue.Queue(maxsize=1 if realtime else max(queue_size, 2 * batch_size))
    q_out: queue.Queue = queue.Queue(maxsize=queue_size)
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def put(q: queue.Queue, item) -> bool:
        """Put unless the stream is stopping (never blocks for more than 0.1 s at a time)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        try:
            period = 1.0 / source.fps
            start = time.perf_counter()
            i = 0
            for frame in source:
                if stop.is_set() or (max_frames is not None and i >= max_frames):
                    break
                if isinstance(frame, Problem):
                    with lock:
                        problems[frame.kind] += frame.count
                        if len(stats.messages) < 10:
                            stats.messages.append(frame.message)
                    if strict:
                        raise StreamError(f"{frame.message} (--strict)")
                    continue
                if realtime and not source.live:  # replay a file at its own rate
                    delay = start + i * period - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                t = time.perf_counter()
                stats.frames_in += 1
                if realtime:
                    try:
                        q_in.put_nowait((i, frame, t))
                    except queue.Full:
                        with lock:
                            stats.dropped += 1
                        if not put(q_out, (i, frame, None, None)):  # shown with the latest depth
                            break
                elif not put(q_in, (i, frame, t)):
                    break
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported by run_stream
            errors.append(e)
            stop.set()
        finally:
            put(q_in, _END)  # when stopping, nobody waits for it

    def infer(items) -> bool:
        """One batch of frames of one size, on the device; False when the stream is stopping."""
        depth = predictor.predict_batch([f for _, f, _ in items])
        flows = [None] * len(items)  # the stabiliser's flow of each frame, for the flicker meter
        if stabilizer is None:
            vis = colorize(depth, kind).cpu().numpy() if colorize is not None else [None] * len(items)
            depth = depth.cpu().numpy()
        else:  # in order, on the host: each frame against the stabilised past
            t0 = time.perf_counter()
            out = []
            for k, ((_, f, _), d) in enumerate(zip(items, depth.cpu().numpy())):
                out.append(stabilizer(f, d))
                flows[k] = stabilizer.pair_flow
            depth = out
            with lock:
                stats.stabilize_ms.append((time.perf_counter() - t0) * 1000 / len(items))
            vis = [colorize_numpy(d, kind, sink.cmap) for d in depth] if sink is not None else [None] * len(items)
        now = time.perf_counter()
        with lock:
            stats.latencies_ms += [(now - t) * 1000 for _, _, t in items]
            stats.inferred += len(items)
        return all(put(q_out, (i, f, FrameOutput(d, v, kind), flow))
                   for (i, f, _), d, v, flow in zip(items, depth, vis, flows))

    def worker():
        try:
            ended = False
            while not stop.is_set() and not ended:
                try:
                    item = q_in.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                items = [item]
                while len(items) < batch_size:  # throughput mode: take what is waiting
                    try:
                        more = q_in.get_nowait()
                    except queue.Empty:
                        break
                    if more is _END:
                        ended = True
                        break
                    items.append(more)
                start = 0
                for j in range(1, len(items) + 1):  # runs of one frame size
                    if j == len(items) or items[j][1].shape != items[start][1].shape:
                        if not infer(items[start:j]):
                            ended = True
                            break
                        start = j
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
        finally:
            put(q_out, _END)

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=worker, daemon=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    pending: dict[int, tuple] = {}
    next_i = 0
    latest = None  # the most recent depth, reused for dropped frames
    interrupted = False
    try:
        while True:
            try:
                item = q_out.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set() and not any(t.is_alive() for t in threads):
                    break
                continue
            if item is _END:
                break
            i, frame, res, flow = item
            pending[i] = (frame, res, flow)
            while next_i in pending:  # write in source order
                frame, res, flow = pending.pop(next_i)
                if res is not None:
                    latest = res
                    if meter is not None:  # the same inferred frames, in the order the stabiliser saw them
                        meter.update(frame, res.depth, res.kind, flow=flow)
                if latest is not None:
                    if sink is not None:
                        sink.write(frame, latest.vis)
                    if on_output is not None:
                        on_output(next_i, frame, latest)
                    stats.frames_out += 1
                next_i += 1
                stats.wall_s = time.perf_counter() - t0
                if on_frame:
                    on_frame(stats)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as e:  # noqa: BLE001 - a sink failure: keep what was written, report it
        errors.append(e)
    finally:
        stop.set()
        deadline = time.perf_counter() + 1.0
        for t in threads:  # a worker in the middle of a long inference is left behind (daemon thread)
            t.join(timeout=max(0.0, deadline - time.perf_counter()))
        stats.wall_s = time.perf_counter() - t0
        stats.problems = dict(problems)
        stats.flicker = meter.score if meter is not None else float("nan")
        if sink is not None:
            stats.resized = sink.resized
        failed = interrupted or bool(errors)
        kept = sink.close(partial=failed) if sink is not None else None
    if interrupted:
        where = f"; the video so far is in {kept}" if kept else ""
        raise StreamInterrupted(f"interrupted after {stats.frames_out} frames{where}", stats, kept)
    if errors:
        e = errors[0]
        where = f" (the video so far is in {kept})" if kept else ""
        if isinstance(e, FastDPTError):
            if kept:
                raise StreamError(f"{e}{where}") from None
            raise e
        raise StreamError(f"stream failed: {type(e).__name__}: {e}{where}") from e
    return stats


def write_stats(stats: StreamStats, path: str | os.PathLike) -> None:
    text = json.dumps(stats.summary(), indent=1)
    atomic_write(path, lambda p: p.write_text(text))
