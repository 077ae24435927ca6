"""kinematics.csv (DESIGN §2.1): one left-camera pose T_world_cam per frame.

`frame,x,y,z,qx,qy,qz,qw`: translation in metres, rotation as a unit quaternion (xyzw, scalar
last, as in ROS and scipy). Rows cover frames 0..T-1 in order. A quaternion whose norm is off by
more than `QUAT_NORM_TOL` is refused rather than silently normalised: it usually means swapped
columns (wxyz) or a truncated export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import T_from_xyz_qxyzw, interpolate_poses, xyz_qxyzw_from_T
from .csvtable import check_frame_column, read_csv_table

COLUMNS = ("frame", "x", "y", "z", "qx", "qy", "qz", "qw")
QUAT_NORM_TOL = 1e-3


def read_kinematics(path: str | Path, num_frames: int | None = None) -> np.ndarray:
    """Read and validate kinematics.csv.

    Args:
        path: the file.
        num_frames: if given, rows must be exactly frames 0..num_frames-1.

    Returns:
        (T, 4, 4) float64 poses T_world_cam (metres).
    """
    path = Path(path)
    table = read_csv_table(path, COLUMNS, "ifffffff")
    n = len(table["frame"])
    if n == 0:
        raise InputError(f"{path}: no rows (expected one pose per frame)", "bad_kinematics")
    expected = num_frames if num_frames is not None else n
    if n != expected:
        raise InputError(f"{path}: expected {expected} rows (one per frame), got {n}", "bad_kinematics")
    check_frame_column(table, path, "bad_kinematics")
    xyz_m = np.stack([table[c] for c in ("x", "y", "z")], axis=-1)  # (T, 3)
    q_xyzw = np.stack([table[c] for c in ("qx", "qy", "qz", "qw")], axis=-1)  # (T, 4)
    norm = np.linalg.norm(q_xyzw, axis=-1)
    bad = np.flatnonzero(np.abs(norm - 1.0) > QUAT_NORM_TOL)
    if bad.size:
        i = bad[0]
        raise InputError(f"{path}: line {table['_line'][i]}: qx,qy,qz,qw: expected a unit quaternion "
                         f"(norm 1 ± {QUAT_NORM_TOL}), got norm {norm[i]:.6g}", "bad_kinematics")
    return T_from_xyz_qxyzw(xyz_m, q_xyzw / norm[:, None])


def write_kinematics(path: str | Path, T_world_cam: np.ndarray) -> Path:
    """Write (T, 4, 4) poses T_world_cam (metres) as kinematics.csv, one row per frame."""
    path = Path(path)
    xyz, q = xyz_qxyzw_from_T(np.asarray(T_world_cam, dtype=np.float64))
    rows = [",".join(COLUMNS)] + [
        f"{i}," + ",".join(f"{x:.9f}" for x in np.concatenate([p, r])) for i, (p, r) in enumerate(zip(xyz, q))
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def shift_poses(stamps_ns: np.ndarray, T_world_cam: np.ndarray, time_offset_s: float) -> np.ndarray:
    """Per-frame poses re-sampled at `stamp + time_offset_s` (t_kin = t_image + offset, as the node's
    `kinematics.time_offset_s`): compensates kinematics that lag (offset > 0) or lead the images.

    Translation linear, rotation SLERP (`geometry.interpolate_poses`). Like the node it never
    extrapolates: a shifted stamp beyond the first or last row takes that end pose.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    T = np.asarray(T_world_cam, dtype=np.float64)
    if len(stamps) != len(T):
        raise InputError(f"kinematics: expected one stamp per pose, got {len(stamps)} stamps for {len(T)} poses",
                         "bad_kinematics")
    if time_offset_s == 0.0 or len(T) < 2:
        return T.copy()
    query = np.clip(stamps + int(round(time_offset_s * 1e9)), stamps[0], stamps[-1])
    return interpolate_poses(stamps, T, query)
