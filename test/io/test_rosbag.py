"""io/rosbag.py: bags through rosbags, no rclpy, no DDS."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")

from surg_invnerf_ros.errors import InputError  # noqa: E402
from surg_invnerf_ros.geometry import T_from_xyz_qxyzw  # noqa: E402
from surg_invnerf_ros.io import rosbag as rb  # noqa: E402
from surg_invnerf_ros.io.messages import camera_info_to_calib, image_to_rgb_u8, stamp_ns  # noqa: E402
from surg_invnerf_ros.io.sequence import read_sequence  # noqa: E402
from surg_invnerf_ros.io.trackfile import read_tracks  # noqa: E402
from surg_invnerf_ros.structs import Queries, Sequence, StereoCalib, Tracks  # noqa: E402

T, H, W = 5, 48, 64
FX = 50.0
BASELINE_M = 0.005
T0_NS = 1_700_000_000_000_000_000
PERIOD_NS = 50_000_000  # 20 Hz


def make_sequence(seed: int = 0, with_pose: bool = True) -> tuple[Sequence, Tracks]:
    rng = np.random.default_rng(seed)
    calib = StereoCalib(K=np.array([[FX, 0, 31.5], [0, FX, 23.5], [0, 0, 1]]), baseline_m=BASELINE_M,
                        image_size=(W, H), fps=20.0)
    left = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    right = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    stamps = T0_NS + np.arange(T, dtype=np.int64) * PERIOD_NS
    angle = np.linspace(0, 0.2, T)
    q = np.stack([np.zeros(T), np.zeros(T), np.sin(angle / 2), np.cos(angle / 2)], 1)
    T_world_cam = T_from_xyz_qxyzw(np.stack([np.arange(T) * 1e-3, np.zeros(T), np.zeros(T)], 1), q)
    queries = Queries(ids=np.arange(3), query_tuv=np.array([[0, 10.5, 10.0], [0, 20.0, 30.25], [0, 40.0, 12.0]]))
    seq = Sequence(left, right, calib, stamps, queries, T_world_cam=T_world_cam if with_pose else None)
    gt = Tracks(ids=np.array([4, 7]), uv=rng.uniform(0, 40, (T, 2, 2)).astype(np.float32),
                visible=rng.random((T, 2)) > 0.3, xyz=rng.uniform(0, 0.1, (T, 2, 3)).astype(np.float32))
    return seq, gt


class TestRawBags:
    @pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
    def test_round_trip_keeps_bytes(self, tmp_path, storage):
        seq, gt = make_sequence()
        msgs = list(rb.sequence_messages(seq, gt=gt, namespace="/"))
        rb.write_bag(tmp_path / "bag", msgs, storage=storage)
        back = list(rb.read_bag(tmp_path / "bag"))
        assert [(m.topic, m.msgtype, m.log_time_ns) for m in back] == [(m.topic, m.msgtype, m.log_time_ns)
                                                                      for m in msgs]
        assert all(bytes(a.rawdata) == bytes(b.rawdata) for a, b in zip(back, msgs))
        # 7 messages a frame (pose, 2 infos, 2 images, gt) + the one frame with queries
        assert len(back) == 6 * T + 1
        assert rb.bag_topics(tmp_path / "bag")["/stereo/left/image_rect"] == rb.IMAGE

    def test_topic_filter(self, tmp_path):
        seq, _ = make_sequence()
        rb.sequence_to_bag(seq, tmp_path / "bag")
        got = list(rb.read_bag(tmp_path / "bag", topics=["/stereo/left/image_rect"]))
        assert len(got) == T and {m.topic for m in got} == {"/stereo/left/image_rect"}

    def test_bad_input(self, tmp_path):
        seq, _ = make_sequence()
        rb.sequence_to_bag(seq, tmp_path / "bag")
        with pytest.raises(InputError, match="already exists"):
            rb.sequence_to_bag(seq, tmp_path / "bag")
        with pytest.raises(InputError, match="unknown to rosbags"):
            rb.write_bag(tmp_path / "bad", [rb.BagMessage("/x", "nope_msgs/msg/Nope", 0, b"")])
        assert not (tmp_path / "bad").exists()  # nothing half-written is left
        with pytest.raises(InputError, match="storage"):
            rb.write_bag(tmp_path / "bad2", [], storage="rosbag1")
        with pytest.raises(InputError, match="not a ROS 2 bag"):
            list(rb.read_bag(tmp_path))


class TestDecoding:
    def test_image_encodings_and_padding(self):
        rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
        step = 5 * 3 + 7  # padded rows
        padded = np.zeros((4, step), np.uint8)
        padded[:, :15] = rgb.reshape(4, 15)
        msg = SimpleNamespace(height=4, width=5, step=step, encoding="rgb8", data=padded.tobytes())
        np.testing.assert_array_equal(image_to_rgb_u8(msg), rgb)
        bgr = SimpleNamespace(height=4, width=5, step=15, encoding="bgr8", data=rgb[:, :, ::-1].tobytes())
        np.testing.assert_array_equal(image_to_rgb_u8(bgr), rgb)
        mono = SimpleNamespace(height=4, width=5, step=5, encoding="mono8", data=rgb[:, :, 0].tobytes())
        np.testing.assert_array_equal(image_to_rgb_u8(mono), np.repeat(rgb[:, :, :1], 3, 2))

    def test_image_bad_input(self):
        short = SimpleNamespace(height=4, width=5, step=15, encoding="rgb8", data=b"\0" * 59)
        with pytest.raises(InputError, match="left: data") as err:
            image_to_rgb_u8(short, "left")
        assert err.value.reason == "data_too_short"
        with pytest.raises(InputError, match="encoding"):
            image_to_rgb_u8(SimpleNamespace(height=1, width=1, step=4, encoding="yuv422", data=b"\0" * 4))

    def test_camera_info_bad(self):
        seq, _ = make_sequence()
        left = rb.camera_info_msg(seq.calib, 0, "l", right=False)
        right = rb.camera_info_msg(seq.calib, 0, "r", right=True)
        calib = camera_info_to_calib(left, right)
        np.testing.assert_allclose(calib.K, seq.calib.K)
        assert calib.baseline_m == pytest.approx(BASELINE_M)
        with pytest.raises(InputError, match="Tx"):
            camera_info_to_calib(left, left)  # no baseline: Tx = 0
        zero = rb.camera_info_msg(replace(seq.calib, K=np.zeros((3, 3))), 0, "l", right=False)
        with pytest.raises(InputError, match="all zero"):
            camera_info_to_calib(zero, right)

    def test_topic_matching(self):
        topics = ["/ecm1/stereo/left/image_rect", "/stereo/right/image_rect", "/a/queries", "/b/queries"]
        assert rb.match_topic(topics, "stereo/left/image_rect") == "/ecm1/stereo/left/image_rect"
        assert rb.match_topic(topics, "/stereo/right/image_rect") == "/stereo/right/image_rect"
        assert rb.match_topic(topics, "image_raw") is None
        with pytest.raises(InputError, match="ambiguous"):
            rb.match_topic(topics, "queries")

    def test_grid_queries(self):
        q = rb.grid_queries(64, 48, 12)
        assert len(q) == 12 and np.all(q.query_tuv[:, 0] == 0)
        assert q.uv_px[:, 0].min() >= 0.1 * 63 - 1e-9 and q.uv_px[:, 0].max() <= 0.9 * 63 + 1e-9
        assert len(np.unique(q.uv_px, axis=0)) == 12


class TestBagToSequence:
    def test_round_trip(self, tmp_path):
        seq, gt = make_sequence()
        rb.sequence_to_bag(seq, tmp_path / "bag", gt=gt, storage="sqlite3")
        ticks = []
        out = rb.bag_to_sequence(tmp_path / "bag", tmp_path / "seq", progress=ticks.append)
        assert len(ticks) == T
        back = read_sequence(out)
        np.testing.assert_array_equal(back.left_rgb_u8, seq.left_rgb_u8)
        np.testing.assert_array_equal(back.right_rgb_u8, seq.right_rgb_u8)
        np.testing.assert_array_equal(back.stamps_ns, seq.stamps_ns)
        np.testing.assert_allclose(back.calib.K, seq.calib.K)
        assert back.calib.baseline_m == pytest.approx(BASELINE_M)
        assert back.calib.fps == pytest.approx(20.0)
        np.testing.assert_array_equal(back.queries.ids, seq.queries.ids)
        np.testing.assert_allclose(back.queries.query_tuv, seq.queries.query_tuv, atol=1e-4)
        np.testing.assert_allclose(back.T_world_cam, seq.T_world_cam, atol=1e-6)
        g = read_tracks(out / "gt" / "tracks.npz")
        np.testing.assert_array_equal(g.ids, gt.ids)
        np.testing.assert_array_equal(g.visible, gt.visible)
        np.testing.assert_allclose(g.uv, gt.uv)
        np.testing.assert_allclose(g.xyz, gt.xyz)

    def test_query_fallbacks(self, tmp_path):
        seq, gt = make_sequence(with_pose=False)
        no_queries = replace(seq, queries=Queries(ids=np.zeros(0, np.int64), query_tuv=np.zeros((0, 3))))
        rb.sequence_to_bag(no_queries, tmp_path / "gt_bag", gt=gt)
        q = read_sequence(rb.bag_to_sequence(tmp_path / "gt_bag", tmp_path / "a"), load_images=False).queries
        vis0 = gt.visible[0]
        np.testing.assert_array_equal(q.ids, gt.ids[vis0])  # visible ground truth at frame 0
        np.testing.assert_allclose(q.uv_px, gt.uv[0][vis0], atol=1e-4)
        assert not (tmp_path / "a" / "kinematics.csv").exists()

        rb.sequence_to_bag(no_queries, tmp_path / "plain_bag")
        q = read_sequence(rb.bag_to_sequence(tmp_path / "plain_bag", tmp_path / "b", auto_grid=6),
                          load_images=False).queries
        assert len(q) == 6
        given = Queries(ids=np.array([9]), query_tuv=np.array([[1.0, 5.0, 6.0]]))
        q = read_sequence(rb.bag_to_sequence(tmp_path / "gt_bag", tmp_path / "c", queries=given),
                          load_images=False).queries
        np.testing.assert_array_equal(q.ids, [9])

    def test_pairs_within_slop_and_hand_eye(self, tmp_path):
        seq, _ = make_sequence()
        shifted = []
        for m in rb.sequence_messages(seq, namespace="/ns"):
            if m.topic == "/ns/stereo/right/image_rect":  # right images stamped 1 ms late
                obj = rb.deserialize(m)
                s = stamp_ns(obj.header.stamp) + 1_000_000
                obj.header.stamp.sec, obj.header.stamp.nanosec = divmod(s, 1_000_000_000)
                m = rb.BagMessage(m.topic, m.msgtype, m.log_time_ns, rb.serialize(obj))
            shifted.append(m)
        rb.write_bag(tmp_path / "bag", shifted)
        with pytest.raises(InputError, match="no left/right image pair"):
            rb.bag_to_sequence(tmp_path / "bag", tmp_path / "exact")
        T_ecm_cam = T_from_xyz_qxyzw(np.array([0.0, 0.0, 0.01]), np.array([0.0, 0.0, 0.0, 1.0]))
        out = rb.bag_to_sequence(tmp_path / "bag", tmp_path / "seq", slop_s=0.002, T_ecm_cam=T_ecm_cam,
                                 time_offset_s=PERIOD_NS * 1e-9, max_pose_gap_s=0.06)
        back = read_sequence(out)
        np.testing.assert_array_equal(back.right_rgb_u8, seq.right_rgb_u8)
        # Frame t looks up the pose at t + one period (the last frame holds the last pose).
        expect = np.concatenate([seq.T_world_cam[1:], seq.T_world_cam[-1:]]) @ T_ecm_cam
        np.testing.assert_allclose(back.T_world_cam, expect, atol=1e-6)
        # beyond the allowed gap the kinematics are left out rather than guessed
        out = rb.bag_to_sequence(tmp_path / "bag", tmp_path / "seq2", slop_s=0.002, time_offset_s=PERIOD_NS * 1e-9)
        assert not (out / "kinematics.csv").exists()

    def test_missing_topic(self, tmp_path):
        seq, _ = make_sequence()
        msgs = [m for m in rb.sequence_messages(seq, namespace="/") if "right/camera_info" not in m.topic]
        rb.write_bag(tmp_path / "bag", msgs)
        with pytest.raises(InputError, match="stereo/right/camera_info"):
            rb.bag_to_sequence(tmp_path / "bag", tmp_path / "seq")
        assert not (tmp_path / "seq").exists()
