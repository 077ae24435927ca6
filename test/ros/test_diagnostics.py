"""ros/diagnostics.py: counters, rates and percentiles (plain), and the DiagnosticArray they make."""

import math

from diagnostic_msgs.msg import DiagnosticStatus

from surg_invnerf_ros.ros.diagnostics import NodeStats, diagnostic_array, diagnostics_to_dict, level_int, rss_bytes

S = 1_000_000_000
NAME = "surg_invnerf_tracker"


class TestNodeStats:
    def test_rates_over_the_window(self):
        st = NodeStats(rate_window_s=2.0)
        for k in range(60):  # 30 Hz for 2 s
            st.count_input("left", int(k * S / 30))
        assert st.rates_hz(2 * S)["left"] == 30.0
        assert st.rates_hz(10 * S)["left"] == 0.0  # nothing recent

    def test_latency_percentiles(self):
        st = NodeStats()
        assert all(math.isnan(v) for v in st.latency_percentiles_s())
        for ms in range(1, 101):
            st.record_frame(ms / 1000, 0.0)
        p50, p95 = st.latency_percentiles_s()
        assert abs(p50 - 0.0505) < 1e-9 and abs(p95 - 0.09505) < 1e-9  # numpy linear interpolation

    def test_drops_and_new_drops(self):
        st = NodeStats()
        st.count_drop("wrong_encoding")
        st.set_drops({"missing_right_image": 2})
        snap = st.snapshot(0)
        assert snap["drops"] == {"wrong_encoding": 1, "missing_right_image": 2}
        assert snap["new_drops"] == snap["drops"]
        st.set_drops({"missing_right_image": 2})  # mirrored again: no double count
        assert st.snapshot(0)["new_drops"] == {}
        st.count_drop("wrong_encoding", 0)
        assert st.drops["wrong_encoding"] == 1

    def test_rss(self):
        assert rss_bytes() > 10_000_000

    def test_refined_coverage_and_lag(self):
        st = NodeStats()
        assert math.isnan(st.snapshot(0)["refine_lag_p50_s"])
        st.record_refined([10 * S, 11 * S], now_ns=12 * S)  # lags 2 s and 1 s
        st.record_refined([11 * S, 12 * S], now_ns=15 * S)  # 11 s again: not counted twice; 12 s: lag 3 s
        snap = st.snapshot(15 * S)
        assert snap["refined_frames"] == 3 and snap["refined_updates"] == 2
        assert snap["refine_lag_p50_s"] == 2.0
        d = diagnostics_to_dict(diagnostic_array(snap, {}, {"state": "idle", "keyframes_total": 4}, 15 * S, NAME))
        model = d[f"{NAME}: model"]
        assert float(model["refined_coverage"]) == 0.75 and float(model["refine_lag_p95_s"]) > 2.0
        # with arrival times (monotonic, as the node passes them) the lag runs from the frame's arrival
        st2 = NodeStats()
        st2.record_refined([20 * S], now_ns=7 * S, arrival_ns={20 * S: 6 * S})
        assert st2.snapshot(7 * S)["refine_lag_p50_s"] == 1.0


class TestDiagnosticArray:
    def snap(self, **kw):
        st = NodeStats()
        st.count_input("stereo/left/image_rect", 0)
        st.record_frame(0.02, 0.001)
        for k, v in kw.items():
            st.count_drop(k, v)
        return st.snapshot(S // 2)

    def test_ok(self):
        msg = diagnostic_array(self.snap(), {"frames": 1}, {"state": "idle", "fits": 3}, 5 * S, NAME)
        d = diagnostics_to_dict(msg)
        assert set(d) == {f"{NAME}: input", f"{NAME}: tracking", f"{NAME}: model"}
        inp = d[f"{NAME}: input"]
        assert inp["_level"] == "0" and inp["queue.frames"] == "1" and inp["stereo_skew_max_s"] == "0.001"
        assert float(inp["rate_hz.stereo/left/image_rect"]) == 0.5
        assert d[f"{NAME}: tracking"]["latency_p50_s"] == "0.02"
        assert d[f"{NAME}: model"]["fits"] == "3" and d[f"{NAME}: model"]["_message"] == "idle"
        assert msg.header.stamp.sec == 5

    def test_shed_frames_are_reported_with_tracking(self):
        st = NodeStats()
        st.record_frame(0.02, 0.0)
        st.count_shed()
        st.count_shed()
        d = diagnostics_to_dict(diagnostic_array(st.snapshot(S), {}, {}, 0, NAME))
        assert d[f"{NAME}: tracking"]["frames_shed"] == "2" and d[f"{NAME}: tracking"]["frames_processed"] == "1"
        assert diagnostics_to_dict(diagnostic_array(self.snap(), {}, {}, 0, NAME))[f"{NAME}: tracking"][
            "frames_shed"] == "0"

    def test_drift_resets_are_reported_with_tracking(self):
        snap = {**self.snap(), "drift_resets": 7}  # the node moves the tracker's count into its snapshot
        assert diagnostics_to_dict(diagnostic_array(snap, {}, {}, 0, NAME))[f"{NAME}: tracking"]["drift_resets"] == "7"

    def test_drops_warn_and_are_listed(self):
        d = diagnostics_to_dict(diagnostic_array(self.snap(wrong_encoding=2), {}, {}, 0, NAME))
        inp = d[f"{NAME}: input"]
        assert inp["_level"] == "1" and "wrong_encoding ×2" in inp["_message"]
        assert inp["drops.wrong_encoding"] == "2"

    def test_model_error(self):
        msg = diagnostic_array(self.snap(), {}, {"state": "error", "error": "RuntimeError: boom"}, 0, NAME)
        st = [s for s in msg.status if s.name.endswith("model")][0]
        assert level_int(st.level) == 2 and "boom" in st.message

    def test_level_int(self):
        assert level_int(DiagnosticStatus.WARN) == 1 and level_int(2) == 2
