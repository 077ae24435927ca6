"""TrackerNode kinematics wiring: ecm/measured_cp as
PoseStamped or TransformStamped feeds the pose buffer; frames with a pose send world → left optical
on /tf; bad, missing and stale poses are counted in /diagnostics and the node keeps publishing."""

from typing import Any

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy

from surg_invnerf_ros.geometry import T_from_xyz_qxyzw, xyz_qxyzw_from_T
from surg_invnerf_ros.ros import convert

from .track_harness import LEFT_FRAME, PERIOD_NS, T0_NS, Harness, ros_context
from .track_harness import pose_msg as harness_pose_msg

pytest.importorskip("tf2_msgs")

KIN = "surg_invnerf_tracker: kinematics"
# a pose that is not the identity, so a TF that ignored it could not pass
XYZ_M = np.array([0.01, -0.02, 0.05])
Q_XYZW = np.array([0.0, np.sin(0.2), 0.0, np.cos(0.2)])
T_WORLD_ECM = T_from_xyz_qxyzw(XYZ_M, Q_XYZW)
T_ECM_CAM = np.array([[1.0, 0, 0, 0.003], [0, 1, 0, 0], [0, 0, 1, 0.001], [0, 0, 0, 1]])


def pose_msg(kind: str, stamp_ns: int, xyz: Any = XYZ_M, q: Any = Q_XYZW) -> Any:
    """`track_harness.pose_msg` with this module's default pose."""
    return harness_pose_msg(kind, stamp_ns, xyz, q)


class KinHarness(Harness):
    """The harness plus an ecm/measured_cp publisher of one message type."""

    def __init__(self, ctx, kind: str, overrides=None):
        base = {"queries.points_px": [20.0, 20.0], "sync.timeout_s": 0.2}
        base.update(overrides or {})
        super().__init__(ctx, base)
        self.kind = kind
        cls = PoseStamped if kind == "PoseStamped" else TransformStamped
        self.pose_pub = self.io.create_publisher(cls, "ecm/measured_cp",
                                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        # the node re-checks the graph every 0.5 s until the topic is advertised, then subscribes
        assert self.spin_until(lambda: self.pose_pub.get_subscription_count() > 0, 5.0), "no ecm/measured_cp sub"

    def send_pose(self, stamp_ns: int, **kw) -> None:
        self.pose_pub.publish(pose_msg(self.kind, stamp_ns, **kw))

    def send_poses_around(self, i: int) -> int:
        """Poses bracketing frame i's stamp (one period either side), received before the images."""
        n0 = self.node._poses_received
        stamp = T0_NS + i * PERIOD_NS
        for s in (stamp - PERIOD_NS, stamp + PERIOD_NS):
            self.send_pose(s)
        assert self.spin_until(lambda: self.node._poses_received >= n0 + 2, 3.0)
        return stamp

    def world_tfs(self, stamp_ns: int | None = None) -> list:
        return [t for m in self.got["tf"] for t in m.transforms
                if t.header.frame_id == "world" and (stamp_ns is None or convert.stamp_ns(t.header.stamp) == stamp_ns)]

    def kin_diag(self, key: str) -> int:
        return int(self.diag().get(KIN, {}).get(key, "-1"))

    def wait_kin(self, key: str, at_least: int = 1, timeout_s: float = 3.0) -> int:
        self.spin_until(lambda: self.kin_diag(key) >= at_least, timeout_s)
        return self.kin_diag(key)


@pytest.fixture
def ctx():
    with ros_context() as c:
        yield c


@pytest.mark.parametrize("kind", ["PoseStamped", "TransformStamped"])
def test_both_message_types_give_world_to_camera_tf(ctx, kind):
    h = KinHarness(ctx, kind, {"kinematics.T_ecm_cam": T_ECM_CAM.ravel().tolist()})
    try:
        assert h.node._kin_type == kind
        stamp = h.send_poses_around(0)
        h.send(0)
        assert h.spin_until(lambda: h.world_tfs(stamp), 3.0), "no world → camera transform on /tf"
        t = h.world_tfs(stamp)[0]
        assert t.child_frame_id == LEFT_FRAME
        tr, r = t.transform.translation, t.transform.rotation
        # the two poses are equal, so the interpolated pose is T_world_ecm, and the hand-eye is applied
        xyz, q = xyz_qxyzw_from_T(T_WORLD_ECM @ T_ECM_CAM)
        np.testing.assert_allclose([tr.x, tr.y, tr.z], xyz, atol=1e-9)
        assert abs(float(np.dot([r.x, r.y, r.z, r.w], q))) == pytest.approx(1.0, abs=1e-9)
        assert h.wait_kin("frames_with_pose") == 1
        assert h.diag()[KIN]["message_type"] == kind and h.diag()[KIN]["_level"] == "0"
    finally:
        h.close()


@pytest.mark.parametrize("bad", [dict(xyz=[np.nan, 0, 0]), dict(q=[0, 0, np.inf, 1.0])], ids=["nan", "inf"])
def test_nonfinite_pose_is_dropped_counted_and_node_keeps_publishing(ctx, bad):
    h = KinHarness(ctx, "PoseStamped")
    try:
        h.send_pose(T0_NS - PERIOD_NS // 2, **bad)
        assert h.wait_drop("nonfinite_pose") == 1  # in the input drops...
        assert h.kin_diag("counter.nonfinite_pose") == 1  # ...and the kinematics counters
        assert h.diag()[KIN]["poses_received"] == "0"
        # the frame still runs (without kinematics: no world TF), then good poses give one again
        s0 = h.send(0)
        assert h.spin_until(lambda: s0 in h.stamps(), 3.0), "no tracked points after a bad pose"
        assert not h.world_tfs()
        s1 = h.send_poses_around(1)
        h.send(1)
        assert h.spin_until(lambda: s1 in h.stamps() and h.world_tfs(s1), 3.0)
        assert len(h.points()[-1]) == 1
    finally:
        h.close()


def test_stale_and_missing_are_counted_and_frames_run_without_pose(ctx):
    h = KinHarness(ctx, "TransformStamped", {"kinematics.max_age_s": 0.05, "kinematics.wait_s": 0.0})
    try:
        # poses 1 s apart: a frame between them has no pose within 50 ms → stale
        h.send_pose(T0_NS - 100 * PERIOD_NS)
        h.send_pose(T0_NS + 30 * PERIOD_NS)
        assert h.spin_until(lambda: h.node._poses_received == 2, 3.0)
        s0 = h.send(0)
        assert h.wait_kin("counter.stale") == 1
        assert s0 in h.stamps() and not h.world_tfs()
        # a frame after the newest pose → missing (the buffer never extrapolates)
        s1 = h.send(40)
        assert h.wait_kin("counter.missing") == 1
        assert s1 in h.stamps()
        assert h.wait_kin("frames_without_pose", 2) == 2 and h.kin_diag("frames_with_pose") == 0
        assert not h.world_tfs()
    finally:
        h.close()


def test_disabled_kinematics_ignores_poses(ctx):
    h = Harness(ctx, {"queries.points_px": [20.0, 20.0], "kinematics.enabled": False})
    try:
        assert h.node.kin is None and h.node._kin_sub is None
        stamp = h.send(0)
        assert h.spin_until(lambda: stamp in h.stamps(), 3.0)
        assert h.spin_until(lambda: KIN in h.diag(), 3.0) and h.diag()[KIN]["_message"] == "off"
    finally:
        h.close()
