"""ros/lifecycle_node.py: the managed tracker's states, transitions and its console script."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from geometry_msgs.msg import Point32, PolygonStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from surg_invnerf_ros.online import RefineOutput
from surg_invnerf_ros.ros.lifecycle_node import ManagedTrackerNode
from surg_invnerf_ros.structs import Tracks

from .track_harness import Harness, ros_context

NS = "/surg_invnerf_tracker"


@pytest.fixture
def ctx():
    with ros_context() as c:
        yield c


def polygon(*uv: float) -> PolygonStamped:
    msg = PolygonStamped()
    msg.polygon.points = [Point32(x=float(u), y=float(v), z=0.0) for u, v in zip(uv[::2], uv[1::2])]
    return msg


class CountingRefiner:
    """A refiner that records each fit and answers with the front end's own pixels."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, job):
        with self.lock:
            self.calls += 1
        q = job.seq.queries
        T = job.seq.num_frames
        uv = np.repeat(q.uv_px[None], T, 0).astype(np.float32)
        return RefineOutput(Tracks(q.ids, uv, np.ones((T, len(q)), bool), np.full((T, len(q), 3), 0.03, np.float32)),
                            state="s", stats={"loss": 0.1})


def entity_names(node) -> dict[str, set[str]]:
    return {"publishers": {p.topic_name for p in node.publishers},
            "subscriptions": {s.topic_name for s in node.subscriptions},
            "services": {s.srv_name for s in node.services}, "timers": {str(len(list(node.timers)))}}


def tracked_after(h: Harness, n_before: int, i: int) -> bool:
    h.send(i)
    return bool(h.spin_until(lambda: len(h.got["points"]) > n_before, 1.5))


class TestTransitions:
    def test_full_cycle_keeps_queries_over_deactivate_and_releases_on_cleanup(self, ctx):
        refiner = CountingRefiner()
        h = Harness(ctx, {"refine.enabled": True, "refine.keyframe_every": 1, "refine.min_keyframes": 2,
                          "refine.window_frames": 4, "refine.new_keyframes": 1},
                    node_cls=ManagedTrackerNode, refiner=refiner)
        node = h.node
        try:
            # unconfigured: only the lifecycle services; no parameters, no inputs, no outputs
            assert node.node_state == "unconfigured" and node.tracker is None
            assert not node.has_parameter("device")
            bare = entity_names(node)
            assert not h.wait_inputs(0.5)
            assert not tracked_after(h, 0, 0)

            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.node_state == "inactive" and node.tracker is not None and node.tracker.paused
            assert node.has_parameter("device")
            assert not h.inputs_matched(), "an inactive node must not take images"
            h.pub["queries"].publish(polygon(20, 20, 40, 30))  # queries are taken while inactive
            assert h.spin_until(lambda: len(node.tracker.query_ids) == 2, 3.0)
            diag = h.spin_until(lambda: h.diag().get("surg_invnerf_tracker: tracking"), 3.0)
            assert diag["node_state"] == "inactive"

            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            assert node.node_state == "active" and not node.tracker.paused
            assert h.wait_inputs()
            for i in range(4):
                assert tracked_after(h, len(h.got["points"]), i), f"active node did not track frame {i}"
            assert h.spin_until(lambda: refiner.calls >= 1, 5.0), "no fit while active"
            assert h.points()[-1]["id"].tolist() == [0, 1]

            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node.node_state == "inactive" and node.tracker.paused
            assert h.spin_until(lambda: not h.inputs_matched(), 3.0), "image subscriptions left after deactivate"
            with refiner.lock:
                calls = refiner.calls
            n = len(h.got["points"])
            assert not tracked_after(h, n, 4), "an inactive node published tracked points"
            assert node.tracker.query_ids.tolist() == [0, 1], "deactivate must keep the queries"
            h.spin_for(1.2)  # the worker wakes every 0.5 s: a paused one starts nothing
            assert refiner.calls <= calls + 1  # at most the fit that was running when it paused

            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            assert h.wait_inputs()
            n = len(h.got["points"])
            assert h.spin_until(lambda: tracked_after(h, n, 5), 3.0)
            assert h.points()[-1]["id"].tolist() == [0, 1], "tracks continue through deactivate/activate"

            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            assert node.node_state == "unconfigured" and node.tracker is None
            assert entity_names(node) == bare, "cleanup must release every entity configure and activate made"

            # configure again: the parameters are read again (declared once), the tracker starts afresh
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.tracker is not None and not len(node.tracker.query_ids)
            assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
            assert node.node_state == "finalized" and node.tracker is None
        finally:
            h.close()

    def test_bad_parameter_fails_configure_and_stays_unconfigured(self, ctx):
        node = ManagedTrackerNode(context=ctx, parameter_overrides=[Parameter("publish.poll_rate_hz", value=-2.0)])
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
            assert node.node_state == "unconfigured" and node.tracker is None
            assert node.last_error.startswith("publish.poll_rate_hz: expected >= 0.1")
            assert not any(p.topic_name.endswith("tracked_points") for p in node.publishers)
        finally:
            node.destroy_node()

    def test_transitions_through_the_lifecycle_services(self, ctx):
        """What `ros2 lifecycle set` does: ChangeState on ~/change_state, GetState on ~/get_state."""
        h = Harness(ctx, node_cls=ManagedTrackerNode)
        try:
            change = h.io.create_client(ChangeState, f"{NS}/change_state")
            get = h.io.create_client(GetState, f"{NS}/get_state")
            assert change.wait_for_service(timeout_sec=3.0) and get.wait_for_service(timeout_sec=3.0)

            def call(client, request):
                fut = client.call_async(request)
                assert h.spin_until(fut.done, 5.0), "no answer"
                return fut.result()

            for tid, label in ((Transition.TRANSITION_CONFIGURE, "inactive"),
                               (Transition.TRANSITION_ACTIVATE, "active")):
                assert call(change, ChangeState.Request(transition=Transition(id=tid))).success
                assert call(get, GetState.Request()).current_state.label == label
            assert h.wait_inputs()
            assert tracked_after(h, 0, 0)
        finally:
            h.close()


