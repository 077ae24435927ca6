"""The invertible map F_t between frame-t space and the canonical space (DESIGN §3.2).

F_t is a stack of K affine coupling layers. Layer k moves one coordinate a (cycling through
`axis_order`); the other two coordinates b, c and the time t condition it through a tiny MLP over
HexPlane features of the three planes that exclude a: (b, c), (b, t), (c, t). Because b, c and t
pass through unchanged, each layer, and so the whole map, has an exact closed-form inverse.
"""

import torch
from torch import Tensor, nn

from ..config import CouplingConfig, HexPlaneConfig
from ..shapes import Float
from .fused_coupling import CouplingConstants, coupling_constants, coupling_step
from .hexplane import TIME, MultiScaleHexPlane


def _mlp(in_dim: int, hidden: int, out_dim: int) -> tuple[nn.Sequential, tuple[nn.Linear, nn.Linear, nn.Linear]]:
    """The MLP (layers created in order, so the global generator draws the same weights) and its linear layers."""
    first, mid, last = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out_dim)
    return nn.Sequential(first, nn.ReLU(inplace=True), mid, nn.ReLU(inplace=True), last), (first, mid, last)


class AffineCoupling(nn.Module):
    r"""One invertible step of F_t: coordinate `axis` moves; the other two and t condition it.

    forward (frame → canonical):  y_a = (x_a − shift) · exp(−scale)
    inverse (canonical → frame):  x_a = y_a · exp(scale) + shift
    (scale, shift) = mlp(planes (b,c), (b,t), (c,t) at (x_b, x_c, t) [, x_b, x_c])

    t enters only through the time planes, so the time axis can grow without changing fitted frames.

    x_b and x_c pass through unchanged, so the inverse is exact and closed-form.
    The MLP's last layer starts at zero, so the step starts as the identity.
    scale = max_log_scale · tanh(·) keeps exp() finite.
    """

    # the fused layer's constants (`fused_coupling.CouplingConstants`), as buffers
    _plane_coords: Tensor
    _moving: Tensor
    _coord_select: Tensor
    _max_log_scale: Tensor

    def __init__(self, axis: int, cfg: CouplingConfig, hex_cfg: HexPlaneConfig, num_frames: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.axis = int(axis)
        self.cond = tuple(i for i in range(3) if i != self.axis)  # (b, c)
        b, c = self.cond
        self.features = MultiScaleHexPlane(hex_cfg, num_frames, planes=((b, c), (b, TIME), (c, TIME)),
                                           generator=generator)
        self.use_coords = cfg.use_coords
        in_dim = self.features.out_dim + (2 if cfg.use_coords else 0)
        self.mlp, self.linears = _mlp(in_dim, cfg.hidden_dim, 2)
        last = self.linears[2]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.max_log_scale = float(cfg.max_log_scale)
        self.fused = bool(cfg.fused)
        # the fused layer's index tensors (buffers: they follow the module to its device and dtype; not saved),
        # for the planes in the features' own order, spatial then time: (b, c), (b, t), (c, t)
        pairs = (*self.features.spatial, *self.features.temporal)
        for name, value in coupling_constants(self.axis, pairs, self.max_log_scale).items():
            self.register_buffer(f"_{name}", value, persistent=False)
        self.bf16 = False

    def scale_shift(self, x_norm: Float[Tensor, "P 3"], t_norm: Float[Tensor, "P 1"]
                    ) -> tuple[Float[Tensor, " P"], Float[Tensor, " P"]]:
        """Log-scale and shift of the moving coordinate, from the conditioning coordinates."""
        xyzt = torch.cat([x_norm, t_norm], dim=-1)  # (P, 4); the moving axis is ignored by the planes
        feat = self.features(xyzt)  # (P, F)
        if self.use_coords:
            b, c = self.cond
            feat = torch.cat([feat, x_norm[:, b:b + 1], x_norm[:, c:c + 1]], dim=-1)
        if self.bf16 and feat.device.type == "cpu":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                raw = self.mlp(feat)
            raw = raw.float()
        else:
            raw = self.mlp(feat)  # (P, 2)
        scale = self.max_log_scale * torch.tanh(raw[:, 0])
        return scale, raw[:, 1]

    def _replace(self, x: Tensor, value: Tensor) -> Tensor:
        """`x` with its moving coordinate replaced by `value` (one where, not a select per column)."""
        moving = torch.arange(3, device=x.device) == self.axis
        return torch.where(moving, value.unsqueeze(-1), x)

    def _fused(self, x: Tensor, t: Tensor, inverse: bool) -> Tensor:
        """The layer as one autograd node (`fused_coupling`): same values and gradients, far fewer operator calls."""
        mlp = [p for layer in self.linears for p in (layer.weight, layer.bias)]
        consts = CouplingConstants(self.axis, self._plane_coords, self._moving, self._coord_select,
                                   self._max_log_scale, self.max_log_scale)
        return coupling_step(x, t, consts, list(self.features.spatial_grids), list(self.features.time_grids), mlp,
                             self.use_coords, inverse)

    def forward(self, x_norm: Float[Tensor, "P 3"], t_norm: Float[Tensor, "P 1"]) -> Float[Tensor, "P 3"]:
        if self.fused and not self.bf16:
            return self._fused(x_norm, t_norm, inverse=False)
        scale, shift = self.scale_shift(x_norm, t_norm)
        return self._replace(x_norm, (x_norm[:, self.axis] - shift) * torch.exp(-scale))

    def inverse(self, u_canon: Float[Tensor, "P 3"], t_norm: Float[Tensor, "P 1"]) -> Float[Tensor, "P 3"]:
        if self.fused and not self.bf16:
            return self._fused(u_canon, t_norm, inverse=True)
        scale, shift = self.scale_shift(u_canon, t_norm)
        return self._replace(u_canon, u_canon[:, self.axis] * torch.exp(scale) + shift)


class InvertibleMap(nn.Module):
    """F_t: frame-t workspace coordinates → canonical coordinates, and its exact inverse.

    Both directions take any leading batch shape; `t_norm` broadcasts as (*B, 1).
    """

    def __init__(self, cfg: CouplingConfig, hex_cfg: HexPlaneConfig, num_frames: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        axes = [cfg.axis_order[k % len(cfg.axis_order)] for k in range(cfg.num_layers)]
        couplings = tuple(AffineCoupling(a, cfg, hex_cfg, num_frames, generator) for a in axes)
        self.layers = nn.ModuleList(couplings)  # registers the parameters (state-dict keys `layers.k.…`)
        self.couplings: tuple[AffineCoupling, ...] = couplings  # the same modules, typed, in order

    def set_bf16(self, on: bool) -> None:
        for layer in self.couplings:
            layer.bf16 = bool(on)

    def forward(self, x_norm: Float[Tensor, "*B 3"], t_norm: Float[Tensor, "*B 1"]) -> Float[Tensor, "*B 3"]:
        """x (frame t) → u (canonical)."""
        batch = x_norm.shape[:-1]
        y = x_norm.reshape(-1, 3)
        t = t_norm.expand(*batch, 1).reshape(-1, 1)
        for layer in self.couplings:
            y = layer(y, t)
        return y.reshape(*batch, 3)

    def inverse(self, u_canon: Float[Tensor, "*B 3"], t_norm: Float[Tensor, "*B 1"]) -> Float[Tensor, "*B 3"]:
        """u (canonical) → x (frame t)."""
        batch = u_canon.shape[:-1]
        y = u_canon.reshape(-1, 3)
        t = t_norm.expand(*batch, 1).reshape(-1, 1)
        for layer in reversed(self.couplings):
            y = layer.inverse(y, t)
        return y.reshape(*batch, 3)

    def grow_time(self, num_frames: int, drop_first: int = 0) -> None:
        for layer in self.couplings:
            layer.features.grow_time(num_frames, drop_first)

    def planes(self) -> list[MultiScaleHexPlane]:
        return [layer.features for layer in self.couplings]
