"""End to end through the `surg-invnerf` command line on a tiny synthetic sequence (64×48×8)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surg_invnerf_ros.apps.cli import main
from surg_invnerf_ros.io.sequence import read_sequence
from surg_invnerf_ros.io.trackfile import read_tracks


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """The installed entry point in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "surg_invnerf_ros.apps.cli", *argv],
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def tiny_seq(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "seq"
    assert main(["synth", str(out), "--frames", "8", "--size", "64x48", "--seed", "3",
                 "--queries", "12", "--instrument"]) == 0
    return out


class TestSynth:
    def test_writes_sequence_and_gt(self, tiny_seq):
        assert len(list((tiny_seq / "left").glob("*.png"))) == 8
        assert len(list((tiny_seq / "right").glob("*.png"))) == 8
        gt = read_tracks(tiny_seq / "gt" / "tracks.npz")
        assert gt.uv.shape == (8, 12, 2)

    def test_bad_size_is_a_usage_error(self, tmp_path):
        proc = run_cli("synth", str(tmp_path / "x"), "--size", "64by48")
        assert proc.returncode == 2
        assert "--size" in proc.stderr
        assert "Traceback" not in proc.stderr


class TestTrackAndEval:
    @pytest.mark.parametrize("method", ["lk", "dis"])
    def test_track_then_eval(self, tiny_seq, tmp_path, method):
        pred = tmp_path / f"{method}.npz"
        csv = tmp_path / f"{method}.csv"
        assert main(["track", str(tiny_seq), "--out", str(pred), "--method", method, "--csv", str(csv)]) == 0
        tracks = read_tracks(pred)
        assert tracks.uv.shape == (8, 12, 2)
        assert tracks.meta["method"] == method
        assert csv.read_text().splitlines()[0] == "frame,id,u,v,visible,x,y,z"
        proc = run_cli("eval", str(tiny_seq), "--pred", str(pred), "--json")
        assert proc.returncode == 0, proc.stderr
        metrics = json.loads(proc.stdout)
        assert 0.0 <= metrics["delta_avg"] <= 1.0
        assert np.isfinite(metrics["epe_px"])

    def test_the_overlay_draws_the_tracks_on_the_left_images(self, tiny_seq, tmp_path):
        import cv2

        sheet = tmp_path / "overlay.png"
        assert main(["track", str(tiny_seq), "--out", str(tmp_path / "p.npz"), "--method", "lk",
                     "--overlay", str(sheet)]) == 0
        img = cv2.imread(str(sheet))
        seq = read_sequence(tiny_seq)
        H, W = seq.left_rgb_u8.shape[1:3]
        assert img.shape == (H, 4 * W, 3)  # one row, frames first to last

    def test_frontend_settings_reach_the_tracker(self, tiny_seq, tmp_path):
        cfg = tmp_path / "run.yaml"
        cfg.write_text("max_steps: 5\nfrontend:\n  flow:\n    gaps: [1, 2]\n")
        pred = tmp_path / "p.npz"
        assert main(["track", str(tiny_seq), "--out", str(pred), "--config", str(cfg),
                     "--set", "frontend.workers=1"]) == 0
        meta = read_tracks(pred).meta
        assert meta["config"]["frontend"]["flow"]["gaps"] == [1, 2] and meta["config"]["frontend"]["workers"] == 1
        assert meta["steps"] == 5

    def test_a_front_end_too_large_for_ram_is_one_line(self, tiny_seq, tmp_path):
        proc = run_cli("track", str(tiny_seq), "--out", str(tmp_path / "p.npz"),
                       "--set", "frontend.max_memory_share=0.0000001")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()[-1:]
        assert "front end needs about" in line and "GiB is available" in line and "64x48" in line

    def test_eval_of_ground_truth_is_perfect(self, tiny_seq):
        proc = run_cli("eval", str(tiny_seq), "--pred", str(tiny_seq / "gt" / "tracks.npz"), "--json")
        assert proc.returncode == 0, proc.stderr
        metrics = json.loads(proc.stdout)
        assert metrics["epe_px"] == pytest.approx(0.0, abs=1e-4)
        assert metrics["delta_avg"] == pytest.approx(1.0)

    def test_eval_prints_a_table(self, tiny_seq):
        proc = run_cli("eval", str(tiny_seq), "--pred", str(tiny_seq / "gt" / "tracks.npz"))
        assert proc.returncode == 0, proc.stderr
        assert "|" in proc.stdout and "epe" in proc.stdout.lower()


class TestUserErrors:
    def test_missing_folder(self, tmp_path):
        proc = run_cli("track", str(tmp_path / "nope"), "--out", str(tmp_path / "p.npz"), "--method", "lk")
        assert proc.returncode == 2
        assert "nope" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "p.npz").exists()

    def test_unknown_method(self, tiny_seq, tmp_path):
        proc = run_cli("track", str(tiny_seq), "--out", str(tmp_path / "p.npz"), "--method", "magic")
        assert proc.returncode == 2
        assert "magic" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_bad_config_value(self, tiny_seq, tmp_path):
        proc = run_cli("track", str(tiny_seq), "--out", str(tmp_path / "p.npz"), "--time-budget-s", "-5")
        assert proc.returncode == 2
        assert "time_budget_s" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_eval_missing_pred(self, tiny_seq, tmp_path):
        proc = run_cli("eval", str(tiny_seq), "--pred", str(tmp_path / "missing.npz"))
        assert proc.returncode == 2
        assert "missing.npz" in proc.stderr


