"""The bulk motion of a group of tracked points: how lost points are carried along.

Under endoscope motion or bulk tissue motion a point whose tracker failed this step is soon far
off if it is held still; it moves instead with the median displacement of the points that were
tracked, which is robust to the few that drift. Too few tracked points say nothing of the motion.
"""

from __future__ import annotations

import numpy as np

MIN_MOVERS = 3  # fewer tracked points than this (or than a tenth of the group) give no motion


def median_shift(old_uv_px: np.ndarray, new_uv_px: np.ndarray, group_size: int) -> np.ndarray | None:
    """Median displacement (2,) from (M, 2) old to (M, 2) new pixels of the M tracked points of a
    group of `group_size`; None when M < max(MIN_MOVERS, group_size / 10)."""
    if len(old_uv_px) < max(MIN_MOVERS, 0.1 * group_size):
        return None
    return np.median(np.asarray(new_uv_px) - np.asarray(old_uv_px), axis=0)
