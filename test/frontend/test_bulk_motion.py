"""Bulk motion of a tracked group: the median shift that carries lost points."""

import numpy as np

from surg_invnerf_ros.frontend.bulk_motion import median_shift


def test_median_ignores_a_drifting_point():
    old = np.array([[10.0, 10.0], [20.0, 5.0], [30.0, 40.0], [5.0, 5.0]])
    new = old + np.array([1.5, -0.5])
    new[2] += [25.0, 25.0]  # one tracker failure among four
    assert np.allclose(median_shift(old, new, group_size=4), [1.5, -0.5])


def test_too_few_tracked_points_give_no_motion():
    old = np.zeros((2, 2))
    assert median_shift(old, old + 1.0, group_size=3) is None  # fewer than 3
    many = np.zeros((5, 2))
    assert median_shift(many, many + 1.0, group_size=100) is None  # fewer than a tenth of 100
    assert np.allclose(median_shift(many, many + 1.0, group_size=50), [1.0, 1.0])
