"""Camera geometry on numpy arrays: projection, back-projection, stereo depth, rigid transforms.

Frames follow `STYLE.md` §3: `T_dst_src` is 4×4 with x_dst = T_dst_src · x_src; points in the
left optical frame are `xyz_cam_m`. Quaternions are `q_xyzw` (scalar last, as in ROS and scipy).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


def grid_points_px(n: int, width: int, height: int, margin_px: float) -> np.ndarray:
    """`n` pixels (rows of u, v) at the cell centres of a regular, aspect-matched grid that keeps
    `margin_px` from the image border: the one grid of query points."""
    w, h = max(width - 1 - 2 * margin_px, 1.0), max(height - 1 - 2 * margin_px, 1.0)
    nx = max(1, int(round(np.sqrt(n * w / h))))
    ny = max(1, int(np.ceil(n / nx)))
    us = margin_px + (np.arange(nx) + 0.5) * w / nx
    vs = margin_px + (np.arange(ny) + 0.5) * h / ny
    uu, vv = np.meshgrid(us, vs)
    return np.stack([uu.ravel(), vv.ravel()], axis=-1)[:n]


def project_px(xyz_cam_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of (..., 3) camera points to (..., 2) pixels; z <= 0 gives NaN."""
    z = xyz_cam_m[..., 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = xyz_cam_m[..., :2] / np.where(z > 0, z, np.nan)
    u = K[0, 0] * xy[..., 0] + K[0, 1] * xy[..., 1] + K[0, 2]
    v = K[1, 1] * xy[..., 1] + K[1, 2]
    return np.stack([u, v], axis=-1)


def unproject_m(uv_px: np.ndarray, depth_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Back-project (..., 2) pixels with (...) depths (z, metres) to (..., 3) camera points."""
    y = (uv_px[..., 1] - K[1, 2]) / K[1, 1]
    x = (uv_px[..., 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return np.stack([x * depth_m, y * depth_m, depth_m], axis=-1)


def rigid_transform_problem(T: np.ndarray) -> str | None:
    """What keeps a 4×4 from being a rigid transform (last row 0 0 0 1, a proper rotation block),
    as the end of a one-line error; None when it is one."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        return f"expected a finite 4x4, got shape {T.shape}"
    if np.abs(T[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-9:
        return f"expected last row 0 0 0 1, got {T[3].tolist()}"
    R = T[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-6 or np.linalg.det(R) <= 0:
        return "expected a rotation (orthonormal, det +1) in the 3x3 block"
    return None


def depth_from_disparity_m(disp_px: np.ndarray, fx_px: float, baseline_m: float) -> np.ndarray:
    """Z = fx·B/d for a rectified pair; non-positive disparity gives NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(disp_px > 0, fx_px * baseline_m / disp_px, np.nan)


def sample_bilinear(image: np.ndarray, uv_px: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an (H, W) or (H, W, C) array at (N, 2) pixels; NaN outside or if any
    neighbour is NaN (so invalid depth never blends into valid depth)."""
    H, W = image.shape[:2]
    u, v = uv_px[:, 0], uv_px[:, 1]
    inside = (u >= 0) & (v >= 0) & (u <= W - 1) & (v <= H - 1)
    u0 = np.clip(np.floor(u), 0, max(W - 2, 0)).astype(np.int64)
    v0 = np.clip(np.floor(v), 0, max(H - 2, 0)).astype(np.int64)
    du = np.clip(u - u0, 0, 1)
    dv = np.clip(v - v0, 0, 1)
    u1 = np.minimum(u0 + 1, W - 1)
    v1 = np.minimum(v0 + 1, H - 1)
    img = image.astype(np.float64)
    if img.ndim == 2:
        img = img[..., None]
    w = [((1 - du) * (1 - dv)), (du * (1 - dv)), ((1 - du) * dv), (du * dv)]
    out = (w[0][:, None] * img[v0, u0] + w[1][:, None] * img[v0, u1]
           + w[2][:, None] * img[v1, u0] + w[3][:, None] * img[v1, u1])
    out[~inside] = np.nan
    return out[:, 0] if image.ndim == 2 else out


def transform_points(T_dst_src: np.ndarray, xyz_src: np.ndarray) -> np.ndarray:
    """Apply (..., 4, 4) rigid transforms to (..., N, 3) points."""
    R = T_dst_src[..., :3, :3]
    t = T_dst_src[..., :3, 3]
    return np.einsum("...ij,...nj->...ni", R, xyz_src) + t[..., None, :]


def invert_T(T_dst_src: np.ndarray) -> np.ndarray:
    """Closed-form inverse of (..., 4, 4) rigid transforms: T_src_dst."""
    R = T_dst_src[..., :3, :3]
    t = T_dst_src[..., :3, 3]
    out = np.zeros_like(T_dst_src)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def T_from_xyz_qxyzw(xyz_m: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """(..., 3) translations and (..., 4) quaternions → (..., 4, 4) transforms."""
    xyz_m = np.asarray(xyz_m, dtype=np.float64)
    q = np.asarray(q_xyzw, dtype=np.float64)
    shape = xyz_m.shape[:-1]
    T = np.zeros(shape + (4, 4))
    T[..., :3, :3] = Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(shape + (3, 3))
    T[..., :3, 3] = xyz_m
    T[..., 3, 3] = 1.0
    return T


def xyz_qxyzw_from_T(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 4, 4) transforms → ((..., 3) translations, (..., 4) quaternions xyzw)."""
    shape = T.shape[:-2]
    q = Rotation.from_matrix(T[..., :3, :3].reshape(-1, 3, 3)).as_quat().reshape(shape + (4,))
    return T[..., :3, 3].copy(), q


def interpolate_poses(stamps_ns: np.ndarray, T_world_x: np.ndarray, query_ns: np.ndarray) -> np.ndarray:
    """Poses at `query_ns`: translation linear, rotation SLERP (scipy). Never extrapolates:
    queries outside [stamps_ns[0], stamps_ns[-1]] give NaN matrices.

    Args:
        stamps_ns: (M,) strictly increasing stamps.
        T_world_x: (M, 4, 4) poses at those stamps.
        query_ns: (Q,) stamps to evaluate.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    query = np.asarray(query_ns, dtype=np.int64)
    out = np.full((len(query), 4, 4), np.nan)
    inside = (query >= stamps[0]) & (query <= stamps[-1])
    if not inside.any():
        return out
    t_ref = stamps[0]
    ts = (stamps - t_ref).astype(np.float64) * 1e-9
    tq = (query[inside] - t_ref).astype(np.float64) * 1e-9
    if len(stamps) == 1:
        out[inside] = T_world_x[0]
        return out
    rot = Slerp(ts, Rotation.from_matrix(T_world_x[:, :3, :3]))(tq).as_matrix()
    trans = np.stack([np.interp(tq, ts, T_world_x[:, i, 3]) for i in range(3)], axis=-1)
    res = np.zeros((len(tq), 4, 4))
    res[:, :3, :3] = rot
    res[:, :3, 3] = trans
    res[:, 3, 3] = 1.0
    out[inside] = res
    return out
