"""Every node executable stops cleanly on SIGTERM, SIGINT and a Ctrl-C to its process group.

Clean means: exit code 0, no traceback, no `[ERROR]` log line, no `KeyboardInterrupt` (from the
node or the refine worker), and within `STOP_DEADLINE_S` of the signal. Each process is signalled
only once it has logged that it is running, so the test does not depend on start-up speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

pytest.importorskip("rclpy")

STOP_DEADLINE_S = 2.0
START_TIMEOUT_S = 90.0  # start-up imports torch; generous for a loaded machine

SYNTH_ARGS = ["-p", "synth.width:=64", "-p", "synth.height:=48", "-p", "synth.frames:=4", "-p", "synth.num_queries:=4",
              "-p", "end:=continue", "-p", "rate_hz:=30.0", "-p", "wait_for_subscribers_s:=0.0"]

ENTRIES = {
    "synthetic_stereo": ("surg_invnerf_ros.ros.synthetic_source_node:main", "synthetic stereo "),
    "track_node": ("surg_invnerf_ros.ros.track_node:main", "no start queries"),
    "bag_player": ("surg_invnerf_ros.ros.bag_nodes:player_main", "playing anyway"),
}
SIGNALS = {"sigterm": (signal.SIGTERM, False), "sigint": (signal.SIGINT, False), "group_sigint": (signal.SIGINT, True)}


@pytest.fixture(scope="module")
def looping_bag(tmp_path_factory):
    from surg_invnerf_ros.config import SynthConfig
    from surg_invnerf_ros.io import rosbag as rb
    from surg_invnerf_ros.structs import Sequence
    from surg_invnerf_ros.synth.generate import SyntheticScene

    scene = SyntheticScene(SynthConfig(width=64, height=48, frames=4, num_queries=4, seed=1))
    frames = [scene.frame(i) for i in range(4)]
    seq = Sequence(np.stack([f.left_rgb_u8 for f in frames]), np.stack([f.right_rgb_u8 for f in frames]),
                   scene.calib, np.array([f.stamp_ns for f in frames]), scene.queries)
    return rb.sequence_to_bag(seq, tmp_path_factory.mktemp("shutdown") / "bag", namespace=f"/t{uuid.uuid4().hex[:8]}")


class _Proc:
    """A node process whose merged output is read by a thread (so the pipe never fills)."""

    def __init__(self, entry: str, ros_args: list[str], process_group: int | None = None) -> None:
        module, func = entry.split(":")
        code = f"import sys; from {module} import {func}; sys.exit({func}())"
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-c", code, "--ros-args", *ros_args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     # its own process group (as a terminal gives); 0: a new group in
                                     # this session, which a later process can join
                                     start_new_session=process_group is None, process_group=process_group)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, marker: str, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and self.proc.poll() is None:
            if marker in self.output:
                return True
            time.sleep(0.05)
        return marker in self.output

    def stop(self, signum: int | None, group: bool) -> float:
        """Send the signal (None: it was sent already); seconds until the process exited (inf if it
        did not within 10 s)."""
        t0 = time.monotonic()
        if signum is not None and group:
            os.killpg(self.proc.pid, signum)
        elif signum is not None:
            self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=10)
            self.exited_at = time.monotonic()
        except subprocess.TimeoutExpired:
            self.exited_at = float("inf")
            self.proc.kill()
            self.proc.wait()
            return float("inf")
        finally:
            self._reader.join(timeout=5)
        return time.monotonic() - t0


def assert_clean(proc: _Proc, took_s: float) -> None:
    out = proc.output
    assert proc.proc.returncode == 0, out
    for bad in ("Traceback", "[ERROR]", "KeyboardInterrupt"):
        assert bad not in out, out
    assert took_s <= STOP_DEADLINE_S, f"stopped after {took_s:.2f} s\n{out}"


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize("exe", list(ENTRIES))
def test_stops_cleanly(exe, sig, looping_bag):
    entry, marker = ENTRIES[exe]
    ns = f"/t{uuid.uuid4().hex[:8]}"
    args = {"synthetic_stereo": SYNTH_ARGS,
            "track_node": ["-p", "device:=cpu"],
            "bag_player": ["-p", f"bag:={looping_bag}", "-p", "loop:=true", "-p", "rate:=1.0",
                           "-p", "wait_for_subscribers_s:=0.01"]}[exe]
    proc = _Proc(entry, [*args, "-r", f"__ns:={ns}"])
    try:
        assert proc.wait_for(marker, START_TIMEOUT_S), proc.output
        time.sleep(0.3)  # running, not just started: timers and worker threads are live
        signum, group = SIGNALS[sig]
        took_s = proc.stop(signum, group)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()
    assert_clean(proc, took_s)


def _children(pid: int) -> list[int]:
    """Direct child processes of `pid` (from /proc)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_terminal_ctrl_c_while_a_fit_runs():
    """A launch-like group (source + tracker) gets one Ctrl-C while the refine worker is fitting:
    both exit cleanly within the deadline and the worker process is gone too."""
    ns = f"/t{uuid.uuid4().hex[:8]}"
    source = _Proc(ENTRIES["synthetic_stereo"][0],
                   [*SYNTH_ARGS[:4], "-p", "synth.frames:=8", "-p", "synth.num_queries:=9", *SYNTH_ARGS[8:],
                    "-r", f"__ns:={ns}", "-r", f"queries_out:={ns}/surg_invnerf_tracker/queries"], process_group=0)
    tracker = None
    try:
        tracker = _Proc(ENTRIES["track_node"][0],
                        ["-p", "device:=cpu", "-p", "refine.keyframe_every:=1", "-p", "refine.min_keyframes:=2",
                         "-p", "refine.fit_overrides:=[max_steps=100000, time_budget_s=600.0, num_threads=1, log_every=1]",
                         "-r", f"__ns:={ns}"], process_group=source.proc.pid)
        assert tracker.wait_for("refine: fitting", START_TIMEOUT_S), tracker.output + source.output
        workers = _children(tracker.proc.pid)
        assert workers, "no refine worker process"
        time.sleep(0.5)  # well inside the fit
        t0 = time.monotonic()
        os.killpg(source.proc.pid, signal.SIGINT)
        took = {}
        for name, p in (("tracker", tracker), ("source", source)):  # each timed from the one Ctrl-C
            p.stop(None, False)
            took[name] = p.exited_at - t0
        assert not any(_alive(w) for w in workers), "the refine worker outlived the node"
    finally:  # also when the tracker could not be started: never leave a source running
        for p in (tracker, source):
            if p is not None and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
    print(f"stopped after {took['tracker']:.2f} s (tracker), {took['source']:.2f} s (source)")
    for name, p in (("tracker", tracker), ("source", source)):
        assert_clean(p, took[name])
