"""ros/synthetic_source_node.py: the synthetic stereo endoscope over real DDS (domain from conftest)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PolygonStamped, PoseStamped, TransformStamped  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from surg_invnerf_ros.config import SynthConfig  # noqa: E402
from surg_invnerf_ros.geometry import T_from_xyz_qxyzw  # noqa: E402
from surg_invnerf_ros.ros import convert  # noqa: E402
from surg_invnerf_ros.ros.synthetic_source_node import SyntheticStereoNode, scene_index  # noqa: E402
from surg_invnerf_ros.synth.generate import SyntheticScene  # noqa: E402

FRAMES = 6
SYNTH = dict(width=64, height=48, frames=FRAMES, num_queries=9, seed=3, camera_motion=True, instrument=True)
TOPICS = {
    "stereo/left/image_rect": Image,
    "stereo/right/image_rect": Image,
    "stereo/left/camera_info": CameraInfo,
    "stereo/right/camera_info": CameraInfo,
    "synthetic_stereo/ground_truth": PointCloud2,
    "queries_out": PolygonStamped,
}


@pytest.fixture
def ns():
    """A namespace of its own, so parallel runs sharing a domain cannot cross-talk."""
    return f"/t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ctx():
    c = Context()
    rclpy.init(context=c)
    yield c
    rclpy.shutdown(context=c)


def overrides(**extra):
    params = {f"synth.{k}": v for k, v in SYNTH.items()}
    params.update({"rate_hz": 100.0, "end": "stop", "wait_for_subscribers_s": 5.0})
    params.update(extra)
    return [Parameter(k, value=v) for k, v in params.items()]


def collect(ctx, ns, topics, until, timeout_s=15.0, nodes=()):
    """Subscribe (reliable, depth 50) to `topics` under `ns`; spin with `nodes` until `until(got)`."""
    sub = rclpy.create_node("probe", namespace=ns, context=ctx)
    got: dict[str, list] = {t: [] for t in topics}
    for topic, cls in topics.items():
        sub.create_subscription(cls, topic, lambda m, t=topic: got[t].append(m), 50)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(sub)
    for n in nodes:
        ex.add_node(n)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not until(got):
        ex.spin_once(timeout_sec=0.02)
    ex.shutdown()
    sub.destroy_node()
    return got


class TestSceneIndex:
    def test_known_values(self):
        # pingpong over 4 frames: 0 1 2 3 2 1 0 1 ...
        assert [scene_index(k, 4, "pingpong") for k in range(8)] == [0, 1, 2, 3, 2, 1, 0, 1]
        assert [scene_index(k, 3, "loop") for k in range(5)] == [0, 1, 2, 0, 1]
        assert [scene_index(k, 2, "stop") for k in range(3)] == [0, 1, None]
        assert scene_index(10, 2, "continue") == 10
        assert scene_index(5, 1, "pingpong") == 0


class TestSyntheticStereoNode:
    def test_topics_stamps_and_ground_truth(self, ctx, ns):
        topics = dict(TOPICS, **{"ecm/measured_cp": PoseStamped})
        src = SyntheticStereoNode(context=ctx, namespace=ns, parameter_overrides=overrides(T_ecm_cam=[
            1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.01, 0.0, 0.0, 0.0, 1.0]))
        try:
            got = collect(ctx, ns, topics, lambda g: src.done.is_set() and all(
                len(g[t]) >= FRAMES for t in topics if t != "queries_out"), nodes=[src])
        finally:
            src.destroy_node()
        assert src.published == FRAMES
        for t in topics:
            if t != "queries_out":
                assert len(got[t]) == FRAMES, t
        scene = SyntheticScene(SynthConfig(**SYNTH))
        stamps = [convert.stamp_ns(m.header.stamp) for m in got["stereo/left/image_rect"]]
        assert np.all(np.diff(stamps) == np.round(np.arange(1, FRAMES) * 1e9 / 30.0).astype(np.int64)
                      - np.round(np.arange(FRAMES - 1) * 1e9 / 30.0).astype(np.int64))
        for t in topics:  # every message of frame i carries the same stamp
            if t != "queries_out":
                assert [convert.stamp_ns(m.header.stamp) for m in got[t]] == stamps, t
        assert got["stereo/left/image_rect"][0].header.frame_id == "endoscope_left_optical_frame"
        assert got["stereo/right/camera_info"][0].header.frame_id == "endoscope_right_optical_frame"
        calib = convert.camera_info_to_calib(got["stereo/left/camera_info"][0], got["stereo/right/camera_info"][0])
        np.testing.assert_allclose(calib.K, scene.calib.K)
        assert calib.baseline_m == pytest.approx(scene.calib.baseline_m)
        T_ecm_cam = np.eye(4)
        T_ecm_cam[2, 3] = 0.01
        for i in range(FRAMES):
            f = scene.frame(i)
            np.testing.assert_array_equal(convert.image_to_rgb_u8(got["stereo/left/image_rect"][i]), f.left_rgb_u8)
            right = convert.image_to_rgb_u8(got["stereo/right/image_rect"][i])
            np.testing.assert_array_equal(right, f.right_rgb_u8)
            pts = convert.tracked_points_from_msg(got["synthetic_stereo/ground_truth"][i])
            np.testing.assert_array_equal(pts["id"], scene.queries.ids)
            np.testing.assert_allclose(np.stack([pts["u"], pts["v"]], 1), f.gt_uv_px, atol=1e-4)
            np.testing.assert_allclose(np.stack([pts["x"], pts["y"], pts["z"]], 1), f.gt_xyz_cam_m, atol=1e-6)
            np.testing.assert_array_equal(pts["visible"].astype(bool), f.gt_visible)
            p = got["ecm/measured_cp"][i].pose
            T_world_ecm = T_from_xyz_qxyzw(np.array([p.position.x, p.position.y, p.position.z]),
                                           np.array([p.orientation.x, p.orientation.y, p.orientation.z,
                                                     p.orientation.w]))
            np.testing.assert_allclose(T_world_ecm @ T_ecm_cam, f.T_world_cam, atol=1e-9)
        assert np.ptp([got["ecm/measured_cp"][i].pose.position.x for i in range(FRAMES)]) > 0  # camera moves
        q = got["queries_out"][0]
        assert convert.stamp_ns(q.header.stamp) == stamps[0]
        np.testing.assert_allclose(convert.polygon_to_uv_px(q), scene.queries.uv_px, atol=1e-4)

    def test_transform_stamped_and_loop(self, ctx, ns):
        topics = {**{t: c for t, c in TOPICS.items() if "ground_truth" not in t}, "ecm/measured_cp": TransformStamped}
        n = 2 * FRAMES + 1
        src = SyntheticStereoNode(context=ctx, namespace=ns, parameter_overrides=overrides(
            pose_type="TransformStamped", end="loop", ground_truth=False))
        try:
            got = collect(ctx, ns, topics, lambda g: len(g["stereo/left/image_rect"]) >= n, nodes=[src])
        finally:
            src.destroy_node()
        imgs = got["stereo/left/image_rect"]
        assert len(imgs) >= n
        # frame FRAMES is frame 0 again (loop), with a later stamp
        np.testing.assert_array_equal(convert.image_to_rgb_u8(imgs[FRAMES]), convert.image_to_rgb_u8(imgs[0]))
        assert convert.stamp_ns(imgs[FRAMES].header.stamp) > convert.stamp_ns(imgs[FRAMES - 1].header.stamp)
        tf = got["ecm/measured_cp"][0]
        assert tf.header.frame_id == "world" and tf.child_frame_id == "ecm"

    def test_queries_reach_a_late_subscriber_once(self, ctx, ns):
        src = SyntheticStereoNode(context=ctx, namespace=ns, parameter_overrides=overrides(
            end="continue", wait_for_subscribers_s=0.0))
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(src)
        try:
            end = time.monotonic() + 10
            while src.published < 3 and time.monotonic() < end:  # frame 0's copy reached no one
                ex.spin_once(timeout_sec=0.02)
            n0 = src.published
            got = collect(ctx, ns, {"queries_out": PolygonStamped, "synthetic_stereo/ground_truth": PointCloud2},
                          lambda g: src.published > n0 + 20, nodes=[src])
        finally:
            ex.shutdown()
            src.destroy_node()
        assert len(got["queries_out"]) == 1  # one copy, not one per later subscriber or frame
        q = got["queries_out"][0]
        gt = {convert.stamp_ns(m.header.stamp): m for m in got["synthetic_stereo/ground_truth"]}
        pts = convert.tracked_points_from_msg(gt[convert.stamp_ns(q.header.stamp)])  # at a later frame's stamp
        assert convert.stamp_ns(q.header.stamp) > src.start_ns
        np.testing.assert_allclose(convert.polygon_to_uv_px(q), np.stack([pts["u"], pts["v"]], 1), atol=1e-4)

    def test_bad_parameter(self, ctx):
        from surg_invnerf_ros.errors import ConfigError

        with pytest.raises(ConfigError, match="rate_hz"):
            SyntheticStereoNode(context=ctx, parameter_overrides=overrides(rate_hz=-1.0))
        with pytest.raises(ConfigError, match="synth.widht"):
            SyntheticStereoNode(context=ctx, parameter_overrides=overrides(**{"synth.widht": 10}))


class TestConsoleScript:
    CMD = [sys.executable, "-c", "import sys; from surg_invnerf_ros.ros.synthetic_source_node import main; "
           "sys.exit(main())", "--ros-args"]

    def test_streams_until_sigterm(self, ctx, ns):
        params = {**{f"synth.{k}": v for k, v in SYNTH.items()}, "end": "continue", "rate_hz": 50.0,
                  "wait_for_subscribers_s": 0.0}
        args = [a for k, v in params.items() for a in ("-p", f"{k}:={str(v).lower()}")]
        proc = subprocess.Popen(self.CMD + args + ["-r", f"__ns:={ns}"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            got = collect(ctx, ns, {"stereo/left/image_rect": Image},
                          lambda g: len(g["stereo/left/image_rect"]) >= FRAMES + 2, timeout_s=20.0)
            assert len(got["stereo/left/image_rect"]) >= FRAMES + 2  # continues past synth.frames
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, out  # SIGTERM is a clean shutdown

    def test_bad_parameter_exits_2(self):
        res = subprocess.run(self.CMD + ["-p", "end:=sideways"], capture_output=True, text=True, timeout=30)
        assert res.returncode == 2
        assert "end: expected one of" in res.stdout + res.stderr
