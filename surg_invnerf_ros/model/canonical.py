"""The canonical field: density and colour of the tissue in canonical space (DESIGN §3.2).

A multi-scale tri-plane (xy, xz, yz) gives features; a tiny MLP turns them into a density (per unit
of normalised length along a ray) and a geometry feature, and a second tiny head gives colour from
that feature plus an optional per-frame appearance code, which absorbs lighting and specular change
so they do not leak into geometry.
"""

import torch
from torch import Tensor, nn

from ..config import CanonicalConfig, HexPlaneConfig
from ..shapes import Float, Int
from .hexplane import TRI_PLANES, MultiScaleHexPlane

GEO_DIM = 8


class _TruncExp(torch.autograd.Function):
    """exp with a clamped gradient (Instant-NGP), so large densities stay trainable and finite."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x.clamp(max=15.0))


class CanonicalField(nn.Module):
    """Density σ ≥ 0 and colour in [0, 1] at canonical points u in [-1, 1]³."""

    def __init__(self, cfg: CanonicalConfig, num_frames: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        hex_cfg = HexPlaneConfig(resolutions=cfg.resolutions, feature_dims=cfg.feature_dims)
        self.planes = MultiScaleHexPlane(hex_cfg, num_frames, planes=TRI_PLANES, generator=generator)
        self.density_mlp = nn.Sequential(nn.Linear(self.planes.out_dim, cfg.hidden_dim), nn.ReLU(inplace=True),
                                          nn.Linear(cfg.hidden_dim, 1 + GEO_DIM))
        self.appearance_dim = int(cfg.appearance_dim)
        self.colour_mlp = nn.Sequential(nn.Linear(GEO_DIM + self.appearance_dim, cfg.hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(cfg.hidden_dim, 3))
        self.appearance = nn.Embedding(max(num_frames, 1), max(self.appearance_dim, 1))
        nn.init.zeros_(self.appearance.weight)
        self.activation = cfg.density_activation
        self.density_bias = float(cfg.density_bias)
        self.num_frames = int(num_frames)
        self.bf16 = False

    def forward(self, u_canon: Float[Tensor, "*B 3"], frame_idx: Int[Tensor, "*B"] | None = None,
                with_colour: bool = True) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B 3"] | None]:
        """(density, colour) at canonical points; colour is None when not asked for."""
        batch = u_canon.shape[:-1]
        u = u_canon.reshape(-1, 3)
        xyzt = torch.cat([u, torch.zeros_like(u[:, :1])], dim=-1)
        feat = self.planes(xyzt)  # (P, F)
        if self.bf16 and feat.device.type == "cpu":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h = self.density_mlp(feat)
            h = h.float()
        else:
            h = self.density_mlp(feat)  # (P, 1 + GEO)
        raw = h[:, 0] + self.density_bias
        sigma = trunc_exp(raw) if self.activation == "trunc_exp" else nn.functional.softplus(raw)
        if not with_colour:
            return sigma.reshape(batch), None
        geo = h[:, 1:]
        if self.appearance_dim > 0:
            if frame_idx is None:
                code = torch.zeros(geo.shape[0], self.appearance_dim, device=geo.device)
            else:
                code = self.appearance(frame_idx.reshape(-1).clamp(0, self.num_frames - 1))
            geo = torch.cat([geo, code], dim=-1)
        rgb = torch.sigmoid(self.colour_mlp(geo))  # (P, 3)
        return sigma.reshape(batch), rgb.reshape(*batch, 3)

    def grow_time(self, num_frames: int, drop_first: int = 0) -> None:
        """Resize to `num_frames` frames, of which frame f was the old frame f + `drop_first`; new
        appearance codes repeat the last one."""
        weight = self.appearance.weight.data
        old = weight[min(drop_first, weight.shape[0] - 1):]  # all gone: the last code carries on
        new = weight.new_zeros(max(num_frames, 1), old.shape[1])
        n = min(old.shape[0], num_frames)
        new[:n] = old[:n]
        if num_frames > n and n > 0:
            new[n:] = old[n - 1]
        self.appearance = nn.Embedding.from_pretrained(new, freeze=False)
        self.num_frames = int(num_frames)
