"""apps/ros_bench.py: the /proc helpers and summaries, and one tiny real run (64×48, 4 s, front end
only). No timing assertions: only that the keys exist and the values are consistent."""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from surg_invnerf_ros.apps import ros_bench as rbm
from surg_invnerf_ros.eval.metrics import live_accuracy


class TestProc:
    def test_vmrss_of_self_and_gone(self):
        assert rbm.vmrss_bytes(os.getpid()) > 10_000_000
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        assert rbm.vmrss_bytes(proc.pid) is None

    def test_descendants_include_grandchildren(self):
        # sh → subshell → sleep: a child and a grandchild
        proc = subprocess.Popen(["sh", "-c", "(sleep 30; true) & sleep 30"])
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(rbm.descendants(proc.pid)) < 3:
                time.sleep(0.05)
            kids = rbm.descendants(proc.pid)
            assert len(kids) == 3 and proc.pid not in kids  # subshell, its sleep, and sh's own sleep
        finally:
            for k in rbm.descendants(proc.pid):
                os.kill(k, 9)
            proc.kill()
            proc.wait()


class TestSummaries:
    def test_rss_summary_growth_and_slope(self):
        t = np.arange(60.0)
        flat = [(float(s), 100_000_000, 50_000_000) for s in t]
        s = rbm.rss_summary(flat, 0.0, 59.0)
        assert s["peak_total_mb"] == pytest.approx(150.0) and s["peak_children_mb"] == pytest.approx(50.0)
        assert s["growth_mb"] == pytest.approx(0.0) and abs(s["slope_mb_per_min"]) < 1e-6 and not s["grows"]
        rising = [(float(s), int(100e6 + 1e6 * s), 0) for s in t]  # +1 MB/s = 60 MB/min
        r = rbm.rss_summary(rising, 0.0, 59.0)
        assert r["slope_mb_per_min"] == pytest.approx(60.0, rel=1e-6) and r["grows"]
        assert r["growth_mb"] == pytest.approx(20.0, abs=1.0)
        assert len(r["series"]) == 60 and r["series"][-1] == [59.0, 159.0, 0.0]

    def test_rss_summary_few_samples(self):
        s = rbm.rss_summary([(0.0, 1, 1)], 0.0, 1.0)
        assert s["samples"] == 1 and math.isnan(s["growth_mb"]) and not s["grows"]
        assert rbm.rss_summary([], 0.0, 1.0) == {"samples": 0}

    def test_percentiles(self):
        p = rbm.percentiles_ms([0.001 * i for i in range(1, 101)])
        assert p["n"] == 100 and p["p50"] == pytest.approx(50.5) and p["max"] == pytest.approx(100.0)
        assert p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
        assert math.isnan(rbm.percentiles_ms([])["p50"])

    def test_scene_and_run_labels(self):
        assert rbm.scene_label(None) == "default" and rbm.scene_label(rbm.HARD_SCENE) == "hard"
        assert rbm.scene_label({"synth.difficulty": "easy"}) == "difficulty=easy"
        r = {"width": 256, "height": 192, "rate_hz": 30.0, "scene": "hard", "duration_s": 120.2, "cpu_load": 1}
        assert rbm.run_label(r) == "256×192 @ 30 Hz, hard, 120 s, +1 CPU hog"

    def test_live_accuracy_by_hand(self):
        from surg_invnerf_ros.ros.convert import TRACKED_POINTS_DTYPE

        def pts(u, vis, z):
            a = np.zeros(len(u), TRACKED_POINTS_DTYPE)
            a["id"], a["u"], a["v"], a["visible"], a["z"] = np.arange(len(u)), u, 0.0, vis, z
            return a

        gt = pts([0.0, 0.0, 0.0], [1, 1, 0], [0.05, 0.05, 0.05])
        pred = pts([3.0, 1.0, 9.0], [1, 1, 1], [0.052, np.nan, 0.05])
        acc = live_accuracy([(pred, gt), (pts([0.0], [1], [0.0]), gt)])  # the second has other ids: left out
        assert acc["epe_px"] == pytest.approx(2.0) and acc["epe_px_median"] == pytest.approx(2.0)
        assert acc["err_3d_mm"] == pytest.approx(2.0)  # the point without depth has no 3D error
        assert acc["visibility_accuracy"] == pytest.approx(2 / 3)  # point 2 is occluded but shown
        assert acc["no_3d_share"] == pytest.approx(1 / 3) and acc["point_frames"] == 2 and acc["frames"] == 2
        assert math.isnan(live_accuracy([])["epe_px"])

    def test_live_accuracy_tapvid_figures_count_hidden_points(self):
        from surg_invnerf_ros.ros.convert import TRACKED_POINTS_DTYPE

        def pts(u, vis, z):
            a = np.zeros(len(u), TRACKED_POINTS_DTYPE)
            a["id"], a["u"], a["v"], a["visible"], a["z"] = np.arange(len(u)), u, 0.0, vis, z
            return a

        gt = pts([0.0, 0.0, 0.0, 0.0], [1, 1, 0, 1], [0.05] * 4)
        pred = pts([3.0, 1.0, 9.0, 5.0], [1, 1, 1, 0], [0.052, np.nan, 0.05, 0.053])  # point 3 hidden, 5 px off
        acc = live_accuracy([(pred, gt)])
        assert acc["epe_px"] == pytest.approx(2.0)  # where both say visible
        assert acc["epe_gt_visible_px"] == pytest.approx(3.0)  # (3 + 1 + 5) / 3: the hidden point counts
        assert acc["err_3d_gt_visible_mm"] == pytest.approx(2.5)  # points 0 and 3; point 1 has no depth
        assert acc["delta_avg"] == pytest.approx((0 + 1 / 3 + 2 / 3 + 1 + 1) / 5)
        assert acc["aj"] == pytest.approx((0 + 1 / 5 + 2 / 4 + 2 / 4 + 2 / 4) / 5)

    def test_stir_latency_skips_warm_up_and_averages_p99_p95_mean(self):
        warm_up = [10.0] * 15  # 10 s each: left out
        lat = warm_up + [0.001 * i for i in range(1, 101)]  # 1 … 100 ms
        # numpy's linear percentiles of 1..100: p95 = 95.05, p99 = 99.01; mean 50.5
        assert rbm.stir_latency_ms(lat) == pytest.approx((99.01 + 95.05 + 50.5) / 3)
        assert math.isnan(rbm.stir_latency_ms(warm_up))


