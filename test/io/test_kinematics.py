"""kinematics.csv: poses per frame, quaternions xyzw, strict validation."""

from __future__ import annotations

import numpy as np
import pytest

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.io.kinematics import read_kinematics


class TestReadKinematics:
    def test_known_values(self, tmp_path):
        s = np.sqrt(0.5)
        path = tmp_path / "kinematics.csv"
        # frame 1: 90° about z (q = [0, 0, sin 45°, cos 45°]); a 1e-4 norm error is tolerated
        path.write_text(f"frame,x,y,z,qx,qy,qz,qw\n0,0.1,0.2,0.3,0,0,0,1\n1,0,0,0.05,0,0,{s * 1.0001},{s * 1.0001}\n")
        T = read_kinematics(path, 2)
        assert T.shape == (2, 4, 4)
        np.testing.assert_allclose(T[0], [[1, 0, 0, 0.1], [0, 1, 0, 0.2], [0, 0, 1, 0.3], [0, 0, 0, 1]], atol=1e-12)
        # R_z(90°) sends x to y
        np.testing.assert_allclose(T[1, :3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-6)
        np.testing.assert_allclose(np.linalg.det(T[1, :3, :3]), 1.0, atol=1e-9)

    def test_bad_input(self, tmp_path):
        path = tmp_path / "kinematics.csv"
        path.write_text("frame,x,y,z,qw,qx,qy,qz\n0,0,0,0,1,0,0,0\n")
        with pytest.raises(InputError, match="kinematics.csv: line 1: expected the header frame,x,y,z,qx"):
            read_kinematics(path, 1)
        path.write_text("frame,x,y,z,qx,qy,qz,qw\n")
        with pytest.raises(InputError, match="kinematics.csv: no rows"):
            read_kinematics(path)
        path.write_text("frame,x,y,z,qx,qy,qz,qw\n0,0,0,0,0,0,0,2\n")
        with pytest.raises(InputError, match="line 2: qx,qy,qz,qw: expected a unit quaternion"):
            read_kinematics(path)
        path.write_text("frame,x,y,z,qx,qy,qz,qw\n1,0,0,0,0,0,0,1\n")
        with pytest.raises(InputError, match="line 2: frame: expected 0"):
            read_kinematics(path, 1)


class TestShiftPoses:
    @staticmethod
    def _analytic(t_s: np.ndarray) -> np.ndarray:
        """Constant velocity: 10 mm/s along x, 30°/s about z (interpolation is exact for it)."""
        from scipy.spatial.transform import Rotation

        T = np.tile(np.eye(4), (len(t_s), 1, 1))
        T[:, :3, :3] = Rotation.from_euler("z", 30.0 * t_s[:, None], degrees=True).as_matrix()
        T[:, 0, 3] = 0.01 * t_s
        return T

    def test_lagging_poses_are_compensated(self):
        from surg_invnerf_ros.io.kinematics import shift_poses

        stamps_ns = np.arange(10) * 33_333_333
        t_s = stamps_ns * 1e-9
        lag_s = 0.04
        lagged = self._analytic(t_s - lag_s)  # what a lagging arm reports at each image stamp
        fixed = shift_poses(stamps_ns, lagged, lag_s)
        # inside the stream the true pose comes back; the last frames hold the last pose (no extrapolation)
        inner = t_s + lag_s <= t_s[-1]
        np.testing.assert_allclose(fixed[inner], self._analytic(t_s[inner]), atol=1e-9)
        np.testing.assert_allclose(fixed[~inner], np.broadcast_to(lagged[-1], fixed[~inner].shape), atol=1e-12)
        assert (~inner).sum() == 2

    def test_zero_offset_and_bad_lengths(self):
        from surg_invnerf_ros.io.kinematics import shift_poses

        T = self._analytic(np.linspace(0, 1, 4))
        np.testing.assert_array_equal(shift_poses(np.arange(4) * 10, T, 0.0), T)
        with pytest.raises(InputError, match="one stamp per pose"):
            shift_poses(np.arange(3), T, 0.01)
