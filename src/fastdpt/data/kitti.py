"""KITTI conventions and KITTI on disk: the KB crop, a data root's layout, split lists (monodepth2
and BTS formats), annotated depth, calibration, the study's split check, and a PyTorch dataset.

Layout read (as distributed)::

    <raw>/<date>/calib_cam_to_cam.txt
    <raw>/<date>/<drive>/image_0{2,3}/data/<frame:010d>.png
    <gt>/{train,val}/<drive>/proj_depth/groundtruth/image_0{2,3}/<frame:010d>.png   (or merged: <gt>/<drive>/...)

Depth PNGs are uint16, metres = value / 256, 0 = no measurement. Sparse GT is never interpolated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..hub import cache_dir, fetch_pinned
from ..io import read_depth_png, read_image
from .augment import Augment

# -- the KB crop (BTS's do_kb_crop) -------------------------------------------------------------------
KB_H, KB_W = 352, 1216


def kb_crop_box(height: int, width: int) -> tuple[int, int]:
    """(top, left) of the 352 x 1216 KB crop: bottom-aligned, horizontally centred."""
    return height - KB_H, (width - KB_W) // 2


def apply_kb_crop(array: np.ndarray) -> np.ndarray:
    """The KB crop of an H x W (x C) array."""
    top, left = kb_crop_box(*array.shape[:2])
    return array[top:top + KB_H, left:left + KB_W]


def kb_uncrop(pred: np.ndarray, height: int, width: int) -> np.ndarray:
    """Paste a 352 x 1216 prediction into a zero canvas of the full GT size."""
    if pred.shape != (KB_H, KB_W):
        raise DataError(f"a KB-cropped prediction must be {KB_H}x{KB_W}, got {pred.shape[0]}x{pred.shape[1]}")
    out = np.zeros((height, width), dtype=np.float32)
    top, left = kb_crop_box(height, width)
    out[top:top + KB_H, left:left + KB_W] = pred
    return out


def fits_kb_crop(height: int, width: int) -> bool:
    return height >= KB_H and width >= KB_W


# -- a KITTI-format root (as `fastdpt data synth` writes it) -------------------------------------------
@dataclass(frozen=True)
class DataPaths:
    """Where the frames, annotations and split lists are. ``DataPaths.resolve`` fills what is not
    given from a data root laid out as ``<root>/raw``, ``<root>/data_depth_annotated`` and
    ``<root>/splits/{train,val,test}_files_with_gt.txt``; ``dense_root`` is ``<root>/dense`` (exact
    per-pixel depth, as ``fastdpt data synth`` and distillation labels write it) when that folder exists:
    the one place that probes for it."""

    raw_root: Path
    gt_root: Path
    splits: dict
    dense_root: Path | None = None

    @classmethod
    def resolve(cls, data_root=None, raw_root=None, gt_root=None, **splits) -> "DataPaths":
        root = Path(data_root) if data_root else None
        out = {}
        for name, value in (("raw_root", raw_root), ("gt_root", gt_root), *splits.items()):
            default = {"raw_root": "raw", "gt_root": "data_depth_annotated"}.get(name)
            if default is None:  # a split: train / val / test
                default = f"splits/{name.removesuffix('_split')}_files_with_gt.txt"
            if value:
                out[name] = Path(value)
            elif root is not None:
                out[name] = root / default
            else:
                flags = ", ".join("--" + n.replace("_", "-") for n in ("raw_root", "gt_root", *splits))
                raise DataError(f"give --data-root, or all of {flags}")
        dense = root / "dense" if root is not None and (root / "dense").is_dir() else None
        return cls(out.pop("raw_root"), out.pop("gt_root"), out, dense)


# -- split lists -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitSource:
    url: str
    sha256: str


_MD2 = "https://raw.githubusercontent.com/nianticlabs/monodepth2/master/splits/"
_ZOE = "https://raw.githubusercontent.com/isl-org/ZoeDepth/main/train_test_inputs/"
SPLITS: dict[str, SplitSource] = {
    "eigen_full_train": SplitSource(_MD2 + "eigen_full/train_files.txt",
                                    "1b491141d87b7af9e6706609b7ce858c198c3a4ca61d180c7dc90815d5f2a986"),
    "eigen_full_val": SplitSource(_MD2 + "eigen_full/val_files.txt",
                                  "9c4446772ec58aaa60acbeef0fa6d1e8ef1b346ad4f78272d056d10cf1993af9"),
    "eigen_test": SplitSource(_MD2 + "eigen/test_files.txt",
                              "e226d4ca16e0e6e9695435014347dcf973588531330536fd8a68d298ef091a6b"),
    "eigen_test_with_gt": SplitSource(_ZOE + "kitti_eigen_test_files_with_gt.txt",
                                      "8d0499af9ab4c0d1cd7944d572b0e0e4412feab1e73f4003038426fde699b53a"),
    "eigen_train_with_gt": SplitSource(_ZOE + "kitti_eigen_train_files_with_gt.txt",
                                       "3655308ee4a017094dc620402db3fc587d769cfbfa9a16c6d0f8de6dcbe109ec"),
}


def split_path(name: str, cache: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """A split list by name: from the cache (sha256-verified) or fetched from its public origin."""
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; known: {', '.join(SPLITS)} (or pass --split-file PATH)")
    src = SPLITS[name]
    target = cache_dir(cache) / "splits" / f"{name}.txt"
    try:
        return fetch_pinned(src.url, target, src.sha256, DataError, f"split {name!r}", allow_download)
    except DataError as e:
        raise DataError(f"{e} (or pass --split-file PATH)") from None


@dataclass(frozen=True)
class SplitEntry:
    """One frame: ``rgb`` under the raw root, ``gt`` under the annotated-depth root (or None),
    ``focal`` in pixels when the list gives it."""

    rgb: str
    gt: str | None
    focal: float | None = None

    @property
    def date(self) -> str:
        return self.rgb.split("/")[0]

    @property
    def camera(self) -> str:
        m = re.search(r"image_0([23])", self.rgb)
        return m.group(1) if m else "2"

    @property
    def frame_id(self) -> str:
        """The BTS/eval-pngs file stem: the RGB path with '/' replaced by '_' (no extension)."""
        return Path(self.rgb).with_suffix("").as_posix().replace("/", "_")


_MD2_LINE = re.compile(r"^(\S+/\S+)\s+(\d+)\s+([lr])$")


def parse_split_line(line: str) -> SplitEntry:
    """A line of either format: monodepth2 ``<date>/<drive> <frame> <l|r>`` or BTS
    ``<rgb> <gt|None> <focal>``."""
    line = line.strip()
    m = _MD2_LINE.match(line)
    if m:
        folder, frame, side = m.groups()
        cam = "2" if side == "l" else "3"
        name = f"{int(frame):010d}.png"
        drive = folder.split("/")[-1]
        return SplitEntry(f"{folder}/image_0{cam}/data/{name}", f"{drive}/proj_depth/groundtruth/image_0{cam}/{name}")
    parts = line.split()
    if len(parts) == 3:
        rgb, gt, focal = parts
        try:
            return SplitEntry(rgb, None if gt == "None" else gt, float(focal))
        except ValueError:
            pass
    raise DataError(f"unrecognised split line: {line!r}")


def read_split(path: str | os.PathLike) -> list[SplitEntry]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    entries = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entries.append(parse_split_line(line))
            except DataError as e:
                raise DataError(f"{path}:{i}: {e}") from None
    return entries


def write_split(entries: list[SplitEntry], path: str | os.PathLike, fmt: str = "bts") -> Path:
    """Write a split list (``bts``: ``<rgb> <gt|None> <focal>``; ``monodepth2``: ``<folder> <frame> <l|r>``)."""
    lines = []
    for e in entries:
        if fmt == "bts":
            lines.append(f"{e.rgb} {e.gt or 'None'} {e.focal if e.focal is not None else 'None'}")
        elif fmt == "monodepth2":
            folder = "/".join(e.rgb.split("/")[:2])
            lines.append(f"{folder} {int(Path(e.rgb).stem)} {'l' if e.camera == '2' else 'r'}")
        else:
            raise DataError(f"unknown split format {fmt!r}; choose bts or monodepth2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def split_format(path: str | os.PathLike) -> str:
    with open(path) as f:
        first = f.readline()
    return "monodepth2" if _MD2_LINE.match(first.strip()) else "bts"


# -- files ------------------------------------------------------------------------------------------
def find_gt(gt_root: str | os.PathLike, rel: str | None) -> Path | None:
    """An annotation under G, G/train or G/val (as distributed or merged)."""
    if rel is None:
        return None
    root = Path(gt_root)
    for sub in ("", "train", "val"):
        p = root / sub / rel
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=64)
def _calib(path: str) -> dict[str, np.ndarray]:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, values = line.partition(":")
            try:
                out[key.strip()] = np.array([float(v) for v in values.split()])
            except ValueError:
                continue
    return out


def read_focal(raw_root: str | os.PathLike, date: str, camera: str = "2") -> float:
    """fx of ``P_rect_0<camera>`` in ``<raw>/<date>/calib_cam_to_cam.txt``."""
    return calib_focal(Path(raw_root) / date / "calib_cam_to_cam.txt", camera)


def calib_focal(path: str | os.PathLike, camera: str = "2") -> float:
    """fx of ``P_rect_0<camera>`` in a KITTI ``calib_cam_to_cam.txt``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration not found: {path}")
    p = _calib(str(path)).get(f"P_rect_0{camera}")
    if p is None or p.size != 12:
        raise DataError(f"{path}: no valid P_rect_0{camera}")
    return float(p[0])


