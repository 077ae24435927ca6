"""Bag player and recorder for ROS 2 bags via `rosbags` (DESIGN §2.3, §5; ROS_STACK.md Q4).

- `bag_player` (`player_main`): plays an MCAP or sqlite3 bag. rosbags reads the raw CDR bytes and
  `publisher.publish(bytes)` sends them unchanged, paced on the bag's log time (scaled by `rate`),
  optionally publishing that time on `/clock` so nodes with `use_sim_time` follow the bag.
- `record(...)` (the `surg-invnerf record` command): subscribes with `raw=True` (bytes as they came
  off DDS: re-serializing an rclpy message can add trailing bytes that rosbags refuses, see the
  JointState gotcha in ROS_STACK.md) and writes a bag, or a sequence folder through
  `io.rosbag.bag_to_sequence`.

Fast DDS's default transports stall small topics behind ~1 MB images; both entry points set
`FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA` when it is unset, before their participant is created.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from ..config import BagPlayerConfig
from ..errors import ConfigError, InputError
from ..io import rosbag as rb
from ..structs import Queries

log = logging.getLogger(__name__)

#: Topics `record(to="sequence")` subscribes when none are given (DESIGN §5 names, matched by suffix).
SEQUENCE_TOPICS = rb.BagTopics()
_IGNORED_TOPICS = ("/rosout", "/parameter_events")


def use_large_data_transport() -> None:
    """Select Fast DDS's LARGE_DATA builtin transports unless the user chose others.

    Must run before the first participant of the process is created (rclpy.init / first node).
    """
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")


def message_class(msgtype: str) -> Any:
    """rclpy message class of a type name like `sensor_msgs/msg/Image`."""
    try:
        pkg, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        raise InputError(f"{msgtype}: no Python message package for this type", "unknown_type") from None


# ------------------------------------------------------------------------------------------------
# Player
# ------------------------------------------------------------------------------------------------


class BagPlayer:
    """Publishes a bag's messages as raw CDR, paced on bag time; a node holder, not a Node subclass.

    Keeping `rclpy.node.Node` behind `self.node` lets tests build a player inside their own context.
    """

    def __init__(self, node: Any, cfg: BagPlayerConfig) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self.node = node
        self.cfg = cfg
        if not cfg.bag:
            raise ConfigError("bag: expected the path of a bag folder, got ''")
        available = rb.bag_topics(cfg.bag)
        wanted = set(cfg.topics) if cfg.topics else None
        self.topics: dict[str, str] = {}
        self.publishers: dict[str, Any] = {}
        for topic, msgtype in sorted(available.items()):
            if wanted is not None and topic not in wanted:
                continue
            try:
                cls = message_class(msgtype)
            except InputError as err:
                node.get_logger().warning(f"{cfg.bag}: {topic}: {err}; not played")
                continue
            latched = topic.endswith("/tf_static") or topic == "/tf_static"
            # query polygons: the tracker's ~/queries takes transient local only (a tracker that joins late
            # still gets them); a transient-local publisher matches volatile subscribers too
            queries = msgtype.endswith("PolygonStamped")
            qos = QoSProfile(depth=1 if latched else cfg.qos_depth, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if latched or queries
                             else DurabilityPolicy.VOLATILE)
            self.publishers[topic] = node.create_publisher(cls, topic, qos)
            self.topics[topic] = msgtype
        if wanted is not None and wanted - set(available):
            raise ConfigError(f"topics: {sorted(wanted - set(available))[0]} is not in {cfg.bag}")
        self.clock_pub = node.create_publisher(Clock, "/clock", 10) if cfg.clock else None
        self.published = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _stopped(self) -> bool:
        # SIGINT/SIGTERM shut the context down (rclpy's handler); stop publishing into it.
        return self._stop.is_set() or not self.node.context.ok()

    def wait_for_subscribers(self) -> bool:
        """Wait up to `wait_for_subscribers_s` until every played topic has a subscriber."""
        deadline = time.monotonic() + self.cfg.wait_for_subscribers_s
        while not self._stopped():
            missing = [t for t, p in self.publishers.items() if p.get_subscription_count() == 0]
            if not missing:
                self._stop.wait(0.1)  # let the matched readers finish their side of discovery
                return True
            if time.monotonic() >= deadline:
                if self.cfg.wait_for_subscribers_s > 0:
                    self.node.get_logger().warning(f"no subscriber on {', '.join(missing)}; playing anyway")
                return False
            self._stop.wait(0.05)
        return False

    def _send(self, pub: Any, data: Any) -> None:
        try:
            pub.publish(data)
        except Exception:
            if self.node.context.ok():
                raise
            self._stop.set()  # the context went down between the check and the publish

    def _publish_clock(self, bag_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        from .convert import to_stamp

        if self.clock_pub is not None:
            self._send(self.clock_pub, Clock(clock=to_stamp(int(bag_ns))))

    def play_once(self) -> int:
        """Play the bag once, paced; returns the number of messages published."""
        rate = self.cfg.rate
        clock_period = 1.0 / self.cfg.clock_rate_hz
        count = 0
        t0_wall: float | None = None  # wall and bag time of the first message, set together
        t0_bag = 0
        last_clock = -1.0
        for msg in rb.read_bag(self.cfg.bag, topics=self.publishers):
            if self._stopped():
                break
            if t0_wall is None:
                t0_wall, t0_bag = time.monotonic(), msg.log_time_ns
            if rate > 0:
                due = t0_wall + (msg.log_time_ns - t0_bag) * 1e-9 / rate
                while not self._stopped():
                    now = time.monotonic()
                    if self.clock_pub is not None and now - last_clock >= clock_period:
                        self._publish_clock(t0_bag + int((now - t0_wall) * rate * 1e9))
                        last_clock = now
                    if now >= due:
                        break
                    self._stop.wait(min(due - now, clock_period))
            if self.clock_pub is not None:
                self._publish_clock(max(msg.log_time_ns, t0_bag + int((time.monotonic() - t0_wall) * rate * 1e9))
                                    if rate > 0 else msg.log_time_ns)
            self._send(self.publishers[msg.topic], bytes(msg.rawdata))
            count += 1
        self.published += count
        return count

    def play(self) -> int:
        """Wait for subscribers, play (looping if asked), linger so reliable data drains."""
        self.wait_for_subscribers()
        total = 0
        while not self._stopped():
            total += self.play_once()
            if not self.cfg.loop:
                break
        from rclpy.duration import Duration

        # A reader that matched us late gets the history by retransmission: wait for its acks.
        end = time.monotonic() + self.cfg.linger_s
        for pub in self.publishers.values():
            while not self._stopped():  # in short waits, so a stop is seen promptly
                left = min(end - time.monotonic(), 0.1)
                if left <= 0 or pub.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))):
                    break
        if self.node.context.ok():
            self.node.get_logger().info(f"played {total} messages from {self.cfg.bag}")
        return total


def play(bag: str | Path, stop: threading.Event | None = None, node_name: str = "bag_player",
         **options: Any) -> int:
    """Play a bag from Python in its own rclpy context (blocking); returns the messages published.

    `options` are `BagPlayerConfig` fields (rate, loop, clock, topics, wait_for_subscribers_s, ...).
    Setting `stop` ends the playback early. Tests use it beside their own context.
    """
    import rclpy
    from rclpy.context import Context

    cfg = BagPlayerConfig(bag=str(bag), **options)
    use_large_data_transport()
    ctx = Context()
    rclpy.init(context=ctx)
    node = None
    try:
        node = rclpy.create_node(node_name, context=ctx)
        player = BagPlayer(node, cfg)
        if stop is not None:
            threading.Thread(target=lambda: (stop.wait(), player.stop()), daemon=True).start()
        return player.play()
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=ctx)


def player_main(args: list[str] | None = None) -> int:
    """`bag_player` console script: `bag_player --ros-args -p bag:=PATH [-p rate:=2.0 -p clock:=true]`.

    Sets FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA first unless the environment chose otherwise; exits
    with 2 and one stderr line on a bad parameter or bag, 0 after the bag (or on SIGINT/SIGTERM).
    """

    def make() -> Any:
        from rclpy.node import Node

        from .params import check_no_unknown, declare_config

        node = Node("bag_player")
        check_no_unknown(node, BagPlayerConfig)
        make.player = BagPlayer(node, declare_config(node, BagPlayerConfig))  # type: ignore[attr-defined]
        return node

    def run(node: Any, stop: threading.Event) -> None:
        make.player._stop = stop  # type: ignore[attr-defined]  (SIGINT/SIGTERM end the playback)
        make.player.play()  # type: ignore[attr-defined]

    from .run import run_node  # run imports this module

    return run_node(make, args, run=run)


# ------------------------------------------------------------------------------------------------
# Recorder
# ------------------------------------------------------------------------------------------------


class _Recorder:
    """Raw subscriptions written straight into a rosbags Writer (callbacks run one at a time)."""

    def __init__(self, node: Any, writer: Any, wanted: list[str] | None, on_message: Callable[[], None]) -> None:
        self.node = node
        self.writer = writer
        self.wanted = wanted  # fully qualified names, or None for every topic
        self.on_message = on_message
        self.subs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def _qos(self, topic: str) -> Any:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        infos = self.node.get_publishers_info_by_topic(topic)
        reliable = bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
        latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        # Match what the publishers offer, as `ros2 bag record` does: best effort takes any publisher.
        return QoSProfile(depth=100,
                          reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)

    def discover(self) -> list[str]:
        """Subscribe to wanted topics that have appeared since the last call; return the missing ones."""
        found = dict(self.node.get_topic_names_and_types())
        missing = []
        for topic in (self.wanted if self.wanted is not None else sorted(found)):
            if topic in self.subs or topic in _IGNORED_TOPICS:
                continue
            types = found.get(topic)
            if not types:
                missing.append(topic)
                continue
            msgtype = types[0]
            try:
                cls = message_class(msgtype)
                with self.lock:
                    self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=rb.typestore())
            except Exception as err:  # unknown to rclpy or rosbags: record the rest
                self.node.get_logger().warning(f"{topic}: {msgtype} cannot be recorded ({err})")
                self.subs[topic] = None
                continue
            self.counts[topic] = 0
            self.subs[topic] = self.node.create_subscription(
                cls, topic, lambda raw, t=topic: self._on_raw(t, raw), self._qos(topic), raw=True)
        return missing

    def _on_raw(self, topic: str, raw: bytes) -> None:
        now_ns = self.node.get_clock().now().nanoseconds
        with self.lock:
            self.writer.write(self.conns[topic], now_ns, raw)
            self.counts[topic] += 1
        self.on_message()


def _pick_sequence_topics(node: Any, names: rb.BagTopics, fallback: bool) -> list[str] | None:
    """Graph topics for a sequence recording: the four stereo topics (None until all exist, or
    their default names once `fallback`) plus pose, queries and ground truth where present."""
    graph = [t for t, _ in node.get_topic_names_and_types()]
    got = {}
    for key in names.__dataclass_fields__:
        try:
            got[key] = rb.match_topic(graph, getattr(names, key), "graph")
        except InputError:
            got[key] = None
    required = ("left_image", "right_image", "left_info", "right_info")
    if not all(got[k] for k in required):
        if not fallback:
            return None
        for k in required:
            got[k] = got[k] or node.resolve_topic_name(getattr(names, k))
    return [t for t in got.values() if t]


def _discover(rec: _Recorder, executor: Any, stop: threading.Event, timeout_s: float,
              sequence_names: rb.BagTopics | None) -> None:
    """Subscribe to the wanted topics as they appear, for up to `timeout_s` (all found: at once).

    With `sequence_names`, the wanted set is picked from the graph first (`_pick_sequence_topics`).
    """
    deadline = time.monotonic() + timeout_s
    missing: list[str] = []
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.05)
        expired = time.monotonic() >= deadline
        if sequence_names is not None and rec.wanted is None:
            rec.wanted = _pick_sequence_topics(rec.node, sequence_names, fallback=expired)
            if rec.wanted is None:
                continue
        missing = rec.discover()
        if expired or (not missing and any(sub is not None for sub in rec.subs.values())):
            break
    if missing:
        log.warning("not yet published: %s (subscribed when they appear)", ", ".join(missing))


def record(
    topics: Iterable[str] | None,
    out: str | Path,
    duration_s: float = 10.0,
    to: Literal["bag", "sequence"] = "bag",
    storage: rb.Storage = "mcap",
    *,
    discovery_timeout_s: float = 5.0,
    idle_timeout_s: float | None = None,
    max_messages: int | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    sequence_topics: rb.BagTopics = SEQUENCE_TOPICS,
    queries: Queries | None = None,
    auto_grid: int = 64,
    keep_bag: bool = False,
    node_name: str = "surg_invnerf_recorder",
) -> Path:
    """Record ROS 2 topics into a bag, or into a sequence folder that `surg-invnerf track` reads.

    Runs its own rclpy context, so it works beside other nodes in the same process (tests).

    Args:
        topics: topic names (relative names resolve against `/`). None: with `to="bag"` every
            topic on the graph (but /rosout and /parameter_events); with `to="sequence"` the stereo
            topics of `sequence_topics` plus pose, queries and ground truth where present
            (namespaced topics match by suffix).
        out: the bag folder (`to="bag"`) or sequence folder (`to="sequence"`); must not exist as a bag.
        duration_s: seconds to record once subscribed (wall time); <= 0 records until stopped.
        to: "bag" writes `out` with rosbags; "sequence" records to `.<out>.bag` beside it, then
            converts with `io.rosbag.bag_to_sequence` (queries: `queries`, else the first
            PolygonStamped on the queries topic, else ground truth, else an `auto_grid` grid) and
            deletes the bag unless `keep_bag`.
        storage: "mcap" or "sqlite3".
        discovery_timeout_s: how long to wait for the requested topics before starting anyway
            (topics that appear later are still subscribed).
        idle_timeout_s: stop once no message arrived for this long after the first one.
        max_messages: stop after this many messages.
        stop: an event that ends the recording when set (Ctrl-C also ends it cleanly).
        on_ready: called once the subscriptions exist, e.g. to start a publisher in a test.

    Returns:
        The bag or sequence folder written.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rosbags.rosbag2 import Writer

    if to not in ("bag", "sequence"):
        raise InputError(f"to: expected bag|sequence, got {to!r}", "bad_argument")
    out = Path(out)
    bag_path = out if to == "bag" else out.with_name(f".{out.name}.bag")
    if to == "sequence" and bag_path.exists():
        shutil.rmtree(bag_path)
    if bag_path.exists():
        raise InputError(f"{bag_path}: bag already exists", "exists")
    plugin = rb.storage_plugin(storage)
    use_large_data_transport()
    ctx = Context()
    rclpy.init(context=ctx)
    stop = stop or threading.Event()
    state = {"n": 0, "last": 0.0}

    def on_message() -> None:
        state["n"] += 1
        state["last"] = time.monotonic()

    bag_path.parent.mkdir(parents=True, exist_ok=True)
    writer = Writer(bag_path, version=9, storage_plugin=plugin)
    writer.open()
    node = executor = None
    try:
        node = rclpy.create_node(node_name, context=ctx)
        if topics is not None:
            wanted = [node.resolve_topic_name(t) if not t.startswith("/") else t for t in topics]
        else:
            wanted = None
        rec = _Recorder(node, writer, wanted, on_message)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        try:
            _discover(rec, executor, stop, discovery_timeout_s,
                      sequence_topics if to == "sequence" and topics is None else None)
            if on_ready is not None:
                on_ready()
            t_end = time.monotonic() + duration_s if duration_s > 0 else float("inf")
            next_discovery = time.monotonic() + 0.5
            while not stop.is_set() and ctx.ok():
                now = time.monotonic()
                if now >= t_end or (max_messages is not None and state["n"] >= max_messages):
                    break
                if idle_timeout_s is not None and state["n"] and now - state["last"] > idle_timeout_s:
                    break
                if now >= next_discovery:  # topics that appear late are still recorded
                    rec.discover()
                    next_discovery = now + 0.5
                executor.spin_once(timeout_sec=0.02)
        except (KeyboardInterrupt, ExternalShutdownException):
            log.info("recording stopped (Ctrl-C)")
        log.info("recorded %s", ", ".join(f"{t}: {n}" for t, n in sorted(rec.counts.items())))
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        writer.close()
        if ctx.ok():
            rclpy.shutdown(context=ctx)
    if to == "bag":
        return bag_path
    try:
        seq = rb.bag_to_sequence(bag_path, out, topics=sequence_topics, queries=queries, auto_grid=auto_grid)
    finally:
        if not keep_bag:
            shutil.rmtree(bag_path, ignore_errors=True)
    return seq
