"""TrackerNode `surg_invnerf_tracker` (executable `track_node`): the ROS shell around OnlineTracker.

DESIGN §5 lists its topics. The node is thin (STYLE §6):
- input callbacks (one MutuallyExclusive group) only stamp a message, push it into the stereo
  synchroniser and, for a complete set, into a bounded frame queue, and wake
- the front-end thread (outside the executor, so the executor's overhead never delays a frame),
  which converts, runs `OnlineTracker.push_frame` (milliseconds) and publishes tracked points,
  markers, TF, overlay and cloud for that frame; between frames, every 1/publish.poll_rate_hz, it
  polls the refinement worker and publishes refined tracks: they go out again on ~/tracked_points
  (and /tf) with their frame's original stamp and refined = 1;
- a timer in the input group times out unpaired images; one in a third group publishes /diagnostics;
- services ~/clear and ~/reset sit in a fourth group;
- `~/queries` (PolygonStamped, reliable and transient local, depth 100: a polygon published before the
  node started, by a transient-local publisher, still arrives; a volatile publisher does not match and
  is logged), `clicked_point` (PointStamped, reliable, volatile as RViz publishes it) and
  `~/remove_queries` (UInt32MultiArray of ids) are taken in the input group. Each polygon point is a
  query of its own: the valid points are tracked (consecutive new ids, in polygon order) and each
  refused point is counted in the input drops by its reason (`bad_queries`: non-finite;
  `queries_outside_image`: off the last camera_info's image; `too_many_queries`: beyond
  `queries.max_queries`), with a throttled warning; an empty polygon counts once as `empty_queries`.
  Before the first camera_info only non-finite points can be refused. A polygon's stamp names the
  frame its pixels belong to: one stamped after the latest tracked frame (or before the first) waits
  for that frame (at most `PENDING_QUERIES_TIMEOUT_S` once frames come) and is in its output; one
  stamped with an older frame is placed on that frame's left image (the last
  `queries.image_history_frames` received are held, tracked or dropped) and moved to the current
  frame by LK. A removed id the tracker does not hold counts as `unknown_query_id`;
- `ecm/measured_cp` (PoseStamped or TransformStamped, the type the topic is advertised with unless
  `kinematics.message_type` names one; a timer re-checks the graph until it appears) feeds a
  `KinematicsBuffer` in the input group. Each frame gets T_world_cam at its stamp (time offset and
  hand-eye applied by the buffer), or None when missing, stale or non-finite: that frame then runs
  without kinematics. With a pose, world → left optical goes out on /tf.
Under a MultiThreadedExecutor none of them waits for the model. A bad message is dropped, counted
by reason and warned about (throttled); a bad parameter refuses the start with one line.

Every data output carries the source image stamp and the left camera_info frame_id (/diagnostics
is stamped with the node clock, as diagnostic_updater does).
"""

from __future__ import annotations

import copy
import functools
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PolygonStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType  # pyright: ignore[reportPrivateImportUsage]  (no rclpy.clock_type on Humble)
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import UInt32MultiArray
from std_srvs.srv import Trigger

from ..config import NodeConfig
from ..errors import ConfigError, InputError
from ..online import FrameTracks, OnlineTracker, StereoFrame
from ..structs import StereoCalib
from . import compat, convert, params
from .diagnostics import NodeStats, diagnostic_array
from .kinematics import COUNTER_KEYS, KinematicsBuffer, message_class, resolve_message_type
from .publishers import TrackPublishers
from .run import run_node
from .sync import INFO_L, INFO_R, LEFT, RIGHT, TIME_JUMP_BACK_NS, StereoSet, StereoSync
from .tf import stereo_transform, track_transforms, world_transform

NODE_NAME = "surg_invnerf_tracker"
INPUT_TOPICS = {LEFT: "stereo/left/image_rect", RIGHT: "stereo/right/image_rect",
                INFO_L: "stereo/left/camera_info", INFO_R: "stereo/right/camera_info"}
DEFAULT_FRAME = "left_camera_optical_frame"
WARN_THROTTLE_S = 5.0
KINEMATICS_TOPIC = "ecm/measured_cp"
QUERIES_DEPTH = 100
#: Queries stamped after the latest tracked frame wait this long for it, then go on the latest frame.
PENDING_QUERIES_TIMEOUT_S = 1.0
# KinematicsBuffer counters that are dropped pose *messages* → their reason in the input drops
POSE_DROP_REASONS = {"nonfinite_pose": "nonfinite_pose", "bad_quaternion": "pose_bad_quaternion",
                     "bad_type": "pose_bad_type", "duplicate": "duplicate_pose"}


@dataclass(frozen=True)
class PendingQueries:
    """Points of one ~/queries polygon whose frame the node has not tracked yet."""

    stamp_ns: int
    uv_px: np.ndarray  # (N, 2) left pixels of the frame stamp_ns
    since_s: float  # monotonic arrival at the node


def sensor_qos() -> QoSProfile:
    """A fresh SensorData profile (REP-2003): QoS overrides modify the profile object they are given,
    so sharing rclpy's module-level `qos_profile_sensor_data` would leak one topic's override to all."""
    return copy.copy(qos_profile_sensor_data)