# -- the study's split check -------------------------------------------------------------------------
@dataclass
class SplitCheck:
    name: str
    listed: int = 0
    images_missing: int = 0
    gt_missing: int = 0
    usable: list[SplitEntry] = field(default_factory=list)

    def row(self) -> dict:
        return {"split": self.name, "listed": self.listed, "images_missing": self.images_missing,
                "annotations_missing": self.gt_missing, "usable": len(self.usable)}


def check_split(name: str, entries: list[SplitEntry], raw_root: str | os.PathLike,
                gt_root: str | os.PathLike) -> SplitCheck:
    """Count listed frames, missing images, missing annotations and usable frames (image and GT)."""
    res = SplitCheck(name, listed=len(entries))
    raw = Path(raw_root)
    for e in entries:
        has_img = (raw / e.rgb).is_file()
        gt = find_gt(gt_root, e.gt)
        res.images_missing += not has_img
        res.gt_missing += gt is None
        if has_img and gt is not None:
            res.usable.append(e)
    return res


# -- dataset -----------------------------------------------------------------------------------------
def dense_path(dense_root: str | os.PathLike, entry: SplitEntry) -> Path:
    """Exact depth of a synthetic frame: ``<dense>/<drive>/image_0<c>/<frame>.npy`` (metres, 0 = sky)."""
    parts = Path(entry.rgb).parts  # <date>/<drive>/image_0c/data/<frame>.png
    return Path(dense_root) / parts[1] / parts[2] / (Path(entry.rgb).stem + ".npy")


