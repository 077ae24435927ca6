"""Synthetic scene ground truth and the sequence writer (synth/generate.py).

Ground truth is checked against itself and against the rendered images: projections, the depth
map, instrument occlusion, stereo disparity and texture that stays on the material.
"""

import numpy as np
import pytest
import yaml

from surg_invnerf_ros.config import SynthConfig
from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.geometry import project_px, sample_bilinear
from surg_invnerf_ros.io.sequence import read_sequence
from surg_invnerf_ros.io.trackfile import read_tracks
from surg_invnerf_ros.synth import SyntheticScene, generate_sequence

# 6 frames at 5 fps span 1.2 s, so the instrument sweeps across the view in a tiny sequence.
SMALL = dict(width=64, height=48, frames=6, fps=5.0)


def gray(img):
    return img.astype(np.float64).mean(-1)


def patches(img, uv, half):
    """(N, (2h+1)²) bilinear patches of a gray image around sub-pixel centres."""
    off = np.arange(-half, half + 1, dtype=np.float64)
    du, dv = np.meshgrid(off, off)
    pts = uv[:, None, :] + np.stack([du.ravel(), dv.ravel()], -1)[None]
    return sample_bilinear(img, pts.reshape(-1, 2)).reshape(len(uv), -1)


def ncc(a, b):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)


@pytest.fixture(scope="module")
def inst_scene():
    scene = SyntheticScene(SynthConfig(**SMALL, instrument=True, camera_motion=True, seed=5))
    return scene, [scene.frame(t) for t in range(SMALL["frames"])]


@pytest.fixture(scope="module")
def easy_scene():
    scene = SyntheticScene(SynthConfig(width=128, height=96, frames=6, fps=5.0, difficulty="easy", num_queries=48))
    return scene, [scene.frame(t) for t in range(6)]


class TestSynthConfig:
    @pytest.mark.parametrize("key,value", [("frames", 0), ("difficulty", "x"), ("width", 4), ("fps", 0.0),
                                           ("baseline_m", -0.001), ("num_queries", 0), ("pose_noise_m", -1.0),
                                           ("instrument", "yes")])
    def test_bad_input(self, key, value):
        with pytest.raises(ConfigError, match=f"synth.{key}"):
            SynthConfig(**{key: value})

    def test_defaults(self):
        cfg = SynthConfig()
        assert (cfg.frames, cfg.width, cfg.height, cfg.difficulty, cfg.num_queries) == (48, 256, 192, "medium", 64)
        assert cfg.baseline_m == 0.0045 and not cfg.instrument and not cfg.camera_motion


