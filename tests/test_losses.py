import math

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
