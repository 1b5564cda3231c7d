"""Procedural driving scenes written in KITTI's on-disk format (the offline stand-in for KITTI).

A pinhole camera with KITTI's intrinsics drives along a straight road with lane markings, kerbs,
raised sidewalks, building facades with windows (or walls, hedges), parked and moving cars
(boxes), poles, trees and sky, under a per-drive sun, palette, haze and exposure. Rendering is
vectorised analytic ray casting: each object is only tested against the rays inside its projected
screen box. Depth is the camera z of the first hit (KITTI's convention).

Written under ``out``::

    raw/<date>/calib_cam_to_cam.txt, calib_imu_to_velo.txt, calib_velo_to_cam.txt
    raw/<date>/<drive>/image_02/data/<frame:010d>.png                     RGB
    raw/<date>/<drive>/oxts/data/<frame:010d>.txt                         the camera path as OXTS records
    data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_02/<frame:010d>.png
                                                                          64-beam LiDAR-like GT, uint16 x 256
    dense/<drive>/image_02/<frame:010d>.npy                               exact depth, float32 metres (0 = sky)
    splits/{train,val,test}_files_with_gt.txt                             BTS format
    splits/{train,val,test}_files.txt                                     monodepth2 format

The first and last 5 frames of each drive get no annotation, as in KITTI.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import atomic_write, write_depth_png, write_png, write_text
from .kitti import SplitEntry, write_split

KITTI_SIZE = (375, 1242)
KITTI_K = (721.5377, 721.5377, 609.5593, 172.854)  # fx, fy, cx, cy of 2011_09_26
DATE = "2000_01_01"
FPS = 10.0
CAM_HEIGHT = 1.65
LIDAR_OFFSET = np.array([0.0, -0.08, -0.27])  # LiDAR origin in camera coordinates (y down)
LIDAR_BEAMS = np.linspace(2.0, -24.8, 64)  # HDL-64E elevations, degrees
MAX_GT = 80.0
NO_GT_EDGE = 5

# material kinds
ASPHALT, SIDEWALK, KERB, VERGE, FACADE, CAR, POLE, TRUNK, FOLIAGE, WALL = range(1, 11)


def intrinsics(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """KITTI's intrinsics scaled to an image of ``size`` (H, W)."""
    sy, sx = size[0] / KITTI_SIZE[0], size[1] / KITTI_SIZE[1]
    fx, fy, cx, cy = KITTI_K
    return fx * sx, fy * sy, cx * sx, cy * sy


# -- scene -------------------------------------------------------------------------------------------
@dataclass
class Scene:
    boxes: list = field(default_factory=list)  # (bmin (3,), bmax (3,), material, velocity_z)
    cylinders: list = field(default_factory=list)  # (cx, cz, r, y_top, y_bottom, material)
    spheres: list = field(default_factory=list)  # (centre (3,), r, material)
    colors: list = field(default_factory=lambda: [np.zeros(3)])  # material id -> base colour
    kinds: list = field(default_factory=lambda: [0])  # material id -> kind
    road_half: float = 3.6
    side_end: float = 6.5
    sun: np.ndarray = field(default_factory=lambda: np.array([0.4, -0.8, 0.45]))
    ambient: float = 0.45
    sun_strength: float = 0.6
    fog: float = 250.0
    sky_horizon: np.ndarray = field(default_factory=lambda: np.array([0.8, 0.85, 0.9]))
    sky_zenith: np.ndarray = field(default_factory=lambda: np.array([0.35, 0.55, 0.85]))
    exposure: float = 1.0
    speed: float = 10.0
    lane_x: float = 1.8
    wobble: tuple = (0.3, 0.01, 0.02, 0.5)  # lateral amplitude, lateral freq, yaw amplitude, phase
    seed: int = 0

    def material(self, kind: int, color) -> int:
        self.kinds.append(kind)
        self.colors.append(np.asarray(color, dtype=np.float64))
        return len(self.kinds) - 1


