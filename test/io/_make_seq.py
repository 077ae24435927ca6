"""Tiny sequence folders for the io tests: a valid rectified one, and a raw (distorted) calib."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from surg_invnerf_ros.io.calib import RawCalib
from surg_invnerf_ros.io.sequence import write_sequence
from surg_invnerf_ros.structs import Queries, StereoCalib

W, H, T = 64, 48, 4
K = np.array([[60.0, 0.0, 31.5], [0.0, 60.0, 23.5], [0.0, 0.0, 1.0]])
BASELINE_M = 0.005


def textured_frames(num_frames: int = T, width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 smooth random texture (blurred noise, so interpolation is meaningful)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (num_frames, height, width, 3)).astype(np.float32)
    return np.stack([cv2.GaussianBlur(f, (5, 5), 1.0) for f in noise]).astype(np.uint8)


def queries() -> Queries:
    return Queries(ids=np.array([3, 7, 11], np.int64),
                   query_tuv=np.array([[0, 10.0, 12.0], [1, 32.5, 20.25], [3, 50.0, 40.0]]))


def make_seq(tmp_path: Path, name: str = "seq", **kwargs) -> Path:
    """A valid rectified 64x48, 4-frame sequence with timestamps and kinematics."""
    left = textured_frames(seed=1)
    right = textured_frames(seed=2)
    calib = StereoCalib(K=K, baseline_m=BASELINE_M, image_size=(W, H), fps=25.0)
    stamps = np.array([1_000, 41_000_000, 81_000_000, 121_000_000], np.int64)
    T_world_cam = np.tile(np.eye(4), (T, 1, 1))
    T_world_cam[:, 0, 3] = np.arange(T) * 0.01
    args = dict(stamps_ns=stamps, T_world_cam=T_world_cam)
    args.update(kwargs)
    return write_sequence(tmp_path / name, left, right, calib, queries(), **args)


def raw_calib(image_size: tuple[int, int] = (W, H), fps: float = 25.0) -> RawCalib:
    """A raw pair with distortion and a small rotation between the cameras."""
    K_right = K.copy()
    K_right[0, 2] += 1.5
    return RawCalib(
        K_left=K.copy(), K_right=K_right,
        D_left=np.array([-0.12, 0.05, 0.001, -0.0015, 0.0]),
        D_right=np.array([-0.10, 0.04, -0.001, 0.001, 0.0]),
        R=cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0], T=np.array([-0.005, 0.0002, 0.0001]),
        image_size=image_size, rectified=False, fps=fps)