def live_point_frames(r):
    return r["accuracy"]["live"]["point_frames"]


def test_tiny_run(tmp_path):
    r = rbm.run_ros_bench(64, 48, rate_hz=20.0, duration_s=4.0, device="cpu", refine=False, num_queries=6,
                          scene_frames=8, log_dir=tmp_path, startup_timeout_s=60.0, drain_s=1.5,
                          reference=["lk"], reference_dir=tmp_path / "ref")
    assert (r["width"], r["height"], r["refine"]) == (64, 48, False)
    assert r["duration_s"] >= 4.0
    lat = r["latency_ms"]
    assert lat["n"] > 0 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    fr = r["frames"]
    assert fr["ground_truth"] > 0 and fr["tracked"] + fr["dropped"] == fr["ground_truth"]
    assert fr["node_frames_processed"] > 0
    assert r["refined"]["messages"] == 0 and r["refined"]["frames_covered"] == 0
    assert r["rss"]["samples"] >= 3 and r["rss"]["peak_node_mb"] > 50
    assert r["accuracy"]["point_frames"] > 0
    assert (tmp_path / "tracker.log").read_text() and (tmp_path / "source.log").read_text()
    with np.load(tmp_path / "tracks.npz") as saved:  # the accuracy window's records, for a closer look
        assert len(saved["live"]) == len(saved["live_stamp_ns"]) >= r["accuracy"]["live"]["point_frames"]
        assert len(np.unique(saved["live_stamp_ns"])) == r["accuracy"]["live"]["frames"]
        assert set(saved["live_stamp_ns"]) <= set(saved["gt_stamp_ns"]) and "refined" not in saved
        assert {"u", "v", "z", "visible", "id"} <= set(saved["live"].dtype.names)
    md = rbm.format_ros_bench([r, r])
    assert md.count("| 64×48 @ 20 Hz, default, ") == 8 and "peak RSS" in md  # 4 tables, 2 runs
    ref = r["accuracy"]["reference"]  # the scene rendered offline is the one the source streamed
    assert ref["frames"] > 0 and ref["matched_frames"] == ref["frames"] and ref["scene_frames_seen"] >= 2
    assert ref["methods"]["lk"]["point_frames"] > 0 and ref["live"]["point_frames"] == live_point_frames(r)
    assert "| offline lk |" in md
    assert r["scene"] == "default" and r["cpu_load"] == 0
    live = r["accuracy"]["live"]
    assert live["point_frames"] > 0 and 0 <= live["visibility_accuracy"] <= 1 and live["epe_px"] >= 0
    assert r["refinement"]["keyframes_covered"] == 0