def make_scene(rng: np.random.Generator, frames: int) -> Scene:
    """A random drive: palette, lighting, objects along the road for ``frames`` frames."""
    s = Scene(seed=int(rng.integers(2**31)))
    s.speed = rng.uniform(7, 13)
    # two driving lanes (3.2 m, centred on x = +-1.6) and a parking strip on each side
    s.road_half = rng.uniform(5.4, 6.4)
    s.side_end = s.road_half + rng.uniform(2.0, 4.0)
    s.lane_x = 1.6 + rng.uniform(-0.2, 0.2)
    s.wobble = (rng.uniform(0, 0.4), rng.uniform(0.005, 0.03), rng.uniform(0, 0.03), rng.uniform(0, 6.28))
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 1.1)
    s.sun = np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)])
    s.ambient, s.sun_strength = rng.uniform(0.3, 0.55), rng.uniform(0.35, 0.75)
    s.fog = rng.uniform(120, 400)
    s.sky_horizon = np.clip(np.array([0.78, 0.83, 0.88]) + rng.normal(0, 0.05, 3), 0, 1)
    s.sky_zenith = np.clip(np.array([0.3, 0.5, 0.85]) + rng.normal(0, 0.07, 3), 0, 1)
    s.exposure = rng.uniform(0.8, 1.2)
    z_end = s.speed * frames / FPS + 160
    s.asphalt = s.material(ASPHALT, np.full(3, rng.uniform(0.22, 0.4)) + rng.normal(0, 0.015, 3))
    s.sidewalk = s.material(SIDEWALK, np.full(3, rng.uniform(0.5, 0.7)) + rng.normal(0, 0.03, 3))
    s.kerb = s.material(KERB, np.full(3, rng.uniform(0.6, 0.8)))
    s.verge = s.material(VERGE, np.array([0.3, 0.45, 0.2]) * rng.uniform(0.7, 1.2))
    for side in (-1, 1):
        z = -30.0
        while z < z_end:
            kind = rng.choice(["building", "building", "building", "wall", "trees", "gap"])
            length = rng.uniform(8, 30)
            setback = s.side_end + rng.uniform(0.5, 6)
            if kind == "building":
                color = rng.choice([[0.55, 0.3, 0.22], [0.75, 0.68, 0.55], [0.6, 0.6, 0.62], [0.85, 0.82, 0.75],
                                    [0.45, 0.4, 0.38]]) * rng.uniform(0.8, 1.15)
                m = s.material(FACADE, np.clip(color + rng.normal(0, 0.03, 3), 0, 1))
                h = rng.uniform(6, 22)
                x0, x1 = sorted((side * setback, side * (setback + rng.uniform(8, 15))))
                s.boxes.append((np.array([x0, -h, z]), np.array([x1, 0.0, z + length]), m, 0.0))
            elif kind == "wall":
                m = s.material(WALL, np.full(3, rng.uniform(0.45, 0.75)) + rng.normal(0, 0.04, 3))
                h = rng.uniform(1.0, 3.0)
                x0, x1 = sorted((side * setback, side * (setback + 0.4)))
                s.boxes.append((np.array([x0, -h, z]), np.array([x1, 0.0, z + length]), m, 0.0))
            elif kind == "trees":
                for tz in np.arange(z, z + length, rng.uniform(5, 9)):
                    _tree(s, rng, side * (setback + rng.uniform(0, 2)), tz)
            z += length + (rng.uniform(2, 8) if kind != "gap" else rng.uniform(5, 15))
        # poles along the sidewalk
        for pz in np.arange(rng.uniform(0, 20), z_end, rng.uniform(18, 35)):
            m = s.material(POLE, np.full(3, rng.uniform(0.35, 0.6)))
            s.cylinders.append((side * (s.road_half + 0.5), pz, rng.uniform(0.08, 0.15), -rng.uniform(4, 8), 0.0, m))
        for tz in np.arange(rng.uniform(0, 15), z_end, rng.uniform(12, 30)):
            if rng.random() < 0.5:
                _tree(s, rng, side * (s.road_half + rng.uniform(1.0, 2.0)), tz)
        # parked cars by the kerb
        for cz in np.arange(rng.uniform(0, 10), z_end, rng.uniform(5.5, 14)):
            if rng.random() < 0.6:
                _car(s, rng, side * (s.road_half - 1.1), cz, 0.0)
    # moving cars: ours is the +x lane; traffic in it drives away faster than the camera, never into it
    for _ in range(int(z_end / 40)):
        lane = rng.choice([-1, 1])
        v = s.speed + rng.uniform(1, 5) if lane > 0 else -rng.uniform(5, 14)
        _car(s, rng, lane * 1.6 + rng.uniform(-0.3, 0.3), rng.uniform(15, z_end), v)
    return s


