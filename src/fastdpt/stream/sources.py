"""Frame sources of a stream: video files and cameras (:class:`VideoSource`), folders of images
(:class:`ImageSequence`); problems (unreadable, too large, truncated) are yielded, never dropped silently."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..errors import ImageError, ImageTooLargeError, StreamError
from ..io import (IMAGE_EXTS, MAX_PIXELS, check_size, looks_like_video, read_image)

_END = object()
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")


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
