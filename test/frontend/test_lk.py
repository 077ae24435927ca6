"""Pyramidal LK tracking with visibility: translation, occlusion, the image border, both modes."""

import numpy as np
import pytest

from surg_invnerf_ros.config import LKConfig
from surg_invnerf_ros.errors import ConfigError, InputError
from surg_invnerf_ros.frontend.lk import LKPointTracker, patch_ncc, track_lk
from surg_invnerf_ros.structs import Queries

from .synthetic import texture, translated_truth, translated_video, view

VEL = (0.9, 0.4)
T = 12
CFG = LKConfig(win_size_px=15)
Q_TUV = np.array([[0, 30, 20], [5, 20, 25], [11, 40, 30.0]])  # queries at first, middle, last frame


@pytest.fixture(scope="module")
def video():
    return translated_video(T, VEL)


def occlude(video, truth, frames, value=128, half=8):
    """Flat square over point 0's true position at `frames`."""
    v = video.copy()
    for t in frames:
        u, w = np.rint(truth[t, 0]).astype(int)
        v[t, w - half:w + half + 1, u - half:u + half + 1] = value
    return v


class TestLKPointTracker:
    def test_known_translation(self):
        tex = texture(200, 200)
        uv = np.array([[20.0, 20.0], [40.0, 25.0], [32.5, 30.25]], np.float32)
        new, ok = LKPointTracker(CFG).track_pair(view(tex, 0, 0), view(tex, 1.5, -0.75), uv)
        assert new.shape == (3, 2) and new.dtype == np.float32 and ok.dtype == bool
        assert ok.all()
        np.testing.assert_allclose(new, uv + [1.5, -0.75], atol=0.1)

    def test_out_of_image_is_not_ok(self):
        tex = texture(200, 200)
        uv = np.array([[61.0, 20.0], [30.0, 20.0]], np.float32)  # 61 + 4 leaves the 64-px image
        new, ok = LKPointTracker(CFG).track_pair(view(tex, 0, 0), view(tex, 4.0, 0.0), uv)
        assert not ok[0] and ok[1]

    def test_ncc(self):
        g = texture(48, 64)[..., 0]
        uv = np.array([[30.0, 20.0]], np.float32)
        assert patch_ncc(g, uv, g, uv, 9)[0] == pytest.approx(1.0)
        assert patch_ncc(g, uv, 2 * g + 5, uv, 9)[0] == pytest.approx(1.0)  # gain/offset invariant
        assert patch_ncc(g, uv, np.full_like(g, 7.0), uv, 9)[0] == -1.0      # flat patch: no match

    def test_empty(self):
        img = np.zeros((48, 64, 3), np.uint8)
        new, ok = LKPointTracker(CFG).track_pair(img, img, np.zeros((0, 2), np.float32))
        assert new.shape == (0, 2) and ok.shape == (0,)

    def test_bad_input(self):
        img = np.zeros((48, 64, 3), np.uint8)
        with pytest.raises(InputError, match="cur_rgb_u8"):
            LKPointTracker(CFG).track_pair(img, np.zeros((40, 64, 3), np.uint8), np.zeros((1, 2)))


class TestTrackLK:
    @pytest.mark.parametrize("mode", ["chained", "from_query"])
    def test_known_translation(self, video, mode):
        queries = Queries(ids=np.arange(3), query_tuv=Q_TUV)
        uv, vis = track_lk(video, queries, CFG, mode)
        assert uv.shape == (T, 3, 2) and uv.dtype == np.float32
        assert vis.shape == (T, 3) and vis.dtype == bool
        assert vis.all()
        np.testing.assert_allclose(uv, translated_truth(Q_TUV, T, VEL), atol=0.15)

    @pytest.mark.parametrize("mode", ["chained", "from_query"])
    def test_occlusion(self, video, mode):
        queries = Queries(ids=np.arange(3), query_tuv=Q_TUV)
        truth = translated_truth(Q_TUV, T, VEL)
        uv, vis = track_lk(occlude(video, truth, range(4, 7)), queries, CFG, mode)
        np.testing.assert_array_equal(vis[:, 0], [True] * 4 + [False] * 3 + [True] * 5)
        # Re-acquired after the occluder leaves, on the true position.
        np.testing.assert_allclose(uv[7:, 0], truth[7:, 0], atol=0.2)

    def test_lost_point_holds_or_follows(self, video):
        q_tuv = np.concatenate([Q_TUV, [[0, 15, 12], [0, 45, 15], [0, 20, 35.0]]])  # >= 3 others to follow
        queries = Queries(ids=np.arange(6), query_tuv=q_tuv)
        truth = translated_truth(q_tuv, T, VEL)
        occluded = occlude(video, truth, range(4, 7))
        uv, vis = track_lk(occluded, queries, LKConfig(win_size_px=15, reacquire=False, lost_points="hold"),
                           "chained")
        assert vis[:4, 0].all() and not vis[4:, 0].any()  # never comes back without re-acquisition
        np.testing.assert_allclose(uv[4:, 0], np.broadcast_to(uv[3, 0], (8, 2)))
        # follow_median: the lost point moves with the others, which all move by VEL a frame.
        uv, vis = track_lk(occluded, queries, LKConfig(win_size_px=15, reacquire=False), "chained")
        assert not vis[4:, 0].any()
        np.testing.assert_allclose(uv[4:, 0], truth[4:, 0], atol=0.3)

    def test_leaving_the_image(self):
        v = translated_video(8, (3.0, 0.0))
        queries = Queries(ids=np.arange(1), query_tuv=np.array([[0, 52.0, 24.0]]))
        uv, vis = track_lk(v, queries, CFG, "chained")
        assert vis[:3, 0].all() and not vis[5:, 0].any()  # 52 + 3t > 63 from t = 4

    def test_bad_input(self, video):
        queries = Queries(ids=np.arange(1), query_tuv=np.array([[T, 30.0, 20.0]]))
        with pytest.raises(InputError, match="queries"):
            track_lk(video, queries, CFG, "chained")
        with pytest.raises(ConfigError, match="mode"):
            track_lk(video, Queries(ids=np.arange(1), query_tuv=np.array([[0, 30.0, 20.0]])), CFG, "sideways")
