"""In-process harness for TrackerNode tests: its own rclpy Context, a test I/O node, one executor.

Shared by test_node.py, test_bad_messages.py and test_diagnostics.py (ROS_STACK.md Q3: a per-test
Context; the domain comes from test/conftest.py).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PolygonStamped, PoseStamped, TransformStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from surg_invnerf_ros.ros import convert
from surg_invnerf_ros.ros.diagnostics import diagnostics_to_dict
from surg_invnerf_ros.ros.track_node import TrackerNode, queries_qos
from surg_invnerf_ros.structs import StereoCalib

W, H = 64, 48
FX = 50.0
BASELINE_M = 0.005
DISP_PX = 8
CALIB = StereoCalib(K=np.array([[FX, 0, 32.0], [0, FX, 24.0], [0, 0, 1]]), baseline_m=BASELINE_M, image_size=(W, H))
LEFT_FRAME, RIGHT_FRAME = "cam_left_optical", "cam_right_optical"
T0_NS = 1_700_000_000_000_000_000
PERIOD_NS = 33_333_333


def texture(seed: int = 0, width: int = W + 64) -> np.ndarray:
    """A smooth random grey texture wide enough to slide the view over."""
    import cv2

    rng = np.random.default_rng(seed)
    tex = (rng.random((H // 4 + 1, width // 4 + 1)) * 255).astype(np.uint8)
    big = cv2.resize(tex, (width, H), interpolation=cv2.INTER_CUBIC)
    return np.repeat(big[:, :, None], 3, 2)


TEX = texture()


def stereo_pair(i: int, step_px: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Frame i: the scene slides left by step_px per frame; disparity DISP_PX everywhere (Z = fx·B/d)."""
    o = i * step_px  # a texture column c is at u = c - o in the left image and c - o - DISP_PX in the right
    return np.ascontiguousarray(TEX[:, o:o + W]), np.ascontiguousarray(TEX[:, o + DISP_PX:o + DISP_PX + W])


