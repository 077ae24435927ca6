"""Frame conventions of kinematics against the synthetic generator's ground truth.

x_world = T_world_cam · x_cam, and a pixel is K · (T_world_cam⁻¹ · x_world). The generator renders with
the true T_world_cam of the left camera; `KinematicsBuffer` must hand the same pose back from an
ECM stream (hand-eye and clock offset applied) so world points land on the ground-truth pixels.
"""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from surg_invnerf_ros.config import KinematicsConfig, SynthConfig
from surg_invnerf_ros.geometry import invert_T, project_px, transform_points
from surg_invnerf_ros.ros.kinematics import KinematicsBuffer
from surg_invnerf_ros.synth.generate import SyntheticScene

NS = 1_000_000_000
FRAMES = (0, 8, 15)


@pytest.fixture(scope="module")
def scene():
    cfg = SynthConfig(frames=16, width=64, height=48, seed=0, camera_motion=True, difficulty="easy",
                      num_queries=16)
    return SyntheticScene(cfg)


@pytest.fixture(scope="module")
def frames(scene):
    return {t: scene.frame(t) for t in FRAMES}


def rotation_angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(R).as_rotvec())))


class TestWorldCameraPixel:
    def test_round_trip_matches_ground_truth(self, scene, frames):
        K = scene.calib.K
        for f in frames.values():
            assert f.gt_visible.sum() >= 8
            xyz_world_m = transform_points(f.T_world_cam, f.gt_xyz_cam_m)  # (N, 3)
            xyz_cam_m = transform_points(invert_T(f.T_world_cam), xyz_world_m)
            uv_px = project_px(xyz_cam_m, K)
            vis = f.gt_visible
            np.testing.assert_allclose(uv_px[vis], f.gt_uv_px[vis], atol=1e-6, rtol=0)

    def test_camera_moves_and_tissue_stays_put_in_world(self, frames):
        f0, f1 = frames[FRAMES[0]], frames[FRAMES[-1]]
        # The endoscope really moves over these 0.5 s (measured: ~1.8 mm at seed 0, easy).
        moved_m = np.linalg.norm(f1.T_world_cam[:3, 3] - f0.T_world_cam[:3, 3])
        turned_deg = rotation_angle_deg(f0.T_world_cam[:3, :3].T @ f1.T_world_cam[:3, :3])
        assert moved_m > 1e-3 or turned_deg > 0.5
        # Bound: tissue deformation is small next to camera motion, so a material point's world
        # displacement is at most half of its camera-frame displacement (measured on seeds 0-2,
        # easy: ratio 0.09-0.25). Reading T as T_cam_world instead would roughly double it.
        d_cam_m = np.linalg.norm(f1.gt_xyz_cam_m - f0.gt_xyz_cam_m, axis=1)
        d_world_m = np.linalg.norm(transform_points(f1.T_world_cam, f1.gt_xyz_cam_m)
                                   - transform_points(f0.T_world_cam, f0.gt_xyz_cam_m), axis=1)
        assert np.median(d_world_m) <= 0.5 * np.median(d_cam_m)
        d_wrong_m = np.linalg.norm(transform_points(invert_T(f1.T_world_cam), f1.gt_xyz_cam_m)
                                   - transform_points(invert_T(f0.T_world_cam), f0.gt_xyz_cam_m), axis=1)
        assert np.median(d_wrong_m) > np.median(d_cam_m)

    def test_static_camera_is_identity(self):
        scene = SyntheticScene(SynthConfig(frames=4, width=64, height=48, camera_motion=False, num_queries=4))
        np.testing.assert_array_equal(scene.frame(3).T_world_cam, np.eye(4))


class TestBufferAgainstGenerator:
    """An ECM stream at 100 Hz, built from the generator's true camera motion, read back at frame stamps."""

    # Hand-eye: the optical frame sits 5 mm along and 20° about the ECM tool's x axis.
    T_ECM_CAM = np.eye(4)
    T_ECM_CAM[:3, :3] = Rotation.from_euler("x", 20, degrees=True).as_matrix()
    T_ECM_CAM[:3, 3] = [0.005, 0.0, 0.0]

    def stream(self, scene, lag_s: float) -> list[tuple[int, np.ndarray]]:
        """(stamp_ns, T_world_ecm) whose stamps lag the true motion by `lag_s`, off the frame grid."""
        t0_ns = scene.stamp_ns(0)
        out = []
        for k in range(-10, 60):
            stamp_ns = t0_ns + k * 10_000_000 + 3_000_000
            t_true_s = (stamp_ns - t0_ns) / NS - lag_s
            out.append((stamp_ns, scene.true_pose(t_true_s) @ invert_T(self.T_ECM_CAM)))
        return out

    def buffer(self, scene, lag_s: float, offset_s: float) -> KinematicsBuffer:
        cfg = KinematicsConfig(T_ecm_cam=tuple(self.T_ECM_CAM.ravel().tolist()), time_offset_s=offset_s)
        buf = KinematicsBuffer(cfg)
        for stamp_ns, T in self.stream(scene, lag_s):
            assert buf.add(stamp_ns, T)
        return buf

    @pytest.mark.parametrize("lag_s", [0.0, 0.04])
    def test_recovers_true_pose_and_pixels(self, scene, frames, lag_s):
        buf = self.buffer(scene, lag_s, offset_s=lag_s)  # compensated: t_kin = t_image + lag
        K = scene.calib.K
        for t, f in frames.items():
            T_world_cam = buf.pose_at(f.stamp_ns)
            assert T_world_cam is not None, t
            # Lerp/SLERP between 100 Hz samples of a smooth motion: error ~ accel·dt²/8 < 1 µm here.
            np.testing.assert_allclose(T_world_cam[:3, 3], f.T_world_cam_true[:3, 3], atol=1e-5, rtol=0)
            assert rotation_angle_deg(T_world_cam[:3, :3].T @ f.T_world_cam_true[:3, :3]) < 1e-3
            xyz_world_m = transform_points(f.T_world_cam_true, f.gt_xyz_cam_m)
            uv_px = project_px(transform_points(invert_T(T_world_cam), xyz_world_m), K)
            np.testing.assert_allclose(uv_px[f.gt_visible], f.gt_uv_px[f.gt_visible], atol=1e-2, rtol=0)

    def test_uncompensated_lag_is_visible(self, scene, frames):
        # Same 40 ms lag read with offset 0: the recovered pose is the pose 40 ms earlier.
        buf = self.buffer(scene, 0.04, offset_s=0.0)
        f = frames[8]
        T_world_cam = buf.pose_at(f.stamp_ns)
        np.testing.assert_allclose(T_world_cam[:3, 3], scene.true_pose(8 / scene.cfg.fps - 0.04)[:3, 3], atol=1e-5)
        assert np.linalg.norm(T_world_cam[:3, 3] - f.T_world_cam_true[:3, 3]) > 1e-5

    def test_published_pose_sign_matches_time_offset(self):
        # synth.pose_time_offset_s lags the published pose; kinematics.time_offset_s = that lag undoes it:
        # published(t + lag) = true(t) ⇒ read the stream at t_image + time_offset_s.
        lag_s = 0.04
        scene = SyntheticScene(SynthConfig(frames=4, width=64, height=48, camera_motion=True, num_queries=4,
                                           pose_time_offset_s=lag_s))
        np.testing.assert_allclose(scene.published_pose(2), scene.true_pose(2 / scene.cfg.fps - lag_s))