class KittiDepthDataset(Dataset):
    """Frames with annotated depth. Items: ``image`` (3, H, W) float in [0, 1], ``depth`` (H, W)
    metres (0 = none), ``mask`` (H, W) bool (depth > 0), ``focal`` (px), ``frame_id`` (str).

    ``dense_root``: take ``depth`` from exact dense maps (synthetic data's ``dense/``) instead of the
    sparse annotations (which must still exist: they define the usable frames).
    ``exact``: RGB paths (as the split lists give them) of frames whose depth is ground truth among
    pseudo-labels; items carry ``exact`` (bool) so that trimming the loss spares them."""

    def __init__(self, entries: list[SplitEntry], raw_root: str | os.PathLike, gt_root: str | os.PathLike,
                 augment: Augment | None = None, train: bool = False, skip_missing: bool = True,
                 dense_root: str | os.PathLike | None = None, exact: Collection[str] = ()) -> None:
        self.raw_root, self.gt_root = Path(raw_root), Path(gt_root)
        self.exact = frozenset(exact)
        self.dense_root = Path(dense_root) if dense_root else None
        self.augment = augment or Augment.none()
        self.train = train
        self.items: list[tuple[SplitEntry, Path]] = []
        for e in entries:
            gt = find_gt(self.gt_root, e.gt)
            if self.dense_root is not None and gt is not None:
                gt = dense_path(self.dense_root, e)
                gt = gt if gt.is_file() else None
            if gt is None or not (self.raw_root / e.rgb).is_file():
                if skip_missing:
                    continue
                raise DataError(f"missing image or annotation for {e.rgb}")
            self.items.append((e, gt))
        if not self.items:
            raise DataError(f"no usable frame (image + annotation) under {self.raw_root} and "
                            f"{self.dense_root or self.gt_root}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        entry, gt_path = self.items[index]
        image = read_image(self.raw_root / entry.rgb).astype(np.float32) / 255.0
        depth = np.load(gt_path).astype(np.float32) if gt_path.suffix == ".npy" else read_depth_png(gt_path)
        if depth.shape != image.shape[:2]:
            raise DataError(f"{gt_path}: depth {depth.shape} and image {image.shape[:2]} differ in size")
        focal = entry.focal if entry.focal is not None else read_focal(self.raw_root, entry.date, entry.camera)
        if self.augment.kb_crop:
            if not fits_kb_crop(*depth.shape):
                raise DataError(f"{entry.rgb}: {depth.shape[0]}x{depth.shape[1]} is smaller than the "
                                f"{KB_H}x{KB_W} KB crop; train without it (--no-kb-crop)")
            image, depth = apply_kb_crop(image), apply_kb_crop(depth)
        if self.train:
            image, depth = self.augment(image, depth)
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        depth = torch.from_numpy(np.ascontiguousarray(depth))
        return {"image": image, "depth": depth, "mask": depth > 0, "focal": torch.tensor(focal, dtype=torch.float32),
                "exact": torch.tensor(entry.rgb in self.exact), "frame_id": entry.frame_id}


def collate(batch: list[dict]) -> dict:
    out = {k: torch.stack([b[k] for b in batch]) for k in ("image", "depth", "mask", "focal", "exact")}
    out["frame_id"] = [b["frame_id"] for b in batch]
    return out


def check_splits(raw_root: str | os.PathLike, gt_root: str | os.PathLike, names: list[str] = (),
                 files: list[str | os.PathLike] = (), write_filtered: str | os.PathLike | None = None) -> list[dict]:
    """The study's split check over named splits and split files (default: eigen_full train/val and
    eigen_test); with ``write_filtered``, the usable lines of each go to ``<dir>/<split>_filtered.txt``
    in the list's own format. Returns one row of counts per split."""
    sources = [(n, split_path(n)) for n in names] + [(Path(f).stem, Path(f)) for f in files]
    if not sources:
        sources = [(n, split_path(n)) for n in ("eigen_full_train", "eigen_full_val", "eigen_test")]
    rows = []
    for name, path in sources:
        res = check_split(name, read_split(path), raw_root, gt_root)
        rows.append(res.row())
        if write_filtered:
            write_split(res.usable, Path(write_filtered) / f"{name}_filtered.txt", split_format(path))
    return rows


# -- poses from the raw data's OXTS (GPS/IMU) files ------------------------------------------------------
EARTH_RADIUS = 6378137.0


def _rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def _read_rt(path: Path) -> np.ndarray:
    """A ``calib_*_to_*.txt`` with ``R:`` (9 values) and ``T:`` (3) as a 4x4 transform."""
    if not path.is_file():
        raise DataError(f"calibration not found: {path}")
    c = _calib(str(path))
    if c.get("R") is None or c.get("T") is None or c["R"].size != 9 or c["T"].size != 3:
        raise DataError(f"{path}: no valid R and T")
    return _rigid(c["R"].reshape(3, 3), c["T"])


def read_oxts(path: str | os.PathLike) -> np.ndarray:
    """One OXTS record (30 values: lat, lon, alt, roll, pitch, yaw, ...)."""
    try:
        values = np.array([float(v) for v in Path(path).read_text().split()])
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read OXTS record {path}: {e}") from None
    if values.size < 6:
        raise DataError(f"{path}: an OXTS record has 30 values, found {values.size}")
    return values


def imu_poses(records: list[np.ndarray]) -> list[np.ndarray]:
    """IMU-to-world 4x4 poses from OXTS records, as the KITTI devkit computes them (Mercator projection
    scaled at the first record's latitude; rotation Rz(yaw) Ry(pitch) Rx(roll))."""
    scale = np.cos(records[0][0] * np.pi / 180.0)
    poses = []
    for r in records:
        lat, lon, alt, roll, pitch, yaw = r[:6]
        t = np.array([scale * lon * np.pi * EARTH_RADIUS / 180.0,
                      scale * EARTH_RADIUS * np.log(np.tan((90.0 + lat) * np.pi / 360.0)), alt])
        cx, sx, cy, sy, cz, sz = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
        Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        poses.append(_rigid(Rz @ Ry @ Rx, t))
    origin = poses[0][:3, 3].copy()
    for p in poses:
        p[:3, 3] -= origin
    return poses


def camera_from_imu(raw_root: str | os.PathLike, date: str, camera: str = "2") -> np.ndarray:
    """4x4 IMU -> rectified camera transform: ``calib_imu_to_velo``, ``calib_velo_to_cam``,
    ``R_rect_00`` and the camera's offset in ``P_rect_0<camera>``."""
    root = Path(raw_root) / date
    T_velo_imu = _read_rt(root / "calib_imu_to_velo.txt")
    T_cam0_velo = _read_rt(root / "calib_velo_to_cam.txt")
    cam = _calib(str(root / "calib_cam_to_cam.txt"))
    R_rect = cam.get("R_rect_00")
    P = cam.get(f"P_rect_0{camera}")
    if R_rect is None or R_rect.size != 9 or P is None or P.size != 12:
        raise DataError(f"{root / 'calib_cam_to_cam.txt'}: no valid R_rect_00 and P_rect_0{camera}")
    P = P.reshape(3, 4)
    T_rect = _rigid(R_rect.reshape(3, 3), np.zeros(3))
    T_shift = _rigid(np.eye(3), np.array([P[0, 3] / P[0, 0], 0.0, 0.0]))
    return T_shift @ T_rect @ T_cam0_velo @ T_velo_imu


def intrinsics_matrix(raw_root: str | os.PathLike, date: str, camera: str = "2") -> np.ndarray:
    """3x3 K of the rectified camera, from ``P_rect_0<camera>``."""
    p = _calib(str(Path(raw_root) / date / "calib_cam_to_cam.txt")).get(f"P_rect_0{camera}")
    if p is None or p.size != 12:
        raise DataError(f"{Path(raw_root) / date}: no valid P_rect_0{camera}")
    return p.reshape(3, 4)[:, :3].copy()


def drive_poses(raw_root: str | os.PathLike, drive_folder: str, frames: list[int], camera: str = "2") -> list[np.ndarray]:
    """Camera-to-world 4x4 poses of ``frames`` of a raw drive (``<date>/<drive>``), from its OXTS files."""
    date = drive_folder.split("/")[0]
    records = [read_oxts(Path(raw_root) / drive_folder / "oxts" / "data" / f"{f:010d}.txt") for f in frames]
    T_cam_imu = camera_from_imu(raw_root, date, camera)
    T_imu_cam = np.linalg.inv(T_cam_imu)
    return [T_w_imu @ T_imu_cam for T_w_imu in imu_poses(records)]


def drive_sequences(entries: list[SplitEntry]) -> dict[str, list[int]]:
    """The frames of each drive in a split, sorted: ``{"<date>/<drive>/image_0c": [frame, ...]}``."""
    out: dict[str, set] = {}
    for e in entries:
        parts = Path(e.rgb).parts
        out.setdefault("/".join(parts[:3]), set()).add(int(Path(e.rgb).stem))
    return {k: sorted(v) for k, v in sorted(out.items())}
