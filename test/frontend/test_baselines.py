"""Classical baselines: shapes, the zero baseline's exactness, beating it, 3D and its fill rule."""

import numpy as np
import pytest

from surg_invnerf_ros.config import FrontendConfig
from surg_invnerf_ros.errors import ConfigError, InputError
from surg_invnerf_ros.frontend import baselines as baselines_mod
from surg_invnerf_ros.frontend import flow as flow_mod
from surg_invnerf_ros.frontend import lk as lk_mod
from surg_invnerf_ros.frontend.baselines import BASELINES, _make_csrt, run_baseline, xyz_from_depth_m
from surg_invnerf_ros.geometry import unproject_m
from surg_invnerf_ros.structs import Queries, Sequence, StereoCalib

from ..frontend.synthetic import H, W, texture, translated_truth, view

T = 8
VEL = (1.1, 0.6)
FX, B, Z = 220.0, 0.0045, 0.06  # disparity fx·B/z = 16.5 px
K = np.array([[FX, 0, W / 2], [0, FX, H / 2], [0, 0, 1.0]])
Q_TUV = np.array([[0, 30, 20], [4, 25, 25], [7, 40, 30.0]])


def _has_csrt() -> bool:
    try:
        _make_csrt()
        return True
    except ConfigError:
        return False


HAS_CSRT = _has_csrt()  # the project's own install has opencv-contrib; other builds (a ROS workspace's) may not
NO_CSRT = pytest.mark.skipif(not HAS_CSRT, reason="this OpenCV build has no TrackerCSRT (opencv-contrib)")


def each(names):
    """Parameters for `names`, with CSRT skipped (and said so) where the OpenCV build lacks it."""
    return [pytest.param(n, marks=NO_CSRT) if n == "csrt" else n for n in names]


@pytest.fixture(scope="module")
def seq():
    tex = texture(250, 250)
    d = FX * B / Z
    left = np.stack([view(tex, t * VEL[0], t * VEL[1]) for t in range(T)])
    right = np.stack([view(tex, t * VEL[0] - d, t * VEL[1]) for t in range(T)])
    calib = StereoCalib(K=K, baseline_m=B, image_size=(W, H))
    return Sequence(left, right, calib, np.arange(T, dtype=np.int64) * 33_000_000,
                    Queries(ids=np.array([7, 8, 9]), query_tuv=Q_TUV), name="plane")


@pytest.fixture(scope="module")
def results(seq):
    return {name: run_baseline(name, seq, FrontendConfig()) for name in BASELINES if name != "csrt" or HAS_CSRT}


class TestRunBaseline:
    @pytest.mark.parametrize("name", each(BASELINES))
    def test_smoke(self, results, name):
        tr = results[name]
        assert tr.uv.shape == (T, 3, 2) and tr.uv.dtype == np.float32
        assert tr.visible.shape == (T, 3) and tr.visible.dtype == bool
        assert tr.xyz.shape == (T, 3, 3) and tr.xyz.dtype == np.float32
        np.testing.assert_array_equal(tr.ids, [7, 8, 9])
        assert tr.meta["method"] == name
        assert {"track", "total"} <= set(tr.meta["timings_s"])

    def test_zero_is_the_query(self, results):
        tr = results["zero"]
        np.testing.assert_array_equal(tr.uv, np.broadcast_to(Q_TUV[:, 1:].astype(np.float32), (T, 3, 2)))
        assert tr.visible.all()

    @pytest.mark.parametrize("name", each(["lk", "lk_query", "dis", "csrt"]))
    def test_beats_zero(self, results, name):
        truth = translated_truth(Q_TUV, T, VEL)
        epe = lambda tr: np.linalg.norm(tr.uv - truth, axis=-1).mean()  # noqa: E731
        assert epe(results["zero"]) > 3.0  # points move up to 1.25 px a frame for 7 frames
        assert epe(results[name]) < 0.25 * epe(results["zero"])
        assert results[name].visible.mean() > 0.9

    @pytest.mark.parametrize("name", ["zero", "lk"])
    def test_xyz_on_the_plane(self, results, name):
        tr = results[name]
        assert np.isfinite(tr.xyz).all()
        np.testing.assert_allclose(tr.xyz[..., 2], Z, rtol=0.03)
        np.testing.assert_allclose(tr.xyz, unproject_m(tr.uv.astype(np.float64), tr.xyz[..., 2], K), atol=1e-6)

    def test_shared_depth(self, seq, results):
        depth = np.full((T, H, W), 0.05, np.float32)
        tr = run_baseline("zero", seq, FrontendConfig(), depth_m=depth)
        np.testing.assert_allclose(tr.xyz[..., 2], 0.05)
        assert "depth" not in tr.meta["timings_s"]

    def test_bad_input(self, seq):
        with pytest.raises(ConfigError, match="'kalman'.*zero, lk, lk_query, dis, csrt"):
            run_baseline("kalman", seq, FrontendConfig())
        bad = Sequence(seq.left_rgb_u8, seq.right_rgb_u8[:, :, :-2], seq.calib, seq.stamps_ns, seq.queries)
        with pytest.raises(InputError, match="right_rgb_u8"):
            run_baseline("zero", bad, FrontendConfig())
        with pytest.raises(InputError, match="depth_m"):
            run_baseline("zero", seq, FrontendConfig(), depth_m=np.zeros((T, H, W - 1), np.float32))


