"""ROS node configs: sync, queries, online tracking, refinement, publishing (DESIGN §3.3, §5).

One read-only ROS parameter per leaf field (`ros/params.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .base import (
    check_fields,
    nested,
    option,
)
from .frontend import FrontendConfig
from .kinematics import KinematicsConfig


@dataclass(frozen=True)
class SyncConfig:
    """Pairing of left/right images and camera_infos by stamp (`ros/sync.py`)."""

    approximate: bool = option(True, "Pair by nearest stamp within slop_s; false: all four stamps must be equal.")
    slop_s: float = option(0.005, "Largest stamp difference inside one stereo set (approximate sync), seconds.",
                           lo=0.0, hi=1.0)
    queue_size: int = option(10, "Messages kept per input while waiting for their partners.", lo=1, hi=1000)
    timeout_s: float = option(0.5, "A left image still unpaired after this long is dropped (missing right image).",
                              lo=0.0, hi=60.0)
    frame_queue_size: int = option(2, "Paired frames waiting for the front end; the oldest is dropped beyond.",
                                   lo=1, hi=100)
    max_rate_hz: float = option(0.0, "Process at most this many pairs per second (0: no limit); extra pairs drop.",
                                lo=0.0)
    backend: Literal["auto", "builtin", "message_filters"] = option(
        "auto", "auto: message_filters when installed, else built-in. Only the built-in one counts pairing "
        "drops (missing right image, duplicate stamps) by reason.")

    def __post_init__(self) -> None:
        check_fields(self, "sync.")


@dataclass(frozen=True)
class QueryConfig:
    """Queries given at start; more arrive on ~/queries and clicked_point (DESIGN §5)."""

    points_px: tuple[float, ...] = option((), "Start queries as a flat list u0, v0, u1, v1, ... (left pixels).")
    auto_grid: int = option(0, "With no points_px: a grid of about this many queries on the first frame (0: wait).",
                            lo=0, hi=10000)
    grid_margin_px: float = option(8.0, "Grid queries keep this distance from the image border.", lo=0.0)
    max_queries: int = option(512, "Queries beyond this many are refused.", lo=1, hi=100000)
    image_history_frames: int = option(
        30, "Left images held (tracked or dropped) so queries stamped with a recent frame are placed on "
        "that frame's image and moved to the current one by LK (0: such queries go on the nearest image held).",
        lo=0, hi=10000)

    def __post_init__(self) -> None:
        check_fields(self, "queries.")
        if len(self.points_px) % 2:
            raise ConfigError(f"queries.points_px: expected an even count (u, v pairs), got {len(self.points_px)}")


@dataclass(frozen=True)
class OnlineConfig:
    """The online tracker's per-frame front end (`online.py`, DESIGN §3.3)."""

    point_depth: Literal["lk_stereo", "sgbm"] = option(
        "lk_stereo", "Depth of the tracked points each frame: LK from the left to the right image at the "
        "points (milliseconds), or a dense SGBM map (far slower on a CPU).")
    stereo_max_dy_px: float = option(1.0, "lk_stereo: a match further than this off the epipolar row is invalid.",
                                     lo=0.0)
    stereo_upsample_below_px: int = option(
        512, "lk_stereo: on frames narrower than this, the left and right images are upsampled twice (bicubic) "
        "before the points are matched, for sub-pixel disparities a third more accurate at 256×192 at about "
        "2 ms a frame (0 = never).", lo=0)
    stereo_refine_below_px: int = option(
        512, "lk_stereo: on frames narrower than this, a dense DIS flow from the left to the right image, computed "
        "on a thread of its own while the frame is tracked, replaces a point's LK disparity where the two agree "
        "within frontend.stereo.refine_agree_px: on the hard 256×192 stream the live 3D error falls from 0.99 to "
        "0.74-0.80 mm for about 5 ms of CPU a frame (0 = never).", lo=0)
    stereo_refine_min_cpus: int = option(
        4, "lk_stereo: the dense flow of stereo_refine_below_px runs only when the process may use at least this "
        "many CPU cores; it needs one of its own (on 2 cores, beside the refinement, the stream's source and its "
        "reader, the 95th-percentile latency rose from 26 to 38 ms).", lo=1)
    stereo_min_ncc: float = option(
        0.7, "lk_stereo: zero-mean NCC of the left and right patches a match must reach. The two cameras see "
        "a point under different light and noise, dark tissue most: at 256×192 the frame-to-frame check "
        "(lk.min_ncc) rejects the right match at a fifth of the points, which then keep a stale depth.",
        lo=-1.0, hi=1.0)
    confidence_half_life_frames: float = option(
        30.0, "Front-end confidence halves every this many frames since a point was last anchored by a fit.",
        lo=0.1)
    reacquire_every: int = option(
        1, "Every this many frames, LK re-finds each query from the image it was placed on, started at its "
        "current estimate and held to the lk.min_ncc_query check; where found it replaces the chained "
        "estimate, so chained-LK drift does not build up when the tissue looks as it did (0 = off).", lo=0)
    reacquire_max_jump_px: float = option(
        16.0, "Re-acquisition (and re-finding a covered point from its last sight) is taken only within this "
        "distance of the current estimate: a match further away is another patch that looks alike, not the "
        "point (0 = no limit).", lo=0.0)
    reacquire_warp_max_jump_px: float = option(
        8.0, "Re-acquisition first matches each query against its origin image warped by the smooth motion of "
        "the queries placed with it (their origin pixels to their current estimates, a smoothing thin-plate "
        "spline), which undoes the scaling, shear and rotation camera motion and deformation give the tissue "
        "since; a match further than this from the current estimate is not taken. The queries it does not find "
        "are matched against the origin image as it is, within reacquire_max_jump_px. Needs at least 6 queries "
        "placed on the same frame (0 = unwarped only).", lo=0.0)
    shed_when_behind: bool = option(
        True, "On a frame processed while the next one already waits (the per-frame path is behind, e.g. "
        "another process takes the CPU), skip the re-acquisition (about a third of the front end's time), so "
        "the node keeps the frame rate instead of dropping frames; counted as frames_shed in /diagnostics. "
        "Which frames are shed depends on timing: false makes a replay repeat the live run's tracks.")

    drift_check_px: float = option(
        5.0, "A query further than this from where the median motion of its nearest neighbours carried it "
        "since it was last confirmed (found again from its origin image, or re-anchored by a fit) has left "
        "its tissue, typically onto an instrument that passed over it: it goes back to its neighbours' carry "
        "and takes their disparity, and is re-acquired from its origin image from there (0 = off).", lo=0.0)
    hide_unconfirmed: bool = option(
        False, "A query that re-acquisition does not find this frame (its origin patch fails the "
        "lk.min_ncc_query check: covered by an instrument, or out of view) is reported not visible until it "
        "is found again; its position keeps following the chained estimate.")

    occlusion: Literal["stereo", "tracking"] = option(
        "stereo", "How a covered point is found. stereo: it is covered when the stereo disparity at its pixel "
        "rises above its own (something nearer, an instrument, is in front) or when neither frame-to-frame LK "
        "nor stereo finds it; a covered point is reported not visible, moves with the median motion of its "
        "visible neighbours instead of following LK, and is visible again once stereo sees its own depth there, "
        "LK re-finds it from the last image it was seen in (that also sets its position) or re-acquisition "
        "finds it. tracking: visible while frame-to-frame LK passes its checks.")
    covered_motion_weight: float = option(
        0.5, "occlusion = stereo: each frame a covered point moves this share of the way from where its neighbours' "
        "motion carried it to where the smooth motion of its batch's re-acquired points takes its origin pixel, "
        "so that it is near its tissue when it reappears (0 = neighbours only).", lo=0.0, hi=1.0)
    visible_check_win_px: int = option(
        13, "occlusion = stereo: a point covered only because frame-to-frame LK and stereo both lost it (no "
        "nearer disparity) is still reported visible when, in a window of this side, its patch matches its "
        "patch in the previous frame and the right image at its own disparity (visible_check_min_ncc); it "
        "stays covered inside the tracker (moved with its neighbours, re-found from its last sight). Beside an "
        "instrument the LK window sees both, and a narrow one still tells tissue from tool. 0: off.",
        lo=0, hi=101)
    visible_check_min_ncc: float = option(
        0.8, "occlusion = stereo: zero-mean NCC both windows of visible_check_win_px must reach.", lo=-1.0, hi=1.0)
    occluder_disparity_ratio: float = option(
        1.1, "occlusion = stereo: a disparity this many times the point's own means an occluder in front.",
        lo=1.0)
    disparity_ref_weight: float = option(
        0.3, "occlusion = stereo: weight of a new visible frame in the point's own disparity (a running "
        "average); a covered point's own disparity changes as its visible neighbours' do.", lo=0.0, hi=1.0)

    def __post_init__(self) -> None:
        check_fields(self, "online.")


