"""The one pre/post-processing path: both resizers against OpenCV and each other, every input form,
batches, normalisation from the config, and the Predictor built on it."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastdpt
from conftest import TINY, TINY_EFF
from fastdpt.config import ModelConfig, NORMALIZATIONS
from fastdpt.data.synthetic import sample_frames
from fastdpt.errors import ConfigError, ImageError
from fastdpt.predict import Predictor
from fastdpt.transforms import Transforms


def official(img_u8: np.ndarray, size, mean=(0.5,) * 3, std=(0.5,) * 3) -> torch.Tensor:
    """The official DPT input path written out: cv2 INTER_CUBIC on [0, 1] floats, then normalise."""
    x = cv2.resize(img_u8.astype(np.float32) / 255, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(x).permute(2, 0, 1)[None]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def frames():
    return sample_frames(3, (375, 1242))


def test_cv2_resizer_is_the_official_pipeline(frames):
    cfg = fastdpt.get_config("fast-effb0-f64-192x640")
    x = Transforms(cfg, resize="cv2").preprocess(frames[0])
    torch.testing.assert_close(x, official(frames[0], (192, 640)), rtol=0, atol=0)


def test_torch_resizer_matches_opencv_within_the_stated_tolerance(frames):
    """The device-side resizer (float32 torch bicubic) vs OpenCV: at most 1.6e-4 on [0, 1] images,
    i.e. 3.2e-4 after (x - 0.5) / 0.5 (the module docstring states it); in float64 torch agrees to 1e-6."""
    for size in [(352, 1216), (192, 640), (128, 416)]:
        cfg = ModelConfig(backbone="effb0", hooks=(0, 1), input_size=size)
        for f in frames:
            a = Transforms(cfg, resize="cv2").preprocess(f)
            b = Transforms(cfg, resize="torch").preprocess(f)
            assert a.shape == b.shape == (1, 3, *size)
            assert (a - b).abs().max() < 3.3e-4
    x = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].double() / 255
    ref = cv2.resize(frames[0].astype(np.float32) / 255, (1216, 352), interpolation=cv2.INTER_CUBIC)
    f64 = F.interpolate(x, size=(352, 1216), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(f64 - ref).max() < 1e-6  # the float32 difference is torch's arithmetic, not another kernel


@pytest.mark.slow
def test_resizers_give_the_same_depth_on_official_weights(official_sd):
    """Depth from the official-layout checkpoint with each resizer: the input difference above moves
    the output by less than 1e-3 relative (keep-aspect DPT-Hybrid, 200x300 -> 256x384)."""
    model = fastdpt.create_model("dpt-hybrid-midas")
    fastdpt.weights.load_weights(model, official_sd)
    model.eval()
    img = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    with torch.no_grad():
        a = Transforms(model.config, resize="cv2")(model, img)
        b = Transforms(model.config, resize="torch")(model, img)
    assert a.shape == (1, 200, 300)
    assert ((a - b).abs().max() / a.abs().max()) < 1e-3


@pytest.mark.parametrize("resize", ["cv2", "torch"])
def test_every_input_form_gives_the_same_network_input(resize):
    img = np.random.default_rng(0).integers(0, 256, (50, 130, 3), dtype=np.uint8)
    t = Transforms(TINY, resize=resize)
    ref = t.preprocess(img)
    as_float = img.astype(np.float32) / 255
    forms = [img[None], [img], torch.from_numpy(img), torch.from_numpy(img)[None], as_float,
             torch.from_numpy(as_float).permute(2, 0, 1), torch.from_numpy(as_float).permute(2, 0, 1)[None]]
    for form in forms:
        torch.testing.assert_close(t.preprocess(form), ref, rtol=0, atol=1e-7)


def test_postprocess_is_bicubic_back_to_the_frame():
    y = torch.rand(2, 64, 96)
    got = Transforms(TINY).postprocess(y, (50, 130))
    ref = F.interpolate(y[:, None], size=(50, 130), mode="bicubic", align_corners=False)[:, 0]
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(Transforms(TINY).postprocess(y, (64, 96)), y, rtol=0, atol=0)  # no resize needed


def test_normalisation_comes_from_the_config():
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mean, std = NORMALIZATIONS["imagenet"]
    cfg = TINY.replace(norm="imagenet")
    assert cfg.name.endswith(".imagenet@64x96") and ModelConfig.from_name(cfg.name) == cfg
    torch.testing.assert_close(Transforms(cfg).preprocess(img), official(img, (64, 96), mean, std), rtol=0, atol=1e-6)
    torch.testing.assert_close(Transforms(TINY).preprocess(img), official(img, (64, 96)), rtol=0, atol=0)


def test_bad_inputs_are_clear_errors():
    t = Transforms(TINY)
    with pytest.raises(ImageError, match="H x W x 3"):
        t.preprocess(np.zeros((10, 10), np.uint8))
    with pytest.raises(ImageError, match="one size"):
        t.preprocess([np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8)])
    with pytest.raises(ConfigError, match="resize"):
        Transforms(TINY, resize="lanczos")


def test_predict_many_batches_equal_sizes_and_keeps_order():
    pred = Predictor(fastdpt.create_model(TINY_EFF).eval())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(50, 80, 3)] * 3 + [(40, 60, 3)] + [(50, 80, 3)] * 2]
    one_by_one = [pred.predict(im).depth for im in images]
    calls = []
    real = pred.backend.__call__

    def spy(x):
        calls.append(x.shape[0])
        return real(x)

    pred.backend = type("Spy", (), {"__call__": staticmethod(spy), "close": lambda self: None})()
    batched = pred.predict_many(images)
    assert calls == [3, 1, 2]  # runs of equal size go through as one batch each
    assert [r.depth.shape for r in batched] == [im.shape[:2] for im in images]
    for a, b in zip(batched, one_by_one):
        np.testing.assert_allclose(a.depth, b, rtol=1e-5, atol=1e-6)
