"""The workspace: an axis-aligned box around the tissue, normalised to [-1, 1]³ (DESIGN §3.2).

The box comes from robust percentiles of the triangulated stereo points (in the world frame: the
left camera of frame 0 without kinematics), grown by a margin. Every model coordinate is
`x_norm = (x_m − center_m) / half_extent_m`. Rays are clipped to the box, and samples and mapped
points that leave it are penalised by the range loss.
"""

import numpy as np
import torch
from torch import Tensor, nn

from ..config import RenderConfig
from ..errors import InputError
from ..shapes import Bool, Float


class Workspace(nn.Module):
    """Box `center_m ± half_extent_m` (metres, world frame) and the maps to and from [-1, 1]³."""

    center_m: Float[Tensor, "3"]  # buffers (registered in __init__)
    half_extent_m: Float[Tensor, "3"]

    def __init__(self, center_m: Float[Tensor, "3"], half_extent_m: Float[Tensor, "3"]) -> None:
        super().__init__()
        self.register_buffer("center_m", torch.as_tensor(center_m, dtype=torch.float32).clone())
        self.register_buffer("half_extent_m", torch.as_tensor(half_extent_m, dtype=torch.float32).clone())

    @classmethod
    def from_points(cls, xyz_m: np.ndarray | Tensor, cfg: RenderConfig) -> "Workspace":
        """Box from (P, 3) metric points: percentiles per axis, plus `workspace_margin` of the extent."""
        pts = torch.as_tensor(np.asarray(xyz_m) if not isinstance(xyz_m, Tensor) else xyz_m, dtype=torch.float32)
        pts = pts[torch.isfinite(pts).all(dim=-1)]
        if pts.shape[0] < 10:
            raise InputError(f"stereo depth: only {pts.shape[0]} valid points; cannot bound the workspace",
                             reason="no_stereo")
        if pts.shape[0] > 2_000_000:  # quantile needs a bounded input; a strided subset is exact enough
            pts = pts[:: pts.shape[0] // 1_000_000 + 1]
        lo_q, hi_q = (p / 100.0 for p in cfg.workspace_percentiles)
        q = torch.quantile(pts, torch.tensor([lo_q, hi_q]), dim=0)  # (2, 3)
        lo, hi = q[0], q[1]
        extent = (hi - lo).clamp_min(1e-4)
        # depth range is narrow on smooth tissue; keep the box from collapsing along any axis
        extent = torch.maximum(extent, 0.1 * extent.max())
        center = 0.5 * (lo + hi)
        half = 0.5 * extent * (1.0 + 2.0 * cfg.workspace_margin)
        return cls(center, half)

    @property
    def scale_m(self) -> Tensor:
        """Metres per normalised unit along a ray (the mean half extent)."""
        return self.half_extent_m.mean()

    def to_norm(self, x_m: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3"]:
        return (x_m - self.center_m) / self.half_extent_m

    def from_norm(self, x_norm: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3"]:
        return x_norm * self.half_extent_m + self.center_m

    def clip_rays(self, origins_m: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"]
                  ) -> tuple[Float[Tensor, " R"], Float[Tensor, " R"], Bool[Tensor, " R"]]:
        """Slab test: ray parameters (near, far) where the ray is inside the box, and a hit mask.

        With camera-depth rays (dirs with unit z in the camera), the parameters are depths in metres.
        Rays that miss get a small default interval at the box centre depth.
        """
        lo = self.center_m - self.half_extent_m
        hi = self.center_m + self.half_extent_m
        safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
        t0 = (lo - origins_m) / safe
        t1 = (hi - origins_m) / safe
        near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(1e-4)
        far = torch.maximum(t0, t1).amin(dim=-1)
        hit = far > near + 1e-6
        mid = (self.center_m - origins_m).norm(dim=-1) / dirs.norm(dim=-1)
        near = torch.where(hit, near, (mid - self.half_extent_m.min()).clamp_min(1e-4))
        far = torch.where(hit, far, mid + self.half_extent_m.min())
        return near, far, hit
