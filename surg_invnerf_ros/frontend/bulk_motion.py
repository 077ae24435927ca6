"""The bulk motion of a group of tracked points: how lost points are carried along.

Under endoscope motion or bulk tissue motion a point whose tracker failed this step is soon far
off if it is held still; it moves instead with the median displacement of the points that were
tracked, which is robust to the few that drift. Too few tracked points say nothing of the motion.
"""

from __future__ import annotations

import numpy as np

MIN_MOVERS = 3  # fewer tracked points than this (or than a tenth of the group) give no motion
LOCAL_NEIGHBOURS = 6  # tracked points whose median motion carries a lost one (`neighbour_shift`)


def enough_movers(n_moved: int, group_size: int) -> bool:
    """Whether `n_moved` tracked points of a group of `group_size` say anything of its motion."""
    return n_moved >= max(MIN_MOVERS, 0.1 * group_size)


def median_shift(old_uv_px: np.ndarray, new_uv_px: np.ndarray, group_size: int) -> np.ndarray | None:
    """Median displacement (2,) from (M, 2) old to (M, 2) new pixels of the M tracked points of a
    group of `group_size`; None when M < max(MIN_MOVERS, group_size / 10)."""
    if not enough_movers(len(old_uv_px), group_size):
        return None
    return np.median(np.asarray(new_uv_px) - np.asarray(old_uv_px), axis=0)


def neighbour_shift(old_uv_px: np.ndarray, new_uv_px: np.ndarray, moved: np.ndarray, neighbours: int
                    ) -> np.ndarray | None:
    """Displacement (N, 2) of each of N points: the median displacement of its `neighbours` nearest
    moved points (by their old pixels), so a lost point follows the local motion of the tissue around
    it (deformation, parallax) rather than the group's. `moved` (N,) marks the points whose
    `new_uv_px` was tracked. None when too few moved (see `median_shift`).

    >>> old = np.array([[0.0, 0], [1, 0], [10, 0], [11, 0], [0.5, 0]])
    >>> new = old + np.array([[1.0, 0], [1, 0], [-1, 0], [-1, 0], [0, 0]])
    >>> neighbour_shift(old, new, np.array([True, True, True, True, False]), 2)[4].tolist()
    [1.0, 0.0]
    """
    src = np.asarray(old_uv_px, np.float64)
    return neighbour_median(src, np.asarray(new_uv_px, np.float64) - src, moved, neighbours)


def neighbour_median(uv_px: np.ndarray, values: np.ndarray, known: np.ndarray, neighbours: int
                     ) -> np.ndarray | None:
    """For each of N points at (N, 2) `uv_px`, the median of (N, ...) `values` over its `neighbours`
    nearest points where `known` (N,) holds: a local estimate for the points whose own value is not
    known. None when too few are known (`enough_movers`).

    >>> uv = np.array([[0.0, 0], [1, 0], [10, 0], [0.5, 0]])
    >>> neighbour_median(uv, np.array([2.0, 4, 9, 0]), np.array([True, True, True, False]), 2).tolist()
    [3.0, 3.0, 6.5, 3.0]
    """
    known = np.asarray(known, bool)
    n_known = int(known.sum())
    if not enough_movers(n_known, len(known)):
        return None
    uv = np.asarray(uv_px, np.float64)
    k = min(int(neighbours), n_known)
    d2 = ((uv[:, None, :] - uv[known][None, :, :]) ** 2).sum(-1)  # (N, M)
    near = np.argpartition(d2, k - 1, axis=1)[:, :k]  # (N, k)
    return np.median(np.asarray(values)[known][near], axis=1)