@dataclass(frozen=True)
class RefineConfig:
    """Asynchronous InvNeRF refinement on a window of keyframes (`online.py`, DESIGN §3.3)."""

    enabled: bool = option(True, "Fit the model asynchronously; false publishes the front end only.")
    worker: Literal["process", "thread"] = option(
        "process", "Where the fit runs: a child process (keeps the GIL and torch out of the node) or a thread.")
    keyframe_every: int = option(15, "Every this many frames becomes a keyframe.", lo=1, hi=1000)
    window_frames: int = option(16, "Keyframes kept and fitted (older ones leave the window).", lo=2, hi=10000)
    min_keyframes: int = option(4, "A fit starts once this many keyframes are buffered.", lo=2, hi=10000)
    new_keyframes: int = option(1, "Keyframes that must arrive after a fit before the next one starts.", lo=1)
    fit_config: str = option("", "YAML file with FitConfig keys for the worker (empty: defaults).")
    fit_overrides: tuple[str, ...] = option((), "FitConfig overrides as key=value strings, e.g. max_steps=200.")
    history_frames: int = option(300, "Per-frame results kept so refined fits can replace them.", lo=1, hi=100000)
    render_cloud: bool = option(
        False, "After each fit, render the model's depth of the newest keyframe for ~/cloud. Renders every "
        "pixel: seconds on a GPU, tens of seconds on a CPU.")
    worker_max_deaths: int = option(
        5, "Worker process deaths within 60 s that stop refinement. A dead worker process (killed, out of "
        "memory) is restarted after 1 s, 2 s, 4 s, up to 30 s, and fits the current window anew; at this many "
        "deaths within 60 s refinement stops and /diagnostics reports the model in error (1: never restart).",
        lo=1, hi=1000)
    worker_nice: int = option(
        10, "Niceness of the refine process (worker: process; 0 to 19): when the fit and the per-frame front "
        "end compete for the CPU, the fit yields.", lo=0, hi=19)
    worker_idle: bool = option(
        False, "Run the refine process (worker: process) in Linux's idle scheduling class (SCHED_IDLE): it gets "
        "a core only when no other process wants it, so the per-frame path is never delayed by the fit; under "
        "a CPU-bound neighbour the fit waits. Ignored where the class does not exist.")
    worker_threads: int = option(
        1, "CPU threads of the refinement: its flow and stereo front end, OpenCV and torch in the refine "
        "process (0: every core). One leaves the other cores to the per-frame path.", lo=0, hi=256)
    cold_fit_s: float = option(
        5.0, "Time budget of a fit from scratch (the first, and after a reset or a worker restart), seconds.",
        lo=0.1, hi=3600.0)
    warm_fit_s: float = option(
        1.0, "Time budget of each later fit, seconds. It continues the last model on the window that slid on "
        "(shared frames keep their map, the canonical space is kept), so the model never restarts; shorter "
        "fits refine each keyframe sooner and more often.", lo=0.1, hi=3600.0)
    sample_stride_px: int = option(
        4, "The refinement's correspondence store keeps one source pixel per stride × stride block (0: the "
        "front end's frontend.store.sample_stride_px). A short fit draws a few thousand of them, so a sparse "
        "store loses nothing and is built in a fraction of the time.", lo=0, hi=64)
    check_cells: int = option(
        2048, "After each fit, this many random error cells are measured against their stored correspondences: "
        "the converged share reanchor_min_converged tests.", lo=1, hi=1_000_000)
    reanchor_min_converged: float = option(
        0.5, "The front end re-anchors on a fit only when at least this share of the fit's error cells "
        "converged (the fit's own measure of how well it explains the correspondences); a fit below it is "
        "still published (refined=1) but does not move the live estimate. 0: always re-anchor.", lo=0.0, hi=1.0)
    publish: Literal["best_of", "model"] = option(
        "best_of", "What a refined frame holds per point. best_of: the fit's position, unless the position the "
        "node already published for that frame matches the point's origin patch better (zero-mean NCC over "
        "the lk window); then that one. model: the fit's positions throughout.")
    query_anchor: Literal["window", "canonical"] = option(
        "window", "Where a fit starts each query: window places it at its first keyframe in the window, from "
        "the history (the front end's estimate, or a steering fit's); canonical keeps the canonical point the "
        "query got in the first fit that held it, so the model alone carries it from window to window (only "
        "as good as the model's map over the whole stream).")
    cache_gib: float = option(
        0.5, "Stereo depth and checked flows kept between fits, GiB: a window that slid on computes only its "
        "new keyframes and pairs.", lo=0.0, hi=1024.0)

    def __post_init__(self) -> None:
        check_fields(self, "refine.")
        if self.min_keyframes > self.window_frames:
            raise ConfigError(f"refine.min_keyframes: expected <= window_frames ({self.window_frames}), "
                              f"got {self.min_keyframes}")


