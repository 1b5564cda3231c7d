"""Pre- and post-processing around a model, as the official DPT pipeline does them.

image (H x W x 3 RGB) -> resize to the network size (cv2 INTER_CUBIC, the official "minimal"
keep-aspect rule or a fixed size) -> normalise to [-1, 1] -> model -> bicubic resize back to
H x W (align_corners=False) -> float32 depth (metres) or relative inverse depth.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .config import ModelConfig
from .errors import ImageError

MAX_PIXELS = 50_000_000


def _multiple_of(x: float, m: int = 32) -> int:
    return max(m, int(np.round(x / m) * m))


def network_size(height: int, width: int, config: ModelConfig) -> tuple[int, int]:
    """The size an image of ``height x width`` is resized to before the network.

    Fixed configs use ``config.input_size``. Keep-aspect configs follow the official
    ``Resize(keep_aspect_ratio=True, ensure_multiple_of=32, resize_method="minimal")``: use the
    scale closer to 1 for both sides, then round each side to the nearest multiple of 32.
    """
    th, tw = config.input_size
    if not config.keep_aspect:
        return th, tw
    sh, sw = th / height, tw / width
    if abs(1 - sw) < abs(1 - sh):
        sh = sw
    else:
        sw = sh
    return _multiple_of(sh * height), _multiple_of(sw * width)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB; clear errors for missing, corrupt or huge files."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{path}: {w}x{h} is larger than the limit of {max_pixels} pixels")
            im.load()
            return np.asarray(im.convert("RGB"))
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None


@dataclass
class DepthResult:
    """``depth``: H x W float32 at the input image's size; ``kind``: ``metric`` (metres) or
    ``relative`` (relative inverse depth, larger is nearer)."""

    depth: np.ndarray
    kind: str


class Predictor:
    """Runs a model on RGB images and returns depth at each image's own resolution.

    ``model``: a DPT, a preset or canonical name, a fastdpt ``.safetensors`` checkpoint, or an ONNX
    file exported by ``fastdpt export`` (with ``backend="onnxruntime"``). ``backend``: ``torch``,
    ``compile`` or ``onnxruntime``; ``precision``: ``fp32``, ``fp16``/``bf16`` (GPU), ``int8``
    (ONNX Runtime). Safe to call from several threads: inference is serialised by a lock.
    """

    def __init__(self, model: torch.nn.Module | str | os.PathLike, weights: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", backend: str = "torch", precision: str = "fp32",
                 threads: int | None = None) -> None:
        from .runtime import OrtBackend, make_backend, onnx_config

        self.device = torch.device(device)
        if not isinstance(model, torch.nn.Module) and str(model).endswith(".onnx"):
            if backend != "onnxruntime":
                raise ImageError("an .onnx model runs with backend='onnxruntime'")
            self.model = None
            self.config: ModelConfig = onnx_config(model)
            self.backend = OrtBackend(None, self.device, precision, onnx_path=model, threads=threads)
        else:
            if not isinstance(model, torch.nn.Module):
                from .api import load

                model = load(model, weights, device=self.device)
            self.model = model.to(self.device).eval()
            self.config = model.config
            self.backend = make_backend(backend, self.model, self.device, precision, threads)
        self._lock = threading.Lock()

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
        img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        h, w = img.shape[:2]
        nh, nw = network_size(h, w, self.config)
        if (nh, nw) != (h, w):
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        return ((x - 0.5) / 0.5).to(self.device)

    def postprocess(self, y: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        y = F.interpolate(y.float().unsqueeze(1), size=size, mode="bicubic", align_corners=False)
        return y[0, 0].cpu().numpy()

    def predict(self, image: np.ndarray | str | os.PathLike) -> DepthResult:
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        x = self.preprocess(image)
        with self._lock:
            y = self.backend(x)
        return DepthResult(self.postprocess(y, image.shape[:2]), self.config.output_kind)

    def predict_many(self, images: list) -> list[DepthResult]:
        """Several images (arrays or paths), one result each, in order."""
        return [self.predict(im) for im in images]


CMAPS_CV2 = {"inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA, "turbo": cv2.COLORMAP_TURBO,
             "viridis": cv2.COLORMAP_VIRIDIS}
FORMATS = ("color", "png16", "npy", "pfm", "ply")


def colorize(depth: np.ndarray, kind: str, cmap: str = "Spectral_r") -> np.ndarray:
    """H x W x 3 uint8 RGB visualisation, near is warm/bright (metric depth is shown as 1/depth).
    ``cmap``: Spectral_r (matplotlib), inferno, magma, turbo, viridis or gray."""
    d = np.asarray(depth, dtype=np.float64)
    if kind == "metric":
        d = 1.0 / np.maximum(d, 1e-3)
    finite = np.isfinite(d)
    lo, hi = (d[finite].min(), d[finite].max()) if finite.any() else (0.0, 1.0)
    norm = np.zeros_like(d) if hi - lo < 1e-12 else (d - lo) / (hi - lo)
    norm = np.clip(np.nan_to_num(norm), 0, 1)
    if cmap == "gray":
        return np.repeat((norm * 255).astype(np.uint8)[..., None], 3, axis=2)
    if cmap in CMAPS_CV2:
        return cv2.cvtColor(cv2.applyColorMap((norm * 255).astype(np.uint8), CMAPS_CV2[cmap]), cv2.COLOR_BGR2RGB)
    try:
        from matplotlib import colormaps
    except ImportError:
        raise ImageError(f"colour map {cmap!r} needs matplotlib; built in: gray, {', '.join(CMAPS_CV2)}") from None
    if cmap not in colormaps:
        raise ImageError(f"unknown colour map {cmap!r}")
    return (colormaps[cmap](norm)[..., :3] * 255).astype(np.uint8)


def depth_to_png16(depth: np.ndarray, kind: str) -> np.ndarray:
    """Metric: KITTI convention, uint16 of metres x 256. Relative: min-max normalised to 0..65535."""
    d = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if kind == "metric":
        return np.clip(np.round(d * 256.0), 0, 65535).astype(np.uint16)
    lo, hi = d.min(), d.max()
    return np.zeros(d.shape, np.uint16) if hi - lo < 1e-12 else np.round((d - lo) / (hi - lo) * 65535).astype(np.uint16)


def write_pfm(path: str | os.PathLike, data: np.ndarray) -> None:
    """Single-channel little-endian PFM (rows stored bottom to top)."""
    data = np.asarray(data, dtype="<f4")
    with open(path, "wb") as f:
        f.write(f"Pf\n{data.shape[1]} {data.shape[0]}\n-1\n".encode())
        f.write(np.ascontiguousarray(data[::-1]).tobytes())


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


def write_ply(path: str | os.PathLike, depth: np.ndarray, image: np.ndarray, focal: float,
              center: tuple[float, float] | None = None, max_depth: float = 80.0) -> int:
    """Binary coloured point cloud from metric depth and a pinhole focal length (pixels); the
    principal point defaults to the image centre. Returns the number of points."""
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
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(rec.tobytes())
    return len(rec)


def write_outputs(result: DepthResult, stem: str, outdir: str | os.PathLike, save_npy: bool = False,
                  formats: tuple[str, ...] = ("color",), image: np.ndarray | None = None, cmap: str = "Spectral_r",
                  side_by_side: bool = True, focal: float | None = None) -> list[Path]:
    """Write ``<outdir>/<stem>.<ext>`` for each format; each file is written whole, then renamed.

    ``color`` (``.png``, beside the input unless ``side_by_side`` is False), ``png16``
    (``_depth16.png``), ``npy`` (float32), ``pfm``, ``ply`` (metric models; needs ``focal``)."""
    formats = tuple(formats) + (("npy",) if save_npy and "npy" not in formats else ())
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ImageError(f"unknown output formats {sorted(unknown)}; choose from {FORMATS}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        if fmt == "color":
            vis = colorize(result.depth, result.kind, cmap)
            if side_by_side and image is not None:
                vis = np.concatenate([np.asarray(image, np.uint8), vis], axis=1)
            path = outdir / f"{stem}.png"
            _atomic(path, lambda p, vis=vis: Image.fromarray(vis).save(p, format="PNG"))
        elif fmt == "png16":
            path = outdir / f"{stem}_depth16.png"
            u16 = depth_to_png16(result.depth, result.kind)
            _atomic(path, lambda p, u16=u16: p.write(cv2.imencode(".png", u16)[1].tobytes()))
        elif fmt == "npy":
            path = outdir / f"{stem}.npy"
            _atomic(path, lambda p: np.save(p, result.depth.astype(np.float32)))
        elif fmt == "pfm":
            path = outdir / f"{stem}.pfm"
            _atomic_path(path, lambda p: write_pfm(p, result.depth))
        else:
            if result.kind != "metric":
                raise ImageError("a .ply point cloud needs metric depth (a model with a metric head)")
            if focal is None or image is None:
                raise ImageError("a .ply point cloud needs the image and a focal length (--focal or --calib)")
            path = outdir / f"{stem}.ply"
            _atomic_path(path, lambda p: write_ply(p, result.depth, image, focal))
        written.append(path)
    return written


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _atomic_path(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".part")
    write(tmp)
    os.replace(tmp, path)
