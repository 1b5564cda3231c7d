"""Online, causal stabilisation of depth streams: each output uses the current frame and the past only.

Both modes work in inverse depth, against the previous *output* warped into the current frame with
dense optical flow (OpenCV DIS at a reduced size) and corrected for the camera's own motion (the
flow's optical expansion), on pixels the warp explains (photometric agreement):

- ``scale``: fit a scale and shift (weighted least squares) that bring the current prediction onto the
  warped previous output, and apply it damped towards identity (``damping``), so global scale jumps of
  relative models disappear while the model's own scale comes back over a few frames.
- ``flow``: blend the warped previous output with the current prediction per pixel, with a confidence
  that is high where the warp is photometrically right and the two agree (static parts settle) and
  low where they disagree or something moved (moving parts follow the current frame).

A scene cut (the warp explains too little of the frame) resets the state; so does :meth:`reset`.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ConfigError, ImageError
from .evaluation.temporal import (FLOW_SIDE, Flow, _gray_small, expansion, flow_size, inverse_depth, photometric_weight,
                                  warp)

MODES = ("none", "scale", "flow")


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`MODES`; one line otherwise (every command and the service ask here)."""
    if mode not in MODES:
        raise ConfigError(f"--stabilize must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


class Stabilizer:
    """Stateful: call it with each frame and its predicted depth, in order; it returns the stabilised
    depth (same kind and size). ``kind``: ``metric`` or ``relative``."""

    MIN_SIDE = 16  # the flow needs a few pixels; smaller frames are refused (they raised cv2.error)

    def __init__(self, mode: str = "flow", kind: str = "metric", side: int = FLOW_SIDE, max_blend: float = 0.9,
                 agree: float = 0.3, damping: float = 0.8, cut: float = 0.25, keep_pixels: int | None = None) -> None:
        """``keep_pixels``: the most pixels of the previous output kept between frames (``flow`` mode;
        larger outputs are kept downscaled and scaled back up when blended), so the memory a stream
        holds is bounded whatever its frame size (the service sets it); None keeps it whole."""
        check_mode(mode)
        self.mode, self.kind, self.side, self.keep_pixels = mode, kind, side, keep_pixels
        self.max_blend, self.agree, self.damping, self.cut = max_blend, agree, damping, cut
        self.flow = Flow()
        self.prev: tuple | None = None  # (gray small, output inverse depth small, output inverse depth full)
        self.pair_flow: np.ndarray | None = None  # the last call's flow to the previous frame (None: no pair)
        self.resets = 0

    def reset(self) -> None:
        self.prev = None

    def __call__(self, frame: np.ndarray, depth: np.ndarray) -> np.ndarray:
        if self.mode == "none":
            return depth
        h, w = depth.shape
        if min(h, w) < self.MIN_SIDE:
            raise ImageError(f"a {w}x{h} frame is too small to stabilise (at least {self.MIN_SIDE} pixels a side)")
        size = flow_size(frame.shape, self.side)
        gray = _gray_small(frame, size)
        inv = inverse_depth(depth, self.kind)
        inv_small = cv2.resize(inv, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out = inv
        self.pair_flow = None
        if self.prev is not None and self.prev[0].shape == gray.shape:
            prev_gray, prev_small, prev_full = self.prev
            flow = self.pair_flow = self.flow(prev_gray, gray)
            weight = photometric_weight(gray, warp(prev_gray, flow))
            if np.mean(weight) < self.cut:  # a scene cut: start again from this frame
                self.resets += 1
            elif self.mode == "scale":
                out = self._scale(inv, inv_small, warp(prev_small, flow) * expansion(flow), weight)
            else:
                out = self._blend(inv, flow, prev_full, weight, size)
        self.prev = (gray, cv2.resize(out, (size[1], size[0]), interpolation=cv2.INTER_AREA), self._kept(out))
        return self._depth(out)

    def _kept(self, out: np.ndarray) -> np.ndarray | None:
        """What is kept of the output for the next frame: nothing in ``scale`` mode (it uses the small
        copy), at most ``keep_pixels`` in ``flow`` mode."""
        if self.mode != "flow":
            return None
        h, w = out.shape
        if self.keep_pixels is None or h * w <= self.keep_pixels:
            return out
        s = (self.keep_pixels / (h * w)) ** 0.5
        return cv2.resize(out, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)

    def _scale(self, inv, inv_small, target, weight) -> np.ndarray:
        ok = np.isfinite(inv_small) & np.isfinite(target) & (weight > 0.5)
        if ok.sum() < 16:
            return inv
        x, y, wt = inv_small[ok].astype(np.float64), target[ok].astype(np.float64), weight[ok].astype(np.float64)
        if self.kind == "metric":  # metric depth keeps its origin: a scale only
            s, t = float((wt * x * y).sum() / max((wt * x * x).sum(), 1e-12)), 0.0
        else:  # relative inverse depth: scale and shift
            a = np.stack([x, np.ones_like(x)], 1) * np.sqrt(wt)[:, None]
            (s, t), *_ = np.linalg.lstsq(a, y * np.sqrt(wt), rcond=None)
        if not (np.isfinite(s) and s > 0 and np.isfinite(t)):
            return inv
        s = 1.0 + self.damping * (s - 1.0)
        t = self.damping * t
        return (s * inv + t).astype(np.float32)

    def _blend(self, inv, flow_small, prev_full, weight_small, size) -> np.ndarray:
        h, w = inv.shape
        sy, sx = h / size[0], w / size[1]
        flow = cv2.resize(flow_small, (w, h), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= sx
        flow[..., 1] *= sy
        grow = cv2.resize(expansion(flow_small), (w, h), interpolation=cv2.INTER_LINEAR)
        if prev_full.shape != (h, w):  # kept downscaled (keep_pixels): warped at full size all the same
            prev_full = cv2.resize(prev_full, (w, h), interpolation=cv2.INTER_LINEAR)
        warped = warp(prev_full, flow) * grow  # what the previous output says now, the camera's motion taken out
        weight = cv2.resize(weight_small, (w, h), interpolation=cv2.INTER_LINEAR)
        rel = np.abs(warped - inv) / np.maximum(np.abs(inv), 1e-6)
        conf = self.max_blend * weight * np.exp(-np.square(rel / self.agree))  # ~full below agree, ~0 well above
        conf[~np.isfinite(warped) | ~np.isfinite(inv)] = 0.0
        out = conf * np.nan_to_num(warped) + (1.0 - conf) * inv
        out[~np.isfinite(inv)] = np.nan
        return out.astype(np.float32)

    def _depth(self, inv: np.ndarray) -> np.ndarray:
        if self.kind != "metric":
            return inv
        with np.errstate(divide="ignore", invalid="ignore"):
            d = 1.0 / inv
        d[~np.isfinite(d) | (inv <= 0)] = 0.0
        return d.astype(np.float32)


def stabilize_sequence(frames, depths, mode: str = "flow", kind: str = "metric", **options) -> list[np.ndarray]:
    """The stabiliser run over a whole sequence, frame by frame (causal: output t sees frames <= t)."""
    s = Stabilizer(mode, kind, **options)
    return [s(f, d) for f, d in zip(frames, depths)]
