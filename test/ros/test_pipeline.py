"""Across processes (DESIGN §5): synthetic_stereo → surg_invnerf_tracker → this test.

Checks: tracked points for every frame; their error against ~/ground_truth under a stated bound;
refined points appear (a real InvNeRF fit, kept tiny); /tf has track_<id> frames and /tf_static the
stereo frame; /diagnostics is published. Both nodes run as subprocesses (the console
scripts' targets) with LARGE_DATA transports and are stopped with SIGTERM. Every wait is for a
condition, with a deadline long enough for a loaded machine. The source runs at
15 Hz (stamps still 1/30 s apart) and the frame queue is 8 deep, so a loaded 2-core CI machine does
not drop frames: throughput is the benchmark's business, not this test's.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from surg_invnerf_ros.ros import convert

REPO = Path(__file__).resolve().parents[2]
FRAMES = 24
# Bounds for this 96×72 easy scene, front end (LK + SGBM) over 24 frames; measured median errors
# are well below them (see the test's assertion messages for the actual numbers).
MEDIAN_ERR_2D_PX = 1.5
MEDIAN_ERR_3D_MM = 3.0

# Inputs subscribed reliable and deep through the node's QoS overrides: with SensorData (best
# effort) a loaded 2-core CI machine occasionally lost a frame in transport, uncounted by the node.
RELIABLE_INPUTS = [arg for topic in ("stereo/left/image_rect", "stereo/right/image_rect", "stereo/left/camera_info",
                                     "stereo/right/camera_info")
                   for arg in ("-p", f"qos_overrides./{topic}.subscription.reliability:=reliable",
                               "-p", f"qos_overrides./{topic}.subscription.depth:={2 * FRAMES}")]

pytestmark = pytest.mark.skipif(
    not (REPO / "surg_invnerf_ros/ros/synthetic_source_node.py").is_file(), reason="synthetic_stereo not written yet")


def start(entry: str, *ros_args: str) -> subprocess.Popen:
    """Run a console script's target ('module:function') as the console script would."""
    module, func = entry.split(":")
    env = dict(os.environ, FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA", OMP_NUM_THREADS="1")
    code = f"import sys; from {module} import {func}; sys.exit({func}())"
    return subprocess.Popen([sys.executable, "-c", code, "--ros-args", *ros_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_synthetic_source_to_tracker_to_subscriber():
    from tf2_msgs.msg import TFMessage

    tracker = start(
        "surg_invnerf_ros.ros.track_node:main", "--params-file", str(REPO / "config/track.yaml"),
        "-p", "device:=cpu", "-p", "refine.keyframe_every:=2", "-p", "refine.min_keyframes:=4",
        "-p", "refine.window_frames:=6",
        "-p", "refine.fit_overrides:=[max_steps=40, time_budget_s=6.0, num_threads=1, log_every=5]",
        "-p", "publish.diagnostics_rate_hz:=4.0", "-p", "sync.frame_queue_size:=8", *RELIABLE_INPUTS)
    source = None
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    outs = {}
    try:
        node = rclpy.create_node("pipeline_test", context=ctx)
        got = {"points": [], "gt": [], "tf": [], "tf_static": [], "diag": []}
        node.create_subscription(PointCloud2, "/surg_invnerf_tracker/tracked_points", got["points"].append, 200)
        node.create_subscription(PointCloud2, "/synthetic_stereo/ground_truth", got["gt"].append, 200)
        node.create_subscription(TFMessage, "/tf", got["tf"].append, 200)
        node.create_subscription(TFMessage, "/tf_static", got["tf_static"].append, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        node.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 50)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)

        def spin_until(pred, timeout_s):
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout_s and not pred():
                ex.spin_once(timeout_sec=0.05)
                for name, p in (("tracker", tracker), ("source", source)):
                    if p is not None and p.poll() is not None and name == "tracker":
                        raise AssertionError(f"{name} exited early:\n{p.stdout.read()}")
            return pred()

        # the tracker is up once its diagnostics arrive (torch is imported at start-up)
        assert spin_until(lambda: got["diag"], 120.0), "tracker published no diagnostics"
        source = start(
            "surg_invnerf_ros.ros.synthetic_source_node:main", "-p", "synth.width:=96", "-p", "synth.height:=72",
            "-p", f"synth.frames:={FRAMES}", "-p", "synth.num_queries:=9", "-p", "synth.difficulty:=easy",
            "-p", "end:=stop", "-p", "pose_type:=none", "-p", "rate_hz:=15.0",
            "-r", "queries_out:=/surg_invnerf_tracker/queries")
        def live():
            return [m for m in got["points"] if not convert.tracked_points_from_msg(m)["refined"].any()]

        def live_stamps():
            return sorted(convert.stamp_ns(m.header.stamp) for m in live())

        assert spin_until(lambda: len(got["gt"]) >= FRAMES and len(live()) >= FRAMES, 120.0), (
            f"{len(live())} front-end tracked_points, {len(got['gt'])} ground truth; tracker drops: "
            + str({kv.key: kv.value for s in got["diag"][-1].status for kv in s.values if "drops" in kv.key}))

        # every frame has tracked points (exactly once from the front end), with the source stamp and frame
        gt = {convert.stamp_ns(m.header.stamp): convert.tracked_points_from_msg(m) for m in got["gt"]}
        assert live_stamps() == sorted(gt), "a frame without tracked points"
        live = live()
        assert {m.header.frame_id for m in live} == {"endoscope_left_optical_frame"}

        # accuracy against ground truth, ids shared (queries arrive in the source's order)
        err2d, err3d = [], []
        for m in live:
            p = convert.tracked_points_from_msg(m)
            g = gt[convert.stamp_ns(m.header.stamp)]
            assert len(p) == len(g) == 9 and (p["id"] == g["id"]).all()
            vis = (p["visible"] == 1) & (g["visible"] == 1)
            err2d += np.hypot(p["u"] - g["u"], p["v"] - g["v"])[vis].tolist()
            d = np.sqrt((p["x"] - g["x"]) ** 2 + (p["y"] - g["y"]) ** 2 + (p["z"] - g["z"]) ** 2)[vis] * 1e3
            err3d += d[np.isfinite(d)].tolist()
        med2d, med3d = float(np.median(err2d)), float(np.median(err3d))
        print(f"pipeline: median error {med2d:.3f} px, {med3d:.3f} mm over {len(err2d)} visible point-frames")
        assert len(err2d) > 0.8 * FRAMES * 9, f"only {len(err2d)} visible point-frames"
        assert med2d < MEDIAN_ERR_2D_PX, f"median 2D error {med2d:.2f} px"
        assert med3d < MEDIAN_ERR_3D_MM, f"median 3D error {med3d:.2f} mm"

        # refined points appear (the fit runs after enough keyframes; tiny budget)
        def refined():
            return [m for m in got["points"] if convert.tracked_points_from_msg(m)["refined"].any()]
        assert spin_until(refined, 180.0), "no refined tracked_points within 180 s"
        r = convert.tracked_points_from_msg(refined()[0])
        assert r["refined"].all() and convert.stamp_ns(refined()[0].header.stamp) in gt
        ref_err = []
        for m in refined():  # reported, not bounded: a 40-step fit on 96×72 is a smoke test of the plumbing
            p, g = convert.tracked_points_from_msg(m), gt[convert.stamp_ns(m.header.stamp)]
            vis = (p["visible"] == 1) & (g["visible"] == 1)
            ref_err += np.hypot(p["u"] - g["u"], p["v"] - g["v"])[vis].tolist()
        print(f"pipeline: refined median 2D error {np.median(ref_err) if ref_err else float('nan'):.3f} px "
              f"over {len(ref_err)} visible point-frames in {len(refined())} refined messages")

        # TF: track frames under the left optical frame; the stereo frame on /tf_static
        children = {t.child_frame_id for m in got["tf"] for t in m.transforms}
        assert {f"track_{i}" for i in range(9)} <= children
        assert spin_until(lambda: got["tf_static"], 30.0)
        st = got["tf_static"][-1].transforms[0]
        assert (st.header.frame_id, st.child_frame_id) == ("endoscope_left_optical_frame",
                                                           "endoscope_right_optical_frame")
        assert st.transform.translation.x == pytest.approx(0.0045, rel=1e-3)

        # diagnostics: frames counted, refinement reported
        assert spin_until(lambda: any(
            kv.key == "refined_updates" and kv.value != "0"
            for m in got["diag"] for s in m.status for kv in s.values), 30.0)
        ex.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        outs["tracker"] = stop(tracker)
        if source is not None:
            outs["source"] = stop(source)
    assert "Traceback" not in outs["tracker"], outs["tracker"]
