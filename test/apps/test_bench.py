"""Benchmark runner on a tiny set, with the generator and reader replaced by in-memory fakes.

The last test runs the real generator, reader and baselines.
"""

import json

import cv2
import numpy as np
import pytest

from surg_invnerf_ros.apps import bench
from surg_invnerf_ros.config import BenchConfig
from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.eval.report import format_table, mean_rows, metrics_row
from surg_invnerf_ros.io.sequence import write_sequence
from surg_invnerf_ros.io.trackfile import write_tracks
from surg_invnerf_ros.structs import Queries, Sequence, StereoCalib, Tracks

TINY = dict(preset="quick", frames=5, width=64, height=48, num_queries=6, contact_frames=3)


def fake_sequence(spec):
    rng = np.random.default_rng(spec.seed + 10 * len(spec.difficulty))
    T, W, H, N = spec.frames, spec.width, spec.height, spec.num_queries
    left = rng.integers(0, 255, size=(T, H, W, 3), dtype=np.uint8)
    calib = StereoCalib(K=np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]]), baseline_m=0.005,
                        image_size=(W, H))
    uv = (rng.uniform(8, 40, size=(1, N, 2)) + np.arange(T)[:, None, None]).astype(np.float32)
    xyz = np.concatenate([rng.uniform(-0.01, 0.01, (T, N, 2)), np.full((T, N, 1), 0.06)], -1).astype(np.float32)
    gt = Tracks(ids=np.arange(N), uv=uv, visible=np.ones((T, N), bool), xyz=xyz)
    queries = Queries(ids=np.arange(N), query_tuv=np.c_[np.zeros(N), uv[0]])
    seq = Sequence(left_rgb_u8=left, right_rgb_u8=left.copy(), calib=calib, stamps_ns=np.arange(T),
                   queries=queries)
    return seq, gt


@pytest.fixture
def fakes(monkeypatch):
    """Replace the generator and reader; record generator calls and the GT by sequence name."""
    state = {"generated": [], "gt": {}, "seqs": {}}

    def generate(seq_dir, spec):
        seq, gt = fake_sequence(spec)
        write_sequence(seq_dir, seq.left_rgb_u8, seq.right_rgb_u8, seq.calib, seq.queries)
        write_tracks(seq_dir / "gt" / "tracks.npz", gt)
        state["generated"].append(spec.name)
        state["seqs"][spec.name] = seq
        state["gt"][spec.name] = gt

    def read(seq_dir):
        return state["seqs"][seq_dir.name]

    monkeypatch.setattr(bench, "_generate", generate)
    monkeypatch.setattr(bench, "_read", read)
    return state


def shifted(t, du):
    return Tracks(ids=t.ids, uv=t.uv + np.array([du, 0], np.float32), visible=t.visible, xyz=t.xyz)


class TestSpecs:
    def test_presets(self):
        hard = bench.bench_specs(BenchConfig(preset="hard"))
        assert len(hard) == 3
        assert all(s.difficulty == "hard" and s.instrument and s.camera_motion for s in hard)
        assert all((s.frames, s.width, s.height) == (48, 256, 192) for s in hard)
        default = bench.bench_specs(BenchConfig())
        assert len(default) >= 6 and all(s.frames >= 48 for s in default)
        assert any(s.instrument for s in default) and any(s.camera_motion for s in default)
        assert len({s.name for s in default}) == len(default)

    def test_overrides(self):
        specs = bench.bench_specs(BenchConfig(preset="hard", frames=96, seeds=(7,)))
        assert [(s.seed, s.frames, s.width) for s in specs] == [(7, 96, 256)]
        assert bench.bench_total(BenchConfig(preset="hard"), ["a", "b"]) == 6

    def test_bad_config(self):
        with pytest.raises(ConfigError, match="bench.preset"):
            BenchConfig(preset="huge")
        with pytest.raises(ConfigError, match="bench.frames"):
            BenchConfig(frames=1)


