"""Rigid-transform validation shared by the config and the CLI's hand-eye option."""

import numpy as np
from scipy.spatial.transform import Rotation

from surg_invnerf_ros.geometry import grid_points_px, rigid_transform_problem


def test_a_rigid_transform_has_no_problem():
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix()
    T[:3, 3] = [0.01, -0.02, 0.1]
    assert rigid_transform_problem(T) is None


def test_each_problem_is_named():
    bad_row = np.eye(4)
    bad_row[3, 0] = 1.0
    assert "last row" in rigid_transform_problem(bad_row)
    assert "rotation" in rigid_transform_problem(np.diag([2.0, 1.0, 1.0, 1.0]))  # a scale
    assert "rotation" in rigid_transform_problem(np.diag([-1.0, 1.0, 1.0, 1.0]))  # a reflection
    assert "4x4" in rigid_transform_problem(np.eye(3))
    nan = np.eye(4)
    nan[0, 3] = np.nan
    assert "finite" in rigid_transform_problem(nan)


def test_grid_points_cover_the_inside_of_the_margin():
    uv = grid_points_px(12, 64, 48, 8.0)
    assert uv.shape == (12, 2) and len(np.unique(uv, axis=0)) == 12
    assert uv.min() >= 8.0 and uv[:, 0].max() <= 63 - 8.0 and uv[:, 1].max() <= 47 - 8.0
    # aspect-matched: more columns than rows on a landscape image
    assert len(np.unique(uv[:, 0])) > len(np.unique(uv[:, 1]))
    assert grid_points_px(7, 64, 48, 8.0).shape == (7, 2)
