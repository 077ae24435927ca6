"""The bench suite's pure parts: ablation configs and the check against the baselines."""

import numpy as np
import pytest

from surg_invnerf_ros.apps.suite import ABLATIONS, baseline_check, variant
from surg_invnerf_ros.config import FitConfig
from surg_invnerf_ros.errors import ConfigError


def row(method, seq="s0", epe=1.0, end=2.0, delta=0.9, e3=1.0, oa=0.95):
    return {"sequence": seq, "method": method, "epe_px": epe, "epe_end_px": end, "delta_avg": delta,
            "err3d_mm": e3, "oa": oa}


class TestVariant:
    def test_ablations_switch_only_their_keys(self):
        base = FitConfig()
        assert variant(base, ABLATIONS["invnerf_error_driven"]).sampler.strategy == "error_driven"
        assert variant(base, ABLATIONS["invnerf_bidir"]).loss.directions == "both"
        nostereo = variant(base, ABLATIONS["invnerf_nostereo"])
        assert nostereo.loss.stereo_weight == 0.0 and nostereo.loss.line_of_sight_weight == 0.0
        assert nostereo.sampler == base.sampler

    def test_bad_override_names_the_key(self):
        with pytest.raises(ConfigError, match="sampler.strategy"):
            variant(FitConfig(), ["sampler.strategy=random"])


class TestBarCheck:
    def test_best_baseline_per_metric(self):
        # lk has the best EPE (2.0), csrt the best δ (0.90) and 3D (1.5 mm): the baseline check uses each.
        rows = [row("lk", epe=2.0, end=4.0, delta=0.85, e3=2.0), row("csrt", epe=3.0, end=5.0, delta=0.90, e3=1.5),
                row("invnerf", epe=1.3, end=1.9, delta=0.96, e3=1.1, oa=0.93)]
        (b,) = baseline_check(rows)
        assert b["best_epe_px"] == 2.0 and b["best_delta_avg"] == 0.90 and b["best_err3d_mm"] == 1.5
        # 1.3 <= 0.7*2.0=1.4; 1.9 <= 0.5*4.0=2.0; 0.96 >= 0.95; 1.1 <= 0.8*1.5=1.2; 0.93 >= 0.9
        assert all(b[k] for k in ("epe_ok", "epe_end_ok", "delta_ok", "err3d_ok", "oa_ok"))

    def test_each_shortfall_is_reported(self):
        rows = [row("lk", epe=2.0, end=4.0, delta=0.90, e3=1.0),
                row("invnerf", epe=1.5, end=2.5, delta=0.94, e3=0.9, oa=0.8)]
        (b,) = baseline_check(rows)
        assert not b["epe_ok"] and not b["epe_end_ok"] and not b["delta_ok"]
        assert not b["err3d_ok"] and not b["oa_ok"]

    def test_sequences_without_invnerf_are_skipped(self):
        assert baseline_check([row("lk"), row("dis")]) == []


def test_bench_command_with_size_and_frames(tmp_path):
    """`surg-invnerf bench --size --frames` resizes the set; a fitted method gets its Fits row."""
    import json

    from surg_invnerf_ros.apps.cli import main

    rc = main(["bench", "--out", str(tmp_path), "--preset", "quick", "--seeds", "0", "--size", "64x48",
               "--frames", "6", "--methods", "zero", "invnerf", "--no-speed", "--no-ros", "--no-kinematics",
               "--time-budget-s", "2", "--set", "max_steps=20"])
    assert rc == 0
    doc = json.loads((tmp_path / "quick" / "bench.json").read_text())
    assert {(s["width"], s["height"], s["frames"]) for s in doc["sequences"]} == {(64, 48, 6)}
    assert {f["method"] for f in doc["fits"]} == {"invnerf"} and len(doc["fits"]) == len(doc["sequences"])
    assert all(0 < f["steps"] <= 20 and f["flow_s"] > 0 for f in doc["fits"])


def test_bench_command_takes_every_preset(capsys):
    from typing import get_args

    from surg_invnerf_ros.apps.bench import PRESETS
    from surg_invnerf_ros.apps.cli import build_parser
    from surg_invnerf_ros.config.bench import BenchPreset

    parser = build_parser()
    assert set(get_args(BenchPreset)) == set(PRESETS)
    for preset in PRESETS:
        assert parser.parse_args(["bench", "--preset", preset]).preset == preset
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_bench_with_every_part_skipped_still_writes_its_summary(tmp_path):
    from surg_invnerf_ros.apps.cli import main

    out = tmp_path / "new" / "folder"
    assert main(["bench", "--out", str(out), "--no-accuracy", "--no-kinematics", "--no-ros", "--no-speed"]) == 0
    assert (out / "summary.json").read_text().strip() == "{}"


