"""Front-end configs: dense flow, LK, stereo depth and masks (`frontend/`, DESIGN §3.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .base import (
    check_fields,
    nested,
    option,
)


@dataclass(frozen=True)
class FlowConfig:
    """DIS optical flow at several frame gaps, with forward-backward cycle checks."""

    gaps: tuple[int, ...] = option(
        (1, 2, 4, 8, 16, 24), "Frame gaps for which flow is computed both ways. The long gaps bridge occlusions "
        "(an instrument passing, tissue leaving the view) that break every chain of short ones.", lo=1)
    preset: Literal["ultrafast", "fast", "medium"] = option("medium", "OpenCV DIS preset.")
    finest_scale: int = option(
        0, "Finest DIS pyramid level (0 = full resolution). The presets stop at 1 (medium) or 2, which "
        "smooths flow over 2-4 px and costs sub-pixel accuracy.", lo=0, hi=6)
    dis_min_width_px: int = option(
        0, "Wide frames skip DIS's finest levels while the frame is still at least this wide at the next coarser "
        "one (512: 1280 px frames at level 1, 640 px wide, about twice as fast a front end; 0 = finest_scale "
        "alone decides).", lo=0)
    cycle_thresh_px: float = option(1.0, "Max forward-backward cycle error for a valid flow pixel.", lo=0.0)
    max_roughness_px: float = option(
        0.1, "Max distance between a pixel's flow and the 5x5 mean flow around it (0 = off). Tissue moves "
        "smoothly; rough flow marks an area seen in one frame only, patched out of unrelated pieces.", lo=0.0)
    photo_thresh: float = option(
        24.0, "Max 7x7 mean absolute grey difference (0-255) between a pixel and where its flow lands "
        "(0 = off).", lo=0.0)
    min_ncc: float = option(
        0.5, "Min 7x7 zero-mean NCC between a textured pixel's neighbourhood and where its flow lands "
        "(-1 = off); catches what appears in one frame only, which the cycle check misses.", lo=-1.0, hi=1.0)
    max_chain_frames: int = option(48, "Longest frame distance a chained correspondence spans.", lo=1)
    keyframe_stride: int = option(
        8, "Frames 0, S, 2S, ... anchor long-range chains (to and from every frame in reach).", lo=1)
    long_range_step: int = option(
        4, "Long-range pairs are kept every this many frames of distance (memory budget).", lo=1)
    link_cost_px: float = option(
        0.25, "Cost added per composed flow when choosing a chain path; prefers short chains on ties.", lo=0.0)
    conf_scale_px: float = option(
        2.0, "Confidence = exp(-accumulated cycle error / this) * link_decay^(links-1).", lo=1e-6)
    link_decay: float = option(0.97, "Confidence factor per extra composed flow in a chain.", lo=0.0, hi=1.0)
    invalid_link_cost_px: float = option(
        20.0, "Chained point tracks: path cost of an invalid flow link (the position is still carried).", lo=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.flow.")
        if not self.gaps:
            raise ConfigError("frontend.flow.gaps: expected at least one gap, got []")


@dataclass(frozen=True)
class LKConfig:
    """Pyramidal Lucas-Kanade point tracking with a forward-backward visibility check."""

    win_size_px: int = option(21, "LK window side.", lo=3)
    max_level: int = option(3, "Pyramid levels above the base image.", lo=0, hi=8)
    fb_thresh_px: float = option(1.5, "Forward-backward error above which a point is not visible.", lo=0.0)
    min_ncc: float = option(
        0.9, "Frame to frame: patch NCC (old vs new position) below which a point is not visible.",
        lo=-1.0, hi=1.0)
    min_ncc_query: float = option(
        0.75, "'from_query' and re-acquisition: the same test against an older template, which ages.",
        lo=-1.0, hi=1.0)
    max_iters: int = option(30, "LK iterations per pyramid level.", lo=1)
    query_max_level: int = option(
        5, "Pyramid levels for 'from_query' tracking, which spans big displacements.", lo=0, hi=8)
    reacquire: bool = option(
        True, "A lost chained point is re-tracked from its last visible frame; kept if it passes the checks.")
    lost_points: Literal["hold", "follow_median"] = option(
        "follow_median", "A lost point's position: 'hold' the last one, or move it with the median motion "
        "of the points tracked in the same frame.")

    def __post_init__(self) -> None:
        check_fields(self, "frontend.lk.")


@dataclass(frozen=True)
class StereoConfig:
    """SGBM disparity with a left-right check, triangulated to metric depth."""

    num_disparities: int = option(
        0, "SGBM disparity search range (multiple of 16); 0 = from calib so min_depth_m fits.", lo=0)
    block_size: int = option(5, "SGBM matching block side (odd).", lo=1, hi=31)
    lr_thresh_px: float = option(1.0, "Max left-right disparity disagreement.", lo=0.0)
    min_depth_m: float = option(0.02, "Depth below this is treated as invalid.", lo=0.0)
    max_depth_m: float = option(0.30, "Depth above this is treated as invalid.", lo=0.0)
    mode: Literal["sgbm", "sgbm_3way", "hh"] = option("sgbm_3way", "OpenCV SGBM variant.")
    uniqueness_ratio: int = option(10, "SGBM uniqueness margin in percent.", lo=0, hi=100)
    speckle_area_px: int = option(50, "Disparity blobs smaller than this are removed (0 = off).", lo=0)
    speckle_range_px: int = option(2, "Disparity variation allowed inside one speckle blob.", lo=0)
    refine: Literal["none", "dis"] = option(
        "dis", "Sub-pixel refinement: DIS flow left->right replaces the SGBM disparity where they agree.")
    refine_agree_px: float = option(
        1.0, "Max |DIS - SGBM| disparity (and |vertical flow| / 2) for the refined value to be used.", lo=0.0)
    refine_finest_scale: int = option(
        0, "Finest pyramid level of the refining DIS (0 = full resolution, the most accurate on small frames; "
        "higher is faster).", lo=0, hi=6)
    refine_min_width_px: int = option(
        512, "Wide frames skip the refining DIS's finest levels while the frame is still at least this wide at "
        "the next coarser one (1280 px: level 1, 640 px wide; 0 = refine_finest_scale alone decides).", lo=0)
    refine_upsample_below_px: int = option(
        512, "Offline fits' depth: frames narrower than this are refined a second time at twice their size and "
        "the disparity is the mean of the two, whose texture-bound biases differ (0 = never). The node's "
        "per-frame path and refits refine once.", lo=0)
    fill_radius_px: int = option(
        5, "Baselines: window radius searched for the nearest valid depth at a track.", lo=0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.stereo.")
        if self.max_depth_m <= self.min_depth_m:
            raise ConfigError(
                f"frontend.stereo.max_depth_m: expected > min_depth_m ({self.min_depth_m}), got {self.max_depth_m}")
        if self.num_disparities % 16:
            raise ConfigError(f"frontend.stereo.num_disparities: expected a multiple of 16, got {self.num_disparities}")
        if self.block_size % 2 == 0:
            raise ConfigError(f"frontend.stereo.block_size: expected an odd number, got {self.block_size}")


@dataclass(frozen=True)
class MaskConfig:
    """Pixels excluded from supervision."""

    specular_min_value: int = option(245, "Pixels with all channels at or above this are specular.", lo=0, hi=255)
    dilate_px: int = option(2, "Dilation of the specular mask.", lo=0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.masks.")


@dataclass(frozen=True)
class StoreConfig:
    """The correspondence store the fit reads: its sample density and memory."""

    sample_stride_px: int = option(
        0, "One source pixel per stride × stride block of every frame is kept with its correspondences (1 = every "
        "pixel; 0 = the densest stride whose store fits budget_gib).", lo=0, hi=256)
    budget_gib: float = option(
        2.0, "RAM for the stored samples and correspondences when sample_stride_px is 0.", lo=0.01)
    backward_chains_gib: float = option(
        1.0, "Long-range chains also run back in time (from keyframes, and from frames to the keyframes "
        "behind) when the last max_chain_frames frames' backward flows fit in this much RAM (0: never).", lo=0.0)
    depth_in_ram_gib: float = option(
        1.0, "Per-frame stereo depth maps (read at query pixels by inference) stay in RAM up to this size; "
        "beyond, they go to a memory-mapped temporary file.", lo=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.store.")


@dataclass(frozen=True)
class FrontendConfig:
    """The weight-free front end: flow chains, LK tracks, stereo depth, masks (DESIGN §3.1)."""

    flow: FlowConfig = nested(FlowConfig, "Dense flow and multi-gap chains.")
    lk: LKConfig = nested(LKConfig, "Pyramidal LK point tracker.")
    stereo: StereoConfig = nested(StereoConfig, "SGBM stereo depth.")
    masks: MaskConfig = nested(MaskConfig, "Supervision masks.")
    store: StoreConfig = nested(StoreConfig, "Correspondence store (samples kept per frame, memory).")
    workers: int = option(
        0, "Threads for the per-frame stereo, the flow bank and the keyframe chains (0 = every CPU core); "
        "results do not depend on it.", lo=0, hi=1024)
    max_memory_share: float = option(
        0.9, "Refuse a fit whose front end (correspondence store, depth maps and streaming window) would need more than this "
        "share of the available RAM, with a one-line error, instead of being killed mid-run (0 = never refuse).",
        lo=0.0, hi=100.0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.")
