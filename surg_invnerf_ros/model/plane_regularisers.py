r"""Plane regularisers: spatial total variation and temporal smoothness (K-Planes), as one autograd node.

For every spatial plane g (n, F, H, W) and every time plane q (n, F, rows, W) with at least 3 rows:

    TV = Σ_g mean((g[..., i+1, :] − g[..., i, :])²) + mean((g[..., j+1] − g[..., j])²)
    TS = Σ_q mean((q[:, :, r+2] − 2 q[:, :, r+1] + q[:, :, r])²)                    (second difference in t)

Planes of the same shape (the same scale in every coupling layer) are concatenated and handled
together, and the backward is the closed form (each squared difference sends ±2·d/N to its two or
three texels), so the whole term costs a few dozen ATen calls instead of a dozen per plane forward and
more backward. Equal to the plain formulas (tested in float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..shapes import Float


def _by_shape(grids: Sequence[Tensor]) -> list[list[int]]:
    """Indices of `grids` grouped by shape, in order of first appearance (shapes are metadata: no device read)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, g in enumerate(grids):
        groups.setdefault(tuple(g.shape), []).append(i)
    return list(groups.values())


def _stacked(grids: Sequence[Tensor], idx: list[int]) -> Tensor:
    return grids[idx[0]] if len(idx) == 1 else torch.cat([grids[i] for i in idx])


def _split(grad: Tensor, count: int) -> tuple[Tensor, ...]:
    return (grad,) if count == 1 else grad.unflatten(0, (count, -1)).unbind(0)


class _PlaneSmoothness(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, num_spatial: int, *grids: Tensor) -> tuple[Tensor, Tensor]:
        spatial, temporal = grids[:num_spatial], grids[num_spatial:]
        tv, ts = grids[0].new_zeros(()), grids[0].new_zeros(())
        s_groups = _by_shape(spatial)
        t_groups = [idx for idx in _by_shape(temporal) if temporal[idx[0]].shape[2] >= 3]
        saved: list[Tensor] = []
        stacked_shapes: list[torch.Size] = []
        for idx in s_groups:
            g = _stacked(spatial, idx)
            stacked_shapes.append(g.shape)
            dh = g[:, :, 1:] - g[:, :, :-1]
            dw = g[..., 1:] - g[..., :-1]
            tv.add_((dh * dh).sum(), alpha=len(idx) / dh.numel()).add_((dw * dw).sum(), alpha=len(idx) / dw.numel())
            saved += [dh, dw]
        for idx in t_groups:
            q = _stacked(temporal, idx)
            stacked_shapes.append(q.shape)
            d2 = torch.add(q[:, :, 2:], q[:, :, :-2]).sub_(q[:, :, 1:-1], alpha=2.0)
            ts.add_((d2 * d2).sum(), alpha=len(idx) / d2.numel())
            saved.append(d2)
        ctx.save_for_backward(*saved)
        ctx.meta = (num_spatial, len(grids), s_groups, t_groups, stacked_shapes)
        return tv, ts

    @staticmethod
    def backward(ctx: Any, g_tv: Tensor, g_ts: Tensor) -> tuple[Tensor | None, ...]:
        num_spatial, count, s_groups, t_groups, stacked_shapes = ctx.meta
        saved = ctx.saved_tensors
        grads: list[Tensor | None] = [None] * count
        k = 0
        for n, idx in enumerate(s_groups):
            dh, dw = saved[k], saved[k + 1]
            k += 2
            g = dh.new_zeros(stacked_shapes[n])
            ch, cw = 2.0 * len(idx) / dh.numel(), 2.0 * len(idx) / dw.numel()
            dh, dw = dh * g_tv, dw * g_tv
            g[:, :, 1:].add_(dh, alpha=ch)
            g[:, :, :-1].add_(dh, alpha=-ch)
            g[..., 1:].add_(dw, alpha=cw)
            g[..., :-1].add_(dw, alpha=-cw)
            for i, part in zip(idx, _split(g, len(idx))):
                grads[i] = part
        for n, idx in enumerate(t_groups, start=len(s_groups)):
            d2 = saved[k] * g_ts
            k += 1
            g = d2.new_zeros(stacked_shapes[n])
            c = 2.0 * len(idx) / d2.numel()
            g[:, :, 2:].add_(d2, alpha=c)
            g[:, :, :-2].add_(d2, alpha=c)
            g[:, :, 1:-1].add_(d2, alpha=-2.0 * c)
            for i, part in zip(idx, _split(g, len(idx))):
                grads[num_spatial + i] = part
        return (None, *grads)


def plane_regularisers(spatial: Sequence[Tensor], temporal: Sequence[Tensor]
                       ) -> tuple[Float[Tensor, ""], Float[Tensor, ""]]:
    """(TV of the `spatial` planes, time smoothness of the `temporal` planes), summed over planes (module
    docstring). Time planes with fewer than 3 rows add nothing. Needs at least one plane."""
    if not spatial and not temporal:
        raise ValueError("plane_regularisers: no planes")
    out = _PlaneSmoothness.apply(len(spatial), *spatial, *temporal)
    return out[0], out[1]