def test_publish_docs_copies_what_this_run_produced(tmp_path):
    from surg_invnerf_ros.apps.suite import publish_docs

    out, docs = tmp_path / "out", tmp_path / "docs"
    for rel in ("hard/bench.md", "hard/vs_baseline.md", "speed.md", "ros.md"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(f"# {rel}\n")
    docs.mkdir()
    (docs / "ros.md").write_text("# an older run\n")
    written = publish_docs(out, docs, produced=["hard/bench.md", "hard/vs_baseline.md", "speed.md"])
    assert sorted(p.name for p in written) == ["bench.md", "speed.md", "vs_baseline.md"]
    assert (docs / "bench.md").read_text() == "# hard/bench.md\n"
    assert (docs / "ros.md").read_text() == "# an older run\n"  # not part of this run: left alone
    assert not (docs / "bench_default.md").exists()


def test_speed_markdown_shows_the_fit_step():
    from surg_invnerf_ros.apps.suite import _speed_markdown

    speed = {"generator_s": {"64x48": 0.5}, "frontend_fps": {"64x48": {"lk_64pts_fps": 100.0}},
             "fit_step": {"size": "256x192", "frames": 48, "device": "cpu", "steps": 5, "aten_ops_per_step": 1234.0,
                          "ms_per_step": 150.0, "ms_by_stage": {"forward": 60.0, "backward": 80.0, "optimiser": 10.0},
                          "top_ops": [("aten::mul", 200.0), ("aten::add", 100.0)]}}
    md = _speed_markdown(speed)
    assert "| 1234 | 150.0 | 60.0 | 80.0 | 10.0 |" in md and "`aten::mul` 200" in md


def test_speed_markdown_shows_the_steps_to_reach_the_accuracy():
    from surg_invnerf_ros.apps.suite import _speed_markdown, first_reaching

    rows = [{"max_steps": n, "steps": n, "fit_s": n / 10, "epe_px": e, "epe_end_px": e + 0.1, "err3d_mm": 0.5,
             "delta_avg": 0.9} for n, e in ((100, 0.5), (200, 0.2), (400, 0.22))]
    assert first_reaching(rows, 0.24)["steps"] == 200
    assert first_reaching(rows, 0.1) is None
    speed = {"generator_s": {"64x48": 0.5}, "frontend_fps": {"64x48": {"lk_64pts_fps": 100.0}},
             "convergence": {"size": "64x48", "frames": 6, "target_epe_px": 0.24, "rows": rows}}
    md = _speed_markdown(speed)
    assert "| 200 | 200 | 20 | 0.200 | 0.300 | 0.50 | 0.900 |" in md
    assert "first reached with 200 steps (20 s)" in md
    speed["convergence"]["target_epe_px"] = 0.1
    assert "No budget here reached EPE ≤ 0.1 px" in _speed_markdown(speed)


def test_accuracy_by_steps_fits_once_per_budget_on_one_front_end(tmp_path, monkeypatch):
    import surg_invnerf_ros.apps.suite as suite
    from surg_invnerf_ros.config import SynthConfig
    from surg_invnerf_ros.io.sequence import read_sequence
    from surg_invnerf_ros.io.trackfile import read_tracks
    from surg_invnerf_ros.synth.generate import generate_sequence

    generate_sequence(tmp_path / "seq", SynthConfig(frames=4, width=64, height=48, seed=0))
    seq = read_sequence(tmp_path / "seq")
    gt = read_tracks(tmp_path / "seq" / "gt" / "tracks.npz")
    fronts = []
    real = suite.run_frontend
    monkeypatch.setattr(suite, "run_frontend", lambda *a, **k: fronts.append(1) or real(*a, **k))
    rows = suite.accuracy_by_steps(seq, gt, (2, 6), FitConfig(device="cpu"))
    assert len(fronts) == 1
    assert [r["max_steps"] for r in rows] == [2, 6]
    assert all(r["steps"] <= r["max_steps"] for r in rows) and rows[1]["steps"] > rows[0]["steps"]
    assert all(np.isfinite(r["epe_px"]) and r["fit_s"] > 0 for r in rows)
    report = suite.convergence_report(seq, gt, steps=(2,))
    assert report["size"] == "64x48" and report["frames"] == 4 and len(report["rows"]) == 1
    assert len(fronts) == 2  # one front end per report
