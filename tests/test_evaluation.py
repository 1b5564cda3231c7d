import math

import numpy as np
import pytest

from fastdpt.data.kitti import apply_kb_crop, kb_uncrop
from fastdpt.evaluation import METRIC_KEYS, MetricAverager, compute_errors, crop_mask, score_image


def numpy_reference(gt, pred):
    """The nine metrics, written from their formulas with plain NumPy."""
    gt, pred = gt.astype(np.float64), pred.astype(np.float64)
    thresh = np.maximum(gt / pred, pred / gt)
    e = np.log(pred) - np.log(gt)
    return {
        "d1": np.mean(thresh < 1.25), "d2": np.mean(thresh < 1.25**2), "d3": np.mean(thresh < 1.25**3),
        "abs_rel": np.mean(np.abs(gt - pred) / gt), "sq_rel": np.mean((gt - pred) ** 2 / gt),
        "rmse": np.sqrt(np.mean((gt - pred) ** 2)), "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
        "silog": 100 * np.sqrt(np.mean(e**2) - np.mean(e) ** 2),
        "log10": np.mean(np.abs(np.log10(pred) - np.log10(gt))),
    }


def test_metrics_match_numpy_reference():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 80, 5000)
    pred = gt * rng.lognormal(0, 0.2, 5000)
    ours, ref = compute_errors(gt, pred), numpy_reference(gt, pred)
    for k in METRIC_KEYS:
        assert ours[k] == pytest.approx(ref[k], rel=1e-10), k
    assert 0 < ours["d1"] < 1 and ours["silog"] > 0


def test_perfect_prediction():
    gt = np.linspace(1, 70, 100)
    m = compute_errors(gt, gt.copy())
    assert m["d1"] == 1 and m["abs_rel"] == 0 and m["rmse"] == 0 and m["silog"] == 0


@pytest.mark.parametrize("h,w", [(375, 1242), (376, 1241), (370, 1224), (374, 1238), (101, 333)])
def test_crops_on_odd_sizes(h, w):
    g = crop_mask(h, w, "garg")
    rows, cols = np.where(g)
    assert rows.min() == int(0.40810811 * h) and rows.max() == int(0.99189189 * h) - 1
    assert cols.min() == int(0.03594771 * w) and cols.max() == int(0.96405229 * w) - 1
    e = crop_mask(h, w, "eigen")
    rows, _ = np.where(e)
    assert rows.min() == int(0.3324324 * h) and rows.max() == int(0.91351351 * h) - 1
    assert crop_mask(h, w, None).all()


@pytest.mark.parametrize("h,w", [(375, 1242), (376, 1241), (370, 1224)])
def test_kb_crop_round_trip(h, w):
    img = np.arange(h * w, dtype=np.float32).reshape(h, w)
    crop = apply_kb_crop(img)
    assert crop.shape == (352, 1216)
    top, left = h - 352, (w - 1216) // 2
    assert crop[0, 0] == img[top, left] and crop[-1, -1] == img[h - 1, left + 1215]
    full = kb_uncrop(crop, h, w)
    assert (full[top:, left:left + 1216] == crop).all() and full[:top].sum() == 0 and full[:, :left].sum() == 0


def test_score_image_clips_and_masks():
    rng = np.random.default_rng(1)
    h, w = 375, 1242
    gt = np.where(rng.random((h, w)) < 0.2, rng.uniform(0.5, 100, (h, w)), 0).astype(np.float32)
    pred = rng.uniform(0.0, 120, (h, w)).astype(np.float32)
    pred[5, 5], pred[200, 600], pred[300, 700] = np.inf, np.nan, -3
    got = score_image(pred, gt, crop="garg")
    # reference: clip, inf -> 80, nan -> 1e-3, valid 1e-3 < gt < 80, Garg crop
    p = np.clip(np.nan_to_num(pred, nan=1e-3, posinf=80), 1e-3, 80)
    valid = (gt > 1e-3) & (gt < 80) & crop_mask(h, w, "garg")
    ref = numpy_reference(gt[valid], p[valid])
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(ref[k], rel=1e-9)
    assert score_image(pred, np.zeros_like(gt)) is None


def test_kb_cropped_prediction_scored_on_full_gt():
    h, w = 376, 1241
    gt = np.full((h, w), 10.0, np.float32)
    pred = np.full((352, 1216), 10.0, np.float32)
    m = score_image(pred, gt, crop="garg", kb_cropped=True)
    assert m["abs_rel"] == 0  # the Garg crop lies inside the KB crop
    m = score_image(pred, gt, crop=None, kb_cropped=True)
    assert m["abs_rel"] > 0  # outside the KB crop the canvas is 0 -> clipped to 1e-3


def test_averager_is_mean_over_images():
    avg = MetricAverager()
    a = compute_errors(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    b = compute_errors(np.array([1.0] * 10), np.array([2.0] * 10))
    avg.add(a), avg.add(b), avg.add(None)
    assert avg.count == 2 and avg.result()["abs_rel"] == pytest.approx((0 + 1) / 2)
    assert math.isnan(MetricAverager().result()["rmse"])


def test_alignment_recovers_depth_from_affine_inverse_depth():
    """The relative-model protocol: a prediction that is any positive affine map of 1/GT scores perfectly."""
    rng = np.random.default_rng(0)
    gt = np.zeros((40, 60), np.float32)
    mask = rng.random(gt.shape) < 0.3
    gt[mask] = rng.uniform(2, 70, mask.sum())
    dense = rng.uniform(2, 70, gt.shape).astype(np.float32)
    dense[mask] = gt[mask]
    pred_inv = 3.7 / dense + 0.25  # relative inverse depth, unknown scale and shift
    m = score_image(pred_inv, gt, crop=None, align=True)
    assert m["abs_rel"] < 1e-5 and m["d1"] == 1.0
    unaligned = score_image(pred_inv, gt, crop=None)
    assert unaligned["abs_rel"] > 0.5
