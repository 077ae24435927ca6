"""The refine worker process comes back: /diagnostics reports its deaths and restarts, tracking goes on."""

import os
import signal
import time

from surg_invnerf_ros.ros.diagnostics import NodeStats, diagnostic_array, diagnostics_to_dict

from .track_harness import PERIOD_NS, T0_NS, Harness, ros_context

NAME = "surg_invnerf_tracker"
MODEL = f"{NAME}: model"


class TestDiagnostics:
    def model(self, model):
        st = NodeStats()
        st.count_input("stereo/left/image_rect", 0)
        return diagnostics_to_dict(diagnostic_array(st.snapshot(0), {}, model, 0, NAME))[MODEL]

    def test_restarting_is_a_warning_with_the_exit(self):
        d = self.model({"state": "restarting", "error": "", "worker_deaths": 1, "worker_restarts": 0,
                        "worker_last_exit": "exit code -9 (SIGKILL)"})
        assert d["_level"] == "1"
        assert "restarting" in d["_message"] and "SIGKILL" in d["_message"]
        assert d["worker_deaths"] == "1" and d["worker_last_exit"] == "exit code -9 (SIGKILL)"

    def test_given_up_is_an_error_with_the_reason(self):
        reason = "refine worker died 5 times within 60 s (last: exit code -9 (SIGKILL)); refinement stopped"
        d = self.model({"state": "error", "error": reason, "worker_deaths": 5, "worker_restarts": 4})
        assert d["_level"] == "2" and d["_message"] == reason and d["worker_restarts"] == "4"
        assert self.model({"state": "error"})["_level"] == "2"

    def test_restarted_is_ok(self):
        d = self.model({"state": "idle", "error": "", "worker_deaths": 1, "worker_restarts": 1})
        assert d["_level"] == "0" and d["_message"] == "idle"


class TestNode:
    def test_a_killed_worker_is_restarted_and_reported_while_points_keep_coming(self):
        with ros_context() as ctx:
            h = Harness(ctx, {"queries.points_px": [20.0, 20.0, 40.0, 30.0], "refine.enabled": True,
                              "device": "cpu", "refine.keyframe_every": 1, "refine.min_keyframes": 3,
                              "refine.window_frames": 4, "refine.new_keyframes": 1,
                              "refine.fit_overrides": ["max_steps=3", "time_budget_s=30.0", "num_threads=1",
                                                       "log_every=1"]})
            try:
                sent = [0]
                levels = []

                def model():
                    return h.diag().get(MODEL, {})

                def stream_until(pred, timeout_s):
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < timeout_s:
                        i = sent[0]
                        h.send(i % 60, stamp_ns=T0_NS + i * PERIOD_NS)  # the harness texture allows 64 offsets
                        sent[0] += 1
                        h.spin_for(0.05)
                        levels.append((model().get("_level"), model().get("_message", "")))
                        if pred():
                            return True
                    return pred()

                assert stream_until(lambda: model().get("fits") not in (None, "0"), 120.0), "no first fit"
                proc = h.node._tracker.refiner._proc
                fits_before = int(model()["fits"])
                points_before = len(h.got["points"])
                os.kill(proc.pid, signal.SIGKILL)
                assert stream_until(lambda: model().get("worker_restarts") == "1"
                                    and int(model().get("fits", 0)) > fits_before, 120.0), model()
                d = model()
                assert d["worker_deaths"] == "1" and d["worker_last_exit"] == "exit code -9 (SIGKILL)"
                assert d["_level"] == "0" and d["state"] in ("idle", "fitting")
                assert any(lv == "1" and "restarting" in msg for lv, msg in levels), "no WARN while restarting"
                assert len(h.got["points"]) - points_before >= 10  # tracked points kept coming meanwhile
                assert h.node._tracker.refiner._proc is not proc
            finally:
                h.close()
