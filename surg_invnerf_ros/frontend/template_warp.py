"""Warp a template image by the smooth motion of points tracked from it.

Re-acquisition matches a point's origin patch against the current frame. Under camera motion and
deformation the tissue around the point scales, shears and rotates, so the origin patch stops
correlating with the current one long before the point is lost (on the hard synthetic stream, a third of
the points fail the re-acquisition NCC at their true position 15 frames after their last re-acquisition).
Warping the origin image by the motion of the points placed with it undoes the shape change; what LK and
the NCC check then see differs mostly by shading.

The motion is a smoothing thin-plate spline through the points' (template → current estimate) pairs, not
an interpolating one: current estimates carry chained-tracking noise, and a map that passes through each
of them shears the patches between neighbours by that noise, which pulls LK off the point (on the hard
stream, with 1.5 px of noise: median error 0.69 px interpolating, 0.19 px smoothing, 0.36 px unwarped).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from scipy.interpolate import RBFInterpolator

#: The map is evaluated on a grid of about this many cells across the image, bilinear in between (the
#: smoothing spline varies little over a cell).
GRID_CELLS = 32
#: Fewer points than this give no usable shape: the image is not warped.
MIN_POINTS = 6
#: Points spread along one direction less than this share of the other are taken as collinear.
MIN_SPREAD = 0.1
#: The spline's smoothing, coordinates in image widths. On the hard synthetic streams (256×192) the tracks'
#: mean error was 0.72–0.75 px from 0.05 to 0.5; 0 interpolates every estimate, noise included.
SMOOTHING = 0.15


@functools.lru_cache(maxsize=2)
def _pixel_grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def _spline(src: np.ndarray, values: np.ndarray, scale: float, smoothing: float) -> RBFInterpolator:
    return RBFInterpolator(src / scale, values, kernel="thin_plate_spline", smoothing=smoothing)


def warp_template(image: np.ndarray, src_uv_px: np.ndarray, dst_uv_px: np.ndarray, smoothing: float = SMOOTHING
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Warp `image` (H, W[, C]) by the smooth motion that takes its pixels `src_uv_px` (N, 2) to about
    `dst_uv_px` (N, 2) (x, y; rows with NaN are left out of the fit).

    Args:
        smoothing: the spline's smoothing with coordinates in image widths (0 interpolates every pair;
            large values tend to one affine map).

    Returns:
        (warped image, (N, 2) where each source pixel lies in it), or None with fewer than `MIN_POINTS`
        finite pairs, (nearly) collinear ones (`MIN_SPREAD`) or a spline that cannot be fitted.
    """
    H, W = image.shape[:2]
    scale = float(W)
    moved = smooth_motion(src_uv_px, dst_uv_px, src_uv_px, scale, smoothing)
    if moved is None:
        return None
    ok = np.isfinite(moved).all(axis=1) & np.isfinite(dst_uv_px).all(axis=1)
    step = max(W // GRID_CELLS, 1)
    gx = np.arange(0, W + step, step, dtype=np.float64)
    gy = np.arange(0, H + step, step, dtype=np.float64)
    grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    try:
        # the inverse map, exact through the smoothed positions, for remap: result(x) = image(x + back(x))
        back = _spline(moved[ok], src_uv_px[ok] - moved[ok], scale, 1e-9)(grid / scale).reshape(len(gy), len(gx), 2)
    except (np.linalg.LinAlgError, ValueError):
        return None
    xs, ys = _pixel_grid(H, W)
    # the offsets at every pixel, bilinear between the grid's samples (sample k sits at pixel k·step)
    dense = cv2.remap(back.astype(np.float32), xs / step, ys / step, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    dense[..., 0] += xs
    dense[..., 1] += ys
    warped = cv2.remap(image, dense, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return warped, moved


def smooth_motion(src_uv_px: np.ndarray, dst_uv_px: np.ndarray, query_uv_px: np.ndarray, scale_px: float,
                  smoothing: float = SMOOTHING) -> np.ndarray | None:
    """Where the smooth motion that takes `src_uv_px` (N, 2) to about `dst_uv_px` (N, 2) takes `query_uv_px`
    (M, 2), the same spline as `warp_template` with coordinates in units of `scale_px` (the image width);
    None with fewer than `MIN_POINTS` finite pairs, (nearly) collinear ones (`MIN_SPREAD`) or a spline that
    cannot be fitted. A query with NaN stays NaN."""
    ok = np.isfinite(src_uv_px).all(axis=1) & np.isfinite(dst_uv_px).all(axis=1)
    if ok.sum() < MIN_POINTS:
        return None
    spread = np.linalg.svd(src_uv_px[ok] - src_uv_px[ok].mean(axis=0), compute_uv=False)
    if spread[1] < MIN_SPREAD * spread[0]:  # (nearly) on a line: no motion across it
        return None
    src, dst = src_uv_px[ok].astype(np.float64), dst_uv_px[ok].astype(np.float64)
    query = np.asarray(query_uv_px, np.float64)
    try:
        return query + _spline(src, dst - src, scale_px, smoothing)(np.nan_to_num(query) / scale_px)
    except (np.linalg.LinAlgError, ValueError):
        return None
