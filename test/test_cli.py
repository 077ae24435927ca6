"""End to end through the `surg-invnerf` command line on a tiny synthetic sequence (64×48×8)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surg_invnerf_ros.cli import main
from surg_invnerf_ros.io.trackfile import read_tracks


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """The installed entry point in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "surg_invnerf_ros.cli", *argv],
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
