"""Multi-scale plane features over (x, y, z, t): HexPlane and its static tri-plane subset (DESIGN §3.2).

A plane (a, b) is a learnable (F, res_b, res_a) image looked up bilinearly at (coord_a, coord_b) with
`grid_sample`. Features of the requested planes are multiplied (so a time plane that holds 1 leaves
the spatial features as they are) and the scales are concatenated, as in K-Planes. Time planes hold
one row per frame (times `time_res_per_frame`), start at 1 and can grow with the sequence.

Coordinates are workspace-normalised: x, y, z and t all lie in [-1, 1]; t = -1 is the first frame and
t = 1 the last. `align_corners=True`, so t_norm of frame k hits row k exactly.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import HexPlaneConfig
from ..shapes import Float

TIME = 3
ALL_PLANES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
TRI_PLANES = ((0, 1), (0, 2), (1, 2))


def time_rows(num_frames: int, time_res_per_frame: float) -> int:
    """Rows of a time plane for `num_frames` frames (at least 2, so `grid_sample` is defined)."""
    return max(2, int(round(num_frames * time_res_per_frame)))


def t_norm_from_frame(frame_idx: Tensor, num_frames: int) -> Tensor:
    """Frame index → t in [-1, 1] (a single frame maps to 0)."""
    if num_frames <= 1:
        return torch.zeros_like(frame_idx, dtype=torch.float32)
    return frame_idx.to(torch.float32) * (2.0 / (num_frames - 1)) - 1.0


def resample_time_rows(plane: Tensor, old_frames: int, new_frames: int, new_rows: int, drop_first: int = 0) -> Tensor:
    """Resize a (n, F, rows, res) time-plane stack to a sequence of `new_frames` frames whose frame f was
    the old frame f + `drop_first` (a window that slid on by `drop_first` frames).

    Rows are placed at frame positions; frames past the old end repeat the last row, so the
    warm-started map is unchanged on the frames it was fitted to.
    """
    old_rows = plane.shape[2]
    f_new = torch.linspace(0, max(new_frames - 1, 0), new_rows, device=plane.device) + drop_first  # old frame of each new row
    pos = f_new * ((old_rows - 1) / max(old_frames - 1, 1))
    pos = pos.clamp(0, old_rows - 1)
    lo = pos.floor().long().clamp(max=old_rows - 1)
    hi = (lo + 1).clamp(max=old_rows - 1)
    a = (pos - lo.float()).view(1, 1, -1, 1)
    return plane[:, :, lo] * (1 - a) + plane[:, :, hi] * a


class MultiScaleHexPlane(nn.Module):
    """Features on a chosen set of planes of (x, y, z, t) at several spatial resolutions.

    Product of bilinear look-ups over the planes, concatenated over scales. Spatial planes start
    uniform in [init_low, init_high]; time planes start at 1, so a new model is time-invariant.
    All spatial planes of one scale are looked up in one `grid_sample` call, and so are all time
    planes (DESIGN §3.4).
    """

    _spatial_idx: Tensor  # (n_spatial, 2) coordinate indices of the spatial planes (a buffer)
    _temporal_idx: Tensor  # (n_time, 2) of the time planes

    def __init__(self, cfg: HexPlaneConfig, num_frames: int, planes: Sequence[tuple[int, int]] = ALL_PLANES,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.planes: tuple[tuple[int, int], ...] = tuple((int(a), int(b)) for a, b in planes)
        self.spatial = tuple(p for p in self.planes if TIME not in p)
        self.temporal = tuple(p for p in self.planes if TIME in p)
        # the planes' coordinate pairs as index tensors: one gather per look-up (not a select per coordinate,
        # whose backward allocates a zero tensor each); not saved in the state dict
        self.register_buffer("_spatial_idx", torch.tensor(self.spatial or [(0, 0)], dtype=torch.long), persistent=False)
        self.register_buffer("_temporal_idx", torch.tensor(self.temporal or [(0, 0)], dtype=torch.long), persistent=False)
        self.num_frames = int(num_frames)
        self.time_res_per_frame = cfg.time_res_per_frame
        self.out_dim = int(sum(cfg.feature_dims))
        rows = time_rows(num_frames, cfg.time_res_per_frame)
        self.spatial_grids = nn.ParameterList()
        self.time_grids = nn.ParameterList()
        for res, fdim in zip(cfg.resolutions, cfg.feature_dims):
            if self.spatial:
                g = torch.empty(len(self.spatial), fdim, res, res)
                g.uniform_(cfg.init_low, cfg.init_high, generator=generator)
                self.spatial_grids.append(nn.Parameter(g))  # (n_spatial, F, res, res)
            if self.temporal:
                self.time_grids.append(nn.Parameter(torch.ones(len(self.temporal), fdim, rows, res)))  # (n_time, F, T_rows, res)

    def forward(self, xyzt_norm: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B F"]:
        """Features at workspace-normalised points; all four coordinates lie in [-1, 1]."""
        batch = xyzt_norm.shape[:-1]
        pts = xyzt_norm.reshape(-1, 4)
        outs = []
        for li in range(len(self.spatial_grids) if self.spatial else len(self.time_grids)):
            feat = None
            if self.spatial:
                feat = self._lookup(self.spatial_grids[li], pts, self._spatial_idx)
            if self.temporal:
                ft = self._lookup(self.time_grids[li], pts, self._temporal_idx)
                feat = ft if feat is None else feat * ft
            outs.append(feat)
        return torch.cat(outs, dim=-1).reshape(*batch, self.out_dim)

    @staticmethod
    def _lookup(grid: Tensor, pts: Tensor, plane_idx: Tensor) -> Tensor:
        # grid_sample's x indexes columns (first coordinate of the plane), y rows (second).
        coords = pts[:, plane_idx].transpose(0, 1)  # (n, P, 2): plane k looks up (pts[:, a_k], pts[:, b_k])
        out = F.grid_sample(grid, coords.unsqueeze(1), mode="bilinear", padding_mode="border",
                            align_corners=True)[:, :, 0]  # (n, F, P)
        parts = out.unbind(0)  # one op whose backward is one stack (indexing each plane's backward zero-fills)
        feat = parts[0]
        for part in parts[1:]:  # explicit product: prod()'s backward is slow (zero checks)
            feat = feat * part
        return feat.transpose(0, 1)  # (P, F)

    def grow_time(self, num_frames: int, drop_first: int = 0) -> None:
        """Resize the time axis to `num_frames`, keeping fitted frames unchanged; with `drop_first`, the
        first frames leave and frame f becomes the old frame f + drop_first (a sliding window)."""
        if (num_frames == self.num_frames and drop_first == 0) or not self.temporal:
            self.num_frames = int(num_frames)
            return
        rows = time_rows(num_frames, self.time_res_per_frame)
        for i, g in enumerate(self.time_grids):
            new = resample_time_rows(g.data, self.num_frames, num_frames, rows, drop_first)
            self.time_grids[i] = nn.Parameter(new.contiguous())
        self.num_frames = int(num_frames)
