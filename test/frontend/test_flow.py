"""DIS flow and the multi-gap flow bank with cycle and appearance checks."""

import numpy as np
import pytest

from surg_invnerf_ros.config import FlowConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.frontend.flow import compute_flow_bank, dis_flow, gap_pairs

from .synthetic import texture, translated_video, view

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
        # Without the appearance test, DIS is smooth over the patch both ways and the cycle closes:
        b0 = compute_flow_bank(v, FlowConfig(gaps=(1,), min_ncc=-1.0, photo_thresh=0.0))
        assert b0.valid[idx[(0, 1)]][18:30, 26:38].mean() > 0.9

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
