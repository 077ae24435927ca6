"""ros/kinematics.py without DDS: message conversion, the pose buffer's rules, hand-eye and offset.

Messages are real geometry_msgs objects; building them needs no rclpy.init().
"""

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from surg_invnerf_ros.config import KinematicsConfig
from surg_invnerf_ros.errors import ConfigError, InputError
from surg_invnerf_ros.io.messages import pose_to_T
from surg_invnerf_ros.ros.kinematics import (
    COUNTER_KEYS,
    KinematicsBuffer,
    message_class,
    resolve_message_type,
)

geometry_msgs = pytest.importorskip("geometry_msgs.msg")

NS = 1_000_000_000
MS = 1_000_000


def make_T(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def pose_stamped(stamp_ns: int, xyz, q_xyzw):
    msg = geometry_msgs.PoseStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), NS)
    msg.header.frame_id = "world"
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in xyz)
    q.x, q.y, q.z, q.w = (float(v) for v in q_xyzw)
    return msg


def transform_stamped(stamp_ns: int, xyz, q_xyzw):
    msg = geometry_msgs.TransformStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), NS)
    msg.header.frame_id, msg.child_frame_id = "world", "ecm"
    p, q = msg.transform.translation, msg.transform.rotation
    p.x, p.y, p.z = (float(v) for v in xyz)
    q.x, q.y, q.z, q.w = (float(v) for v in q_xyzw)
    return msg


# Analytic ECM motion: constant angular velocity about a fixed (non-axis-aligned) axis on top of a
# fixed rotation R0, plus constant linear velocity. R(t) = R0·exp(t·ω·n̂) is a geodesic, which SLERP
# between any two of its samples reproduces exactly; p(t) is linear, which lerp reproduces exactly.
R0 = Rotation.from_rotvec([0.3, -0.2, 0.5])
AXIS = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
OMEGA_RAD_S = 0.8
P0_M = np.array([0.10, -0.05, 0.30])
V_M_S = np.array([0.02, 0.01, -0.03])


def analytic_T_world_ecm(t_s: float) -> np.ndarray:
    R = (R0 * Rotation.from_rotvec(AXIS * OMEGA_RAD_S * t_s)).as_matrix()
    return make_T(R, P0_M + V_M_S * t_s)


def filled_buffer(cfg: KinematicsConfig, t0_s: float = 0.0, t1_s: float = 1.0, rate_hz: float = 100.0):
    buf = KinematicsBuffer(cfg)
    for k in range(int(round((t1_s - t0_s) * rate_hz)) + 1):
        t_s = t0_s + k / rate_hz
        assert buf.add(int(round(t_s * NS)), analytic_T_world_ecm(t_s))
    return buf


class TestPoseMsgToT:
    def test_known_values(self):
        q = Rotation.from_rotvec([0.0, 0.0, np.pi / 2]).as_quat()  # 90° about z
        stamp_ns, T = pose_to_T(pose_stamped(12 * NS + 345, [0.1, 0.2, 0.3], q))
        assert stamp_ns == 12_000_000_345
        # Rz(90°): x → y, y → −x.
        expected = np.array([[0, -1, 0, 0.1], [1, 0, 0, 0.2], [0, 0, 1, 0.3], [0, 0, 0, 1.0]])
        np.testing.assert_allclose(T, expected, atol=1e-12)

    def test_both_message_types_agree(self):
        rng = np.random.default_rng(1)
        for _ in range(5):
            xyz = rng.normal(size=3)
            q = Rotation.random(random_state=rng).as_quat()
            s1, T1 = pose_to_T(pose_stamped(5 * NS + 7, xyz, q))
            s2, T2 = pose_to_T(transform_stamped(5 * NS + 7, xyz, q))
            assert s1 == s2 == 5 * NS + 7
            np.testing.assert_array_equal(T1, T2)
            np.testing.assert_allclose(T1[:3, 3], xyz)
            np.testing.assert_allclose(T1[:3, :3], Rotation.from_quat(q).as_matrix(), atol=1e-12)

    def test_duck_typed_without_rclpy(self):
        # rosbags' deserialised messages have the same attribute layout.
        stamp = SimpleNamespace(sec=1, nanosec=2)
        tr = SimpleNamespace(translation=SimpleNamespace(x=1.0, y=2.0, z=3.0),
                             rotation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0))
        stamp_ns, T = pose_to_T(SimpleNamespace(header=SimpleNamespace(stamp=stamp), transform=tr))
        assert stamp_ns == NS + 2
        np.testing.assert_array_equal(T, make_T(np.eye(3), [1.0, 2.0, 3.0]))

    def test_slightly_denormalised_quaternion_is_normalised(self):
        q = Rotation.from_rotvec([0.1, 0.2, 0.3]).as_quat()
        _, T = pose_to_T(pose_stamped(0, [0, 0, 0], q * 1.004))  # |q|² − 1 ≈ 0.008 < 1e-2
        np.testing.assert_allclose(T[:3, :3], Rotation.from_quat(q).as_matrix(), atol=1e-12)
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)

    @pytest.mark.parametrize("xyz, q, reason", [
        ([np.nan, 0, 0], [0, 0, 0, 1], "nonfinite_pose"),
        ([0, np.inf, 0], [0, 0, 0, 1], "nonfinite_pose"),
        ([0, 0, 0], [0, 0, np.nan, 1], "nonfinite_pose"),
        ([0, 0, 0], [0, 0, 0, -np.inf], "nonfinite_pose"),
        ([0, 0, 0], [0, 0, 0, 0], "bad_quaternion"),
        ([0, 0, 0], [0, 0, 0, 2], "bad_quaternion"),
    ])
    def test_bad_input(self, xyz, q, reason):
        for make in (pose_stamped, transform_stamped):
            with pytest.raises(InputError, match="ecm/measured_cp") as err:
                pose_to_T(make(0, xyz, q), "ecm/measured_cp")
            assert err.value.reason == reason

    def test_wrong_type(self):
        with pytest.raises(InputError, match="expected geometry_msgs/PoseStamped or TransformStamped") as err:
            pose_to_T(geometry_msgs.PointStamped())
        assert err.value.reason == "bad_type"


