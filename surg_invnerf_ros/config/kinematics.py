"""Endoscope kinematics config: hand-eye, clock offset and the pose buffer (`ros/kinematics.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError
from ..geometry import rigid_transform_problem
from .base import (
    check_fields,
    option,
)

#: The 4x4 identity, row-major (a hand-eye default).
IDENTITY_16 = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class KinematicsConfig:
    """Endoscope (ECM) poses: hand-eye, clock offset and the pose buffer (`ros/kinematics.py`).

    T_world_cam(t_image) = T_world_ecm(t_image + time_offset_s) @ T_ecm_cam.
    """

    enabled: bool = option(True, "Use ECM poses when they are given; false ignores them.")
    time_offset_s: float = option(
        0.0, "Added to an image stamp to get the kinematics stamp of the same instant: "
        "t_kin = t_image + offset. Negative when image stamps lag (e.g. stamped on arrival).")
    T_ecm_cam: tuple[float, ...] = option(
        IDENTITY_16, "Hand-eye T_ecm_cam (ECM tool frame <- left optical frame), 16 floats row-major, metres.")
    max_age_s: float = option(
        0.05, "A pose is stale when no buffered pose lies within this of the (offset) image stamp.", lo=0.0)
    buffer_s: float = option(10.0, "Seconds of poses kept behind the newest one.", lo=0.01, hi=3600.0)
    message_type: Literal["auto", "PoseStamped", "TransformStamped"] = option(
        "auto", "Type of ecm/measured_cp; auto takes the type the topic is advertised with.")
    wait_s: float = option(
        0.02, "How long the node may hold a frame for a pose newer than its stamp while poses are flowing "
        "(the buffer never extrapolates; ~100 Hz poses need about one period).", lo=0.0, hi=1.0)
    world_frame: str = option("world", "TF frame of the ECM poses: world -> left optical is published on /tf.")
    publish_tf: bool = option(True, "Publish world -> left optical on /tf for frames with a pose.")

    def __post_init__(self) -> None:
        check_fields(self, "kinematics.")
        if len(self.T_ecm_cam) != 16:
            raise ConfigError(
                f"kinematics.T_ecm_cam: expected 16 floats (row-major 4x4), got {len(self.T_ecm_cam)}")
        if not all(math.isfinite(v) for v in self.T_ecm_cam):
            raise ConfigError(f"kinematics.T_ecm_cam: expected finite values, got {list(self.T_ecm_cam)}")
        problem = rigid_transform_problem(np.asarray(self.T_ecm_cam, dtype=np.float64).reshape(4, 4))
        if problem:
            raise ConfigError(f"kinematics.T_ecm_cam: {problem}")
        if abs(self.time_offset_s) >= self.buffer_s:
            raise ConfigError(
                f"kinematics.time_offset_s: expected |offset| < buffer_s ({self.buffer_s}), got {self.time_offset_s}")
        if self.max_age_s >= self.buffer_s:
            raise ConfigError(
                f"kinematics.max_age_s: expected < buffer_s ({self.buffer_s}), got {self.max_age_s}")
        if self.publish_tf and not self.world_frame:
            raise ConfigError("kinematics.world_frame: expected a TF frame name, got '' (or set publish_tf false)")
