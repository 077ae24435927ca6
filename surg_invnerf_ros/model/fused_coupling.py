r"""One affine coupling layer as a single autograd function with a hand-written backward.

The plain layer (`coupling.AffineCoupling` with `fused` off) makes about 160 ATen calls forward and
325 backward (views included), many of them selects, zero fills and copies that autograd adds around
tiny tensors; on a GPU every call that computes is a kernel launch. This function computes the same
thing feature-major — the plane look-ups return (F, P), so the MLP is W·x with no transposes — and
its backward is the chain rule written out once: about 125 calls forward and 145 backward. Values and gradients
equal the plain layer's (tested in float64); there is no host read anywhere.

For the layer that moves coordinate a, conditioned on b, c and t, over scales s:

    f_s   = S_s(x_b, x_c) · T_s,1(x_b, t) · T_s,2(x_c, t)            (bilinear plane look-ups, F_s rows)
    h     = [f_1; …; f_S; x_b; x_c]                                  (when use_coords)
    raw   = W3 relu(W2 relu(W1 h + b1) + b2) + b3                    (2 rows: log-scale, shift)
    s     = m · tanh(raw_0),  shift = raw_1
    y_a   = (x_a − shift) · exp(−s)      (frame → canonical)
    x_a   = y_a · exp(s) + shift          (canonical → frame, `inverse`)

t carries no gradient (it is a frame's time, not a parameter).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..shapes import Float

_BILINEAR, _BORDER = 0, 1  # grid_sampler's interpolation and padding codes


class _CouplingStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, t: Tensor, axis: Tensor, plane_coords: Tensor, use_coords: bool,
                max_log_scale: float, inverse: bool, num_scales: int, *params: Tensor) -> Tensor:
        spatial, temporal = params[:num_scales], params[num_scales:2 * num_scales]
        w1, b1, w2, b2, w3, b3 = params[2 * num_scales:]
        n = x.shape[0]
        training = any(ctx.needs_input_grad)
        pts = torch.cat([x, t], dim=1)  # (P, 4)
        grid = pts.index_select(1, plane_coords).view(n, 3, 2).transpose(0, 1).unsqueeze(1)  # (3, 1, P, 2)
        sp_grid, tm_grid = grid[:1], grid[1:]  # plane (b, c); planes (b, t), (c, t)
        looks: list[Tensor] = []
        feats: list[Tensor] = []
        for sg, tg in zip(spatial, temporal):
            sp = torch.grid_sampler_2d(sg, sp_grid, _BILINEAR, _BORDER, True)  # (1, F, 1, P)
            tm = torch.grid_sampler_2d(tg, tm_grid, _BILINEAR, _BORDER, True)  # (2, F, 1, P)
            tt = tm[0] * tm[1]  # (F, 1, P)
            if training:
                looks += [sp, tm.flip(0), tt]
            feats.append((sp[0] * tt).view(-1, n))
        if use_coords:
            feats.append(sp_grid.view(n, 2).t())  # (2, P): x_b, x_c
        h = torch.cat(feats)  # (in, P)
        a1 = torch.mm(w1, h).add_(b1.unsqueeze(1)).clamp_min_(0.0)
        a2 = torch.mm(w2, a1).add_(b2.unsqueeze(1)).clamp_min_(0.0)
        raw = torch.mm(w3, a2).add_(b3.unsqueeze(1))  # (2, P): log-scale (before tanh), shift
        th = torch.tanh(raw[0])
        shift = raw[1]
        xa = x.index_select(1, axis).view(n)
        if inverse:  # x_a = y_a e^s + shift
            gain = torch.exp(th * max_log_scale)  # d out_a / d in_a
            ya = torch.addcmul(shift, xa, gain)
            d_ds = ya - shift
        else:  # y_a = (x_a − shift) e^−s
            gain = torch.exp(th * -max_log_scale)
            ya = (xa - shift) * gain
            d_ds = -ya
        if training:
            d_dshift = gain.neg() if not inverse else torch.ones_like(gain)
            # ∂ out_a / ∂ raw, rows (log-scale, shift)
            d_raw = torch.stack([d_ds * (1.0 - th * th).mul_(max_log_scale), d_dshift])
            ctx.save_for_backward(axis, plane_coords, grid, h, a1, a2, d_raw, gain, *looks, *params)
            ctx.meta = (use_coords, num_scales)
        return x.index_copy(1, axis, ya.unsqueeze(1))

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        use_coords, num_scales = ctx.meta
        saved = ctx.saved_tensors
        axis, plane_coords, grid, h, a1, a2, d_raw, gain = saved[:8]
        looks = saved[8:8 + 3 * num_scales]
        params = saved[8 + 3 * num_scales:]
        spatial, temporal = params[:num_scales], params[num_scales:2 * num_scales]
        w1, _, w2, _, w3, _ = params[2 * num_scales:]
        n = gy.shape[0]
        gya = gy.index_select(1, axis).view(1, n)
        g_raw = d_raw * gya  # (2, P)
        g_a2 = torch.ops.aten.threshold_backward(torch.mm(w3.t(), g_raw), a2, 0.0)
        g_a1 = torch.ops.aten.threshold_backward(torch.mm(w2.t(), g_a2), a1, 0.0)
        g_h = torch.mm(w1.t(), g_a1)  # (in, P)
        grads_w = (torch.mm(g_a1, h.t()), g_a1.sum(1), torch.mm(g_a2, a1.t()), g_a2.sum(1),
                   torch.mm(g_raw, a2.t()), g_raw.sum(1))
        sp_grid, tm_grid = grid[:1], grid[1:]
        g_grid: Tensor | None = None
        g_planes: list[Tensor] = []
        row = 0
        for i, (sg, tg) in enumerate(zip(spatial, temporal)):
            sp, tm_swapped, tt = looks[3 * i:3 * i + 3]
            f = tt.shape[0]
            g_f = g_h[row:row + f].view(1, f, 1, n)
            row += f
            g_sp = g_f * tt
            g_tm = (g_f * sp) * tm_swapped  # (2, F, 1, P): each time plane's gradient is the product of the others
            gs, gcs = torch.ops.aten.grid_sampler_2d_backward(g_sp, sg, sp_grid, _BILINEAR, _BORDER, True, [True, True])
            gt, gct = torch.ops.aten.grid_sampler_2d_backward(g_tm, tg, tm_grid, _BILINEAR, _BORDER, True, [True, True])
            g = torch.cat([gcs, gct])  # (3, 1, P, 2)
            g_grid = g if g_grid is None else g_grid.add_(g)
            g_planes += [gs, gt]
        assert g_grid is not None
        if use_coords:
            g_grid[0, 0].add_(g_h[row:row + 2].t())
        g_pts = gy.new_zeros(n, 4).index_add_(1, plane_coords, g_grid.squeeze(1).transpose(0, 1).reshape(n, 6))
        g_x = gy.index_copy(1, axis, (gya * gain).view(n, 1)).add_(g_pts[:, :3])
        return (g_x, None, None, None, None, None, None, None, *g_planes[0::2], *g_planes[1::2], *grads_w)


def coupling_step(x: Float[Tensor, "P 3"], t: Float[Tensor, "P 1"], axis: Tensor, plane_coords: Tensor,
                  spatial: list[Tensor], temporal: list[Tensor], mlp: list[Tensor], use_coords: bool,
                  max_log_scale: float, inverse: bool) -> Float[Tensor, "P 3"]:
    """One coupling layer, frame → canonical (or canonical → frame with `inverse`), as one autograd node.

    `axis` is the moving coordinate as a (1,) long tensor and `plane_coords` the (6,) coordinate indices
    [b, c, b, 3, c, 3] of the planes (b, c), (b, t), (c, t) (t is coordinate 3), both on x's device.
    `spatial[s]` is scale s's (1, F, r, r) plane over (x_b, x_c), `temporal[s]` its (2, F, rows, r) planes
    over (x_b, t) and (x_c, t); `mlp` is [W1, b1, W2, b2, W3, b3] of the layer's 3-layer ReLU MLP.
    """
    return _CouplingStep.apply(x, t, axis, plane_coords, bool(use_coords), float(max_log_scale), bool(inverse),
                               len(spatial), *spatial, *temporal, *mlp)