def queries_qos() -> QoSProfile:
    """~/queries: reliable, transient local: polygons a transient-local publisher sent before the node
    subscribed (up to both sides' depth) are delivered when it joins."""
    return QoSProfile(depth=QUERIES_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def query_point_refusals(uv_px: np.ndarray, image_size: tuple[int, int] | None,
                         room: int) -> tuple[np.ndarray, dict[str, int]]:
    """Judge each query pixel on its own: (keep (N,) bool, refused points by reason).

    Args:
        uv_px: (N, 2) left-image pixels.
        image_size: (W, H) of the current calibration; None: not known yet (the image test is skipped).
        room: how many more queries `queries.max_queries` allows; the first valid points fill it.
    """
    uv = np.asarray(uv_px, np.float64).reshape(-1, 2)
    finite = np.isfinite(uv).all(1)
    inside = finite.copy()
    if image_size is not None:
        W, H = image_size
        with np.errstate(invalid="ignore"):
            inside &= (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] <= H - 1)
    keep = inside & (np.cumsum(inside) <= max(room, 0))
    refused = {"bad_queries": int((~finite).sum()), "queries_outside_image": int((finite & ~inside).sum()),
               "too_many_queries": int((inside & ~keep).sum())}
    return keep, {k: n for k, n in refused.items() if n}


class LatestItemThread:
    """A thread that runs `fn(item)` on the newest item handed to `submit`; an item still waiting when
    a newer one comes is replaced (counted in `replaced`). For work that must not hold up the frame
    that asked for it (the dense depth of ~/cloud)."""

    def __init__(self, fn: Callable[[Any], None], name: str, on_error: Callable[[Exception], None]) -> None:
        self._fn, self._on_error = fn, on_error
        self._cond = threading.Condition()
        self._item: Any = None
        self._stop = False
        self.replaced = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._item is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item, self._item = self._item, None
            try:
                self._fn(item)
            except Exception as err:  # a failed cloud must not end the thread
                self._on_error(err)

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)