class TestSyntheticScene:
    def test_smoke(self, inst_scene):
        scene, frames = inst_scene
        f = frames[0]
        N = len(scene.queries)
        assert N == 64 and scene.num_frames == 6
        assert f.left_rgb_u8.shape == (48, 64, 3) and f.left_rgb_u8.dtype == np.uint8
        assert f.right_rgb_u8.shape == (48, 64, 3) and f.depth_m.dtype == np.float32
        assert f.gt_uv_px.shape == (N, 2) and f.gt_xyz_cam_m.shape == (N, 3) and f.gt_visible.shape == (N,)
        assert f.T_world_cam.shape == (4, 4)
        K = scene.calib.K
        assert K[0, 0] == K[1, 1] and 60 < np.degrees(2 * np.arctan(32 / K[0, 0])) < 80
        assert 0.004 <= scene.calib.baseline_m <= 0.005
        assert [fr.stamp_ns for fr in frames[:2]] == [scene.stamp_ns(0), scene.stamp_ns(0) + 200_000_000]

    def test_queries_on_frame_zero(self, inst_scene):
        scene, frames = inst_scene
        q = scene.queries
        np.testing.assert_array_equal(q.ids, np.arange(64))
        assert (q.query_tuv[:, 0] == 0).all()
        assert frames[0].gt_visible.all()  # never under the instrument, never outside, at frame 0
        np.testing.assert_allclose(frames[0].gt_uv_px, q.uv_px, atol=1e-6)
        m = 0.08 * 48
        assert (q.uv_px >= m - 1e-9).all() and (q.uv_px[:, 0] <= 63 - m + 1e-9).all()

    def test_projection_of_xyz_is_uv(self, inst_scene):
        scene, frames = inst_scene
        for f in frames:
            np.testing.assert_allclose(project_px(f.gt_xyz_cam_m, scene.calib.K), f.gt_uv_px, atol=1e-3)
            assert (f.gt_xyz_cam_m[:, 2] > 0.04).all() and (f.gt_xyz_cam_m[:, 2] < 0.13).all()

    def test_depth_map_agrees_with_gt(self, inst_scene):
        scene, frames = inst_scene
        checked = 0
        for f in frames:
            d = sample_bilinear(f.depth_m, f.gt_uv_px)
            ok = f.gt_visible & np.isfinite(d)
            checked += ok.sum()
            np.testing.assert_allclose(d[ok], f.gt_xyz_cam_m[ok, 2], rtol=2e-3)  # bilinear on a smooth surface
            hidden = ~f.gt_visible & np.isfinite(d)  # under the instrument the depth map has no tissue
            inside = (f.gt_uv_px[:, 0] >= 0) & (f.gt_uv_px[:, 0] <= 63) & (f.gt_uv_px[:, 1] >= 0) & (f.gt_uv_px[:, 1] <= 47)
            assert not (hidden & inside).any()
        assert checked > 200

    def test_visibility_follows_the_instrument_mask(self, inst_scene):
        scene, frames = inst_scene
        occluded = 0
        for f in frames:
            uv = f.gt_uv_px
            inside = (uv[:, 0] >= 1) & (uv[:, 0] <= 62) & (uv[:, 1] >= 1) & (uv[:, 1] <= 46)
            c = np.round(uv[inside]).astype(int)
            # Compare only where the 3x3 neighbourhood is all instrument or all tissue.
            nb = np.stack([f.instrument_mask[c[:, 1] + dv, c[:, 0] + du] for dv in (-1, 0, 1) for du in (-1, 0, 1)])
            clear = nb.all(0) | (~nb).all(0)
            mask = nb[4]
            vis = f.gt_visible[inside]
            np.testing.assert_array_equal(vis[clear], ~mask[clear])
            occluded += (mask[clear]).sum()
            outside = ~((uv[:, 0] >= 0) & (uv[:, 0] <= 63) & (uv[:, 1] >= 0) & (uv[:, 1] <= 47))
            assert not f.gt_visible[outside].any()
            assert np.isnan(f.depth_m[f.instrument_mask]).all()
        assert occluded >= 3  # the instrument really hides some queries in this sequence
        assert frames[-1].instrument_mask.any() and not np.array_equal(frames[0].instrument_mask,
                                                                        frames[-1].instrument_mask)

    def test_right_image_matches_gt_disparity(self, easy_scene):
        scene, frames = easy_scene
        fx, B = scene.calib.fx, scene.calib.baseline_m
        f = frames[3]
        H, W = f.depth_m.shape
        v, u = np.mgrid[4:H - 4, 12:W - 4].reshape(2, -1).astype(np.float64)
        z = f.depth_m[v.astype(int), u.astype(int)].astype(np.float64)
        ok = np.isfinite(z)
        uv = np.stack([u, v], -1)[ok]
        disp = fx * B / z[ok]
        L = gray(f.left_rgb_u8)[v[ok].astype(int), u[ok].astype(int)]
        errs = {}
        for shift in (-2.0, 0.0, 2.0):
            Rw = sample_bilinear(gray(f.right_rgb_u8), uv - np.stack([disp + shift, 0 * disp], -1))
            errs[shift] = np.nanmean(np.abs(Rw - L))
        assert errs[0.0] < 0.6 * min(errs[-2.0], errs[2.0]), errs
        assert errs[0.0] < 8.0, errs

    def test_texture_is_fixed_to_material(self, easy_scene):
        scene, frames = easy_scene
        f0, f5 = frames[0], frames[5]
        moved = np.linalg.norm(f5.gt_uv_px - f0.gt_uv_px, axis=1)
        assert moved.max() > 0.5  # the tissue really moves
        ok = f0.gt_visible & f5.gt_visible
        p0 = patches(gray(f0.left_rgb_u8), f0.gt_uv_px[ok], 3)
        p5 = patches(gray(f5.left_rgb_u8), f5.gt_uv_px[ok], 3)
        wrong = patches(gray(f5.left_rgb_u8), f5.gt_uv_px[ok] + [3.0, 2.0], 3)
        good = np.isfinite(p0).all(1) & np.isfinite(p5).all(1) & np.isfinite(wrong).all(1)
        assert good.sum() > 20
        c_true = ncc(p0[good], p5[good])
        c_wrong = ncc(p0[good], wrong[good])
        assert np.median(c_true) > 0.85 and np.median(c_true) > np.median(c_wrong) + 0.3

    def test_images_change_over_time(self, inst_scene):
        _, frames = inst_scene
        diff = np.abs(frames[0].left_rgb_u8.astype(int) - frames[-1].left_rgb_u8.astype(int)).mean()
        assert diff > 5.0
        assert np.linalg.norm(frames[-1].gt_uv_px - frames[0].gt_uv_px, axis=1).max() > 1.0

    def test_deterministic(self, inst_scene):
        scene, frames = inst_scene
        again = SyntheticScene(scene.cfg).frame(4)
        for name in ("left_rgb_u8", "right_rgb_u8", "depth_m", "gt_uv_px", "gt_xyz_cam_m", "gt_visible", "T_world_cam"):
            np.testing.assert_array_equal(getattr(again, name), getattr(frames[4], name))
        other = SyntheticScene(SynthConfig(**SMALL, instrument=True, camera_motion=True, seed=3)).frame(4)
        assert np.abs(other.left_rgb_u8.astype(int) - frames[4].left_rgb_u8.astype(int)).mean() > 5

    def test_frames_past_the_end_and_bad_index(self, inst_scene):
        scene, _ = inst_scene
        f = scene.frame(40)
        assert f.left_rgb_u8.shape == (48, 64, 3) and f.stamp_ns == scene.stamp_ns(40)
        with pytest.raises(ValueError, match="frame"):
            scene.frame(-1)

    def test_camera_motion_and_pose_noise(self):
        cfg = SynthConfig(**SMALL, camera_motion=True, pose_noise_m=0.001, pose_noise_deg=0.5,
                          pose_time_offset_s=0.1)
        scene = SyntheticScene(cfg)
        f = scene.frame(3)
        T_true = scene.true_pose(3 / cfg.fps)
        np.testing.assert_array_equal(f.T_world_cam_true, T_true)
        assert np.linalg.norm(T_true[:3, 3]) > 1e-4  # the endoscope moved
        err = np.linalg.norm(f.T_world_cam[:3, 3] - scene.true_pose(3 / cfg.fps - 0.1)[:3, 3])
        assert 1e-5 < err < 0.01  # noise of about 1 mm per axis on the published pose only
        clean = SyntheticScene(SynthConfig(**SMALL, camera_motion=True)).frame(3)
        np.testing.assert_array_equal(clean.gt_uv_px, f.gt_uv_px)  # ground truth is untouched
        np.testing.assert_array_equal(clean.left_rgb_u8, f.left_rgb_u8)
        static = SyntheticScene(SynthConfig(**SMALL)).frame(3)
        np.testing.assert_array_equal(static.T_world_cam, np.eye(4))


