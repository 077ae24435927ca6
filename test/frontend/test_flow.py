"""DIS flow and the multi-gap flow bank with cycle and appearance checks."""

import numpy as np
import pytest

from surg_invnerf_ros.config import FlowConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.frontend.flow import (
    compute_flow_bank,
    dis_flow,
    dis_level,
    flow_roughness_px,
    gap_pairs,
    make_dis,
    to_grey,
)

from .synthetic import remapped_view, texture, translated_video, view, wavy_field

INTERIOR = (slice(10, -10), slice(10, -10))


class TestDisFlow:
    def test_smoke(self):
        v = translated_video(2, (0.0, 0.0))
        f = dis_flow(v[0], v[1], FlowConfig())
        assert f.shape == (48, 64, 2) and f.dtype == np.float32

    @pytest.mark.parametrize("preset", ["ultrafast", "medium"])
    def test_known_translation(self, preset):
        # Content moves by (1.3, -0.7) px: uv_dst = uv_src + (1.3, -0.7) everywhere.
        tex = texture(200, 200)
        f = dis_flow(view(tex, 0, 0), view(tex, 1.3, -0.7), FlowConfig(preset=preset))
        err = np.abs(f[INTERIOR] - np.array([1.3, -0.7], np.float32))
        assert err.max() < 0.2

    def test_full_resolution_is_more_accurate_on_smooth_deformation(self):
        # The medium preset stops at pyramid level 1 (half resolution); level 0 resolves a
        # 1.5 px wave over 32 px (measured 0.11 vs 0.36 px mean error).
        tex = texture(300, 330, sigma_px=1.5)
        flow_px = wavy_field(128, 96, 1.5, 1.0)
        src, dst = remapped_view(tex, flow_px), view(tex, 0, 0, 128, 96)
        err = {fs: np.abs(dis_flow(src, dst, FlowConfig(finest_scale=fs)) - flow_px)[INTERIOR].mean() for fs in (0, 1)}
        assert err[0] < 0.5 * err[1]
        assert make_dis(FlowConfig(finest_scale=2), 128).getFinestScale() == 2

    def test_wide_frames_skip_the_finest_levels(self):
        # The finest level rises while the next coarser one is still at least min_width_px wide.
        assert [dis_level(0, 512, w) for w in (256, 640, 1023, 1024, 1280, 2047, 2048, 4096)] == [0, 0, 0, 1, 1, 1, 2, 3]
        assert dis_level(2, 512, 256) == 2 and dis_level(2, 512, 1280) == 2  # never below finest_scale
        assert dis_level(0, 0, 4096) == 0 and dis_level(1, 0, 4096) == 1  # 0: finest_scale alone
        assert make_dis(FlowConfig(dis_min_width_px=512), 1280).getFinestScale() == 1
        assert make_dis(FlowConfig(dis_min_width_px=512), 640).getFinestScale() == 0
        assert make_dis(FlowConfig(), 1280).getFinestScale() == 0  # off by default: full resolution

    def test_a_wide_frame_gets_its_flow_at_the_coarser_level(self):
        # dis_flow picks the level from the frame it is given: the same as a DIS at level 1 made by hand.
        tex = texture(300, 1200, sigma_px=3.0)
        u, v = np.meshgrid(np.arange(1024, dtype=np.float32), np.arange(128, dtype=np.float32))
        flow_px = np.stack([1.5 * np.sin(2 * np.pi * v / 128), np.cos(2 * np.pi * u / 144)], -1)  # smooth at 640 px
        src, dst = remapped_view(tex, flow_px), view(tex, 0, 0, 1024, 128)
        by_hand = make_dis(FlowConfig(finest_scale=1, dis_min_width_px=0), 1024)
        expected = by_hand.calc(to_grey(src), to_grey(dst), None)
        np.testing.assert_array_equal(dis_flow(src, dst, FlowConfig(dis_min_width_px=512)), expected)
        full = dis_flow(src, dst, FlowConfig())
        assert np.abs(full - expected).max() > 1e-3  # level 0 is another computation
        assert np.abs(expected - flow_px)[INTERIOR].mean() < 0.2

    def test_bad_input(self):
        a = np.zeros((48, 64, 3), np.uint8)
        with pytest.raises(InputError, match="dst_rgb_u8"):
            dis_flow(a, np.zeros((40, 64, 3), np.uint8), FlowConfig())
        with pytest.raises(InputError, match="src_rgb_u8"):
            dis_flow(a.astype(np.float32), a, FlowConfig())


