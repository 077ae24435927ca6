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

