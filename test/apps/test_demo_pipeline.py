"""The demo pipeline's scoring of live and refined ~/tracked_points against ground truth (no DDS)."""

import os
import time

import numpy as np
import pytest

from surg_invnerf_ros.apps.demo_pipeline import _write_results, run_ros_demo
from surg_invnerf_ros.structs import TRACKED_POINTS_DTYPE


def cloud(ids, du=0.0):
    r = np.zeros(len(ids), TRACKED_POINTS_DTYPE)
    r["id"] = ids
    r["u"], r["v"] = 10.0 + np.asarray(ids) + du, 20.0
    r["z"], r["visible"] = 0.06, 1
    return r


def test_live_and_refined_rows(tmp_path, capsys):
    ids = [4, 1, 9]
    gt = {s: cloud(ids) for s in range(5)}
    live = {s: cloud(ids[::-1], du=2.0) for s in range(5)}  # another id order, 2 px off
    refined = {3: cloud(ids), 4: cloud(ids)}
    overlay = np.zeros((8, 8, 3), np.uint8)
    model = {"refined_coverage": "0.75", "refine_lag_p50_s": "3.5", "steps_per_s": "10"}
    assert _write_results(tmp_path, live, refined, gt, [(0, overlay)], model) == 0
    text = (tmp_path / "metrics.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()[2:] if line.startswith("|")}
    assert "| 2.00 |" in rows["front end (live)"]  # EPE 2 px, ids matched, not positions
    # frames 1, 2 stay 2 px off, 3 and 4 are exact (frame 0 is the query frame, not scored): 1 px; end 0
    assert "| 1.00 | 0.00 |" in rows["with refined"]
    assert (tmp_path / "overlay_contact_sheet.png").is_file()
    line = "refinement: 75 % of keyframes refined, median lag 3.5 s, 10.0 model steps/s; with refined 1.000 px " \
           "against the front end's 2.000 px: refinement improves what is published"
    assert line in text and line in capsys.readouterr().out


def test_the_refinement_line_says_when_refinement_does_not_help():
    from surg_invnerf_ros.apps.demo_pipeline import refinement_summary

    rows = [{"method": "front end (live)", "epe_px": 1.0}, {"method": "with refined", "epe_px": 1.2}]
    assert refinement_summary({"refined_coverage": "1.0"}, rows).endswith("refinement does not improve what is published")
    close = [{"method": "front end (live)", "epe_px": 0.9549}, {"method": "with refined", "epe_px": 0.9491}]
    assert refinement_summary({"refined_coverage": "1.0"}, close).endswith(  # two decimals would show 0.95 twice
        "with refined 0.949 px against the front end's 0.955 px: refinement improves what is published")
    assert refinement_summary({}, rows[:1]) == ("refinement: no model diagnostics received; no refined tracks matched "
                                                "the ground truth")


def test_no_matching_frames_is_reported(tmp_path, capsys):
    assert _write_results(tmp_path, {1: cloud([1])}, {}, {2: cloud([1])}, []) == 1
    assert "no tracked frames matched" in capsys.readouterr().err


@pytest.mark.timeout(150)
def test_no_ground_truth_is_one_line_and_returns(tmp_path, capsys):
    # A source that publishes no ground truth in time (timeout 0): the demo says so in one line,
    # stops both nodes and returns 1 instead of hanging in rclpy.shutdown with its executor alive.
    t0 = time.monotonic()
    assert run_ros_demo(tmp_path, device="cpu", duration_s=1.0, source_timeout_s=0.0) == 1
    err = capsys.readouterr().err
    assert "published no ground truth" in err and err.count("\n") == 1
    assert time.monotonic() - t0 < 120


def test_the_nodes_discover_each_other_on_this_machine_only(tmp_path, monkeypatch):
    """Multicast discovery sometimes never matched the demo's processes on a container network; the
    nodes start with localhost discovery unless the user chose a range."""
    from surg_invnerf_ros.apps import demo_pipeline

    seen: list[str | None] = []

    class Started(Exception):
        pass

    def fake_start(entry, ros_args, log_path):
        seen.append(os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE"))
        raise Started

    monkeypatch.setattr(demo_pipeline, "start_entry_point", fake_start)
    monkeypatch.delenv("ROS_AUTOMATIC_DISCOVERY_RANGE", raising=False)
    with pytest.raises(Started):
        run_ros_demo(tmp_path, duration_s=1.0)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    with pytest.raises(Started):
        run_ros_demo(tmp_path, duration_s=1.0)
    assert seen == ["LOCALHOST", "SUBNET"]