def _car(s: Scene, rng, x: float, z: float, v: float) -> None:
    color = rng.choice([[0.7, 0.1, 0.1], [0.1, 0.2, 0.6], [0.85, 0.85, 0.85], [0.1, 0.1, 0.1], [0.5, 0.5, 0.55],
                        [0.9, 0.75, 0.1], [0.2, 0.45, 0.25]]) * rng.uniform(0.7, 1.1)
    m = s.material(CAR, np.clip(color, 0, 1))
    w, h, length = rng.uniform(1.6, 1.95), rng.uniform(1.4, 1.9), rng.uniform(3.8, 5.0)
    s.boxes.append((np.array([x - w / 2, -h, z]), np.array([x + w / 2, 0.0, z + length]), m, v))


def _tree(s: Scene, rng, x: float, z: float) -> None:
    trunk_h = rng.uniform(2.0, 3.5)
    s.cylinders.append((x, z, rng.uniform(0.12, 0.25), -trunk_h - 0.5, 0.0, s.material(TRUNK, [0.35, 0.25, 0.15])))
    r = rng.uniform(1.2, 2.6)
    green = np.array([0.2, 0.42, 0.15]) * rng.uniform(0.6, 1.3)
    s.spheres.append((np.array([x, -trunk_h - r * 0.8, z]), r, s.material(FOLIAGE, green)))


def camera_pose(s: Scene, frame: int) -> tuple[np.ndarray, float]:
    amp, freq, yaw_amp, phase = s.wobble
    z = s.speed * frame / FPS
    x = s.lane_x + amp * np.sin(2 * np.pi * freq * frame + phase)
    yaw = yaw_amp * np.sin(2 * np.pi * freq * frame * 0.7 + phase)
    return np.array([x, -CAM_HEIGHT, z]), float(yaw)


# -- ray casting ------------------------------------------------------------------------------------
class _Canvas:
    def __init__(self, origin, rays_world, size):
        self.o = origin
        self.d = rays_world  # (H, W, 3), camera z component of the camera-frame ray is 1
        self.t = np.full(size, np.inf)
        self.n = np.zeros((*size, 3))
        self.mat = np.zeros(size, dtype=np.int32)

    def write(self, win, t, normal, mat):
        zt = self.t[win]
        upd = t < zt
        if not upd.any():
            return
        zt[upd] = t[upd]
        self.t[win] = zt
        nn = self.n[win]
        nn[upd] = normal[upd] if normal.ndim == 3 else normal
        self.n[win] = nn
        mm = self.mat[win]
        mm[upd] = mat[upd] if np.ndim(mat) else mat
        self.mat[win] = mm


def _screen_box(points_w, origin, yaw, k, size):
    """Pixel window (slices) covering world points, or None when out of view."""
    fx, fy, cx, cy = k
    c, sn = np.cos(yaw), np.sin(yaw)
    rel = points_w - origin
    xc = c * rel[:, 0] - sn * rel[:, 2]
    zc = sn * rel[:, 0] + c * rel[:, 2]
    yc = rel[:, 1]
    if (zc < 0.3).all() or (zc > 400).all():
        return None
    h, w = size
    if (zc < 0.3).any():  # straddles the camera plane: test the whole frame (conservative)
        return (slice(0, h), slice(0, w))
    u = fx * xc / zc + cx
    v = fy * yc / zc + cy
    u0, u1 = int(np.floor(u.min())) - 1, int(np.ceil(u.max())) + 2
    v0, v1 = int(np.floor(v.min())) - 1, int(np.ceil(v.max())) + 2
    u0, u1, v0, v1 = max(u0, 0), min(u1, w), max(v0, 0), min(v1, h)
    if u0 >= u1 or v0 >= v1:
        return None
    return (slice(v0, v1), slice(u0, u1))


