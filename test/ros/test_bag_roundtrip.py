"""ros/bag_nodes.py: record the synthetic stream into bags and sequence folders; play bags back (real DDS)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402

from surg_invnerf_ros.config import SynthConfig  # noqa: E402
from surg_invnerf_ros.io import rosbag as rb  # noqa: E402
from surg_invnerf_ros.io.sequence import read_sequence  # noqa: E402
from surg_invnerf_ros.io.trackfile import read_tracks  # noqa: E402
from surg_invnerf_ros.ros.bag_nodes import message_class, record  # noqa: E402
from surg_invnerf_ros.ros.synthetic_source_node import SyntheticStereoNode  # noqa: E402
from surg_invnerf_ros.synth.generate import SyntheticScene  # noqa: E402

FRAMES = 5
SYNTH = dict(width=64, height=48, frames=FRAMES, num_queries=6, seed=1, camera_motion=True)


@pytest.fixture(scope="module")
def scene_frames():
    scene = SyntheticScene(SynthConfig(**SYNTH))
    return scene, [scene.frame(i) for i in range(FRAMES)]


class _Source:
    """A synthetic_stereo node (end=stop) spinning in a thread in its own context."""

    def __init__(self, **extra) -> None:
        self.ns = f"/t{uuid.uuid4().hex[:8]}"  # parallel runs sharing a domain cannot cross-talk
        self.ctx = Context()
        rclpy.init(context=self.ctx)
        params = {f"synth.{k}": v for k, v in SYNTH.items()}
        params.update({"rate_hz": 50.0, "end": "stop", "wait_for_subscribers_s": 10.0}, **extra)
        self.node = SyntheticStereoNode(context=self.ctx, namespace=self.ns, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()])
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while self.ctx.ok() and not self.node.done.is_set():
            self.executor.spin_once(timeout_sec=0.02)
        if self.node.done.is_set():
            self.node.drain(3.0)

    def stop_after_done(self, linger_s: float = 1.0) -> threading.Event:
        """An event set `linger_s` after the last frame (a recorder stops on it, whatever else talks)."""
        ev = threading.Event()
        threading.Thread(target=lambda: (self.node.done.wait(30), time.sleep(linger_s), ev.set()),
                         daemon=True).start()
        return ev

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@pytest.fixture
def source():
    src = _Source()
    yield src
    src.close()


@pytest.fixture
def source_no_gt():
    src = _Source(ground_truth=False)
    yield src
    src.close()


def check_sequence(seq, scene, frames) -> None:
    assert seq.num_frames == FRAMES
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(seq.left_rgb_u8[i], f.left_rgb_u8)
        np.testing.assert_array_equal(seq.right_rgb_u8[i], f.right_rgb_u8)
    np.testing.assert_allclose(seq.calib.K, scene.calib.K)
    assert seq.calib.baseline_m == pytest.approx(scene.calib.baseline_m)
    assert seq.calib.fps == pytest.approx(SynthConfig().fps, rel=1e-3)
    np.testing.assert_allclose(seq.T_world_cam, np.stack([f.T_world_cam for f in frames]), atol=1e-6)


class TestRecord:
    def test_bag_then_sequence(self, tmp_path, source, scene_frames):
        scene, frames = scene_frames
        ns = source.ns
        bag = record(None, tmp_path / "rec", duration_s=30.0, to="bag", storage="mcap",
                     stop=source.stop_after_done())
        assert source.node.published == FRAMES
        topics = rb.bag_topics(bag)
        assert topics[f"{ns}/stereo/left/image_rect"] == rb.IMAGE
        assert topics[f"{ns}/synthetic_stereo/ground_truth"] == rb.POINT_CLOUD2
        counts: dict[str, int] = {}
        for m in rb.read_bag(bag):
            counts[m.topic] = counts.get(m.topic, 0) + 1
        assert counts[f"{ns}/stereo/left/image_rect"] == FRAMES and counts[f"{ns}/ecm/measured_cp"] == FRAMES

        # exact names: a run sharing this domain may have recorded its own stereo topics too
        names = rb.BagTopics(**{**{k: f"{ns}/{v}" for k, v in vars(rb.BagTopics()).items()},
                                "ground_truth": f"{ns}/synthetic_stereo/ground_truth"})
        out = rb.bag_to_sequence(bag, tmp_path / "seq", topics=names)
        seq = read_sequence(out)
        check_sequence(seq, scene, frames)
        assert np.all(np.diff(seq.stamps_ns) > 0)
        # no ~/queries topic under that name: the queries come from the ground truth at frame 0
        np.testing.assert_array_equal(seq.queries.ids, scene.queries.ids)
        np.testing.assert_allclose(seq.queries.query_tuv, scene.queries.query_tuv, atol=1e-3)
        gt = read_tracks(out / "gt" / "tracks.npz")
        np.testing.assert_allclose(gt.uv, np.stack([f.gt_uv_px for f in frames]), atol=1e-4)

    def test_sequence_with_queries_topic(self, tmp_path, source_no_gt, scene_frames):
        scene, frames = scene_frames
        topics = [f"{source_no_gt.ns}/{t}" for t in (
            "stereo/left/image_rect", "stereo/right/image_rect", "stereo/left/camera_info",
            "stereo/right/camera_info", "ecm/measured_cp", "queries_out")]
        out = record(topics, tmp_path / "seq", duration_s=30.0, to="sequence", storage="sqlite3",
                     idle_timeout_s=1.0, sequence_topics=rb.BagTopics(queries="queries_out"), keep_bag=True,
                     stop=source_no_gt.stop_after_done())
        seq = read_sequence(out)
        check_sequence(seq, scene, frames)
        # the first polygon recorded: frame 0, or the frame where it was republished for the late subscriber
        t = int(seq.queries.query_tuv[0, 0])
        assert t <= 2 and np.all(seq.queries.query_tuv[:, 0] == t)
        np.testing.assert_allclose(seq.queries.uv_px, frames[t].gt_uv_px, atol=1e-3)
        assert not (out / "gt").exists()  # no ground truth published
        assert set(rb.bag_topics(tmp_path / ".seq.bag")) == set(topics)


class TestPlayer:
    def test_replays_all_messages_in_order(self, tmp_path, scene_frames):
        scene, frames = scene_frames
        from surg_invnerf_ros.structs import Sequence

        seq = Sequence(np.stack([f.left_rgb_u8 for f in frames]), np.stack([f.right_rgb_u8 for f in frames]),
                       scene.calib, np.array([f.stamp_ns for f in frames]), scene.queries,
                       T_world_cam=np.stack([f.T_world_cam for f in frames]))
        bag = rb.sequence_to_bag(seq, tmp_path / "bag", namespace=f"/t{uuid.uuid4().hex[:8]}")
        expected: dict[str, list[bytes]] = {}
        for m in rb.read_bag(bag):
            expected.setdefault(m.topic, []).append(bytes(m.rawdata))

        ctx = Context()
        rclpy.init(context=ctx)
        try:
            node = rclpy.create_node("listener", context=ctx)
            got: dict[str, list[bytes]] = {t: [] for t in expected}
            clock: list[int] = []
            for topic, msgtype in rb.bag_topics(bag).items():
                node.create_subscription(message_class(msgtype), topic,
                                         lambda raw, t=topic: got[t].append(bytes(raw)), 100, raw=True)
            node.create_subscription(Clock, "/clock", lambda m: clock.append(
                m.clock.sec * 1_000_000_000 + m.clock.nanosec), 100)
            ex = SingleThreadedExecutor(context=ctx)
            ex.add_node(node)
            cmd = [sys.executable, "-c", "import sys; from surg_invnerf_ros.ros.bag_nodes import player_main; "
                   "sys.exit(player_main())", "--ros-args", "-p", f"bag:={bag}", "-p", "rate:=4.0",
                   "-p", "clock:=true", "-p", "clock_rate_hz:=50.0"]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            end = time.monotonic() + 30
            done = lambda: all(len(got[t]) == len(expected[t]) for t in expected)  # noqa: E731
            while time.monotonic() < end and not (done() and proc.poll() is not None):
                ex.spin_once(timeout_sec=0.02)
            out, _ = proc.communicate(timeout=10)
            ex.shutdown()
            node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)
        assert proc.returncode == 0, out
        for t in expected:
            assert len(got[t]) == len(expected[t]), t
            # DDS pads the payload to 4 bytes; the message bytes themselves are unchanged, in order.
            assert all(g[:len(e)] == e for g, e in zip(got[t], expected[t])), t
        assert len(clock) >= 2 and np.all(np.diff(clock) >= 0)
        assert seq.stamps_ns[0] <= clock[-1] <= seq.stamps_ns[-1] + 200_000_000

    def test_play_function_with_topic_filter(self, tmp_path, scene_frames):
        from surg_invnerf_ros.ros.bag_nodes import play
        from surg_invnerf_ros.structs import Sequence

        scene, frames = scene_frames
        seq = Sequence(np.stack([f.left_rgb_u8 for f in frames]), np.stack([f.right_rgb_u8 for f in frames]),
                       scene.calib, np.array([f.stamp_ns for f in frames]), scene.queries)
        ns = f"/t{uuid.uuid4().hex[:8]}"
        bag = rb.sequence_to_bag(seq, tmp_path / "bag", namespace=ns)
        ctx = Context()
        rclpy.init(context=ctx)
        try:
            node = rclpy.create_node("listener", context=ctx)
            got = []
            node.create_subscription(message_class(rb.IMAGE), f"{ns}/stereo/left/image_rect", got.append, 100)
            ex = SingleThreadedExecutor(context=ctx)
            ex.add_node(node)
            result = {}
            th = threading.Thread(target=lambda: result.setdefault("n", play(
                bag, rate=0.0, topics=[f"{ns}/stereo/left/image_rect"], wait_for_subscribers_s=10.0)))
            th.start()
            end = time.monotonic() + 20
            while time.monotonic() < end and (th.is_alive() or len(got) < FRAMES):
                ex.spin_once(timeout_sec=0.02)
            th.join(timeout=5)
            ex.shutdown()
            node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)
        assert result["n"] == FRAMES  # only the chosen topic was played
        assert [m.header.stamp.nanosec for m in got] == [int(s % 1_000_000_000) for s in seq.stamps_ns]

    def test_bad_bag_exits_2(self, tmp_path):
        cmd = [sys.executable, "-c", "import sys; from surg_invnerf_ros.ros.bag_nodes import player_main; "
               "sys.exit(player_main())", "--ros-args", "-p", f"bag:={tmp_path / 'none'}"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert res.returncode == 2
        assert "not a ROS 2 bag" in res.stdout + res.stderr


class TestPlayerQoS:
    def test_query_polygons_are_replayed_transient_local(self, tmp_path, scene_frames):
        """The tracker's ~/queries takes transient local only: replayed polygons must match it."""
        from rclpy.qos import DurabilityPolicy

        from surg_invnerf_ros.config import BagPlayerConfig
        from surg_invnerf_ros.ros.bag_nodes import BagPlayer
        from surg_invnerf_ros.structs import Sequence

        scene, frames = scene_frames
        seq = Sequence(np.stack([f.left_rgb_u8 for f in frames[:2]]), np.stack([f.right_rgb_u8 for f in frames[:2]]),
                       scene.calib, np.array([f.stamp_ns for f in frames[:2]]), scene.queries)
        bag = rb.sequence_to_bag(seq, tmp_path / "bag")
        kinds = rb.bag_topics(bag)
        polygon_topics = [t for t, k in kinds.items() if k == rb.POLYGON_STAMPED]
        assert polygon_topics, kinds
        ctx = Context()
        rclpy.init(context=ctx)
        try:
            node = rclpy.create_node("player_qos", context=ctx)
            player = BagPlayer(node, BagPlayerConfig(bag=str(bag)))
            for topic in kinds:
                want = DurabilityPolicy.TRANSIENT_LOCAL if topic in polygon_topics else DurabilityPolicy.VOLATILE
                assert player.publishers[topic].qos_profile.durability == want, topic
            node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)
