"""~/queries, clicked_point and ~/remove_queries of the tracker (DESIGN §5): no query is lost silently.

A polygon published (transient local) before the node exists still reaches it; each point of a
polygon is tracked or refused, and each refused point is counted by reason in /diagnostics and
warned about; removing ids the tracker does not hold is counted, not an error.
"""

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import Point32, PointStamped, PolygonStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import UInt32MultiArray
from std_srvs.srv import Trigger

from surg_invnerf_ros.ros import convert
from surg_invnerf_ros.ros.track_node import PENDING_QUERIES_TIMEOUT_S, queries_qos, query_point_refusals

from .track_harness import LEFT_FRAME, PERIOD_NS, T0_NS, Harness, ros_context

QUERIES = "/surg_invnerf_tracker/queries"


def polygon(uv, stamp_ns: int = 0) -> PolygonStamped:
    msg = PolygonStamped(header=convert.header(stamp_ns, LEFT_FRAME))
    msg.polygon.points = [Point32(x=float(u), y=float(v), z=0.0) for u, v in uv]
    return msg


@pytest.fixture
def ctx():
    with ros_context() as c:
        yield c


def harness_with_a_frame(ctx, overrides=None) -> tuple[Harness, list[str]]:
    """A harness that has tracked frame 0 (so the image size is known); the node's warnings are recorded."""
    h = Harness(ctx, overrides)
    warned: list[str] = []
    h.node._warn = warned.append  # the node's throttled warning, recorded instead
    h.send(0)
    assert h.spin_until(lambda: h.got["points"], 5.0), "frame 0 was not tracked"
    return h, warned


class TestPointRefusals:
    def test_each_point_judged_alone(self):
        uv = np.array([[1, 1], [np.nan, 2], [70, 5], [3, -0.5], [5, 5], [np.inf, np.inf], [63, 47]], float)
        keep, refused = query_point_refusals(uv, (64, 48), room=10)
        assert keep.tolist() == [True, False, False, False, True, False, True]
        assert refused == {"bad_queries": 2, "queries_outside_image": 2}

    def test_room_is_filled_by_the_first_valid_points(self):
        keep, refused = query_point_refusals(np.array([[np.nan, 0], [1, 1], [2, 2], [3, 3]]), (64, 48), room=2)
        assert keep.tolist() == [False, True, True, False]
        assert refused == {"bad_queries": 1, "too_many_queries": 1}
        keep, refused = query_point_refusals(np.array([[1, 1]]), None, room=0)
        assert not keep.any() and refused == {"too_many_queries": 1}

    def test_without_an_image_size_only_non_finite_is_refused(self):
        keep, refused = query_point_refusals(np.array([[1e6, -5], [np.nan, 1]]), None, room=5)
        assert keep.tolist() == [True, False] and refused == {"bad_queries": 1}


