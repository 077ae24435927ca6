"""io/messages.py, the one message codec: the node's rclpy messages and the bag reader's rosbags
objects decode by the same rules, to the same arrays and with the same drop reasons."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.geometry import T_from_xyz_qxyzw
from surg_invnerf_ros.io import messages
from surg_invnerf_ros.structs import StereoCalib, tracked_points

rb = pytest.importorskip("surg_invnerf_ros.io.rosbag")
convert = pytest.importorskip("surg_invnerf_ros.ros.convert")  # rclpy messages

CALIB = StereoCalib(K=np.array([[100.0, 0, 31.5], [0, 101.0, 23.5], [0, 0, 1]]), baseline_m=0.004,
                    image_size=(64, 48), fps=30.0)
STAMP_NS = 1_700_000_000_123_456_789


def rclpy_pose(T: np.ndarray, stamp_ns: int):
    from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion

    xyz, q = _xyz_q(T)
    return PoseStamped(header=convert.header(stamp_ns, "world"),
                       pose=Pose(position=Point(x=xyz[0], y=xyz[1], z=xyz[2]),
                                 orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])))


def _xyz_q(T):
    from surg_invnerf_ros.geometry import xyz_qxyzw_from_T

    xyz, q = xyz_qxyzw_from_T(T)
    return [float(v) for v in xyz], [float(v) for v in q]


def both_images(rgb_u8: np.ndarray):
    """The same rgb8 image as an rclpy Image and as a rosbags Image."""
    return convert.numpy_to_image(rgb_u8, "rgb8", STAMP_NS, "l"), rb.image_msg(rgb_u8, STAMP_NS, "l")


class TestSameResultFromBothMessageKinds:
    def test_stamp(self):
        ros, bag = both_images(np.zeros((2, 3, 3), np.uint8))
        assert messages.stamp_ns(ros.header.stamp) == messages.stamp_ns(bag.header.stamp) == STAMP_NS
        assert messages.stamp_sec_nanosec(STAMP_NS) == (1_700_000_000, 123_456_789)

    def test_image(self):
        rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        ros, bag = both_images(rgb)
        np.testing.assert_array_equal(messages.image_to_rgb_u8(ros), rgb)
        np.testing.assert_array_equal(messages.image_to_rgb_u8(bag), rgb)

    def test_camera_info(self):
        ros = convert.calib_to_camera_info(CALIB, STAMP_NS, "l", "r")
        bag = (rb.camera_info_msg(CALIB, STAMP_NS, "l", right=False), rb.camera_info_msg(CALIB, STAMP_NS, "r", right=True))
        for left, right in (ros, bag):
            calib = messages.camera_info_to_calib(left, right, fps=30.0)
            np.testing.assert_allclose(calib.K, CALIB.K)
            assert calib.baseline_m == pytest.approx(CALIB.baseline_m) and calib.image_size == CALIB.image_size

    def test_pose(self):
        T = T_from_xyz_qxyzw(np.array([0.01, -0.02, 0.3]), np.array([0.1, 0.2, 0.3, 0.9]) / np.linalg.norm([0.1, 0.2, 0.3, 0.9]))
        for msg in (rclpy_pose(T, STAMP_NS), rb.pose_msg(T, STAMP_NS, "world")):
            stamp_ns, T_out = messages.pose_to_T(msg)
            assert stamp_ns == STAMP_NS
            np.testing.assert_allclose(T_out, T, atol=1e-12)

    def test_tracked_points_cloud(self):
        pts = tracked_points(np.arange(3), np.ones((3, 2)), np.full((3, 3), 0.05), np.array([1, 0, 1]))
        ros = convert.pack_cloud(pts, convert.header(STAMP_NS, "l"))
        bag = rb.tracked_points_msg(pts, STAMP_NS, "l")
        for msg in (ros, bag):
            out = messages.cloud_to_struct(msg)
            assert out.dtype.names == pts.dtype.names
            np.testing.assert_array_equal(out["visible"], [1, 0, 1])
            np.testing.assert_allclose(out["z"], 0.05)


class TestSameReasonsFromBothMessageKinds:
    @pytest.mark.parametrize("field, value, reason", [
        ("encoding", "yuv422", "wrong_encoding"),
        ("step", 10, "bad_step"),
        ("width", 0, "empty_image"),
    ])
    def test_bad_image(self, field, value, reason):
        for msg in both_images(np.zeros((4, 5, 3), np.uint8)):
            setattr(msg, field, value)
            with pytest.raises(InputError, match=f"/left: {field}|/left: empty") as err:
                messages.image_to_rgb_u8(msg, "/left")
            assert err.value.reason == reason

    def test_short_image_data(self):
        ros, bag = both_images(np.zeros((4, 5, 3), np.uint8))
        ros.data = bytes(ros.data)[:-1]
        bag.data = bag.data[:-1]
        for msg in (ros, bag):
            with pytest.raises(InputError, match="/left: data: 59 bytes") as err:
                messages.image_to_rgb_u8(msg, "/left")
            assert err.value.reason == "data_too_short"

    @pytest.mark.parametrize("calib, reason", [
        (replace(CALIB, K=np.zeros((3, 3))), "camera_info_k_zero"),
        (replace(CALIB, baseline_m=0.0), "camera_info_no_baseline"),
        (replace(CALIB, K=np.full((3, 3), np.nan)), "camera_info_not_finite"),
    ])
    def test_bad_camera_info(self, calib, reason):
        ros = convert.calib_to_camera_info(calib, 0, "l", "r")
        bag = (rb.camera_info_msg(calib, 0, "l", right=False), rb.camera_info_msg(calib, 0, "r", right=True))
        for left, right in (ros, bag):
            with pytest.raises(InputError, match="^bag.mcap: camera_info") as err:
                messages.camera_info_to_calib(left, right, where="bag.mcap: camera_info")
            assert err.value.reason == reason

    def test_camera_info_sizes_differ(self):
        other = replace(CALIB, image_size=(32, 48))
        ros = (convert.calib_to_camera_info(CALIB)[0], convert.calib_to_camera_info(other)[1])
        bag = (rb.camera_info_msg(CALIB, 0, "l", right=False), rb.camera_info_msg(other, 0, "r", right=True))
        for left, right in (ros, bag):
            with pytest.raises(InputError, match="sizes differ") as err:
                messages.camera_info_to_calib(left, right)
            assert err.value.reason == "camera_info_size_mismatch"

    @pytest.mark.parametrize("scale, reason", [(0.0, "bad_quaternion"), (2.0, "bad_quaternion"),
                                               (np.nan, "nonfinite_pose")])
    def test_bad_pose(self, scale, reason):
        for msg in (rclpy_pose(np.eye(4), 0), rb.pose_msg(np.eye(4), 0, "world")):
            msg.pose.orientation.w = float(scale)
            with pytest.raises(InputError, match="^/ecm/measured_cp: ") as err:
                messages.pose_to_T(msg, "/ecm/measured_cp")
            assert err.value.reason == reason

    def test_pose_of_another_type(self):
        ros, bag = both_images(np.zeros((1, 1, 3), np.uint8))
        for msg in (ros, bag):
            with pytest.raises(InputError, match="expected geometry_msgs/PoseStamped or TransformStamped") as err:
                messages.pose_to_T(msg)
            assert err.value.reason == "bad_type"

    def test_cloud_shorter_than_declared(self):
        pts = tracked_points(np.arange(3), np.ones((3, 2)), np.ones((3, 3)), np.ones(3))
        ros = convert.pack_cloud(pts, convert.header(0, "l"))
        bag = rb.tracked_points_msg(pts, 0, "l")
        ros.data = bytes(ros.data)[:-1]
        bag.data = bag.data[:-1]
        for msg in (ros, bag):
            with pytest.raises(InputError, match="gt: data") as err:
                messages.cloud_to_struct(msg, "gt")
            assert err.value.reason == "bad_cloud"