def _box_corners(bmin, bmax):
    return np.array([[x, y, z] for x in (bmin[0], bmax[0]) for y in (bmin[1], bmax[1]) for z in (bmin[2], bmax[2])])


def _hit_box(o, d, bmin, bmax):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1 = (bmin - o) * inv
        t2 = (bmax - o) * inv
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    tn, tf = tmin.max(-1), tmax.min(-1)
    hit = (tf >= tn) & (tn > 0.05)
    t = np.where(hit, tn, np.inf)
    axis = tmin.argmax(-1)
    normal = np.zeros(d.shape)
    np.put_along_axis(normal, axis[..., None], -np.sign(np.take_along_axis(d, axis[..., None], -1)), -1)
    return t, normal


def _hit_cylinder(o, d, cx, cz, r, y0, y1):
    ox, oz = o[0] - cx, o[2] - cz
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = 2 * (d[..., 0] * ox + d[..., 2] * oz)
    c = ox * ox + oz * oz - r * r
    disc = b * b - 4 * a * c
    ok = disc > 0
    t = (-b - np.sqrt(np.where(ok, disc, 0))) / (2 * np.maximum(a, 1e-12))
    y = o[1] + t * d[..., 1]
    ok &= (t > 0.05) & (y >= y0) & (y <= y1)
    t = np.where(ok, t, np.inf)
    px, pz = o[0] + t * d[..., 0] - cx, o[2] + t * d[..., 2] - cz
    normal = np.stack([px / r, np.zeros_like(px), pz / r], -1)
    return t, np.nan_to_num(normal)


def _hit_sphere(o, d, centre, r):
    oc = o - centre
    a = (d * d).sum(-1)
    b = 2 * (d * oc).sum(-1)
    c = (oc * oc).sum() - r * r
    disc = b * b - 4 * a * c
    ok = disc > 0
    t = (-b - np.sqrt(np.where(ok, disc, 0))) / (2 * a)
    ok &= t > 0.05
    t = np.where(ok, t, np.inf)
    normal = (o + t[..., None] * d - centre) / r
    return t, np.nan_to_num(normal)


def _hash_noise(x, y, seed, scale):
    """Smooth value noise in [0, 1) on world coordinates (stable across frames)."""
    x, y = x * scale, y * scale
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - ix, y - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)

    def h(a, b):
        v = (a * 73856093) ^ (b * 19349663) ^ (seed * 83492791)
        v = (v ^ (v >> 13)) * 1274126177
        return ((v ^ (v >> 16)) & 0xFFFF) / 65536.0

    top = h(ix, iy) * (1 - fx) + h(ix + 1, iy) * fx
    bot = h(ix, iy + 1) * (1 - fx) + h(ix + 1, iy + 1) * fx
    return top * (1 - fy) + bot * fy