class TestLateJoin:
    def test_queries_published_before_the_node_started_are_tracked(self, ctx):
        early = rclpy.create_node("early_query_source", context=ctx)
        try:
            pub = early.create_publisher(PolygonStamped, QUERIES, queries_qos())
            pub.publish(polygon([(30.0, 20.0), (10.0, 10.0)]))  # no subscriber yet: kept in the history
            h = Harness(ctx)
            try:
                assert h.spin_until(lambda: len(h.node.tracker.query_ids) == 2, 10.0), "the early queries never arrived"
                h.send(0)
                assert h.spin_until(lambda: h.got["points"], 5.0)
                assert h.points()[-1]["id"].tolist() == [0, 1]
                np.testing.assert_allclose(h.points()[-1]["u"], [30.0, 10.0], atol=0.2)
            finally:
                h.close()
        finally:
            early.destroy_node()

    def test_a_volatile_publisher_is_reported(self, ctx):
        h = Harness(ctx)
        try:
            h.io.create_publisher(PolygonStamped, QUERIES, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            assert h.wait_drop("queries_publisher_incompatible_qos", timeout_s=10.0) >= 1
        finally:
            h.close()


class TestRefusedPoints:
    def test_partially_valid_polygon_tracks_the_valid_points(self, ctx):
        h, warned = harness_with_a_frame(ctx)
        try:
            h.pub["queries"].publish(polygon([(20, 20), (np.nan, 5), (100, 10), (40, 30), (np.inf, 1), (5, -3)]))
            assert h.spin_until(lambda: len(h.node.tracker.query_ids) == 2, 5.0)
            assert h.wait_drop("bad_queries", 2) == 2
            assert h.drops().get("queries_outside_image") == 2
            assert len(warned) == 1
            assert "refused 4 of 6 points" in warned[0] and "2 bad_queries" in warned[0]
            assert "2 queries_outside_image" in warned[0] and "64x48" in warned[0]
            h.send(1)
            assert h.spin_until(lambda: len(h.got["points"]) >= 2, 5.0)
            np.testing.assert_allclose(h.points()[-1]["u"], [19.0, 39.0], atol=0.2)  # the scene slides 1 px
        finally:
            h.close()

    def test_beyond_max_queries_the_rest_is_refused(self, ctx):
        h, warned = harness_with_a_frame(ctx, {"queries.points_px": [20.0, 20.0], "queries.max_queries": 3})
        try:
            h.pub["queries"].publish(polygon([(10, 10), (12, 12), (14, 14), (16, 16)]))
            assert h.wait_drop("too_many_queries", 2) == 2
            assert h.node.tracker.query_ids.tolist() == [0, 1, 2]
            assert "2 too_many_queries" in warned[0]
        finally:
            h.close()

    def test_empty_polygon(self, ctx):
        h, warned = harness_with_a_frame(ctx)
        try:
            h.pub["queries"].publish(polygon([]))
            assert h.wait_drop("empty_queries") == 1
            assert "empty_queries" in warned[0]
        finally:
            h.close()

    def test_clicked_point_before_camera_info(self, ctx):
        h = Harness(ctx)
        try:
            warned: list[str] = []
            h.node._warn = warned.append
            p = PointStamped()
            p.header.frame_id = LEFT_FRAME
            p.point.z = 0.03
            h.pub["clicked"].publish(p)
            assert h.wait_drop("clicked_point_no_camera") == 1
            assert "no camera_info yet" in warned[0]
            assert len(h.node.tracker.query_ids) == 0
        finally:
            h.close()


class TestRemoveQueries:
    def test_removes_by_id_and_counts_unknown_ids(self, ctx):
        h, warned = harness_with_a_frame(ctx, {"queries.points_px": [10.0, 10.0, 20.0, 20.0, 30.0, 30.0]})
        try:
            pub = h.io.create_publisher(UInt32MultiArray, "/surg_invnerf_tracker/remove_queries", 10)
            assert h.spin_until(lambda: pub.get_subscription_count() > 0, 3.0)
            pub.publish(UInt32MultiArray(data=[1, 7, 7]))
            assert h.wait_drop("unknown_query_id") == 1
            assert h.node.tracker.query_ids.tolist() == [0, 2]
            assert "7" in warned[0] and "unknown_query_id" in warned[0]
            stamp = h.send(1)
            assert h.spin_until(lambda: stamp in h.stamps(), 5.0)
            assert h.points()[-1]["id"].tolist() == [0, 2]
            pub.publish(UInt32MultiArray(data=[0, 2]))
            assert h.spin_until(lambda: len(h.node.tracker.query_ids) == 0, 3.0)
            assert h.drops().get("unknown_query_id") == 1
        finally:
            h.close()

    def test_the_remove_service_answers_which_ids_it_removed(self, ctx):
        srv = pytest.importorskip("surg_invnerf_msgs.srv")
        h, warned = harness_with_a_frame(ctx, {"queries.points_px": [10.0, 10.0, 20.0, 20.0, 30.0, 30.0]})
        try:
            client = h.io.create_client(srv.RemoveQueries, "/surg_invnerf_tracker/remove")
            assert client.wait_for_service(timeout_sec=5.0), "no ~/remove service"
            fut = client.call_async(srv.RemoveQueries.Request(ids=[2, 0, 9]))
            assert h.spin_until(fut.done, 5.0)
            res = fut.result()
            assert list(res.removed) == [0, 2] and list(res.unknown) == [9]
            assert res.message == "removed 2 queries; 1 ids unknown"
            assert h.node.tracker.query_ids.tolist() == [1]
            assert h.wait_drop("unknown_query_id") == 1 and "~/remove" in warned[0]
        finally:
            h.close()


class TestStampedQueries:
    """A polygon's stamp names the frame of its pixels; the scene slides 1 px a frame, so a query placed
    on the wrong frame is off by a pixel a frame."""

    def test_stamped_with_a_frame_not_yet_tracked_it_waits_for_that_frame(self, ctx):
        h, warned = harness_with_a_frame(ctx)
        try:
            h.pub["queries"].publish(polygon([(30.0, 20.0)], T0_NS + 2 * PERIOD_NS))  # frame 2, before it is sent
            assert h.spin_until(lambda: h.diag().get("surg_invnerf_tracker: input", {}).get(
                "queue.queries_waiting") == "1", 5.0), "the polygon never arrived"
            assert len(h.node.tracker.query_ids) == 0
            for i in (1, 2, 3):
                stamp = h.send(i)
                assert h.spin_until(lambda s=stamp: s in h.stamps(), 5.0)
            at = dict(zip(h.stamps(), h.points()))
            assert len(at[T0_NS + PERIOD_NS]) == 0  # frame 1: not yet
            for i, u in ((2, 30.0), (3, 29.0)):  # frame 2 has it where it was given; frame 3 one pixel on
                assert at[T0_NS + i * PERIOD_NS]["id"].tolist() == [0]
                np.testing.assert_allclose(at[T0_NS + i * PERIOD_NS]["u"], [u], atol=0.3)
            assert not warned
        finally:
            h.close()

    @pytest.mark.parametrize("held, u_at_3", [(30, 28.0), (0, 29.0)])
    def test_stamped_with_an_older_untracked_frame_it_is_placed_on_that_image(self, ctx, held, u_at_3):
        h, warned = harness_with_a_frame(ctx, {"queries.image_history_frames": held})
        try:
            h.send(1, skip=("right",))  # frame 1 is never tracked (no right image), but its left arrived
            stamp = h.send(2)
            assert h.spin_until(lambda: stamp in h.stamps(), 5.0)
            assert h.wait_drop("missing_right_image") == 1 and T0_NS + PERIOD_NS not in h.stamps()
            h.pub["queries"].publish(polygon([(30.0, 20.0)], T0_NS + PERIOD_NS))
            assert h.spin_until(lambda: len(h.node.tracker.query_ids) == 1, 5.0)
            stamp = h.send(3)
            assert h.spin_until(lambda: stamp in h.stamps(), 5.0)
            # placed on frame 1's image at u = 30: u = 28 at frame 3; with no image held, on frame 2's: 29
            np.testing.assert_allclose(h.points()[-1]["u"], [u_at_3], atol=0.3)
        finally:
            h.close()

    def test_a_stamp_no_frame_reaches_goes_on_the_latest_frame_after_a_second(self, ctx):
        h, warned = harness_with_a_frame(ctx)
        try:
            h.pub["queries"].publish(polygon([(30.0, 20.0)], T0_NS + 1000 * PERIOD_NS))
            assert h.spin_until(lambda: h.node._pending_queries, 5.0), "the polygon never arrived"
            h.spin_for(PENDING_QUERIES_TIMEOUT_S + 0.1)  # from its arrival: it is overdue at the next frame
            stamp = h.send(1)
            assert h.spin_until(lambda: len(h.node.tracker.query_ids) == 1, 5.0)
            assert any("no frame stamped" in w and "taken at frame" in w for w in warned), warned
            stamp = h.send(2)
            assert h.spin_until(lambda: stamp in h.stamps(), 5.0)
            np.testing.assert_allclose(h.points()[-1]["u"], [29.0], atol=0.3)  # placed on frame 1
        finally:
            h.close()

    def test_clear_drops_the_waiting_queries_too(self, ctx):
        h, _ = harness_with_a_frame(ctx)
        try:
            h.pub["queries"].publish(polygon([(30.0, 20.0), (20.0, 20.0)], T0_NS + 5 * PERIOD_NS))
            assert h.spin_until(lambda: h.node._pending_queries, 5.0)
            assert h.node._on_clear(None, Trigger.Response()).message == "cleared 2 queries"
            for i in range(1, 7):
                stamp = h.send(i)
            assert h.spin_until(lambda: h.node.tracker.last_stamp_ns == stamp, 5.0)
            assert len(h.node.tracker.query_ids) == 0 and not h.node._pending_queries
        finally:
            h.close()
