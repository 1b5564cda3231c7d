"""Unlabelled frames from a user's own footage: video files, image folders (searched recursively,
one sequence per folder) and KITTI raw roots (each drive's ``image_02/data`` is a sequence).

Each sequence yields ``(index, frame)`` pairs in order; :func:`sample` keeps every ``every``-th frame,
skips near-duplicates of the last kept frame (a parked car) by a cheap similarity test, and stops at
``max_frames`` over all sequences. The same frames of a video and of the image folder it was
extracted to get the same indices, so they get the same names (and labels).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ..data.kitti import calib_focal
from ..errors import DataError, ImageError
from ..io import IMAGE_EXTS, MAX_PIXELS, looks_like_video, read_image

@dataclass(frozen=True)
class Sequence:
    """One ordered run of frames: ``kind`` video | images | kitti; ``name`` is unique among the
    sources and safe as a folder name; ``focal`` in pixels when known (KITTI calibration)."""

    kind: str
    path: Path
    name: str
    files: tuple[Path, ...] = ()
    focal: float | None = None

    def frames(self, max_pixels: int = MAX_PIXELS) -> Iterator[tuple[int, np.ndarray | None]]:
        """``(index, RGB frame)``; a frame that cannot be decoded yields ``(index, None)``."""
        if self.kind == "video":
            yield from _video_frames(self.path, max_pixels)
            return
        for i, f in enumerate(self.files):
            index = int(f.stem) if self.kind == "kitti" else i  # KITTI keeps its frame numbers
            try:
                yield index, read_image(f, max_pixels)
            except ImageError:
                yield index, None


def _video_frames(path: Path, max_pixels: int) -> Iterator[tuple[int, np.ndarray | None]]:
    cap = cv2.VideoCapture(str(path))
    try:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w * h > max_pixels:
            raise DataError(f"{path}: frames of {w}x{h} exceed the {max_pixels:,}-pixel limit")
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                return
            yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()


def unique_name(text: str, taken: set[str]) -> str:
    """``text`` made safe as a folder name and unlike every name in ``taken`` (``-2``, ``-3`` ...
    appended); the name is added to ``taken``."""
    base = name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "seq"
    n = 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def is_kitti_raw(root: Path) -> bool:
    """A KITTI raw root: ``<date>/<drive>_sync/image_02/data`` (or the drives directly)."""
    return any(root.glob("*/*_sync/image_02/data")) or any(root.glob("*_sync/image_02/data"))


def discover(sources: list[str | os.PathLike], taken: set[str] | None = None) -> list[Sequence]:
    """The sequences of the given sources, in order, named apart from each other and from ``taken``
    (names already used; the new ones are added to it). Raises :class:`DataError` for a source that
    does not exist or holds no frame."""
    seqs: list[Sequence] = []
    names: set[str] = taken if taken is not None else set()

    def add(kind, path, name, files=(), focal=None):
        seqs.append(Sequence(kind, Path(path), unique_name(name, names), tuple(files), focal))

    if not sources:
        raise DataError("no frames given: pass --frames with video files, image folders or a KITTI raw root")
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise DataError(f"frames source not found: {p}")
        if p.is_file():
            if not looks_like_video(p):
                raise DataError(f"{p} is not a video file (by its content); pass videos, image folders or a KITTI raw root")
            add("video", p, p.stem)
        elif is_kitti_raw(p):
            for data in sorted(p.glob("*/*_sync/image_02/data")) + sorted(p.glob("*_sync/image_02/data")):
                files = sorted(f for f in data.iterdir() if f.suffix.lower() == ".png" and f.stem.isdigit())
                if not files:
                    continue
                drive = data.parents[1]
                calib = drive.parent / "calib_cam_to_cam.txt"
                focal = calib_focal(calib, "2") if calib.is_file() else None
                add("kitti", data, drive.name, files, focal)
        else:
            folders: dict[Path, list[Path]] = {}
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                    folders.setdefault(f.parent, []).append(f)
            for folder, files in sorted(folders.items()):
                rel = folder.relative_to(p).as_posix()
                add("images", folder, p.name if rel == "." else f"{p.name}-{rel}", files)
        if not any(s for s in seqs if str(s.path).startswith(str(p))):
            raise DataError(f"{p} holds no video, image or KITTI image_02 frame")
    return seqs


def _signature(frame: np.ndarray) -> np.ndarray:
    """A 32-pixel-high blurred grey thumbnail: the cheap similarity test compares these."""
    h, w = frame.shape[:2]
    small = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (max(1, round(32 * w / h)), 32),
                       interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (3, 3), 0).astype(np.float32)


@dataclass
class Sampled:
    """A frame kept for labelling."""

    sequence: Sequence
    index: int
    frame: np.ndarray


MIN_SIDE = 32  # frames with a shorter side are skipped (a 1x1 image became the whole held-out set, and the
               # report's speed-up was timed on it)


@dataclass
class SampleCounts:
    seen: int = 0
    kept: int = 0
    duplicates: int = 0
    unreadable: int = 0
    too_small: int = 0
    per_sequence: dict = field(default_factory=dict)


def sample(sequences: list[Sequence], every: int = 1, max_frames: int | None = None, duplicate_level: float = 1.0,
           counts: SampleCounts | None = None, on_frame: Callable[[Sampled], None] | None = None) -> SampleCounts:
    """Walk the sequences: keep every ``every``-th frame, skip frames whose thumbnail differs from the
    last kept one of their sequence by less than ``duplicate_level`` grey levels on average (0: keep
    all), stop after ``max_frames``. Each kept frame goes to ``on_frame``."""
    if every < 1:
        raise DataError(f"--every must be at least 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise DataError(f"--max-frames must be at least 1, got {max_frames}")
    c = counts or SampleCounts()
    for seq in sequences:
        last = None
        kept = 0
        for i, (index, frame) in enumerate(seq.frames()):
            if max_frames is not None and c.kept >= max_frames:
                return c
            if i % every:
                continue
            c.seen += 1
            if frame is None:
                c.unreadable += 1
                continue
            if min(frame.shape[:2]) < MIN_SIDE:  # a thumbnail or an icon is no frame of footage
                c.too_small += 1
                continue
            sig = _signature(frame)
            if last is not None and duplicate_level > 0 and sig.shape == last.shape \
                    and float(np.abs(sig - last).mean()) < duplicate_level:
                c.duplicates += 1
                continue
            last = sig
            c.kept += 1
            kept += 1
            if on_frame:
                on_frame(Sampled(seq, index, frame))
        c.per_sequence[seq.name] = kept
    return c
