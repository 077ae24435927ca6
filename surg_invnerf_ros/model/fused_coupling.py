r"""One affine coupling layer as a single autograd function with a hand-written backward.

The plain layer (`coupling.AffineCoupling` with `fused` off) makes about 160 ATen calls forward and
325 backward (views included), many of them selects, zero fills, scalar wrappers and copies that
autograd adds around tiny tensors; on a GPU every call that computes is a kernel launch. This
function computes the same thing feature-major — the plane look-ups return (F, P), so the MLP is
W·x with no transposes — and its backward is the chain rule written out once: about 80 calls forward
and 125 backward. Constants are tensors on the layer's device (no Python scalar is wrapped per call),
and every concatenation sees contiguous inputs. Values and gradients equal the plain layer's (tested
in float64); there is no host read anywhere.

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

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..shapes import Float
from .hexplane import TIME

_BILINEAR, _BORDER = 0, 1  # grid_sampler's interpolation and padding codes


class CouplingConstants(NamedTuple):
    """A layer's fixed index and scale tensors (`coupling_constants`), on its device."""

    axis: int  # the moving coordinate a
    plane_coords: Tensor  # (6,) long: coordinates of the planes (b, c), (b, t), (c, t), in that order
    moving: Tensor  # (3,) bool: True at a
    coord_select: Tensor  # (3, 2, 3) float: plane k's grid coordinate (x or y) → the point coordinate it is
    max_log_scale: Tensor  # 0-d float: m
    max_log_scale_value: float  # m as a number (no device read)


def coupling_constants(axis: int, planes: tuple[tuple[int, int], ...], max_log_scale: float
                       ) -> dict[str, Tensor]:
    """The tensors of `CouplingConstants` for the layer moving `axis` with `planes` [(b, c), (b, t), (c, t)]
    (the layer registers them as buffers, so they follow it to its device and dtype)."""
    coords = [i for pair in planes for i in pair]
    select = torch.zeros(len(planes), 2, 3)
    for k, pair in enumerate(planes):
        for d, coord in enumerate(pair):
            if coord != TIME:
                select[k, d, coord] = 1.0
    return {"plane_coords": torch.tensor(coords), "moving": torch.arange(3) == axis, "coord_select": select,
            "max_log_scale": torch.tensor(float(max_log_scale))}


