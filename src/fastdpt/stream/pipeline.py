"""The stream's pipeline: a reader thread, a worker running the stages, the caller delivering to the sinks
(see the package's docstring)."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import FastDPTError, StreamError
from ..io import (atomic_write, same_file)
from ..predict import Predictor

from .sinks import VideoSink, _sigint_deferred
from .sources import _END, Problem


class StreamInterrupted(StreamError):
    """The stream was stopped (Ctrl-C) before its end; ``stats`` and ``partial`` tell what was kept."""

    def __init__(self, message: str, stats: "StreamStats", partial: Path | None):
        super().__init__(message)
        self.stats, self.partial = stats, partial


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
        from ..stabilize import Stabilizer

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
        from ..evaluation.temporal import FlickerMeter

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