class TestRunBench:
    def test_writes_reports_and_scores(self, tmp_path, fakes):
        gt_of = fakes["gt"]
        runners = {
            "gt": lambda seq: gt_of[seq.name],
            "off3": lambda seq: shifted(gt_of[seq.name], 3.0),
            "boom": lambda seq: 1 / 0,
        }
        calls = []
        res = bench.run_bench(tmp_path, BenchConfig(**TINY), ["gt", "off3", "boom"], progress=calls.append,
                              runners=runners)
        specs = bench.bench_specs(BenchConfig(**TINY))
        assert sum(calls) == len(specs) * 3
        ok = [r for r in res.rows if "error" not in r]
        assert len(ok) == len(specs) * 2
        assert all(r["epe_px"] == 0.0 for r in ok if r["method"] == "gt")
        assert all(r["delta_avg"] == pytest.approx(0.6) for r in ok if r["method"] == "off3")
        summary = {r["method"]: r for r in res.summary}
        assert summary["off3"]["epe_px"] == pytest.approx(3.0, abs=1e-4)
        assert len(res.errors) == len(specs) and all("ZeroDivisionError" in e for e in res.errors.values())
        assert set(res.timings_s["gt"]) == {s.name for s in specs}

        md = (tmp_path / "bench.md").read_text()
        for s in specs:
            assert s.name in md
        mean_part = md.split("## Mean over sequences")[1].split("## Per sequence")[0]
        assert "| off3 | 3.00 |" in mean_part and "| gt | 0.00 |" in mean_part
        doc = json.loads((tmp_path / "bench.json").read_text())
        assert doc["machine"]["cpu_count"] >= 1 and "torch" in doc["machine"]
        assert doc["config"]["preset"] == "quick"
        assert len(doc["rows"]) == len(specs) * 3
        assert doc["timings"]["gt"]["mean_s"] >= 0.0
        for p in res.plot_paths:
            img = cv2.imread(str(p))
            assert img is not None and img.size > 0
        sheet = cv2.imread(str(tmp_path / "plots" / f"contact_{specs[0].name}.png"))
        assert sheet.shape[:2] == (3 * 48, 3 * 64)  # GT row + 2 methods that ran, 3 frames

    def test_sequences_are_cached(self, tmp_path, fakes):
        cfg = BenchConfig(**{**TINY, "plots": False})
        runners = {"gt": lambda seq: fakes["gt"][seq.name]}
        bench.run_bench(tmp_path, cfg, ["gt"], runners=runners)
        first = list(fakes["generated"])
        assert len(first) == len(bench.bench_specs(cfg))
        bench.run_bench(tmp_path, cfg, ["gt"], runners=runners)
        assert fakes["generated"] == first  # nothing regenerated
        assert not (tmp_path / "plots").exists()

    def test_keep_going_false_reraises(self, tmp_path, fakes):
        cfg = BenchConfig(**{**TINY, "keep_going": False, "plots": False})
        with pytest.raises(ZeroDivisionError):
            bench.run_bench(tmp_path, cfg, ["boom"], runners={"boom": lambda seq: 1 / 0})

    def test_fitted_methods_get_a_fits_table(self, tmp_path, fakes):
        timings = {"stereo_s": 0.5, "flow_s": 2.0, "chains_s": 3.0, "forward_s": 4.0, "backward_s": 8.0,
                   "inference_s": 0.25, "total_fit_s": 20.0}

        def fitted(seq):
            t = fakes["gt"][seq.name]
            return Tracks(ids=t.ids, uv=t.uv, visible=t.visible, xyz=t.xyz,
                          meta={"steps": 100, "stop_reason": "converged", "device": "cpu", "timings_s": timings})

        cfg = BenchConfig(**{**TINY, "plots": False})
        res = bench.run_bench(tmp_path, cfg, ["gt", "fit"], runners={"gt": lambda seq: fakes["gt"][seq.name],
                                                                     "fit": fitted})
        assert [f["method"] for f in res.fits] == ["fit"] * len(bench.bench_specs(cfg))  # not the plain method
        f = res.fits[0]
        assert f["forward_ms_per_step"] == pytest.approx(40.0) and f["backward_ms_per_step"] == pytest.approx(80.0)
        assert f["chains_s"] == 3.0 and f["steps"] == 100 and f["stop"] == "converged"
        assert "## Fits" in (tmp_path / "bench.md").read_text()
        assert json.loads((tmp_path / "bench.json").read_text())["fits"][0]["fit_total_s"] == 20.0

    def test_bad_input(self, tmp_path, fakes):
        with pytest.raises(ConfigError, match="bench.methods"):
            bench.run_bench(tmp_path, BenchConfig(**TINY), [])


class TestReport:
    def test_table_and_means(self):
        rows = [metrics_row("lk", {"epe_px": 1.0, "delta_avg": 0.5}, sequence="a"),
                metrics_row("lk", {"epe_px": 3.0, "delta_avg": float("nan")}, sequence="b"),
                metrics_row("zero", {"epe_px": float("inf"), "delta_avg": 0.25}, sequence="a")]
        means = {r["method"]: r for r in mean_rows(rows, label={"sequence": "mean"})}
        assert means["lk"]["epe_px"] == 2.0 and means["lk"]["delta_avg"] == 0.5  # NaN skipped
        assert means["zero"]["epe_px"] == float("inf")
        text = format_table(rows)
        lines = text.strip().splitlines()
        assert lines[0] == "| sequence | method | epe_px | delta_avg |"
        assert lines[2] == "| a | lk | 1.00 | 0.500 |"
        assert lines[3] == "| b | lk | 3.00 | - |"
        assert "| inf |" in lines[4]


def test_real_pipeline_tiny(tmp_path):
    cfg = BenchConfig(**{**TINY, "seeds": (0,), "plots": False})
    res = bench.run_bench(tmp_path, cfg, ["zero", "lk"])
    assert not res.errors
    by = {(r["sequence"], r["method"]): r for r in res.rows}
    assert len(by) == 2 * len(bench.bench_specs(cfg))
    for r in res.rows:
        assert 0.0 <= r["delta_avg"] <= 1.0


class TestStamp:
    def test_every_result_names_date_commit_command_and_machine(self):
        import subprocess
        from pathlib import Path

        info = bench.machine_info()
        repo = Path(bench.__file__).resolve().parents[2]
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if head.returncode == 0:
            assert info["commit"].split("+")[0] == head.stdout.strip()
        line = bench.stamp_line(info)
        assert line.startswith(f"Measured {info['date_utc']} at commit {info['commit']} with `")
        assert f"{info['cpu_count']} CPUs" in line and info["platform"] in line

    def test_outside_git_the_commit_is_unknown(self, monkeypatch):
        def no_git(*args, **kwargs):
            raise FileNotFoundError("git")

        monkeypatch.setattr(bench.subprocess, "run", no_git)
        assert bench.code_commit() == "unknown"
