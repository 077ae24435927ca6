"""Bulk motion of a tracked group: the median shift that carries lost points."""

import numpy as np

from surg_invnerf_ros.frontend.bulk_motion import median_shift, neighbour_shift


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


def test_neighbour_shift_follows_the_local_motion():
    # two groups moving apart; a lost point in each group moves with its own group
    left = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    right = left + 50.0
    old = np.concatenate([left, right, [[0.5, 0.5], [50.5, 50.5]]])
    step = np.array([[2.0, 0.0]] * 3 + [[-1.0, 3.0]] * 3 + [[99.0, 99.0]] * 2)  # the lost ones' LK is garbage
    moved = np.array([True] * 6 + [False] * 2)
    shift = neighbour_shift(old, old + step, moved, neighbours=3)
    assert shift is not None and shift.shape == (8, 2)
    np.testing.assert_allclose(shift[6], [2.0, 0.0])
    np.testing.assert_allclose(shift[7], [-1.0, 3.0])
    np.testing.assert_allclose(shift[:6], step[:6])  # a moved point's neighbours include itself
    # with every moved point as a neighbour it is the group median
    np.testing.assert_allclose(neighbour_shift(old, old + step, moved, neighbours=100)[6],
                               median_shift(old[moved], (old + step)[moved], 8))


def test_neighbour_shift_needs_enough_moved_points():
    old = np.zeros((40, 2))
    assert neighbour_shift(old, old + 1.0, np.arange(40) < 2, neighbours=4) is None  # fewer than 3
    assert neighbour_shift(old, old + 1.0, np.arange(40) < 3, neighbours=4) is None  # fewer than a tenth of 40
    assert neighbour_shift(old, old + 1.0, np.arange(40) < 4, neighbours=4) is not None
