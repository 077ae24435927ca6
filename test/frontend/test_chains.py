"""Multi-gap flow chains: dense long-range correspondences and sparse chained tracks."""

import numpy as np
import pytest

from surg_invnerf_ros.config import FlowConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.frontend.chains import build_correspondences, track_dis_chained, track_dis_streaming
from surg_invnerf_ros.frontend.flow import compute_flow_bank
from surg_invnerf_ros.structs import Queries

from .synthetic import translated_truth, translated_video

VEL = (0.7, 0.3)
T = 17
INTERIOR = (slice(12, -12), slice(12, -12))
CFG = FlowConfig(gaps=(1, 2, 4, 8), keyframe_stride=8, max_chain_frames=16, long_range_step=4)


@pytest.fixture(scope="module")
def video():
    return translated_video(T, VEL)


@pytest.fixture(scope="module")
def bank(video):
    return compute_flow_bank(video, CFG)


@pytest.fixture(scope="module")
def corr(bank):
    return build_correspondences(bank, T, CFG)


class TestBuildCorrespondences:
    def test_smoke(self, bank, corr):
        Q = len(corr.pairs)
        assert corr.pairs.dtype == np.int64 and corr.pairs.shape == (Q, 2)
        assert corr.flow_px.shape == (Q, 48, 64, 2) and corr.flow_px.dtype == np.float32
        assert corr.confidence.shape == (Q, 48, 64) and corr.confidence.dtype == np.float32
        assert corr.confidence.min() >= 0 and corr.confidence.max() <= 1
        assert len({tuple(p) for p in corr.pairs}) == Q  # no duplicates

    def test_pair_set(self, bank, corr):
        pairs = {tuple(p) for p in corr.pairs}
        # Every direct gap pair, both ways...
        assert {tuple(p) for p in bank.pairs} <= pairs
        assert {(i, i + g) for g in CFG.gaps for i in range(T - g)} <= pairs
        # ...and keyframe (0, 8, 16) long-range pairs at distances 12 and 16, both ways.
        assert {(0, 12), (12, 0), (0, 16), (16, 0), (4, 16), (16, 4), (8, 0) } <= pairs

    def test_composed_translation(self, corr):
        # Chains over d frames of a translation by VEL per frame: flow = d * VEL in the interior.
        long_pairs = [(q, i, j) for q, (i, j) in enumerate(corr.pairs) if abs(j - i) >= 12]
        assert len(long_pairs) >= 6
        for q, i, j in long_pairs:
            conf = corr.confidence[q][INTERIOR]
            ok = conf > 0
            assert ok.mean() > 0.9, (i, j)
            err = np.abs(corr.flow_px[q][INTERIOR][ok] - (j - i) * np.asarray(VEL, np.float32))
            assert np.median(err) < 0.2 and err.max() < 0.8, (i, j)

    def test_confidence_decreases_with_length(self, corr):
        def mean_conf(d):
            qs = [q for q, (i, j) in enumerate(corr.pairs) if abs(j - i) == d]
            return np.mean([corr.confidence[q][INTERIOR].mean() for q in qs])
        c1, c12, c16 = mean_conf(1), mean_conf(12), mean_conf(16)
        assert c1 > c12 > c16 > 0

    def test_occlusion_breaks_chains(self, video):
        # A static flat patch covers frames 5..7 (from 4 to 8 a gap-4 link jumps over it, gap 8 too).
        v = video.copy()
        v[5:8, 16:32, 24:40] = 128
        cfg = FlowConfig(gaps=(1, 2), keyframe_stride=8, max_chain_frames=12, long_range_step=4)
        b = compute_flow_bank(v, cfg)
        c = build_correspondences(b, T, cfg)
        idx = {tuple(p): q for q, p in enumerate(c.pairs)}
        # With only gaps 1 and 2, every path visits one of frames 5..7. Frame-0 pixels (22..30,
        # 18..26) sit at (26.2..34.2, 19.8..27.8) in frame 6, under the patch: lost at frame 12.
        assert c.confidence[idx[(0, 12)]][18:26, 22:30].max() == 0
        assert c.confidence[idx[(0, 12)]][4:12, 8:56].mean() > 0.5

    def test_long_gap_jumps_over_occlusion(self, video):
        v = video.copy()
        v[5:8, 16:32, 24:40] = 128
        cfg = FlowConfig(gaps=(1, 2, 4), keyframe_stride=8, max_chain_frames=12, long_range_step=4)
        b = compute_flow_bank(v, cfg)
        c = build_correspondences(b, T, cfg)
        idx = {tuple(p): q for q, p in enumerate(c.pairs)}
        # 0 -> 4 -> 8 -> 12 (gap 4 links) avoids frames 5..7: the chain survives behind the patch.
        # Frame-0 pixels (24..28, 20..26) move ~ (8.4, 3.6) by frame 12: still inside, still confident.
        q = idx[(0, 12)]
        assert c.confidence[q][20:24, 20:26].mean() > 0.3
        err = np.abs(c.flow_px[q][20:24, 20:26] - 12 * np.asarray(VEL, np.float32))
        assert err.max() < 0.8

    def test_long_direct_gap_merges_with_its_chain(self, video):
        # With gap 16 in the bank, pair (0, 16) is both a direct flow and a keyframe chain: each
        # pixel keeps the more confident of the two (on this tiny video the 11 px direct flow
        # fails in places where the chain holds).
        cfg16 = FlowConfig(gaps=(1, 2, 4, 8, 16), keyframe_stride=8, max_chain_frames=16, long_range_step=4)
        bank16 = compute_flow_bank(video, cfg16)
        merged = build_correspondences(bank16, T, cfg16)
        pairs = [tuple(p) for p in merged.pairs]
        assert pairs.count((0, 16)) == 1
        q, qd = pairs.index((0, 16)), bank16.index()[(0, 16)]
        direct = np.where(bank16.valid[qd], np.exp(-bank16.cycle_err_px[qd] / cfg16.conf_scale_px), 0)
        conf = merged.confidence[q]
        assert (conf >= direct - 1e-6).all()
        chained = conf > direct + 1e-6
        assert chained.mean() > 0.05  # the chain filled in
        np.testing.assert_array_equal(merged.flow_px[q][~chained], bank16.flow_px[qd][~chained])
        truth = 16 * np.asarray(VEL, np.float32)
        assert np.median(np.abs(merged.flow_px[q][chained] - truth)) < 0.2

    def test_bad_input(self, bank):
        with pytest.raises(InputError, match="pairs"):
            build_correspondences(bank, 5, CFG)  # the bank reaches frame 16


