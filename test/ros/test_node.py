"""ros/track_node.py in-process: one TrackerNode and a test node on a per-test Context (real DDS)."""

import numpy as np
import pytest
from geometry_msgs.msg import Point32, PointStamped, PolygonStamped
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.online import RefineOutput
from surg_invnerf_ros.ros import convert
from surg_invnerf_ros.ros.track_node import TrackerNode
from surg_invnerf_ros.structs import Tracks

from .track_harness import BASELINE_M, DISP_PX, FX, LEFT_FRAME, RIGHT_FRAME, T0_NS, Harness, ros_context

Z_M = FX * BASELINE_M / DISP_PX  # 0.03125 m everywhere in the harness scene


@pytest.fixture
def ctx():
    with ros_context() as c:
        yield c


def call(h: Harness, name: str) -> Trigger.Response:
    client = h.io.create_client(Trigger, f"/surg_invnerf_tracker/{name}")
    assert client.wait_for_service(timeout_sec=2.0)
    fut = client.call_async(Trigger.Request())
    h.spin_until(fut.done, 3.0)
    return fut.result()


class TestOutputs:
    def test_every_frame_published_with_source_stamp_and_frame(self, ctx):
        h = Harness(ctx, {"queries.points_px": [20.0, 20.0, 40.0, 30.0]})
        try:
            stamps = [h.send(i) for i in range(5)]
            assert h.spin_until(lambda: len(h.got["points"]) >= 5 and len(h.got["tf"]) >= 5, 5.0)
            assert h.stamps() == stamps
            assert all(m.header.frame_id == LEFT_FRAME for m in h.got["points"])
            pts = h.points()
            assert pts[-1]["id"].tolist() == [0, 1]
            # the scene slides 1 px left per frame: 4 px after 4 frames; depth fx·B/d everywhere
            np.testing.assert_allclose(pts[-1]["u"], [16.0, 36.0], atol=0.2)
            np.testing.assert_allclose(pts[-1]["z"], Z_M, rtol=0.05)  # sparse LK stereo on a fine texture
            assert pts[-1]["visible"].all() and not pts[-1]["refined"].any()
            for key in ("overlay", "markers", "cloud"):
                assert h.spin_until(lambda k=key: h.got[k], 2.0), f"nothing on ~/{key}"
                first = h.got[key][0]
                hdr = first.markers[0].header if key == "markers" else first.header
                assert convert.stamp_ns(hdr.stamp) in stamps and hdr.frame_id == LEFT_FRAME
            ov = convert.image_to_rgb_u8(h.got["overlay"][-1])
            assert ov.shape == (48, 64, 3) and tuple(ov[20, 16]) == (255, 215, 30)  # a front-end dot
            cloud = convert.cloud_to_struct(h.got["cloud"][0])
            assert len(cloud) > 50 and np.nanmedian(cloud["z"]) == pytest.approx(Z_M, rel=0.02)
            tf_last = h.got["tf"][-1].transforms
            assert sorted(t.child_frame_id for t in tf_last) == ["track_0", "track_1"]
            assert tf_last[0].header.frame_id == LEFT_FRAME and convert.stamp_ns(tf_last[0].header.stamp) == stamps[-1]
            assert h.spin_until(lambda: h.got["tf_static"], 2.0)
            st = h.got["tf_static"][-1].transforms[0]
            assert (st.header.frame_id, st.child_frame_id) == (LEFT_FRAME, RIGHT_FRAME)
            assert st.transform.translation.x == pytest.approx(BASELINE_M)
        finally:
            h.close()

    def test_waits_for_queries_then_takes_a_polygon(self, ctx):
        h = Harness(ctx)
        try:
            h.send(0)
            assert h.spin_until(lambda: h.got["points"], 3.0)
            assert len(h.points()[0]) == 0  # no queries yet: an empty cloud, still per frame
            q = PolygonStamped()
            q.header.stamp = convert.to_stamp(T0_NS)
            q.polygon.points = [Point32(x=30.0, y=20.0), Point32(x=10.0, y=10.0)]
            h.pub["queries"].publish(q)
            h.spin_until(lambda: len(h.node.tracker.query_ids) == 2, 2.0)
            h.send(1)
            assert h.spin_until(lambda: len(h.got["points"]) >= 2, 3.0)
            last = h.points()[-1]
            assert last["id"].tolist() == [0, 1]
            np.testing.assert_allclose(last["u"], [29.0, 9.0], atol=0.2)
        finally:
            h.close()

    def test_clicked_point_becomes_a_query(self, ctx):
        h = Harness(ctx)
        try:
            h.send(0)
            assert h.spin_until(lambda: h.got["points"], 3.0)
            p = PointStamped()
            p.header.frame_id = LEFT_FRAME
            p.point.x, p.point.y, p.point.z = 0.0, 0.0, Z_M  # the principal point (32, 24)
            h.pub["clicked"].publish(p)
            assert h.spin_until(lambda: len(h.node.tracker.query_ids) == 1, 2.0)
            h.send(1)
            assert h.spin_until(lambda: len(h.got["points"]) >= 2, 3.0)
            np.testing.assert_allclose([h.points()[-1]["u"][0], h.points()[-1]["v"][0]], [31.0, 24.0], atol=0.2)
        finally:
            h.close()

    def test_auto_grid_on_first_frame(self, ctx):
        h = Harness(ctx, {"queries.auto_grid": 6})
        try:
            h.send(0)
            assert h.spin_until(lambda: h.got["points"], 3.0)
            assert h.points()[0]["id"].tolist() == list(range(6))
        finally:
            h.close()


