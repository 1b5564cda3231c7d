import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import fastdpt
from conftest import TINY, TINY_EFF
from fastdpt.cli import app
from fastdpt.presets import get_config
from fastdpt.errors import ImageError
from fastdpt.io import read_image
from fastdpt.predict import Predictor
from fastdpt.transforms import network_size
from fastdpt.weights import save_checkpoint

runner = CliRunner()


@pytest.mark.parametrize("preset,hw,expected", [
    ("dpt-hybrid-kitti", (352, 1216), (352, 1216)),   # unchanged, as the official pipeline
    ("dpt-hybrid-midas", (384, 384), (384, 384)),
    ("dpt-hybrid-kitti", (375, 1242), (352, 1216)),   # scale 1216/1242 is closer to 1; 367.1 -> 352
    ("dpt-hybrid-midas", (480, 640), (384, 512)),     # scale 0.8 (closer to 1 than 0.6)
    ("dpt-hybrid-midas", (200, 300), (256, 384)),     # upscaling: 1.28 is closer to 1 than 1.92
    ("effb0.h0-1.heads1.softmax.f256.kitti@192x640", (375, 1242), (192, 640)),  # fixed size
])
def test_network_size_follows_official_rule(preset, hw, expected):
    assert network_size(*hw, get_config(preset)) == expected


def test_predictor_is_the_official_pipeline():
    model = fastdpt.create_model(TINY_EFF).eval()
    img = np.random.default_rng(0).integers(0, 256, (50, 130, 3), dtype=np.uint8)
    res = Predictor(model).predict(img)
    # reference, written out: cv2 cubic resize of [0,1] floats, (x-0.5)/0.5, model, bicubic back
    x = cv2.resize(img.astype(np.float32) / 255, (96, 64), interpolation=cv2.INTER_CUBIC)
    x = (torch.from_numpy(x).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        y = model(x)
    ref = F.interpolate(y[:, None], size=(50, 130), mode="bicubic", align_corners=False)[0, 0].numpy()
    assert res.depth.shape == (50, 130) and res.depth.dtype == np.float32
    np.testing.assert_allclose(res.depth, ref, rtol=1e-6, atol=1e-6)
    assert res.kind == "metric"


def test_read_image_errors(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    with pytest.raises(ImageError, match="cannot read"):
        read_image(bad)
    big = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(big)
    with pytest.raises(ImageError, match="larger than"):
        read_image(big, max_pixels=10_000)
    gray = tmp_path / "gray.png"
    Image.new("L", (20, 10), 7).save(gray)
    assert read_image(gray).shape == (10, 20, 3)


def test_cli_predict_writes_png_and_npy(tmp_path):
    model = fastdpt.create_model(TINY).eval()
    ckpt = save_checkpoint(model, tmp_path / "tiny.safetensors")
    imgs = []
    for i, size in enumerate([(70, 90), (40, 120)]):
        arr = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
        p = tmp_path / f"frame{i}.png"
        Image.fromarray(arr).save(p)
        imgs.append((p, arr))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(imgs[0][0]), str(corrupt), str(imgs[1][0]), "--model", str(ckpt),
                            "--outdir", str(out), "--save-npy"])
    assert r.exit_code == 1, r.output  # one file skipped, the others done
    assert "corrupt.jpg" in r.output
    pred = Predictor(fastdpt.load(ckpt))
    for p, arr in imgs:
        depth = np.load(out / f"{p.stem}.npy")
        assert depth.dtype == np.float32 and depth.shape == arr.shape[:2]
        np.testing.assert_allclose(depth, pred.predict(arr).depth, rtol=1e-6, atol=1e-6)
        side = np.asarray(Image.open(out / f"{p.stem}.png"))
        assert side.shape == (arr.shape[0], 2 * arr.shape[1], 3) and np.array_equal(side[:, : arr.shape[1]], arr)


def test_cli_predict_without_weights_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDPT_OFFLINE", "1")
    monkeypatch.setenv("FASTDPT_CACHE", str(tmp_path))
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(img)
    r = runner.invoke(app, ["predict", str(img), "--model", "dpt-hybrid-kitti", "--outdir", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "dpt_hybrid_kitti-cb926ef4.pt" in r.output and "--weights" in r.output
    assert not (tmp_path / "o").exists()


def test_cli_models_lists_presets(tmp_path):
    r = runner.invoke(app, ["models", "official", "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "m.json").read_text())
    assert [x["name"] for x in rows] == ["dpt-hybrid-midas", "dpt-hybrid-kitti", "dpt-hybrid-nyu"]
    assert all(x["params"] == 121_196_289 for x in rows)


def test_cli_bench_json(tmp_path):
    names = [TINY.name, TINY_EFF.name]
    r = runner.invoke(app, ["bench", *names, "--input-size", "64x96", "--threads", "1", "--runs", "2",
                            "--warmup", "1", "--batch-size", "2", "--baseline", TINY.name,
                            "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "b.json").read_text())
    rows = data["rows"]
    assert [x["name"] for x in rows] == names
    for row in rows:
        for key in ("name", "input_size", "params", "macs", "latency_ms_median", "fps", "throughput",
                    "batch_size", "threads", "device"):
            assert key in row
        assert row["threads"] == 1 and row["batch_size"] == 2 and row["input_size"] == "64x96"
        assert row["fps"] == pytest.approx(1000 / row["latency_ms_median"], rel=1e-2)
        assert row["params"] == sum(p.numel() for p in fastdpt.create_model(row["name"]).parameters())
    assert rows[0]["speedup"] == 1.0
    assert data["environment"]["torch"] == torch.__version__


def test_macs_count_against_hand_formula():
    """Transformer-block MACs at 481 tokens, from the formula, against the counter's difference
    between models with 2 and 3 blocks (REFERENCE: ~3.8 GMAC per ViT-B block at 192x640)."""
    from fastdpt.bench import count_macs
    from fastdpt.config import ModelConfig

    a = count_macs(ModelConfig(hooks=(0, 1), input_size=(192, 640)), (192, 640))
    b = count_macs(ModelConfig(hooks=(0, 2), input_size=(192, 640)), (192, 640))
    n, d = 481, 768
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * 4 * d
    assert b - a == block
    assert 3.5e9 < block < 4.0e9


def test_cli_bad_input_size():
    r = runner.invoke(app, ["bench", TINY.name, "--input-size", "big"])
    assert r.exit_code != 0 and "HxW" in r.output


@pytest.mark.parametrize("name", ["effb0.h2-5.heads24.performer.f64.kitti@192x640", "r50.h0-1.heads1.softmax.f32@64x96",
                                  "fast-effb0-f64-128x416"])
def test_config_params_equals_a_real_build(name):
    from fastdpt.bench import config_params

    assert config_params(get_config(name)) == sum(p.numel() for p in fastdpt.create_model(name).parameters())


def test_bench_variant_leaves_no_process_wide_changes():
    from fastdpt.bench import bench_variant

    torch.set_num_threads(2)
    cudnn = torch.backends.cudnn.benchmark
    row = bench_variant(TINY.name, (64, 96), runs=1, warmup=0, threads=1)
    assert row.threads == 1
    assert torch.get_num_threads() == 2 and torch.backends.cudnn.benchmark == cudnn