class TestTrackDisChained:
    def test_known_translation(self, bank):
        q_tuv = np.array([[0, 30, 20], [8, 20, 25], [16, 40, 30.0], [3, 25, 22]])
        queries = Queries(ids=np.arange(4), query_tuv=q_tuv)
        uv, vis = track_dis_chained(bank, queries, T, CFG)
        assert uv.shape == (T, 4, 2) and uv.dtype == np.float32
        assert vis.shape == (T, 4) and vis.dtype == bool
        truth = translated_truth(q_tuv, T, VEL)
        assert vis.all()
        assert np.abs(uv - truth).max() < 0.5
        np.testing.assert_array_equal(uv[q_tuv[:, 0].astype(int), np.arange(4)], q_tuv[:, 1:].astype(np.float32))

    def test_occlusion_and_reacquisition(self, video):
        # Point 0 is covered by a flat square at frames 5..7 (shorter than the longest gap, 8).
        q_tuv = np.array([[0, 30, 20], [0, 15, 12], [0, 45, 15], [0, 20, 35.0], [0, 50, 35]])
        truth = translated_truth(q_tuv, T, VEL)
        v = video.copy()
        for t in range(5, 8):
            u, w = np.rint(truth[t, 0]).astype(int)
            v[t, w - 8:w + 9, u - 8:u + 9] = 128
        b = compute_flow_bank(v, CFG)
        uv, vis = track_dis_chained(b, Queries(ids=np.arange(5), query_tuv=q_tuv), T, CFG)
        np.testing.assert_array_equal(vis[:, 0], [True] * 5 + [False] * 3 + [True] * 9)
        assert vis[:, 1:].all()
        # While hidden it rides with the others' median motion; afterwards a gap-4/8 path from
        # before the occlusion puts it back on the truth.
        assert np.abs(uv - truth).max() < 0.5

    def test_point_leaving_the_image_is_not_visible(self):
        v = translated_video(8, (3.0, 0.0))
        cfg = FlowConfig(gaps=(1, 2))
        b = compute_flow_bank(v, cfg)
        queries = Queries(ids=np.arange(2), query_tuv=np.array([[0, 55.0, 24.0], [0, 20.0, 24.0]]))
        uv, vis = track_dis_chained(b, queries, 8, cfg)
        assert vis[:2, 0].all() and not vis[-1, 0]  # u = 55 + 3t passes the border (63) by t = 3
        assert vis[:, 1].all()

    def test_streaming_matches_the_bank(self, video, bank):
        q_tuv = np.array([[0, 30, 20], [8, 20, 25], [16, 40, 30.0]])
        queries = Queries(ids=np.arange(3), query_tuv=q_tuv)
        calls = []
        uv_s, vis_s = track_dis_streaming(video, queries, CFG, progress=calls.append)
        uv_b, vis_b = track_dis_chained(bank, queries, T, CFG)
        np.testing.assert_allclose(uv_s, uv_b, atol=1e-5)
        np.testing.assert_array_equal(vis_s, vis_b)
        assert 0 < len(calls) <= len(bank.pairs)  # at most one couple of flows per bank row

    def test_bad_input(self, video, bank):
        queries = Queries(ids=np.arange(1), query_tuv=np.array([[20, 30, 20.0]]))
        with pytest.raises(InputError, match="queries"):
            track_dis_chained(bank, queries, T, CFG)
        with pytest.raises(InputError, match="mask"):
            track_dis_streaming(video, queries, CFG, mask=np.zeros((T, 48, 63), bool))