class TestFlowBank:
    def test_pairs(self):
        p = gap_pairs(5, (1, 2, 8))
        # gap 1: 4 couples, gap 2: 3 couples, gap 8 >= T: none; each couple both ways, adjacent.
        assert p.shape == (14, 2) and p.dtype == np.int64
        assert {tuple(r) for r in p} >= {(0, 1), (1, 0), (3, 4), (4, 3), (0, 2), (2, 0), (2, 4), (4, 2)}
        assert (p[0::2, ::-1] == p[1::2]).all()

    def test_smoke_and_translation(self):
        v = translated_video(5, (0.8, 0.4))
        b = compute_flow_bank(v, FlowConfig(gaps=(1, 2)))
        Q = len(b.pairs)
        assert Q == 2 * (4 + 3)
        assert b.flow_px.shape == (Q, 48, 64, 2) and b.flow_px.dtype == np.float32
        assert b.valid.shape == (Q, 48, 64) and b.valid.dtype == bool
        assert b.cycle_err_px.shape == (Q, 48, 64) and b.cycle_err_px.dtype == np.float32
        for q, (i, j) in enumerate(b.pairs):
            expect = (j - i) * np.array([0.8, 0.4])
            assert np.abs(b.flow_px[q][INTERIOR] - expect).max() < 0.25
            assert b.valid[q][INTERIOR].mean() > 0.95
            assert np.median(b.cycle_err_px[q][INTERIOR]) < 0.2

    def test_target_outside_image_is_invalid(self):
        v = translated_video(2, (3.0, 0.0))  # content moves right: the right 3 columns leave the image
        b = compute_flow_bank(v, FlowConfig(gaps=(1,)))
        assert not b.valid[0][:, -2:].any()
        assert np.isinf(b.cycle_err_px[0][:, -2:]).all()

    def test_region_in_one_frame_only_is_invalid(self):
        v = translated_video(3, (0.8, 0.4))
        v[1, 16:32, 24:40] = texture(16, 16, seed=7).astype(np.uint8)  # appears in frame 1 only
        b = compute_flow_bank(v, FlowConfig(gaps=(1,)))
        idx = b.index()
        for pair in [(0, 1), (1, 0), (2, 1)]:
            valid = b.valid[idx[pair]]
            assert valid[18:30, 26:38].mean() < 0.4, pair   # flagged
            assert valid[4:12, 8:56].mean() > 0.95, pair    # the rest untouched
        # Without the appearance and roughness tests, DIS at half resolution (the medium preset's
        # level) is smooth over the patch both ways and the cycle closes:
        b0 = compute_flow_bank(v, FlowConfig(gaps=(1,), min_ncc=-1.0, photo_thresh=0.0, finest_scale=1,
                                             max_roughness_px=0.0))
        assert b0.valid[idx[(0, 1)]][18:30, 26:38].mean() > 0.9

    def test_roughness(self):
        # An affine flow (smooth deformation) equals its local mean; a ±0.3 px checkerboard does not.
        u, v = np.meshgrid(np.arange(64, dtype=np.float32), np.arange(48, dtype=np.float32))
        affine = np.stack([0.02 * u + 0.01 * v + 1.0, -0.03 * u + 0.5], -1)
        assert flow_roughness_px(affine)[INTERIOR].max() < 1e-4
        checker = affine + 0.3 * ((u + v) % 2 == 0)[..., None]
        assert flow_roughness_px(checker)[INTERIOR].min() > 0.1

    def test_roughness_check_flags_a_patched_flow(self):
        # Full-resolution DIS pieces the region seen in frame 1 only together from unrelated
        # texture; with the appearance test off, the roughness test alone flags a part of it.
        v = translated_video(3, (0.8, 0.4))
        v[1, 16:32, 24:40] = texture(16, 16, seed=7).astype(np.uint8)
        valid = {}
        for rough in (0.0, 0.1):
            b = compute_flow_bank(v, FlowConfig(gaps=(1,), min_ncc=-1.0, photo_thresh=0.0, max_roughness_px=rough))
            valid[rough] = b.valid[b.index()[(0, 1)]]
        assert valid[0.1][18:30, 26:38].mean() < valid[0.0][18:30, 26:38].mean() - 0.1
        assert valid[0.1][4:12, 8:56].mean() > 0.95  # smooth motion passes

    def test_moving_occluder_fails_the_cycle(self):
        # A 32-px patch moves 6 px left over a background moving 1 px right (96x64, so that DIS
        # resolves both motions). Background of frame 0 at u in [33, 40) lands under the patch in
        # frame 1: its backward flow is the patch's, so the cycle error is about |1 - (-6)| = 7 px.
        v = translated_video(2, (1.0, 0.0), width=96, height=64)
        patch = texture(32, 32, seed=3).astype(np.uint8)
        v[0, 16:48, 40:72] = patch
        v[1, 16:48, 34:66] = patch
        b = compute_flow_bank(v, FlowConfig(gaps=(1,), min_ncc=-1.0, photo_thresh=0.0))  # cycle only
        assert b.valid[0][20:44, 34:39].mean() < 0.3
        assert np.median(b.cycle_err_px[0][20:44, 34:39]) > 2.0
        assert b.valid[0][2:12, 8:88].mean() > 0.95

    def test_mask_excludes_pixels(self):
        v = translated_video(2, (0.5, 0.0))
        mask = np.zeros((2, 48, 64), bool)
        mask[0, 10:20, 10:20] = True
        b = compute_flow_bank(v, FlowConfig(gaps=(1,)), mask=mask)
        assert not b.valid[0][10:20, 10:20].any()
        assert b.valid[0][25:40, 25:40].all()
        # Reverse pair: pixels of frame 1 that land in the masked square are excluded too.
        assert not b.valid[1][12:18, 12:18].any()

    def test_bad_input(self):
        v = translated_video(2, (0.5, 0.0))
        with pytest.raises(InputError, match="mask"):
            compute_flow_bank(v, FlowConfig(), mask=np.zeros((2, 40, 64), bool))
        with pytest.raises(InputError, match="left_rgb_u8"):
            compute_flow_bank(v[0], FlowConfig())
