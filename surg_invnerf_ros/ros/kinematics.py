"""Endoscope (ECM) pose buffer: poses in, T_world_cam at image stamps out (DESIGN §3.2, §5).

`ecm/measured_cp` arrives at ~100 Hz as geometry_msgs/PoseStamped or TransformStamped (dVRK versions
differ). The message codec (`io.messages.pose_to_T`) turns either into (stamp_ns, T_world_ecm); `KinematicsBuffer` keeps the last
`buffer_s` seconds and answers `pose_at(image_stamp_ns)` with

    T_world_cam = interp(T_world_ecm, image_stamp_ns + time_offset_s) @ T_ecm_cam

translation linear, rotation SLERP (`geometry.interpolate_poses`, scipy). Like tf2_ros's Buffer it
resets itself when time jumps backwards (a looping bag, a restarted simulator) and it never
extrapolates: a frame without a usable pose gets None, is counted, and the node runs that frame
without kinematics. Plain code: no rclpy, no DDS, no tensors (STYLE §6); message classes are only
imported lazily by `message_class`.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
from typing import Any, Sequence

import numpy as np

from ..config import KinematicsConfig
from ..errors import InputError
from ..geometry import interpolate_poses
from ..io.messages import pose_to_T

logger = logging.getLogger(__name__)

#: The topic named in a refused pose message.
KINEMATICS_SOURCE = "ecm/measured_cp"

MESSAGE_TYPES = {
    "PoseStamped": "geometry_msgs/msg/PoseStamped",
    "TransformStamped": "geometry_msgs/msg/TransformStamped",
}

# Every key the buffer counts, so diagnostics show zeros rather than missing entries.
COUNTER_KEYS = ("nonfinite_pose", "bad_quaternion", "bad_type", "duplicate", "time_jump", "missing", "stale")


def T_ecm_cam_from_config(cfg: KinematicsConfig) -> np.ndarray:
    """The hand-eye `kinematics.T_ecm_cam` (16 floats, row-major) as a (4, 4) array."""
    return np.asarray(cfg.T_ecm_cam, dtype=np.float64).reshape(4, 4)


def resolve_message_type(requested: str, advertised_types: Sequence[str]) -> str | None:
    """Which message type to subscribe `ecm/measured_cp` with.

    Args:
        requested: `kinematics.message_type` ("auto", "PoseStamped" or "TransformStamped").
        advertised_types: the topic's types as `Node.get_topic_names_and_types()` lists them
            (e.g. "geometry_msgs/msg/PoseStamped").

    Returns:
        "PoseStamped" or "TransformStamped"; None when "auto" and nothing is advertised yet (ask again).

    Raises:
        InputError: "auto" and the topic is only advertised with unsupported types (`bad_type`).
    """
    if requested != "auto":
        return requested
    for name, full in MESSAGE_TYPES.items():
        if full in advertised_types:
            return name
    if advertised_types:
        raise InputError(
            f"ecm/measured_cp: expected geometry_msgs/msg/PoseStamped or TransformStamped, "
            f"advertised as {', '.join(advertised_types)}", reason="bad_type")
    return None


def message_class(name: str) -> type:
    """The geometry_msgs class for "PoseStamped" or "TransformStamped" (imported here, lazily)."""
    from geometry_msgs.msg import PoseStamped, TransformStamped  # only the node needs the classes

    return {"PoseStamped": PoseStamped, "TransformStamped": TransformStamped}[name]


class KinematicsBuffer:
    """Time-bounded ECM pose history, interpolated at image stamps. Thread-safe.

    Rules, all with integer-nanosecond stamps:
      - `add` keeps poses sorted. A stamp equal to a stored one is a `duplicate` (first one kept).
        A stamp older than the newest by at most `max_age_s` is slotted in (reordered delivery);
        older than that, time has jumped backwards: the buffer clears itself, counts `time_jump`
        and starts again from this pose. Poses older than newest − `buffer_s` are forgotten.
      - `pose_at(t)` looks up t_kin = t + `time_offset_s`. Outside [oldest, newest] it is
        `missing` (never extrapolates). Inside, with a ≤ t_kin ≤ b the bracketing stamps, it is
        `stale` when min(t_kin − a, b − t_kin) > `max_age_s`: no pose within `max_age_s` of the
        query. So a gap of up to 2·`max_age_s` is interpolated across.
    """

    def __init__(self, cfg: KinematicsConfig) -> None:
        self.cfg = cfg
        self.T_ecm_cam = T_ecm_cam_from_config(cfg)
        self._offset_ns = int(round(cfg.time_offset_s * 1e9))
        self._max_age_ns = int(round(cfg.max_age_s * 1e9))
        self._buffer_ns = int(round(cfg.buffer_s * 1e9))
        self._stamps_ns: list[int] = []
        self._T_world_ecm: list[np.ndarray] = []
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)  # notified on every stored pose

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps_ns)

    @property
    def counters(self) -> dict[str, int]:
        """Drops (and resets) by reason since construction: a copy, for /diagnostics."""
        with self._lock:
            return dict(self._counters)

    @property
    def newest_stamp_ns(self) -> int | None:
        """Stamp of the newest pose (kinematics clock), None when empty."""
        with self._lock:
            return self._stamps_ns[-1] if self._stamps_ns else None

    def reset(self) -> None:
        """Forget every pose (counters stay). The node may also call it from a clock-jump callback."""
        with self._lock:
            self._stamps_ns.clear()
            self._T_world_ecm.clear()

    def add(self, stamp_ns: int, T_world_ecm: np.ndarray) -> bool:
        """Store one ECM pose; False (and counted) when it is dropped. See the class rules."""
        T = np.asarray(T_world_ecm, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"T_world_ecm: expected shape (4, 4), got {T.shape}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            if not np.isfinite(T).all():
                self._counters["nonfinite_pose"] += 1
                return False
            stamps = self._stamps_ns
            if stamps and stamp_ns < stamps[-1] - self._max_age_ns:
                logger.info("kinematics: time jumped back %.3f s; pose buffer cleared",
                            (stamps[-1] - stamp_ns) * 1e-9)
                self._counters["time_jump"] += 1
                stamps.clear()
                self._T_world_ecm.clear()
            i = bisect.bisect_left(stamps, stamp_ns)
            if i < len(stamps) and stamps[i] == stamp_ns:
                self._counters["duplicate"] += 1
                return False
            stamps.insert(i, stamp_ns)
            self._T_world_ecm.insert(i, T.copy())
            cut = bisect.bisect_left(stamps, stamps[-1] - self._buffer_ns)
            if cut:
                del stamps[:cut]
                del self._T_world_ecm[:cut]
            self._added.notify_all()
            return True

    def wait_for_stamp(self, kin_stamp_ns: int, timeout_s: float) -> bool:
        """Block until the newest pose is at or after `kin_stamp_ns` (kinematics clock), at most
        `timeout_s`; True when it is. Lets an image wait for the pose that brackets it."""
        with self._added:
            return self._added.wait_for(lambda: bool(self._stamps_ns) and self._stamps_ns[-1] >= kin_stamp_ns,
                                        timeout=max(timeout_s, 0.0))

    def add_msg(self, msg: Any) -> bool:
        """Convert (`io.messages.pose_to_T`) and store; a bad message is counted by its reason, never raised."""
        try:
            stamp_ns, T = pose_to_T(msg, KINEMATICS_SOURCE)
        except InputError as err:
            with self._lock:
                self._counters[err.reason] = self._counters.get(err.reason, 0) + 1
            logger.debug("%s", err)
            return False
        return self.add(stamp_ns, T)

    def lookup(self, image_stamp_ns: int) -> tuple[np.ndarray | None, str]:
        """(T_world_cam (4, 4) or None, reason) at an image stamp; reason is ok, missing or stale."""
        t = int(image_stamp_ns) + self._offset_ns
        with self._lock:
            stamps = self._stamps_ns
            if not stamps or t < stamps[0] or t > stamps[-1]:
                self._counters["missing"] += 1
                return None, "missing"
            i = bisect.bisect_left(stamps, t)  # stamps[i-1] < t <= stamps[i]
            if stamps[i] == t:
                T_world_ecm = self._T_world_ecm[i]
            else:
                a, b = stamps[i - 1], stamps[i]
                if min(t - a, b - t) > self._max_age_ns:
                    self._counters["stale"] += 1
                    return None, "stale"
                Ta, Tb = self._T_world_ecm[i - 1], self._T_world_ecm[i]
                T_world_ecm = None
        if T_world_ecm is None:  # SLERP outside the lock: the bracket is already copied out
            T_world_ecm = interpolate_poses(np.array([a, b], dtype=np.int64), np.stack([Ta, Tb]),
                                            np.array([t], dtype=np.int64))[0]
        return T_world_ecm @ self.T_ecm_cam, "ok"

    def pose_at(self, image_stamp_ns: int) -> np.ndarray | None:
        """T_world_cam (4, 4) at an image stamp, or None (missing or stale, counted). Never waits."""
        return self.lookup(image_stamp_ns)[0]


def camera_poses_at(image_stamps_ns: np.ndarray, pose_stamps_ns: np.ndarray, T_world_ecm: np.ndarray,
                    cfg: KinematicsConfig) -> tuple[np.ndarray, dict[str, int]]:
    """The offline twin of the node: T_world_cam (T, 4, 4) of each image through a `KinematicsBuffer`.

    All poses go into one buffer long enough for the whole clip, and each image stamp is looked up
    with the node's rules: `kinematics.time_offset_s`, `T_ecm_cam`, `max_age_s`, SLERP, never
    extrapolating. An image whose stamp + offset lies past either end of the poses holds that end
    pose; one inside a gap the node would call stale takes the pose of the nearest image that has
    one. The returned counters say how many lookups were `missing` or `stale`.

    Raises:
        InputError: no poses, no image with a pose, or stamps and poses that disagree in number.
    """
    stamps = np.asarray(pose_stamps_ns, dtype=np.int64)
    T = np.asarray(T_world_ecm, dtype=np.float64)
    if len(stamps) != len(T):
        raise InputError(f"kinematics: expected one stamp per pose, got {len(stamps)} stamps for {len(T)} poses",
                         reason="bad_kinematics")
    if len(stamps) == 0:
        raise InputError("kinematics: no poses to look the images up in", reason="missing")
    images = np.asarray(image_stamps_ns, dtype=np.int64)
    span_s = float(stamps.max() - stamps.min()) * 1e-9
    # One buffer for the whole clip (up to the config's one-hour limit on buffer_s).
    buffer_s = min(max(cfg.buffer_s, span_s + 1.0 + abs(cfg.time_offset_s)), 3600.0)
    buffer = KinematicsBuffer(dataclasses.replace(cfg, buffer_s=buffer_s))
    for stamp_ns, T_i in zip(stamps.tolist(), T):
        buffer.add(stamp_ns, T_i)
    found = [buffer.lookup(int(t))[0] for t in images.tolist()]
    # Past either end of the poses an image holds the end pose (what the node had last), never extrapolated.
    off_ns = int(round(cfg.time_offset_s * 1e9))
    first, last = int(stamps.min()), int(stamps.max())
    for i, t in enumerate(images.tolist()):
        if found[i] is None and not first <= t + off_ns <= last:
            found[i] = buffer.lookup(min(max(t + off_ns, first), last) - off_ns)[0]
    have = [i for i, T_i in enumerate(found) if T_i is not None]
    if not have:
        raise InputError(f"kinematics: no image has a pose within max_age_s ({cfg.max_age_s} s) of its "
                         f"stamp + time_offset_s ({cfg.time_offset_s} s)", reason="stale")
    nearest = np.asarray(have)[np.abs(np.arange(len(found))[:, None] - np.asarray(have)[None, :]).argmin(axis=1)]
    out = np.stack([found[j] for j in nearest.tolist()])
    counts = {k: v for k, v in buffer.counters.items() if k in ("missing", "stale")}
    return out, counts