class TestServices:
    def test_clear_and_reset(self, ctx):
        h = Harness(ctx, {"queries.points_px": [20.0, 20.0]})
        try:
            h.send(0)
            assert h.spin_until(lambda: h.got["points"], 3.0)
            res = call(h, "clear")
            assert res.success and res.message == "cleared 1 queries"
            h.send(1)
            assert h.spin_until(lambda: len(h.got["points"]) >= 2, 3.0)
            assert len(h.points()[-1]) == 0
            assert h.node.tracker.add_queries(np.array([[5.0, 5.0]])).tolist() == [1]  # ids are not reused
            res = call(h, "reset")
            assert res.success and "dropped 1 queries and the model" in res.message
            assert len(h.node.tracker.query_ids) == 0
        finally:
            h.close()


class TestMarkerRate:
    @pytest.mark.parametrize("rate_hz", [0.0, 0.5])
    def test_markers_are_rate_limited_and_trails_keep_every_frame(self, ctx, rate_hz):
        h = Harness(ctx, {"queries.points_px": [20.0, 20.0], "publish.markers_rate_hz": rate_hz})
        try:
            for i in range(6):
                h.send(i)
                assert h.spin_until(lambda i=i: len(h.got["points"]) > i, 3.0)
            h.spin_for(0.3)
            if rate_hz == 0:
                assert len(h.got["markers"]) == 6, "rate 0: markers with every frame"
            else:  # 6 frames in well under 2 s: the first frame's markers only
                assert len(h.got["markers"]) == 1
            # the trail grows with every frame, published or not
            assert len(h.node.pubs._trails[0]) == 6
        finally:
            h.close()


class TestRefinement:
    def test_refined_points_are_published(self, ctx):
        class Refiner:
            """Answers with the query pixels, shifted 1 px left per keyframe step (the truth)."""

            def __call__(self, job):
                q = job.seq.queries
                T = job.seq.num_frames
                frames = (job.seq.stamps_ns - T0_NS) // 33_333_333
                uv = q.uv_px[None] - (frames[:, None, None] - frames[q.frame_idx][None, :, None]) * np.array([1.0, 0])
                return RefineOutput(Tracks(q.ids, uv.astype(np.float32), np.ones((T, len(q)), bool),
                                           np.full((T, len(q), 3), 0.03, np.float32)), state="s", stats={"loss": 0.1},
                                    depth_m=np.full((48, 64), 0.05, np.float32))

        h = Harness(ctx, {"queries.points_px": [20.0, 20.0], "refine.enabled": True, "refine.keyframe_every": 1,
                          "refine.min_keyframes": 3, "refine.window_frames": 4, "refine.new_keyframes": 1},
                    refiner=Refiner())
        try:
            for i in range(4):
                h.send(i)
                h.spin_until(lambda i=i: len(h.got["points"]) > i, 2.0)
            refined = h.spin_until(lambda: [p for p in h.points() if p["refined"].any()], 5.0)
            assert refined, "no refined tracked_points"
            assert refined[0]["refined"].all() and refined[0]["id"].tolist() == [0]
            # the model's render goes out on ~/cloud with the newest refined frame's stamp
            def model_cloud_stamps():
                return {convert.stamp_ns(c.header.stamp) for c in h.got["cloud"]
                        if np.allclose(convert.cloud_to_struct(c)["z"], 0.05)}

            def refined_stamps():
                return {convert.stamp_ns(m.header.stamp) for m in h.got["points"]
                        if convert.tracked_points_from_msg(m)["refined"].any()}

            assert h.spin_until(lambda: model_cloud_stamps() and model_cloud_stamps() <= refined_stamps(), 3.0)
            assert max(model_cloud_stamps()) == max(refined_stamps())
            fits = lambda: h.diag().get("surg_invnerf_tracker: model", {}).get("fits")  # noqa: E731
            assert h.spin_until(lambda: fits() not in (None, "0"), 3.0)
            # refined coverage (frames refined / keyframes taken) and lag (frame stamp → refined publication)
            model = lambda: h.diag()["surg_invnerf_tracker: model"]  # noqa: E731
            assert h.spin_until(lambda: int(model()["refined_frames"]) >= 3, 3.0), model()
            assert 0.0 < float(model()["refined_coverage"]) <= 1.0
            assert 0.0 < float(model()["refine_lag_p50_s"]) < 60.0
        finally:
            h.close()


