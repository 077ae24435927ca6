r"""Volume rendering through the invertible map, and the assembled InvNeRF model (DESIGN §3.2).

Along a ray of frame i with sorted depths z_1 < … < z_S (metres) and densities σ_s at the canonical
points u_s = F_i(x_s):

    δ_s = (z_{s+1} − z_s)·|dir| / scale_m      (normalised length; the last δ repeats the previous)
    α_s = 1 − exp(−σ_s δ_s),   T_s = Π_{r<s} (1 − α_r),   w_s = T_s α_s,   Σ w_s ≤ 1

Expected depth and colour are Σ w_s z_s and Σ w_s c_s, divided by the opacity Σ w_s (the ray is
assumed to hit tissue; a separate loss drives the opacity to 1). The mapped point in frame j is
F_j⁻¹(Σ w_s u_s / Σ w_s), the expected canonical point mapped back (`render.mapped_point` =
expected_canonical, one inverse map per ray), or Σ w_s F_j⁻¹(u_s) / Σ w_s with every sample mapped back
(per_sample); the two agree once the density is sharp. Metres in the world frame.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..config import FitConfig
from ..shapes import Float, Int
from .canonical import CanonicalField
from .coupling import InvertibleMap
from .hexplane import t_norm_from_frame
from .plane_regularisers import plane_regularisers
from .workspace import Workspace


def volume_weights(sigma: Float[Tensor, "R S"], z_m: Float[Tensor, "R S"], step_scale: Float[Tensor, "R 1"]
                   ) -> tuple[Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """(weights w_s, transmittance T_s) of sorted samples; `step_scale` turns Δz into normalised length.

    >>> w, T = volume_weights(torch.tensor([[0.0, 1e6, 1e6]]), torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 1))
    >>> [round(v, 3) for v in w[0].tolist()]   # all weight on the first opaque sample
    [0.0, 1.0, 0.0]
    """
    dz = z_m[:, 1:] - z_m[:, :-1]
    dz = torch.cat([dz, dz[:, -1:]], dim=-1)  # (R, S)
    tau = sigma * dz * step_scale  # optical thickness per interval
    acc_tau = torch.cumsum(tau, dim=-1)
    trans = torch.exp(-(acc_tau - tau))  # exclusive: light reaching sample s
    alpha = 1.0 - torch.exp(-tau)
    return trans * alpha, trans


def expected(weights: Float[Tensor, "R S"], values: Float[Tensor, "R S *C"], normalise: bool = True) -> Tensor:
    """Σ w_s v_s (divided by Σ w_s when `normalise`)."""
    w = weights
    if values.dim() == 3:
        out = (w[..., None] * values).sum(dim=1)
        if normalise:
            out = out / w.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return out
    out = (w * values).sum(dim=1)
    if normalise:
        out = out / w.sum(dim=1).clamp_min(1e-6)
    return out


@dataclass(frozen=True)
class RenderOutput:
    """One volume rendering of R rays with S sorted samples each (`InvNeRF.render`).

    Depths are metres along the camera's depth axis; `x_norm`, `u_canon` and `x_target_norm` are
    workspace-normalised ([-1, 1] inside the box); `x_target_m` is world metres.
    """

    weights: Float[Tensor, "R S"]  # w_s = T_s α_s, Σ_s w_s ≤ 1
    trans: Float[Tensor, "R S"]  # transmittance T_s: light reaching sample s
    sigma: Float[Tensor, "R S"]  # density per unit of normalised length
    z_m: Float[Tensor, "R S"]  # sample depths, metres
    u_canon: Float[Tensor, "R S 3"]  # canonical points of the samples
    x_norm: Float[Tensor, "R S 3"]  # samples in frame space, normalised
    acc: Float[Tensor, " R"]  # opacity Σ_s w_s
    depth_m: Float[Tensor, " R"]  # expected depth, metres
    rgb: Float[Tensor, "R 3"] | None = None  # expected colour in [0, 1]; None without `with_colour`
    x_target_m: Float[Tensor, "R 3"] | None = None  # expected mapped point in the target frame; None without targets
    # the mapped samples (R, S, 3) with `per_sample`, the mapped expected canonical point (R, 3) otherwise
    x_target_norm: Float[Tensor, "R S 3"] | Float[Tensor, "R 3"] | None = None
    # each ray's point at `anchor_z_m` mapped into the target frame, world metres; None without anchor_z_m
    anchor_target_m: Float[Tensor, "R 3"] | None = None

    def colour(self) -> Float[Tensor, "R 3"]:
        """`rgb`, which a render holds only with `with_colour=True`."""
        if self.rgb is None:
            raise ValueError("render: no colour (rendered with with_colour=False)")
        return self.rgb

    def mapped(self) -> tuple[Float[Tensor, "R 3"], Float[Tensor, "R S 3"] | Float[Tensor, "R 3"]]:
        """(`x_target_m`, `x_target_norm`), which a render holds only when given `target_frame`."""
        if self.x_target_m is None or self.x_target_norm is None:
            raise ValueError("render: no mapped points (rendered without target_frame)")
        return self.x_target_m, self.x_target_norm


class InvNeRF(nn.Module):
    """Invertible map + canonical field + workspace: everything that is fitted to one sequence."""

    _frame_t: Tensor  # (T,) normalised time of each frame (a buffer)

    def __init__(self, cfg: FitConfig, num_frames: int, workspace: Workspace, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))  # nn.Linear initialisers use the global generator
        self.num_frames = int(num_frames)
        self.workspace = workspace
        self.map = InvertibleMap(cfg.coupling, cfg.hexplane, num_frames, generator=gen)
        self.field = CanonicalField(cfg.canonical, num_frames, generator=gen)
        self.map.set_bf16(cfg.optim.bf16_mlp)
        self.field.bf16 = cfg.optim.bf16_mlp
        self.register_buffer("_frame_t", self._frame_times(self.num_frames), persistent=False)

    @staticmethod
    def _frame_times(num_frames: int, device: torch.device | None = None) -> Float[Tensor, " T"]:
        return t_norm_from_frame(torch.arange(max(num_frames, 1), device=device), num_frames)

    def t_norm(self, frame_idx: Int[Tensor, "*B"]) -> Float[Tensor, "*B 1"]:
        """Normalised time of frames (a table look-up; frames past either end read the end's time, which is
        what the time planes' border padding gives them anyway)."""
        idx = frame_idx.reshape(-1).clamp(0, self._frame_t.shape[0] - 1)
        return self._frame_t.index_select(0, idx).view(*frame_idx.shape, 1)

    def grow_time(self, num_frames: int, drop_first: int = 0) -> None:
        """Resize the time axis (online use): fitted frames keep their map; with `drop_first` the window
        slid on, and frame f is the old frame f + drop_first."""
        self.map.grow_time(num_frames, drop_first)
        self.field.grow_time(num_frames, drop_first)
        self.num_frames = int(num_frames)
        self._frame_t = self._frame_times(self.num_frames, self._frame_t.device)

    def to_canonical(self, x_world_m: Float[Tensor, "*B 3"], frame_idx: Int[Tensor, "*B"]) -> Float[Tensor, "*B 3"]:
        return self.map(self.workspace.to_norm(x_world_m), self.t_norm(frame_idx))

    def from_canonical(self, u_canon: Float[Tensor, "*B 3"], frame_idx: Int[Tensor, "*B"]) -> Float[Tensor, "*B 3"]:
        return self.workspace.from_norm(self.map.inverse(u_canon, self.t_norm(frame_idx)))

    def render(self, origins_m: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"], z_m: Float[Tensor, "R S"],
               frame_idx: Int[Tensor, " R"], target_frame: Int[Tensor, " R"] | None = None,
               with_colour: bool = True,
               mapped_point: Literal["per_sample", "expected_canonical"] = "per_sample",
               detach_weights_for_target: bool = False,
               anchor_z_m: Float[Tensor, " R"] | None = None) -> RenderOutput:
        """Render rays of frames `frame_idx`; optionally map them into `target_frame`.

        `rgb` is set when `with_colour`, `x_target_m` and `x_target_norm` when `target_frame` is
        given. With `detach_weights_for_target`, the weights used for the mapped point carry no gradient.
        With `anchor_z_m` (needs `target_frame`), each ray's point at that depth is mapped into the target
        frame too (`anchor_target_m`): it goes through F_i and F_j⁻¹ with the samples, in the same calls,
        but takes no part in the rendering.
        """
        if anchor_z_m is not None and target_frame is None:
            raise ValueError("render: anchor_z_m needs target_frame")
        R, S = z_m.shape
        A = 0 if anchor_z_m is None else 1
        z_all = z_m if anchor_z_m is None else torch.cat([z_m, anchor_z_m[:, None]], dim=1)  # (R, S + A)
        x_m = origins_m[:, None, :] + z_all[..., None] * dirs[:, None, :]  # (R, S + A, 3)
        t = self.t_norm(frame_idx)[:, None, :].expand(R, S + A, 1)  # (R, S + A, 1)
        x_norm_all = self.workspace.to_norm(x_m)
        u_all = self.map(x_norm_all, t)  # (R, S + A, 3)
        x_norm, u = x_norm_all[:, :S], u_all[:, :S]  # the rendered samples (views)
        fidx = frame_idx[:, None].expand(R, S)
        sigma, rgb = self.field(u, fidx, with_colour=with_colour)
        step_scale = (dirs.norm(dim=-1, keepdim=True) / self.workspace.scale_m)  # (R, 1)
        weights, trans = volume_weights(sigma, z_m, step_scale)
        acc, depth_m = weights.sum(dim=1), expected(weights, z_m)  # before colour: the backward sums in the same order
        rgb_exp = expected(weights, rgb) if rgb is not None else None
        x_target_m = x_target_norm = anchor_target_m = None
        if target_frame is not None:
            w = weights.detach() if detach_weights_for_target else weights  # detached: the mapped point trains F only
            if mapped_point == "per_sample":
                tj = self.t_norm(target_frame)[:, None, :].expand(R, S + A, 1)
                mapped = self.map.inverse(u_all, tj)  # (R, S + A, 3)
                x_target_norm = mapped[:, :S]
                x_target_m = self.workspace.from_norm(expected(w, x_target_norm))
            else:
                u_bar = expected(w, u)  # (R, 3)
                tj = self.t_norm(target_frame)[:, None, :].expand(R, 1 + A, 1)
                mapped = self.map.inverse(torch.cat([u_bar[:, None], u_all[:, S:]], dim=1), tj)  # (R, 1 + A, 3)
                x_target_norm = mapped[:, 0]
                x_target_m = self.workspace.from_norm(x_target_norm)
            if A:
                anchor_target_m = self.workspace.from_norm(mapped[:, -1])
        return RenderOutput(weights=weights, trans=trans, sigma=sigma, z_m=z_m, u_canon=u, x_norm=x_norm,
                            acc=acc, depth_m=depth_m, rgb=rgb_exp,
                            x_target_m=x_target_m, x_target_norm=x_target_norm, anchor_target_m=anchor_target_m)

    def plane_regularisers(self) -> tuple[Tensor, Tensor]:
        """(spatial TV, time smoothness) summed over every plane of the map and the field (`plane_regularisers`)."""
        sets = [self.field.planes, *self.map.planes()]
        return plane_regularisers([g for p in sets for g in p.spatial_grids], [g for p in sets for g in p.time_grids])
