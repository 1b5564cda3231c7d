import math

import pytest
import torch

from fastdpt.losses import silog_loss, ssi_gradient_loss


def test_silog_matches_formula_per_image():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 8, 10, generator=g) * 50 + 1
    gt[0, :3] = 0  # invalid pixels
    pred = torch.rand(2, 8, 10, generator=g) * 50 + 1
    lam = 0.5
    expected = []
    for b in range(2):
        m = gt[b] > 0
        d = torch.log(pred[b][m]) - torch.log(gt[b][m])
        expected.append((d**2).mean() - lam * d.mean() ** 2)
    torch.testing.assert_close(silog_loss(pred, gt, lam=lam), torch.stack(expected).mean())


def test_silog_scale_invariant_at_lambda_one():
    gt = torch.rand(1, 16, 16) * 40 + 1
    pred = gt * torch.exp(torch.randn(1, 16, 16) * 0.1)
    base = silog_loss(pred, gt, lam=1.0)
    for s in (0.1, 3.0, 100.0):
        torch.testing.assert_close(silog_loss(pred * s, gt, lam=1.0), base, atol=1e-5, rtol=1e-4)
    assert not math.isclose(silog_loss(pred * 3, gt, lam=0.5).item(), silog_loss(pred, gt, lam=0.5).item())


def test_silog_gradients_only_through_valid_pixels_and_empty_images():
    gt = torch.zeros(2, 4, 4)
    gt[0, 0, 0], gt[0, 1, 1] = 5.0, 7.0
    pred = torch.full((2, 4, 4), 6.0, requires_grad=True)
    loss = silog_loss(pred, gt)
    loss.backward()
    nz = pred.grad.nonzero()
    assert {tuple(x) for x in nz.tolist()} <= {(0, 0, 0), (0, 1, 1)}
    empty = silog_loss(pred, torch.zeros(2, 4, 4))
    assert empty.item() == 0.0 and empty.requires_grad


def test_ssi_loss_invariant_to_scale_and_shift():
    target = torch.rand(2, 32, 32) + 0.1
    pred = target + 0.05 * torch.randn(2, 32, 32)
    base = ssi_gradient_loss(pred, target)
    torch.testing.assert_close(ssi_gradient_loss(pred * 4 + 2, target), base, rtol=1e-4, atol=1e-6)
    assert ssi_gradient_loss(target * 3 - 0.5, target).item() < 1e-6  # float32 round-off of the 2x2 solve
    assert ssi_gradient_loss(torch.rand(2, 32, 32), target) > base


def _silog_kept(pred, gt, keep_fraction, lam):
    """SILog of one image over the valid pixels left after dropping the largest |g - mean(g)|: sorted in
    NumPy, an implementation apart from the loss's kthvalue mask."""
    import numpy as np

    m = gt > 0
    g = (torch.log(pred[m]) - torch.log(gt[m])).double().numpy()
    k = int(round(keep_fraction * g.size))
    g = g[np.argsort(np.abs(g - g.mean()), kind="stable")[:k]]
    return (g**2).mean() - lam * g.mean() ** 2


def test_trim_leaves_out_each_pseudo_labels_largest_residuals_and_spares_exact_images():
    """--trim drops each image's 10 % largest residuals (Depth Anything V2: the teacher's errors); an
    image whose depth is ground truth (``exact``) keeps every pixel."""
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(3, 10, 20, generator=g) * 40 + 1
    gt[1, :2] = 0  # invalid pixels do not count towards the fraction
    pred = gt * torch.exp(0.05 * torch.randn(3, 10, 20, generator=g))
    pred[:, 4, 5:9] *= 6.0  # a teacher's blunder: few pixels with huge residuals
    lam = 0.5
    trimmed = [_silog_kept(pred[b], gt[b], 0.9, lam) for b in range(3)]
    whole = [_silog_kept(pred[b], gt[b], 1.0, lam) for b in range(3)]
    got = silog_loss(pred, gt, lam=lam, trim=0.1)
    assert got.item() == pytest.approx(sum(trimmed) / 3, rel=1e-4)
    exact = torch.tensor([False, True, False])
    got = silog_loss(pred, gt, lam=lam, trim=0.1, exact=exact)
    assert got.item() == pytest.approx((trimmed[0] + whole[1] + trimmed[2]) / 3, rel=1e-4)
    assert whole[1] > 2 * trimmed[1]  # the blunder dominates an untrimmed image: sparing it is visible
    assert silog_loss(pred, gt, lam=lam, trim=0.1, exact=torch.ones(3, dtype=torch.bool)).item() == pytest.approx(
        silog_loss(pred, gt, lam=lam).item(), rel=1e-6)


def test_ssi_trim_spares_exact_images():
    g = torch.Generator().manual_seed(2)
    target = torch.rand(2, 16, 16, generator=g) + 0.1
    pred = 3 * target + 1 + 0.01 * torch.randn(2, 16, 16, generator=g)
    pred[:, 2, 2:6] += 5.0
    one = [ssi_gradient_loss(pred[b:b + 1], target[b:b + 1], alpha=0.0, trim=t) for b in range(2) for t in (0.1, 0.0)]
    both = ssi_gradient_loss(pred, target, alpha=0.0, trim=0.1, exact=torch.tensor([True, False]))
    torch.testing.assert_close(both, (one[1] + one[2]) / 2)  # image 0 whole, image 1 trimmed
    assert one[1] > 10 * one[0]
