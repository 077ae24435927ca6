"""`synthetic_stereo`: the synthetic generator as a live stereo endoscope (DESIGN §4, §5).

Publishes, for frame k of the stream, all with the same stamp start + k/synth.fps:

| topic | type | notes |
|---|---|---|
| `stereo/left/image_rect`, `stereo/right/image_rect` | sensor_msgs/Image | rgb8 |
| `stereo/{left,right}/camera_info` | sensor_msgs/CameraInfo | rectified; right P has Tx = −fx·B |
| `ecm/measured_cp` | PoseStamped or TransformStamped | T_world_cam · T_ecm_cam⁻¹; synth.pose_* noise, lag |
| `~/ground_truth` | sensor_msgs/PointCloud2 | tracked_points schema; confidence 1, refined 1 |
| `queries_out` | geometry_msgs/PolygonStamped | the queries; remap to the tracker's `~/queries` |

Queries: point i of the polygon is query id i (`scene.queries.ids` = 0..N−1, the ground truth's
ids), at its ground-truth position in the frame whose stamp the polygon carries; it is published
just before that frame's images, reliable and transient local (depth 1). It goes out once, with the
first frame that `queries_out` has a subscriber at (so a tracker started later gets it at the then
current frame; one joining after that gets the last copy from the transient-local history); and
every `queries_period_s` if that is > 0 (each copy adds the queries again in a tracker that appends).
A tracker that numbers queries in arrival order from 0 therefore shares ids with `~/ground_truth`.

Frame 0 goes out once every topic above has a subscriber, or after `wait_for_subscribers_s`.
With end = stop the node exits after the last frame, once every reliable subscriber has
acknowledged it (at most 5 s later).

Frames are rendered off the executor: all `synth.frames` of them before the first publish for
end = pingpong | loop | stop (when they fit in `cache_mb`), so the rate holds at 640×512; for
end = continue, `render_ahead` frames ahead in a background thread (the rate is then bounded by
the renderer; each late tick is counted and warned about). Stamps come from the node clock, so
with `use_sim_time` they follow /clock (and the timer waits for it).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from geometry_msgs.msg import Point32, PolygonStamped, PoseStamped, TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ..config import SyntheticSourceConfig
from ..geometry import invert_T, xyz_qxyzw_from_T
from ..synth.generate import SyntheticScene
from . import convert
from .run import run_node

QUERIES_TOPIC = "queries_out"


def scene_index(k: int, num_frames: int, end: str) -> int | None:
    """Scene frame shown at publish count k (None: the stream has ended).

    pingpong runs 0 … n−1 … 1, 0 … so the motion never jumps; loop runs 0 … n−1, 0 …;
    continue runs k; stop runs 0 … n−1 and then ends.
    """
    n = num_frames
    if end == "continue":
        return k
    if end == "stop":
        return k if k < n else None
    if end == "loop" or n == 1:
        return k % n
    period = 2 * n - 2
    i = k % period
    return i if i < n else period - i


@dataclass
class _Prepared:
    """A rendered frame as messages (headers are stamped at publish time)."""

    index: int
    left: Image
    right: Image
    ground_truth: PointCloud2 | None
    gt_uv_px: np.ndarray  # (N, 2)
    T_world_ecm: np.ndarray  # (4, 4)


class SyntheticStereoNode(Node):
    """Streams `SyntheticScene` frames; see the module docstring for topics and timing."""

    def __init__(self, cfg: SyntheticSourceConfig | None = None, **node_kwargs: Any) -> None:
        super().__init__("synthetic_stereo", **node_kwargs)
        if cfg is None:
            from .params import check_no_unknown, declare_config

            check_no_unknown(self, SyntheticSourceConfig)
            cfg = declare_config(self, SyntheticSourceConfig)
        self.cfg = cfg
        self.scene = SyntheticScene(cfg.synth)
        self.calib = self.scene.calib
        self.rate_hz = cfg.rate_hz if cfg.rate_hz > 0 else cfg.synth.fps
        self._T_cam_ecm = invert_T(np.asarray(cfg.T_ecm_cam, dtype=np.float64).reshape(4, 4))
        self.info_left, self.info_right = convert.calib_to_camera_info(
            self.calib, 0, cfg.frame_id_left, cfg.frame_id_right)

        self.pub_left = self.create_publisher(Image, "stereo/left/image_rect", 10)
        self.pub_right = self.create_publisher(Image, "stereo/right/image_rect", 10)
        self.pub_info_left = self.create_publisher(CameraInfo, "stereo/left/camera_info", 10)
        self.pub_info_right = self.create_publisher(CameraInfo, "stereo/right/camera_info", 10)
        pose_cls = {"PoseStamped": PoseStamped, "TransformStamped": TransformStamped}.get(cfg.pose_type)
        self.pub_pose = self.create_publisher(pose_cls, "ecm/measured_cp", 10) if pose_cls else None
        self.pub_gt = self.create_publisher(PointCloud2, "~/ground_truth", 10) if cfg.ground_truth else None
        # transient local (the tracker's ~/queries takes only that): a subscriber joining later gets the last copy
        self.pub_queries = self.create_publisher(PolygonStamped, QUERIES_TOPIC, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._image_pubs = [self.pub_left, self.pub_right, self.pub_info_left, self.pub_info_right]
        # Frame 0 waits for a subscriber on every output: a tracker or recorder that misses frame 0's
        # pose, queries or ground truth would start from a different frame than its images.
        self._wait_pubs = [p for p in (*self._image_pubs, self.pub_pose, self.pub_gt, self.pub_queries)
                           if p is not None]

        W, H = self.calib.image_size
        frame_mb = 2 * W * H * 3 / 1e6
        self.cached = cfg.end != "continue" and frame_mb * cfg.synth.frames <= cfg.cache_mb
        self._cache: list[_Prepared | None] = [None] * (cfg.synth.frames if self.cached else 0)
        self._cache_ready = threading.Event()
        self._queue: queue.Queue[_Prepared | None] = queue.Queue(maxsize=cfg.render_ahead)
        self._stop = threading.Event()
        self.done = threading.Event()

        self.published = 0  # frames published (k)
        self.late_ticks = 0
        self.start_ns: int | None = None
        self._wait_since: float | None = None
        self._queries_subs = 0
        self._queries_last_s = -float("inf")
        self._render_thread = threading.Thread(target=self._render_loop, name="synthetic_render", daemon=True)
        self._render_thread.start()
        self._timer = self.create_timer(1.0 / self.rate_hz, self._tick)
        self.get_logger().info(
            f"synthetic stereo {W}x{H}, {len(self.scene.queries)} queries, {self.rate_hz:g} Hz, end={cfg.end}"
            + (f", rendering {cfg.synth.frames} frames first" if self.cached else ""))

    # -- rendering (background thread) ------------------------------------------------------

    def _prepare(self, i: int) -> _Prepared:
        f = self.scene.frame(i)
        fl, fr = self.cfg.frame_id_left, self.cfg.frame_id_right
        gt = None
        if self.pub_gt is not None:
            n = len(f.gt_visible)
            gt = convert.tracked_points_msg(
                self.scene.queries.ids.astype(np.uint32), f.gt_uv_px, f.gt_xyz_cam_m, f.gt_visible.astype(np.uint8),
                np.ones(n, np.float32), np.ones(n, np.uint8), convert.header(0, fl))
        return _Prepared(
            index=i, left=convert.numpy_to_image(f.left_rgb_u8, "rgb8", 0, fl),
            right=convert.numpy_to_image(f.right_rgb_u8, "rgb8", 0, fr), ground_truth=gt,
            gt_uv_px=np.asarray(f.gt_uv_px, dtype=np.float64), T_world_ecm=f.T_world_cam @ self._T_cam_ecm)

    def _render_loop(self) -> None:
        try:
            if self.cached:
                for i in range(len(self._cache)):
                    if self._stop.is_set():
                        return
                    self._cache[i] = self._prepare(i)
                self._cache_ready.set()
                return
            k = 0
            while not self._stop.is_set():
                i = scene_index(k, self.cfg.synth.frames, self.cfg.end)
                item = None if i is None else self._prepare(i)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item is None:
                    return
                k += 1
        except Exception as err:  # a render failure must not die silently in a thread
            self.get_logger().error(f"synthetic rendering failed: {err}")
            self.done.set()

    # -- publishing (timer) ------------------------------------------------------------------

    def _ready_to_start(self) -> bool:
        if self.cached and not self._cache_ready.is_set():
            return False
        now = time.monotonic()
        if self._wait_since is None:
            self._wait_since = now
        missing = [p.topic_name for p in self._wait_pubs if p.get_subscription_count() == 0]
        if missing and now - self._wait_since < self.cfg.wait_for_subscribers_s:
            return False
        return True

    def _next_item(self) -> _Prepared | None | Literal[False]:
        """The next frame; None at the end of the stream; False when the renderer is behind."""
        if self.cached:
            i = scene_index(self.published, self.cfg.synth.frames, self.cfg.end)
            return None if i is None else self._cache[i]
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return False

    def _tick(self) -> None:
        if self.done.is_set():
            return
        if self.start_ns is None:
            if not self._ready_to_start():
                return
            self.start_ns = self.get_clock().now().nanoseconds
        item = self._next_item()
        if item is False:
            self.late_ticks += 1
            self.get_logger().warning(
                f"renderer behind the {self.rate_hz:g} Hz rate ({self.late_ticks} late ticks); "
                "lower rate_hz or use end:=pingpong", throttle_duration_sec=5.0)
            return
        if item is None:
            self.get_logger().info(f"published {self.published} frames; stream ended")
            self.done.set()
            self._timer.cancel()
            return
        self._publish(item, self.start_ns + int(round(self.published * 1e9 / self.cfg.synth.fps)))
        self.published += 1

    def _publish(self, item: _Prepared, stamp: int) -> None:
        t = convert.to_stamp(stamp)
        cfg = self.cfg
        if self.pub_pose is not None:
            self.pub_pose.publish(self._pose_msg(item.T_world_ecm, t))
        self._maybe_publish_queries(item, t)
        for info, info_pub in ((self.info_left, self.pub_info_left), (self.info_right, self.pub_info_right)):
            info.header.stamp = t
            info_pub.publish(info)
        for image, image_pub in ((item.left, self.pub_left), (item.right, self.pub_right)):
            image.header.stamp = t
            image_pub.publish(image)
        if item.ground_truth is not None and self.pub_gt is not None:
            item.ground_truth.header.stamp = t
            item.ground_truth.header.frame_id = cfg.frame_id_left
            self.pub_gt.publish(item.ground_truth)

    def _pose_msg(self, T_world_ecm: np.ndarray, stamp: Any) -> PoseStamped | TransformStamped:
        xyz, q = xyz_qxyzw_from_T(T_world_ecm)
        hdr = convert.header(stamp, self.cfg.world_frame_id)
        if self.cfg.pose_type == "TransformStamped":
            msg = TransformStamped(header=hdr, child_frame_id=self.cfg.ecm_frame_id)
            tr, rot = msg.transform.translation, msg.transform.rotation
        else:
            msg = PoseStamped(header=hdr)
            tr, rot = msg.pose.position, msg.pose.orientation
        tr.x, tr.y, tr.z = (float(v) for v in xyz)
        rot.x, rot.y, rot.z, rot.w = (float(v) for v in q)
        return msg

    def _maybe_publish_queries(self, item: _Prepared, stamp: Any) -> None:
        """Frame 0; later only if no one had it yet (a second copy would add duplicate queries) or on period."""
        subs = self.pub_queries.get_subscription_count()
        if subs == 0:  # a copy no one takes would wait in the transient-local history and arrive twice
            return
        now = time.monotonic()
        period = self.cfg.queries_period_s
        due = (self.published == 0 or (self._queries_subs == 0 and subs > 0)
               or (period > 0 and now - self._queries_last_s >= period))
        if not due:
            return
        msg = PolygonStamped(header=convert.header(stamp, self.cfg.frame_id_left))
        msg.polygon.points = [Point32(x=float(u), y=float(v), z=0.0) for u, v in item.gt_uv_px]
        self.pub_queries.publish(msg)
        self._queries_subs = subs  # how many received this copy
        self._queries_last_s = now

    # -- lifecycle ----------------------------------------------------------------------------

    def wait_rendered(self, timeout_s: float) -> bool:
        """Block until the cached frames are rendered (True at once when not caching)."""
        return self._cache_ready.wait(timeout_s) if self.cached else True

    def drain(self, timeout_s: float, stop: threading.Event | None = None) -> None:
        """Wait until reliable subscribers acknowledged everything published (before exiting);
        setting `stop` ends the wait early."""
        from rclpy.duration import Duration

        end = time.monotonic() + timeout_s
        for pub in [*self._image_pubs, self.pub_pose, self.pub_gt, self.pub_queries]:
            if pub is None:
                continue
            while stop is None or not stop.is_set():  # in short waits, so a stop is seen promptly
                left = min(end - time.monotonic(), 0.1)
                if left <= 0 or pub.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))):
                    break

    def destroy_node(self) -> None:
        self._stop.set()
        self._render_thread.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """`synthetic_stereo` console script: `synthetic_stereo --ros-args -p synth.width:=640 ...`.

    Exits by itself after the last frame when end is stop; otherwise on Ctrl-C / SIGTERM.
    """
    # ValueError: a ConfigError, or a scene that cannot be built: refuse the start in one line
    return run_node(SyntheticStereoNode, args, done=lambda node: node.done.is_set(),
                    finish=lambda node, stop: node.drain(5.0, stop), user_errors=(ValueError,))
