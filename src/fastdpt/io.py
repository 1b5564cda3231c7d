"""Every image and depth file format fastdpt reads or writes, finding inputs, and atomic writes.

Reading: images (any Pillow-decodable RGB/gray file, with a pixel limit checked before decoding),
KITTI 16-bit depth PNGs. Writing (always to a temporary file in the target folder, then renamed, so
a crash never leaves half a file under the final name): colour maps, 16-bit PNG, ``.npy``, ``.pfm``,
coloured binary ``.ply`` point clouds, KITTI depth PNGs.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
import shutil
from io import BytesIO
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, DiskFullError, ImageError, ImageTooLargeError
from .options import DEFAULT_CMAP
from .viz import beside, colorize

MAX_PIXELS = 25_000_000  # the one decoded-image size limit (predict, streams, the HTTP service)
MAX_SIDE = 50_000  # longer sides cannot be written back as PNG (libpng's default row limit is 1,000,000 bytes)
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
# decoders allowed, recognised by content (never by name or Content-Type): EPS, SVG and the other
# formats Pillow knows are refused, so no external program (Ghostscript) ever runs on an input
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "PPM")


# -- atomic writes -----------------------------------------------------------------------------------
def new_temp_file(folder: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """An empty new file in ``folder`` under a random name, created exclusively (a planted file or
    symlink is never followed) with the permissions every output gets: 0o666 less the process's umask,
    applied by the kernel. The umask is never changed (another thread may be creating files)."""
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a new temporary file beside ``path`` (same suffix, created exclusively,
    so a planted symlink is never followed), then rename it to ``path``. On failure nothing is left."""
    path = Path(path)
    tmp = new_temp_file(path.parent, f".{path.name}.", ".part" + path.suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(path, os.path.getsize(tmp) if os.path.exists(tmp) else 0) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """A text file (JSON records, split lists, settings) written atomically: all of it or nothing."""
    return atomic_write(path, lambda p: p.write_text(text))


def is_disk_full(e: BaseException) -> bool:
    """An error that says the disk (or the user's quota) is full."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: str | os.PathLike, written: int = 0) -> DiskFullError:
    """The one-line error for a write that ran out of space: the file, what it had written, what is free."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = 0
    return DiskFullError(f"disk full: cannot write {path} ({written / 2**20:.1f} MB written before the disk filled, "
                         f"{free / 2**20:.1f} MB free there); free some space and run again (nothing was left "
                         "half-written under that name)")


# -- images ------------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB.

    Only PNG, JPEG, WebP, BMP, TIFF and PPM are decoded (by content). The size is checked from the
    header before anything is decoded (``max_pixels``, and no side over ``MAX_SIDE``). EXIF
    orientation is applied. 16-bit and float images are scaled to 8 bits, never clipped: 16-bit
    values / 257; float images in [0, 1] x 255, other float ranges min-max scaled. Clear errors for
    missing, corrupt, refused or huge files."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    return _open_rgb(path, max_pixels, str(path), f"cannot read image {path}", detail=True)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, label: str = "upload") -> np.ndarray:
    """Encoded image bytes -> H x W x 3 uint8 RGB, with the same checks as :func:`read_image`.
    Raises :class:`ImageTooLargeError` for too many pixels, :class:`ImageError` for anything undecodable;
    its messages name no internals (they go back to HTTP clients)."""
    return _open_rgb(BytesIO(data), max_pixels, label, "cannot decode the image", detail=False)


def _open_rgb(source, max_pixels: int, label: str, failure: str, detail: bool) -> np.ndarray:
    """The one decoder behind read_image and decode_image: the format allow-list, the size check
    from the header, then decoding."""
    try:
        with Image.open(source, formats=IMAGE_FORMATS) as im:
            return _decoded_rgb(im, max_pixels, label)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{failure}: not a {'/'.join(IMAGE_FORMATS)} image") from None
    except Image.DecompressionBombError:  # Pillow's own limit, checked in open() before ours could be
        raise ImageTooLargeError(f"{label}: larger than the limit of {max_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError) as e:  # an HTTP client is told what, never an exception's name
        raise ImageError(f"{failure}: {e if detail else 'the data is truncated or corrupt'}") from None


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS, label: str = "image") -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{label}: {width}x{height} is larger than the limit of {max_pixels} pixels")
    if max(width, height) > MAX_SIDE:
        raise ImageTooLargeError(f"{label}: {width}x{height} has a side longer than {MAX_SIDE} pixels")
    if min(width, height) < 1:
        raise ImageError(f"{label}: empty image ({width}x{height})")


def _decoded_rgb(im: Image.Image, max_pixels: int, label: str) -> np.ndarray:
    check_size(*im.size, max_pixels, label)  # from the header, before decoding
    im.load()
    im = ImageOps.exif_transpose(im)
    return to_rgb8(im)


def to_rgb8(im: Image.Image) -> np.ndarray:
    """A decoded Pillow image as H x W x 3 uint8 RGB; deeper images are scaled, never clipped."""
    if im.mode.startswith("I"):  # 16- or 32-bit integers
        a = np.asarray(im).astype(np.float64)
        top = float(a.max()) if a.size else 0.0
        if im.mode.startswith("I;16") or 255 < top <= 65535:
            a = a / 257.0
        elif top > 65535:
            a = a * (255.0 / top)
        return _gray3(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(a)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:  # not a [0, 1] image: min-max
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return _gray3(np.clip(np.round(np.nan_to_num(a, nan=0.0) * 255), 0, 255).astype(np.uint8))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def collect_inputs(items: list[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand inputs into image paths (sorted within folders and globs, order of ``items`` kept).

    A folder is searched recursively for image files; a ``.txt`` file lists one path a line
    (relative paths are taken from the list's folder); anything with ``*?[`` is a glob.
    Returns (paths, messages about inputs that do not exist).
    """
    found: list[Path] = []
    missing: list[str] = []
    for item in items:
        text = str(item)
        p = Path(text)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        elif p.suffix.lower() == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    (found.append(q) if q.is_file() else missing.append(f"{q} (listed in {p}) not found"))
        elif any(c in text for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            found += matches
            if not matches:
                missing.append(f"{text} matches no file")
        elif p.is_file():
            found.append(p)
        else:
            missing.append(f"{p} not found")
    seen, unique = set(), []
    for f in found:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique, missing


def looks_like_video(path: str | os.PathLike) -> bool:
    """By content: the container signatures OpenCV's FFmpeg reads. A text file (which FFmpeg would
    render as frames of text) is refused, whatever its name."""
    with open(path, "rb") as f:
        head = f.read(189)
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")   # MP4 / MOV
            or head[:4] == b"\x1a\x45\xdf\xa3"                                   # Matroska / WebM
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")                   # AVI
            or (head[:1] == b"\x47" and head[188:189] == b"\x47")                # MPEG-TS (188-byte packets)
            or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")            # MPEG-PS / ES
            or head[:3] == b"FLV" or head[:4] == b"\x30\x26\xb2\x75"              # FLV, ASF/WMV
            or head[:4] == b"GIF8")                                              # animated GIF


# -- depth formats -----------------------------------------------------------------------------------
def depth_to_png16(depth: np.ndarray, kind: str) -> np.ndarray:
    """Metric: KITTI convention, uint16 of metres x 256 (0 where not finite). Relative: min-max
    normalised to 0..65535."""
    d = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if kind == "metric":
        return np.clip(np.round(d * 256.0), 0, 65535).astype(np.uint16)
    lo, hi = d.min(), d.max()
    return np.zeros(d.shape, np.uint16) if hi - lo < 1e-12 else np.round((d - lo) / (hi - lo) * 65535).astype(np.uint16)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB image or a uint16 single-channel map."""
    try:
        if array.ndim == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".png", array)
    except cv2.error:
        ok = False
    if not ok:
        raise ImageError(f"cannot encode a {array.shape[1]}x{array.shape[0]} {array.dtype} map as PNG")
    return buf.tobytes()


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    data = encode_png(array)
    return atomic_write(path, lambda p: p.write_bytes(data))


def read_depth_png(path: str | os.PathLike) -> np.ndarray:
    """uint16 KITTI depth PNG -> float32 metres (0 = no measurement)."""
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None or d.ndim != 2 or d.dtype != np.uint16:
        raise DataError(f"not a 16-bit depth PNG: {path}")
    return d.astype(np.float32) / 256.0


def write_depth_png(path: str | os.PathLike, depth: np.ndarray) -> Path:
    """float metres -> uint16 PNG of depth x 256 (0 where not finite or <= 0), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, depth_to_png16(depth, "metric"))


def pfm_bytes(data: np.ndarray) -> bytes:
    """Single-channel little-endian PFM (rows stored bottom to top)."""
    data = np.asarray(data, dtype="<f4")
    return f"Pf\n{data.shape[1]} {data.shape[0]}\n-1\n".encode() + np.ascontiguousarray(data[::-1]).tobytes()


def read_pfm(path: str | os.PathLike) -> np.ndarray:
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header not in (b"Pf", b"PF"):
            raise ImageError(f"{path}: not a PFM file")
        w, h = (int(v) for v in f.readline().split())
        scale = float(f.readline())
        channels = 3 if header == b"PF" else 1
        data = np.frombuffer(f.read(), dtype="<f4" if scale < 0 else ">f4", count=w * h * channels)
    shape = (h, w, 3) if channels == 3 else (h, w)
    return data.reshape(shape)[::-1].astype(np.float32)


def ply_bytes(depth: np.ndarray, image: np.ndarray, focal: float, center: tuple[float, float] | None = None,
              max_depth: float = 80.0) -> tuple[bytes, int]:
    """A binary coloured point cloud (PLY bytes) from metric depth and a pinhole focal length (pixels), the
    principal point at the image centre unless given; and the number of points."""
    h, w = depth.shape
    cx, cy = center if center is not None else ((w - 1) / 2, (h - 1) / 2)
    v, u = np.mgrid[0:h, 0:w]
    z = np.asarray(depth, dtype=np.float64)
    keep = np.isfinite(z) & (z > 0) & (z <= max_depth)
    pts = np.stack([(u - cx) * z / focal, (v - cy) * z / focal, z], -1)[keep].astype("<f4")
    rgb = np.asarray(image, dtype=np.uint8)[keep]
    rec = np.empty(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    rec["r"], rec["g"], rec["b"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(rec)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    return header.encode() + rec.tobytes(), len(rec)


# -- output formats: one registry for files (predict) and HTTP responses (serve) ---------------------------
@dataclass(frozen=True)
class Output:
    """One depth output format. ``encode(depth, kind, image, cmap, side_by_side, focal)`` gives its bytes;
    ``suffix`` follows the input's stem in file names; ``media_type`` is its HTTP type; ``metric_only`` /
    ``needs_focal`` / ``needs_image`` say what it cannot do without; ``served``: the HTTP service offers it.
    A new format is one :func:`register_output` call (``tests/test_outputs_runtime.py`` adds a toy one)."""

    name: str
    suffix: str
    media_type: str
    encode: Callable[..., bytes]
    metric_only: bool = False
    needs_focal: bool = False
    needs_image: bool = False
    served: bool = True
    what: str = ""  # how the option's help and error messages name it


OUTPUTS: dict[str, Output] = {}


def register_output(output: Output) -> Output:
    OUTPUTS[output.name] = output
    return output


def _color(depth, kind, image=None, cmap=DEFAULT_CMAP, side_by_side=True, focal=None) -> bytes:
    vis = colorize(depth, kind, cmap)
    if side_by_side and image is not None:
        vis = beside(image, vis)
    buf = BytesIO()
    Image.fromarray(vis).save(buf, format="PNG")
    return buf.getvalue()


def _npy(depth, kind, **_) -> bytes:
    buf = BytesIO()
    np.save(buf, np.asarray(depth, np.float32))
    return buf.getvalue()


register_output(Output("color", ".png", "image/png", _color, what="colour map (beside the input unless --pred-only)"))
register_output(Output("png16", "_depth16.png", "image/png", lambda depth, kind, **_: encode_png(depth_to_png16(depth, kind)),
                       what="16-bit PNG (metric: metres x 256, KITTI's convention; relative: min-max)"))
register_output(Output("npy", ".npy", "application/octet-stream", _npy, what="float32 NumPy array"))
register_output(Output("pfm", ".pfm", "application/x-pfm", lambda depth, kind, **_: pfm_bytes(depth), served=False,
                       what="float32 PFM"))
register_output(Output("ply", ".ply", "application/x-ply",
                       lambda depth, kind, image=None, focal=None, **_: ply_bytes(depth, image, focal)[0],
                       metric_only=True, needs_focal=True, needs_image=True, served=False,
                       what="coloured point cloud"))


def formats() -> tuple[str, ...]:
    """The output formats, in registration order (``--format`` takes these)."""
    return tuple(OUTPUTS)


def output_paths(stem: str, outdir: str | os.PathLike, formats: tuple[str, ...]) -> dict[str, Path]:
    """Where :func:`write_outputs` puts each format."""
    return {fmt: Path(outdir) / f"{stem}{OUTPUTS[fmt].suffix}" for fmt in formats}


def check_formats(formats: tuple[str, ...], kind: str | None = None, focal: float | None = None) -> None:
    """Reject unknown formats, and one that needs metric depth or a focal length without it, before any work."""
    unknown = [f for f in formats if f not in OUTPUTS]
    if unknown:
        raise ImageError(f"unknown output formats {unknown}; choose from {', '.join(OUTPUTS)}")
    for fmt in formats:
        out = OUTPUTS[fmt]
        if out.metric_only and kind is not None and kind != "metric":
            raise ImageError(f"{fmt} ({out.what}) needs metric depth (a model with a metric head)")
        if out.needs_focal and focal is None:
            raise ImageError(f"{fmt} ({out.what}) needs a focal length (--focal or --calib)")


def write_outputs(result, stem: str, outdir: str | os.PathLike, save_npy: bool = False,
                  formats: tuple[str, ...] = ("color",), image: np.ndarray | None = None, cmap: str = DEFAULT_CMAP,
                  side_by_side: bool = True, focal: float | None = None) -> list[Path]:
    """Write ``<outdir>/<stem>.<ext>`` for each format of ``result`` (a depth map with its
    ``.depth`` and ``.kind``, e.g. a :class:`~fastdpt.predict.DepthResult`); each file is written
    whole, then renamed.

    ``color`` (``.png``, beside the input unless ``side_by_side`` is False), ``png16``
    (``_depth16.png``), ``npy`` (float32), ``pfm``, ``ply`` (metric models; needs ``focal``)."""
    depth, kind = result.depth, result.kind
    formats = tuple(dict.fromkeys(tuple(formats) + (("npy",) if save_npy else ())))
    check_formats(formats, kind, focal)
    for fmt in formats:
        if OUTPUTS[fmt].needs_image and image is None:
            raise ImageError(f"{fmt} ({OUTPUTS[fmt].what}) needs the image")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, path in output_paths(stem, outdir, formats).items():
        data = OUTPUTS[fmt].encode(depth, kind, image=image, cmap=cmap, side_by_side=side_by_side, focal=focal)
        atomic_write(path, lambda p, data=data: p.write_bytes(data))
        written.append(path)
    return written


# -- where outputs go -----------------------------------------------------------------------------------
def check_output_dir(path: str | os.PathLike) -> Path:
    """Fail with one line, before any work, if ``path`` cannot become a writable folder (nothing is
    created here)."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"is under {probe}, which is a file"
        raise ImageError(f"output folder {path} {what}; choose a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ImageError(f"output folder {path} cannot be written ({probe} is not writable)")
    return path


def check_new_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` may be written: it does not exist (or ``overwrite``), it is not a folder, and its
    folder can be written. Checked before any work, so nothing runs for an output that cannot land."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ImageError(f"{path} exists; pass --overwrite to replace it or choose another name")
    check_output_dir(path.parent)
    return path


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (with parents) or fail with one line if it is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ImageError(f"output folder {path} is a file; choose a folder (-o)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageError(f"cannot create output folder {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ImageError(f"output folder {path} is not writable")
    return path


def output_stems(files: list[Path]) -> dict[Path, str]:
    """A unique output stem per input: its path relative to the inputs' common folder, without the
    suffix (``a/y.png``, ``b/y.png`` -> ``a/y``, ``b/y``); stems that still collide (``x.png``,
    ``x.jpg``) get the suffix appended (``x_png``, ``x_jpg``)."""
    if not files:
        return {}
    resolved = [f.resolve() for f in files]
    root = Path(os.path.commonpath([r.parent for r in resolved]))
    stems = {f: r.relative_to(root).with_suffix("").as_posix() for f, r in zip(files, resolved)}
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    return {f: (s + "_" + f.suffix.lstrip(".").lower() if counts[s] > 1 else s) for f, s in stems.items()}


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (also through links); False if either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