@dataclass(frozen=True)
class PublishConfig:
    """What the node publishes and how often (`ros/publishers.py`, `ros/diagnostics.py`)."""

    overlay: bool = option(True, "Publish ~/overlay (left image with the tracks drawn).")
    tf: bool = option(True, "Broadcast track_<id> frames on /tf and the stereo frame on /tf_static.")
    markers: bool = option(True, "Publish ~/markers (spheres, id labels, trails).")
    markers_rate_hz: float = option(
        10.0, "~/markers publish rate (0: every frame). Building the markers costs milliseconds a frame; the "
        "trails still take every frame.", lo=0.0, hi=1000.0)
    trail_frames: int = option(10, "Trail length in ~/markers, frames.", lo=0, hi=1000)
    marker_diameter_m: float = option(0.002, "Sphere diameter in ~/markers, metres.", lo=0.0)
    cloud_rate_hz: float = option(2.0, "~/cloud publish rate (0: off).", lo=0.0, hi=1000.0)
    cloud_stride_px: int = option(4, "~/cloud keeps one pixel in stride×stride.", lo=1, hi=256)
    poll_rate_hz: float = option(10.0, "How often refined results are collected from the worker.", lo=0.1, hi=1000.0)
    diagnostics_rate_hz: float = option(1.0, "/diagnostics publish rate.", lo=0.01, hi=100.0)

    def __post_init__(self) -> None:
        check_fields(self, "publish.")


@dataclass(frozen=True)
class NodeConfig:
    """The tracker node `surg_invnerf_tracker` (DESIGN §5); `config/track.yaml` sets it."""

    device: Literal["auto", "cpu", "cuda"] = option("auto", "Model device; auto uses CUDA when present.")
    frontend: FrontendConfig = nested(FrontendConfig, "Per-frame LK tracking and SGBM depth.")
    online: OnlineConfig = nested(OnlineConfig, "Per-frame point depth and confidence.")
    sync: SyncConfig = nested(SyncConfig, "Stereo + camera_info synchronisation.")
    queries: QueryConfig = nested(QueryConfig, "Start queries.")
    refine: RefineConfig = nested(RefineConfig, "Asynchronous InvNeRF refinement.")
    publish: PublishConfig = nested(PublishConfig, "Outputs.")
    kinematics: KinematicsConfig = nested(KinematicsConfig, "ECM poses on ecm/measured_cp: buffer, hand-eye, "
        "clock offset, world frame.")

    def __post_init__(self) -> None:
        check_fields(self, "")