class TrackerNode(Node):
    """Stereo images in; tracked points, markers, cloud, overlay, TF and diagnostics out.

    Built in two steps that the managed variant (`lifecycle_node.ManagedTrackerNode`) runs as lifecycle
    transitions: `_configure` (parameters, outputs, services, query inputs, the tracker and its refine
    process) and `_activate` (image and pose subscriptions, the front end, refinement). This node runs
    both at construction.
    """

    def __init__(self, *, context: Any = None, parameter_overrides: list | None = None,
                 cli_args: list[str] | None = None, frontend: Any = None, refiner: Any = None) -> None:
        """Args:
            frontend, refiner: injected OnlineTracker backends (tests); defaults otherwise.

        Raises:
            ConfigError: a bad or unknown parameter, or an unusable device. The node is destroyed first.
        """
        self._create(context, parameter_overrides, cli_args, frontend, refiner)
        try:
            self._configure()
            self._activate()
        except ConfigError:
            self.close()
            self.destroy_node()
            raise

    def _create(self, context: Any, parameter_overrides: list | None, cli_args: list[str] | None,
                frontend: Any, refiner: Any) -> None:
        """The bare node (the next class in the MRO: rclpy's Node, or LifecycleNode for the managed one)."""
        super(TrackerNode, self).__init__(NODE_NAME, context=context, cli_args=cli_args,
                                          parameter_overrides=parameter_overrides or [],
                                          automatically_declare_parameters_from_overrides=False)
        self.tracker: OnlineTracker | None = None
        self._backends_given = (frontend, refiner)
        self._configured_entities: list[Any] = []
        self._active_entities: list[Any] = []
        self.node_state = "unconfigured"

    @property
    def _tracker(self) -> OnlineTracker:
        """The OnlineTracker; built by `_configure`, before any callback that uses it can run."""
        assert self.tracker is not None, "callbacks run only once the node is configured"
        return self.tracker

    def _entities(self) -> list[Any]:
        return [*self.publishers, *self.subscriptions, *self.timers, *self.services, *self.guards]

    def _release(self, entities: list[Any]) -> None:
        """Destroy the publishers, subscriptions, timers, services and guard conditions in `entities`."""
        destroy = {"Publisher": self.destroy_publisher, "Subscription": self.destroy_subscription,
                   "Timer": self.destroy_timer, "Service": self.destroy_service,
                   "GuardCondition": self.destroy_guard_condition}
        for e in reversed(entities):
            kind = next((k for k in destroy if any(c.__name__ == k for c in type(e).__mro__)), None)
            if kind is not None:
                destroy[kind](e)
        entities.clear()

    def _configure(self) -> None:
        """Parameters, publishers, services, the query inputs, /diagnostics and the tracker.

        Raises:
            ConfigError: a bad or unknown parameter, a QoS override rclpy refuses, an unusable device.
        """
        before = {id(e) for e in self._entities()}
        try:
            self.cfg: NodeConfig = params.declare_config(self, NodeConfig)
            params.check_no_unknown(self, NodeConfig)
            self.backends = compat.choose_backends(self.cfg.sync.backend)
            self._setup_outputs()
            # last: the refinement process starts here, and a bad device is refused here
            frontend, refiner = self._backends_given
            self.tracker = OnlineTracker(self.cfg.frontend, self.cfg.refine, self.cfg.queries,
                                         online_cfg=self.cfg.online, frontend=frontend, refiner=refiner,
                                         device=self.cfg.device, start_worker=False)
        finally:
            self._configured_entities = [e for e in self._entities() if id(e) not in before]
        self.node_state = "inactive"

    def _activate(self) -> None:
        """Image and pose subscriptions, the front end and its timers, refinement.

        Raises:
            ConfigError: a QoS override that rclpy refuses, named by its topic.
        """
        before = {id(e) for e in self._entities()}
        try:
            self._setup_inputs()
        finally:
            self._active_entities = [e for e in self._entities() if id(e) not in before]
        self._tracker.start()
        self.node_state = "active"
        if not len(self._tracker.query_ids) and not self.cfg.queries.auto_grid:
            self.get_logger().info(f"no start queries: waiting for queries on {self.resolve_topic_name('~/queries')} "
                                   "(PolygonStamped, pixels) or clicked_point")

    def _deactivate(self) -> None:
        """Stop taking images and poses and starting fits; queries, tracks and the model are kept."""
        if self._kin_sub is not None and self._kin_sub not in self._active_entities:  # subscribed later, by the timer
            self._active_entities.append(self._kin_sub)
        self._release(self._active_entities)
        self._kin_sub = self._kin_timer = None
        self._stop_frontend()
        if self.tracker is not None:
            self.tracker.pause()
        with self._frames_lock:
            waiting, self._frames = len(self._frames), deque()
        if waiting:
            self.stats.count_drop("node_deactivated", waiting)
        self.node_state = "inactive"

    def _cleanup(self) -> None:
        """Back to unconfigured: the tracker (and its refine process) and every entity are released."""
        if self.node_state == "active":
            self._deactivate()
        self.close()
        self.tracker = None
        self._release(self._active_entities)
        self._release(self._configured_entities)
        self.node_state = "unconfigured"

    def _setup_outputs(self) -> None:
        """Publishers, services, the query subscriptions and the diagnostics timer."""
        log = self.get_logger()
        log.info(f"backends: {self.backends.describe()}")
        if self.backends.tf == "none":
            log.warning("tf2_msgs is not installed: /tf and /tf_static are off "
                        "(pip install ./interfaces/tf2_msgs_pywheels)")

        self.stats = NodeStats()
        self._decode: Callable[[Image], np.ndarray] = compat.image_decoder(self.backends.image)
        self._frames: deque[StereoSet] = deque()
        self._frames_lock = threading.Lock()
        self._frames_ready = threading.Condition(self._frames_lock)
        self._frontend_lock = threading.Lock()  # held by the front-end thread while it handles a frame or a poll
        # the latest left images received (tracked or not), for queries stamped with one; under _frames_lock
        self._left_history: deque[tuple[int, Image]] = deque(maxlen=self.cfg.queries.image_history_frames)
        # queries stamped after the latest tracked frame, waiting for it; under _frames_lock
        self._pending_queries: list[PendingQueries] = []
        self._frontend_thread: threading.Thread | None = None
        self._cloud_thread: LatestItemThread | None = None
        self._arrival_ns: OrderedDict[int, int] = OrderedDict()  # frame stamp → monotonic arrival, recent frames
        self._frontend_stop = threading.Event()
        self._refine_busy = False
        self._last_enqueued_ns: int | None = None
        self._calib_key: tuple | None = None
        self._calib: StereoCalib | None = None
        self._calib_cached: StereoCalib | None = None  # for _calib_key, maybe not yet agreed by its images
        self._frame_ids: tuple[str, str] = (DEFAULT_FRAME, "")
        self._static_key: tuple | None = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)

        self._cb_inputs = MutuallyExclusiveCallbackGroup()
        self._cb_timers = MutuallyExclusiveCallbackGroup()
        self._cb_services = MutuallyExclusiveCallbackGroup()

        self.pubs = TrackPublishers(self, self.cfg.publish)
        self.tf_dynamic, self.tf_static = (compat.make_tf_broadcasters(self, self.backends.tf)
                                           if self.cfg.publish.tf else (None, None))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))
        self.sync = StereoSync(self.cfg.sync)
        # queries are state: taken whenever the node is configured (a transient-local subscription
        # made again on each activation would receive the same polygons again)
        self._queries_sub = self.create_subscription(
            PolygonStamped, "~/queries", self._on_queries, queries_qos(), callback_group=self._cb_inputs,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_queries_incompatible_qos))
        self.create_subscription(PointStamped, "clicked_point", self._on_clicked_point, 10,
                                 callback_group=self._cb_inputs)
        self.create_subscription(UInt32MultiArray, "~/remove_queries", self._on_remove_queries, 10,
                                 callback_group=self._cb_inputs)
        remove_srv = compat.remove_queries_service()
        if remove_srv is not None:
            self.create_service(remove_srv, "~/remove", self._on_remove, callback_group=self._cb_services)
        else:
            self.get_logger().warning("surg_invnerf_msgs is not installed: the ~/remove service is off, ~/remove_queries "
                                      "takes ids (pip install ./interfaces/surg_invnerf_msgs)")
        self.create_service(Trigger, "~/clear", self._on_clear, callback_group=self._cb_services)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self._cb_services)
        self.create_timer(1.0 / self.cfg.publish.diagnostics_rate_hz, self._publish_diagnostics,
                          callback_group=self._cb_timers, clock=self._steady)
        self._setup_kinematics()

    def _setup_inputs(self) -> None:
        """The four stereo subscriptions (or message_filters), the sync flush timer, the pose subscription
        and the front-end thread.

        Raises:
            ConfigError: a QoS override that rclpy refuses, named by its topic.
        """
        overrides = QoSOverridingOptions.with_default_policies()
        self._input_subs: list[Any] = []
        if self.backends.sync == "message_filters":
            topics = {slot: (CameraInfo if slot in (INFO_L, INFO_R) else Image, t) for slot, t in INPUT_TOPICS.items()}
            self._input_subs, self._mf_sync = compat.make_message_filters_sync(
                self, topics, sensor_qos(), self.cfg.sync.approximate, self.cfg.sync.queue_size, self.cfg.sync.slop_s,
                self._on_message_filters_set, self._cb_inputs, overrides)
        else:
            for slot, topic in INPUT_TOPICS.items():
                msg_type = CameraInfo if slot in (INFO_L, INFO_R) else Image
                try:
                    self._input_subs.append(self.create_subscription(
                        msg_type, topic, functools.partial(self._on_input, slot), sensor_qos(),
                        callback_group=self._cb_inputs, qos_overriding_options=overrides))
                except (RuntimeError, ValueError, TypeError) as err:  # rclpy's QoS override checks
                    raise ConfigError(f"qos_overrides.{self.resolve_topic_name(topic)}.subscription: {err}") from None
        self.create_timer(0.1, self._flush_sync, callback_group=self._cb_inputs, clock=self._steady)
        self._start_kinematics()
        self._frontend_stop.clear()
        self._cloud_thread = LatestItemThread(self._publish_dense_cloud, "cloud", self._on_cloud_error)
        self._frontend_thread = threading.Thread(target=self._frontend_loop, name="frontend", daemon=True)
        self._frontend_thread.start()

    def _setup_kinematics(self) -> None:
        """The pose buffer and its counters (the subscription comes with `_start_kinematics`)."""
        kc = self.cfg.kinematics
        self.kin: KinematicsBuffer | None = KinematicsBuffer(kc) if kc.enabled else None
        self._kin_sub: Any = None
        self._kin_type: str | None = None
        self._kin_timer: Any = None
        self._kin_bad_type_warned = False
        self._poses_received = 0
        self._pose_drops_seen = dict.fromkeys(POSE_DROP_REASONS, 0)
        self._kin_frames = {"with_pose": 0, "without_pose": 0, "before_first_pose": 0}
        self._kin_reported = {"without_pose": 0, "drops": 0}
        if self.kin is None:
            self.get_logger().info("kinematics: off (kinematics.enabled false)")

    def _start_kinematics(self) -> None:
        """Subscribe `ecm/measured_cp` now, or once the topic appears."""
        if self.kin is None:
            return
        if not self._subscribe_kinematics():
            self.get_logger().info(f"kinematics: waiting for {self.resolve_topic_name(KINEMATICS_TOPIC)} "
                                   "to be advertised; frames run without poses until then")
            self._kin_timer = self.create_timer(0.5, self._subscribe_kinematics_later,
                                                callback_group=self._cb_inputs, clock=self._steady)

    def _subscribe_kinematics_later(self) -> None:
        """Timer: retry the subscription; a QoS override refused this late is logged, not raised."""
        try:
            self._subscribe_kinematics()
        except ConfigError as err:
            self.get_logger().error(f"kinematics: not subscribed: {err}")
            if self._kin_timer is not None:
                self._kin_timer.cancel()

    # ------------------------------------------------------------------ inputs

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=WARN_THROTTLE_S)

    def _on_input(self, slot: str, msg: Any) -> None:
        """Stamp, sync, enqueue. Never converts or tracks (that is the front-end callback's job)."""
        now = time.monotonic_ns()
        self.stats.count_input(INPUT_TOPICS[slot], now)
        try:
            stamp = convert.stamp_ns(msg.header.stamp)
            sets = self.sync.push(slot, stamp, msg, now)
        except Exception as err:  # a malformed header must not kill the node
            self.stats.count_drop("bad_header")
            self._warn(f"{INPUT_TOPICS[slot]}: dropped ({err})")
            return
        if slot == LEFT:
            self._remember_left(stamp, msg)
        self.stats.set_drops(self.sync.drops)
        for s in sets:
            self._enqueue(s)

    def _flush_sync(self) -> None:
        for s in self.sync.flush(time.monotonic_ns()):
            self._enqueue(s)
        self.stats.set_drops(self.sync.drops)

    def _on_message_filters_set(self, left: Image, right: Image, info_l: CameraInfo, info_r: CameraInfo) -> None:
        now = time.monotonic_ns()
        for slot in (LEFT, RIGHT, INFO_L, INFO_R):
            self.stats.count_input(INPUT_TOPICS[slot], now)
        stamps = [convert.stamp_ns(m.header.stamp) for m in (left, right, info_l, info_r)]
        self._remember_left(stamps[0], left)
        self._enqueue(StereoSet(stamps[0], left, right, info_l, info_r, max(abs(s - stamps[0]) for s in stamps)))

    def _remember_left(self, stamp_ns: int, msg: Image) -> None:
        with self._frames_lock:
            self._left_history.append((stamp_ns, msg))

    def _left_image_at(self, stamp_ns: int) -> np.ndarray | None:
        """The held left image stamped `stamp_ns`, decoded; None when not held or not decodable."""
        with self._frames_lock:
            msg = next((m for s, m in reversed(self._left_history) if s == stamp_ns), None)
        if msg is None:
            return None
        try:
            return self._decode(msg)
        except Exception:  # a bad image was (or will be) dropped and counted where it is tracked
            return None

    def _enqueue(self, s: StereoSet) -> None:
        last = self._last_enqueued_ns
        if last is not None and last - s.stamp_ns > TIME_JUMP_BACK_NS:  # time jumped back: a new stream
            last = None
        if last is not None and s.stamp_ns <= last:  # message_filters does not check order
            self.stats.count_drop("duplicate_stamp" if s.stamp_ns == last else "out_of_order_stamp")
            return
        rate = self.cfg.sync.max_rate_hz
        # 5 % tolerance, so a stream at exactly max_rate_hz with stamp jitter is not thinned
        if rate > 0 and last is not None and s.stamp_ns - last < 0.95e9 / rate:
            self.stats.count_drop("rate_limited")
            return
        self._last_enqueued_ns = s.stamp_ns
        with self._frames_lock:
            self._frames.append(s)
            if len(self._frames) > self.cfg.sync.frame_queue_size:
                self._frames.popleft()
                self.stats.count_drop("frontend_busy")
            self._frames_ready.notify()

    def _subscribe_kinematics(self) -> bool:
        """Subscribe `ecm/measured_cp` with its advertised (or the configured) type; False: not yet."""
        if self._kin_sub is not None:
            return True
        topic = self.resolve_topic_name(KINEMATICS_TOPIC)
        advertised = [t for name, types in self.get_topic_names_and_types() if name == topic for t in types]
        try:
            kind = resolve_message_type(self.cfg.kinematics.message_type, advertised)
        except InputError as err:  # e.g. a geometry_msgs/Pose publisher: keep waiting for a usable one
            if not self._kin_bad_type_warned:
                self._kin_bad_type_warned = True
                self.get_logger().warning(f"kinematics: {err}; not subscribed (set kinematics.message_type)")
            return False
        if kind is None:
            return False
        # best effort matches reliable and best-effort publishers alike; deep enough for 100 Hz bursts
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
        try:
            self._kin_sub = self.create_subscription(
                message_class(kind), KINEMATICS_TOPIC, self._on_pose, qos, callback_group=self._cb_inputs,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        except (RuntimeError, ValueError, TypeError) as err:
            raise ConfigError(f"qos_overrides.{topic}.subscription: {err}") from None
        self._kin_type = kind
        if self._kin_timer is not None:
            self._kin_timer.cancel()
        self.get_logger().info(f"kinematics: subscribed {topic} as geometry_msgs/{kind}")
        return True

    def _on_pose(self, msg: Any) -> None:
        """Buffer one ECM pose; a bad one is dropped and counted by the buffer (never raised)."""
        assert self.kin is not None
        if self.kin.add_msg(msg):
            self._poses_received += 1
            return
        counters = self.kin.counters
        why = [k for k in POSE_DROP_REASONS if counters[k] > self._pose_drops_seen[k]]
        self._pose_drops_seen = {k: counters[k] for k in POSE_DROP_REASONS}
        self._warn(f"{KINEMATICS_TOPIC}: pose dropped ({', '.join(why) or 'unknown'})")

    def _on_queries(self, msg: PolygonStamped) -> None:
        """Track each valid point of the polygon; count and warn about the refused ones (by reason)."""
        uv = np.array([[p.x, p.y] for p in msg.polygon.points], dtype=np.float64).reshape(-1, 2)
        if not len(uv):
            self.stats.count_drop("empty_queries")
            self._warn("~/queries: dropped: PolygonStamped.polygon.points: empty (empty_queries)")
            return
        size = self._calib.image_size if self._calib is not None else None
        room = self.cfg.queries.max_queries - len(self._tracker.query_ids) - self._waiting_queries()
        keep, refused = query_point_refusals(uv, size, room)
        stamp = convert.stamp_ns(msg.header.stamp) or None
        last = self._tracker.last_stamp_ns
        if keep.any() and stamp is not None and (last is None or stamp > last):
            with self._frames_lock:  # its frame is not tracked yet: placed once it is (_place_pending_queries)
                self._pending_queries.append(PendingQueries(stamp, uv[keep], time.monotonic()))
        elif keep.any():
            self._add_queries(uv[keep], stamp, refused)
        for reason, n in refused.items():
            self.stats.count_drop(reason, n)
        if refused:
            first = int(np.argmin(keep))
            where = f"the {size[0]}x{size[1]} image, " if size is not None else ""
            self._warn(f"~/queries: refused {sum(refused.values())} of {len(uv)} points "
                       f"({', '.join(f'{n} {r}' for r, n in refused.items())}; {where}"
                       f"queries.max_queries {self.cfg.queries.max_queries}); first refused: point {first} at "
                       f"({uv[first, 0]}, {uv[first, 1]})")

    def _add_queries(self, uv: np.ndarray, stamp_ns: int | None, refused: dict[str, int]) -> np.ndarray:
        """Give the tracker queries at `stamp_ns`, with that frame's left image when it is an older one
        still held; a refusal is added to `refused` (by reason), the new ids are logged and returned."""
        last = self._tracker.last_stamp_ns
        image = (self._left_image_at(stamp_ns) if stamp_ns is not None and last is not None and stamp_ns < last
                 else None)
        try:
            ids = self._tracker.add_queries(uv, stamp_ns, image)
        except InputError as err:  # e.g. the auto grid took the room meanwhile
            refused[err.reason] = refused.get(err.reason, 0) + len(uv)
            return np.zeros(0, np.int64)
        self.get_logger().info(f"added {len(ids)} queries (ids {int(ids[0])}..{int(ids[-1])})")
        return ids

    def _place_pending_queries(self, stamp_ns: int, arriving: bool = False) -> None:
        """Front-end thread, around the frame `stamp_ns`: add the waiting queries whose frame has come.
        `arriving` (before the frame is tracked): those stamped with this very frame, so its output has
        them. After it: those of an older frame that was never tracked (placed on its held image), and
        those that waited PENDING_QUERIES_TIMEOUT_S (taken at this frame, with a warning)."""
        if not self._pending_queries:  # the usual frame: nothing waits, no lock taken. A polygon appended
            return  # just after this look waits for the next call (after this frame: placed on its held image)
        now = time.monotonic()

        def is_due(p: PendingQueries) -> bool:
            if arriving:
                return p.stamp_ns == stamp_ns
            return p.stamp_ns <= stamp_ns or now - p.since_s > PENDING_QUERIES_TIMEOUT_S

        with self._frames_lock:
            due = [p for p in self._pending_queries if is_due(p)]
            self._pending_queries = [p for p in self._pending_queries if not is_due(p)]
        for p in due:
            if p.stamp_ns > stamp_ns:
                self._warn(f"~/queries: no frame stamped {p.stamp_ns} arrived within {PENDING_QUERIES_TIMEOUT_S:g} s; "
                           f"{len(p.uv_px)} queries taken at frame {stamp_ns}")
            refused: dict[str, int] = {}
            self._add_queries(p.uv_px, min(p.stamp_ns, stamp_ns), refused)
            for reason, n in refused.items():
                self.stats.count_drop(reason, n)
                self._warn(f"~/queries: refused {n} points stamped {p.stamp_ns} ({reason}; "
                           f"queries.max_queries {self.cfg.queries.max_queries})")

    def _waiting_queries(self, drop: bool = False) -> int:
        """Points waiting for their frame; `drop`: forget them as well."""
        with self._frames_lock:
            n = sum(len(p.uv_px) for p in self._pending_queries)
            if drop:
                self._pending_queries = []
        return n

    def _on_queries_incompatible_qos(self, info: QoSRequestedIncompatibleQoSInfo) -> None:
        """A ~/queries publisher this subscription cannot match (e.g. volatile): none of its polygons arrive."""
        self.stats.count_drop("queries_publisher_incompatible_qos")
        try:
            policy = QoSPolicyKind(info.last_policy_kind).name.lower()
        except ValueError:
            policy = str(info.last_policy_kind)
        self.get_logger().error(
            f"{self.resolve_topic_name('~/queries')}: a publisher offers incompatible QoS ({policy}); "
            "its queries are not received: publish reliable and transient local "
            "(ros2 topic pub --qos-reliability reliable --qos-durability transient_local)")

    def _remove_ids(self, data: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
        """Forget the given query ids: (removed, unknown). Ids the tracker does not hold are counted
        (unknown_query_id) and warned about, naming `source`."""
        ids = np.unique(np.asarray(data, np.int64))
        held = np.isin(ids, self._tracker.query_ids)
        if held.any():
            self._tracker.remove_queries(ids[held])  # their trails end with the next frame
            self.get_logger().info(f"removed {int(held.sum())} queries (ids {', '.join(str(i) for i in ids[held][:20])})")
        if not held.all():
            self.stats.count_drop("unknown_query_id", int((~held).sum()))
            self._warn(f"{source}: {int((~held).sum())} ids not held (unknown_query_id): "
                       f"{', '.join(str(i) for i in ids[~held][:20])}")
        return ids[held], ids[~held]

    def _on_remove_queries(self, msg: UInt32MultiArray) -> None:
        self._remove_ids(msg.data, "~/remove_queries")

    def _on_remove(self, request: Any, response: Any) -> Any:
        """`~/remove` (surg_invnerf_msgs/RemoveQueries): remove by id, answer which were removed and which unknown."""
        removed, unknown = self._remove_ids(request.ids, "~/remove")
        response.removed = [int(i) for i in removed]
        response.unknown = [int(i) for i in unknown]
        response.message = f"removed {len(removed)} queries" + (f"; {len(unknown)} ids unknown" if len(unknown) else "")
        return response

    def _on_clicked_point(self, msg: PointStamped) -> None:
        try:
            if self._calib is None:
                raise InputError("clicked_point: no camera_info yet", "clicked_point_no_camera")
            left, right = self._frame_ids
            frame = msg.header.frame_id
            if frame in ("", left):
                T = None
            elif frame == right and right:
                T = np.eye(4)
                T[0, 3] = self._calib.baseline_m  # X_left = X_right + [B, 0, 0]
            else:
                raise InputError(f"clicked_point: frame {frame!r} is neither {left!r} nor {right!r} "
                                 f"(set the RViz fixed frame to {left})", "clicked_point_unknown_frame")
            uv = convert.point_to_uv_px(msg, self._calib, T)
            ids = self._tracker.add_queries(uv)
        except InputError as err:
            self.stats.count_drop(err.reason)
            self._warn(f"clicked_point: dropped: {err}")
            return
        self.get_logger().info(f"clicked_point → query {int(ids[0])} at ({uv[0, 0]:.1f}, {uv[0, 1]:.1f}) px")

    def _on_clear(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        n = len(self._tracker.query_ids) + self._waiting_queries(drop=True)
        self._tracker.clear_queries()
        self.pubs.clear_trails()
        response.success, response.message = True, f"cleared {n} queries"
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        n = len(self._tracker.query_ids) + self._waiting_queries(drop=True)
        self._tracker.reset()
        self.pubs.clear_trails()
        response.success, response.message = True, f"reset: dropped {n} queries and the model"
        return response

    # ------------------------------------------------------------------ front end

    def _frontend_loop(self) -> None:
        """The front-end thread: every queued frame in order, and the refined results every
        1/publish.poll_rate_hz, one at a time (a refined result re-anchors the front end). It runs
        outside the executor, so the executor's own overhead never delays a frame."""
        period_s = 1.0 / self.cfg.publish.poll_rate_hz
        next_poll = time.monotonic() + period_s
        stop = self._frontend_stop
        while not stop.is_set():
            with self._frames_ready:
                if not self._frames:
                    self._frames_ready.wait(timeout=max(0.0, next_poll - time.monotonic()))
            if stop.is_set():
                return
            with self._frontend_lock:
                self._process_next()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + period_s
                    try:
                        self._poll_refined()
                    except Exception as err:  # publishing refined results must not end the front end
                        self.stats.count_drop("internal_error")
                        self.get_logger().error(f"refined results: {type(err).__name__}: {err}",
                                                throttle_duration_sec=WARN_THROTTLE_S)

    def _stop_frontend(self, timeout_s: float = 5.0) -> None:
        """End the front-end thread (after the frame it is on) and the cloud thread."""
        if self._cloud_thread is not None:
            self._cloud_thread.stop(timeout_s)
            self._cloud_thread = None
        thread = self._frontend_thread
        if thread is None:
            return
        self._frontend_stop.set()
        with self._frames_ready:
            self._frames_ready.notify_all()
        if thread is not threading.current_thread():
            thread.join(timeout=timeout_s)
        self._frontend_thread = None

    def _process_next(self) -> None:
        """Track and publish the oldest queued frame, if any; a bad one is dropped and counted."""
        with self._frames_lock:
            if not self._frames:
                return
            s = self._frames.popleft()
        try:
            self._process(s)
        except InputError as err:
            self.stats.count_drop(err.reason)
            self._warn(f"stereo frame {s.stamp_ns}: dropped: {err}")
        except Exception as err:  # e.g. an OpenCV error on odd data: count it, keep running
            self.stats.count_drop("internal_error")
            self.get_logger().error(f"stereo frame {s.stamp_ns}: {type(err).__name__}: {err}",
                                    throttle_duration_sec=WARN_THROTTLE_S)

    def _calib_for(self, info_l: CameraInfo, info_r: CameraInfo) -> StereoCalib:
        # every field the codec checks, so a camera_info it would refuse never reuses the cached calibration
        key = (tuple(info_l.k), tuple(info_l.p), tuple(info_r.k), tuple(info_r.p), info_l.width, info_l.height,
               info_r.width, info_r.height)
        if key != self._calib_key:
            calib = convert.camera_info_to_calib(info_l, info_r)
            self._calib_key, self._calib_cached = key, calib
        assert self._calib_cached is not None
        return self._calib_cached

    def _process(self, s: StereoSet) -> None:
        self._arrival_ns[s.stamp_ns] = time.monotonic_ns()  # for the refinement lag in /diagnostics
        while len(self._arrival_ns) > self.cfg.refine.history_frames:
            self._arrival_ns.popitem(last=False)
        calib = self._calib_for(s.info_left, s.info_right)
        left = self._decode(s.left)
        right = self._decode(s.right)
        convert.check_stereo_images(left, right, calib)
        self._calib = calib  # queries and clicks are judged against the last calibration its images agreed with
        left_frame = s.info_left.header.frame_id or s.left.header.frame_id or DEFAULT_FRAME
        right_frame = s.info_right.header.frame_id or s.right.header.frame_id
        self._frame_ids = (left_frame, right_frame)
        self._publish_static(calib, left_frame, right_frame, s.stamp_ns)
        T_world_cam = self._pose_at(s.stamp_ns)
        with self._frames_lock:
            behind = bool(self._frames)
        self._place_pending_queries(s.stamp_ns, arriving=True)  # those stamped with this frame: tracked from it
        ft = self._tracker.push_frame(StereoFrame(left, right, calib, s.stamp_ns, T_world_cam), behind=behind)
        self._place_pending_queries(s.stamp_ns)
        if ft.shed:
            self.stats.count_shed()
        hdr = convert.header(s.stamp_ns, left_frame)
        self.pubs.tracks(ft, hdr)
        self._send_tf(ft, left_frame, T_world_cam)
        self.pubs.overlay_image(left, ft, hdr)
        if ft.depth_m is not None:  # computed anyway this frame (a new query's disparity, or sgbm point depth)
            self.pubs.cloud_from_depth(ft.depth_m, left, calib.K, hdr)
        elif self.pubs.cloud_due() and self._cloud_thread is not None:
            self.pubs.claim_cloud()
            self._cloud_thread.submit((left, right, calib, hdr))  # dense stereo off the per-frame path
        latency_s = (self.get_clock().now().nanoseconds - s.stamp_ns) * 1e-9
        self.stats.record_frame(latency_s, s.skew_ns * 1e-9)

    def _publish_dense_cloud(self, item: tuple[np.ndarray, np.ndarray, StereoCalib, Any]) -> None:
        """Cloud thread: the front end's dense stereo depth of one frame → ~/cloud (with that frame's stamp)."""
        left, right, calib, hdr = item
        depth_m = np.asarray(self._tracker.frontend.depth_m(left, right, calib), np.float32)
        self.pubs.cloud_from_depth(depth_m, left, calib.K, hdr, force=True)

    def _on_cloud_error(self, err: Exception) -> None:
        self.stats.count_drop("cloud_error")
        self.get_logger().error(f"~/cloud: {type(err).__name__}: {err}", throttle_duration_sec=WARN_THROTTLE_S)

    def _pose_at(self, stamp_ns: int) -> np.ndarray | None:
        """T_world_cam (4, 4) at an image stamp, or None: the frame then runs without kinematics.

        The buffer never extrapolates, so when poses are flowing but the newest is still older than
        the frame, the frame is held up to `kinematics.wait_s` for the next one (the pose callback
        runs in the executor, not in this thread). Missing and stale lookups are counted by the buffer.
        """
        kin, kc = self.kin, self.cfg.kinematics
        if kin is None:
            return None
        if not self._poses_received:
            self._kin_frames["before_first_pose"] += 1
            return None
        t_kin = stamp_ns + int(round(kc.time_offset_s * 1e9))
        newest = kin.newest_stamp_ns
        if newest is not None:
            live = (t_kin - newest) * 1e-9 <= kc.max_age_s + kc.wait_s
            if live and newest < t_kin and kc.wait_s > 0:
                kin.wait_for_stamp(t_kin, kc.wait_s)
        T = kin.pose_at(stamp_ns)  # the buffer refuses non-finite poses and the hand-eye is validated
        if T is None:
            self._kin_frames["without_pose"] += 1
            return None
        self._kin_frames["with_pose"] += 1
        return T

    def _publish_static(self, calib: StereoCalib, left_frame: str, right_frame: str, stamp_ns: int) -> None:
        if self.tf_static is None or not right_frame or right_frame == left_frame:
            return
        key = (left_frame, right_frame, calib.baseline_m)
        if key != self._static_key:
            self._static_key = key
            self.tf_static.sendTransform(stereo_transform(calib, left_frame, right_frame, stamp_ns))

    def _send_tf(self, ft: FrameTracks, frame_id: str, T_world_cam: np.ndarray | None = None) -> None:
        if self.tf_dynamic is not None:
            transforms = track_transforms(ft.ids, ft.xyz_cam_m, ft.visible, frame_id, ft.stamp_ns)
            kc = self.cfg.kinematics
            if T_world_cam is not None and kc.publish_tf and kc.world_frame != frame_id:
                transforms.append(world_transform(T_world_cam, kc.world_frame, frame_id, ft.stamp_ns))
            if transforms:
                self.tf_dynamic.sendTransform(transforms)

    def _poll_refined(self) -> None:
        busy = self._tracker.busy
        if busy and not self._refine_busy:
            st = self._tracker.stats()
            self.get_logger().info(f"refine: fitting {st.get('keyframes', 0)} keyframes, {st.get('queries', 0)} queries")
        self._refine_busy = busy
        refined = self._tracker.poll()
        if not refined:
            return
        self.get_logger().info(f"refine: refined tracks for {len(refined)} frames")
        frame = self._frame_ids[0]
        for ft in refined:
            hdr = convert.header(ft.stamp_ns, frame)
            self.pubs.tracks(ft, hdr, live=False)
            self._send_tf(ft, frame)
            if ft.depth_m is not None and ft.left_rgb_u8 is not None and self._calib is not None:
                self.pubs.cloud_from_depth(ft.depth_m, ft.left_rgb_u8, self._calib.K, hdr, force=True)
        self.stats.record_refined([ft.stamp_ns for ft in refined], time.monotonic_ns(), self._arrival_ns)

    # ------------------------------------------------------------------ diagnostics

    def _kinematics_report(self) -> dict[str, Any]:
        """Pose counters for /diagnostics; also mirrors dropped pose messages into the input drops."""
        if self.kin is None:
            return {"state": "off"}
        c = self.kin.counters
        self.stats.set_drops({POSE_DROP_REASONS[k]: c[k] for k in POSE_DROP_REASONS if c[k]})
        f = dict(self._kin_frames)
        drops = sum(c[k] for k in POSE_DROP_REASONS)
        rep: dict[str, Any] = {f"counter.{k}": c.get(k, 0) for k in COUNTER_KEYS}
        rep.update({"message_type": self._kin_type or "", "poses_received": self._poses_received,
                    "buffered_poses": len(self.kin), "frames_with_pose": f["with_pose"],
                    "frames_without_pose": f["without_pose"], "frames_before_first_pose": f["before_first_pose"],
                    "new_frames_without_pose": f["without_pose"] - self._kin_reported["without_pose"],
                    "new_pose_drops": drops - self._kin_reported["drops"]})
        self._kin_reported = {"without_pose": f["without_pose"], "drops": drops}
        if self._kin_sub is None:
            rep["state"] = f"waiting for {self.resolve_topic_name(KINEMATICS_TOPIC)}"
        elif not self._poses_received:
            rep["state"] = "no poses received"
        else:
            rep["state"] = f"ok ({self._kin_type})"
        return rep

    def _publish_diagnostics(self) -> None:
        kin = self._kinematics_report()  # first: it updates the drop counters the snapshot reads
        snap = self.stats.snapshot(time.monotonic_ns())
        queues = {f"sync.{k}": v for k, v in self.sync.depths().items()}
        with self._frames_lock:
            queues["frames"] = len(self._frames)
        queues["queries_waiting"] = self._waiting_queries()
        model = self._tracker.stats()
        queues["keyframes"] = int(model.pop("keyframes", 0))
        snap["drift_resets"] = int(model.pop("drift_resets", 0))
        model["device"] = self.cfg.device if "device" not in model else model["device"]
        msg = diagnostic_array(snap, queues, model, self.get_clock().now().nanoseconds, self.get_name(),
                               kinematics=kin, node_state=self.node_state)
        self._diag_pub.publish(msg)

    def close(self) -> None:
        """Stop the front-end thread, then the refinement worker and its process (call before destroy_node)."""
        if getattr(self, "_frontend_thread", None) is not None:
            self._stop_frontend()
        if self.tracker is not None:
            self.tracker.close()


def main(args: list[str] | None = None) -> int:
    """Console script `track_node`: spin the tracker until Ctrl-C or SIGTERM; 2 on a bad parameter."""
    return run_node(TrackerNode, args, threads=1, close=lambda node: node.close(),
                    error_prefix=f"{NODE_NAME}: refusing to start", user_errors=(ConfigError,))


if __name__ == "__main__":
    sys.exit(main())
