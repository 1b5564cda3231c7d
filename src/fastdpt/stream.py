"""Online depth on frame streams: sources -> bounded queues -> inference (batch 1) -> sinks.

Three threads run side by side: the reader decodes frames, the worker predicts depth, the writer
encodes the output. Queues are bounded, so memory stays flat. Without ``realtime`` every frame
is processed (the reader waits when the worker is busy). With ``realtime`` the reader keeps the
source's pace and drops a frame whenever the worker is still busy. The output then pairs every
input frame with the most recent depth, so the output video keeps the source frame rate, and the
drops are counted.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from .errors import FastDPTError, StreamError
from .io import IMAGE_EXTS, read_image
from .predict import Predictor
from .viz import beside, colorize

_END = object()

# -- sources ---------------------------------------------------------------------------------------
class VideoSource:
    """Frames of a video file (RGB), or of a camera when ``path`` is an int index."""

    def __init__(self, path: str | int, fps: float | None = None) -> None:
        self.name = str(path)
        if isinstance(path, str) and not Path(path).is_file():
            raise StreamError(f"video not found: {path}")
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise StreamError(f"cannot open {'camera' if isinstance(path, int) else 'video'} {path}")
        self.fps = fps or self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.live = isinstance(path, int)
        ok, first = self.cap.read()
        if not ok or first is None:
            self.cap.release()
            raise StreamError(f"{path}: no frame could be decoded (empty, truncated or not a video)")
        self._first = first

    def __iter__(self) -> Iterator[np.ndarray]:
        frame = self._first
        try:
            while frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = self.cap.read()
                if not ok:
                    frame = None
        finally:
            self.cap.release()


class ImageSequence:
    """Sorted image files of a folder (e.g. a KITTI drive's ``image_02/data``) replayed at ``fps``."""

    def __init__(self, folder: str | os.PathLike, fps: float = 10.0) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise StreamError(f"image folder not found: {folder}")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise StreamError(f"no images in {folder}")
        self.fps, self.live, self.name = fps, False, str(folder)

    def __iter__(self) -> Iterator[np.ndarray]:
        for p in self.files:
            yield read_image(p)


# -- sinks -----------------------------------------------------------------------------------------
class VideoSink:
    """Writes side-by-side (input | depth) or depth-only frames to an mp4 at the source rate."""

    def __init__(self, path: str | os.PathLike, fps: float, side_by_side: bool = True, cmap: str = "Spectral_r"):
        self.path, self.fps, self.side_by_side, self.cmap = Path(path), fps, side_by_side, cmap
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.stem + ".part" + self.path.suffix)
        self.writer = None
        self.frames = 0

    def write(self, frame: np.ndarray, depth: np.ndarray, kind: str) -> None:
        vis = colorize(depth, kind, self.cmap)
        out = beside(frame, vis) if self.side_by_side else vis
        if self.writer is None:
            h, w = out.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise StreamError(f"cannot write video {self.path}")
        self.writer.write(cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.path)


# -- the pipeline ----------------------------------------------------------------------------------
@dataclass
class StreamStats:
    frames_in: int = 0
    frames_out: int = 0
    inferred: int = 0
    dropped: int = 0
    wall_s: float = 0.0
    source_fps: float = 0.0
    latencies_ms: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        d = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        d.update(latency_ms_p50=float(np.percentile(lat, 50)), latency_ms_p90=float(np.percentile(lat, 90)),
                 latency_ms_p99=float(np.percentile(lat, 99)),
                 effective_fps=self.frames_out / self.wall_s if self.wall_s else 0.0,
                 inference_fps=self.inferred / self.wall_s if self.wall_s else 0.0)
        return d


def run_stream(source, predictor: Predictor, sink: VideoSink | None = None, realtime: bool = False,
               queue_size: int = 4, max_frames: int | None = None,
               on_frame: Callable[[StreamStats], None] | None = None) -> StreamStats:
    """Run ``predictor`` over ``source`` and write to ``sink``; returns the statistics.

    Latency is measured per inferred frame from when it was read to when its depth was ready.
    """
    stats = StreamStats(source_fps=float(source.fps))
    q_in: queue.Queue = queue.Queue(maxsize=1 if realtime else queue_size)
    q_out: queue.Queue = queue.Queue(maxsize=queue_size)
    errors: list[BaseException] = []
    stop = threading.Event()
    latest = None  # the most recent depth, reused for dropped frames (main thread only)
    lock = threading.Lock()

    def reader():
        try:
            period = 1.0 / source.fps
            start = time.perf_counter()
            for i, frame in enumerate(source):
                if stop.is_set() or (max_frames is not None and i >= max_frames):
                    break
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
                        q_out.put((i, frame, None))  # shown with the latest depth
                else:
                    q_in.put((i, frame, t))
        except BaseException as e:  # noqa: BLE001 - reported by run_stream
            errors.append(e)
        finally:
            q_in.put(_END)

    def worker():
        try:
            while (item := q_in.get()) is not _END:
                i, frame, t = item
                res = predictor.predict(frame)
                with lock:
                    stats.latencies_ms.append((time.perf_counter() - t) * 1000)
                    stats.inferred += 1
                q_out.put((i, frame, res))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
            while q_in.get() is not _END:  # let the reader finish
                pass
        finally:
            q_out.put(_END)

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=worker, daemon=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    pending: dict[int, tuple] = {}
    next_i = 0
    try:
        while True:
            item = q_out.get()
            if item is _END:
                break
            i, frame, res = item
            pending[i] = (frame, res)
            while next_i in pending:  # write in source order
                frame, res = pending.pop(next_i)
                if res is not None:
                    latest = res
                if latest is not None:
                    if sink is not None:
                        sink.write(frame, latest.depth, latest.kind)
                    stats.frames_out += 1
                next_i += 1
                stats.wall_s = time.perf_counter() - t0
                if on_frame:
                    on_frame(stats)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        if sink is not None:
            sink.close()
    stats.wall_s = time.perf_counter() - t0
    if errors:
        e = errors[0]
        raise e if isinstance(e, FastDPTError) else StreamError(f"stream failed: {e}") from e
    return stats


def write_stats(stats: StreamStats, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(stats.summary(), indent=1))
