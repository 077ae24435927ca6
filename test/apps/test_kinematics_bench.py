"""The kinematics benchmark: its targets and a tiny end-to-end run."""

import numpy as np
import pytest

from surg_invnerf_ros.apps.kinematics_bench import kinematics_targets, run_kinematics_bench
from surg_invnerf_ros.config import BenchConfig, FitConfig


def row(method, e3, epe, seq="s0"):
    return {"sequence": seq, "method": method, "err3d_mm": e3, "epe_px": epe}


class TestKinematicsBar:
    def test_pass_and_each_failure(self):
        ok = kinematics_targets([row("kin_exact", 0.7, 0.5), row("kin_off", 1.0, 0.5), row("kin_noisy", 0.9, 0.49)])[0]
        assert ok["exact_3d_ok"] and ok["exact_2d_ok"] and ok["noisy_ok"]
        assert ok["err3d_ratio_exact"] == pytest.approx(0.7)
        bad = kinematics_targets([row("kin_exact", 0.85, 0.6), row("kin_off", 1.0, 0.5), row("kin_noisy", 1.1, 0.4)])[0]
        assert not bad["exact_3d_ok"] and not bad["exact_2d_ok"] and not bad["noisy_ok"]

    def test_incomplete_sequences_are_skipped(self):
        assert kinematics_targets([row("kin_exact", 0.7, 0.5), row("kin_off", 1.0, 0.5)]) == []


def test_tiny_run_writes_every_variant(tmp_path):
    cfg = BenchConfig(preset="quick", frames=6, width=64, height=48, num_queries=6, seeds=(3,))
    fit = FitConfig(device="cpu", max_steps=15, time_budget_s=0.0, log_every=5)
    result = run_kinematics_bench(tmp_path, cfg, fit)
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["kin_exact", "kin_off", "kin_noisy"]  # the quick set has one camera-motion sequence
    assert all(np.isfinite(r["epe_px"]) and np.isfinite(r["err3d_mm"]) for r in result["rows"])
    assert len(result["targets"]) == 1 and 0 < result["targets"][0]["err3d_ratio_exact"] < np.inf
    assert all(0 <= r["depth_bias_mm"] <= r["depth_err_mm"] + 1e-9 and np.isfinite(r["err3d_lateral_mm"])
               for r in result["rows"])
    (cue,) = result["depth_cues"]
    assert cue["stereo_px_per_mm"] > 0 and cue["parallax_px_per_mm"] > 0 and cue["camera_travel_mm"] > 0
    saved = sorted(p.name for p in (tmp_path / "tracks").glob("*/*.npz"))
    assert saved == ["kin_exact.npz", "kin_noisy.npz", "kin_off.npz"]
    # the noisy variant shares the images and ground truth; only the poses differ
    seqs = sorted(p.name for p in (tmp_path / "sequences").iterdir())
    assert len(seqs) == 2 and seqs[1] == seqs[0] + "_kinnoise"
    exact, noisy = (tmp_path / "sequences" / s for s in seqs)
    assert (exact / "left" / "000000.png").read_bytes() == (noisy / "left" / "000000.png").read_bytes()
    assert (exact / "kinematics.csv").read_text() != (noisy / "kinematics.csv").read_text()
    text = (tmp_path / "kinematics.md").read_text()
    assert "kin_noisy" in text and "0.5 mm" in text and "40 ms" in text and "## Depth cues" in text
