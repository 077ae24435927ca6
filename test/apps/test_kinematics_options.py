"""Offline kinematics options go through the node's pose buffer (`ros.kinematics.camera_poses_at`)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from surg_invnerf_ros.config import KinematicsConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.io.kinematics import read_hand_eye
from surg_invnerf_ros.ros.kinematics import KinematicsBuffer, camera_poses_at


def analytic(t_s: np.ndarray) -> np.ndarray:
    """Constant velocity: 10 mm/s along x, 30°/s about z (interpolation is exact for it)."""
    T = np.tile(np.eye(4), (len(t_s), 1, 1))
    T[:, :3, :3] = Rotation.from_euler("z", 30.0 * t_s[:, None], degrees=True).as_matrix()
    T[:, 0, 3] = 0.01 * t_s
    return T


def test_lagging_poses_are_compensated_and_the_ends_hold():
    stamps_ns = np.arange(10) * 33_333_333
    t_s = stamps_ns * 1e-9
    lag_s = 0.04
    lagged = analytic(t_s - lag_s)  # what a lagging arm reports at each image stamp
    fixed, counts = camera_poses_at(stamps_ns, stamps_ns, lagged, KinematicsConfig(time_offset_s=lag_s))
    inner = t_s + lag_s <= t_s[-1]
    np.testing.assert_allclose(fixed[inner], analytic(t_s[inner]), atol=1e-9)
    np.testing.assert_allclose(fixed[~inner], np.broadcast_to(lagged[-1], fixed[~inner].shape), atol=1e-12)
    assert (~inner).sum() == 2 and counts["missing"] == 2


def test_same_answer_as_the_node_buffer_inside_the_stream():
    stamps_ns = np.arange(30) * 10_000_000
    T = analytic(stamps_ns * 1e-9)
    T_ecm_cam = np.eye(4)
    T_ecm_cam[:3, 3] = (0.01, 0.0, 0.002)
    cfg = KinematicsConfig(time_offset_s=0.013, T_ecm_cam=tuple(T_ecm_cam.ravel().tolist()))
    images = stamps_ns[2:20] + 3_000_000
    offline, _ = camera_poses_at(images, stamps_ns, T, cfg)
    node = KinematicsBuffer(cfg)
    for s, T_i in zip(stamps_ns.tolist(), T):
        node.add(s, T_i)
    np.testing.assert_allclose(offline, np.stack([node.pose_at(int(t)) for t in images]), atol=1e-12)


def test_stamps_and_poses_must_agree_and_overlap():
    T = analytic(np.linspace(0, 1, 4))
    with pytest.raises(InputError, match="one stamp per pose"):
        camera_poses_at(np.arange(3), np.arange(3), T, KinematicsConfig())
    with pytest.raises(InputError, match="no poses"):
        camera_poses_at(np.arange(3), np.arange(0), np.zeros((0, 4, 4)), KinematicsConfig())
    # poses 1 s apart, images in the middle of each gap: the node calls every one stale
    with pytest.raises(InputError, match="no image has a pose"):
        camera_poses_at(np.arange(3) * 10**9 + 5 * 10**8, np.arange(4) * 10**9, T, KinematicsConfig())


def test_hand_eye_file_errors_are_one_line(tmp_path):
    path = tmp_path / "he.yaml"
    with pytest.raises(InputError, match="file not found"):
        read_hand_eye(path)
    path.write_text("T_ecm_cam: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        read_hand_eye(path)
    path.write_text(f"T_ecm_cam: {np.eye(4).ravel().tolist()}\n")
    np.testing.assert_array_equal(read_hand_eye(path), np.eye(4))