class TestKinematicsBuffer:
    def test_smoke(self):
        buf = filled_buffer(KinematicsConfig(), 0.0, 0.1)
        assert len(buf) == 11 and buf.newest_stamp_ns == 100 * MS
        T = buf.pose_at(30 * MS)  # an exact stamp returns the stored pose (identity hand-eye)
        assert T.shape == (4, 4) and T.dtype == np.float64
        np.testing.assert_allclose(T, analytic_T_world_ecm(0.03), atol=1e-15)
        assert buf.counters == dict.fromkeys(COUNTER_KEYS, 0)

    def test_interpolation_matches_analytic(self):
        buf = filled_buffer(KinematicsConfig())
        rng = np.random.default_rng(0)
        # Midpoints between samples, plus arbitrary instants.
        query_s = np.concatenate([np.arange(0.005, 0.99, 0.01)[::7], rng.uniform(0.0, 1.0, 20)])
        for t_s in query_s:
            t_ns = int(round(t_s * NS))
            T = buf.pose_at(t_ns)
            np.testing.assert_allclose(T, analytic_T_world_ecm(t_ns / NS), atol=1e-9, rtol=0)
        # Linear interpolation of the rotation matrix would miss by far more than 1e-9 here.
        Ta, Tb = analytic_T_world_ecm(0.0), analytic_T_world_ecm(0.01)
        assert np.abs(0.5 * (Ta + Tb) - analytic_T_world_ecm(0.005)).max() > 1e-7

    def test_never_extrapolates(self):
        empty = KinematicsBuffer(KinematicsConfig())
        assert empty.pose_at(0) is None and empty.counters["missing"] == 1
        buf = filled_buffer(KinematicsConfig(), 1.0, 2.0)
        assert buf.pose_at(1 * NS - 1) is None  # 1 ns before the oldest pose
        assert buf.pose_at(2 * NS + 1) is None  # 1 ns after the newest: not yet known
        assert buf.pose_at(2 * NS) is not None
        assert buf.counters["missing"] == 2 and buf.counters["stale"] == 0

    def test_stale(self):
        # Poses at 0 and 200 ms, max_age 50 ms: usable within 50 ms of either end, stale between.
        buf = KinematicsBuffer(KinematicsConfig(max_age_s=0.05))
        buf.add(0, analytic_T_world_ecm(0.0))
        buf.add(200 * MS, analytic_T_world_ecm(0.2))
        assert buf.lookup(50 * MS)[1] == "ok"       # 50 ms from the pose at 0: not older than max_age
        assert buf.lookup(150 * MS)[1] == "ok"
        assert buf.lookup(50 * MS + 1) == (None, "stale")
        assert buf.lookup(100 * MS) == (None, "stale")
        assert buf.lookup(150 * MS - 1) == (None, "stale")
        assert buf.counters["stale"] == 3 and buf.counters["missing"] == 0
        # An interpolated answer across the 200 ms gap is still SLERP of the two ends (geodesic).
        np.testing.assert_allclose(buf.pose_at(40 * MS), analytic_T_world_ecm(0.04), atol=1e-9)

    def test_time_jump_resets(self):
        buf = filled_buffer(KinematicsConfig(), 5.0, 6.0)
        assert buf.pose_at(int(5.5 * NS)) is not None
        assert buf.add(int(0.5 * NS), analytic_T_world_ecm(0.5))  # a looping bag: back 5.5 s
        assert buf.counters["time_jump"] == 1
        assert len(buf) == 1 and buf.newest_stamp_ns == int(0.5 * NS)
        assert buf.pose_at(int(5.5 * NS)) is None  # the old timeline is gone
        assert buf.add(int(0.51 * NS), analytic_T_world_ecm(0.51))
        np.testing.assert_allclose(buf.pose_at(int(0.505 * NS)), analytic_T_world_ecm(0.505), atol=1e-9)

    def test_reordered_delivery_is_slotted_in(self):
        buf = KinematicsBuffer(KinematicsConfig(max_age_s=0.05))
        buf.add(0, analytic_T_world_ecm(0.0))
        buf.add(20 * MS, analytic_T_world_ecm(0.02))
        assert buf.add(10 * MS, make_T(np.eye(3), [9.0, 9.0, 9.0]))  # 10 ms late: not a jump
        assert buf.counters["time_jump"] == 0 and len(buf) == 3
        np.testing.assert_array_equal(buf.pose_at(10 * MS)[:3, 3], [9.0, 9.0, 9.0])

    def test_duplicate_and_nonfinite_dropped(self):
        buf = KinematicsBuffer(KinematicsConfig())
        assert buf.add(0, analytic_T_world_ecm(0.0))
        assert not buf.add(0, make_T(np.eye(3), [1.0, 0.0, 0.0]))
        bad = analytic_T_world_ecm(0.01)
        bad[0, 3] = np.nan
        assert not buf.add(10 * MS, bad)
        assert len(buf) == 1
        assert buf.counters["duplicate"] == 1 and buf.counters["nonfinite_pose"] == 1
        np.testing.assert_array_equal(buf.pose_at(0), analytic_T_world_ecm(0.0))  # first one kept

    def test_add_msg_counts_bad_messages(self):
        buf = KinematicsBuffer(KinematicsConfig())
        q = [0.0, 0.0, 0.0, 1.0]
        assert buf.add_msg(pose_stamped(0, [0, 0, 0], q))
        assert buf.add_msg(transform_stamped(10 * MS, [0.01, 0, 0], q))
        assert not buf.add_msg(pose_stamped(20 * MS, [np.nan, 0, 0], q))
        assert not buf.add_msg(transform_stamped(20 * MS, [0, 0, 0], [0, 0, 0, 0]))
        assert not buf.add_msg(geometry_msgs.PointStamped())
        c = buf.counters
        assert (c["nonfinite_pose"], c["bad_quaternion"], c["bad_type"]) == (1, 1, 1)
        assert len(buf) == 2
        np.testing.assert_allclose(buf.pose_at(5 * MS)[:3, 3], [0.005, 0, 0], atol=1e-12)

    def test_bounded_by_buffer_s(self):
        buf = filled_buffer(KinematicsConfig(buffer_s=1.0), 0.0, 3.0)
        assert len(buf) == 101  # stamps 2.00 ... 3.00 s
        assert buf.pose_at(int(1.5 * NS)) is None
        assert buf.pose_at(2 * NS) is not None

    def test_hand_eye_and_time_offset_known_values(self):
        # ECM: Rz(90°), moving along world x at 1 m/s: T_world_ecm(t) = [Rz90 | (t, 0, 0)].
        # Hand-eye: T_ecm_cam = [Rx90 | (0.01, 0, 0)]. Offset +40 ms: image 0.50 s reads ECM at 0.54 s.
        # T_world_cam = T_world_ecm @ T_ecm_cam = [Rz90·Rx90 | (0.54, 0, 0) + Rz90·(0.01, 0, 0)]
        #             = [Rz90·Rx90 | (0.54, 0.01, 0)].
        # (The wrong order, T_ecm_cam @ T_world_ecm, would put the camera at (0.55, 0, 0).)
        Rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
        Rx90 = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
        hand_eye = make_T(Rx90, [0.01, 0.0, 0.0])
        cfg = KinematicsConfig(T_ecm_cam=tuple(hand_eye.ravel().tolist()), time_offset_s=0.04)
        buf = KinematicsBuffer(cfg)
        for k in range(101):  # 0 ... 1 s at 100 Hz
            buf.add(k * 10 * MS, make_T(Rz90, [k * 0.01, 0.0, 0.0]))
        T = buf.pose_at(500 * MS + 3 * MS)  # off-grid: ECM at 0.543 s, interpolated
        np.testing.assert_allclose(T, make_T(Rz90 @ Rx90, [0.543, 0.01, 0.0]), atol=1e-12)
        np.testing.assert_allclose(buf.pose_at(500 * MS)[:3, 3], [0.54, 0.01, 0.0], atol=1e-12)
        # The offset moves the valid image window: ECM covers 0..1 s, so images cover −0.04..0.96 s.
        assert buf.pose_at(970 * MS) is None
        assert buf.pose_at(-40 * MS) is not None

    def test_negative_offset(self):
        buf = filled_buffer(KinematicsConfig(time_offset_s=-0.025))
        np.testing.assert_allclose(buf.pose_at(500 * MS), analytic_T_world_ecm(0.475), atol=1e-9)

    def test_reset(self):
        buf = filled_buffer(KinematicsConfig(), 0.0, 0.1)
        buf.reset()
        assert len(buf) == 0 and buf.pose_at(50 * MS) is None

    def test_wait_for_stamp_wakes_on_the_pose(self):
        buf = filled_buffer(KinematicsConfig(), 0.0, 0.1)
        assert buf.wait_for_stamp(100 * MS, 0.0)  # already there: no wait
        t0 = time.monotonic()
        assert not buf.wait_for_stamp(130 * MS, 0.05)  # never comes: gives up after the timeout
        assert 0.04 <= time.monotonic() - t0 < 1.0
        timer = threading.Timer(0.05, lambda: buf.add(130 * MS, analytic_T_world_ecm(0.13)))
        timer.start()
        t0 = time.monotonic()
        assert buf.wait_for_stamp(130 * MS, 5.0)  # woken by add(), long before the 5 s timeout
        assert time.monotonic() - t0 < 2.0
        timer.join()

    def test_concurrent_add_and_lookup(self):
        buf = KinematicsBuffer(KinematicsConfig(buffer_s=0.5))
        errors = []
        done = threading.Event()

        def writer():
            try:
                for k in range(1500):
                    buf.add(k * 10 * MS, analytic_T_world_ecm(k * 0.01))
            except Exception as err:  # pragma: no cover - reported below
                errors.append(err)
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        answered = 0
        while not done.is_set() or answered == 0:
            newest = buf.newest_stamp_ns
            if newest is None:
                continue
            t_ns = newest - 105 * MS
            T = buf.pose_at(t_ns)
            if T is not None:
                np.testing.assert_allclose(T, analytic_T_world_ecm(t_ns / NS), atol=1e-9)
                answered += 1
        thread.join()
        assert not errors and answered > 0
        assert len(buf) == 51


