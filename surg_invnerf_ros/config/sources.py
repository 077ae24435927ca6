"""Source node configs: the synthetic stereo endoscope and the bag player (DESIGN §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .base import (
    check_fields,
    nested,
    option,
)
from .kinematics import IDENTITY_16
from .synth import SynthConfig


@dataclass(frozen=True)
class SyntheticSourceConfig:
    """The `synthetic_stereo` node: the synthetic generator as a live stereo endoscope.

    Frame k is stamped start + k/synth.fps (start: the node clock when publishing begins, so
    `use_sim_time` follows /clock); images, camera_infos, pose and ground truth of a frame share it.
    """

    synth: SynthConfig = nested(SynthConfig, "The scene: size, seed, difficulty, instrument, motion, queries.")
    rate_hz: float = option(0.0, "Publish rate; 0 uses synth.fps (stamps always step by 1/synth.fps).",
                            lo=0.0, hi=1000.0)
    end: Literal["pingpong", "loop", "continue", "stop"] = option(
        "pingpong", "After synth.frames frames: play them backwards and forwards again (motion stays "
        "continuous), start over at frame 0, keep rendering new frames, or stop and exit. All but continue "
        "render the frames before publishing, so the rate holds at any size.")
    frame_id_left: str = option("endoscope_left_optical_frame", "frame_id of the left image and camera_info.")
    frame_id_right: str = option("endoscope_right_optical_frame", "frame_id of the right image and camera_info.")
    pose_type: Literal["PoseStamped", "TransformStamped", "none"] = option(
        "PoseStamped", "Type of ecm/measured_cp (dVRK CRTK publishes either); none publishes no pose.")
    world_frame_id: str = option("world", "Header frame_id of the ECM pose.")
    ecm_frame_id: str = option("ecm", "child_frame_id of the ECM pose as a TransformStamped.")
    T_ecm_cam: tuple[float, ...] = option(
        IDENTITY_16, "Hand-eye T_ecm_cam, 16 floats row-major; the pose published is T_world_cam · T_ecm_cam⁻¹.")
    ground_truth: bool = option(True, "Publish ~/ground_truth (tracked_points schema) for every frame.")
    queries_period_s: float = option(
        0.0, "Also republish the queries every this many seconds (0: only with frame 0, or when the first "
        "subscriber appears).", lo=0.0, hi=3600.0)
    wait_for_subscribers_s: float = option(
        5.0, "Before frame 0, wait up to this long until every published topic has a subscriber.",
        lo=0.0, hi=3600.0)
    render_ahead: int = option(8, "Frames rendered ahead in a background thread.", lo=1, hi=1000)
    cache_mb: float = option(
        2048.0, "Rendered frames are kept (and rendered before publishing) if they fit in this many MB; "
        "else they are rendered again as they come round.", lo=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "")
        if len(self.T_ecm_cam) != 16:
            raise ConfigError(f"T_ecm_cam: expected 16 floats, got {len(self.T_ecm_cam)}")


@dataclass(frozen=True)
class BagPlayerConfig:
    """The `bag_player` node: plays an MCAP or sqlite3 bag as raw CDR (`ros/bag_nodes.py`)."""

    bag: str = option("", "Path of the bag folder (required).")
    rate: float = option(1.0, "Playback speed factor on bag time; 0 publishes as fast as possible.", lo=0.0)
    loop: bool = option(False, "Start over at the end (stamps and /clock jump back).")
    clock: bool = option(False, "Publish the bag time on /clock (for nodes with use_sim_time).")
    clock_rate_hz: float = option(100.0, "/clock publish rate while waiting between messages.", lo=1.0, hi=10000.0)
    topics: tuple[str, ...] = option((), "Topics to play (exact bag names); empty plays all.")
    wait_for_subscribers_s: float = option(
        5.0, "Wait up to this long until every played topic has a subscriber.", lo=0.0, hi=3600.0)
    qos_depth: int = option(10, "Publisher history depth (reliable, volatile; /tf_static is latched).",
                            lo=1, hi=10000)
    linger_s: float = option(
        5.0, "After the last message, wait up to this long until reliable subscribers acknowledged all data.",
        lo=0.0, hi=600.0)

    def __post_init__(self) -> None:
        check_fields(self, "")