class LazyFrames:
    """A stack decoded when indexed (as `io.sequence.FrameStack`): counts the frames it hands out and refuses to
    become one array, so a test fails if anything reads the whole clip at once."""

    def __init__(self, frames: np.ndarray) -> None:
        self._frames = frames
        self.shape, self.dtype, self.ndim = frames.shape, frames.dtype, frames.ndim
        self.reads = 0

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index):
        out = self._frames[index].copy()
        self.reads += 1 if out.ndim == 3 else len(out)
        return out

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole clip was read into one array")


class TestLazyFrames:
    """Frames decoded when read, a few grey frames held and depth a few frames at a time: the same tracks."""

    @pytest.mark.parametrize("name", each(BASELINES))
    def test_same_tracks_as_frames_in_ram(self, seq, results, name, monkeypatch):
        grey_frames = flow_mod.GreyFrames
        hold_two = lambda frames: grey_frames(frames, max_bytes=2 * H * W)  # noqa: E731
        monkeypatch.setattr(flow_mod, "GreyFrames", hold_two)  # the DIS chains (prepare_video)
        monkeypatch.setattr(lk_mod, "GreyFrames", hold_two)
        monkeypatch.setattr(baselines_mod, "DEPTH_CHUNK_FRAMES", 3)
        left, right = LazyFrames(seq.left_rgb_u8), LazyFrames(seq.right_rgb_u8)
        lazy = Sequence(left, right, seq.calib, seq.stamps_ns, seq.queries, name="plane")
        tr = run_baseline(name, lazy, FrontendConfig())
        ref = results[name]
        np.testing.assert_array_equal(tr.uv, ref.uv)
        np.testing.assert_array_equal(tr.visible, ref.visible)
        np.testing.assert_allclose(tr.xyz, ref.xyz, rtol=1e-6, equal_nan=True)
        assert right.reads == T  # each frame once, for its depth
        assert left.reads >= T

    def test_grey_frames_hold_at_most_their_budget(self, seq):
        grey = flow_mod.GreyFrames(seq.left_rgb_u8, max_bytes=3 * H * W)
        for t in [0, 1, 2, 3, 0, 5, 1]:
            np.testing.assert_array_equal(grey[t], flow_mod.to_grey(seq.left_rgb_u8[t]))
            assert len(grey._held) <= 3
        assert list(grey._held) == [0, 5, 1]  # the least recently read leave first
        assert len(grey) == T and grey.shape == (T, H, W)

    def test_a_stack_is_checked_without_reading_it(self, seq):
        lazy = LazyFrames(seq.left_rgb_u8)
        assert flow_mod.check_rgb_frames("left", lazy) is lazy and lazy.reads == 0
        with pytest.raises(InputError, match="left: expected uint8"):
            flow_mod.check_rgb_frames("left", seq.left_rgb_u8[..., :2])


class TestXyzFill:
    def test_known_values(self):
        depth = np.full((3, H, W), 0.05, np.float32)
        depth[0, 18:23, 28:33] = np.nan        # hole around (30, 20) at frame 0: 3 px to the nearest
        depth[1] = np.nan                      # no depth at all at frame 1
        uv = np.broadcast_to(np.array([[30.0, 20.0]], np.float32), (3, 1, 2)).copy()
        depth[2, 20, 30] = 0.07
        xyz = xyz_from_depth_m(uv, depth, K, q_frame=np.array([2]), fill_radius_px=3)
        # frame 0: nearest valid pixel in the 7x7 window (rule 2); frame 2: exact; frame 1: carried
        # from frame 2, the query side (rule 3).
        np.testing.assert_allclose(xyz[:, 0, 2], [0.05, 0.07, 0.07], rtol=1e-6)
        xyz_r1 = xyz_from_depth_m(uv, depth, K, q_frame=np.array([2]), fill_radius_px=1)
        assert xyz_r1[0, 0, 2] == pytest.approx(0.07)  # window too small: carried outwards from frame 2

    def test_nothing_known_near_the_query(self):
        depth = np.full((4, H, W), np.nan, np.float32)
        depth[2] = 0.06
        depth[3] = 0.08
        uv = np.full((4, 1, 2), 20.0, np.float32)
        xyz = xyz_from_depth_m(uv, depth, K, q_frame=np.array([0]), fill_radius_px=2)
        # Frames 0 and 1 have nothing between them and the query frame: nearest known frame (2).
        np.testing.assert_allclose(xyz[:, 0, 2], [0.06, 0.06, 0.06, 0.08], rtol=1e-6)

    def test_never_known_stays_nan(self):
        depth = np.full((2, H, W), np.nan, np.float32)
        uv = np.zeros((2, 1, 2), np.float32) + 10
        xyz = xyz_from_depth_m(uv, depth, K, q_frame=np.array([0]), fill_radius_px=3)
        assert np.isnan(xyz).all()
