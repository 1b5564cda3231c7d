"""Temporal stability of depth on video.

- :class:`FlickerMeter` / :func:`flicker`: how much depth changes between consecutive frames where the
  scene did not, with no ground truth (the OPW idea of NVDS / Video Depth Anything): dense optical flow
  (OpenCV DIS, at a reduced size) warps the previous frame's inverse depth into the current frame;
  pixels are weighted by photometric agreement after the same warp (occlusions and moving objects count
  little); the change that the camera's own motion explains (the flow's optical expansion) is taken
  out; the weighted mean absolute difference is divided by the previous frame's median inverse
  depth, so a score does not depend on the units of the depth (metric and relative models compare).
  0 is a perfectly stable stream; a per-frame scale jitter of e percent scores about e / 100.
- :func:`temporal_alignment_error` (TAE): with camera poses and intrinsics, every predicted depth is
  reprojected into the next frame and compared with the prediction there (and back), on pixels that
  are static (checked with the ground truth when there is some) and valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

FLOW_SIDE = 320  # flow is computed with the longer side at this size


def inverse_depth(depth: np.ndarray, kind: str) -> np.ndarray:
    """Inverse depth (metric: 1 / depth; relative output is inverse depth already); invalid -> NaN."""
    d = np.asarray(depth, dtype=np.float32)
    inv = 1.0 / np.maximum(d, 1e-3) if kind == "metric" else d.astype(np.float32, copy=True)
    bad = ~np.isfinite(d) | ((d <= 0) if kind == "metric" else False)
    inv[bad] = np.nan
    return inv


def _gray_small(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    g = frame if frame.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def flow_size(shape: tuple[int, int], side: int = FLOW_SIDE) -> tuple[int, int]:
    h, w = shape[:2]
    s = min(1.0, side / max(h, w))
    return max(8, int(round(h * s))), max(8, int(round(w * s)))


class Flow:
    """Backward dense flow (current -> previous) at a reduced size with OpenCV DIS; one per stream."""

    def __init__(self) -> None:
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)

    def __call__(self, prev_gray: np.ndarray, gray: np.ndarray) -> np.ndarray:
        return self.dis.calc(gray, prev_gray, None)


def warp(image: np.ndarray, flow: np.ndarray, border=np.nan) -> np.ndarray:
    """``image`` (previous frame's grid) sampled at x + flow(x): the previous frame seen from the current."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image.astype(np.float32), gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=float(border) if border == border else np.nan)


def expansion(flow: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """How much a static point's inverse depth grows from the previous frame to this one, from the
    optical expansion of the backward flow (x -> x + flow(x)): the previous frame maps this frame's
    neighbourhood onto an area det(I + J) times as large, and depth scales with the square root of
    that, so inv_t / inv_{t-1} = 1 / sqrt(det(I + J)). 1 for a still camera; > 1 on what the camera
    moves towards. The flow is smoothed first; the ratio is kept within [0.5, 2]."""
    f = cv2.GaussianBlur(flow, (0, 0), sigma)
    dudy, dudx = np.gradient(f[..., 0])
    dvdy, dvdx = np.gradient(f[..., 1])
    det = (1.0 + dudx) * (1.0 + dvdy) - dudy * dvdx
    return (1.0 / np.sqrt(np.clip(det, 0.25, 4.0))).astype(np.float32)


def photometric_weight(gray: np.ndarray, warped_prev_gray: np.ndarray, sigma: float = 12.0) -> np.ndarray:
    """exp(-|I_t - warp(I_{t-1})| / sigma): near 1 where the warp explains the frame, near 0 where it
    does not (occlusions, moving objects, flow failures); 0 outside the previous frame."""
    diff = np.abs(gray.astype(np.float32) - warped_prev_gray)
    w = np.exp(-diff / sigma)
    w[~np.isfinite(warped_prev_gray)] = 0.0
    return w


@dataclass
class FlickerMeter:
    """Online flicker of a depth stream: ``update(frame, depth, kind)`` per frame (in order), ``score``
    is the mean over the consecutive pairs seen so far (``per_pair`` keeps each)."""

    side: int = FLOW_SIDE
    per_pair: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.flow = Flow()
        self.prev: tuple | None = None

    def reset(self) -> None:
        self.prev = None

    def update(self, frame: np.ndarray, depth: np.ndarray, kind: str, flow: np.ndarray | None = None) -> float | None:
        """``flow``: the flow from this frame to the previous one at this meter's size, when the caller has
        it already (a :class:`~fastdpt.stabilize.Stabilizer`'s ``pair_flow`` over the same frames)."""
        size = flow_size(frame.shape, self.side)
        gray = _gray_small(frame, size)
        inv = cv2.resize(inverse_depth(depth, kind), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        value = None
        if self.prev is not None and self.prev[0].shape == gray.shape:
            prev_gray, prev_inv = self.prev
            if flow is None or flow.shape[:2] != gray.shape:
                flow = self.flow(prev_gray, gray)
            value = pair_flicker(prev_gray, gray, prev_inv, inv, flow)
            if value is not None:
                self.per_pair.append(value)
        self.prev = (gray, inv)
        return value

    @property
    def score(self) -> float:
        return float(np.mean(self.per_pair)) if self.per_pair else float("nan")


def pair_flicker(prev_gray, gray, prev_inv, inv, flow) -> float | None:
    """Weighted mean |warp(inv_{t-1}) * expansion - inv_t| / median(inv_{t-1}) for one pair (None: nothing
    comparable). The expansion factor removes what the camera's own motion does to the depth of static
    points, so an exact depth of a moving camera scores near 0 too."""
    warped_inv = warp(prev_inv, flow) * expansion(flow)
    weight = photometric_weight(gray, warp(prev_gray, flow, border=np.nan))
    ok = np.isfinite(warped_inv) & np.isfinite(inv) & (weight > 0)
    scale = np.nanmedian(prev_inv) if np.isfinite(prev_inv).any() else np.nan
    if not ok.any() or not np.isfinite(scale) or scale <= 0 or weight[ok].sum() <= 1e-6:
        return None
    err = np.abs(warped_inv[ok] - inv[ok]) / scale
    return float((weight[ok] * err).sum() / weight[ok].sum())


def flicker(frames, depths, kind: str, side: int = FLOW_SIDE) -> float:
    """Flicker of a whole sequence (see :class:`FlickerMeter`)."""
    meter = FlickerMeter(side)
    for f, d in zip(frames, depths):
        meter.update(f, d, kind)
    return meter.score


# -- against ground truth: reprojection with camera poses ------------------------------------------------
def reproject(depth: np.ndarray, K: np.ndarray, T_next_from_this: np.ndarray):
    """Every pixel of ``depth`` (metres) moved into the next camera: (u', v', z') arrays; NaN where the
    depth is not valid."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    pts = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z, np.ones_like(z)], 0).reshape(4, -1)
    moved = (T_next_from_this @ pts)[:3]
    zn = moved[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        un = fx * moved[0] / zn + cx
        vn = fy * moved[1] / zn + cy
    return un.reshape(h, w), vn.reshape(h, w), zn.reshape(h, w)


def _sample(image: np.ndarray, u: np.ndarray, v: np.ndarray, nearest: bool = False) -> np.ndarray:
    m = np.isfinite(u) & np.isfinite(v)
    return cv2.remap(image.astype(np.float32), np.where(m, u, -1).astype(np.float32), np.where(m, v, -1).astype(np.float32),
                     cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)


def pair_alignment_error(d0, d1, K, T_1_from_0, gt0=None, gt1=None, static_tol: float = 0.05) -> tuple[float, int]:
    """Mean |z' - d1(p')| / d1(p') over the pixels of frame 0 moved into frame 1 (inside it, in front of
    the camera, valid in both). With ground truth, only pixels whose GT agrees with itself after the same
    move (within ``static_tol``) count: static and not occluded. Returns (error, pixels)."""
    u, v, z = reproject(d0, K, T_1_from_0)
    h, w = d0.shape
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1) & (z > 0)
    target = _sample(d1, u, v)
    ok = inside & np.isfinite(target) & (target > 0) & np.isfinite(z)
    if gt0 is not None and gt1 is not None:
        gu, gv, gz = reproject(np.where(gt0 > 0, gt0, np.nan), K, T_1_from_0)
        g1 = _sample(np.where(gt1 > 0, gt1, np.nan), gu, gv, nearest=True)
        static = np.isfinite(g1) & (np.abs(gz - g1) / g1 < static_tol)
        ok &= static
    if not ok.any():
        return float("nan"), 0
    return float(np.mean(np.abs(z[ok] - target[ok]) / target[ok])), int(ok.sum())


def temporal_alignment_error(depths, K: np.ndarray, poses, gts=None, static_tol: float = 0.05) -> dict:
    """TAE of a sequence: for each consecutive pair, the alignment error forwards and backwards,
    averaged (pixel-weighted). ``poses``: camera-to-world 4x4 per frame; ``gts``: optional ground truth
    per frame (0 = none) to keep static, valid pixels only."""
    errs, pixels = [], []
    for t in range(len(depths) - 1):
        T01 = np.linalg.inv(poses[t + 1]) @ poses[t]
        T10 = np.linalg.inv(T01)
        g0 = gts[t] if gts is not None else None
        g1 = gts[t + 1] if gts is not None else None
        for a, b, T, ga, gb in ((depths[t], depths[t + 1], T01, g0, g1), (depths[t + 1], depths[t], T10, g1, g0)):
            e, n = pair_alignment_error(a, b, K, T, ga, gb, static_tol)
            if n:
                errs.append(e)
                pixels.append(n)
    if not errs:
        return {"tae": float("nan"), "pairs": 0, "pixels": 0}
    return {"tae": float(np.average(errs, weights=pixels)), "pairs": len(depths) - 1, "pixels": int(sum(pixels))}
