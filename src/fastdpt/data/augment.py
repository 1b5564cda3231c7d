"""Training augmentation (BTS-style options). Geometry is applied to the image and the depth
together; sparse depth is never interpolated (nearest neighbour for rotations)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..errors import DataError


@dataclass(frozen=True)
class Augment:
    hflip: float = 0.5
    kb_crop: bool = True
    random_crop: tuple[int, int] | None = None
    rotate_deg: float = 0.0
    color: bool = False

    @classmethod
    def none(cls, kb_crop: bool = True) -> "Augment":
        return cls(hflip=0.0, kb_crop=kb_crop)

    def __call__(self, image: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Random rotation, crop, flip and colour jitter (torch's RNG, so seeded workers repeat)."""
        if self.rotate_deg > 0:
            angle = (torch.rand(()).item() * 2 - 1) * self.rotate_deg
            h, w = depth.shape
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR)
            depth = cv2.warpAffine(depth, m, (w, h), flags=cv2.INTER_NEAREST)  # never interpolate sparse GT
        if self.random_crop is not None:
            ch, cw = self.random_crop
            h, w = depth.shape
            if ch > h or cw > w:
                raise DataError(f"random crop {ch}x{cw} is larger than the image {h}x{w}")
            top = int(torch.randint(0, h - ch + 1, ()).item())
            left = int(torch.randint(0, w - cw + 1, ()).item())
            image, depth = image[top:top + ch, left:left + cw], depth[top:top + ch, left:left + cw]
        if self.hflip > 0 and torch.rand(()).item() < self.hflip:
            image, depth = image[:, ::-1], depth[:, ::-1]
        if self.color:
            gamma = 0.9 + 0.2 * torch.rand(()).item()
            brightness = 0.9 + 0.2 * torch.rand(()).item()
            colors = 0.9 + 0.2 * torch.rand(3).numpy()
            image = np.clip((image**gamma) * brightness * colors[None, None, :], 0, 1).astype(np.float32)
        return image, depth
