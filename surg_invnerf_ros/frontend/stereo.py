"""Metric depth from the rectified stereo pair: SGBM, left-right check, Z = fx·B/d (DESIGN §3.1).

SGBM (OpenCV) gives the left disparity d_L. The right disparity d_R comes from the same matcher on
the mirrored pair (mirror both images and swap them; the right image then plays the left), which
works with any OpenCV build. Both passes pad the images on the left so that SGBM matches the
border columns too. A left pixel u keeps its disparity only if the right pixel it lands on,
u − d_L(u), points back: |d_L(u) − d_R(u − d_L(u))| <= `lr_thresh_px`. That removes occlusions
(surfaces seen by one camera only) and most mismatches. Depth is z = fx·B/d in metres, NaN where
invalid or outside [min_depth_m, max_depth_m].

SGBM's sub-pixel step fits a parabola to the matching cost, which pulls disparities towards
integers (mean error 0.15-0.18 px on the hard synthetic scenes, about 1 % of depth at 14 px). With
`refine: dis`, a full-resolution DIS flow from the left to the right image replaces the disparity
where it agrees with SGBM within `refine_agree_px` and is horizontal (|v| under half that): mean
error 0.08-0.09 px there on 256×192 frames (0.13 px with DIS stopping at half resolution,
`refine_finest_scale` 1). Frames 1024 px wide or more refine at a coarser level
(`refine_min_width_px`): on the hard 1280×1024 clip level 1 has 0.09 px mean error at the ground-truth
tracks against level 0's 0.12 px, and the fit's 3D error was 0.23 mm against 0.28-0.31 mm (one fit
with it, two without). Frames narrower than `refine_upsample_below_px` (512) are refined twice, as they
are and at twice their size, and the two disparities averaged: their texture-bound biases differ, and
such a bias follows a tissue point through all its frames, so a fit cannot average it away. On the hard
256×192 set (seeds 0 / 1 / 2) the mean per-track disparity bias at the ground-truth tracks fell from
0.073 / 0.041 / 0.058 to 0.065 / 0.040 / 0.046 px and the fit's 3D error from 0.37 / 0.27 / 0.50 to
0.37 / 0.28 / 0.41 mm; the stereo costs four times as much there (1.1 → 4.6 s of CPU for 48 frames). The
node refines once: its per-frame dense map only seeds the sparse stereo, and in its refits the second
refinement halved the model's steps per second (hard 256×192 stream: 21.3 → 9.0, refined 3D 1.33 → 1.74 mm).
On pixel-scale noise at an integer disparity SGBM is already exact and DIS is slightly worse
(`refine: none`). Validity always comes from SGBM's left-right check.

`num_disparities = 0` sizes the search from the calibration: the disparity of the nearest allowed
depth, fx·B/min_depth_m, rounded up to a multiple of 16 and capped at half the image width.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Callable

import cv2
import numpy as np

from ..config import StereoConfig
from ..errors import InputError
from ..geometry import depth_from_disparity_m
from ..structs import StereoCalib
from .flow import check_rgb_u8, check_same_size, dis_grey_flow, dis_level, to_grey
from .workers import thread_map

log = logging.getLogger(__name__)

_MODES = {
    "sgbm": cv2.StereoSGBM_MODE_SGBM,
    "sgbm_3way": cv2.StereoSGBM_MODE_SGBM_3WAY,
    "hh": cv2.StereoSGBM_MODE_HH,
}


def num_disparities_for(calib: StereoCalib, cfg: StereoConfig) -> int:
    """The SGBM search range: `cfg.num_disparities`, or (if 0) enough for `min_depth_m` at this fx·B."""
    cap = max(16, (calib.width // 2) // 16 * 16)
    if cfg.num_disparities:
        return cfg.num_disparities
    if cfg.min_depth_m <= 0:
        return cap
    d_max_px = calib.fx * calib.baseline_m / cfg.min_depth_m
    return int(min(cap, max(16, 16 * math.ceil((d_max_px + 1.0) / 16))))


def make_sgbm(num_disparities: int, cfg: StereoConfig) -> cv2.StereoSGBM:
    """An SGBM matcher on grey images; its own left-right check is off (we run an exact one)."""
    bs = cfg.block_size
    return cv2.StereoSGBM.create(
        minDisparity=0, numDisparities=num_disparities, blockSize=bs,
        P1=8 * bs * bs, P2=32 * bs * bs, disp12MaxDiff=-1, preFilterCap=63,
        uniquenessRatio=cfg.uniqueness_ratio, speckleWindowSize=cfg.speckle_area_px,
        speckleRange=cfg.speckle_range_px, mode=_MODES[cfg.mode])


def _disparity_px(sgbm: cv2.StereoSGBM, left_grey: np.ndarray, right_grey: np.ndarray) -> np.ndarray:
    """SGBM disparity in pixels (H, W) float32; NaN where SGBM found none.

    SGBM leaves the first num_disparities columns empty (the search range does not fit there).
    Padding both images on the left by that much lets it match them; pixels whose true match lies
    in the padding fail the left-right check later.
    """
    pad = sgbm.getNumDisparities() + sgbm.getMinDisparity()
    lp = cv2.copyMakeBorder(left_grey, 0, 0, pad, 0, cv2.BORDER_REPLICATE)
    rp = cv2.copyMakeBorder(right_grey, 0, 0, pad, 0, cv2.BORDER_REPLICATE)
    raw = sgbm.compute(lp, rp)[:, pad:]  # int16, 1/16 px; invalid = (minDisparity - 1)·16
    disp = raw.astype(np.float32) / 16.0
    disp[raw < 0] = np.nan
    return disp


def lr_checked_disparity_px(
    left_grey: np.ndarray, right_grey: np.ndarray, sgbm: cv2.StereoSGBM, lr_thresh_px: float
) -> np.ndarray:
    """Left disparity (H, W) float32 kept where the right disparity agrees; NaN elsewhere."""
    disp_l = _disparity_px(sgbm, left_grey, right_grey)
    # Mirrored pair: right' matched against left' gives the right view's disparity, mirrored.
    disp_r = _disparity_px(sgbm, np.ascontiguousarray(right_grey[:, ::-1]),
                           np.ascontiguousarray(left_grey[:, ::-1]))[:, ::-1]
    H, W = disp_l.shape
    u = np.arange(W, dtype=np.float32)[None, :]
    with np.errstate(invalid="ignore"):
        u_r = np.rint(u - disp_l)  # (H, W) right-image column each left pixel lands on
    ok = np.isfinite(u_r) & (u_r >= 0) & (u_r <= W - 1)
    col = np.where(ok, u_r, 0).astype(np.intp)
    back = np.take_along_axis(disp_r, col, axis=1)
    with np.errstate(invalid="ignore"):
        ok &= np.abs(back - disp_l) <= lr_thresh_px  # NaN on either side fails
    return np.where(ok, disp_l, np.nan).astype(np.float32)


def make_refiner(cfg: StereoConfig, width_px: int) -> cv2.DISOpticalFlow:
    """The DIS instance `refine_disparity_px` uses for frames `width_px` wide (one per thread; reused
    across frames)."""
    dis = cv2.DISOpticalFlow.create(cv2.DISOpticalFlow_PRESET_MEDIUM)
    dis.setFinestScale(dis_level(cfg.refine_finest_scale, cfg.refine_min_width_px, width_px))
    return dis


def where_dis_agrees(d_dis_px: np.ndarray, dy_dis_px: np.ndarray, disp_px: np.ndarray,
                     agree_px: float) -> np.ndarray:
    """DIS's disparity `d_dis_px` where it is within `agree_px` of `disp_px` and its vertical flow `dy_dis_px`
    within half that; `disp_px` elsewhere (NaN stays NaN). Arrays of any one shape."""
    with np.errstate(invalid="ignore"):
        agree = (np.abs(d_dis_px - disp_px) <= agree_px) & (np.abs(dy_dis_px) <= 0.5 * agree_px)
    return np.where(agree, d_dis_px, disp_px)


def refine_disparity_px(left_grey: np.ndarray, right_grey: np.ndarray, disp_px: np.ndarray,
                        agree_px: float, dis: cv2.DISOpticalFlow, upsampled: bool = False) -> np.ndarray:
    """DIS left→right flow as disparity (d = −flow_u) where it agrees with `disp_px`; else `disp_px`.

    With `upsampled`, the flow is the mean of DIS on the pair and on the pair at twice its size.
    NaN in `disp_px` stays NaN: refinement never makes a pixel valid.
    """
    flow = dis_grey_flow(dis, left_grey, right_grey)
    if upsampled:
        H, W = left_grey.shape
        big = [cv2.resize(g, (2 * W, 2 * H), interpolation=cv2.INTER_CUBIC) for g in (left_grey, right_grey)]
        # each 2x2 block averaged onto the pixel it came from; its flow is in half-size pixels
        flow_big = cv2.resize(dis_grey_flow(dis, *big), (W, H), interpolation=cv2.INTER_AREA)
        flow = 0.5 * flow + 0.25 * flow_big
    return where_dis_agrees(-flow[..., 0], flow[..., 1], disp_px, agree_px).astype(np.float32)


def _disparity_checked_px(left_grey: np.ndarray, right_grey: np.ndarray, sgbm: cv2.StereoSGBM,
                          cfg: StereoConfig, dis: cv2.DISOpticalFlow | None = None) -> np.ndarray:
    disp = lr_checked_disparity_px(left_grey, right_grey, sgbm, cfg.lr_thresh_px)
    if cfg.refine == "dis":
        width = left_grey.shape[1]
        disp = refine_disparity_px(left_grey, right_grey, disp, cfg.refine_agree_px,
                                   dis if dis is not None else make_refiner(cfg, width),
                                   upsampled=width < cfg.refine_upsample_below_px)
    return disp


def _check_pair(left: np.ndarray, right: np.ndarray, calib: StereoCalib, who: str, ndim: int) -> None:
    check_rgb_u8(f"{who}: left_rgb_u8", left, ndim=ndim)
    check_rgb_u8(f"{who}: right_rgb_u8", right, ndim=ndim)
    check_same_size("left_rgb_u8", left, f"{who}: right_rgb_u8", right)
    hw = left.shape[-3:-1]
    if hw != (calib.height, calib.width):
        raise InputError(f"{who}: left_rgb_u8: expected {calib.width}x{calib.height} from calib.image_size, "
                         f"got {hw[1]}x{hw[0]}", reason="size_mismatch")


def _depth_m(disp_px: np.ndarray, calib: StereoCalib, cfg: StereoConfig) -> np.ndarray:
    depth = depth_from_disparity_m(disp_px, calib.fx, calib.baseline_m)
    with np.errstate(invalid="ignore"):
        depth[(depth < cfg.min_depth_m) | (depth > cfg.max_depth_m)] = np.nan
    return depth.astype(np.float32)


def depth_with_matchers_m(left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray, calib: StereoCalib, cfg: StereoConfig,
                          sgbm: cv2.StereoSGBM, refiner: cv2.DISOpticalFlow | None) -> np.ndarray:
    """`stereo_depth_m` of one pair with matchers made once per thread (`make_sgbm`, `make_refiner`)."""
    disp = _disparity_checked_px(to_grey(left_rgb_u8), to_grey(right_rgb_u8), sgbm, cfg, refiner)
    return _depth_m(disp, calib, cfg)


def stereo_depth_m(left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray, calib: StereoCalib,
                   cfg: StereoConfig) -> np.ndarray:
    """Depth z of every left pixel, (H, W) float32 metres, NaN where invalid.

    Args:
        left_rgb_u8, right_rgb_u8: (H, W, 3) uint8 rectified pair of size `calib.image_size`.
    """
    left = np.asarray(left_rgb_u8)
    right = np.asarray(right_rgb_u8)
    _check_pair(left, right, calib, "stereo_depth_m", ndim=3)
    sgbm = make_sgbm(num_disparities_for(calib, cfg), cfg)
    disp = _disparity_checked_px(to_grey(left), to_grey(right), sgbm, cfg)
    return _depth_m(disp, calib, cfg)


def stereo_depth_sequence_m(
    left_rgb_u8: np.ndarray,
    right_rgb_u8: np.ndarray,
    calib: StereoCalib,
    cfg: StereoConfig,
    progress: Callable[[int], object] | None = None,
    workers: int = 0,
) -> np.ndarray:
    """`stereo_depth_m` for every frame of (T, H, W, 3) pairs: (T, H, W) float32 metres, NaN invalid.

    Args:
        progress: called with 1 after each frame, from the worker threads.
        workers: threads (0 = every CPU core), one SGBM each; the output does not depend on it.
    """
    left = np.asarray(left_rgb_u8)
    right = np.asarray(right_rgb_u8)
    _check_pair(left, right, calib, "stereo_depth_sequence_m", ndim=4)
    num = num_disparities_for(calib, cfg)
    log.debug("SGBM with %d disparities (fx=%.1f px, B=%.4f m)", num, calib.fx, calib.baseline_m)
    out = np.empty(left.shape[:3], np.float32)
    per_thread = threading.local()  # matcher objects are not shared between threads

    def frame(t: int) -> None:
        if not hasattr(per_thread, "sgbm"):
            per_thread.sgbm, per_thread.dis = make_sgbm(num, cfg), make_refiner(cfg, left.shape[2])
        out[t] = depth_with_matchers_m(left[t], right[t], calib, cfg, per_thread.sgbm, per_thread.dis)
        if progress is not None:
            progress(1)

    thread_map(frame, range(left.shape[0]), workers)
    return out
