"""apps/soak.py: judging a long run (memory growth, error stability, drops, latency) and its report."""

import numpy as np
import pytest

from surg_invnerf_ros.apps.bench import machine_info
from surg_invnerf_ros.apps.soak import format_soak, judge, plot_soak, rss_growth, window_error
from surg_invnerf_ros.config import SoakConfig, to_dict
from surg_invnerf_ros.errors import ConfigError


def fake_run(duration_s=1800.0, rss_slope_mb_per_s=0.0, err_late_px=0.3, dropped=0.002, p95=20.0, sawtooth=False):
    """A run_ros_bench result with an RSS series (1 Hz) and a per-minute error series."""
    t = np.arange(0.0, duration_s + 1, 1.0)
    node = 300.0 + rss_slope_mb_per_s * t
    kids = 900.0 + (80.0 * ((t % 40) < 20) if sawtooth else 0.0)  # a fit's memory comes and goes
    rss = np.stack([t, node, np.broadcast_to(kids, t.shape)], 1).tolist()
    minutes = np.arange(0.0, duration_s, 60.0)
    err = [[m, 0.3 if m < duration_s / 2 else err_late_px, 0.35, 1000] for m in minutes]
    return {"duration_s": duration_s, "width": 256, "height": 192, "rate_hz": 30.0, "num_queries": 64,
            "refine": True, "device": "cpu", "rss": {"series": rss, "peak_total_mb": 1300.0},
            "accuracy": {"series": err}, "frames": {"dropped_fraction": dropped, "tracked": 53900,
                                                    "ground_truth": 54000},
            "latency_ms": {"p95": p95}, "refined": {"messages": 100, "fits": 40.0}, "node_drops": {},
            "machine": machine_info()}


class TestJudge:
    def test_a_steady_run_passes(self):
        v = judge(fake_run(sawtooth=True), SoakConfig())
        assert v["passed"], v["checks"]
        assert abs(v["rss_growth"]["fit_mb"]) < 5.0 and v["checks"]["error_ratio"]["value"] == pytest.approx(1.0)

    @pytest.mark.parametrize("kwargs,failing", [
        ({"rss_slope_mb_per_s": 0.03}, "rss_growth"),  # 36 MB over 20 min
        ({"err_late_px": 0.4}, "error_ratio"),  # 1.33× the first window
        ({"dropped": 0.02}, "dropped_fraction"),
        ({"p95": 50.0}, "latency_p95_ms"),
    ])
    def test_each_limit_can_fail(self, kwargs, failing):
        v = judge(fake_run(**kwargs), SoakConfig())
        assert not v["passed"]
        assert [k for k, c in v["checks"].items() if not c["ok"]] == [failing]

    def test_growth_is_measured_over_the_final_span_only(self):
        run = fake_run()
        for row in run["rss"]["series"]:
            if row[0] < 600:  # growth during the first 10 min (warm-up) is not counted
                row[1] += row[0] * 0.2
            else:
                row[1] += 600 * 0.2
        g = rss_growth(run["rss"]["series"], 1800.0, 1200.0)
        assert abs(g["fit_mb"]) < 1e-6 and abs(g["ends_mb"]) < 1e-6

    def test_window_error_weights_by_point_frames(self):
        series = [[0.0, 1.0, 1.0, 10], [60.0, 2.0, 2.0, 30], [120.0, 9.0, 9.0, 5]]
        assert window_error(series, 0.0, 120.0) == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)
        assert np.isnan(window_error(series, 500.0, 600.0))


class TestConfig:
    def test_windows_must_fit_the_duration(self):
        with pytest.raises(ConfigError, match="soak.duration_s: expected >= warmup_s"):
            SoakConfig(duration_s=600.0)  # 300 s warm-up + 2 × 300 s windows
        with pytest.raises(ConfigError, match="soak.rss_span_s"):
            SoakConfig(duration_s=900.0, rss_span_s=1200.0)


def test_report_and_plot(tmp_path):
    run = fake_run(rss_slope_mb_per_s=0.03)
    cfg = SoakConfig()
    result = {"config": to_dict(cfg), "run": run, "verdict": judge(run, cfg)}
    md = format_soak(result)
    assert "| RSS growth over the last 20 min (tracker + refiner) | 36.00 MB | 20 MB | **no** |" in md
    assert machine_info()["date_utc"][:10] in md and "soak.png" in md
    png = plot_soak(result, tmp_path / "soak.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
