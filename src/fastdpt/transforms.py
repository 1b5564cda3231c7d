"""The one pre/post-processing path: frames -> network input, network output -> depth at each
frame's size. The Predictor, training, validation, evaluation, export checks, int8 calibration,
benchmarks and the HTTP service all go through :class:`Transforms`.

Frames are H x W x 3 RGB (uint8, or float in [0, 1]) as NumPy arrays or uint8 tensors, one or a
batch of equal size; float tensors (B, 3, H, W) in [0, 1] (what datasets give) are accepted too.
The spec (:class:`~fastdpt.config.Preprocessing`) comes from the variant's config: the size rule,
mean/std and interpolation are never literals here.

Resizing into the network has two implementations of the same bicubic (a = -0.75, half-pixel
centres, no antialiasing):

- ``cv2``: OpenCV ``INTER_CUBIC`` on float32 images, exactly the official DPT pipeline. On a CPU it
  is also the fastest (2.6 ms vs 5.9 ms for torch at 375x1242 -> 352x1216, 2 threads).
- ``torch``: ``F.interpolate(mode="bicubic")`` on the model's device, so frames go to a GPU once, as
  uint8. In float32 it differs from OpenCV by at most 1.6e-4 on [0, 1] inputs (0.04 of a grey level;
  float64 agrees to 3e-7), measured in ``tests/test_transforms.py``.

``resize="auto"`` (default) takes ``cv2`` on the CPU and ``torch`` on any other device. Both give
the same depth within the tolerance stated in the tests; evaluation on the CPU is bit-faithful.
Resizing back is ``F.interpolate`` (bicubic, align_corners=False) everywhere, as the official code.
"""

from __future__ import annotations

import threading
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig, Preprocessing
from .errors import ConfigError, ImageError

RESIZERS = ("auto", "cv2", "torch")
_CV2_INTERP = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
_TORCH_ALIGN = {"bicubic": False, "bilinear": False, "nearest": None}

Frames = np.ndarray | torch.Tensor | Sequence[np.ndarray]


def network_size(height: int, width: int, config: ModelConfig | Preprocessing) -> tuple[int, int]:
    """The size an image of ``height x width`` is resized to before the network (fixed, or the
    official keep-aspect "minimal" rule)."""
    spec = config.preprocessing if isinstance(config, ModelConfig) else config
    return spec.network_size(height, width)


