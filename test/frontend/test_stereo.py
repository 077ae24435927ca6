"""SGBM stereo depth: a fronto-parallel plane, the left-right check, the search range, bad input."""

import numpy as np
import pytest

from surg_invnerf_ros.config import StereoConfig
from surg_invnerf_ros.errors import ConfigError, InputError
from surg_invnerf_ros.frontend.stereo import make_refiner, num_disparities_for, stereo_depth_m, stereo_depth_sequence_m
from surg_invnerf_ros.structs import StereoCalib

from .synthetic import H, W, curved_disparity_px, curved_surface_pair, texture, view

FX, B = 220.0, 0.0045


def calib(width=W, height=H):
    K = np.array([[FX, 0, width / 2], [0, FX, height / 2], [0, 0, 1.0]])
    return StereoCalib(K=K, baseline_m=B, image_size=(width, height))


def curved_surface_error_px(depth_m: np.ndarray) -> tuple[float, float]:
    """Mean |disparity error| of a depth map of `curved_surface_pair` away from its borders, and the share
    of the image where it is valid there."""
    usable = np.isfinite(depth_m)
    usable[:, :30] = usable[:4] = usable[-4:] = usable[:, -4:] = False
    return float(np.abs(FX * B / depth_m - curved_disparity_px())[usable].mean()), float(usable.mean())


def plane_pair(z_m, seed=0):
    """Left/right views of a textured plane at depth z: the right view sees u_left − d, d = fx·B/z."""
    tex = texture(200, 200, seed=seed, sigma_px=1.2)
    d = FX * B / z_m
    return view(tex, 0, 0), view(tex, -d, 0)


