"""Outputs never clobber inputs or each other, never follow planted links, are kept unless
--overwrite; odd images are read honestly (16-bit, float, EXIF) or refused by content."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fastdpt
from conftest import TINY
from fastdpt.cli import app
from fastdpt.errors import ImageError, ImageTooLargeError
from fastdpt.io import MAX_SIDE, output_stems, read_image
from fastdpt.weights import save_checkpoint

runner = CliRunner()
METRIC = TINY.replace(metric=(0.01, 0.0125))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(fastdpt.create_model(METRIC), tmp_path_factory.mktemp("m") / "m.safetensors")


def _img(path, seed=0, size=(40, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args)])


def test_output_never_replaces_its_input(tmp_path, ckpt):
    d = tmp_path / "d"
    _img(d / "x.png")
    before = (d / "x.png").read_bytes()
    r = _predict(d / "x.png", "-m", ckpt, "-o", d)
    assert r.exit_code == 1 and "would overwrite an input" in r.output
    assert (d / "x.png").read_bytes() == before
    r = _predict(d / "x.png", "-m", ckpt, "-o", d, "-f", "npy")  # other formats beside the input are fine
    assert r.exit_code == 0 and (d / "x.npy").is_file()


def test_colliding_stems_get_unique_outputs(tmp_path, ckpt):
    src = tmp_path / "src"
    a = _img(src / "a" / "y.png", 1)
    b = _img(src / "b" / "y.png", 2)
    _img(src / "x.png", 3)
    _img(src / "x.jpg", 4)
    out = tmp_path / "out"
    r = _predict(src, "-m", ckpt, "-o", out, "-f", "npy")
    assert r.exit_code == 0, r.output
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert got == ["a/y.npy", "b/y.npy", "x_jpg.npy", "x_png.npy"]
    pred = fastdpt.Predictor(fastdpt.load(ckpt))
    np.testing.assert_allclose(np.load(out / "a" / "y.npy"), pred.predict(a).depth, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.load(out / "b" / "y.npy"), pred.predict(b).depth, rtol=1e-6, atol=1e-6)
    assert output_stems([src / "a" / "y.png"]) == {src / "a" / "y.png": "y"}  # one file: just its name


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, ckpt):
    _img(tmp_path / "f.png")
    out = tmp_path / "out"
    assert _predict(tmp_path / "f.png", "-m", ckpt, "-o", out, "-f", "npy").exit_code == 0
    (out / "f.npy").write_bytes(b"mine")
    r = _predict(tmp_path / "f.png", "-m", ckpt, "-o", out, "-f", "npy")
    assert r.exit_code == 0 and "kept" in r.output and (out / "f.npy").read_bytes() == b"mine"
    r = _predict(tmp_path / "f.png", "-m", ckpt, "-o", out, "-f", "npy", "-f", "pfm")  # only the missing one
    assert r.exit_code == 0 and (out / "f.npy").read_bytes() == b"mine" and (out / "f.pfm").is_file()
    r = _predict(tmp_path / "f.png", "-m", ckpt, "-o", out, "-f", "npy", "--overwrite")
    assert r.exit_code == 0 and np.load(out / "f.npy").shape == (40, 60)


def test_planted_links_are_never_followed(tmp_path, ckpt):
    _img(tmp_path / "z.png")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, out / "z.npy.part")  # the temporary name the first version used
    r = _predict(tmp_path / "z.png", "-m", ckpt, "-o", out, "-f", "npy")
    assert r.exit_code == 0 and victim.read_text() == "precious" and np.load(out / "z.npy").shape == (40, 60)
    (out / "z.npy").unlink()
    os.symlink(victim, out / "z.npy")  # a link at the final name is replaced, not written through
    r = _predict(tmp_path / "z.png", "-m", ckpt, "-o", out, "-f", "npy", "--overwrite")
    assert r.exit_code == 0 and victim.read_text() == "precious" and not (out / "z.npy").is_symlink()


def test_one_bad_file_is_one_line_and_the_batch_goes_on(tmp_path, ckpt):
    src = tmp_path / "src"
    _img(src / "a.png")
    Image.new("L", (MAX_SIDE + 1, 1)).save(src / "b.png")  # too wide to write back as PNG
    _img(src / "c.png", 5)
    out = tmp_path / "out"
    r = _predict(src, "-m", ckpt, "-o", out, "-f", "png16")
    assert r.exit_code == 1 and "b.png" in r.output and "side longer than" in r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in out.iterdir()) == ["a_depth16.png", "c_depth16.png"]  # no .part left


def test_bad_output_folder_fails_before_any_work(tmp_path, ckpt):
    _img(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "sub"):
        r = _predict(tmp_path / "a.png", "-m", ckpt, "-o", target)
        assert r.exit_code == 2 and "is a file" in r.output and "Traceback" not in r.output
    r = _predict(tmp_path / "a.png", "-m", ckpt, "-o", tmp_path / "o", "-f", "ply")
    assert r.exit_code == 2 and "focal" in r.output and not (tmp_path / "o").exists()
    r = _predict(tmp_path / "a.png", "-m", ckpt, "-o", tmp_path / "o", "-f", "tiff")
    assert r.exit_code == 2 and "unknown output formats" in r.output


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 40).reshape(40, 64).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), ramp)
    img = read_image(tmp_path / "g16.png")
    assert img.shape == (40, 64, 3) and img.dtype == np.uint8
    np.testing.assert_allclose(img[..., 0], np.round(ramp / 257.0), atol=1)
    assert img.max() == 255 and len(np.unique(img)) > 200  # the old conversion saturated at 255 from 256 up
    f = np.linspace(0, 1, 64 * 40, dtype=np.float32).reshape(40, 64)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(read_image(tmp_path / "f.tif")[..., 1], np.round(f * 255), atol=1)
    Image.fromarray(f * 1000 - 5, mode="F").save(tmp_path / "big.tif")  # outside [0, 1]: min-max
    np.testing.assert_allclose(read_image(tmp_path / "big.tif")[..., 2], np.round(f * 255), atol=1)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 50, 3), np.uint8)
    arr[:, :10] = 255  # a white band on the left
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    got = read_image(tmp_path / "r.jpg")
    assert got.shape == (50, 20, 3) and got[:10].mean() > 200  # the band is now at the top


def test_formats_outside_the_allowlist_are_refused_by_content(tmp_path):
    svg = tmp_path / "drawing.png"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    with pytest.raises(ImageError, match="not a PNG/JPEG"):
        read_image(svg)
    eps = tmp_path / "doc.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="not a PNG/JPEG"):
        read_image(eps)
    gif = tmp_path / "a.gif"
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    with pytest.raises(ImageError, match="not a PNG/JPEG"):
        read_image(gif)
    Image.new("1", (6000, 5000)).save(tmp_path / "bomb.png")  # small file, 30 MP declared
    with pytest.raises(ImageTooLargeError, match="larger than the limit"):
        read_image(tmp_path / "bomb.png")


def test_data_synth_warm_start_and_export_never_overwrite_silently(tmp_path, ckpt, official_sd):
    import torch

    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--drives", "2", "--frames", "12",
                            "--size", "64x192", "--workers", "1"])
    assert r.exit_code == 0, r.output
    split = (tmp_path / "d" / "splits" / "test_files_with_gt.txt").read_bytes()
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--drives", "3", "--frames", "12",
                            "--size", "64x192", "--workers", "1"])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (tmp_path / "d" / "splits" / "test_files_with_gt.txt").read_bytes() == split
    init = tmp_path / "official.pt"
    torch.save(official_sd, init)
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"precious")
    r = runner.invoke(app, ["warm-start", "effb0.h0-1.heads12.softmax.f32.kitti@64x192", "--init", str(init),
                            "-o", str(target)])
    assert r.exit_code == 2 and "--overwrite" in r.output and target.read_bytes() == b"precious"
    onnx_out = tmp_path / "e.onnx"
    onnx_out.write_bytes(b"precious")
    r = runner.invoke(app, ["export", str(ckpt), "-o", str(onnx_out)])
    assert r.exit_code == 2 and "--overwrite" in r.output and onnx_out.read_bytes() == b"precious"


def test_outputs_get_the_umask_without_the_process_umask_ever_changing(tmp_path, monkeypatch):
    """Atomic writes and the video sink leave files as 0o666 less the umask, as open() would, without
    setting the process umask to 0 (another thread creating files in that window made them world-writable)."""
    from fastdpt.io import write_text
    from fastdpt.stream import VideoSink

    calls = []
    real = os.umask
    old = real(0o027)  # a umask that differs from the usual, so the expected modes are not an accident
    try:
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
        write_text(tmp_path / "a.json", "{}")
        sink = VideoSink(tmp_path / "v.mp4", 10.0, side_by_side=False, codec="mp4v")
        sink.write(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8))
        sink.close()
    finally:
        monkeypatch.undo()
        real(old)
    assert calls == []
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "v.mp4").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "v.mp4"]  # no temporary left behind
