"""Training losses.

``silog_loss``: the reference study's masked scale-invariant log loss,
    g = ln(pred) - ln(gt) over the n valid pixels,  L = mean(g^2) - lambda * mean(g)^2  (lambda 0.5),
computed per image and averaged over the batch. With lambda = 1 it is invariant to a global scale.

``ssi_gradient_loss``: scale-and-shift-invariant loss with multi-scale gradient matching (MiDaS),
for dense relative ground truth (e.g. the synthetic scenes' exact depth as inverse depth).
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def trim_mask(residual: torch.Tensor, mask: torch.Tensor, trim: float,
              exact: torch.Tensor | None = None) -> torch.Tensor:
    """``mask`` without each image's ``trim`` fraction of valid pixels with the largest ``residual``
    (Depth Anything V2 ignores the 10 % largest-loss pixels of each pseudo-label). ``exact``: (B,) bool,
    the images whose depth is ground truth rather than a pseudo-label; they keep every pixel."""
    if trim <= 0:
        return mask
    out = mask.clone()
    for i in range(len(mask)):
        if exact is not None and bool(exact[i]):
            continue
        r = residual[i][mask[i]].detach()
        if r.numel() >= 10:
            k = max(1, int(round((1 - trim) * r.numel())))
            cut = torch.kthvalue(r.float().cpu(), k).values.to(r.device)
            out[i] &= residual[i].detach() <= cut
    return out


def gradient_term(diff: torch.Tensor, m: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient matching (MiDaS): mean absolute x/y differences of the masked residual
    ``diff`` at ``scales`` halvings, averaged over the scales."""
    grad = diff.new_zeros(())
    diff = diff * m
    for k in range(scales):
        step = 2**k
        d, mk = diff[:, ::step, ::step], m[:, ::step, ::step]
        gx = (d[:, :, 1:] - d[:, :, :-1]).abs() * mk[:, :, 1:] * mk[:, :, :-1]
        gy = (d[:, 1:, :] - d[:, :-1, :]).abs() * mk[:, 1:, :] * mk[:, :-1, :]
        grad = grad + (gx.sum() + gy.sum()) / mk.sum().clamp_min(1)
    return grad / scales


def silog_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None, lam: float = 0.5,
               eps: float = 1e-6, grad: float = 0.0, trim: float = 0.0,
               exact: torch.Tensor | None = None) -> torch.Tensor:
    """pred, gt: (B, H, W) depths in metres at the same (GT) resolution; mask: valid GT pixels
    (default gt > 0). Images without valid pixels are skipped. ``grad``: weight of multi-scale
    gradient matching on the log-depth residual; ``trim``: fraction of each image's pixels with the
    largest residual left out (for pseudo-labels), except in the ``exact`` images ((B,) bool)."""
    if mask is None:
        mask = gt > 0
    mask = mask & (gt > 0)
    g = torch.log(pred.clamp_min(eps)) - torch.log(gt.clamp_min(eps))
    if trim > 0:
        gm = torch.where(mask, g, torch.zeros_like(g))
        centre = gm.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        mask = trim_mask((g - centre[:, None, None]).abs(), mask, trim, exact)
    g = torch.where(mask, g, torch.zeros_like(g))
    n = mask.flatten(1).sum(1)
    has = n > 0
    if not has.any():
        return pred.sum() * 0.0
    n = n.clamp_min(1).to(g.dtype)
    mean_g = g.flatten(1).sum(1) / n
    mean_g2 = g.pow(2).flatten(1).sum(1) / n
    per_image = mean_g2 - lam * mean_g.pow(2)
    loss = per_image[has].mean()
    if grad > 0:
        loss = loss + grad * gradient_term(g - mean_g[:, None, None], mask.to(g.dtype))
    return loss


