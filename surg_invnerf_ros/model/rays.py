"""Rays from the calibrated stereo cameras and their samples (DESIGN §3.2, §3.4).

A ray is `x(z) = origin + z · dir` in the world frame, with `dir` the camera ray whose camera-frame
z component is 1, so the ray parameter z is the depth in metres in that camera. Samples are drawn
where they pay (§3.4): `near_samples` inside a band around the stereo depth, whose half-width is
`near_band_disp_px` disparity pixels, plus `workspace_samples` stratified over the workspace. Rays
without stereo depth get `invalid_depth_samples` over the workspace instead.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import RenderConfig
from ..shapes import Bool, Float
from .workspace import Workspace


def pixel_rays(uv_px: Float[Tensor, "R 2"], K: Float[Tensor, "3 3"], T_world_cam: Float[Tensor, "R 4 4"] | None = None,
               cam_offset_m: Float[Tensor, "3"] | None = None) -> tuple[Float[Tensor, "R 3"], Float[Tensor, "R 3"]]:
    """Origins (metres, world) and depth-unit directions of rays through left-image pixels.

    `cam_offset_m` moves the centre in the left camera frame: (baseline_m, 0, 0) gives the right
    camera of a rectified pair (X_right = X_left − [B, 0, 0]).
    """
    uv1 = F.pad(uv_px, (0, 1), value=1.0)  # homogeneous pixels (u, v, 1)
    dirs = torch.linalg.solve_triangular(K, uv1.mT, upper=True).mT  # (R, 3) = K⁻¹ (u, v, 1), camera frame
    origins = torch.zeros_like(dirs)
    if cam_offset_m is not None:
        origins = origins + cam_offset_m
    if T_world_cam is not None:
        R = T_world_cam[:, :3, :3]
        dirs = torch.einsum("rij,rj->ri", R, dirs)
        origins = torch.einsum("rij,rj->ri", R, origins) + T_world_cam[:, :3, 3]
    return origins, dirs


def transform_m(T_dst_src: Float[Tensor, "*#batch 4 4"] | None, x_src_m: Float[Tensor, "*#batch 3"]
                ) -> Float[Tensor, "*batch 3"]:
    """x_dst = R·x_src + t per point (None = identity).

    The leading dims of transforms and points broadcast against each other, e.g. (T, 1, 4, 4) poses
    with (T, N, 3) points, or one (4, 4) transform for every point; the result has the broadcast batch.
    """
    if T_dst_src is None:
        return x_src_m
    return torch.einsum("...ij,...j->...i", T_dst_src[..., :3, :3], x_src_m) + T_dst_src[..., :3, 3]


def project_px(x_world_m: Float[Tensor, "*#batch 3"], K: Float[Tensor, "3 3"],
               T_cam_world: Float[Tensor, "*#batch 4 4"] | None = None
               ) -> tuple[Float[Tensor, "*batch 2"], Float[Tensor, "*batch"]]:
    """World points → (pixels, camera depth in metres). Depth is clamped away from 0 for the division.

    Points and transforms broadcast as in `transform_m`."""
    x = transform_m(T_cam_world, x_world_m)
    z = x[..., 2]
    uvw = torch.matmul(x, K.mT)  # (u z, v z, z): one product, not a scalar operation per entry of K
    return uvw[..., :2] / z.clamp_min(1e-6).unsqueeze(-1), z


def stratified(near: Float[Tensor, " R"], far: Float[Tensor, " R"], n: int, jitter: bool,
               generator: torch.Generator | None = None) -> Float[Tensor, "R S"]:
    """`n` depths per ray, one per equal bin of [near, far]: jittered in training, bin centres otherwise."""
    R = near.shape[0]
    if jitter:  # bin starts k/n plus a uniform offset in [0, 1/n)
        starts = torch.linspace(0.0, 1.0 - 1.0 / n, n, device=near.device, dtype=near.dtype)
        s = torch.empty(R, n, device=near.device, dtype=near.dtype).uniform_(0.0, 1.0 / n, generator=generator).add_(starts)
    else:  # bin centres (k + ½)/n
        s = torch.linspace(0.5 / n, 1.0 - 0.5 / n, n, device=near.device, dtype=near.dtype).expand(R, n)
    return torch.addcmul(near[:, None], (far - near)[:, None], s)  # (R, S), s in (0, 1)


def band_limits_m(depth_m: Float[Tensor, " R"], fx_b: float, band_disp_px: float
                  ) -> tuple[Float[Tensor, " R"], Float[Tensor, " R"]]:
    """Depths at disparity d ± band around a depth (fx·B in pixel·metres)."""
    disp = fx_b / depth_m.clamp_min(1e-6)
    near = fx_b / (disp + band_disp_px)
    far = fx_b / (disp - band_disp_px).clamp_min(0.25 * disp)
    return near, far


def sample_depths(origins_m: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"], stereo_depth_m: Float[Tensor, " R"],
                  workspace: Workspace, cfg: RenderConfig, fx_b: float, jitter: bool,
                  generator: torch.Generator | None = None, n_near: int | None = None, n_ws: int | None = None
                  ) -> tuple[Float[Tensor, "R S"], Bool[Tensor, " R"]]:
    """Sorted sample depths: band samples at valid stereo depth + workspace samples (DESIGN §3.4).

    Rays without valid stereo depth (NaN) put all their samples over the workspace. The sample
    count is the same for every ray, so the batch stays rectangular.
    """
    n_near = cfg.near_samples if n_near is None else n_near
    n_ws = cfg.workspace_samples if n_ws is None else n_ws
    near_ws, far_ws, _ = workspace.clip_rays(origins_m, dirs)
    valid = torch.isfinite(stereo_depth_m) & (stereo_depth_m > 0)
    total = n_near + n_ws
    z_all_ws = stratified(near_ws, far_ws, total, jitter, generator)  # (R, S) for invalid rays
    if n_near == 0:
        return z_all_ws, valid
    d = torch.where(valid, stereo_depth_m, 0.5 * (near_ws + far_ws))
    b_near, b_far = band_limits_m(d, fx_b, cfg.near_band_disp_px)
    z_band = stratified(b_near, b_far, n_near, jitter, generator)
    if n_ws > 0:
        z_ws = stratified(near_ws, far_ws, n_ws, jitter, generator)
        z_valid = torch.cat([z_band, z_ws], dim=-1)
    else:
        z_valid = z_band
    z = torch.where(valid[:, None], z_valid, z_all_ws)
    return torch.sort(z, dim=-1).values, valid
