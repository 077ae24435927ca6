"""Loss terms of the fit, one pure function each, each stating its unit (DESIGN §3.2).

Weights and schedules live in `LossConfig`; `fit/optimiser.py` combines the terms.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ..shapes import Float


def _wmean(values: Tensor, weights: Tensor) -> Tensor:
    return (weights * values).sum() / weights.sum().clamp_min(1e-6)


def reprojection_loss_px(uv_pred_px: Float[Tensor, "N 2"], uv_target_px: Float[Tensor, "N 2"],
                         confidence: Float[Tensor, " N"], eps_px: float = 0.5) -> Float[Tensor, ""]:
    """Confidence-weighted Charbonnier distance, in pixels.

    With both directions the caller stacks i→j and j→i rows: one call is the two-way term.
    """
    d = uv_pred_px - uv_target_px
    err_px = torch.sqrt((d * d).sum(-1) + eps_px**2) - eps_px  # (N,)
    return _wmean(err_px, confidence)


def photometric_loss(rgb_pred: Float[Tensor, "N 3"], rgb_target: Float[Tensor, "N 3"],
                     weight: Float[Tensor, " N"]) -> Float[Tensor, ""]:
    """Weighted mean squared colour error, colours in [0, 1]."""
    d = rgb_pred - rgb_target
    return _wmean((d * d).mean(-1), weight)


def _inverse_stereo_depth(depth_stereo_m: Tensor) -> Tensor:
    """1 / depth with NaN (no stereo) read as 1 m, so that a row of weight 0 stays finite."""
    return depth_stereo_m.nan_to_num(nan=1.0).clamp_min(1e-6).reciprocal()


def stereo_depth_loss_px(depth_pred_m: Float[Tensor, " N"], depth_stereo_m: Float[Tensor, " N"],
                         valid: Float[Tensor, " N"], fx_b: float) -> Float[Tensor, ""]:
    """Expected depth against stereo depth, as an absolute disparity difference in pixels.

    Disparity (fx·B / z) is the space SGBM measures in, so its noise is uniform there. Rows with weight 0
    may hold any stereo depth (NaN included): they add nothing.
    """
    inv_pred = depth_pred_m.clamp_min(1e-6).reciprocal()
    return _wmean(torch.abs(inv_pred - _inverse_stereo_depth(depth_stereo_m)), valid) * fx_b


def line_of_sight_loss_px(weights: Float[Tensor, "N S"], z_m: Float[Tensor, "N S"], depth_stereo_m: Float[Tensor, " N"],
                          valid: Float[Tensor, " N"], fx_b: float, cap_px: float = 8.0) -> Float[Tensor, ""]:
    """Concentrate the rendering weights at the stereo depth, in disparity pixels.

    Σ_s w_s · min(|d(z_s) − d_stereo|, cap) + cap · (1 − Σ_s w_s): weight away from the surface and
    missing opacity both cost, so the density forms a thin opaque surface at the stereo depth.
    """
    cap = cap_px / fx_b  # the same in inverse metres; the mean is scaled to pixels once
    inv_z = z_m.clamp_min(1e-6).reciprocal()
    dist = torch.abs(inv_z - _inverse_stereo_depth(depth_stereo_m)[:, None]).clamp_max(cap)
    per_ray = (weights * dist).sum(-1) + cap * (1.0 - weights.sum(-1)).clamp_min(0.0)
    return _wmean(per_ray, valid) * fx_b


def range_loss(x_norm: Float[Tensor, "*B 3"]) -> Float[Tensor, ""]:
    """Squared excursion of normalised points outside the workspace cube [-1, 1]³ (normalised units²)."""
    out = F.softshrink(x_norm, 1.0)  # sign(x)·max(|x| − 1, 0)
    return (out * out).sum(-1).mean()


def distortion_loss(weights: Float[Tensor, "N S"], z_m: Float[Tensor, "N S"]) -> Float[Tensor, ""]:
    """Mip-NeRF 360 distortion on per-ray normalised depth s in [0, 1] (unitless).

    L = Σ_{s,r} w_s w_r |m_s − m_r| + ⅓ Σ_s w_s² Δ_s, with m the interval midpoints.
    """
    z0 = z_m[:, :1]
    span = (z_m[:, -1:] - z0).clamp_min(1e-9)
    s = (z_m - z0) / span
    ds = torch.cat([s[:, 1:] - s[:, :-1], (s[:, -1:] - s[:, -2:-1])], dim=-1)
    mid = torch.add(s, ds, alpha=0.5)
    inter = (weights[:, :, None] * weights[:, None, :] * (mid[:, :, None] - mid[:, None, :]).abs()).sum((1, 2))
    intra = (weights * weights * ds).sum(-1)
    return torch.add(inter, intra, alpha=1.0 / 3.0).mean()
