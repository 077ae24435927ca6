"""OnlineTracker: streaming tracking at two speeds (DESIGN §3.3). ROS-free; the node wraps it.

- **Front end, every frame** (`push_frame`, milliseconds): LK moves each query from the previous
  left image to the new one, SGBM depth lifts it to 3D. A result exists for every frame at once.
- **Refinement, asynchronous** (a worker thread): every `keyframe_every`-th frame is buffered in a
  window of `window_frames` keyframes (bounded memory). When enough new keyframes have arrived the
  worker fits the InvNeRF model on the window, warm-starting from the last fit, and infers the
  queries' tracks on it. `poll()` hands those tracks back (`refined=True`); they replace the front
  end's in the history, and the front end re-anchors: its current estimate is shifted by the
  correction the fit made at the newest keyframe it covered, so front-end drift never outlives a fit.

Nothing here blocks on the model: `push_frame`, `poll` and the query calls only take a short lock.
Queries can be added, cleared or reset at any time; ids are never reused.

The refinement backend is a callable (`refiner.Refiner`), so tests inject a fake; the default
(`refiner.ProcessRefiner`) runs `track.fit_invnerf` + `track.infer_tracks` in a child process. When
that process dies (killed, out of memory) the worker thread restarts it with a back-off (1 s, 2 s,
4 s ... up to 30 s) and fits the current window on the new one; after `refine.worker_max_deaths`
deaths within `OnlineTracker.DEATH_WINDOW_S` (60 s) it gives up and the model state is "error".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeGuard

import cv2
import numpy as np

from .config import FrontendConfig, OnlineConfig, QueryConfig, RefineConfig
from .errors import InputError
from .frontend.bulk_motion import LOCAL_NEIGHBOURS, neighbour_median, neighbour_shift
from .frontend.flow import dis_grey_flow, to_grey
from .frontend.lk import LKPointTracker, patch_ncc
from .frontend.stereo import stereo_depth_m, where_dis_agrees
from .frontend.template_warp import smooth_motion, warp_template
from .frontend.workers import num_workers
from .geometry import depth_from_disparity_m, grid_points_px, sample_bilinear, unproject_m
from .refiner import FitAborted, InvNeRFRefiner, ProcessRefiner, RefineJob, RefineOutput, Refiner, WorkerDied, exit_text
from .structs import Queries, Sequence, StereoCalib

__all__ = ["FrameTracks", "FrontEnd", "LKStereoFrontEnd", "OnlineTracker", "RefineJob", "RefineOutput",
           "Refiner", "StereoFrame", "index_of"]

log = logging.getLogger(__name__)
#: `_origin_key` of queries given in the pixels of the next frame pushed (a stamp after the latest frame).
NEXT_FRAME = -2


@dataclass(frozen=True)
class StereoFrame:
    """One synchronised, rectified stereo pair.

    Attributes:
        left_rgb_u8, right_rgb_u8: (H, W, 3) uint8 RGB.
        calib: rectified calibration (image_size = (W, H)).
        stamp_ns: the left image stamp.
        T_world_cam: optional (4, 4) left-camera pose (kinematics), None without.
    """

    left_rgb_u8: np.ndarray
    right_rgb_u8: np.ndarray
    calib: StereoCalib
    stamp_ns: int
    T_world_cam: np.ndarray | None = None


@dataclass
class FrameTracks:
    """Every current query at one frame.

    Attributes:
        stamp_ns: the frame's left image stamp.
        ids: (N,) int64.
        uv_px: (N, 2) float32 left-image pixels.
        xyz_cam_m: (N, 3) float32 metres, left optical frame of this frame (NaN: no depth).
        visible: (N,) bool.
        confidence: (N,) float32 in [0, 1].
        refined: (N,) bool, True where the InvNeRF fit produced the value.
        depth_m: optional (H, W) float32 depth of the frame (NaN invalid), for the cloud: stereo for
            front-end results, the model's render for the newest refined frame (refine.render_cloud).
        left_rgb_u8: optional (H, W, 3) left image, set with a rendered depth_m (the cloud's colours).
        shed: the front end skipped optional work on this frame because its caller was behind
            (`online.shed_when_behind`).
    """

    stamp_ns: int
    ids: np.ndarray
    uv_px: np.ndarray
    xyz_cam_m: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray
    refined: np.ndarray
    depth_m: np.ndarray | None = None
    left_rgb_u8: np.ndarray | None = None
    shed: bool = False


class FrontEnd(Protocol):
    """Per-frame front end: point motion between two left images and stereo depth.

    A front end may also offer `point_depth_m(left, right, calib, uv_px, disp_guess_px) -> ((N,) z, (N,) disp,
    (N,) sure)` for depth at the points only (see `LKStereoFrontEnd.point_depth_m`); without it the dense map
    is sampled.
    """

    def track(self, prev_rgb_u8: np.ndarray, cur_rgb_u8: np.ndarray,
              uv_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ...

    def depth_m(self, left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray, calib: StereoCalib) -> np.ndarray:
        ...


class _Reacquires(FrontEnd, Protocol):
    """A front end with the optional `reacquire` (see `LKStereoFrontEnd.reacquire`)."""

    def reacquire(self, origin_rgb_u8: np.ndarray, cur_rgb_u8: np.ndarray, origin_uv_px: np.ndarray,
                  guess_uv_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ...


class _PointDepth(FrontEnd, Protocol):
    """A front end with the optional `point_depth_m` (see `LKStereoFrontEnd.point_depth_m`)."""

    def point_depth_m(self, left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray, calib: StereoCalib,
                      uv_px: np.ndarray, disp_guess_px: np.ndarray, max_dy_px: float = 1.0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ...


def _can_reacquire(frontend: object) -> TypeGuard[_Reacquires]:
    return hasattr(frontend, "reacquire")


def _has_point_depth(frontend: object) -> TypeGuard[_PointDepth]:
    return hasattr(frontend, "point_depth_m")


class _StereoFlow(_PointDepth, Protocol):
    """A front end whose `point_depth_m` refines with a dense flow (see `LKStereoFrontEnd.stereo_flow_px`)."""

    def refines_stereo(self, width_px: int) -> bool:
        ...

    def stereo_flow_px(self, left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray,
                       disp_start_px: float = float("nan")) -> np.ndarray | None:
        ...


def _has_stereo_flow(frontend: object) -> TypeGuard[_StereoFlow]:
    return hasattr(frontend, "stereo_flow_px")


class LKStereoFrontEnd:
    """The default front end: `frontend.lk.LKPointTracker` and `frontend.stereo.stereo_depth_m`."""

    #: `point_depth_m` on frames narrower than `stereo_upsample_below_px` matches on images this many times
    #: the size (bicubic), with an LK window 1.5 times the frame-to-frame one in those pixels.
    STEREO_UPSAMPLE = 2
    #: `stereo_flow_px`'s DIS: patch stride (the fast preset's 4), gradient-descent steps per patch (its 16) and
    #: variational smoothing steps (its 5).
    STEREO_DIS_PATCH_STRIDE = 6
    STEREO_DIS_ITERATIONS = 8
    STEREO_DIS_SMOOTHING_ITERATIONS = 3

    def __init__(self, cfg: FrontendConfig, online_cfg: OnlineConfig | None = None) -> None:
        """Args:
            online_cfg: the sparse stereo's `online.stereo_*` options (default: OnlineConfig())."""
        self._lk = LKPointTracker(cfg.lk)
        online_cfg = online_cfg or OnlineConfig()
        self._upsample_below_px = online_cfg.stereo_upsample_below_px
        self._stereo_min_ncc = online_cfg.stereo_min_ncc
        self._lk_upsampled = LKPointTracker(replace(cfg.lk, win_size_px=(cfg.lk.win_size_px * 3 // 2) | 1))
        # the dense map seeds sparse stereo (or is the per-frame depth): one refinement keeps the frame's time
        self._stereo_cfg = replace(cfg.stereo, refine_upsample_below_px=0)
        # the dense flow needs a core of its own
        self._refine_below_px = (online_cfg.stereo_refine_below_px
                                 if num_workers(0) >= online_cfg.stereo_refine_min_cpus else 0)
        self._refiners = threading.local()  # one DIS instance per thread that calls `stereo_flow_px`

    def track(self, prev_rgb_u8: np.ndarray, cur_rgb_u8: np.ndarray,
              uv_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._lk.track_pair(prev_rgb_u8, cur_rgb_u8, uv_px)

    def reacquire(self, origin_rgb_u8: np.ndarray, cur_rgb_u8: np.ndarray, origin_uv_px: np.ndarray,
                  guess_uv_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LK from the image a query was placed on straight to the current one, started at the
        (N, 2) current estimate: `lk_query`'s pyramid depth and NCC check. (uv, ok) as `track`."""

        return self._lk.track_grey(to_grey(origin_rgb_u8), to_grey(cur_rgb_u8), origin_uv_px,
                                   init_uv_px=guess_uv_px, max_level=self._lk.cfg.query_max_level,
                                   min_ncc=self._lk.cfg.min_ncc_query)

    def depth_m(self, left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray, calib: StereoCalib) -> np.ndarray:
        return stereo_depth_m(left_rgb_u8, right_rgb_u8, calib, self._stereo_cfg)

    def refines_stereo(self, width_px: int) -> bool:
        """Whether `stereo_flow_px` computes a flow for frames `width_px` wide (`online.stereo_refine_below_px`,
        with at least `online.stereo_refine_min_cpus` CPU cores)."""
        return width_px < self._refine_below_px

    def stereo_flow_px(self, left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray,
                       disp_start_px: float = float("nan")) -> np.ndarray | None:
        """(H, W, 2) float32 DIS flow from the left to the right image that `point_depth_m` refines its
        disparities with, or None where `refines_stereo` says no.

        DIS starts from the disparity `disp_start_px` everywhere (NaN: none), e.g. the median of the points'
        last ones: its coarsest level is too small for the disparities of near tissue on small frames (18 px
        at 128×96: all lost from a zero start, 0.27 px mean error from 18).

        DIS's fast preset at full resolution with fewer patches and steps (`STEREO_DIS_*`): at the true
        pixels of the hard 256×192 scenes the depth error is 0.47 mm (LK alone 0.67; the medium preset 0.44
        in three times the time), 5 ms on one core.
        Thread-safe.
        """
        if not self.refines_stereo(left_rgb_u8.shape[1]):
            return None
        started = bool(np.isfinite(disp_start_px))
        # One instance per thread and kind of call: after a call with a start, OpenCV's DIS reuses that start
        # in calls without one.
        key = "dis_started" if started else "dis"
        dis = getattr(self._refiners, key, None)
        if dis is None:
            dis = cv2.DISOpticalFlow.create(cv2.DISOpticalFlow_PRESET_FAST)
            dis.setFinestScale(0)
            dis.setPatchStride(self.STEREO_DIS_PATCH_STRIDE)
            dis.setGradientDescentIterations(self.STEREO_DIS_ITERATIONS)
            dis.setVariationalRefinementIterations(self.STEREO_DIS_SMOOTHING_ITERATIONS)
            setattr(self._refiners, key, dis)
        grey_l, grey_r = to_grey(left_rgb_u8), to_grey(right_rgb_u8)
        if not started:
            return dis_grey_flow(dis, grey_l, grey_r)
        start = np.zeros((*grey_l.shape, 2), np.float32)
        start[..., 0] = -disp_start_px
        return dis.calc(grey_l, grey_r, start).astype(np.float32, copy=False)

    def point_depth_m(self, left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray, calib: StereoCalib,
                      uv_px: np.ndarray, disp_guess_px: np.ndarray, max_dy_px: float = 1.0,
                      flow_px: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse stereo: LK from the left to the right image at (N, 2) points, Z = fx·B/d.

        On frames narrower than `stereo_upsample_below_px` both images are upsampled first (bicubic,
        `STEREO_UPSAMPLE`): at 256×192 that takes the depth error at the true pixels from 0.82 to 0.55 mm
        (mean over a rendered scene) for about 2 ms a frame.

        On a rectified pair the match lies on the same row; one off it by more than `max_dy_px`, a
        failed LK check (its patch NCC held to `online.stereo_min_ncc`), d <= 0 or a depth outside
        [min_depth_m, max_depth_m] gives NaN.
        `disp_guess_px` (N,) (NaN: none) starts LK near the last disparity, so large ones stay in range.
        `flow_px` (`stereo_flow_px` of the same pair) replaces a valid LK disparity with its own, read at the
        point, where the two agree within `frontend.stereo.refine_agree_px` and its vertical flow is under
        half that: LK's disparity error follows the texture in its window, DIS's is smaller.

        Returns:
            (N,) z metres and (N,) disparity px, NaN where invalid, and (N,) bool `sure`: the match also
            passes the frame-to-frame NCC check (lk.min_ncc), strong enough to say a covered point is
            back (`OnlineTracker._stereo_occlusion`).
        """

        uv = np.asarray(uv_px, np.float32).reshape(-1, 2)
        guess = np.where(np.isfinite(disp_guess_px), disp_guess_px, 0.0).astype(np.float32)
        init = uv - np.stack([guess, np.zeros_like(guess)], axis=-1)
        grey_l, grey_r = to_grey(left_rgb_u8), to_grey(right_rgb_u8)
        lk, s = self._lk, 1
        if grey_l.shape[1] < self._upsample_below_px:
            lk, s = self._lk_upsampled, self.STEREO_UPSAMPLE
            grey_l, grey_r = (cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC) for g in (grey_l, grey_r))
        src = (uv + 0.5) * s - 0.5  # pixel centres: x_big = (x + 0.5)·s − 0.5
        dst, ok, ncc = lk.track_grey_ncc(grey_l, grey_r, src, init_uv_px=(init + 0.5) * s - 0.5,
                                         min_ncc=self._stereo_min_ncc)
        uv_r = (dst + 0.5) / s - 0.5
        disp = (uv[:, 0] - uv_r[:, 0]).astype(np.float64)
        good = ok & (np.abs(uv_r[:, 1] - uv[:, 1]) <= max_dy_px) & (disp > 0)
        if flow_px is not None:
            at = uv.astype(np.float64)
            d_dis = -sample_bilinear(np.ascontiguousarray(flow_px[..., 0]), at)
            dy_dis = sample_bilinear(np.ascontiguousarray(flow_px[..., 1]), at)
            disp = np.where(good, where_dis_agrees(d_dis, dy_dis, disp, self._stereo_cfg.refine_agree_px), disp)
            good &= disp > 0
        z = depth_from_disparity_m(np.where(good, disp, np.nan), calib.fx, calib.baseline_m)
        with np.errstate(invalid="ignore"):
            good &= (z >= self._stereo_cfg.min_depth_m) & (z <= self._stereo_cfg.max_depth_m)
        sure = good & (ncc >= self._lk.cfg.min_ncc)
        return np.where(good, z, np.nan), np.where(good, disp, np.nan), sure


@dataclass
class _KeyFrame:
    index: int
    frame: StereoFrame
    ids: np.ndarray        # (N,) ids present at this frame
    uv_px: np.ndarray      # (N, 2) front-end positions at this frame (as the front end had them)
    visible: np.ndarray    # (N,)


def index_of(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Position of each needle in `haystack` (unique ids), -1 where absent; vectorised."""
    if len(haystack) == 0:
        return np.full(len(needles), -1, np.int64)
    order = np.argsort(haystack, kind="stable")
    pos = np.clip(np.searchsorted(haystack, needles, sorter=order), 0, len(haystack) - 1)
    found = haystack[order[pos]] == needles
    return np.where(found, order[pos], -1).astype(np.int64)


class OnlineTracker:
    """Streaming tracker: front end every frame, InvNeRF refinement in a worker thread."""

    RESTART_BACKOFF_S = 1.0  # the wait before restarting a dead refine process, doubled per recent death
    RESTART_BACKOFF_MAX_S = 30.0
    DEATH_WINDOW_S = 60.0  # refine.worker_max_deaths deaths within this span stop refinement
    MAX_SEEN_IMAGES = 2  # last-sight images kept for covered points, the oldest dropped first (one LK pass each a frame)
    COVERED_MOTION_MAX_AGE = 40  # frames since re-acquisition within which a point's motion guides covered ones

    def __init__(self, frontend_cfg: FrontendConfig | None = None, refine_cfg: RefineConfig | None = None,
                 query_cfg: QueryConfig | None = None, *, online_cfg: OnlineConfig | None = None,
                 frontend: FrontEnd | None = None, refiner: Refiner | None = None, device: str = "auto",
                 start_worker: bool = True) -> None:
        """Args:
            frontend: per-frame backend (default `LKStereoFrontEnd(frontend_cfg)`).
            refiner: refinement backend (default `InvNeRFRefiner`, only when refine_cfg.enabled).
            device: model device for the default refiner.

        Raises:
            ConfigError: a bad fit config or an unavailable device (the node refuses to start).
        """
        self.frontend_cfg = frontend_cfg or FrontendConfig()
        self.refine_cfg = refine_cfg or RefineConfig()
        self.query_cfg = query_cfg or QueryConfig()
        self.online_cfg = online_cfg or OnlineConfig()
        self.frontend = frontend if frontend is not None else LKStereoFrontEnd(self.frontend_cfg, self.online_cfg)
        if refiner is None and self.refine_cfg.enabled:
            make = ProcessRefiner if self.refine_cfg.worker == "process" else InvNeRFRefiner
            refiner = make(self.refine_cfg, self.frontend_cfg, device)
        self.refiner = refiner
        if isinstance(refiner, (InvNeRFRefiner, ProcessRefiner)):
            refiner.progress = self._on_progress

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stereo_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stereo_flow")
        self._ids = np.zeros(0, np.int64)
        self._uv = np.zeros((0, 2), np.float64)
        self._visible = np.zeros(0, bool)
        self._age = np.zeros(0, np.float64)
        self._disp = np.zeros(0, np.float64)  # last stereo disparity per query (NaN: unknown), an LK start
        self._seeded = np.zeros(0, bool)  # the disparity start was looked up in a dense map once
        self._model_z = np.zeros(0, np.float64)  # depth the last fit gave each query (NaN: none), where stereo has none
        self._occluded = np.zeros(0, bool)  # online.occlusion = stereo: something is in front of the point
        self._disp_ref = np.zeros(0, np.float64)  # the point's own disparity while visible, px (NaN: not measured yet)
        # A covered point's last sight: the image it was last seen in (by frame index) and its pixel there.
        self._seen_key = np.zeros(0, np.int64)  # -1: none
        self._seen_uv = np.zeros((0, 2), np.float64)
        # Each point moved with its neighbours since it was last confirmed (online.drift_check_px).
        self._neighbour_uv = np.zeros((0, 2), np.float64)
        self._seen_images: dict[int, np.ndarray] = {}
        # Where each query was placed: an origin image (by key) and its pixel there, for re-acquisition.
        self._origin_key = np.zeros(0, np.int64)  # -1: no origin image; NEXT_FRAME: placed on the next frame
        self._origin_uv = np.zeros((0, 2), np.float64)
        self._origins: dict[int, np.ndarray] = {}
        self._next_origin = 0
        self._next_id = 0
        self._prev_left: np.ndarray | None = None
        self._last_stamp: int | None = None
        self._frame_index = -1
        self._last_calib: StereoCalib | None = None
        self._keyframes: deque[_KeyFrame] = deque(maxlen=self.refine_cfg.window_frames)
        self._kf_since_fit = 0
        self._drift_resets = 0  # points online.drift_check_px sent back to their neighbours' carry
        self._keyframes_total = 0  # keyframes ever taken (the denominator of refined coverage)
        self._history: OrderedDict[int, FrameTracks] = OrderedDict()
        self._results: deque[tuple[int, RefineJob, RefineOutput]] = deque(maxlen=4)
        self._generation = 0
        self._fit_state: Any | None = None
        self._pending_grid = self.query_cfg.auto_grid if not self.query_cfg.points_px else 0
        self._model: dict[str, Any] = {"state": "idle" if self.refiner else "off", "fits": 0}
        if isinstance(self.refiner, ProcessRefiner):
            self._model.update(worker_deaths=0, worker_restarts=0, worker_last_exit="",
                               **{f"worker_{k}": v for k, v in self.refiner.limits.items()})
        self._deaths_s: deque[float] = deque()  # monotonic times of recent refine process deaths
        self._gave_up = False  # the refine process died too often: no more fits
        self._stop = False
        self._paused = True  # no new fits: until `start`, and in a managed node's inactive state
        self._busy = False
        self._running_generation = -1
        self._worker: threading.Thread | None = None
        if self.query_cfg.points_px:
            self.add_queries(np.asarray(self.query_cfg.points_px, np.float64).reshape(-1, 2))
        if start_worker:
            self.start()

    def start(self) -> None:
        """Start refinement, or resume it after `pause`: the worker takes the next window once one is ready."""
        with self._wake:
            self._paused = False
            self._wake.notify_all()
        if self.refiner is not None and self._worker is None and not self._stop:
            self._worker = threading.Thread(target=self._run, name="invnerf-refine", daemon=True)
            self._worker.start()

    def pause(self) -> None:
        """Start no new fit until `start`; a running fit finishes and its result waits for `poll`.

        Queries, tracks, keyframes and the warm-start model are kept; frames may still be pushed.
        """
        with self._wake:
            self._paused = True

    @property
    def paused(self) -> bool:
        """True before the first `start` and between `pause` and `start`."""
        with self._lock:
            return self._paused

    # ------------------------------------------------------------------ queries

    def add_queries(self, uv_px: np.ndarray, stamp_ns: int | None = None,
                    image_at_stamp: np.ndarray | None = None) -> np.ndarray:
        """Add (N, 2) left-image pixels as queries; return their new, stable ids.

        The pixels are taken at the frame `stamp_ns`: on `image_at_stamp` (that frame's left image,
        tracked or not) when given, else on the buffered keyframe of that stamp; LK moves them to the
        current frame. With neither (or no stamp, or the latest frame's) they are taken at the latest
        frame. A stamp after the latest frame's means the next frame pushed: the pixels are taken there,
        not moved into it by LK.

        Raises:
            InputError: non-finite pixels (`bad_queries`) or more than `queries.max_queries`
                (`too_many_queries`).
        """
        uv = np.asarray(uv_px, np.float64).reshape(-1, 2)
        if not np.isfinite(uv).all():
            raise InputError("queries: non-finite pixel", "bad_queries")
        with self._lock:
            if stamp_ns is not None and self._last_stamp is not None and stamp_ns > self._last_stamp:
                return self._add_locked(uv, None, uv, on_next_frame=True)
            prev = self._prev_left
            older = stamp_ns is not None and self._last_stamp is not None and stamp_ns < self._last_stamp
            if older and prev is not None and image_at_stamp is not None and image_at_stamp.shape == prev.shape:
                return self._add_locked(self._move_to_current(uv, image_at_stamp), image_at_stamp, uv)
            kf = self._keyframe_at(stamp_ns)
            if kf is not None:  # placed on a buffered keyframe: that image is the origin
                return self._add_locked(self._move_to_current(uv, kf.frame.left_rgb_u8), kf.frame.left_rgb_u8, uv)
            return self._add_locked(uv, self._prev_left, uv)

    @property
    def last_stamp_ns(self) -> int | None:
        """The stamp of the latest frame tracked (None before the first)."""
        with self._lock:
            return self._last_stamp

    def _add_locked(self, uv: np.ndarray, origin_rgb_u8: np.ndarray | None = None,
                    origin_uv: np.ndarray | None = None, on_next_frame: bool = False) -> np.ndarray:
        """Append queries at `uv` (current-frame pixels), placed at `origin_uv` on `origin_rgb_u8`
        (None: not known yet, e.g. before the first frame; the next frame becomes it). `on_next_frame`:
        `uv` are the next frame's pixels, so that frame's LK step leaves them where they are."""
        if len(self._ids) + len(uv) > self.query_cfg.max_queries:
            raise InputError(f"queries: {len(self._ids)} + {len(uv)} exceeds queries.max_queries "
                             f"({self.query_cfg.max_queries})", "too_many_queries")
        ids = np.arange(self._next_id, self._next_id + len(uv), dtype=np.int64)
        self._next_id += len(uv)
        self._ids = np.concatenate([self._ids, ids])
        self._uv = np.concatenate([self._uv, uv])
        self._visible = np.concatenate([self._visible, np.ones(len(uv), bool)])
        self._age = np.concatenate([self._age, np.zeros(len(uv))])
        self._disp = np.concatenate([self._disp, np.full(len(uv), np.nan)])
        self._seeded = np.concatenate([self._seeded, np.zeros(len(uv), bool)])
        self._model_z = np.concatenate([self._model_z, np.full(len(uv), np.nan)])
        self._occluded = np.concatenate([self._occluded, np.zeros(len(uv), bool)])
        self._disp_ref = np.concatenate([self._disp_ref, np.full(len(uv), np.nan)])
        self._seen_key = np.concatenate([self._seen_key, np.full(len(uv), -1, np.int64)])
        self._seen_uv = np.concatenate([self._seen_uv, uv])
        self._neighbour_uv = np.concatenate([self._neighbour_uv, uv])
        key = NEXT_FRAME if on_next_frame else -1 if origin_rgb_u8 is None else self._origin_key_of(origin_rgb_u8)
        self._origin_key = np.concatenate([self._origin_key, np.full(len(uv), key, np.int64)])
        self._origin_uv = np.concatenate([self._origin_uv, uv if origin_uv is None else origin_uv])
        self._pending_grid = 0
        return ids

    def _origin_key_of(self, left_rgb_u8: np.ndarray) -> int:
        """The key of a stored origin image, storing it first: one per frame, however many batches."""
        key = next((k for k, img in self._origins.items() if img is left_rgb_u8), None)
        if key is None:
            key, self._next_origin = self._next_origin, self._next_origin + 1
            self._origins[key] = left_rgb_u8
        return key

    def _keyframe_at(self, stamp_ns: int | None) -> "_KeyFrame | None":
        """The buffered keyframe of an older frame at `stamp_ns`; when no image of that frame is held
        (it was not a keyframe, or was never tracked), the first keyframe after it, the closest view
        still held. None for the latest frame or a newer one, or when no keyframe follows it (a
        warning then says the queries are taken at the latest frame)."""
        if stamp_ns is None or self._prev_left is None or self._last_stamp is None or stamp_ns >= self._last_stamp:
            return None
        after = [k for k in self._keyframes if k.frame.stamp_ns >= stamp_ns]
        kf = min(after, key=lambda k: k.frame.stamp_ns, default=None)
        if kf is None:
            log.warning("queries stamped %d: no image of that frame is held; taken at the latest frame (%d)",
                        stamp_ns, self._last_stamp)
        elif kf.frame.stamp_ns != stamp_ns:
            log.warning("queries stamped %d: no image of that frame is held; placed on the next keyframe (%d)",
                        stamp_ns, kf.frame.stamp_ns)
        return kf

    def _move_to_current(self, uv: np.ndarray, image: np.ndarray) -> np.ndarray:
        assert self._prev_left is not None  # called only once a frame was tracked
        moved, _ = self.frontend.track(image, self._prev_left, uv)
        return np.asarray(moved, np.float64)

    def _reacquire(self, left: np.ndarray) -> np.ndarray:
        """Re-find queries from their origin images (`online.reacquire_every`); under the lock.
        Returns which queries were found (N,) bool."""
        tried, found = self._refind_origin(np.ones(len(self._ids), bool), left)
        if self.online_cfg.hide_unconfirmed:  # the origin patch is not there: covered, or out of view
            self._visible[tried & ~found] = False
        return found

    def _refind_origin(self, which: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Under the lock: `_refind` from the origin images for the points `which` (N,) that have one. A point
        found there is confirmed: visible, anchored (age 0), and its drift check's carry starts anew
        (`_check_drift`). Returns which were tried and which found, (N,) bool."""
        tried, found = self._refind(self._origins, self._origin_key, self._origin_uv, which & (self._origin_key >= 0),
                                    left, warp=True)
        self._visible[found] = True
        self._age[found] = 0.0
        self._neighbour_uv[found] = self._uv[found]
        return tried, found

    def _move_covered(self, width_px: int) -> None:
        """`online.covered_motion_weight`, under the lock: each covered point moves that share of the way to where
        the smooth motion of the points placed with it takes its origin pixel (`frontend.template_warp.smooth_motion`,
        fitted on those uncovered, visible and re-acquired within `COVERED_MOTION_MAX_AGE` frames). Its
        neighbours' frame-to-frame motion alone lets its error grow for as long as it stays covered (5–11 px
        after an instrument's pass on the hard stream), and it is then too far from its tissue for re-acquisition
        to find it; the fit through the confirmed points does not accumulate. The drift check's carry moves with it."""
        weight = self.online_cfg.covered_motion_weight
        covered = self._occluded & (self._origin_key >= 0)
        if weight <= 0 or not covered.any():
            return
        sure = ~self._occluded & self._visible & (self._age < self.COVERED_MOTION_MAX_AGE) & (self._origin_key >= 0)
        for key in np.unique(self._origin_key[covered]):
            fit = sure & (self._origin_key == key)
            idx = np.flatnonzero(covered & (self._origin_key == key))
            there = smooth_motion(self._origin_uv[fit], self._uv[fit], self._origin_uv[idx], float(width_px))
            if there is not None:
                step = weight * (there - self._uv[idx])
                self._uv[idx] += step
                self._neighbour_uv[idx] += step

    def _refind(self, images: dict[int, np.ndarray], keys: np.ndarray, image_uv: np.ndarray, which: np.ndarray,
                left: np.ndarray, warp: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Under the lock: LK from a stored image to `left` (the front end's `reacquire`, with its check) for
        the points `which` (N,); `keys` (N,) names each point's image in `images` (-1: none), `image_uv`
        (N, 2) its pixel there. A point found goes where it was found. An image of another size than
        `left` is forgotten (its points' keys set to -1). A match further than `online.reacquire_max_jump_px` from
        the point's current estimate is not taken. With `warp`, each image is first warped by the motion of
        all its points (`online.reacquire_warp_max_jump_px`, `frontend.template_warp`), and the points not
        found in the warped image are matched against the image as it is. Returns which were tried and which
        found, (N,) bool."""
        tried, found = np.zeros(len(which), bool), np.zeros(len(which), bool)
        frontend = self.frontend
        if not _can_reacquire(frontend):
            return tried, found
        cfg = self.online_cfg
        for key in np.unique(keys[which & (keys >= 0)]):
            idx = np.flatnonzero(which & (keys == key))
            image = images[int(key)]
            if image is left:  # placed on this very frame
                continue
            if image.shape != left.shape:  # the image size changed: these points start afresh here
                del images[int(key)]
                keys[keys == key] = -1
                continue
            # (template image, each point's pixel in it, jump limit), tried in turn on the points not yet found
            passes = [(image, image_uv[idx], cfg.reacquire_max_jump_px)]
            if warp and cfg.reacquire_warp_max_jump_px > 0:
                placed = np.flatnonzero(keys == key)
                warped = warp_template(image, image_uv[placed], self._uv[placed])
                if warped is not None:
                    passes.insert(0, (warped[0], warped[1][index_of(placed, idx)], cfg.reacquire_warp_max_jump_px))
            uv, ok = self._uv[idx].copy(), np.zeros(len(idx), bool)
            for template, template_uv, max_jump_px in passes:
                todo = np.flatnonzero(~ok)
                if not len(todo):
                    break
                got, hit = frontend.reacquire(template, left, template_uv[todo], self._uv[idx[todo]])
                got, hit = np.asarray(got, np.float64), np.asarray(hit, bool)
                if max_jump_px > 0:  # a far match is another patch that looks alike
                    hit &= np.linalg.norm(got - self._uv[idx[todo]], axis=1) <= max_jump_px
                uv[todo[hit]] = got[hit]
                ok[todo[hit]] = True
            tried[idx] = True
            found[idx[ok]] = True
            self._uv[idx[ok]] = uv[ok]
        return tried, found

    def _check_drift(self, left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`online.drift_check_px`, under the lock: a point that moved further than that from where its
        neighbours' motion carried it since it was last confirmed (re-acquired from its origin image, or
        re-anchored by a fit) has left the tissue it was placed on: typically it follows an instrument that
        passed over it while its stereo depth crept towards the instrument's, too gradually for the
        occluder test. It goes back to where its neighbours carried it, takes their disparity as its own, and
        re-acquisition from its origin image is tried from there (`_refind_origin`). Returns which points
        drifted and which of them re-acquisition found, (N,) bool each."""
        limit = self.online_cfg.drift_check_px
        drifted = np.zeros(len(self._uv), bool)
        if limit <= 0 or not len(self._uv):
            return drifted, drifted
        drifted = np.linalg.norm(self._uv - self._neighbour_uv, axis=1) > limit
        if not drifted.any():
            return drifted, drifted
        self._uv[drifted] = self._neighbour_uv[drifted]
        tissue = ~drifted & ~self._occluded & np.isfinite(self._disp_ref)
        disp = neighbour_median(self._uv, self._disp_ref, tissue, LOCAL_NEIGHBOURS)
        if disp is not None:
            self._disp_ref[drifted] = disp[drifted]
            self._disp[drifted] = disp[drifted]
        self._drift_resets += int(drifted.sum())
        return drifted, self._refind_origin(drifted, left)[1]

    def _stereo_occlusion(self, z_m: np.ndarray, sure: np.ndarray, tracked: np.ndarray, found: np.ndarray,
                          carried_uv: np.ndarray, calib: StereoCalib, prev: tuple[np.ndarray | None, np.ndarray],
                          left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """`online.occlusion = stereo`, under the lock: update which points are covered and return the depth to report
        (N,) metres.

        A point becomes covered when the stereo disparity at its pixel exceeds its own disparity (a running average
        over the frames it was seen in) and the median own disparity of its nearest uncovered neighbours by the
        factor `online.occluder_disparity_ratio`: something nearer than the tissue, an instrument, is in front of
        it. (The neighbours keep a point whose own disparity fell too low, e.g. reset by the drift check onto
        farther neighbours', from being held covered at its true depth for good.) It also becomes covered when
        neither frame-to-frame LK (`tracked`) nor stereo finds it, once its own disparity is known: no check says
        it is still there. Only a `sure` (N,) stereo match (see `LKStereoFrontEnd.point_depth_m`) uncovers a
        point or updates its own disparity; any valid one gives the depth reported. A point found covered this
        frame goes back to `carried_uv` (moved with its neighbours), not where LK took it: onto the occluder;
        `prev` (the previous left image, every point's pixel there) is its last sight. Without a nearer
        disparity at its pixel (that keeps it covered: a match beside an occluder's edge can pass the patch
        check), it is uncovered when re-acquisition from its origin image finds it (`found`), when stereo sees
        its own depth at its pixel again, or, where stereo says nothing, when LK re-finds it from its last sight
        (the re-acquisition check); in the last two cases it goes where LK re-finds it. While covered, its own
        disparity changes as its visible neighbours' do. A point reports the depth of its own disparity where it
        is covered or stereo has none, not the occluder's. A point covered without a nearer disparity is
        reported visible where `_looks_visible` says so (it stays covered here).
        """
        disp = depth_from_disparity_m(z_m, calib.fx, calib.baseline_m)  # d = fx·B/Z, the same formula
        measured = np.isfinite(disp)
        # Nearer than the point's own disparity and than its uncovered neighbours': a reference that fell too low
        # (a drift reset onto farther neighbours' disparity) would otherwise hold the point covered for good.
        ref = self._disp_ref
        around = neighbour_median(self._uv, self._disp_ref, ~self._occluded & np.isfinite(self._disp_ref),
                                  LOCAL_NEIGHBOURS)
        if around is not None:
            ref = np.fmax(ref, around)
        nearer = measured & (disp > self.online_cfg.occluder_disparity_ratio * ref)  # NaN ref: False
        unconfirmed = ~measured & ~tracked & np.isfinite(self._disp_ref)
        own = measured & ~nearer
        covered = nearer | ((unconfirmed | (self._occluded & ~(own & sure))) & ~found)
        # one LK pass from the last sight: it uncovers a point stereo says nothing of, and places one stereo uncovers
        silent = covered & self._occluded & ~(measured & sure)
        refound = self._refind_seen(silent | (self._occluded & ~covered & ~found & measured), left)
        covered &= ~(silent & refound)
        newly = covered & ~self._occluded
        self._uv[newly] = carried_uv[newly]
        self._remember_seen(newly, *prev)
        self._occluded = covered
        self._seen_key[~covered] = -1
        self._forget_unseen()
        update = own & sure & ~covered
        w = self.online_cfg.disparity_ref_weight
        old_ref = self._disp_ref
        self._disp_ref = np.where(update, np.where(np.isfinite(old_ref), (1 - w) * old_ref + w * disp, disp), old_ref)
        if covered.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                change = self._disp_ref / old_ref
            factor = neighbour_median(self._uv, change, update & np.isfinite(change), LOCAL_NEIGHBOURS)
            if factor is not None:
                self._disp_ref = np.where(covered, self._disp_ref * factor, self._disp_ref)
        hidden = covered.copy()
        lost = np.flatnonzero(covered & ~nearer & np.isfinite(self._disp_ref))  # no occluder seen, only lost
        prev_left, prev_uv = prev
        if len(lost) and prev_left is not None:
            hidden[lost[self._looks_visible(lost, prev_left, prev_uv, left, right)]] = False
        # hide_unconfirmed keeps the re-acquisition's verdict as well
        self._visible = (self._visible & ~hidden) if self.online_cfg.hide_unconfirmed else ~hidden
        z_own = depth_from_disparity_m(self._disp_ref, calib.fx, calib.baseline_m)
        return np.where(covered | ~measured, z_own, z_m)

    def _looks_visible(self, idx: np.ndarray, prev_left: np.ndarray, prev_uv: np.ndarray, left: np.ndarray,
                       right: np.ndarray) -> np.ndarray:
        """Under the lock: for the points `idx` (M,), whether a narrow window (`online.visible_check_win_px`)
        at the point's pixel matches both its patch in the previous left image (every point's pixel there:
        `prev_uv`, (N, 2)) and the right image at its own disparity; (M,) bool, all False when off.

        Where that window at its own disparity leaves the right image (the strip along the left border
        that only the left camera sees), stereo can neither confirm nor deny, and the previous-frame match
        decides alone."""
        win, min_ncc = self.online_cfg.visible_check_win_px, self.online_cfg.visible_check_min_ncc
        if win <= 0:
            return np.zeros(len(idx), bool)
        grey = to_grey(left)
        uv = self._uv[idx]
        in_right = uv - np.stack([self._disp_ref[idx], np.zeros(len(idx))], axis=-1)
        right_unseen = in_right[:, 0] < (win - 1) / 2
        return ((patch_ncc(to_grey(prev_left), prev_uv[idx], grey, uv, win) >= min_ncc)
                & (right_unseen | (patch_ncc(grey, uv, to_grey(right), in_right, win) >= min_ncc)))

    def _remember_seen(self, newly: np.ndarray, prev_left: np.ndarray | None, prev_uv: np.ndarray) -> None:
        """Keep the previous left image as the last sight of the points `newly` covered."""
        if prev_left is None or not newly.any():
            return
        key = self._frame_index - 1
        self._seen_images[key] = prev_left
        self._seen_key[newly] = key
        self._seen_uv[newly] = prev_uv[newly]
        while len(self._seen_images) > self.MAX_SEEN_IMAGES:
            oldest = min(self._seen_images)
            del self._seen_images[oldest]
            self._seen_key[self._seen_key == oldest] = -1

    def _refind_seen(self, which: np.ndarray, left: np.ndarray) -> np.ndarray:
        """LK from the last sight of the points `which` (N,) to `left` (`_refind`): where it passes, a point
        goes where it was found instead of where its neighbours carried it. Returns which were found."""
        return self._refind(self._seen_images, self._seen_key, self._seen_uv, which, left)[1]

    def _forget_unseen(self) -> None:
        """Drop the last-sight images no point refers to any more."""
        for key in set(self._seen_images) - set(self._seen_key.tolist()):
            del self._seen_images[key]

    def remove_queries(self, ids: np.ndarray) -> None:
        """Forget the given ids (others keep theirs)."""
        with self._lock:
            keep = ~np.isin(self._ids, np.asarray(ids, np.int64))
            self._select(keep)

    def clear_queries(self) -> None:
        """Drop all queries; the model and buffers stay (ids are not reused)."""
        with self._lock:
            self._select(np.zeros(len(self._ids), bool))
            self._pending_grid = 0

    def reset(self) -> None:
        """Drop the queries, the model (a running fit is abandoned) and the buffered frames."""
        with self._lock:
            self._select(np.zeros(len(self._ids), bool))
            self._pending_grid = 0
            self._drop_model()
            self._history.clear()

    def _drop_model(self) -> None:
        self._generation += 1
        self._fit_state = None
        self._keyframes.clear()
        self._kf_since_fit = 0
        self._results.clear()
        self._prev_left = None
        if not self._gave_up and self._model.get("state") != "restarting":
            self._model.update(state="idle" if self.refiner else "off", error="")

    def _select(self, keep: np.ndarray) -> None:
        self._ids, self._uv = self._ids[keep], self._uv[keep]
        self._visible, self._age = self._visible[keep], self._age[keep]
        self._disp, self._seeded, self._model_z = self._disp[keep], self._seeded[keep], self._model_z[keep]
        self._occluded, self._disp_ref = self._occluded[keep], self._disp_ref[keep]
        self._seen_key, self._seen_uv = self._seen_key[keep], self._seen_uv[keep]
        self._neighbour_uv = self._neighbour_uv[keep]
        self._forget_unseen()
        self._origin_key, self._origin_uv = self._origin_key[keep], self._origin_uv[keep]
        for key in set(self._origins) - set(self._origin_key.tolist()):  # images no query needs
            del self._origins[key]

    @property
    def query_ids(self) -> np.ndarray:
        with self._lock:
            return self._ids.copy()

    # ------------------------------------------------------------------ front end

    def push_frame(self, frame: StereoFrame, dense_depth: bool = False, behind: bool = False) -> FrameTracks:
        """Track every query into `frame` (front end only) and buffer it for refinement.

        Args:
            dense_depth: also compute the dense stereo depth map (`FrameTracks.depth_m`, for a cloud);
                with `online.point_depth = sgbm` it is always computed.
            behind: the next frame already waits; with `online.shed_when_behind` this frame's
                re-acquisition is skipped (`FrameTracks.shed`).

        Raises:
            InputError: left/right size differs from each other or from the calibration
                (`stereo_size_mismatch`).
        """
        left, right = frame.left_rgb_u8, frame.right_rgb_u8
        if left.shape != right.shape or left.shape[:2] != (frame.calib.height, frame.calib.width):
            raise InputError(f"frame: left {left.shape}, right {right.shape}, calib {frame.calib.image_size}",
                             "stereo_size_mismatch")
        point_depth = (self.frontend if self.online_cfg.point_depth == "lk_stereo" and _has_point_depth(self.frontend)
                       else None)
        sparse = point_depth is not None
        # Sparse stereo LK needs a start near the true disparity (fine texture aliases in the pyramid):
        # a new query gets it once from a dense map. Peeked without the lock: a query added meanwhile
        # is seeded on the next frame.
        seed = sparse and (not bool(self._seeded.all()) or self._pending_grid > 0)
        # The dense left→right flow that refines the sparse disparities needs no point: it runs beside the tracking.
        stereo_flow = None
        if point_depth is not None and _has_stereo_flow(point_depth) and point_depth.refines_stereo(left.shape[1]):
            known = self._disp[np.isfinite(self._disp)]
            start = float(np.median(known)) if len(known) else float("nan")
            stereo_flow = self._stereo_pool.submit(point_depth.stereo_flow_px, left, right, start)
        depth_m = None
        if dense_depth or not sparse or seed:
            depth_m = np.asarray(self.frontend.depth_m(left, right, frame.calib), np.float32)
        with self._lock:
            if self._last_stamp is not None and frame.stamp_ns <= self._last_stamp:
                log.warning("time moved backwards (%d -> %d ns): dropping buffered frames and the model",
                            self._last_stamp, frame.stamp_ns)
                self._drop_model()
            if self._last_calib is not None and self._last_calib.image_size != frame.calib.image_size:
                self._drop_model()
            self._last_calib = frame.calib
            if self._pending_grid and not len(self._ids):
                n = min(self._pending_grid, self.query_cfg.max_queries)
                self._pending_grid = 0
                self._add_locked(grid_points_px(n, *frame.calib.image_size, self.query_cfg.grid_margin_px),
                                 self._prev_left if self._prev_left is not None else left)
            stereo_occlusion = self.online_cfg.occlusion == "stereo"
            tracked = np.ones(len(self._ids), bool)  # frame-to-frame LK passed its checks
            prev_left, prev_uv = self._prev_left, self._uv.copy()
            carried = self._uv.copy()  # each point moved with its visible neighbours (held without them)
            arriving = self._origin_key == NEXT_FRAME  # given in this frame's pixels: not moved into it
            if self._prev_left is not None and len(self._ids):
                uv_new, ok = self.frontend.track(self._prev_left, left, self._uv.astype(np.float32))
                ok = np.asarray(ok, bool) | arriving
                uv_new = np.asarray(uv_new, np.float64)
                # a covered point does not follow LK (it would follow the occluder); an arriving one stays
                movers = ok & ~self._occluded & ~arriving
                follow = self.frontend_cfg.lk.lost_points == "follow_median"  # frontend.lk.lost_points
                shift = None
                if stereo_occlusion or self.online_cfg.drift_check_px > 0 or (follow and not movers.all()):
                    shift = neighbour_shift(self._uv, uv_new, movers, LOCAL_NEIGHBOURS)
                if shift is not None:
                    carried = self._uv + shift
                carry = (~movers if follow else self._occluded) & ~arriving
                old_uv = self._uv
                self._uv = np.where(movers[:, None], uv_new, np.where(carry[:, None], carried, self._uv))
                # The drift check's carry moves with the neighbours; it follows the point itself where they say
                # nothing (too few moved) and where the point is held (lk.lost_points = hold, or it arrives).
                own_step = self._uv - old_uv
                held = ~(movers | carry)
                self._neighbour_uv += own_step if shift is None else np.where(held[:, None], own_step, shift)
                self._move_covered(left.shape[1])  # after: it moves the carry by its own step, once
                self._visible = tracked = ok
                self._age += np.where(arriving, 0.0, 1.0)
            unplaced = self._origin_key < 0  # added before any frame or for this one: this frame is where they start
            if unplaced.any():
                self._origin_key[unplaced] = self._origin_key_of(left)
                self._origin_uv[unplaced] = self._uv[unplaced]
            every = self.online_cfg.reacquire_every
            found = np.zeros(len(self._ids), bool)
            shed = False
            if every > 0 and len(self._ids) and (self._frame_index + 1) % every == 0:
                shed = behind and self.online_cfg.shed_when_behind
                if not shed:
                    found = self._reacquire(left)
            drifted, refound = self._check_drift(left)
            carried[drifted] = self._uv[drifted]  # one found covered this frame goes back there, not onto the tool
            found |= refound
            self._prev_left = left
            self._last_stamp = frame.stamp_ns
            self._frame_index += 1
            if point_depth is not None and len(self._uv):
                guess = self._disp
                if depth_m is not None:  # seed unknown disparities from the dense map: d = fx·B/Z, the same formula
                    d_dense = depth_from_disparity_m(sample_bilinear(depth_m, self._uv), frame.calib.fx,
                                                     frame.calib.baseline_m)
                    guess = np.where(np.isfinite(self._disp), self._disp, d_dense)
                    self._seeded[:] = True
                flow = stereo_flow.result() if stereo_flow is not None else None
                extra = {} if flow is None else {"flow_px": flow}
                z, disp, sure = point_depth.point_depth_m(left, right, frame.calib, self._uv, guess,
                                                          self.online_cfg.stereo_max_dy_px, **extra)
                self._disp = np.where(np.isfinite(disp), disp, self._disp)
            elif depth_m is not None and len(self._uv):
                z = sample_bilinear(depth_m, self._uv)
                sure = np.isfinite(z)
            else:
                z, sure = np.zeros(0), np.zeros(0, bool)
            if stereo_occlusion and len(z):
                z = self._stereo_occlusion(np.asarray(z, np.float64), np.asarray(sure, bool), tracked, found,
                                           carried, frame.calib, (prev_left, prev_uv), left, right)
            W, H = frame.calib.image_size
            inside = ((self._uv[:, 0] >= 0) & (self._uv[:, 1] >= 0) & (self._uv[:, 0] <= W - 1)
                      & (self._uv[:, 1] <= H - 1))
            self._visible &= inside
            result = self._front_result(frame, depth_m, z)
            result.shed = shed
            self._remember(result)
            if self.refiner is not None and self._frame_index % self.refine_cfg.keyframe_every == 0:
                self._keyframes.append(_KeyFrame(self._frame_index, frame, self._ids.copy(), self._uv.copy(),
                                                 self._visible.copy()))
                self._keyframes_total += 1
                self._kf_since_fit += 1
                self._wake.notify()
            return result

    def _front_result(self, frame: StereoFrame, depth_m: np.ndarray | None, z: np.ndarray) -> FrameTracks:
        z = np.asarray(z, np.float64)
        if len(z):  # where stereo has no depth, the last fit's depth of the point
            z = np.where(np.isfinite(z), z, self._model_z)
        xyz = unproject_m(self._uv, z, frame.calib.K)
        # a heuristic for chained-LK drift, reported as `confidence` in ~/tracked_points
        conf = np.where(self._visible, 0.5 ** (self._age / self.online_cfg.confidence_half_life_frames), 0.0)
        return FrameTracks(stamp_ns=frame.stamp_ns, ids=self._ids.copy(), uv_px=self._uv.astype(np.float32),
                           xyz_cam_m=xyz.astype(np.float32), visible=self._visible.copy(),
                           confidence=conf.astype(np.float32), refined=np.zeros(len(self._ids), bool),
                           depth_m=depth_m)

    def _remember(self, result: FrameTracks) -> None:
        self._history[result.stamp_ns] = result
        while len(self._history) > self.refine_cfg.history_frames:
            self._history.popitem(last=False)

    def tracks_at(self, stamp_ns: int) -> FrameTracks | None:
        """The best-known tracks at a past frame (refined where a fit covered it), if still kept."""
        with self._lock:
            return self._history.get(stamp_ns)

    # ------------------------------------------------------------------ refinement results

    def poll(self) -> list[FrameTracks]:
        """Refined tracks that arrived since the last call, one per covered frame, oldest first.

        They replace the front end's tracks in the history, and the current front-end estimate is
        re-anchored on the newest of them. Never blocks on the model.
        """
        out: list[FrameTracks] = []
        with self._lock:
            while self._results:
                gen, job, res = self._results.popleft()
                if gen != self._generation:
                    continue
                out += self._apply(job, res)
        return out

    def _apply(self, job: RefineJob, res: RefineOutput) -> list[FrameTracks]:
        tr = res.tracks
        stamps = job.seq.stamps_ns
        frames: list[FrameTracks] = []
        live = np.isin(tr.ids, self._ids)
        # A fit steers the tracker (its results replace the history the next window's queries start from,
        # and the front end re-anchors on it) only when it converged enough; it is published either way.
        converged = res.stats.get("converged_fraction")
        trusted = not isinstance(converged, (int, float)) or converged >= self.refine_cfg.reanchor_min_converged
        self._model["reanchored"] = bool(trusted)
        for t, stamp in enumerate(stamps):
            vis = np.asarray(tr.visible[t], bool)
            ft = FrameTracks(
                stamp_ns=int(stamp), ids=tr.ids[live].astype(np.int64), uv_px=tr.uv[t][live].astype(np.float32),
                xyz_cam_m=tr.xyz[t][live].astype(np.float32), visible=vis[live],
                confidence=vis[live].astype(np.float32), refined=np.ones(int(live.sum()), bool),
                depth_m=None)
            held = self._history.get(int(stamp))
            if self.refine_cfg.publish == "best_of" and held is not None:
                ft = self._best_of(ft, held, job.seq.left_rgb_u8[t])
            frames.append(ft)
            if trusted and int(stamp) in self._history:
                self._history[int(stamp)] = replace(frames[-1], depth_m=self._history[int(stamp)].depth_m)
        if res.depth_m is not None and frames:
            frames[-1].depth_m = np.asarray(res.depth_m, np.float32)
            frames[-1].left_rgb_u8 = job.seq.left_rgb_u8[-1]
        # Re-anchor on the newest covered keyframe: shift by the correction the fit made there.
        # Later keyframe snapshots descend from the same uncorrected state, so they shift too.
        kf = next((k for k in reversed(self._keyframes) if k.frame.stamp_ns == int(stamps[-1])), None)
        if kf is not None and len(tr.ids) and trusted:
            ok = np.asarray(tr.visible[-1], bool) & np.isfinite(tr.uv[-1]).all(axis=1)
            rid, ruv = tr.ids[ok].astype(np.int64), tr.uv[-1][ok].astype(np.float64)
            at_kf = index_of(kf.ids, rid)
            rid, ruv, at_kf = rid[at_kf >= 0], ruv[at_kf >= 0], at_kf[at_kf >= 0]
            delta = ruv - kf.uv_px[at_kf]

            def shift(ids: np.ndarray, uv: np.ndarray) -> np.ndarray:
                idx = index_of(ids, rid)
                uv[idx[idx >= 0]] += delta[idx >= 0]
                return idx[idx >= 0]

            moved = shift(self._ids, self._uv)
            self._neighbour_uv[moved] = self._uv[moved]
            self._age[moved] = float(self._frame_index - kf.index)
            at_now = index_of(self._ids, tr.ids[ok].astype(np.int64))
            z_fit = tr.xyz[-1][ok, 2].astype(np.float64)
            has = (at_now >= 0) & np.isfinite(z_fit)
            self._model_z[at_now[has]] = z_fit[has]
            for k in self._keyframes:
                if k.index > kf.index:
                    shift(k.ids, k.uv_px)
        self._fit_state = res.state
        return frames

    def _best_of(self, fit: FrameTracks, held: FrameTracks, left_rgb_u8: np.ndarray) -> FrameTracks:
        """`refine.publish = best_of`, under the lock: per point, the fit's result unless the result already
        held for the frame (the front end's, or an earlier fit's) matches the point's origin patch better
        (zero-mean NCC over the LK window); then the held one. Either way the point is the refinement's
        verdict (refined stays 1). Without an origin image, a held result or a finite fit position, the fit's
        result stands; so does a tie (flat patches)."""
        at_held = index_of(held.ids, fit.ids)
        at_now = index_of(self._ids, fit.ids)
        cand = (at_held >= 0) & (at_now >= 0) & np.isfinite(fit.uv_px).all(axis=1)
        cand[cand] &= self._origin_key[at_now[cand]] >= 0
        keep_held = np.zeros(len(fit.ids), bool)
        grey = to_grey(left_rgb_u8)
        win = self.frontend_cfg.lk.win_size_px
        for key in np.unique(self._origin_key[at_now[cand]]):
            idx = np.flatnonzero(cand & (self._origin_key[np.maximum(at_now, 0)] == key))
            origin = self._origins.get(int(key))
            if origin is None or origin.shape != left_rgb_u8.shape:
                continue
            o_grey, o_uv = to_grey(origin), self._origin_uv[at_now[idx]]
            ncc_fit = patch_ncc(o_grey, o_uv, grey, fit.uv_px[idx].astype(np.float64), win)
            ncc_held = patch_ncc(o_grey, o_uv, grey, held.uv_px[at_held[idx]].astype(np.float64), win)
            keep_held[idx] = ncc_held > ncc_fit
        if not keep_held.any():
            return fit
        src = np.maximum(at_held, 0)

        def pick(of_fit: np.ndarray, of_held: np.ndarray) -> np.ndarray:
            return np.where(keep_held.reshape(-1, *[1] * (of_fit.ndim - 1)), of_held[src], of_fit).astype(of_fit.dtype)

        return replace(fit, uv_px=pick(fit.uv_px, held.uv_px), xyz_cam_m=pick(fit.xyz_cam_m, held.xyz_cam_m),
                       visible=pick(fit.visible, held.visible), confidence=pick(fit.confidence, held.confidence))

    # ------------------------------------------------------------------ worker

    def _ready(self) -> bool:
        return (len(self._ids) > 0 and len(self._keyframes) >= self.refine_cfg.min_keyframes
                and self._kf_since_fit >= self.refine_cfg.new_keyframes)

    def _job_inputs(self) -> tuple[list[_KeyFrame], np.ndarray, np.ndarray, np.ndarray]:
        """Under the lock: the keyframes, and per live query its first visible keyframe and pixel there.

        A refined position at that keyframe (from an earlier fit) is preferred to the front end's.
        """
        kfs = list(self._keyframes)
        ids = self._ids.copy()
        first_t = np.full(len(ids), -1, np.int64)
        uv = np.zeros((len(ids), 2), np.float64)
        for t, k in enumerate(kfs):
            idx = index_of(k.ids, ids)
            seen = (idx >= 0) & (first_t < 0)
            seen[seen] = k.visible[idx[seen]]
            first_t[seen] = t
            uv[seen] = k.uv_px[idx[seen]]
            best = self._history.get(k.frame.stamp_ns)
            if best is not None and best.refined.any() and seen.any():
                hit = index_of(best.ids, ids)
                use = seen & (hit >= 0)
                use[use] = best.visible[hit[use]]
                uv[use] = best.uv_px[hit[use]]
        keep = first_t >= 0
        return kfs, ids[keep], first_t[keep], uv[keep]

    def _make_job(self, kfs: list[_KeyFrame], ids: np.ndarray, first_t: np.ndarray, uv: np.ndarray,
                  init_state: Any, generation: int) -> RefineJob:
        """Outside the lock: stack the window into a Sequence (the images are never mutated)."""
        calib = kfs[-1].frame.calib
        poses = [k.frame.T_world_cam for k in kfs]
        known_poses = [p for p in poses if p is not None]
        seq = Sequence(
            left_rgb_u8=np.stack([k.frame.left_rgb_u8 for k in kfs]),
            right_rgb_u8=np.stack([k.frame.right_rgb_u8 for k in kfs]),
            calib=replace(calib, fps=calib.fps / self.refine_cfg.keyframe_every),
            stamps_ns=np.array([k.frame.stamp_ns for k in kfs], np.int64),
            queries=Queries(ids=ids, query_tuv=np.column_stack([first_t.astype(np.float64), uv])),
            T_world_cam=np.stack(known_poses) if len(known_poses) == len(poses) else None,
            name="online")
        return RefineJob(seq=seq, init_state=init_state, generation=generation)

    def _child_exit(self) -> int | None:
        """The refine process's exit status if it has died between fits (None: alive, or no process)."""
        return self.refiner.exit_code if isinstance(self.refiner, ProcessRefiner) else None

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and (self._paused or not self._ready()) and self._child_exit() is None:
                    self._wake.wait(timeout=0.5)
                if self._stop:
                    return
                code = self._child_exit()
            if code is not None:  # it died while idle
                if not self._recover(WorkerDied(code)):
                    return
                continue
            with self._wake:
                if self._stop or self._paused or not self._ready():
                    continue
                kfs, ids, first_t, uv = self._job_inputs()
                self._kf_since_fit = 0
                if not len(ids):
                    continue
                self._busy = True
                self._running_generation = generation = self._generation
                init_state = self._fit_state
                self._model["state"] = "fitting"
            try:
                job = self._make_job(kfs, ids, first_t, uv, init_state, generation)
                assert self.refiner is not None
                res = self.refiner(job)
            except FitAborted:
                with self._lock:
                    self._busy = False
                    self._model["state"] = "idle"
                continue
            except WorkerDied as err:
                if self._stop or not self._recover(err):  # closing: the child process was stopped under the fit
                    return
                continue
            except Exception as err:  # the worker must survive a failed fit; diagnostics show it
                if self._stop:  # closing: the child process went away under the fit
                    return
                log.exception("refine: fit failed")
                with self._lock:
                    self._busy = False
                    self._model.update(state="error", error=f"{type(err).__name__}: {err}")
                time.sleep(1.0)
                continue
            with self._lock:
                self._busy = False
                if job.generation == self._generation:
                    self._results.append((job.generation, job, res))
                    self._model["fits"] = int(self._model.get("fits", 0)) + 1
                    self._model.update({k: v for k, v in res.stats.items()}, state="idle", error="",
                                       window_frames=int(job.seq.num_frames))
                    steps, fit_s = res.stats.get("steps"), res.stats.get("fit_s")
                    if isinstance(steps, (int, float)) and isinstance(fit_s, (int, float)) and fit_s > 0:
                        self._model["steps_per_s"] = float(steps) / float(fit_s)

    def _recover(self, err: WorkerDied) -> bool:
        """The refine process died: count it, wait the back-off, restart it. False: closing or given up.

        Refinement gives up (state "error") after `refine.worker_max_deaths` deaths within
        `DEATH_WINDOW_S`, when the refiner cannot be restarted, or when the new process
        refuses to start. The next fit runs on the current window, from scratch.
        """
        cfg = self.refine_cfg
        while True:
            now = time.monotonic()
            with self._lock:
                self._busy = False
                self._deaths_s.append(now)
                while self._deaths_s and self._deaths_s[0] < now - self.DEATH_WINDOW_S:
                    self._deaths_s.popleft()
                recent = len(self._deaths_s)
                self._model["worker_deaths"] = int(self._model.get("worker_deaths", 0)) + 1
                self._model["worker_last_exit"] = exit_text(err.exit_code)
                if self._stop:
                    return False
                if recent >= cfg.worker_max_deaths or not isinstance(self.refiner, ProcessRefiner):
                    reason = (f"refine worker died {recent} times within {self.DEATH_WINDOW_S:g} s "
                              f"(last: {exit_text(err.exit_code)}); refinement stopped")
                    return self._give_up(reason)
                delay_s = min(self.RESTART_BACKOFF_MAX_S, self.RESTART_BACKOFF_S * 2.0 ** (recent - 1))
                self._model["state"] = "restarting"
            log.warning("refine: the worker process died (%s); restarting it in %.0f s", exit_text(err.exit_code),
                        delay_s)
            with self._wake:
                if self._wake.wait_for(lambda: self._stop, timeout=delay_s):
                    return False
            try:
                self.refiner.restart()
            except WorkerDied as again:  # died while starting: one more death
                if self._stop:
                    return False
                err = again
                continue
            except Exception as failure:  # e.g. the device went away: it will not start again
                if self._stop:
                    return False
                with self._lock:
                    return self._give_up(f"refine worker did not restart ({type(failure).__name__}: {failure}); "
                                         "refinement stopped")
            with self._wake:
                self._model["worker_restarts"] = int(self._model.get("worker_restarts", 0)) + 1
                self._model.update(state="idle", error="")
                self._fit_state = None  # the warm-start state died with the process
                self._kf_since_fit = max(self._kf_since_fit, cfg.new_keyframes)  # refit the current window now
                self._wake.notify_all()
            log.info("refine: worker process restarted")
            return True

    def _give_up(self, reason: str) -> bool:
        """Under the lock: stop refining for good, with `reason` in the diagnostics."""
        self._gave_up = True
        self._model.update(state="error", error=reason)
        log.error("%s", reason)
        return False

    def _on_progress(self, *args: Any, **kwargs: Any) -> None:
        """Progress from the fit: record what looks like step/loss; abort on reset or close."""
        info = next((a for a in args if isinstance(a, dict)), kwargs)
        with self._lock:
            for k in ("step", "loss", "converged"):
                if isinstance(info, dict) and isinstance(info.get(k), (int, float)):
                    self._model[k] = info[k]
            stop = self._stop or self._running_generation != self._generation
        if stop:
            raise FitAborted()

    # ------------------------------------------------------------------ state

    def stats(self) -> dict[str, Any]:
        """Model state and buffer depths, for /diagnostics."""
        with self._lock:
            out = dict(self._model)
            out.update(keyframes=len(self._keyframes), keyframes_total=self._keyframes_total,
                       history=len(self._history), queries=len(self._ids), results_waiting=len(self._results),
                       drift_resets=self._drift_resets)
            return out

    @property
    def busy(self) -> bool:
        """True while a fit runs."""
        with self._lock:
            return self._busy

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (a running fit is aborted at its next progress report)."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._stereo_pool.shutdown(wait=False)
        close = getattr(self.refiner, "close", None)
        if callable(close):
            close()  # also aborts a fit busy before its first progress report, which would hold the join
        if self._worker is not None:
            self._worker.join(timeout=timeout_s)
            if self._worker.is_alive():
                log.warning("refine worker still busy after %.1f s; leaving it (daemon thread)", timeout_s)