def render(s: Scene, frame: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H x W x 3, depth float32 H x W in metres, 0 for sky) of one frame."""
    h, w = size
    k = intrinsics(size)
    fx, fy, cx, cy = k
    origin, yaw = camera_pose(s, frame)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    dc = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)
    c, sn = np.cos(yaw), np.sin(yaw)
    dw = np.stack([c * dc[..., 0] + sn * dc[..., 2], dc[..., 1], -sn * dc[..., 0] + c * dc[..., 2]], -1)
    cv = _Canvas(origin, dw, size)
    everything = (slice(0, h), slice(0, w))
    # ground: road at y = 0, raised sidewalks at y = -0.15 between road_half and side_end, verge beyond
    with np.errstate(divide="ignore", invalid="ignore"):
        for y_plane, lo, hi, mat in ((0.0, 0.0, s.road_half, s.asphalt), (-0.15, s.road_half, s.side_end, s.sidewalk),
                                     (0.0, s.side_end, 1e9, s.verge)):
            t = np.where(dw[..., 1] > 1e-9, (y_plane - origin[1]) / dw[..., 1], np.inf)
            ax = np.abs(origin[0] + t * dw[..., 0])
            t = np.where((ax >= lo) & (ax < hi) & (t > 0), t, np.inf)
            cv.write(everything, t, np.array([0.0, -1.0, 0.0]), mat)
    for side in (-1, 1):  # kerb faces
        xk = side * s.road_half
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (xk - origin[0]) / dw[..., 0]
        y = origin[1] + t * dw[..., 1]
        t = np.where((t > 0) & (y >= -0.15) & (y <= 0), t, np.inf)
        cv.write(everything, t, np.array([-side, 0.0, 0.0]), s.kerb)
    t_frame = frame / FPS
    for bmin, bmax, mat, vz in s.boxes:
        if vz:
            bmin, bmax = bmin + [0, 0, vz * t_frame], bmax + [0, 0, vz * t_frame]
        win = _screen_box(_box_corners(bmin, bmax), origin, yaw, k, size)
        if win is not None:
            t, n = _hit_box(origin, dw[win], bmin, bmax)
            cv.write(win, t, n, mat)
    for x0, z0, r, y0, y1, mat in s.cylinders:
        win = _screen_box(_box_corners(np.array([x0 - r, y0, z0 - r]), np.array([x0 + r, y1, z0 + r])),
                          origin, yaw, k, size)
        if win is not None:
            t, n = _hit_cylinder(origin, dw[win], x0, z0, r, y0, y1)
            cv.write(win, t, n, mat)
    for centre, r, mat in s.spheres:
        win = _screen_box(_box_corners(centre - r, centre + r), origin, yaw, k, size)
        if win is not None:
            t, n = _hit_sphere(origin, dw[win], centre, r)
            cv.write(win, t, n, mat)
    rgb = _shade(s, cv, dw, origin)
    depth = np.where(np.isfinite(cv.t), cv.t, 0.0).astype(np.float32)
    return rgb, depth


def _shade(s: Scene, cv: _Canvas, dw: np.ndarray, origin: np.ndarray) -> np.ndarray:
    h, w = cv.t.shape
    hit = np.isfinite(cv.t)
    p = origin + np.where(hit, cv.t, 0)[..., None] * dw
    kinds = np.asarray(s.kinds)[cv.mat]
    base = np.asarray(s.colors)[cv.mat].copy()
    seed = s.seed % 10007
    px, py, pz = p[..., 0], p[..., 1], p[..., 2]
    tex = np.ones((h, w))
    m = kinds == ASPHALT
    if m.any():
        n1 = _hash_noise(px[m], pz[m], seed, 3.0)
        tex[m] = 0.8 + 0.35 * n1
        ax = np.abs(px[m])
        centre = (ax < 0.08) & ((pz[m] % 9.0) < 3.0)
        edge = np.abs(ax - (s.road_half - 2.3)) < 0.08  # between the driving lane and the parking strip
        paint = centre | edge
        b = base[m]
        b[paint] = 0.85
        base[m] = b
    m = kinds == SIDEWALK
    if m.any():
        tiles = ((pz[m] % 1.5) < 0.05) | ((np.abs(px[m]) % 1.5) < 0.05)
        tex[m] = (0.9 + 0.2 * _hash_noise(px[m], pz[m], seed + 1, 2.0)) * np.where(tiles, 0.75, 1.0)
    m = kinds == VERGE
    if m.any():
        tex[m] = 0.6 + 0.8 * _hash_noise(px[m], pz[m], seed + 2, 1.5) * _hash_noise(px[m], pz[m], seed + 3, 6.0)
    m = (kinds == FACADE) | (kinds == WALL)
    if m.any():
        nx = np.abs(cv.n[..., 0][m]) > 0.5
        along = np.where(nx, pz[m], px[m])
        height = -py[m]
        t2 = 0.85 + 0.3 * _hash_noise(along, height, seed + 4, 1.0)
        win = (kinds[m] == FACADE) & ((along % 3.0) > 1.4) & ((height % 3.2) > 1.2) & ((height % 3.2) < 2.6) & (height > 2.5)
        b = base[m]
        glass = np.array([0.15, 0.2, 0.28]) + 0.25 * _hash_noise(np.floor(along / 3), np.floor(height / 3.2), seed + 5, 1.0)[:, None]
        b[win] = glass[win]
        base[m] = b
        tex[m] = t2
    m = kinds == CAR
    if m.any():
        height = -py[m]
        b = base[m]
        windows = (height > 0.95) & (height < 1.35)
        wheels = height < 0.35
        b[windows] = [0.08, 0.1, 0.14]
        b[wheels] = [0.05, 0.05, 0.05]
        base[m] = b
    m = kinds == FOLIAGE
    if m.any():
        tex[m] = 0.5 + 1.0 * _hash_noise(px[m] + pz[m], py[m], seed + 6, 3.0)
    m = kinds == TRUNK
    if m.any():
        tex[m] = 0.8 + 0.4 * _hash_noise(px[m] + pz[m], py[m], seed + 7, 8.0)
    sun = s.sun / np.linalg.norm(s.sun)
    lambert = np.clip((cv.n * (-sun if sun[1] > 0 else sun)).sum(-1), 0, 1)
    light = s.ambient + s.sun_strength * lambert
    color = base * tex[..., None] * light[..., None]
    fog = np.exp(-np.where(hit, cv.t, 0) / s.fog)[..., None]
    # sky: gradient by ray elevation, with soft clouds
    elev = np.clip(-dw[..., 1] / np.linalg.norm(dw, axis=-1), 0, 1)[..., None]
    sky = s.sky_horizon * (1 - elev) + s.sky_zenith * elev
    clouds = _hash_noise(dw[..., 0] / np.maximum(-dw[..., 1] + 0.1, 0.05), dw[..., 2] / np.maximum(-dw[..., 1] + 0.1, 0.05),
                         seed + 8, 0.8)[..., None]
    sky = sky * (0.9 + 0.2 * clouds)
    color = np.where(hit[..., None], color * fog + s.sky_horizon * (1 - fog), sky)
    color = np.clip(color * s.exposure, 0, 1) ** (1 / 1.4)
    noise = np.random.default_rng(s.seed + int(origin[2] * 100)).normal(0, 0.01, color.shape)
    return (np.clip(color + noise, 0, 1) * 255).round().astype(np.uint8)


def lidar_gt(depth: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A 64-beam LiDAR-like sparse depth from exact depth: pixels whose 3D point lies on a beam's
    elevation (seen from the LiDAR origin), within 80 m, with a few dropped returns and 2 cm noise."""
    fx, fy, cx, cy = intrinsics(size)
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    z = depth.astype(np.float64)
    x, y = (u - cx) / fx * z, (v - cy) / fy * z
    qx, qy, qz = x - LIDAR_OFFSET[0], y - LIDAR_OFFSET[1], z - LIDAR_OFFSET[2]
    elev = np.degrees(np.arctan2(-qy, np.hypot(qx, qz)))
    spacing = (LIDAR_BEAMS[0] - LIDAR_BEAMS[-1]) / (len(LIDAR_BEAMS) - 1)
    beam = (LIDAR_BEAMS[0] - elev) / spacing
    nearest = np.round(beam)
    px_in_beams = np.degrees(1.0 / fy) / spacing  # one pixel row, in beam units
    dist = np.abs(beam - nearest)
    on_beam = (dist < 0.5 * px_in_beams) & (nearest >= 0) & (nearest < len(LIDAR_BEAMS))
    # one return per beam and column: drop a pixel when a vertical neighbour on the same beam is closer
    for shift in (1, -1):
        nb_beam = np.roll(nearest, shift, axis=0)
        nb_dist = np.roll(np.where(on_beam, dist, np.inf), shift, axis=0)
        if shift == 1:
            nb_dist[0] = np.inf
        else:
            nb_dist[-1] = np.inf
        closer = (nb_beam == nearest) & ((nb_dist < dist) | ((nb_dist == dist) & (shift == 1)))
        on_beam &= ~closer
    keep = on_beam & (z > 0) & (z < MAX_GT) & (rng.random(z.shape) > 0.1)
    out = np.where(keep, z + rng.normal(0, 0.02, z.shape), 0.0)
    return np.clip(out, 0, None).astype(np.float32)


