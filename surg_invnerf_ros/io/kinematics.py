"""kinematics.csv (DESIGN §2.1): one left-camera pose T_world_cam per frame.

`frame,x,y,z,qx,qy,qz,qw`: translation in metres, rotation as a unit quaternion (xyzw, scalar
last, as in ROS and scipy). Rows cover frames 0..T-1 in order. A quaternion whose norm is off by
more than `QUAT_NORM_TOL` is refused rather than silently normalised: it usually means swapped
columns (wxyz) or a truncated export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ..errors import InputError
from ..geometry import T_from_xyz_qxyzw, rigid_transform_problem, xyz_qxyzw_from_T
from .calib import numbers_field
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


def read_hand_eye(path: str | Path) -> np.ndarray:
    """The hand-eye `T_ecm_cam` (4, 4, metres; ECM tool frame <- left optical frame) from a YAML file
    holding `T_ecm_cam:` as a 4x4 nested list or 16 numbers row-major (or just that list)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found", "bad_hand_eye")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise InputError(f"{path}: not valid YAML", "bad_hand_eye") from None
    T_ecm_cam = numbers_field({"T_ecm_cam": data.get("T_ecm_cam") if isinstance(data, dict) else data},
                              "T_ecm_cam", str(path), (4, 4))
    problem = rigid_transform_problem(T_ecm_cam)
    if problem:
        raise InputError(f"{path}: T_ecm_cam: {problem}", "bad_hand_eye")
    return T_ecm_cam
