"""Depth cues: the 3D error's lateral and depth parts, and the image shifts a depth error makes."""

import numpy as np
import pytest

from surg_invnerf_ros.eval.depth_cues import err3d_parts, motion_depth_cues
from surg_invnerf_ros.structs import Tracks

K = np.array([[200.0, 0.0, 64.0], [0.0, 200.0, 48.0], [0.0, 0.0, 1.0]])


def tracks(xyz_m: np.ndarray) -> Tracks:
    T, N, _ = xyz_m.shape
    uv = np.stack([K[0, 0] * xyz_m[..., 0] / xyz_m[..., 2] + K[0, 2], K[1, 1] * xyz_m[..., 1] / xyz_m[..., 2] + K[1, 2]], -1)
    return Tracks(ids=np.arange(N), uv=uv.astype(np.float32), visible=np.ones((T, N), bool), xyz=xyz_m.astype(np.float32))


def scene(T: int = 5, N: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = np.column_stack([rng.uniform(-0.01, 0.01, N), rng.uniform(-0.01, 0.01, N), rng.uniform(0.06, 0.08, N)])
    drift = np.linspace(0.0, 0.002, T)[:, None, None] * np.array([1.0, -0.5, 0.3])
    return base[None] + drift  # (T, N, 3) metres


class TestErr3dParts:
    def test_a_constant_depth_error_per_track_is_all_bias(self):
        gt_xyz = scene()
        bias_m = np.array([0.0005, -0.001, 0.0])
        pred = gt_xyz * ((gt_xyz[..., 2] + bias_m) / gt_xyz[..., 2])[..., None]  # same rays, deeper or nearer
        parts = err3d_parts(tracks(pred), tracks(gt_xyz), np.zeros(3, np.int64))
        assert parts["err3d_lateral_mm"] == pytest.approx(0.0, abs=1e-3)
        assert parts["depth_bias_mm"] == pytest.approx(0.5, abs=1e-3)  # mean of 0.5, 1.0 and 0 mm
        assert parts["depth_err_mm"] == pytest.approx(0.5, abs=1e-3)

    def test_a_sideways_error_is_lateral_and_frames_up_to_the_query_are_skipped(self):
        gt_xyz = scene()
        pred = gt_xyz + np.array([0.0003, 0.0, 0.0])
        pred[0] += 0.05  # the query frame: not scored
        parts = err3d_parts(tracks(pred), tracks(gt_xyz), np.zeros(3, np.int64))
        assert parts["err3d_lateral_mm"] == pytest.approx(0.3, abs=1e-3)
        assert parts["depth_bias_mm"] == pytest.approx(0.0, abs=1e-6)

    def test_alternating_depth_error_is_not_bias(self):
        gt_xyz = scene(T=5)
        sign = np.array([0, 1, -1, 1, -1], float)[:, None]  # zero-mean over the scored frames 1..4
        pred = gt_xyz * ((gt_xyz[..., 2] + 0.0004 * sign) / gt_xyz[..., 2])[..., None]
        parts = err3d_parts(tracks(pred), tracks(gt_xyz), np.zeros(3, np.int64))
        assert parts["depth_err_mm"] == pytest.approx(0.4, abs=1e-3)
        assert parts["depth_bias_mm"] == pytest.approx(0.0, abs=1e-3)


class TestMotionDepthCues:
    def test_static_tissue_and_a_sideways_camera_against_the_pinhole_formulas(self):
        T, Z, B, dz = 4, 0.07, 0.005, 0.001
        cam_x = np.array([0.0, 0.002, 0.004, 0.008])  # camera centre moves along +x, no rotation
        T_wc = np.tile(np.eye(4), (T, 1, 1))
        T_wc[:, 0, 3] = cam_x
        world = np.array([[0.0, 0.0, Z]])  # one rigid point, on the first optical axis
        gt_xyz = (world[None] - T_wc[:, None, :3, 3])  # in each camera (no rotation)
        cues = motion_depth_cues(tracks(gt_xyz), T_wc, K, B, np.zeros(1, np.int64), depth_err_m=dz)
        per_mm = 1e-3 / dz
        parallax = np.mean(K[0, 0] * cam_x[1:] * (1 / Z - 1 / (Z + dz))) * per_mm
        stereo = K[0, 0] * B * (1 / Z - 1 / (Z + dz)) * per_mm
        assert cues["parallax_px_per_mm"] == pytest.approx(parallax, rel=1e-6)  # Tracks store float32
        assert cues["stereo_px_per_mm"] == pytest.approx(stereo, rel=1e-6)  # Tracks store float32
        assert cues["camera_travel_mm"] == pytest.approx(np.mean(cam_x[1:]) * 1000)
        assert cues["tissue_motion_world_mm"] == pytest.approx(0.0, abs=1e-5)

    def test_tissue_motion_is_measured_in_the_world_frame(self):
        T = 3
        T_wc = np.tile(np.eye(4), (T, 1, 1))
        T_wc[:, 1, 3] = [0.0, 0.001, 0.002]  # the camera moves along y ...
        world = np.array([0.0, 0.0, 0.07]) + np.array([[0, 0, 0], [0.003, 0, 0], [0.006, 0, 0]])  # ... the tissue along x
        gt_xyz = (world - T_wc[:, :3, 3])[:, None]  # (T, 1, 3)
        cues = motion_depth_cues(tracks(gt_xyz), T_wc, K, 0.005, np.zeros(1, np.int64))
        assert cues["tissue_motion_world_mm"] == pytest.approx(4.5)  # mean of 3 and 6 mm
        assert cues["camera_travel_mm"] == pytest.approx(1.5)
