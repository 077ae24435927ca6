"""Sequence folders (DESIGN §2.1): write them; read and validate them (rectifying on load).

```
SEQ/left/000000.png …   8-bit RGB rectified left images
SEQ/right/000000.png …  same for the right camera
SEQ/calib.yaml          image_size, K_left, K_right, D_left, D_right, R, T (metres), rectified, fps
SEQ/timestamps.csv      frame,stamp_ns                 (optional; else from fps)
SEQ/queries.csv         id,frame,u,v                   (left-image pixels)
SEQ/kinematics.csv      frame,x,y,z,qx,qy,qz,qw        (optional: T_world_leftcam, metres)
```
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import yaml

from ..geometry import xyz_qxyzw_from_T
from ..structs import Queries, StereoCalib


def calib_dict_rectified(calib: StereoCalib) -> dict:
    """calib.yaml content for an already rectified pair (right camera at +baseline along x)."""
    K = np.asarray(calib.K, dtype=float).tolist()
    return {
        "image_size": [int(calib.width), int(calib.height)],
        "K_left": K,
        "K_right": K,
        "D_left": [0.0] * 5,
        "D_right": [0.0] * 5,
        "R": np.eye(3).tolist(),
        "T": [-float(calib.baseline_m), 0.0, 0.0],
        "rectified": True,
        "fps": float(calib.fps),
    }


def write_sequence(
    out_dir: str | Path,
    left_rgb_u8: np.ndarray,
    right_rgb_u8: np.ndarray,
    calib: StereoCalib | dict,
    queries: Queries,
    stamps_ns: np.ndarray | None = None,
    T_world_cam: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a sequence folder. The folder is built under a temporary name and renamed at the end,
    so an interrupted write leaves nothing that looks like a valid sequence.

    Args:
        left_rgb_u8, right_rgb_u8: (T, H, W, 3) uint8 RGB images.
        calib: a rectified `StereoCalib`, or a full calib.yaml mapping (for raw, unrectified input).
        queries: ids and (frame_idx, u_px, v_px) in left-image pixels.
        stamps_ns: optional (T,) int64 timestamps.
        T_world_cam: optional (T, 4, 4) left-camera poses in metres.
        progress: called with 1 after each frame is written.
    """
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "left").mkdir(parents=True)
    (tmp / "right").mkdir()
    for i, (lft, rgt) in enumerate(zip(left_rgb_u8, right_rgb_u8)):
        cv2.imwrite(str(tmp / "left" / f"{i:06d}.png"), cv2.cvtColor(lft, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp / "right" / f"{i:06d}.png"), cv2.cvtColor(rgt, cv2.COLOR_RGB2BGR))
        if progress is not None:
            progress(1)
    calib_data = calib_dict_rectified(calib) if isinstance(calib, StereoCalib) else calib
    (tmp / "calib.yaml").write_text(yaml.safe_dump(calib_data, sort_keys=False))
    rows = ["id,frame,u,v"] + [
        f"{int(i)},{int(t)},{u:.4f},{v:.4f}" for i, (t, u, v) in zip(queries.ids, queries.query_tuv)
    ]
    (tmp / "queries.csv").write_text("\n".join(rows) + "\n")
    if stamps_ns is not None:
        rows = ["frame,stamp_ns"] + [f"{i},{int(s)}" for i, s in enumerate(stamps_ns)]
        (tmp / "timestamps.csv").write_text("\n".join(rows) + "\n")
    if T_world_cam is not None:
        xyz, q = xyz_qxyzw_from_T(np.asarray(T_world_cam, dtype=np.float64))
        rows = ["frame,x,y,z,qx,qy,qz,qw"] + [
            f"{i}," + ",".join(f"{x:.9f}" for x in np.concatenate([p, r])) for i, (p, r) in enumerate(zip(xyz, q))
        ]
        (tmp / "kinematics.csv").write_text("\n".join(rows) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
