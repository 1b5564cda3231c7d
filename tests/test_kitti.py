import hashlib
import shutil

import cv2
import numpy as np
import pytest
import torch

from conftest import SPLITS_DIR, needs_splits
from fastdpt.data.augment import Augment
from fastdpt.data.kitti import (SPLITS, KittiDepthDataset, SplitEntry, calib_focal, check_split, find_gt, parse_split_line,
                                read_focal, read_split, split_path, write_split)
from fastdpt.errors import DataError
from fastdpt.io import read_depth_png, write_depth_png


@needs_splits
def test_split_files_parse_in_both_formats():
    md2 = read_split(SPLITS_DIR / "eigen_test_files.txt")
    bts = read_split(SPLITS_DIR / "kitti_eigen_test_files_with_gt.txt")
    assert len(md2) == 697 and len(bts) == 697
    assert sum(e.gt is None for e in bts) == 45
    # the BTS-format test order equals the monodepth2 order, line for line
    assert [e.rgb for e in md2] == [e.rgb for e in bts]
    assert len(read_split(SPLITS_DIR / "eigen_full_train_files.txt")) == 45200
    assert len(read_split(SPLITS_DIR / "eigen_full_val_files.txt")) == 1776
    train_bts = read_split(SPLITS_DIR / "kitti_eigen_train_files_with_gt.txt")
    assert len(train_bts) == 23158 and all(e.camera == "2" and e.focal for e in train_bts)


def test_monodepth2_line_to_paths():
    e = parse_split_line("2011_10_03/2011_10_03_drive_0034_sync 1757 r")
    assert e.rgb == "2011_10_03/2011_10_03_drive_0034_sync/image_03/data/0000001757.png"
    assert e.gt == "2011_10_03_drive_0034_sync/proj_depth/groundtruth/image_03/0000001757.png"
    assert e.frame_id == "2011_10_03_2011_10_03_drive_0034_sync_image_03_data_0000001757"
    with pytest.raises(DataError):
        parse_split_line("what is this")


@needs_splits
def test_named_splits_come_from_a_verified_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDPT_OFFLINE", "1")
    with pytest.raises(DataError, match="not cached"):
        split_path("eigen_test", cache=tmp_path)
    (tmp_path / "splits").mkdir()
    shutil.copy(SPLITS_DIR / "eigen_test_files.txt", tmp_path / "splits" / "eigen_test.txt")
    assert split_path("eigen_test", cache=tmp_path).read_bytes() == (SPLITS_DIR / "eigen_test_files.txt").read_bytes()
    (tmp_path / "splits" / "eigen_full_val.txt").write_text("tampered\n")
    with pytest.raises(DataError, match="sha256"):
        split_path("eigen_full_val", cache=tmp_path)
    sums = dict(line.split()[::-1] for line in (SPLITS_DIR / "SHA256SUMS").read_text().splitlines())
    for name, fname in [("eigen_full_train", "eigen_full_train_files.txt"), ("eigen_test", "eigen_test_files.txt"),
                        ("eigen_test_with_gt", "kitti_eigen_test_files_with_gt.txt")]:
        assert SPLITS[name].sha256 == sums[fname] == hashlib.sha256((SPLITS_DIR / fname).read_bytes()).hexdigest()


def _fake_tree(root, entries, size=(375, 1242), gt_folder="train", seed=0):
    rng = np.random.default_rng(seed)
    for e in entries:
        img = root / "raw" / e.rgb
        img.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        if e.gt:
            gt = np.where(rng.random(size) < 0.1, rng.uniform(1, 80, size), 0)
            write_depth_png(root / "gt" / gt_folder / e.gt, gt)
    dates = {e.date for e in entries}
    for d in dates:
        (root / "raw" / d / "calib_cam_to_cam.txt").write_text(
            "P_rect_02: 7.215377e+02 0 6.095593e+02 4.485728e+01 0 7.215377e+02 1.728540e+02 2.163791e-01 0 0 1 2.745884e-03\n"
            "P_rect_03: 7.0e+02 0 6.0e+02 0 0 7.0e+02 1.7e+02 0 0 0 1 0\n")


