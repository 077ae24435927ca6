"""Node processes for the ROS benchmark and demo: start a console script's target, stop it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def use_local_discovery() -> None:
    """Discover ROS participants on this machine only, for a pipeline whose processes all run here:
    `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST` unless the user chose a range. Call before `rclpy.init`
    and before starting the nodes (they inherit the environment).

    Multicast discovery on a container network sometimes never matched two of the three processes (a
    tracker that never received the source's frames: 2 failed starts in 5 runs of the node benchmark,
    and once in the demo); localhost discovery matched in every run. It also keeps a demo's synthetic
    topics off the robot's network.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def start_entry_point(entry: str, ros_args: list[str], log_path: Path) -> subprocess.Popen:
    """Run `module:func` as its console script would, with this process's environment (call
    `bag_nodes.use_large_data_transport()` first). Output goes to a log file, never a pipe: a pipe
    nobody reads fills up and blocks the node."""
    module, func = entry.split(":")
    code = f"import sys; from {module} import {func}; sys.exit({func}())"
    with open(log_path, "w") as logf:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-c", code, "--ros-args", *ros_args], env=dict(os.environ),
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 15.0) -> int | None:
    """SIGTERM (nodes clean up), then SIGKILL after `timeout_s`; the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode
