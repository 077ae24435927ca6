"""Per-frame pose corrections: identity at init, frame 0 fixed, Rodrigues = scipy, gradients, the fit wiring."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from surg_invnerf_ros.config import FitConfig, FrontendConfig, load_config
from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.model.pose_correction import PoseCorrection, invert_rigid, rotvec_to_matrix


class TestRotvecToMatrix:
    def test_matches_scipy(self):
        rng = np.random.default_rng(0)
        v = rng.normal(size=(64, 3)) * rng.choice([1e-6, 1e-3, 0.5, 2.0], size=(64, 1))
        R = rotvec_to_matrix(torch.from_numpy(v)).numpy()
        np.testing.assert_allclose(R, Rotation.from_rotvec(v).as_matrix(), atol=1e-6)

    def test_zero_is_identity_with_finite_gradient(self):
        v = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
        R = rotvec_to_matrix(v)
        assert torch.equal(R.detach(), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
        (R * torch.randn(2, 3, 3, dtype=torch.float64)).sum().backward()
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0

    def test_invert_rigid(self):
        rng = np.random.default_rng(1)
        T = np.tile(np.eye(4), (5, 1, 1))
        T[:, :3, :3] = Rotation.from_rotvec(rng.normal(size=(5, 3))).as_matrix()
        T[:, :3, 3] = rng.normal(size=(5, 3))
        np.testing.assert_allclose(invert_rigid(torch.from_numpy(T)).numpy(), np.linalg.inv(T), atol=1e-12)


class TestPoseCorrection:
    def test_identity_at_init(self):
        pc = PoseCorrection(4)
        assert torch.equal(pc(torch.tensor([0, 3, 1, 1])), torch.eye(4).expand(4, 4, 4))
        assert float(pc.penalty().detach()) == 0.0
        assert pc.summary()["max_rot_deg"] == 0.0 and pc.summary()["max_trans_mm"] == 0.0

    def test_frame0_fixed_and_others_move(self):
        pc = PoseCorrection(3)
        with torch.no_grad():
            pc.rot_deg.fill_(90.0)
            pc.trans_mm.fill_(2.0)
        T = pc(torch.arange(3)).detach()
        assert torch.equal(T[0], torch.eye(4))
        np.testing.assert_allclose(T[1, :3, :3].numpy(), Rotation.from_rotvec(np.radians([90.0] * 3)).as_matrix(),
                                   atol=1e-6)
        np.testing.assert_allclose(T[2, :3, 3].numpy(), [0.002] * 3, rtol=1e-6)
        s = pc.summary()
        assert s["rot_deg"][0] == 0.0 and s["max_trans_mm"] == pytest.approx(2.0 * np.sqrt(3), rel=1e-5)

    def test_gradient_flows_to_all_but_frame0(self):
        pc = PoseCorrection(3)
        x = torch.tensor([[0.01, -0.02, 0.08]])
        frames = torch.tensor([0, 1, 2])
        T = pc(frames)
        y = torch.einsum("rij,rj->ri", T[:, :3, :3], x.expand(3, 3)) + T[:, :3, 3]
        (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        assert pc.rot_deg.grad[0].abs().sum() == 0 and pc.trans_mm.grad[0].abs().sum() == 0
        assert (pc.rot_deg.grad[1:].abs().sum(-1) > 0).all() and (pc.trans_mm.grad[1:].abs().sum(-1) > 0).all()

    def test_bad_num_frames(self):
        with pytest.raises(ValueError, match="num_frames"):
            PoseCorrection(0)


class TestConfig:
    def test_defaults_off(self):
        cfg = FitConfig()
        assert cfg.pose_refine is False and cfg.pose_lr > 0 and cfg.pose_reg_weight > 0

    def test_validated(self):
        with pytest.raises(ConfigError, match=r"fit\.pose_refine"):
            load_config(FitConfig, None, ["pose_refine=true", "use_kinematics=false"])
        with pytest.raises(ConfigError, match=r"fit\.pose_lr"):
            load_config(FitConfig, None, ["pose_lr=-1"])
        with pytest.raises(ConfigError, match=r"fit\.pose_reg_weight"):
            load_config(FitConfig, None, ["pose_reg_weight=-0.1"])


# ------------------------------------------------------------------------------------------------
# In the fit: a tiny moving-camera sequence whose kinematic poses are deliberately wrong
# ------------------------------------------------------------------------------------------------

TINY = ["time_budget_s=0", "num_threads=1", "log_every=10", "sampler.rays_per_step=128", "sampler.refresh_every=0",
        "render.inference_samples=16"]
ROT_ERR_DEG, TRANS_ERR_MM = 1.5, 1.5


def _pose_errors(T_est: np.ndarray, T_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame rotation (deg) and translation (mm) error of poses relative to frame 0."""
    rel_true = np.linalg.inv(T_true[0])[None] @ T_true
    D = np.linalg.inv(rel_true) @ T_est
    return np.degrees(Rotation.from_matrix(D[:, :3, :3]).magnitude()), 1e3 * np.linalg.norm(D[:, :3, 3], axis=-1)


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    from surg_invnerf_ros import track
    from surg_invnerf_ros.io.sequence import read_sequence
    from surg_invnerf_ros.synth.generate import SynthConfig, generate_sequence

    out = tmp_path_factory.mktemp("seq") / "moving"
    generate_sequence(out, SynthConfig(frames=6, width=64, height=48, seed=2, camera_motion=True, difficulty="easy",
                                       num_queries=8))
    seq = read_sequence(out)
    T_true = np.load(out / "gt" / "poses.npz")["T_world_cam"]
    rng = np.random.default_rng(7)
    noisy = np.array(seq.T_world_cam, np.float64)
    for t in range(1, len(noisy)):  # frame 0 defines the world; perturb the others in their camera frame
        dT = np.eye(4)
        dT[:3, :3] = Rotation.from_rotvec(np.radians(ROT_ERR_DEG) * _unit(rng)).as_matrix()
        dT[:3, 3] = 1e-3 * TRANS_ERR_MM * _unit(rng)
        noisy[t] = noisy[t] @ dT
    seq = dataclasses.replace(seq, T_world_cam=noisy)
    fe = track.run_frontend(seq, FrontendConfig(), {})
    return seq, T_true, fe


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