class _CouplingStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, t: Tensor, consts: CouplingConstants, use_coords: bool, inverse: bool,
                num_scales: int, *params: Tensor) -> Tensor:
        spatial, temporal = params[:num_scales], params[num_scales:2 * num_scales]
        w1, b1, w2, b2, w3, b3 = params[2 * num_scales:]
        n = x.shape[0]
        training = any(ctx.needs_input_grad)
        sel = torch.cat([x, t], dim=1).t().index_select(0, consts.plane_coords)  # (6, P), contiguous rows
        grid = sel.view(3, 2, n).transpose(1, 2).unsqueeze(1)  # (3, 1, P, 2)
        sp_grid, tm_grid = grid[:1], grid[1:]  # plane (b, c); planes (b, t), (c, t)
        looks: list[Tensor] = []
        feats: list[Tensor] = []
        for sg, tg in zip(spatial, temporal):
            sp = torch.grid_sampler_2d(sg, sp_grid, _BILINEAR, _BORDER, True)  # (1, F, 1, P)
            tm = torch.grid_sampler_2d(tg, tm_grid, _BILINEAR, _BORDER, True)  # (2, F, 1, P)
            tt = tm.prod(0)  # (F, 1, P)
            if training:
                looks += [sp, tm, tt]
            feats.append((sp * tt).view(-1, n))
        if use_coords:
            feats.append(sel[:2])  # (2, P): x_b, x_c
        h = torch.cat(feats)  # (in, P)
        a1 = torch.mm(w1, h).add_(b1.view(-1, 1)).clamp_min_(0.0)
        a2 = torch.mm(w2, a1).add_(b2.view(-1, 1)).clamp_min_(0.0)
        raw = torch.mm(w3, a2).add_(b3.view(-1, 1))  # (2, P): log-scale (before tanh), shift
        th = torch.tanh(raw[0])
        shift = raw[1]
        xa = x.select(1, consts.axis)
        s = th * consts.max_log_scale
        if inverse:  # x_a = y_a e^s + shift
            gain = torch.exp(s)  # d out_a / d in_a
            ya = torch.addcmul(shift, xa, gain)
            d_ds = ya - shift
        else:  # y_a = (x_a − shift) e^−s
            gain = torch.exp(s.neg_())
            ya = (xa - shift) * gain
            d_ds = ya.neg()
        if training:
            # ∂ out_a / ∂ raw_0 = d_ds · m (1 − th²)
            d_raw0 = torch.addcmul(consts.max_log_scale, th, th, value=-consts.max_log_scale_value).mul_(d_ds)
            ctx.save_for_backward(h, a1, a2, d_raw0, gain, *looks, *params)
            ctx.meta = (consts, grid, use_coords, inverse, num_scales)
        return torch.where(consts.moving, ya.unsqueeze(1), x)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        consts, grid, use_coords, inverse, num_scales = ctx.meta
        saved = ctx.saved_tensors
        h, a1, a2, d_raw0, gain = saved[:5]
        looks = saved[5:5 + 3 * num_scales]
        params = saved[5 + 3 * num_scales:]
        spatial, temporal = params[:num_scales], params[num_scales:2 * num_scales]
        w1, _, w2, _, w3, _ = params[2 * num_scales:]
        n = gy.shape[0]
        gya = gy.select(1, consts.axis)
        g_xa = gya * gain
        # ∂ out_a / ∂ shift is 1 (inverse) or −gain (forward)
        g_raw = torch.stack([d_raw0 * gya, gya if inverse else g_xa.neg()])  # (2, P)
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
            sp, tm, tt = looks[3 * i:3 * i + 3]
            f = tt.shape[0]
            g_f = g_h[row:row + f].view(1, f, 1, n)
            row += f
            g_sp = g_f * tt
            g_tm = (g_f * sp) * tm.flip(0)  # each time plane's gradient is the product of the others
            gs, gcs = torch.ops.aten.grid_sampler_2d_backward(g_sp, sg, sp_grid, _BILINEAR, _BORDER, True, [True, True])
            gt, gct = torch.ops.aten.grid_sampler_2d_backward(g_tm, tg, tm_grid, _BILINEAR, _BORDER, True, [True, True])
            g = torch.cat([gcs, gct])  # (3, 1, P, 2)
            g_grid = g if g_grid is None else g_grid.add_(g)
            g_planes += [gs, gt]
        assert g_grid is not None
        if use_coords:
            g_grid[0, 0].add_(g_h[row:row + 2].t())
        # each plane's grid coordinates back to the point coordinates they were read from (t takes none)
        g_pts = torch.bmm(g_grid.reshape(3, n, 2), consts.coord_select).sum(0)  # (P, 3)
        g_x = torch.where(consts.moving, g_xa.unsqueeze(1), gy).add_(g_pts)
        return (g_x, None, None, None, None, None, *g_planes[0::2], *g_planes[1::2], *grads_w)


def coupling_step(x: Float[Tensor, "P 3"], t: Float[Tensor, "P 1"], consts: CouplingConstants,
                  spatial: list[Tensor], temporal: list[Tensor], mlp: list[Tensor], use_coords: bool,
                  inverse: bool) -> Float[Tensor, "P 3"]:
    """One coupling layer, frame → canonical (or canonical → frame with `inverse`), as one autograd node.

    `consts` holds the layer's index tensors on x's device (`coupling_constants`).
    `spatial[s]` is scale s's (1, F, r, r) plane over (x_b, x_c), `temporal[s]` its (2, F, rows, r) planes
    over (x_b, t) and (x_c, t); `mlp` is [W1, b1, W2, b2, W3, b3] of the layer's 3-layer ReLU MLP.
    """
    return _CouplingStep.apply(x, t, consts, bool(use_coords), bool(inverse), len(spatial), *spatial, *temporal, *mlp)
