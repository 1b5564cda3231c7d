import json

import pytest
from typer.testing import CliRunner

import fastdpt
from fastdpt.cli import app
from fastdpt.data.kitti import read_split
from fastdpt.io import read_depth_png
from fastdpt.weights import save_checkpoint

runner = CliRunner()
METRIC = "effb0.h0-1.heads4.softmax.f32.m0.01_0.0125@64x192"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("d")
    r = runner.invoke(app, ["data", "synth", "--out", str(root / "synth"), "--drives", "2", "--frames", "12",
                            "--size", "96x320", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "24 frames (4 annotated)" in r.output
    return root


def test_data_check_cli(tree, tmp_path):
    d = tree / "synth"
    split = d / "splits" / "test_files.txt"
    r = runner.invoke(app, ["data", "check", "--raw-root", str(d / "raw"), "--gt-root", str(d / "data_depth_annotated"),
                            "--split-file", str(split), "--write-filtered", str(tmp_path), "--json", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "c.json").read_text())
    assert row == {"split": "test_files", "listed": 12, "images_missing": 0, "annotations_missing": 10, "usable": 2}
    filtered = read_split(tmp_path / "test_files_filtered.txt")
    assert [int(e.rgb[-8:-4]) for e in filtered] == [5, 6]
    r = runner.invoke(app, ["data", "check", "--raw-root", str(d / "raw"), "--gt-root", str(d), "--split-file",
                            str(tmp_path / "nope.txt")])
    assert r.exit_code == 2 and "split file not found" in r.output


def test_eval_then_eval_pngs_agree(tree, tmp_path):
    d = tree / "synth"
    ckpt = save_checkpoint(fastdpt.create_model(METRIC), tmp_path / "m.safetensors")
    pngs = tmp_path / "pred"
    r = runner.invoke(app, ["eval", "--weights", str(ckpt), "--data-root", str(d), "--garg-crop",
                            "--save-png", str(pngs), "--json", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["images"] == 2 and a["skipped"] == 10 and a["fps"] > 0
    names = sorted(p.name for p in pngs.iterdir())
    assert names == [f"2000_01_01_2000_01_01_drive_0002_sync_image_02_data_{i:010d}.png" for i in (5, 6)]
    assert read_depth_png(pngs / names[0]).shape == (96, 320)
    r = runner.invoke(app, ["eval-pngs", "--pred-dir", str(pngs), "--gt-root", str(d / "data_depth_annotated"),
                            "--split-file", str(d / "splits" / "test_files_with_gt.txt"), "--garg-crop",
                            "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    b = json.loads((tmp_path / "b.json").read_text())
    for k in ("d1", "abs_rel", "rmse", "silog"):
        assert b[k] == pytest.approx(a[k], rel=2e-3, abs=1e-4)  # PNGs hold depth to 1/256 m
    (pngs / names[0]).unlink()
    r = runner.invoke(app, ["eval-pngs", "--pred-dir", str(pngs), "--gt-root", str(d / "data_depth_annotated"),
                            "--split-file", str(d / "splits" / "test_files_with_gt.txt")])
    assert r.exit_code == 2 and "predictions missing" in r.output


def test_eval_refuses_relative_models(tree, tmp_path):
    ckpt = save_checkpoint(fastdpt.create_model("effb0.h0-1.heads4.softmax.f32@64x192"), tmp_path / "r.safetensors")
    r = runner.invoke(app, ["eval", "--weights", str(ckpt), "--data-root", str(tree / "synth")])
    assert r.exit_code == 2 and "relative depth" in r.output


def test_crop_flags_are_exclusive(tree, tmp_path):
    # everything else valid (the same command with one crop flag scores), so only the two flags can refuse it
    d = tree / "synth"
    ckpt = save_checkpoint(fastdpt.create_model(METRIC), tmp_path / "m.safetensors")
    r = runner.invoke(app, ["eval", "--weights", str(ckpt), "--data-root", str(d), "--save-png", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    args = ["eval-pngs", "--pred-dir", str(tmp_path / "p"), "--gt-root", str(d / "data_depth_annotated"),
            "--split-file", str(d / "splits" / "test_files_with_gt.txt"), "--garg-crop"]
    assert runner.invoke(app, args).exit_code == 0
    r = runner.invoke(app, [*args, "--eigen-crop"])
    assert r.exit_code == 2 and "choose one of --garg-crop, --eigen-crop and --no-crop" in r.output
