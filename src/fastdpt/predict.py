"""Pre- and post-processing around a model, as the official DPT pipeline does them.

image (H x W x 3 RGB) -> resize to the network size (cv2 INTER_CUBIC, the official "minimal"
keep-aspect rule or a fixed size) -> normalise to [-1, 1] -> model -> bicubic resize back to
H x W (align_corners=False) -> float32 depth (metres) or relative inverse depth.
"""

from __future__ import annotations

import os
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
    """Runs a model on RGB images and returns depth at each image's own resolution."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config: ModelConfig = model.config

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

    @torch.inference_mode()
    def predict(self, image: np.ndarray | str | os.PathLike) -> DepthResult:
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        y = self.model(self.preprocess(image))
        return DepthResult(self.postprocess(y, image.shape[:2]), self.config.output_kind)


def colorize(depth: np.ndarray, kind: str, cmap: int = cv2.COLORMAP_INFERNO) -> np.ndarray:
    """H x W x 3 uint8 RGB visualisation; near is bright (metric depth is shown as 1/depth)."""
    d = np.asarray(depth, dtype=np.float64)
    if kind == "metric":
        d = 1.0 / np.maximum(d, 1e-3)
    finite = np.isfinite(d)
    lo, hi = (d[finite].min(), d[finite].max()) if finite.any() else (0.0, 1.0)
    norm = np.zeros_like(d) if hi - lo < 1e-12 else (d - lo) / (hi - lo)
    u8 = (np.clip(np.nan_to_num(norm), 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cmap), cv2.COLOR_BGR2RGB)


def write_outputs(result: DepthResult, stem: str, outdir: str | os.PathLike, save_npy: bool = False) -> list[Path]:
    """``<outdir>/<stem>.png`` (colour map) and, with ``save_npy``, ``<stem>.npy`` (float32)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    png = outdir / f"{stem}.png"
    _atomic(png, lambda p: Image.fromarray(colorize(result.depth, result.kind)).save(p, format="PNG"))
    written.append(png)
    if save_npy:
        npy = outdir / f"{stem}.npy"
        _atomic(npy, lambda p: np.save(p, result.depth.astype(np.float32)))
        written.append(npy)
    return written


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
