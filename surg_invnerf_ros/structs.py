"""Plain numpy data structures shared by every layer (DESIGN §2).

Axis names follow `STYLE.md` §5: T frames, N queries, H W an image. Pixels follow OpenCV (u right,
v down, pixel centres at integers). 3D points are metres in the left camera optical frame
(x right, y down, z forward, REP 103 optical convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The `~/tracked_points` / `~/ground_truth` point schema (DESIGN §5), packed: 30 bytes a point.
#: x y z metres (left optical frame), u v pixels, id, visible, confidence, refined.
TRACKED_POINTS_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
    ("u", "<f4"), ("v", "<f4"),
    ("id", "<u4"), ("visible", "u1"), ("confidence", "<f4"), ("refined", "u1"),
])


def tracked_points(ids: np.ndarray, uv_px: np.ndarray, xyz_cam_m: np.ndarray, visible: np.ndarray,
                   confidence: np.ndarray | float = 1.0, refined: np.ndarray | int = 1) -> np.ndarray:
    """Per-query arrays (N,) / (N, 2) / (N, 3) → the (N,) `TRACKED_POINTS_DTYPE` array."""
    n = len(ids)
    out = np.zeros(n, dtype=TRACKED_POINTS_DTYPE)
    out["x"], out["y"], out["z"] = np.asarray(xyz_cam_m, dtype=np.float32).reshape(n, 3).T
    out["u"], out["v"] = np.asarray(uv_px, dtype=np.float32).reshape(n, 2).T
    out["id"] = np.asarray(ids).astype(np.uint32)
    out["visible"] = np.asarray(visible).astype(np.uint8)
    out["confidence"] = confidence
    out["refined"] = refined
    return out


@dataclass(frozen=True)
class StereoCalib:
    """A rectified stereo pair: shared intrinsics and a baseline along +x.

    Attributes:
        K: (3, 3) intrinsics of the rectified left camera (pixels).
        baseline_m: distance between the optical centres; X_right = X_left - [baseline_m, 0, 0].
        image_size: (W, H) in pixels.
        fps: frame rate of the sequence, frames per second.
    """

    K: np.ndarray
    baseline_m: float
    image_size: tuple[int, int]
    fps: float = 30.0

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def width(self) -> int:
        return int(self.image_size[0])

    @property
    def height(self) -> int:
        return int(self.image_size[1])


@dataclass(frozen=True)
class Queries:
    """Query points: `ids` (N,) int64 and `query_tuv` (N, 3) float64 rows of (frame_idx, u_px, v_px)."""

    ids: np.ndarray
    query_tuv: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def frame_idx(self) -> np.ndarray:
        return self.query_tuv[:, 0].astype(np.int64)

    @property
    def uv_px(self) -> np.ndarray:
        return self.query_tuv[:, 1:3]


@dataclass
class Sequence:
    """A loaded, rectified stereo sequence.

    Attributes:
        left_rgb_u8, right_rgb_u8: (T, H, W, 3) uint8 rectified images, RGB order: arrays, or
            `io.sequence.FrameStack`s that decode frames when indexed (`read_sequence(lazy=True)`).
        calib: the rectified stereo calibration.
        stamps_ns: (T,) int64 image timestamps.
        queries: query points in *rectified* left pixels.
        T_world_cam: optional (T, 4, 4) left-camera poses (metres), None without kinematics.
        name: a label for tables and plots (the folder name).
        rectify: optional `io.calib.Rectifier` mapping raw ↔ rectified pixels; None if the input
            was already rectified.
    """

    left_rgb_u8: np.ndarray
    right_rgb_u8: np.ndarray
    calib: StereoCalib
    stamps_ns: np.ndarray
    queries: Queries
    T_world_cam: np.ndarray | None = None
    name: str = "sequence"
    rectify: Any = None

    @property
    def num_frames(self) -> int:
        return int(self.left_rgb_u8.shape[0])


@dataclass
class Tracks:
    """Tracking output (DESIGN §2.2).

    Attributes:
        ids: (N,) int64 query ids.
        uv: (T, N, 2) float32 left-image pixels (input-image frame when written to disk).
        visible: (T, N) bool.
        xyz: (T, N, 3) float32 metres in the left camera optical frame of frame t (NaN if unknown).
        meta: method, config, timings; stored as a JSON string in the track file.
    """

    ids: np.ndarray
    uv: np.ndarray
    visible: np.ndarray
    xyz: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.uv.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.uv.shape[1])
