"""End to end on a tiny synthetic sequence: fit falls, beats zero motion, is deterministic, warm-starts."""

import dataclasses

import numpy as np
import pytest
import torch

from surg_invnerf_ros import track
from surg_invnerf_ros.config import FitConfig, FrontendConfig, load_config
from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.io.sequence import read_sequence
from surg_invnerf_ros.io.trackfile import read_tracks
from surg_invnerf_ros.structs import Queries

TINY = ["time_budget_s=0", "num_threads=1", "log_every=10", "sampler.rays_per_step=128",
        "sampler.refresh_every=40", "sampler.refresh_chunk=2048", "render.inference_samples=24"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from surg_invnerf_ros.synth.generate import SynthConfig, generate_sequence

    out = tmp_path_factory.mktemp("seq") / "tiny"
    generate_sequence(out, SynthConfig(frames=8, width=64, height=48, seed=3, instrument=False, camera_motion=False,
                                       difficulty="hard", num_queries=16))
    seq = read_sequence(out)
    gt = read_tracks(out / "gt" / "tracks.npz")
    fe = track.run_frontend(seq, FrontendConfig(), {})
    return seq, gt, fe


def _epe(tr, gt):
    vis = gt.visible
    return float(np.linalg.norm(tr.uv - gt.uv, axis=-1)[vis].mean())


class TestTrackSequence:
    def test_chunked_inference_equals_unchunked(self, tiny):
        seq, _, fe = tiny
        res = track.fit_invnerf(seq, load_config(FitConfig, None, TINY + ["max_steps=12"]), frontend=fe)
        qt = np.asarray(seq.queries.query_tuv, np.float64)
        whole = track.infer_points(res, qt, chunk=10**6)
        parts = track.infer_points(res, qt, chunk=7)  # a query chunk and frame chunks of one frame
        np.testing.assert_allclose(parts.uv_px, whole.uv_px, atol=1e-5)
        np.testing.assert_array_equal(parts.visible, whole.visible)
        np.testing.assert_allclose(parts.xyz_cam_m, whole.xyz_cam_m, atol=1e-7, equal_nan=True)

    def test_fit_and_inference_run_on_the_configured_threads(self, tiny, monkeypatch):
        seq, _, fe = tiny
        seen = {}
        infer_points = track.infer_points

        def recording(*args, **kwargs):
            seen["inference"] = torch.get_num_threads()
            return infer_points(*args, **kwargs)

        monkeypatch.setattr(track, "infer_points", recording)
        before = torch.get_num_threads()
        other = 2 if before != 2 else 3
        res = track.fit_invnerf(seq, load_config(FitConfig, None, TINY + ["max_steps=2", f"num_threads={other}"]),
                                frontend=fe)
        assert torch.get_num_threads() == before  # restored after the fit
        track.infer_tracks(res, seq, seq.queries)
        assert seen["inference"] == other and torch.get_num_threads() == before

    def test_the_fit_flushes_denormals(self, tiny, monkeypatch):
        seq, _, fe = tiny
        tiny_float = torch.tensor([1e-39])  # a denormal float32
        flushed = []
        fitter_run = track.Fitter.run

        def recording(self, *args, **kwargs):
            flushed.append(float((tiny_float * 1.0)[0]) == 0.0)
            return fitter_run(self, *args, **kwargs)

        monkeypatch.setattr(track.Fitter, "run", recording)
        assert float((tiny_float * 1.0)[0]) > 0
        track.fit_invnerf(seq, load_config(FitConfig, None, TINY + ["max_steps=2"]), frontend=fe)
        assert flushed == [True]
        assert float((tiny_float * 1.0)[0]) > 0  # off again after the fit

    def test_fit_falls_and_beats_zero_motion(self, tiny):
        seq, gt, fe = tiny
        cfg = load_config(FitConfig, None, TINY + ["max_steps=160", "log_every=1"])
        history = []
        res = track.fit_invnerf(seq, cfg, FrontendConfig(), progress=history.append, frontend=fe)
        assert res.meta["stop_reason"] in ("max_steps", "converged") and 0 < res.meta["steps"] <= 160
        assert len(history) >= 2
        first = np.mean([h["loss_anchor"] for h in history[:3]])
        last = np.mean([h["loss_anchor"] for h in history[-3:]])
        assert last < 0.7 * first  # the reprojection error (px, + disparity px) falls
        tr = track.infer_tracks(res, seq, seq.queries)
        assert tr.uv.shape == (8, 16, 2) and tr.visible.shape == (8, 16) and tr.xyz.shape == (8, 16, 3)
        assert np.isfinite(tr.uv).all() and np.isfinite(tr.xyz).all()
        zero = np.broadcast_to(seq.queries.uv_px[None], gt.uv.shape)
        zero_epe = float(np.linalg.norm(zero - gt.uv, axis=-1)[gt.visible].mean())
        assert _epe(tr, gt) < 0.7 * zero_epe
        z_err = np.abs(tr.xyz[..., 2] - gt.xyz[..., 2])[gt.visible]
        assert np.nanmean(z_err) < 0.005  # metres, left camera frame of each frame
        for key in ("config", "steps", "time_s", "final_losses", "converged_fraction", "timings_s"):
            assert key in tr.meta
        assert {"forward_s", "backward_s", "inference_s"} <= set(tr.meta["timings_s"])

    def test_cpu_determinism(self, tiny):
        seq, _, fe = tiny
        cfg = load_config(FitConfig, None, TINY + ["max_steps=8", "device=cpu", "seed=5"])
        a = track.infer_tracks(track.fit_invnerf(seq, cfg, frontend=fe), seq, seq.queries)
        b = track.infer_tracks(track.fit_invnerf(seq, cfg, frontend=fe), seq, seq.queries)
        np.testing.assert_array_equal(a.uv, b.uv)
        np.testing.assert_array_equal(a.xyz, b.xyz)
        c = track.infer_tracks(track.fit_invnerf(seq, dataclasses.replace(cfg, seed=6), frontend=fe), seq, seq.queries)
        assert not np.array_equal(a.uv, c.uv)

    def test_depth_consensus_changes_depth_only(self, tiny):
        seq, _, fe = tiny
        res = track.fit_invnerf(seq, load_config(FitConfig, None, TINY + ["max_steps=8"]), frontend=fe)
        out = {}
        for mode in ("none", "median"):
            res.cfg = load_config(FitConfig, None, TINY + ["max_steps=8", f"render.depth_consensus={mode}"])
            out[mode] = track.infer_tracks(res, seq, seq.queries)
        np.testing.assert_array_equal(out["none"].uv, out["median"].uv)
        np.testing.assert_array_equal(out["none"].visible, out["median"].visible)
        assert not np.allclose(out["none"].xyz, out["median"].xyz)
        ray = lambda xyz: xyz[..., :2] / xyz[..., 2:]
        np.testing.assert_allclose(ray(out["none"].xyz), ray(out["median"].xyz), atol=1e-5)

    def test_warm_start_with_fewer_frames(self, tiny):
        seq, _, fe = tiny
        cfg = load_config(FitConfig, None, TINY + ["max_steps=10"])
        short = dataclasses.replace(seq, left_rgb_u8=seq.left_rgb_u8[:5], right_rgb_u8=seq.right_rgb_u8[:5],
                                    stamps_ns=seq.stamps_ns[:5],
                                    T_world_cam=None if seq.T_world_cam is None else seq.T_world_cam[:5])
        first = track.fit_invnerf(short, cfg)
        state = first.state_dict()
        assert state["num_frames"] == 5
        grown = track.fit_invnerf(seq, cfg, init_state=state, frontend=fe)
        assert grown.model.num_frames == 8
        assert grown.model.map.layers[0].features.time_grids[0].shape[2] == 8
        tr = track.infer_tracks(grown, seq, seq.queries)
        assert np.isfinite(tr.uv).all()

    def test_warm_start_of_a_window_that_slid_on(self, tiny):
        seq, _, _ = tiny
        cfg = load_config(FitConfig, None, TINY + ["max_steps=10"])

        def window(a, b):
            poses = np.tile(np.eye(4), (b - a, 1, 1))
            poses[:, 0, 3] = 0.001 * np.arange(a, b)  # the camera moves 1 mm per frame along x
            return dataclasses.replace(seq, left_rgb_u8=seq.left_rgb_u8[a:b], right_rgb_u8=seq.right_rgb_u8[a:b],
                                       stamps_ns=seq.stamps_ns[a:b], T_world_cam=poses,
                                       queries=Queries(ids=np.array([0]), query_tuv=np.array([[0.0, 20.0, 20.0]])))

        first = track.fit_invnerf(window(0, 6), cfg)
        state = first.state_dict()
        np.testing.assert_array_equal(state["stamps_ns"], seq.stamps_ns[:6])
        np.testing.assert_allclose(state["T_world_anchor"][0, 3], 0.0)
        slid = track.fit_invnerf(window(2, 8), cfg, init_state=state)
        assert slid.meta["warm_start"] == {"used": True, "drop_first": 2}
        # the world stays the first window's: frame 2's pose is 2 mm from it, not the identity
        np.testing.assert_allclose(slid.data.T_world_cam[0, 0, 3].item(), 0.002, atol=1e-9)
        np.testing.assert_allclose(slid.T_world_anchor[0, 3], 0.0)
        apart = track.fit_invnerf(window(6, 8), cfg, init_state=slid.state_dict())
        assert apart.meta["warm_start"] == {"used": True, "drop_first": 4}
        fresh = track.fit_invnerf(window(0, 2), cfg, init_state=apart.state_dict())  # back in time
        assert fresh.meta["warm_start"] == {"used": False, "drop_first": 0}
        np.testing.assert_allclose(fresh.data.T_world_cam[1, 0, 3].item(), 0.001, atol=1e-9)

    def test_a_query_carried_by_its_canonical_point(self, tiny):
        seq, _, fe = tiny
        res = track.fit_invnerf(seq, load_config(FitConfig, None, TINY + ["max_steps=5"]), frontend=fe)
        first = track.infer_points(res, seq.queries.query_tuv)
        assert first.canonical.shape == (len(seq.queries), 3) and np.isfinite(first.canonical).all()
        moved = seq.queries.query_tuv.copy()
        moved[:, 1:] = 1.0  # the pixel is not read where the canonical point is given
        again = track.infer_points(res, moved, canonical=first.canonical)
        np.testing.assert_allclose(again.uv_px, first.uv_px, atol=1e-4)
        np.testing.assert_array_equal(again.canonical, first.canonical)
        partly = first.canonical.copy()
        partly[0] = np.nan  # unknown: taken from its frame and pixel
        mixed = track.infer_points(res, np.vstack([seq.queries.query_tuv[:1], moved[1:]]), canonical=partly)
        np.testing.assert_allclose(mixed.uv_px, first.uv_px, atol=1e-4)
        tr = track.infer_tracks(res, seq, seq.queries, canonical=np.full((len(seq.queries), 3), np.nan))
        np.testing.assert_allclose(tr.meta["canonical"], first.canonical, atol=1e-6)

    def test_a_final_refresh_measures_the_last_model(self, tiny):
        seq, _, fe = tiny
        base = TINY + ["max_steps=3", "sampler.refresh_every=0"]
        plain = track.fit_invnerf(seq, load_config(FitConfig, None, base), frontend=fe)
        assert "refresh_s" not in plain.meta["timings_s"]
        final = track.fit_invnerf(seq, load_config(FitConfig, None, base + ["sampler.final_refresh=true",
                                                                            "sampler.refresh_max_rays=64"]),
                                  frontend=fe)
        assert final.meta["timings_s"]["refresh_s"] > 0 and final.meta["steps"] == 3

    def test_warm_start_alignment(self):
        st = {"stamps_ns": np.array([10, 20, 30, 40])}
        assert track.warm_start_alignment(st, np.array([10, 20, 30, 40, 50])) == 0
        assert track.warm_start_alignment(st, np.array([30, 40, 50])) == 2
        assert track.warm_start_alignment(st, np.array([40])) == 3
        assert track.warm_start_alignment(st, np.array([50, 60])) == 4  # all after: every old frame left
        assert track.warm_start_alignment(st, np.array([5, 60])) is None  # starts before, shares nothing
        assert track.warm_start_alignment(st, np.array([20, 25, 30])) is None  # disagrees on the shared frames
        assert track.warm_start_alignment({}, np.array([1, 2])) == 0

    def test_reconstruct_writes_depth_and_ply(self, tiny, tmp_path):
        seq, _, fe = tiny
        res = track.fit_invnerf(seq, load_config(FitConfig, None, TINY + ["max_steps=20"]), frontend=fe)
        paths = track.reconstruct(res, seq, [0, 7], tmp_path)
        names = sorted(p.name for p in paths)
        assert names == ["cloud_000000.ply", "cloud_000007.ply", "depth_000000.npy", "depth_000000.png",
                         "depth_000007.npy", "depth_000007.png"]
        depth = np.load(tmp_path / "depth_000000.npy")
        assert depth.shape == (48, 64) and np.isfinite(depth).mean() > 0.5
        head = (tmp_path / "cloud_000000.ply").read_bytes()[:200]
        n = int(head.split(b"element vertex ")[1].split(b"\n")[0])
        assert n == int(np.isfinite(depth).sum()) and head.startswith(b"ply\nformat binary_little_endian")

    def test_bad_method_and_queries(self, tiny):
        seq, _, fe = tiny
        with pytest.raises(ConfigError, match="method"):
            track.track_sequence(seq, method="raft")
        res = track.fit_invnerf(seq, load_config(FitConfig, None, TINY + ["max_steps=2"]), frontend=fe)
        from surg_invnerf_ros.errors import InputError

        with pytest.raises(InputError, match="queries"):
            track.infer_tracks(res, seq, Queries(ids=np.array([1]), query_tuv=np.array([[9.0, 3.0, 3.0]])))

    @pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
    def test_cuda_without_gpu_is_a_clear_error(self, tiny):
        seq, _, _ = tiny
        with pytest.raises(ConfigError, match="fit.device: cuda requested"):
            track.track_sequence(seq, "invnerf", FitConfig(device="cuda"))

    def test_profile_fit_reports_stages(self, tiny):
        seq, _, _ = tiny
        prof = track.profile_fit(seq, load_config(FitConfig, None, TINY + ["max_steps=5", "sampler.refresh_every=0"]))
        assert prof["steps"] == 5.0
        for key in ("stereo_s", "flow_s", "chains_s", "correspondence_s", "forward_s", "backward_s", "inference_s"):
            assert prof[key] > 0.0, key

    def test_methods_list(self):
        from surg_invnerf_ros.frontend.baselines import BASELINES

        assert track.METHODS[0] == "invnerf" and set(BASELINES) <= set(track.METHODS)


class _ShiftMap:
    """A known deformation: the material point u sits at u + b_t in frame t (world metres)."""

    def __init__(self, shift_m):
        self.shift_m = shift_m

    def to_canonical(self, x, frame):
        return x - self.shift_m[frame]

    def from_canonical(self, u, frame):
        return u + self.shift_m[frame]


class _Poses:
    def __init__(self, T_world_cam):
        self.T_world_cam = T_world_cam

    def all_poses(self):
        return self.T_world_cam

    def all_inv_poses(self):
        return None if self.T_world_cam is None else torch.linalg.inv(self.T_world_cam)


class TestConsensusDepth:
    """`consensus_depth_m`: the median over visible frames of each point carried through the map."""

    def _scene(self, with_poses: bool, T=15, N=6, seed=0):
        from scipy.spatial.transform import Rotation
        g = torch.Generator().manual_seed(seed)
        shift = 0.002 * torch.randn(T, 3, generator=g, dtype=torch.float64)
        X0 = torch.tensor([0.0, 0.0, 0.06], dtype=torch.float64) + 0.01 * torch.randn(N, 3, generator=g, dtype=torch.float64)
        Twc = None
        if with_poses:
            Twc = torch.eye(4, dtype=torch.float64).repeat(T, 1, 1)
            rotvec = np.random.default_rng(seed).normal(0, 0.05, (T, 3))
            Twc[:, :3, :3] = torch.as_tensor(Rotation.from_rotvec(rotvec).as_matrix())
            Twc[:, :3, 3] = 0.003 * torch.randn(T, 3, generator=g, dtype=torch.float64)
        X_world = X0[None] + shift[:, None]  # (T, N, 3)
        if Twc is None:
            xyz_true = X_world
        else:
            Tcw = torch.linalg.inv(Twc)
            xyz_true = torch.einsum("tij,tnj->tni", Tcw[:, :3, :3], X_world) + Tcw[:, None, :3, 3]
        depth_noise = 1 + 0.02 * torch.randn(T, N, generator=g, dtype=torch.float64)
        return _ShiftMap(shift), _Poses(Twc), xyz_true, xyz_true * depth_noise[..., None]

    @pytest.mark.parametrize("with_poses,window", [(False, 0), (True, 0), (True, 4)])
    def test_median_of_carried_depths(self, with_poses, window):
        model, data, xyz_true, xyz_meas = self._scene(with_poses)
        T, N, _ = xyz_meas.shape
        visible = torch.ones(T, N, dtype=torch.bool)
        visible[3, :] = False
        xyz_meas[3] *= 3.0  # an outlier in a frame where the point is hidden: must not count
        out = track.consensus_depth_m(model, data, xyz_meas, visible, chunk=40, window=window)  # several chunks
        # Brute force: carry frame s's measurement to t, take its depth, median over visible s.
        Twc, Tcw = data.all_poses(), data.all_inv_poses()
        want = np.empty((T, N))
        for t in range(T):
            zs = []
            for s in range(T):
                if not visible[s, 0] or (window and abs(s - t) > window):
                    continue
                x = xyz_meas[s] if Twc is None else xyz_meas[s] @ Twc[s, :3, :3].T + Twc[s, :3, 3]
                x = x - model.shift_m[s] + model.shift_m[t]
                x = x if Tcw is None else x @ Tcw[t, :3, :3].T + Tcw[t, :3, 3]
                zs.append(x[:, 2].numpy())
            want[t] = np.median(np.stack(zs), axis=0) if len(zs) % 2 else np.sort(np.stack(zs), 0)[len(zs) // 2 - 1]
        np.testing.assert_allclose(out[..., 2].numpy(), want, rtol=1e-9)
        # The ray (the tracked pixel) is unchanged; the depth error shrinks.
        ray = lambda x: (x[..., :2] / x[..., 2:]).numpy()
        np.testing.assert_allclose(ray(out), ray(xyz_meas), rtol=1e-9)
        err = lambda x: (x - xyz_true)[..., 2].abs()[visible].mean()
        assert err(out) < (0.5 if not window else 0.7) * err(xyz_meas)