class TestParameters:
    @pytest.mark.parametrize("name,value,match", [
        ("device", "gpu", "device: expected one of auto|cpu|cuda"),
        ("publish.poll_rate_hz", -2.0, "publish.poll_rate_hz: expected >= 0.1"),
        ("sync.slopp_s", 0.1, "sync.slopp_s: unknown parameter"),
        ("qos_overrides./stereo/left/image_rect.subscription.reliability", "bogus",
         "qos_overrides./stereo/left/image_rect.subscription: Unexpected QoS override"),
    ])
    def test_bad_parameter_refuses_start(self, ctx, name, value, match):
        with pytest.raises(ConfigError, match=match):
            TrackerNode(context=ctx, parameter_overrides=[Parameter(name, value=value)])


class TestQueues:
    def test_frame_queue_is_bounded_and_counts_frontend_busy(self, ctx):
        from surg_invnerf_ros.ros.sync import StereoSet

        h = Harness(ctx, {"sync.frame_queue_size": 2})
        try:
            with h.node._frontend_lock:  # the front-end thread is "busy" on a frame: nobody drains
                for k in range(5):
                    h.node._enqueue(StereoSet(T0_NS + k, None, None, None, None, 0))
                assert len(h.node._frames) == 2 and [s.stamp_ns for s in h.node._frames] == [T0_NS + 3, T0_NS + 4]
                assert h.node.stats.drops["frontend_busy"] == 3
                h.node._frames.clear()
        finally:
            h.close()

    def test_frames_processed_while_the_next_waits_shed_the_reacquisition(self, ctx):
        from surg_invnerf_ros.ros.sync import StereoSet

        from .track_harness import PERIOD_NS, stereo_pair

        h = Harness(ctx, {"queries.auto_grid": 4})
        try:
            with h.node._frontend_lock:  # the front end is busy: three frames queue up
                for k in range(3):
                    stamp = T0_NS + k * PERIOD_NS
                    lrgb, rrgb = stereo_pair(k)
                    il, ir = h.infos(stamp)
                    h.node._enqueue(StereoSet(stamp, convert.numpy_to_image(lrgb, "rgb8", stamp, LEFT_FRAME),
                                              convert.numpy_to_image(rrgb, "rgb8", stamp, RIGHT_FRAME), il, ir, 0))
            assert h.spin_until(lambda: h.node.stats.frames_processed == 3, 10.0)
            assert h.node.stats.frames_shed == 2  # the first two had a frame waiting behind them, the last none
            assert h.spin_until(lambda: h.diag().get("surg_invnerf_tracker: tracking", {}).get("frames_shed") == "2")
        finally:
            h.close()

    def test_input_qos_is_sensor_data_and_overridable(self, ctx):
        from rclpy.qos import ReliabilityPolicy

        h = Harness(ctx, {"qos_overrides./stereo/left/image_rect.subscription.reliability": "reliable"})
        try:
            def reliability(topic):
                infos = [i for i in h.io.get_subscriptions_info_by_topic(topic)
                         if i.node_name == "surg_invnerf_tracker"]
                return infos[0].qos_profile.reliability

            assert reliability("/stereo/left/image_rect") == ReliabilityPolicy.RELIABLE
            assert reliability("/stereo/right/image_rect") == ReliabilityPolicy.BEST_EFFORT  # SensorData default
        finally:
            h.close()