class TestFitWithPoseRefine:
    def test_off_by_default_leaves_poses_alone(self, moving):
        from surg_invnerf_ros import track

        seq, _, fe = moving
        res = track.fit_invnerf(seq, load_config(FitConfig, None, TINY + ["max_steps=3"]), frontend=fe)
        assert res.data.pose_correction is None and "pose_correction" not in res.meta
        assert torch.equal(res.data.all_poses(), res.data.T_world_cam)
        assert "pose" not in res.meta["final_losses"]

    def test_refine_runs_and_stays_bounded(self, moving):
        from surg_invnerf_ros import track

        seq, T_true, fe = moving
        cfg = load_config(FitConfig, None, TINY + ["max_steps=60", "pose_refine=true", "pose_lr=0.02"])
        res = track.fit_invnerf(seq, cfg, frontend=fe)
        pc = res.meta["pose_correction"]
        assert set(pc) >= {"max_rot_deg", "max_trans_mm", "rot_deg", "trans_mm"}
        assert pc["rot_deg"][0] == 0.0 and pc["trans_mm"][0] == 0.0  # frame 0 is the world
        assert 0.0 < pc["max_rot_deg"] < 5.0 and 0.0 < pc["max_trans_mm"] < 5.0  # it moved, and not far
        assert "pose" in res.meta["final_losses"] and np.isfinite(res.meta["final_losses"]["pose"])
        rot0, trans0 = _pose_errors(res.data.T_world_cam.double().cpu().numpy(), T_true)
        rot1, trans1 = _pose_errors(res.data.all_poses().detach().double().cpu().numpy(), T_true)
        assert rot1[0] < 1e-4 and trans1[0] < 1e-4
        # bounded: a few dozen steps must not make the kinematics much worse than they were
        assert rot1.mean() < rot0.mean() + 0.5 and trans1.mean() < trans0.mean() + 0.5
        tr = track.infer_tracks(res, seq, seq.queries)
        assert np.isfinite(tr.uv).all() and tr.meta["pose_correction"]["max_rot_deg"] == pc["max_rot_deg"]