@pytest.fixture(scope="module")
def moving_seq(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kin") / "seq"
    assert main(["synth", str(out), "--frames", "6", "--size", "64x48", "--seed", "1",
                 "--queries", "6", "--camera-motion"]) == 0
    assert (out / "kinematics.csv").is_file()
    return out


class TestKinematicsOptions:
    def test_hand_eye_needs_a_4x4(self, moving_seq, tmp_path):
        bad = tmp_path / "he.yaml"
        bad.write_text("T_ecm_cam: [1, 0, 0]\n")
        proc = run_cli("track", str(moving_seq), "--out", str(tmp_path / "p.npz"), "--method", "lk",
                       "--hand-eye", str(bad))
        assert proc.returncode == 2 and "T_ecm_cam" in proc.stderr and "Traceback" not in proc.stderr

    def test_hand_eye_needs_a_rotation(self, moving_seq, tmp_path):
        bad = tmp_path / "he.yaml"
        bad.write_text("T_ecm_cam: [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]\n")
        proc = run_cli("track", str(moving_seq), "--out", str(tmp_path / "p.npz"), "--method", "lk",
                       "--hand-eye", str(bad))
        assert proc.returncode == 2 and "T_ecm_cam: expected a rotation" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_hand_eye_is_applied_to_the_poses(self, moving_seq, tmp_path):
        from surg_invnerf_ros.apps.cli import apply_kinematics_options
        from surg_invnerf_ros.io.sequence import read_sequence

        he = tmp_path / "he.yaml"
        he.write_text("T_ecm_cam: [[1, 0, 0, 0.01], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]\n")
        seq = read_sequence(moving_seq)
        before = seq.T_world_cam.copy()
        after = apply_kinematics_options(seq, he, 0.0).T_world_cam
        # T_world_cam = T_world_ecm · T_ecm_cam: the camera sits 1 cm along the ECM's own x axis
        np.testing.assert_allclose(after[:, :3, 3], before[:, :3, 3] + 0.01 * before[:, :3, 0], atol=1e-12)

    def test_kinematics_offset_shifts_the_poses(self, moving_seq):
        from surg_invnerf_ros.apps.cli import apply_kinematics_options
        from surg_invnerf_ros.io.sequence import read_sequence

        seq = read_sequence(moving_seq)
        before = seq.T_world_cam.copy()
        dt_s = (seq.stamps_ns[1] - seq.stamps_ns[0]) * 1e-9
        after = apply_kinematics_options(seq, None, dt_s).T_world_cam  # one frame later: frame t gets frame t+1's pose
        np.testing.assert_allclose(after[:-1], before[1:], atol=1e-6)
        np.testing.assert_allclose(after[-1], before[-1], atol=1e-12)

    def test_kinematics_offset_needs_kinematics(self, tiny_seq, tmp_path):
        proc = run_cli("track", str(tiny_seq), "--out", str(tmp_path / "p.npz"), "--method", "lk",
                       "--kinematics-offset-s", "0.04")
        assert proc.returncode == 2 and "--kinematics-offset-s" in proc.stderr and "Traceback" not in proc.stderr

    def test_kinematics_off_reaches_the_config(self, moving_seq):
        from surg_invnerf_ros.apps.cli import build_parser, load_run_configs

        args = build_parser().parse_args(["track", str(moving_seq), "--out", "x.npz", "--kinematics", "off"])
        assert load_run_configs(args)[0].use_kinematics is False

    def test_pose_refine_reaches_the_config(self, moving_seq):
        from surg_invnerf_ros.apps.cli import build_parser, load_run_configs

        args = build_parser().parse_args(["track", str(moving_seq), "--out", "x.npz", "--pose-refine"])
        assert load_run_configs(args)[0].pose_refine is True