def _align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Least-squares scale s and shift t per image so that s * pred + t ~ target on the mask."""
    m = mask.to(pred.dtype)
    a00 = (m * pred * pred).flatten(1).sum(1)
    a01 = (m * pred).flatten(1).sum(1)
    a11 = m.flatten(1).sum(1)
    b0 = (m * pred * target).flatten(1).sum(1)
    b1 = (m * target).flatten(1).sum(1)
    det = a00 * a11 - a01 * a01
    ok = det.abs() > 1e-12
    s = torch.where(ok, (a11 * b0 - a01 * b1) / torch.where(ok, det, torch.ones_like(det)), torch.ones_like(det))
    t = torch.where(ok, (-a01 * b0 + a00 * b1) / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    return s, t


def ssi_gradient_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                      alpha: float = 0.5, scales: int = 4, trim: float = 0.0,
                      exact: torch.Tensor | None = None) -> torch.Tensor:
    """MiDaS-style loss on (B, H, W) relative (inverse-depth-like) maps: MSE after per-image
    least-squares scale and shift alignment, plus ``alpha`` times the multi-scale gradient term;
    ``trim``: fraction of each image's pixels with the largest aligned residual left out, except in
    the ``exact`` images ((B,) bool: ground truth, not pseudo-labels)."""
    if mask is None:
        mask = torch.isfinite(target) & (target > 0)
    target = torch.where(mask, target, torch.zeros_like(target))
    s, t = _align_scale_shift(pred, target, mask)
    aligned = s[:, None, None] * pred + t[:, None, None]
    if trim > 0:
        mask = trim_mask((aligned - target).abs(), mask, trim, exact)
        s, t = _align_scale_shift(pred, target, mask)
        aligned = s[:, None, None] * pred + t[:, None, None]
    m = mask.to(pred.dtype)
    n = m.flatten(1).sum(1).clamp_min(1)
    data = ((aligned - target).pow(2) * m).flatten(1).sum(1) / (2 * n)
    loss = data.mean()
    if alpha <= 0:
        return loss
    return loss + alpha * gradient_term(aligned - target, m, scales)


# -- losses as objects the training module is given -------------------------------------------------
class SILogLoss:
    """Masked SILog on metric depth (needs a model with a metric head)."""

    name = "silog"

    def __init__(self, lam: float = 0.5, kind: str = "metric", grad: float = 0.0, trim: float = 0.0) -> None:
        if kind != "metric":
            raise ConfigError("SILog trains metric depth: use a variant with a metric head (.kitti or "
                              ".m<scale>_<shift>), or the ssi loss for relative depth")
        _check_trim(trim)
        self.lam, self.grad, self.trim = lam, grad, trim

    def __call__(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                 exact: torch.Tensor | None = None) -> torch.Tensor:
        return silog_loss(pred.float(), gt, mask, lam=self.lam, grad=self.grad, trim=self.trim, exact=exact)


class SSIGradientLoss:
    """Scale-and-shift-invariant + gradient loss in inverse depth: the target is 1 / GT on the mask,
    the prediction 1 / depth (metric models) or the model's relative inverse depth as it is."""

    name = "ssi"

    def __init__(self, alpha: float = 0.5, scales: int = 4, kind: str = "metric", trim: float = 0.0) -> None:
        _check_trim(trim)
        self.alpha, self.scales, self.kind, self.trim = alpha, scales, kind, trim

    def __call__(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                 exact: torch.Tensor | None = None) -> torch.Tensor:
        pred = pred.float()
        mask = mask & (gt > 0)
        target = torch.where(mask, 1.0 / gt.clamp_min(1e-6), torch.zeros_like(gt))
        inv = 1.0 / pred.clamp_min(1e-6) if self.kind == "metric" else pred
        return ssi_gradient_loss(inv, target, mask, alpha=self.alpha, scales=self.scales, trim=self.trim, exact=exact)


def _check_trim(trim: float) -> None:
    if not 0 <= trim < 1:
        raise ConfigError(f"the trimmed fraction must be in [0, 1), got {trim}")


LOSSES = {"silog": SILogLoss, "ssi": SSIGradientLoss}


def make_loss(name: str, kind: str = "metric", **options):
    """A loss by name (``silog`` or ``ssi``) for a model whose output is ``kind`` (metric/relative)."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name](kind=kind, **options)
