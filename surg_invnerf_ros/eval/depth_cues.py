"""Where the 3D error comes from, and how much depth known camera poses could add.

Known endoscope poses help the 3D error only through motion parallax: a depth error moves a point's
projection in another frame by an amount set by the camera's travel. Two views explain the
kinematics bench:

- `err3d_parts` splits a tracker's 3D error into the lateral part (what is left with the true depth
  on the predicted ray) and the depth part, and within that the per-track bias (the mean signed
  depth error over frames), which no averaging over frames removes;
- `motion_depth_cues` measures, from the ground truth alone, the image shift per mm of depth error
  through the stereo baseline (disparity) and through the camera motion (parallax, were the tissue
  rigid), and how far the tissue itself moves in the world frame, which the map has to explain
  and which hides that parallax.
"""

from __future__ import annotations

import numpy as np

from ..geometry import invert_T, project_px, transform_points
from ..structs import Tracks
from .metrics import _masked_mean as _mean
from .metrics import match_by_id


def _evaluated(gt: Tracks, query_frames: np.ndarray) -> np.ndarray:
    """(T, N) the frames the metrics score: after the query frame, visible, with a finite truth."""
    T = gt.visible.shape[0]
    after = np.arange(T)[:, None] > np.asarray(query_frames, np.int64)[None, :]
    return after & gt.visible.astype(bool) & np.isfinite(gt.xyz).all(axis=-1)


def err3d_parts(pred: Tracks, gt: Tracks, query_frames: np.ndarray) -> dict[str, float]:
    """The 3D error split into its lateral and depth parts (mm), over the frames the metrics score
    that have a finite prediction.

    Returns `err3d_lateral_mm` (the error with the true depth z on the predicted camera ray: the
    2D part), `depth_err_mm` (mean |Δz|) and `depth_bias_mm` (mean over tracks of |mean Δz over
    their frames|: the share of the depth error that is the same in every frame).
    """
    _, _, xyz_m = match_by_id(pred, gt)
    gt_m = gt.xyz.astype(np.float64)
    ok = _evaluated(gt, query_frames) & np.isfinite(xyz_m).all(axis=-1) & (xyz_m[..., 2] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        on_ray_true_z = xyz_m * (gt_m[..., 2] / xyz_m[..., 2])[..., None]
    lateral_mm = np.linalg.norm(on_ray_true_z - gt_m, axis=-1) * 1000.0
    dz_mm = np.where(ok, (xyz_m[..., 2] - gt_m[..., 2]) * 1000.0, np.nan)
    tracked = ok.any(axis=0)
    with np.errstate(invalid="ignore"):
        bias_mm = np.abs(np.nanmean(dz_mm[:, tracked], axis=0)) if tracked.any() else np.array([np.nan])
    return {"err3d_lateral_mm": _mean(lateral_mm, ok), "depth_err_mm": _mean(np.abs(np.nan_to_num(dz_mm)), ok),
            "depth_bias_mm": float(np.mean(bias_mm))}


def motion_depth_cues(gt: Tracks, T_world_cam: np.ndarray, K: np.ndarray, baseline_m: float,
                      query_frames: np.ndarray, depth_err_m: float = 1e-3) -> dict[str, float]:
    """What a depth error of each query point does to the images, from the ground truth alone.

    Args:
        gt: ground-truth tracks; `xyz` in each frame's left camera (metres).
        T_world_cam: (T, 4, 4) true left-camera poses.
        K, baseline_m: the rectified left intrinsics and the stereo baseline.
        query_frames: (N,) query frame of each point.
        depth_err_m: the depth error moved along each query ray (the shifts are linear in it).

    Returns (means over the frames the metrics score):
        `stereo_px_per_mm`: disparity change per mm of depth error;
        `parallax_px_per_mm`: shift of the point's projection per mm of depth error at its query
        frame, carried to frame t by the camera motion alone (as if the tissue were rigid);
        `camera_travel_mm`: distance of the camera centre at t from its place at the query frame;
        `tissue_motion_world_mm`: distance the tissue point moved in the world frame (deformation),
        which the map must explain and which known poses cannot.
    """
    T, N = gt.visible.shape
    q = np.asarray(query_frames, np.int64)
    ev = _evaluated(gt, q)
    cols = np.arange(N)
    gt_m = gt.xyz.astype(np.float64)
    x_q = gt_m[q, cols]  # (N, 3) each point at its query frame
    T_wc = np.asarray(T_world_cam, np.float64)
    T_cw = invert_T(T_wc)
    x_q_far = x_q * ((x_q[:, 2] + depth_err_m) / x_q[:, 2])[:, None]  # along the query ray
    T_t_q = np.einsum("tij,njk->tnik", T_cw, T_wc[q])  # (T, N, 4, 4) camera q → camera t
    shift_px = np.linalg.norm(project_px(transform_points(T_t_q, x_q_far[None, :, None, :])[:, :, 0], K)
                              - project_px(transform_points(T_t_q, x_q[None, :, None, :])[:, :, 0], K), axis=-1)
    z_t = gt_m[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        disparity_px = K[0, 0] * baseline_m * (1.0 / z_t - 1.0 / (z_t + depth_err_m))
    x_world = transform_points(T_wc, gt_m)  # (T, N, 3)
    tissue_mm = np.linalg.norm(x_world - x_world[q, cols][None], axis=-1) * 1000.0
    travel_mm = np.linalg.norm(T_wc[:, None, :3, 3] - T_wc[q][None, :, :3, 3], axis=-1) * 1000.0
    per_mm = 1e-3 / depth_err_m
    return {"stereo_px_per_mm": _mean(disparity_px, ev) * per_mm, "parallax_px_per_mm": _mean(shift_px, ev) * per_mm,
            "camera_travel_mm": _mean(travel_mm, ev), "tissue_motion_world_mm": _mean(tissue_mm, ev)}