class TestKinematicsConfig:
    def test_defaults(self):
        cfg = KinematicsConfig()
        assert cfg.T_ecm_cam == tuple(np.eye(4).ravel().tolist())
        assert (cfg.enabled, cfg.time_offset_s, cfg.max_age_s, cfg.buffer_s, cfg.message_type) == (
            True, 0.0, 0.05, 10.0, "auto")

    @pytest.mark.parametrize("kwargs, match", [
        ({"T_ecm_cam": (1.0,) * 12}, "kinematics.T_ecm_cam: expected 16 floats"),
        ({"T_ecm_cam": tuple(np.diag([2.0, 2, 2, 1]).ravel().tolist())}, "kinematics.T_ecm_cam: expected a rotation"),
        ({"T_ecm_cam": tuple(np.diag([1.0, 1, -1, 1]).ravel().tolist())}, "kinematics.T_ecm_cam: expected a rotation"),
        ({"T_ecm_cam": (1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1)}, "kinematics.T_ecm_cam: expected last row"),
        ({"T_ecm_cam": (float("nan"),) * 16}, "kinematics.T_ecm_cam: expected finite"),
        ({"max_age_s": -0.1}, "kinematics.max_age_s"),
        ({"max_age_s": 20.0}, "kinematics.max_age_s"),
        ({"time_offset_s": 11.0}, "kinematics.time_offset_s"),
        ({"message_type": "Pose"}, "kinematics.message_type"),
    ])
    def test_bad_input(self, kwargs, match):
        with pytest.raises(ConfigError, match=match):
            KinematicsConfig(**kwargs)


class TestMessageType:
    def test_resolve(self):
        assert resolve_message_type("TransformStamped", []) == "TransformStamped"
        assert resolve_message_type("auto", ["geometry_msgs/msg/TransformStamped"]) == "TransformStamped"
        assert resolve_message_type("auto", ["geometry_msgs/msg/PoseStamped"]) == "PoseStamped"
        assert resolve_message_type("auto", []) is None

    def test_bad_input(self):
        with pytest.raises(InputError, match="ecm/measured_cp"):
            resolve_message_type("auto", ["sensor_msgs/msg/JointState"])

    def test_message_class(self):
        assert message_class("PoseStamped") is geometry_msgs.PoseStamped
        assert message_class("TransformStamped") is geometry_msgs.TransformStamped
