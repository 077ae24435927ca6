"""ros/compat.py: backend choice with and without tf2_ros / message_filters / cv_bridge."""

import numpy as np
import pytest

from surg_invnerf_ros.errors import ConfigError, InputError
from surg_invnerf_ros.ros import compat, convert


def only(*present):
    return lambda name: name in present


class TestChoose:
    def test_nothing_optional_installed(self):
        b = compat.choose_backends("auto", only())
        assert (b.tf, b.sync, b.image) == ("none", "builtin", "builtin")
        assert b.describe() == "tf=none sync=builtin image=builtin"

    def test_pywheels_with_our_tf2_msgs(self):
        assert compat.choose_backends("auto", only("tf2_msgs")).tf == "builtin"

    def test_full_ros_install(self):
        b = compat.choose_backends("auto", only("tf2_ros", "tf2_msgs", "message_filters", "cv_bridge"))
        assert (b.tf, b.sync, b.image) == ("tf2_ros", "message_filters", "cv_bridge")

    def test_builtin_sync_can_be_forced(self):
        assert compat.choose_backends("builtin", only("message_filters")).sync == "builtin"

    def test_requested_but_missing_is_a_config_error(self):
        with pytest.raises(ConfigError, match="sync.backend: message_filters requested"):
            compat.choose_backends("message_filters", only())

    def test_this_machine(self):
        b = compat.choose_backends()
        assert b.tf in ("tf2_ros", "builtin", "none")
        assert compat.have("numpy") and not compat.have("surely_not_a_module_xyz")
        assert not compat.have("surely_not.sub")


class TestFallbacks:
    def test_builtin_image_decoder(self):
        decode = compat.image_decoder("builtin")
        rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
        assert (decode(convert.numpy_to_image(rgb[..., ::-1].copy(), "bgr8")) == rgb).all()
        bad = convert.numpy_to_image(rgb, "rgb8")
        bad.encoding = "bayer_rggb8"
        with pytest.raises(InputError) as err:
            decode(bad)
        assert err.value.reason == "wrong_encoding"

    def test_tf_off_gives_no_broadcasters(self):
        assert compat.make_tf_broadcasters(object(), "none") == (None, None)

    def test_builtin_tf_broadcasters(self):
        pytest.importorskip("tf2_msgs")
        import rclpy

        from surg_invnerf_ros.ros.tf import StaticTransformBroadcaster, TransformBroadcaster

        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        try:
            node = rclpy.create_node("compat_test", context=ctx)
            dyn, static = compat.make_tf_broadcasters(node, "builtin")
            assert isinstance(dyn, TransformBroadcaster) and isinstance(static, StaticTransformBroadcaster)
            assert sorted(n for n, _ in node.get_publisher_names_and_types_by_node("compat_test", "/")) == [
                "/parameter_events", "/rosout", "/tf", "/tf_static"]
            node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)

    @pytest.mark.skipif(not compat.have("cv_bridge"), reason="cv_bridge not installed (pip wheels)")
    def test_cv_bridge_decoder(self):
        rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
        assert (compat.image_decoder("cv_bridge")(convert.numpy_to_image(rgb, "rgb8")) == rgb).all()


def fake_message_filters():
    """A minimal stand-in for ROS's message_filters (exact-stamp sync), to drive the adapter path."""
    import importlib.machinery
    import types

    mod = types.ModuleType("message_filters")
    mod.__spec__ = importlib.machinery.ModuleSpec("message_filters", None)

    class Subscriber:
        def __init__(self, node, msg_type, topic, **kwargs):
            self.cbs = []
            self.sub = node.create_subscription(msg_type, topic, lambda m: [cb(m) for cb in self.cbs], **kwargs)

    class TimeSynchronizer:
        def __init__(self, subs, queue_size):
            self.pending, self.cbs = {}, []
            n = len(subs)
            for k, s in enumerate(subs):
                s.cbs.append(lambda m, k=k: self.add(k, n, m))

        def add(self, k, n, m):
            key = (m.header.stamp.sec, m.header.stamp.nanosec)
            slot = self.pending.setdefault(key, {})
            slot[k] = m
            if len(slot) == n:
                del self.pending[key]
                for cb in self.cbs:
                    cb(*[slot[i] for i in range(n)])

        def registerCallback(self, cb):  # noqa: N802 (message_filters' name)
            self.cbs.append(cb)

    mod.Subscriber = Subscriber
    mod.TimeSynchronizer = TimeSynchronizer
    mod.ApproximateTimeSynchronizer = lambda subs, q, slop: TimeSynchronizer(subs, q)
    return mod


def test_node_runs_on_the_message_filters_backend(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "message_filters", fake_message_filters())
    from .track_harness import Harness, ros_context

    with ros_context() as ctx:
        h = Harness(ctx, {"queries.points_px": [20.0, 20.0], "sync.backend": "message_filters"})
        try:
            assert h.node.backends.sync == "message_filters"
            stamps = [h.send(i) for i in range(3)]
            assert h.spin_until(lambda: len(h.got["points"]) >= 3, 3.0)
            assert h.stamps() == stamps
            h.send(1)  # an old set: message_filters passes it, the node's order check drops it
            assert h.wait_drop("out_of_order_stamp") == 1
        finally:
            h.close()