def lifecycle_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "surg_invnerf_ros.ros.lifecycle_node", *args]


class TestConsoleScript:
    def test_autostart_tracks_and_stops_on_sigterm(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        from surg_invnerf_ros.ros.diagnostics import diagnostics_to_dict

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(lifecycle_cmd("--autostart", "--ros-args", "-p", "refine.enabled:=false",
                                              "-p", "publish.diagnostics_rate_hz:=5.0"),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with ros_context() as c:
            io = rclpy.create_node("lifecycle_probe", context=c)
            got: list = []
            io.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
            ex = SingleThreadedExecutor(context=c)
            ex.add_node(io)
            t0 = time.monotonic()
            state = None
            while time.monotonic() - t0 < 20 and state != "active":
                ex.spin_once(timeout_sec=0.1)
                if got:
                    state = diagnostics_to_dict(got[-1]).get("surg_invnerf_tracker: tracking", {}).get("node_state")
            ex.shutdown()
            io.destroy_node()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert state == "active", out
        assert proc.returncode == 0, out
        assert "Traceback" not in out

    def test_shutdown_transition_ends_the_process(self):
        """`ros2 lifecycle set /surg_invnerf_tracker shutdown` from unconfigured: the process exits 0 by itself."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(lifecycle_cmd("--ros-args", "-p", "refine.enabled:=false"),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            with ros_context() as c:
                io = rclpy.create_node("lifecycle_shutdown_probe", context=c)
                change = io.create_client(ChangeState, f"{NS}/change_state")
                get = io.create_client(GetState, f"{NS}/get_state")
                ex = SingleThreadedExecutor(context=c)
                ex.add_node(io)
                assert change.wait_for_service(timeout_sec=30.0), "no ~/change_state"
                # The graph may still list the services of a node that has just exited (an earlier test's):
                # ask for the state until this process answers, so its servers are matched before the
                # transition is requested (a request sent to no matched server is lost).
                answered, t0 = False, time.monotonic()
                while not answered and time.monotonic() - t0 < 60:
                    probe = get.call_async(GetState.Request())
                    t1 = time.monotonic()
                    while not probe.done() and time.monotonic() - t1 < 2.0:
                        ex.spin_once(timeout_sec=0.1)
                    answered = probe.done() and probe.result().current_state.label == "unconfigured"
                assert answered, "the node never answered ~/get_state"
                fut = change.call_async(ChangeState.Request(
                    transition=Transition(id=Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)))
                t0 = time.monotonic()
                while not fut.done() and time.monotonic() - t0 < 60:  # a loaded machine answers late
                    ex.spin_once(timeout_sec=0.1)
                assert fut.done() and fut.result().success
                ex.shutdown()
                io.destroy_node()
            out, _ = proc.communicate(timeout=20)  # no signal sent: the transition ends it
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, out
        assert "Traceback" not in out

    @pytest.mark.parametrize("args,line", [
        (("--autostart", "--ros-args", "-p", "device:=gpu"), "device: expected one of auto|cpu|cuda"),
        (("--bogus",), "unknown argument '--bogus'"),
    ])
    def test_failed_autostart_is_one_line_and_exit_2(self, args, line):
        res = subprocess.run(lifecycle_cmd(*args), capture_output=True, text=True, timeout=30)
        assert res.returncode == 2, res.stderr
        assert line in res.stderr and "Traceback" not in res.stderr + res.stdout
