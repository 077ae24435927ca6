"""Shared test set-up: a unique ROS_DOMAIN_ID per run and worker, seeds, and small torch threads."""

import inspect
import os
import random

import numpy as np
import pytest


def pytest_configure(config):
    # Must happen before any rclpy.init: isolates parallel runs and xdist workers (ROS_STACK.md Q3).
    # The controller picks a base from its pid; workers inherit it and add their index, so each
    # worker gets its own domain (workers inherit the controller's environment, ROS_DOMAIN_ID too).
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        if "ROS_DOMAIN_ID" not in os.environ:
            base = os.getpid() % 100
            os.environ["SURG_TEST_DOMAIN_BASE"] = str(base)
            os.environ["ROS_DOMAIN_ID"] = str(1 + base)
    elif "SURG_TEST_DOMAIN_BASE" in os.environ:
        idx = int("".join(c for c in worker if c.isdigit()) or 0)
        base = int(os.environ["SURG_TEST_DOMAIN_BASE"])
        os.environ["ROS_DOMAIN_ID"] = str(1 + (base + 1 + idx) % 100)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    # the workers share the cores: one torch thread each (fit.num_threads = 0 takes torch's count)
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep io tests light
        pass


# Tests that need rclpy and DDS (marker `ros`) and tests taking more than ~2 s (marker `slow`),
# by node-id prefix: `make test-fast` deselects `slow`; a machine without ROS deselects `ros`.
ROS_PREFIXES = ("test/ros/", "test/apps/test_ros_bench.py", "test/apps/test_demo_pipeline.py")
SLOW_PREFIXES = (
    "test/ros/test_pipeline.py",
    "test/ros/test_fuzz.py",
    "test/ros/test_shutdown.py",
    "test/ros/test_bag_roundtrip.py::TestPlayer",
    "test/ros/test_synthetic_source.py::TestConsoleScript",
    "test/ros/test_bag_replay_node.py",
    "test/apps/test_kinematics_bench.py::test_tiny_run_writes_every_variant",
    "test/apps/test_ros_bench.py::test_tiny_run",
    "test/apps/test_demo_pipeline.py",
    "test/apps/test_suite.py::test_bench_command_with_size_and_frames",
    "test/test_refiner.py::TestProcessRefiner",
    "test/test_online.py::TestProcessWorker",
    "test/apps/test_stir_bench.py::test_killed_with_sigkill",
    "test/apps/test_stir_bench.py::test_stir_bench_local_and_ray",
    "test/test_batch.py::TestRay::test_tasks_run_in_ray_workers",
    "test/test_batch.py::TestRealCluster",
    "test/ros/test_lifecycle.py::TestConsoleScript",
    "test/ros/test_worker_restart.py::TestNode",
    "test/test_track.py::TestTrackSequence",
    "test/model/test_pose_correction.py::TestFitWithPoseRefine",
)


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    for item in items:
        try:
            rel = item.path.relative_to(root).as_posix()
        except ValueError:
            continue
        nodeid = rel + item.nodeid[item.nodeid.find("::"):] if "::" in item.nodeid else rel
        if nodeid.startswith(ROS_PREFIXES):
            item.add_marker(pytest.mark.ros)
        if nodeid.startswith(SLOW_PREFIXES) or _runs_a_subprocess_cli(item):
            item.add_marker(pytest.mark.slow)


def _runs_a_subprocess_cli(item) -> bool:
    """A test/apps/test_cli.py test that runs the command line as a process (through `run_cli`)."""
    if not str(item.nodeid).startswith("test/apps/test_cli.py::"):
        return False
    try:
        return "run_cli(" in inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False
