"""ros/tf.py: transform builders (pure) and the built-in broadcasters over DDS."""

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from surg_invnerf_ros.geometry import T_from_xyz_qxyzw
from surg_invnerf_ros.ros import tf
from surg_invnerf_ros.structs import StereoCalib

CALIB = StereoCalib(K=np.eye(3), baseline_m=0.0042, image_size=(64, 48))


class TestBuilders:
    def test_transform_msg_round_trip(self):
        q = np.array([0.1, -0.2, 0.3, 0.9])
        q /= np.linalg.norm(q)
        T = T_from_xyz_qxyzw(np.array([0.01, 0.02, 0.03]), q)
        msg = tf.transform_msg(T, "a", "b", 1_500_000_000)
        assert (msg.header.frame_id, msg.child_frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == (
            "a", "b", 1, 500_000_000)
        r = msg.transform.rotation
        got = np.array([r.x, r.y, r.z, r.w])
        assert np.allclose(got, q) or np.allclose(got, -q)
        assert msg.transform.translation.z == pytest.approx(0.03)

    def test_track_frames_only_visible_and_finite(self):
        xyz = np.array([[0.0, 0.0, 0.1], [np.nan, 0, 0], [0.01, 0, 0.2]])
        out = tf.track_transforms(np.array([3, 4, 5]), xyz, np.array([True, True, False]), "left", 7)
        assert [t.child_frame_id for t in out] == ["track_3"]
        assert out[0].header.frame_id == "left" and out[0].header.stamp.nanosec == 7
        assert out[0].transform.rotation.w == 1.0

    def test_stereo_frame_is_plus_baseline_along_x(self):
        msg = tf.stereo_transform(CALIB, "l", "r", 0)
        assert msg.transform.translation.x == pytest.approx(0.0042)
        # a point at the right camera's origin is at (B, 0, 0) in the left frame: X_right = X_left − [B, 0, 0]
        T = tf.T_left_right(CALIB)
        np.testing.assert_allclose(T @ [0, 0, 0, 1], [0.0042, 0, 0, 1])


def test_static_broadcaster_accumulates_and_late_joiner_gets_all():
    pytest.importorskip("tf2_msgs")
    from tf2_msgs.msg import TFMessage

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        pub_node = rclpy.create_node("tf_pub", context=ctx)
        sub_node = rclpy.create_node("tf_sub", context=ctx)
        static = tf.StaticTransformBroadcaster(pub_node)
        dyn = tf.TransformBroadcaster(pub_node)
        static.sendTransform(tf.stereo_transform(CALIB, "l", "r", 0))
        static.sendTransform(tf.transform_msg(np.eye(4), "l", "extra", 0))
        static.sendTransform(tf.stereo_transform(CALIB, "l", "r", 5))  # replaces, keyed by child
        assert sorted(static.frames) == ["extra", "r"]
        got, got_dyn = [], []
        sub_node.create_subscription(TFMessage, "/tf_static", got.append, tf.TF_STATIC_QOS)  # joins late
        sub_node.create_subscription(TFMessage, "/tf", got_dyn.append, tf.TF_QOS)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(pub_node)
        ex.add_node(sub_node)
        import time

        t0 = time.monotonic()
        while not got and time.monotonic() - t0 < 3:
            ex.spin_once(timeout_sec=0.05)
        assert got, "late joiner got nothing on /tf_static"
        assert sorted(t.child_frame_id for t in got[-1].transforms) == ["extra", "r"]
        while pub_node.count_subscribers("/tf") == 0 and time.monotonic() - t0 < 3:
            ex.spin_once(timeout_sec=0.05)
        dyn.sendTransform(tf.track_transforms(np.array([1]), np.array([[0, 0, 0.1]]), np.array([True]), "l", 3))
        while not got_dyn and time.monotonic() - t0 < 3:
            ex.spin_once(timeout_sec=0.05)
        assert got_dyn and got_dyn[0].transforms[0].child_frame_id == "track_1"
        ex.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