# -- writing a dataset --------------------------------------------------------------------------------
def drive_name(i: int) -> str:
    return f"{DATE}_drive_{i:04d}_sync"


def _calib_text(size: tuple[int, int]) -> str:
    fx, fy, cx, cy = intrinsics(size)
    lines = ["calib_time: synthetic (fastdpt data synth)", "corner_dist: 9.950000e-02",
             "R_rect_00: 1 0 0 0 1 0 0 0 1"]
    for cam, tx in (("00", 0.0), ("01", -0.5372), ("02", 0.0), ("03", -0.5372)):
        lines.append(f"S_rect_{cam}: {size[1]:.6e} {size[0]:.6e}")
        lines.append(f"P_rect_{cam}: {fx:.6e} 0.000000e+00 {cx:.6e} {fx * tx:.6e} 0.000000e+00 {fy:.6e} {cy:.6e} "
                     f"0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00")
    return "\n".join(lines) + "\n"


# the rig: the IMU sits at the camera, x forward, y left, z up; the velodyne coincides with it
IMU_TO_VELO = "R: 1 0 0 0 1 0 0 0 1\nT: 0 0 0\n"
VELO_TO_CAM = "R: 0 -1 0 0 0 -1 1 0 0\nT: 0 0 0\n"
LAT0, LON0, ALT0 = 49.0, 8.4, 110.0  # somewhere near Karlsruhe