class TestStereoDepth:
    def test_smoke(self):
        left, right = plane_pair(0.06)
        depth = stereo_depth_m(left, right, calib(), StereoConfig())
        assert depth.shape == (H, W) and depth.dtype == np.float32

    @pytest.mark.parametrize("z_m", [0.05, 0.08])
    def test_plane_depth(self, z_m):
        # z = 5 cm: d = 220·0.0045/0.05 = 19.8 px; 8 cm: 12.4 px (non-integer shifts).
        left, right = plane_pair(z_m)
        depth = stereo_depth_m(left, right, calib(), StereoConfig())
        d_px = FX * B / z_m
        usable = np.zeros((H, W), bool)
        usable[4:-4, int(np.ceil(d_px)) + 4:-4] = True  # left columns u < d have no match
        valid = np.isfinite(depth)
        assert valid[usable].mean() > 0.9
        assert not valid[:, : int(d_px) - 1].any()
        rel = np.abs(depth[usable & valid] - z_m) / z_m
        assert np.median(rel) < 0.02 and np.percentile(rel, 95) < 0.02

    def test_dis_refinement_is_more_accurate(self):
        # SGBM's parabola pulls a non-integer disparity towards an integer on smooth texture (the
        # rendered scenes' case): d = 220·0.0045/0.05 = 19.8 px, 128x96 so DIS has pyramid levels.
        tex = texture(250, 250, sigma_px=3.0)
        d_px = FX * B / 0.05
        left, right = view(tex, 0, 0, 128, 96), view(tex, -d_px, 0, 128, 96)
        errs, valid = {}, {}
        for refine in ("none", "dis"):
            depth = stereo_depth_m(left, right, calib(128, 96), StereoConfig(refine=refine))
            valid[refine] = np.isfinite(depth)
            assert valid[refine][4:-4, 24:-4].mean() > 0.9
            errs[refine] = np.nanmean(np.abs(depth[4:-4, 24:-4] - 0.05))
        assert errs["dis"] < 0.7 * errs["none"]
        np.testing.assert_array_equal(valid["dis"], valid["none"])  # validity is SGBM's alone

    def test_full_resolution_refinement_is_more_accurate_on_a_curved_surface(self):
        # Disparity 15.5-20.5 px varying over tens of px: the refining DIS at level 0 follows it,
        # at the medium preset's level 1 it smooths it (measured 0.19 vs 0.36 px mean error, one refinement).
        left, right = curved_surface_pair(seed=0)
        err = {}
        for fs in (0, 1):
            cfg = StereoConfig(refine_finest_scale=fs, refine_upsample_below_px=0)
            err[fs], usable_share = curved_surface_error_px(stereo_depth_m(left, right, calib(128, 96), cfg))
            assert usable_share > 0.5
        assert err[0] < 0.7 * err[1]

    def test_small_frames_refined_also_at_twice_their_size_are_more_accurate(self):
        # The curved surface above on three textures: the mean of the refinements of the pair and of the
        # pair at twice its size against the pair's alone (measured 0.198 vs 0.216 px mean error).
        err: dict[int, list[float]] = {0: [], 512: []}
        for seed in (0, 1, 2):
            left, right = curved_surface_pair(seed)
            for below in err:
                depth = stereo_depth_m(left, right, calib(128, 96), StereoConfig(refine_upsample_below_px=below))
                err[below].append(curved_surface_error_px(depth)[0])
        assert np.mean(err[512]) < 0.96 * np.mean(err[0])
        assert StereoConfig().refine_upsample_below_px > 128  # on by default at this size

    def test_wide_frames_refine_at_a_coarser_level(self):
        assert make_refiner(StereoConfig(), 1280).getFinestScale() == 1
        assert make_refiner(StereoConfig(), 640).getFinestScale() == 0
        assert make_refiner(StereoConfig(refine_min_width_px=0), 1280).getFinestScale() == 0
        assert make_refiner(StereoConfig(refine_finest_scale=2), 1280).getFinestScale() == 2

    def test_left_right_check_removes_half_occlusion(self):
        # Background at d = 8 px with a foreground square at d = 20 px (cols 30..49 in the left).
        # Left background at u in [18, 30) lands under the square in the right view: no match.
        tex_bg = texture(H, W + 40, seed=1, sigma_px=1.2).astype(np.uint8)
        tex_fg = texture(20, 20, seed=2, sigma_px=1.2).astype(np.uint8)
        left, right = tex_bg[:, 20:20 + W].copy(), tex_bg[:, 28:28 + W].copy()
        left[14:34, 30:50] = tex_fg
        right[14:34, 10:30] = tex_fg
        depth = stereo_depth_m(left, right, calib(), StereoConfig())
        assert np.isfinite(depth[16:32, 19:29]).mean() < 0.2                      # half-occluded band
        assert np.isfinite(depth[16:32, 33:47]).mean() > 0.9                      # foreground
        assert np.nanmedian(depth[16:32, 33:47]) == pytest.approx(FX * B / 20, rel=0.02)
        assert np.isfinite(depth[2:12, 12:60]).mean() > 0.9                       # background
        assert np.nanmedian(depth[2:12, 12:60]) == pytest.approx(FX * B / 8, rel=0.02)

    def test_depth_range(self):
        left, right = plane_pair(0.05)
        depth = stereo_depth_m(left, right, calib(), StereoConfig(min_depth_m=0.02, max_depth_m=0.04))
        assert not np.isfinite(depth).any()  # the whole plane is beyond max_depth_m

    def test_num_disparities(self):
        # fx·B / min_depth = 220·0.0045/0.02 = 49.5 px → 64 (next multiple of 16 above 49.5 + 1),
        # capped at half the width: 32 for a 64-px image.
        assert num_disparities_for(calib(), StereoConfig()) == 32
        assert num_disparities_for(calib(256, 192), StereoConfig()) == 64
        assert num_disparities_for(calib(256, 192), StereoConfig(num_disparities=96)) == 96
        with pytest.raises(ConfigError, match="num_disparities"):
            StereoConfig(num_disparities=40)

    def test_sequence(self):
        left, right = plane_pair(0.06)
        seq_l, seq_r = np.stack([left, left]), np.stack([right, right])
        calls = []
        depth = stereo_depth_sequence_m(seq_l, seq_r, calib(), StereoConfig(), progress=calls.append)
        assert depth.shape == (2, H, W) and depth.dtype == np.float32 and calls == [1, 1]
        np.testing.assert_array_equal(depth[0], stereo_depth_m(left, right, calib(), StereoConfig()))

    def test_bad_input(self):
        left, right = plane_pair(0.06)
        with pytest.raises(InputError, match="right_rgb_u8"):
            stereo_depth_m(left, right[:, :-1], calib(), StereoConfig())
        with pytest.raises(InputError, match="calib.image_size"):
            stereo_depth_m(left, right, calib(80, 48), StereoConfig())
        with pytest.raises(InputError, match="left_rgb_u8"):
            stereo_depth_sequence_m(left, right, calib(), StereoConfig())
