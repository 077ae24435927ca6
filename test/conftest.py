"""Shared test set-up: a unique ROS_DOMAIN_ID per run and worker, seeds, and small torch threads."""

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


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep io tests light
        pass