def oxts_record(s: Scene, frame: int) -> str:
    """The OXTS line KITTI's devkit turns back into this frame's camera pose (world: x east, z north,
    y down; heading 0 = east, counter-clockwise)."""
    position, yaw = camera_pose(s, frame)
    east, north, up = position[0], position[2], -position[1]
    er, scale = 6378137.0, np.cos(LAT0 * np.pi / 180.0)
    tx = scale * LON0 * np.pi * er / 180.0 + east
    ty = scale * er * np.log(np.tan((90.0 + LAT0) * np.pi / 360.0)) + north
    lon = tx * 180.0 / (scale * np.pi * er)
    lat = 360.0 / np.pi * np.arctan(np.exp(ty / (scale * er))) - 90.0
    heading = np.pi / 2 - yaw  # the camera's forward (sin yaw, cos yaw) in (east, north)
    values = [lat, lon, ALT0 + up, 0.0, 0.0, heading] + [0.0] * 17 + [0.1, 0.1, 4, 10, 5, 5, 5]
    return " ".join(f"{v:.15g}" for v in values) + "\n"


def _render_frame(args) -> tuple[str, bool]:
    scene, drive, frame, frames, size, out, annotate_folder = args
    rgb, depth = render(scene, frame, size)
    out = Path(out)
    name = f"{frame:010d}"
    img_path = out / "raw" / DATE / drive / "image_02" / "data" / f"{name}.png"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    write_png(img_path, rgb)
    oxts = out / "raw" / DATE / drive / "oxts" / "data" / f"{name}.txt"
    oxts.parent.mkdir(parents=True, exist_ok=True)
    write_text(oxts, oxts_record(scene, frame))
    dense = out / "dense" / drive / "image_02" / f"{name}.npy"
    dense.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dense, lambda p: np.save(p, depth))
    annotated = NO_GT_EDGE <= frame < frames - NO_GT_EDGE
    if annotated:
        rng = np.random.default_rng([scene.seed, frame])
        gt = lidar_gt(depth, size, rng)
        write_depth_png(out / "data_depth_annotated" / annotate_folder / drive / "proj_depth" / "groundtruth"
                        / "image_02" / f"{name}.png", gt)
    return name, annotated


@dataclass
class SynthSummary:
    out: Path
    drives: dict[str, list[str]]  # split -> drive names
    frames: int
    annotated: int
    seconds: float


SYNTH_PARTS = ("raw", "data_depth_annotated", "dense", "splits")


