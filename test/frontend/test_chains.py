"""Multi-gap flow chains for query points (the dis baseline)."""

import numpy as np
import pytest

from surg_invnerf_ros.config import FlowConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.frontend.chains import track_dis_chained, track_dis_streaming
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