class Transforms:
    """Pre- and post-processing of one variant on one device.

    Args:
        spec: a :class:`ModelConfig` (its ``preprocessing``) or a :class:`Preprocessing`.
        device: where the network runs; network input is produced there, depth is resized there.
        resize: ``auto`` | ``cv2`` | ``torch`` (see the module docstring).
    """

    def __init__(self, spec: ModelConfig | Preprocessing, device: str | torch.device = "cpu",
                 resize: str = "auto") -> None:
        self.spec = spec.preprocessing if isinstance(spec, ModelConfig) else spec
        self.device = torch.device(device)
        if resize not in RESIZERS:
            raise ConfigError(f"resize must be one of {RESIZERS}, got {resize!r}")
        if self.spec.interpolation not in _CV2_INTERP or self.spec.output_interpolation not in _CV2_INTERP:
            raise ConfigError(f"interpolation must be one of {sorted(_CV2_INTERP)}")
        self.resize = ("cv2" if self.device.type == "cpu" else "torch") if resize == "auto" else resize
        self._mean = torch.tensor(self.spec.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._staging: dict = {}  # CUDA: (shape, dtype) -> two pinned host buffers, used in turn
        self._staging_lock = threading.Lock()

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        return self.spec.network_size(height, width)

    # -- in ------------------------------------------------------------------------------------------
    def preprocess(self, frames: Frames) -> torch.Tensor:
        """Frames -> normalised network input (B, 3, h, w) float32 on the device."""
        x = self.as_batch(frames)
        h, w = frame_size(x)
        size = self.network_size(h, w)
        if self.resize == "cv2":
            x = self._resize_cv2(x, size)
        else:
            x = self._to_device_chw(x)
            if size != (h, w):
                x = _interpolate(x, size, self.spec.interpolation)
        return (x - self._mean) / self._std

    @staticmethod
    def as_batch(frames: Frames):
        """One layout for every input: NumPy arrays and uint8 tensors become (B, H, W, 3), float
        tensors (B, 3, H, W)."""
        if isinstance(frames, (list, tuple)):
            if not frames:
                raise ImageError("no frame given")
            shapes = {np.shape(f) for f in frames}
            if len(shapes) != 1:
                raise ImageError(f"a batch needs frames of one size, got {sorted(shapes)}")
            frames = np.stack([np.asarray(f) for f in frames])
        if isinstance(frames, torch.Tensor) and frames.is_floating_point():
            x = frames if frames.dim() == 4 else frames.unsqueeze(0)
            if x.dim() != 4 or x.shape[1] != 3:
                raise ImageError(f"expected float images (B, 3, H, W), got shape {tuple(frames.shape)}")
            return x
        x = frames if frames.ndim == 4 else frames[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ImageError(f"expected an H x W x 3 RGB image, got shape {tuple(frames.shape)}")
        return x

    def _resize_cv2(self, x, size: tuple[int, int]) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            x = (x.permute(0, 2, 3, 1) if x.is_floating_point() else x).numpy()
        out = []
        for img in x:
            if img.dtype == np.uint8:
                img = img.astype(np.float32)
                img /= 255.0  # in place: one float copy of a large frame, not two (same values)
            else:
                img = img.astype(np.float32)
            if img.shape[:2] != size:
                img = cv2.resize(img, (size[1], size[0]), interpolation=_CV2_INTERP[self.spec.interpolation])
            out.append(img.transpose(2, 0, 1))
        return torch.from_numpy(np.ascontiguousarray(np.stack(out))).to(self.device)

    def _to_device_chw(self, x) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.is_floating_point():  # (B, 3, H, W) in [0, 1]
            return x.to(self.device, torch.float32)
        if isinstance(x, np.ndarray):
            x = self._upload(x) if self.device.type == "cuda" else torch.from_numpy(np.ascontiguousarray(x))
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def _upload(self, frames: np.ndarray) -> torch.Tensor:
        """Frames to the GPU once, as they are (uint8), from a pinned host buffer, without blocking:
        two buffers per shape are used in turn, each reused only after its last copy finished."""
        key = (frames.shape, frames.dtype.str)
        with self._staging_lock:
            if key not in self._staging:
                if len(self._staging) >= 4:  # frame sizes change (keep-aspect variants): keep the recent ones
                    self._staging.pop(next(iter(self._staging)))
                like = torch.from_numpy(np.ascontiguousarray(frames[:0]))
                self._staging[key] = [[torch.empty(frames.shape, dtype=like.dtype).pin_memory(), None] for _ in range(2)]
            slots = self._staging[key]
            slots.append(slots.pop(0))  # rotate: take the least recently used
            slot = slots[-1]
            if slot[1] is not None:
                slot[1].synchronize()
            slot[0].numpy()[...] = frames
            on_device = slot[0].to(self.device, non_blocking=True)
            slot[1] = torch.cuda.Event()
            slot[1].record()
        return on_device

    # -- out -----------------------------------------------------------------------------------------
    def postprocess(self, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Network output (B, h, w) -> depth (B, H, W) float32 at the frame size, on the device."""
        y = y.float()
        if tuple(y.shape[-2:]) == tuple(size):
            return y
        return _interpolate(y.unsqueeze(1), tuple(size), self.spec.output_interpolation)[:, 0]

    def __call__(self, model, frames: Frames) -> torch.Tensor:
        """Depth (B, H, W) for frames with ``model`` (any callable on network input), at the frames' size."""
        x = self.as_batch(frames)
        return self.postprocess(model(self.preprocess(x)), frame_size(x))


def frame_size(batch) -> tuple[int, int]:
    """(H, W) of a batch in the layout :meth:`Transforms.as_batch` gives."""
    if isinstance(batch, torch.Tensor) and batch.is_floating_point():
        return int(batch.shape[-2]), int(batch.shape[-1])
    return int(batch.shape[1]), int(batch.shape[2])


def _interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=_TORCH_ALIGN[mode])