def synth(out: str | os.PathLike, drives: int = 4, frames: int = 40, size: tuple[int, int] = KITTI_SIZE,
          seed: int = 0, workers: int | None = None, progress=None, overwrite: bool = False) -> SynthSummary:
    """Render ``drives`` drives of ``frames`` frames into ``out`` (see the module docstring).

    Drives are split train / val / test: the last drive is test, the one before it val (with 3 or
    more drives), the rest train; with 2 drives val and test share the last one. A folder that
    already holds a dataset is refused unless ``overwrite`` (then its dataset folders are removed).
    """
    import shutil
    import time

    from ..io import check_output_dir

    if drives < 2:
        raise ConfigError("synth needs at least 2 drives (one to train on, one to test on)")
    if frames < 2 * NO_GT_EDGE + 1:
        raise ConfigError(f"synth needs more than {2 * NO_GT_EDGE} frames per drive (the first and last "
                         f"{NO_GT_EDGE} have no annotation)")
    if any(s < 32 for s in size):
        raise ConfigError(f"frames of {size[0]}x{size[1]} are too small; use at least 32x32")
    out = Path(out)
    check_output_dir(out)
    existing = [p for p in SYNTH_PARTS if (out / p).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{out} already holds a dataset ({', '.join(existing)}); pass --overwrite to replace it "
                          "or choose another --out")
    for p in existing:
        shutil.rmtree(out / p)
    t0 = time.perf_counter()
    names = [drive_name(i + 1) for i in range(drives)]
    split_drives = {"test": names[-1:], "val": names[-2:-1] if drives >= 3 else names[-1:],
                    "train": names[:-2] if drives >= 3 else names[:1]}
    folder = {d: ("val" if d in split_drives["test"] + split_drives["val"] else "train") for d in names}
    rng = np.random.default_rng(seed)
    scenes = {d: make_scene(rng, frames) for d in names}
    (out / "raw" / DATE).mkdir(parents=True, exist_ok=True)
    write_text(out / "raw" / DATE / "calib_cam_to_cam.txt", _calib_text(size))
    write_text(out / "raw" / DATE / "calib_imu_to_velo.txt", IMU_TO_VELO)
    write_text(out / "raw" / DATE / "calib_velo_to_cam.txt", VELO_TO_CAM)
    jobs = [(scenes[d], d, f, frames, size, str(out), folder[d]) for d in names for f in range(frames)]
    workers = workers or min(2, os.cpu_count() or 1)
    done = {}
    if workers > 1:
        # threads, not processes: the rendering is numpy / OpenCV work that releases the GIL (1.6x on 2 cores),
        # and a fork of a process that runs threads (torch, Ray, OpenVINO) can leave its children waiting
        # on a lock held at fork time (a test run hung so after Ray's tests); spawned processes would
        # re-run a user's script that calls synth() without a __main__ guard
        with ThreadPoolExecutor(workers) as pool:
            for job, res in zip(jobs, pool.map(_render_frame, jobs, chunksize=4)):
                done[(job[1], job[2])] = res[1]
                if progress:
                    progress(len(done), len(jobs))
    else:
        for job in jobs:
            done[(job[1], job[2])] = _render_frame(job)[1]
            if progress:
                progress(len(done), len(jobs))
    focal = intrinsics(size)[0]
    for split, ds in split_drives.items():
        entries = []
        for d in ds:
            for f in range(frames):
                rgb = f"{DATE}/{d}/image_02/data/{f:010d}.png"
                gt = f"{d}/proj_depth/groundtruth/image_02/{f:010d}.png" if done[(d, f)] else None
                entries.append(SplitEntry(rgb, gt, round(focal, 4)))
        write_split(entries, out / "splits" / f"{split}_files_with_gt.txt", "bts")
        write_split(entries, out / "splits" / f"{split}_files.txt", "monodepth2")
    return SynthSummary(out, split_drives, len(jobs), sum(done.values()), time.perf_counter() - t0)


def sample_frames(count: int = 8, size: tuple[int, int] = KITTI_SIZE, seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB driving frames (H x W x 3 uint8) of one synthetic drive, for calibration
    (int8) and export checks; representative of road scenes, unlike noise."""
    rng = np.random.default_rng(seed)
    scene = make_scene(rng, 12 * count)
    return [render(scene, frame, size)[0] for frame in range(0, 12 * count, 12)]
