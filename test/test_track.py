"""End to end on a tiny synthetic sequence: fit falls, beats zero motion, is deterministic, warm-starts."""

import dataclasses

import numpy as np
import pytest
import torch

from surg_invnerf_ros.config import FitConfig, FrontendConfig, load_config
from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.io.sequence import read_sequence
from surg_invnerf_ros.io.trackfile import read_tracks
from surg_invnerf_ros.structs import Queries
from surg_invnerf_ros import track

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
        from surg_invnerf_ros.eval.baselines import BASELINES

        assert track.METHODS[0] == "invnerf" and set(BASELINES) <= set(track.METHODS)