class Harness:
    """A TrackerNode plus a test node that feeds it and records its outputs."""

    def __init__(self, ctx: Any, overrides: dict[str, Any] | None = None, node_cls: type = TrackerNode,
                 **node_kwargs: Any) -> None:
        """`node_cls`: TrackerNode, or the managed variant (then unconfigured until the test moves it)."""
        self.ctx = ctx
        # tests publish in bursts, faster than the front end: a deeper frame queue than the default keeps every frame
        base = {"refine.enabled": False, "publish.diagnostics_rate_hz": 10.0, "publish.cloud_rate_hz": 100.0,
                "sync.frame_queue_size": 10}
        base.update(overrides or {})
        self.node = node_cls(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in base.items()],
                             **node_kwargs)
        self.io = rclpy.create_node("track_test_io", context=ctx)
        rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {
            "left": self.io.create_publisher(Image, "stereo/left/image_rect", rel),
            "right": self.io.create_publisher(Image, "stereo/right/image_rect", rel),
            "info_left": self.io.create_publisher(CameraInfo, "stereo/left/camera_info", rel),
            "info_right": self.io.create_publisher(CameraInfo, "stereo/right/camera_info", rel),
            "queries": self.io.create_publisher(PolygonStamped, "/surg_invnerf_tracker/queries", queries_qos()),
            "clicked": self.io.create_publisher(PointStamped, "clicked_point", 10),
        }
        keys = ("points", "markers", "cloud", "overlay", "diag", "tf", "tf_static")
        self.got: dict[str, list] = {k: [] for k in keys}
        ns = "/surg_invnerf_tracker"
        self.io.create_subscription(PointCloud2, f"{ns}/tracked_points", self.got["points"].append, 100)
        self.io.create_subscription(MarkerArray, f"{ns}/markers", self.got["markers"].append, 100)
        self.io.create_subscription(PointCloud2, f"{ns}/cloud", self.got["cloud"].append, 100)
        self.io.create_subscription(Image, f"{ns}/overlay", self.got["overlay"].append, 100)
        self.io.create_subscription(DiagnosticArray, "/diagnostics", self.got["diag"].append, 100)
        try:
            from tf2_msgs.msg import TFMessage

            self.io.create_subscription(TFMessage, "/tf", self.got["tf"].append, 100)
            self.io.create_subscription(TFMessage, "/tf_static", self.got["tf_static"].append, QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        except ImportError:
            pass
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.io)
        if self.node.node_state == "active":
            self.wait_inputs()

    def inputs_matched(self) -> bool:
        """Every stereo publisher of the test node is matched by the tracker's subscription."""
        return all(p.get_subscription_count() > 0 for k, p in self.pub.items()
                   if k in ("left", "right", "info_left", "info_right"))

    def wait_inputs(self, timeout_s: float = 3.0) -> bool:
        return bool(self.spin_until(self.inputs_matched, timeout_s))

    def infos(self, stamp_ns: int, calib: StereoCalib = CALIB) -> tuple[CameraInfo, CameraInfo]:
        return convert.calib_to_camera_info(calib, stamp_ns, LEFT_FRAME, RIGHT_FRAME)

    def send(self, i: int | None = None, *, stamp_ns: int | None = None, left: Image | None = None,
             right: Image | None = None, info_left: CameraInfo | None = None, info_right: CameraInfo | None = None,
             skip: tuple[str, ...] = ()) -> int:
        """Publish one stereo set for frame i (good by default; any part can be replaced or skipped)."""
        i = 0 if i is None else i
        stamp = T0_NS + i * PERIOD_NS if stamp_ns is None else stamp_ns
        lrgb, rrgb = stereo_pair(i)
        il, ir = self.infos(stamp)
        msgs = {"left": left or convert.numpy_to_image(lrgb, "rgb8", stamp, LEFT_FRAME),
                "right": right or convert.numpy_to_image(rrgb, "rgb8", stamp, RIGHT_FRAME),
                "info_left": info_left or il, "info_right": info_right or ir}
        for k in ("info_left", "info_right", "right", "left"):
            if k not in skip:
                self.pub[k].publish(msgs[k])
        return stamp

    def image(self, rgb: np.ndarray, stamp_ns: int, encoding: str = "rgb8", frame: str = LEFT_FRAME) -> Image:
        return convert.numpy_to_image(rgb, encoding, stamp_ns, frame)

    def spin_until(self, pred: Callable[[], Any], timeout_s: float = 3.0) -> Any:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            self.executor.spin_once(timeout_sec=0.01)
            out = pred()
            if out:
                return out
        return pred()

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def points(self) -> list[np.ndarray]:
        return [convert.tracked_points_from_msg(m) for m in self.got["points"]]

    def stamps(self, key: str = "points") -> list[int]:
        return [convert.stamp_ns(m.header.stamp) for m in self.got[key]]

    def diag(self) -> dict[str, dict[str, str]]:
        """The latest diagnostics, flattened: {status name: {key: value}}."""
        return diagnostics_to_dict(self.got["diag"][-1]) if self.got["diag"] else {}

    def drops(self) -> dict[str, int]:
        d = self.diag().get("surg_invnerf_tracker: input", {})
        return {k[len("drops."):]: int(v) for k, v in d.items() if k.startswith("drops.")}

    def wait_drop(self, reason: str, at_least: int = 1, timeout_s: float = 3.0) -> int:
        self.spin_until(lambda: self.drops().get(reason, 0) >= at_least, timeout_s)
        return self.drops().get(reason, 0)

    def close(self) -> None:
        self.node.close()
        self.executor.shutdown()
        self.node.destroy_node()
        self.io.destroy_node()


class ros_context:
    """`with ros_context() as ctx:` a fresh rclpy Context, shut down afterwards."""

    def __enter__(self) -> Any:
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        return self.ctx

    def __exit__(self, *exc: Any) -> None:
        rclpy.shutdown(context=self.ctx)


def pose_msg(kind: str, stamp_ns: int, xyz: Any = (0.0, 0.0, 0.0), q: Any = (0.0, 0.0, 0.0, 1.0)) -> Any:
    """An ecm/measured_cp message: a PoseStamped or TransformStamped (`kind`) of world ← ecm at `stamp_ns`."""
    hdr = convert.header(stamp_ns, "world")
    if kind == "PoseStamped":
        msg = PoseStamped(header=hdr)
        p, r = msg.pose.position, msg.pose.orientation
    else:
        msg = TransformStamped(header=hdr, child_frame_id="ecm")
        p, r = msg.transform.translation, msg.transform.rotation
    p.x, p.y, p.z = (float(v) for v in xyz)
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return msg
