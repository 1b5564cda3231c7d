"""The video file a stream writes (:class:`VideoSink`: H.264 through PyAV or mp4v through OpenCV, into a
temporary file renamed when whole, ``.partial`` on Ctrl-C) and the Ctrl-C deferral its writes share."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError, StreamError
from ..options import DEFAULT_CMAP
from ..io import (check_output_dir, new_temp_file)
from ..viz import beside

from .sources import VIDEO_EXTS


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
        from ..viz import lookup_table

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
