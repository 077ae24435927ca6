"""Benchmark set config (`apps/bench.py`, DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .base import (
    check_fields,
    option,
)

BenchPreset = Literal["default", "hard", "long", "real_size", "quick"]  # a named benchmark set (BenchConfig.preset)


@dataclass(frozen=True)
class BenchConfig:
    """The synthetic benchmark set (DESIGN §4): a named preset of sequences, optionally resized.

    Presets (`apps/bench.py` lists them): "default" (2 seeds × 4 conditions, from easy and static to
    hard with an instrument and camera motion), "hard" (hard, instrument + camera motion, 3 seeds),
    "long" (the hard condition, 300 frames of 640×512), "real_size" (1,000 frames of 1280×1024, a
    native da Vinci size) and "quick" (a small smoke run). Zero or empty fields take the preset's value, so `bench.frames=96`
    resizes a preset without redefining it.
    """

    preset: BenchPreset = option("default", "Named set of synthetic sequences.")
    frames: int = option(0, "Frames per sequence; 0 takes the preset's (48; quick 16).", lo=0)
    width: int = option(0, "Image width in px; 0 takes the preset's (256; quick 128).", lo=0)
    height: int = option(0, "Image height in px; 0 takes the preset's (192; quick 96).", lo=0)
    num_queries: int = option(0, "Query points per sequence; 0 takes the preset's (64; quick 24).", lo=0)
    seeds: tuple[int, ...] = option((), "Sequence seeds; empty takes the preset's.", lo=0)
    plots: bool = option(True, "Write the accuracy plot and one contact sheet per sequence.")
    contact_frames: int = option(4, "Frames (columns) per contact sheet.", lo=1, hi=16)
    keep_going: bool = option(True, "Record a method that raises as failed and go on; false re-raises.")
    kin_noise_m: float = option(0.0005, "Kinematics section: per-axis std of the translation noise on the noisy poses.",
                                lo=0.0, hi=0.1)
    kin_noise_deg: float = option(0.5, "Kinematics section: per-axis std of the rotation noise on the noisy poses.",
                                  lo=0.0, hi=30.0)
    kin_lag_s: float = option(0.04, "Kinematics section: lag of the noisy poses behind the images, compensated "
                              "with the same time offset.", lo=-1.0, hi=1.0)

    def __post_init__(self) -> None:
        check_fields(self, "bench.")
        if self.frames == 1:
            raise ConfigError("bench.frames: expected 0 (preset) or >= 2, got 1")


@dataclass(frozen=True)
class SoakConfig:
    """The long-run check of the node (`surg-invnerf soak`, `make soak`): synthetic_stereo → track_node
    with refinement on, measured from outside for `duration_s`, then judged against its limits."""

    duration_s: float = option(1800.0, "Measured run time after the first tracked points (s).", lo=10.0)
    width: int = option(256, "Image width of the synthetic stream (px).", lo=32)
    height: int = option(192, "Image height of the synthetic stream (px).", lo=32)
    rate_hz: float = option(30.0, "Stream rate (Hz).", lo=1.0, hi=200.0)
    num_queries: int = option(64, "Tracked points.", lo=1)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "The tracker's model device.")
    warmup_s: float = option(300.0, "Start-up span left out of the error-stability comparison (s).", lo=0.0)
    window_s: float = option(300.0, "Length of the first (after warm-up) and last error windows compared (s).",
                             lo=60.0)
    rss_span_s: float = option(1200.0, "Final span over which RSS growth is measured (s).", lo=60.0)
    max_rss_growth_mb: float = option(20.0, "Limit on RSS growth (tracker + refiner) over the final span (MB).",
                                      lo=0.0)
    max_error_ratio: float = option(1.2, "Limit on last-window / first-window median live error.", lo=1.0)
    max_dropped_fraction: float = option(0.01, "Limit on the share of source frames without tracked points.",
                                         lo=0.0, hi=1.0)
    max_latency_p95_ms: float = option(33.0, "Limit on the p95 latency publication → ~/tracked_points (ms).",
                                       lo=1.0)

    def __post_init__(self) -> None:
        check_fields(self, "soak.")
        if self.warmup_s + 2 * self.window_s > self.duration_s:
            raise ConfigError(f"soak.duration_s: expected >= warmup_s + 2 × window_s "
                              f"({self.warmup_s + 2 * self.window_s:g} s), got {self.duration_s:g}")
        if self.rss_span_s > self.duration_s:
            raise ConfigError(f"soak.rss_span_s: expected <= duration_s ({self.duration_s:g}), got {self.rss_span_s:g}")


@dataclass(frozen=True)
class StirBenchConfig:
    """`surg-invnerf stir-bench`: every STIR clip of a folder imported, tracked by each method, scored
    per clip and pooled over clips (as STIRMetrics pools), as a batch on this machine or on Ray."""

    methods: tuple[str, ...] = option(("invnerf", "lk"), "Methods to run on every clip.")
    backend: Literal["local", "ray"] = option(
        "local", "local: one clip after the other in this process; ray: one Ray task per clip.")
    ray_address: str = option("", "Ray cluster to join: HOST:PORT of a `ray start --head`, auto, or "
                              "ray://head:10001 (token authentication, Ray's default, needs RAY_AUTH_MODE=token); "
                              "empty starts a local Ray.")
    ray_num_cpus: int = option(0, "CPUs of the local Ray (0: all of this machine's).", lo=0)
    cpus_per_clip: float = option(1.0, "CPUs each clip's Ray task asks for.", lo=0.0)
    gpus_per_clip: float = option(0.0, "GPUs each clip's Ray task asks for (e.g. 1 with device cuda).", lo=0.0)
    start_json: str = option("", "2D start labels of all clips; empty: CLIPS_DIR/start.json if present, else "
                             "each clip's segmentation/icgstartseg.png.")
    end_json: str = option("", "2D end labels; empty: CLIPS_DIR/end.json if present, else icgendseg.png.")
    start_json_3d: str = option("", "3D start labels (mm); empty: CLIPS_DIR/start_3d.json if present.")
    end_json_3d: str = option("", "3D end labels (mm); empty: CLIPS_DIR/end_3d.json if present.")
    max_frames: int = option(0, "Keep only the first frames of each clip (0: all; end labels then do not apply).",
                             lo=0)

    def __post_init__(self) -> None:
        check_fields(self, "stir_bench.")
        if not self.methods:
            raise ConfigError("stir_bench.methods: expected at least one method")