class TestGenerateSequence:
    def test_writes_folder_and_ground_truth(self, tmp_path):
        cfg = SynthConfig(width=64, height=48, frames=4, num_queries=10, instrument=True, camera_motion=True)
        calls = []
        out = generate_sequence(tmp_path / "seq", cfg, progress=calls.append)
        assert out == tmp_path / "seq" and sum(calls) == 4
        assert len(list((out / "left").glob("*.png"))) == 4 and len(list((out / "right").glob("*.png"))) == 4
        calib = yaml.safe_load((out / "calib.yaml").read_text())
        assert calib["image_size"] == [64, 48] and calib["rectified"] and calib["T"][0] == pytest.approx(-0.0045)
        q_rows = (out / "queries.csv").read_text().split()
        assert q_rows[0] == "id,frame,u,v" and len(q_rows) == 11
        assert len((out / "kinematics.csv").read_text().split()) == 5
        tracks = read_tracks(out / "gt" / "tracks.npz")
        np.testing.assert_array_equal(tracks.ids, np.arange(10))
        assert tracks.uv.shape == (4, 10, 2) and tracks.xyz.shape == (4, 10, 3) and tracks.visible[0].all()
        assert tracks.meta["method"] == "ground_truth" and tracks.meta["synth"]["frames"] == 4
        with np.load(out / "gt" / "depth.npz") as z:
            assert z["depth_m"].shape == (4, 48, 64) and z["depth_m"].dtype == np.float32
            assert z["instrument_mask"].shape == (4, 48, 64)
            scene = SyntheticScene(cfg)
            np.testing.assert_array_equal(z["depth_m"][2], scene.frame(2).depth_m)
        first_q = np.array([float(x) for x in q_rows[1].split(",")])
        np.testing.assert_allclose(first_q[2:], tracks.uv[0, 0], atol=1e-4)
        seq = read_sequence(out)  # the project's reader accepts it and gets the same data back
        np.testing.assert_array_equal(seq.left_rgb_u8[3], scene.frame(3).left_rgb_u8)
        np.testing.assert_allclose(seq.calib.K, scene.calib.K)
        np.testing.assert_allclose(seq.T_world_cam[2], scene.frame(2).T_world_cam, atol=1e-8)
        np.testing.assert_array_equal(seq.queries.ids, tracks.ids)

    def test_still_camera_writes_no_kinematics(self, tmp_path):
        out = generate_sequence(tmp_path / "still", SynthConfig(width=32, height=24, frames=2, num_queries=4))
        assert not (out / "kinematics.csv").exists() and (out / "gt" / "poses.npz").is_file()


def test_generation_memory_does_not_grow_with_frames(tmp_path):
    """Frames are written as they are rendered: 60 frames hold about what 6 do (not 10×)."""
    import tracemalloc

    def peak(frames):
        cfg = SynthConfig(frames=frames, width=96, height=72, seed=0, num_queries=4, instrument=True)
        tracemalloc.start()
        generate_sequence(tmp_path / f"s{frames}", cfg)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(6), peak(60)
    whole_clip = 60 * 96 * 72 * (3 + 3 + 4 + 1)  # left, right, depth and mask of every frame
    assert large - small < 0.25 * whole_clip
