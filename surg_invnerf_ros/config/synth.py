"""Synthetic stereo endoscope config (`synth/`, DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import (
    check_fields,
    option,
)

Difficulty = Literal["easy", "medium", "hard"]  # scene difficulty (SynthConfig.difficulty)


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic stereo endoscopy sequence with exact ground truth (synth/, DESIGN §4).

    The scene (tissue shape, texture, motion phases, instrument path) is drawn from `seed`; the
    same config always gives the same images. The `pose_*` knobs perturb only the poses that are
    written to kinematics.csv or published, never the images or the ground truth.
    """

    frames: int = option(48, "Number of frames written by `generate_sequence`.", lo=1)
    width: int = option(256, "Image width in pixels.", lo=16, hi=4096)
    height: int = option(192, "Image height in pixels.", lo=16, hi=4096)
    seed: int = option(0, "Seed of the scene: shape, texture, motion phases, noise.", lo=0)
    instrument: bool = option(False, "Add an instrument shaft that enters from a border and moves.")
    camera_motion: bool = option(
        False, "Move the endoscope with a smooth rigid motion (kinematics.csv is written when it moves or "
        "pose noise is set).")
    difficulty: Difficulty = option(
        "medium", "Scales deformation amplitude and speed, specularity, noise and flicker.")
    num_queries: int = option(64, "Query points placed on a jittered grid over frame 0.", lo=1, hi=100000)
    fps: float = option(30.0, "Frame rate; sets the time step of every motion.", lo=0.1, hi=1000.0)
    baseline_m: float = option(0.0045, "Stereo baseline (right camera at +x of the left).", lo=0.001, hi=0.05)
    hfov_deg: float = option(70.0, "Horizontal field of view; fx = fy = (W/2) / tan(hfov/2).", lo=20.0, hi=100.0)
    distance_m: float = option(0.075, "Working distance to the tissue at the image centre.", lo=0.05, hi=0.12)
    pose_noise_m: float = option(0.0, "Std of the per-axis translation noise on written poses.", lo=0.0, hi=0.1)
    pose_noise_deg: float = option(0.0, "Std of the per-axis rotation noise on written poses.", lo=0.0, hi=30.0)
    pose_time_offset_s: float = option(
        0.0, "Written pose of frame t is the true pose at t/fps - offset (kinematics lag by this much).",
        lo=-10.0, hi=10.0)

    def __post_init__(self) -> None:
        check_fields(self, "synth.")