@needs_splits
def test_split_check_counts_missing_files(tmp_path):
    entries = read_split(SPLITS_DIR / "eigen_test_files.txt")[:30]
    _fake_tree(tmp_path, entries, size=(40, 60))
    for e in entries[:4]:
        (tmp_path / "raw" / e.rgb).unlink()
    for e in entries[2:9]:
        (tmp_path / "gt" / "train" / e.gt).unlink()
    res = check_split("eigen_test", entries, tmp_path / "raw", tmp_path / "gt")
    assert res.row() == {"split": "eigen_test", "listed": 30, "images_missing": 4, "annotations_missing": 7,
                         "usable": 30 - 9}
    out = write_split(res.usable, tmp_path / "filtered.txt", "monodepth2")
    assert [e.rgb for e in read_split(out)] == [e.rgb for e in entries[9:]]


def test_depth_png_round_trip_and_gt_lookup(tmp_path):
    d = np.array([[0, 1.5, 80.0], [12.34, np.nan, np.inf]])
    write_depth_png(tmp_path / "val" / "x.png", d)
    back = read_depth_png(tmp_path / "val" / "x.png")
    np.testing.assert_allclose(back, [[0, 1.5, 80.0], [round(12.34 * 256) / 256, 0, 0]])
    assert find_gt(tmp_path, "x.png") == tmp_path / "val" / "x.png"
    assert find_gt(tmp_path, "y.png") is None and find_gt(tmp_path, None) is None
    bad = tmp_path / "rgb.png"
    cv2.imwrite(str(bad), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="16-bit"):
        read_depth_png(bad)


def test_dataset_items_and_flip_alignment(tmp_path):
    entries = [SplitEntry(f"2011_09_26/2011_09_26_drive_0001_sync/image_02/data/{i:010d}.png",
                          f"2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/{i:010d}.png") for i in range(3)]
    _fake_tree(tmp_path, entries)
    plain = KittiDepthDataset(entries, tmp_path / "raw", tmp_path / "gt", Augment.none(kb_crop=True))
    assert read_focal(tmp_path / "raw", "2011_09_26") == pytest.approx(721.5377)
    calib = tmp_path / "raw" / "2011_09_26" / "calib_cam_to_cam.txt"
    assert calib_focal(calib, "3") == pytest.approx(700.0)  # what `predict --calib` reads
    with pytest.raises(DataError, match="calibration not found"):
        calib_focal(tmp_path / "nope.txt")
    item = plain[0]
    assert item["image"].shape == (3, 352, 1216) and item["depth"].shape == (352, 1216)
    assert torch.equal(item["mask"], item["depth"] > 0) and item["focal"].item() == pytest.approx(721.5377)
    flipped = KittiDepthDataset(entries, tmp_path / "raw", tmp_path / "gt", Augment(hflip=1.0), train=True)
    f = flipped[0]
    assert torch.equal(f["image"], plain[0]["image"].flip(-1)) and torch.equal(f["depth"], plain[0]["depth"].flip(-1))
    # random crops move image and depth together
    cropper = KittiDepthDataset(entries, tmp_path / "raw", tmp_path / "gt",
                                Augment(hflip=0.0, random_crop=(64, 96), rotate_deg=0.0), train=True)
    torch.manual_seed(3)
    c = cropper[1]
    full = plain[1]
    res = cv2.matchTemplate(full["image"][0].numpy(), c["image"][0].numpy(), cv2.TM_SQDIFF)
    left, top = cv2.minMaxLoc(res)[2]
    assert torch.equal(full["image"][:, top:top + 64, left:left + 96], c["image"])
    assert torch.equal(full["depth"][top:top + 64, left:left + 96], c["depth"])
    with pytest.raises(DataError, match="no usable frame"):
        KittiDepthDataset(entries, tmp_path / "raw", tmp_path / "nowhere")
