import numpy as np
import pytest

from fastdpt.data.augment import Augment
from fastdpt.data.kitti import KittiDepthDataset, check_split, read_focal, read_split
from fastdpt.errors import DataError
from fastdpt.io import read_depth_png
from fastdpt.io import read_image as read_rgb
from fastdpt.data.synthetic import CAM_HEIGHT, DATE, intrinsics, lidar_gt, make_scene, render, synth

SIZE = (128, 416)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    res = synth(out, drives=3, frames=13, size=SIZE, seed=7, workers=1)
    return out, res


def test_layout_and_splits(tree):
    out, res = tree
    assert res.frames == 39 and res.annotated == 3 * 3  # frames 5, 6, 7 of each drive
    assert res.drives == {"test": [f"{DATE}_drive_0003_sync"], "val": [f"{DATE}_drive_0002_sync"],
                          "train": [f"{DATE}_drive_0001_sync"]}
    fx, fy, cx, cy = intrinsics(SIZE)
    assert read_focal(out / "raw", DATE) == pytest.approx(fx, rel=1e-6)
    for split in ("train", "val", "test"):
        bts = read_split(out / "splits" / f"{split}_files_with_gt.txt")
        md2 = read_split(out / "splits" / f"{split}_files.txt")
        assert [e.rgb for e in bts] == [e.rgb for e in md2] and len(bts) == 13
        assert [e.gt is not None for e in bts] == [5 <= i < 8 for i in range(13)]
        res_check = check_split(split, bts, out / "raw", out / "data_depth_annotated")
        assert len(res_check.usable) == 3 and res_check.images_missing == 0
    # annotations where KITTI puts them: train drives under train/, the others under val/
    assert (out / "data_depth_annotated" / "train" / f"{DATE}_drive_0001_sync").is_dir()
    assert (out / "data_depth_annotated" / "val" / f"{DATE}_drive_0003_sync").is_dir()
    img = read_rgb(out / "raw" / DATE / f"{DATE}_drive_0001_sync" / "image_02" / "data" / "0000000000.png")
    assert img.shape == (*SIZE, 3) and img.std() > 10


def test_sparse_gt_agrees_with_exact_depth(tree):
    out, _ = tree
    d = f"{DATE}_drive_0002_sync"
    gt = read_depth_png(out / "data_depth_annotated" / "val" / d / "proj_depth" / "groundtruth" / "image_02" / "0000000006.png")
    dense = np.load(out / "dense" / d / "image_02" / "0000000006.npy")
    m = gt > 0
    assert 0.01 < m.mean() < 0.3
    assert np.abs(gt[m] - dense[m]).max() < 0.15 and gt.max() < 80
    assert not m[: int(SIZE[0] * 0.25)].any() or m[: int(SIZE[0] * 0.25)].mean() < m.mean()  # LiDAR sees little sky
    assert (dense == 0).any() and (dense > 0).mean() > 0.5  # sky has no depth; most pixels hit a surface


def test_ground_depth_is_exact_and_rendering_deterministic():
    rng = np.random.default_rng(3)
    scene = make_scene(rng, 20)
    size = (96, 320)
    rgb, depth = render(scene, 0, size)
    rgb2, depth2 = render(scene, 0, size)
    assert np.array_equal(rgb, rgb2) and np.array_equal(depth, depth2)
    fx, fy, cx, cy = intrinsics(size)
    v = size[0] - 1
    u = int(cx)
    # the bottom-centre pixel sees the road (y = +CAM_HEIGHT below the camera): z = h * fy / (v - cy)
    assert depth[v, u] == pytest.approx(CAM_HEIGHT * fy / (v - cy), rel=1e-6)


def test_lidar_pattern_has_beam_rows():
    size = (375, 1242)
    depth = np.full(size, 20.0, np.float32)
    gt = lidar_gt(depth, size, np.random.default_rng(0))
    # centre column: one return per beam whose elevation is in view (+2 deg .. -15.6 deg: 42 beams),
    # 10% dropped; beams 0.43 deg = ~5.4 px apart
    rows = np.where(gt[:, 609] > 0)[0]
    assert 32 <= len(rows) <= 42
    assert np.diff(rows).min() >= 4
    assert np.abs(gt[gt > 0] - 20).max() < 0.15


def test_dataset_reads_synthetic_tree(tree):
    out, _ = tree
    ds = KittiDepthDataset(read_split(out / "splits" / "train_files_with_gt.txt"), out / "raw",
                           out / "data_depth_annotated", augment=None)
    assert len(ds) == 3
    with pytest.raises(DataError, match="smaller than the 352x1216 KB crop"):
        ds[0]
    ds = KittiDepthDataset(read_split(out / "splits" / "train_files_with_gt.txt"), out / "raw",
                           out / "data_depth_annotated", augment=Augment.none(kb_crop=False))
    item = ds[0]
    assert item["image"].shape == (3, *SIZE) and item["depth"].shape == SIZE


def test_synth_rejects_too_few_frames(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        synth(tmp_path, drives=2, frames=8, size=SIZE)
