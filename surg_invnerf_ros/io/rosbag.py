"""ROS 2 bags through `rosbags`, without rclpy (DESIGN §2.3): read, write, and convert.

A bag is a stream of `BagMessage`s: topic, type name, log time and the CDR bytes. `write_bag` and
`read_bag` move those bytes unchanged, so a bag recorded from DDS replays byte for byte.
`bag_to_sequence` turns a recorded stereo stream (left/right `Image` + `CameraInfo`, optional ECM
pose, queries and ground truth) into a sequence folder (DESIGN §2.1) that `surg-invnerf track`
reads; `sequence_to_bag` goes the other way, so a sequence folder can be played into the node.

Messages are rosbags' Kilted typestore objects (the field names are the ROS ones); they are decoded
by the message codec (`io/messages.py`), the node's own rules. Only rectified input is supported:
the calibration comes from the left and right projection matrices P (right Tx = −fx·B).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from itertools import tee
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np

from ..errors import InputError
from ..geometry import grid_points_px, interpolate_poses, xyz_qxyzw_from_T
from ..structs import TRACKED_POINTS_DTYPE, Queries, Sequence, StereoCalib, Tracks, tracked_points
from .messages import (
    DTYPE_POINTFIELDS,
    camera_info_to_calib,
    cloud_to_struct,
    image_to_rgb_u8,
    pose_to_T,
    rectified_projection,
    stamp_ns,
    stamp_sec_nanosec,
)
from .sequence import write_sequence
from .trackfile import POINT_RECORD_FIELDS, tracks_from_records, write_tracks

log = logging.getLogger(__name__)

Storage = Literal["mcap", "sqlite3"]
STORAGES: tuple[str, ...] = ("mcap", "sqlite3")

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
TRANSFORM_STAMPED = "geometry_msgs/msg/TransformStamped"
POLYGON_STAMPED = "geometry_msgs/msg/PolygonStamped"


_typestore_cache: list[Any] = []


def typestore() -> Any:
    """rosbags' ROS 2 Kilted typestore (the wheels' distribution; type hashes match upstream)."""
    if not _typestore_cache:
        from rosbags.typesys import Stores, get_typestore

        _typestore_cache.append(get_typestore(Stores.ROS2_KILTED))
    return _typestore_cache[0]


@dataclass(frozen=True)
class BagMessage:
    """One serialized message: `rawdata` is CDR as it travels on DDS; `log_time_ns` is bag time."""

    topic: str
    msgtype: str
    log_time_ns: int
    rawdata: bytes | memoryview


@dataclass(frozen=True)
class BagTopics:
    """Topic names `bag_to_sequence` and `sequence_to_bag` use (DESIGN §5 names).

    A bag topic matches a name when it is equal to it or ends with `/` + name, so namespaced
    recordings (`/ecm1/stereo/left/image_rect`) match; two matches are refused as ambiguous.
    """

    left_image: str = "stereo/left/image_rect"
    right_image: str = "stereo/right/image_rect"
    left_info: str = "stereo/left/camera_info"
    right_info: str = "stereo/right/camera_info"
    pose: str = "ecm/measured_cp"
    queries: str = "queries"
    ground_truth: str = "ground_truth"


# ------------------------------------------------------------------------------------------------
# Raw bags
# ------------------------------------------------------------------------------------------------


def storage_plugin(storage: str) -> Any:
    """rosbags StoragePlugin for "mcap" or "sqlite3"."""
    from rosbags.rosbag2 import StoragePlugin

    if storage not in STORAGES:
        raise InputError(f"storage: expected one of {'|'.join(STORAGES)}, got {storage!r}", "bad_storage")
    return StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3


def write_bag(path: str | Path, messages: Iterable[BagMessage], storage: Storage = "mcap") -> Path:
    """Write messages (in the order given) to a new bag folder; CDR bytes are stored unchanged.

    On an error the half-written folder is removed. Message types must be known to the Kilted
    typestore, which supplies the definitions and type hashes stored in the bag's metadata.
    """
    from rosbags.rosbag2 import Writer

    out = Path(path)
    if out.exists():
        raise InputError(f"{out}: bag already exists", "exists")
    plugin = storage_plugin(storage)
    out.parent.mkdir(parents=True, exist_ok=True)
    ts = typestore()
    try:
        with Writer(out, version=9, storage_plugin=plugin) as writer:
            conns: dict[tuple[str, str], Any] = {}
            for msg in messages:
                key = (msg.topic, msg.msgtype)
                if key not in conns:
                    if msg.msgtype not in ts.types:
                        raise InputError(f"{msg.topic}: message type {msg.msgtype} is unknown to rosbags", "bad_type")
                    conns[key] = writer.add_connection(msg.topic, msg.msgtype, typestore=ts)
                writer.write(conns[key], int(msg.log_time_ns), bytes(msg.rawdata))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _open_reader(path: str | Path) -> Any:
    from rosbags.rosbag2 import Reader

    p = Path(path)
    if not (p / "metadata.yaml").is_file():
        raise InputError(f"{p}: not a ROS 2 bag folder (no metadata.yaml)", "missing_file")
    try:
        reader = Reader(p)
        reader.open()
    except Exception as err:  # rosbags raises its own ReaderError and storage errors
        raise InputError(f"{p}: cannot open bag ({err})", "bad_bag") from None
    return reader


def bag_topics(path: str | Path) -> dict[str, str]:
    """{topic: message type} of a bag."""
    reader = _open_reader(path)
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def read_bag(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Yield a bag's messages in log-time order, optionally only those on `topics` (exact names)."""
    reader = _open_reader(path)
    try:
        wanted = None if topics is None else set(topics)
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, log_ns, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, int(log_ns), raw)
    finally:
        reader.close()


def deserialize(msg: BagMessage) -> Any:
    """The rosbags message object of a `BagMessage`."""
    try:
        return typestore().deserialize_cdr(msg.rawdata, msg.msgtype)
    except Exception as err:
        raise InputError(f"{msg.topic}: cannot decode {msg.msgtype} ({err})", "bad_message") from None


def serialize(obj: Any) -> bytes:
    """CDR bytes of a rosbags message object."""
    return bytes(typestore().serialize_cdr(obj, obj.__msgtype__))


# ------------------------------------------------------------------------------------------------
# Message building (rosbags objects, serialized to BagMessages)
# ------------------------------------------------------------------------------------------------


def _header(stamp: int, frame_id: str) -> Any:
    t = typestore().types
    sec, nanosec = stamp_sec_nanosec(stamp)
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_msg(rgb_u8: np.ndarray, stamp: int, frame_id: str) -> Any:
    """rgb8 Image (rosbags object)."""
    h, w = rgb_u8.shape[:2]
    return typestore().types[IMAGE](
        header=_header(stamp, frame_id), height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
        data=np.ascontiguousarray(rgb_u8, dtype=np.uint8).reshape(-1))


def camera_info_msg(calib: StereoCalib, stamp: int, frame_id: str, right: bool) -> Any:
    """Rectified CameraInfo (rosbags object): P = [K | t] with Tx = −fx·B on the right camera."""
    K = np.asarray(calib.K, dtype=np.float64)
    P = rectified_projection(calib, right)
    t = typestore().types
    return t[CAMERA_INFO](
        header=_header(stamp, frame_id), height=calib.height, width=calib.width, distortion_model="plumb_bob",
        d=np.zeros(5), k=K.reshape(-1).copy(), r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0,
        roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def pose_msg(T: np.ndarray, stamp: int, frame_id: str) -> Any:
    """PoseStamped (rosbags object) of a 4x4 transform."""
    t = typestore().types
    xyz, q = xyz_qxyzw_from_T(np.asarray(T, dtype=np.float64))
    return t[POSE_STAMPED](
        header=_header(stamp, frame_id),
        pose=t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
            orientation=t["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))))


def polygon_msg(uv_px: np.ndarray, stamp: int, frame_id: str) -> Any:
    """PolygonStamped of pixel queries (x = u, y = v, z = 0), as the node's `~/queries` takes them."""
    t = typestore().types
    pts = [t["geometry_msgs/msg/Point32"](x=float(u), y=float(v), z=0.0) for u, v in np.asarray(uv_px)]
    return t[POLYGON_STAMPED](header=_header(stamp, frame_id), polygon=t["geometry_msgs/msg/Polygon"](points=pts))


def tracked_points_msg(points: np.ndarray, stamp: int, frame_id: str) -> Any:
    """PointCloud2 (rosbags object) of a `structs.tracked_points` array."""
    t = typestore().types
    PF = t["sensor_msgs/msg/PointField"]
    layout: dict[str, Any] = {str(k): v for k, v in (TRACKED_POINTS_DTYPE.fields or {}).items()}
    fields = [PF(name=name, offset=layout[name][1], datatype=DTYPE_POINTFIELDS[layout[name][0]], count=1)
              for name in TRACKED_POINTS_DTYPE.names or ()]
    data = np.ascontiguousarray(points, dtype=TRACKED_POINTS_DTYPE).view(np.uint8).reshape(-1)
    return t[POINT_CLOUD2](
        header=_header(stamp, frame_id), height=1, width=len(points), fields=fields, is_bigendian=False,
        point_step=TRACKED_POINTS_DTYPE.itemsize, row_step=TRACKED_POINTS_DTYPE.itemsize * len(points), data=data,
        is_dense=True)


def _bag_message(topic: str, obj: Any, log_time_ns: int) -> BagMessage:
    return BagMessage(topic, obj.__msgtype__, int(log_time_ns), serialize(obj))


def sequence_messages(
    seq: Sequence,
    topics: BagTopics = BagTopics(),
    gt: Tracks | None = None,
    frame_ids: tuple[str, str] = ("endoscope_left_optical_frame", "endoscope_right_optical_frame"),
    world_frame_id: str = "world",
    namespace: str = "",
) -> Iterator[BagMessage]:
    """The messages a live stereo endoscope would publish for `seq`, frame by frame, log time = stamp.

    Per frame: the pose (if `seq.T_world_cam`), the queries of that frame as one PolygonStamped (if
    any), both CameraInfos, both images, and the ground truth cloud (if `gt`), all with the frame's
    stamp. Topic names are `namespace` + the `topics` names (give "/" for absolute names).
    """
    ns = namespace if namespace.endswith("/") or not namespace else namespace + "/"
    stamps = np.asarray(seq.stamps_ns, dtype=np.int64)
    q_frames = seq.queries.frame_idx if len(seq.queries) else np.zeros(0, dtype=np.int64)
    for i in range(seq.num_frames):
        s = int(stamps[i])
        if seq.T_world_cam is not None:
            yield _bag_message(ns + topics.pose, pose_msg(seq.T_world_cam[i], s, world_frame_id), s)
        sel = q_frames == i
        if sel.any():
            yield _bag_message(ns + topics.queries, polygon_msg(seq.queries.uv_px[sel], s, frame_ids[0]), s)
        yield _bag_message(ns + topics.left_info, camera_info_msg(seq.calib, s, frame_ids[0], right=False), s)
        yield _bag_message(ns + topics.right_info, camera_info_msg(seq.calib, s, frame_ids[1], right=True), s)
        yield _bag_message(ns + topics.left_image, image_msg(seq.left_rgb_u8[i], s, frame_ids[0]), s)
        yield _bag_message(ns + topics.right_image, image_msg(seq.right_rgb_u8[i], s, frame_ids[1]), s)
        if gt is not None:
            pts = tracked_points(gt.ids, gt.uv[i], gt.xyz[i], gt.visible[i])
            yield _bag_message(ns + topics.ground_truth, tracked_points_msg(pts, s, frame_ids[0]), s)


def sequence_to_bag(
    seq: Sequence, out: str | Path, storage: Storage = "mcap", topics: BagTopics = BagTopics(),
    gt: Tracks | None = None, namespace: str = "/",
) -> Path:
    """Write `seq` as a bag a live stereo endoscope would have produced (see `sequence_messages`)."""
    return write_bag(out, sequence_messages(seq, topics, gt=gt, namespace=namespace), storage=storage)


# ------------------------------------------------------------------------------------------------
# Bag → sequence folder
# ------------------------------------------------------------------------------------------------


def match_topic(available: Iterable[str], name: str, where: str = "bag") -> str | None:
    """The one topic in `available` equal to `name` or ending with `/name`; None if there is none."""
    key = name.strip("/")
    hits = [t for t in available if t.strip("/") == key or t.endswith("/" + key)]
    if len(hits) > 1:
        exact = [t for t in hits if t.strip("/") == key]
        if len(exact) == 1:
            return exact[0]
        raise InputError(f"{where}: topic {name!r} is ambiguous: {', '.join(sorted(hits))}", "ambiguous_topic")
    return hits[0] if hits else None


def grid_queries(width: int, height: int, n: int, frame_idx: int = 0, margin_px: float = 8.0) -> Queries:
    """`n` queries of `frame_idx` on the grid of `geometry.grid_points_px` (the node's grid queries)."""
    uv = grid_points_px(n, width, height, margin_px)
    tuv = np.concatenate([np.full((len(uv), 1), float(frame_idx)), uv], axis=1)
    return Queries(ids=np.arange(len(uv), dtype=np.int64), query_tuv=tuv)


def _pair_stamps(left: np.ndarray, right: np.ndarray, slop_ns: int) -> list[tuple[int, int]]:
    """(left, right) stamp pairs: the nearest right stamp within `slop_ns` (0: exact), each used once."""
    lft, rgt = np.unique(left), np.unique(right)
    if lft.size == 0 or rgt.size == 0:
        return []
    idx = np.searchsorted(rgt, lft)
    below, above = rgt[np.clip(idx - 1, 0, rgt.size - 1)], rgt[np.clip(idx, 0, rgt.size - 1)]
    best = np.where(np.abs(below - lft) <= np.abs(above - lft), below, above)
    ok = np.abs(best - lft) <= slop_ns
    _, first = np.unique(best[ok], return_index=True)  # one right image serves one left image
    keep = np.sort(first)
    return [(int(a), int(b)) for a, b in zip(lft[ok][keep], best[ok][keep])]


def bag_to_sequence(
    bag_path: str | Path,
    out_dir: str | Path,
    topics: BagTopics = BagTopics(),
    queries: Queries | None = None,
    auto_grid: int = 64,
    slop_s: float = 0.0,
    T_ecm_cam: np.ndarray | None = None,
    time_offset_s: float = 0.0,
    max_pose_gap_s: float = 0.02,
    progress: Callable[[int], object] | None = None,
) -> Path:
    """Convert a recorded stereo stream into a sequence folder (DESIGN §2.1); returns the folder.

    Frames are the left/right image pairs with equal header stamps (or, with `slop_s` > 0, the
    nearest right stamp within it), in stamp order. Images are streamed from the bag in a second
    pass, so memory stays at a few frames however long the bag is.

    - Calibration: the first left and right CameraInfo (rectified: K from the left P, baseline
      from the right P's Tx = −fx·B); fps from the median frame interval.
    - Queries, first that applies: the `queries` argument; the first PolygonStamped on
      `topics.queries` whose stamp lies within the frames (at the nearest frame; ids 0..N−1 in point
      order); the ground-truth cloud at the first frame that has one (its visible points, its ids);
      else an `auto_grid`-point grid on frame 0.
    - Kinematics (optional): PoseStamped or TransformStamped on `topics.pose`, giving T_world_ecm;
      T_world_cam = T_world_ecm · T_ecm_cam, interpolated (SLERP) at image stamp + `time_offset_s`.
      Frames up to `max_pose_gap_s` beyond the first or last pose take that pose; if any frame is
      further out, kinematics.csv is left out with a warning.
    - Ground truth (optional): clouds in the tracked_points schema on `topics.ground_truth` with the
      frames' stamps become `gt/tracks.npz` (frames without one are NaN and not visible).

    Raises:
        InputError: naming the bag and topic, for a missing topic or a bad message.
    """
    bag_path = Path(bag_path)
    where = str(bag_path)
    available = bag_topics(bag_path)
    names = {k: match_topic(available, getattr(topics, k), where) for k in topics.__dataclass_fields__}
    for key in ("left_image", "right_image", "left_info", "right_info"):
        if names[key] is None:
            raise InputError(f"{where}: topic {getattr(topics, key)!r} not found (has: {', '.join(sorted(available))})",
                             "missing_topic")
    for key, types in (("left_image", (IMAGE,)), ("right_image", (IMAGE,)), ("left_info", (CAMERA_INFO,)),
                       ("right_info", (CAMERA_INFO,)), ("pose", (POSE_STAMPED, TRANSFORM_STAMPED)),
                       ("queries", (POLYGON_STAMPED,)), ("ground_truth", (POINT_CLOUD2,))):
        name = names[key]
        if name is not None and available[name] not in types:
            if key in ("pose", "queries", "ground_truth"):
                log.warning("%s: %s has type %s; ignored", where, name, available[name])
                names[key] = None
            else:
                raise InputError(f"{where}: {name}: expected {types[0]}, got {available[name]}", "bad_type")

    # Pass 1: everything but the pixels.
    stamps: dict[str, list[int]] = {"left_image": [], "right_image": []}
    infos: dict[str, Any] = {}
    pose_stamps, poses = [], []
    polygons: list[tuple[int, np.ndarray]] = []
    gt_clouds: dict[int, np.ndarray] = {}
    by_topic: dict[str, str] = {}
    for key, name in names.items():
        if name is not None:
            by_topic[name] = key
    for msg in read_bag(bag_path, topics=by_topic):
        key = by_topic[msg.topic]
        obj = deserialize(msg)
        if key in stamps:
            stamps[key].append(stamp_ns(obj.header.stamp))
        elif key in ("left_info", "right_info"):
            infos.setdefault(key, obj)
        elif key == "pose":
            try:
                pose_ns, T = pose_to_T(obj, f"{where}: {msg.topic}")
            except InputError as err:
                log.warning("%s; skipped", err)
                continue
            poses.append(T)
            pose_stamps.append(pose_ns)
        elif key == "queries":
            uv = np.array([[p.x, p.y] for p in obj.polygon.points], dtype=np.float64).reshape(-1, 2)
            polygons.append((stamp_ns(obj.header.stamp), uv))
        elif key == "ground_truth":
            gt_clouds[stamp_ns(obj.header.stamp)] = cloud_to_struct(obj, f"{where}: {msg.topic}").copy()
    if "left_info" not in infos or "right_info" not in infos:
        raise InputError(f"{where}: no CameraInfo messages on {names['left_info']} and {names['right_info']}",
                         "missing_topic")
    pairs = _pair_stamps(np.array(stamps["left_image"], dtype=np.int64),
                         np.array(stamps["right_image"], dtype=np.int64), int(round(slop_s * 1e9)))
    if not pairs:
        raise InputError(f"{where}: no left/right image pair with matching stamps", "no_frames")
    frame_ns = np.array([p[0] for p in pairs], dtype=np.int64)
    T = len(frame_ns)
    fps = float(1e9 / np.median(np.diff(frame_ns))) if T > 1 else 30.0
    calib = camera_info_to_calib(infos["left_info"], infos["right_info"], fps=fps, where=f"{where}: camera_info")

    queries = queries if queries is not None else _queries_from_stream(polygons, gt_clouds, frame_ns, calib, auto_grid)
    T_world_cam = _kinematics(pose_stamps, poses, frame_ns, T_ecm_cam, time_offset_s, max_pose_gap_s, where)

    # Pass 2: the pixels, streamed as pairs in stamp order.
    left_of = {lft: i for i, (lft, _) in enumerate(pairs)}
    right_of = {rgt: i for i, (_, rgt) in enumerate(pairs)}
    W, H = calib.image_size

    def image_pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pending: dict[int, dict[str, np.ndarray]] = {}
        nxt = 0
        left_topic, right_topic = names["left_image"], names["right_image"]
        assert left_topic is not None and right_topic is not None  # a missing image topic was refused above
        img_topics = {left_topic: "l", right_topic: "r"}
        for msg in read_bag(bag_path, topics=img_topics):
            obj = deserialize(msg)
            s = stamp_ns(obj.header.stamp)
            side = img_topics[msg.topic]
            idx = (left_of if side == "l" else right_of).get(s)
            if idx is None or idx < nxt:
                continue
            rgb = image_to_rgb_u8(obj, f"{where}: {msg.topic}")
            if rgb.shape[:2] != (H, W):
                raise InputError(f"{where}: {msg.topic}: image {rgb.shape[1]}x{rgb.shape[0]} differs from camera_info "
                                 f"{W}x{H}", "camera_info_size_mismatch")
            pending.setdefault(idx, {})[side] = rgb
            while nxt in pending and len(pending[nxt]) == 2:
                pair = pending.pop(nxt)
                yield pair["l"], pair["r"]
                nxt += 1
        if nxt != T:
            raise InputError(f"{where}: images changed between reads ({nxt} of {T} frames)", "no_frames")

    left_it, right_it = tee(image_pairs())

    def finish(tmp: Path) -> None:  # before the rename: the ground truth comes with the frames or not at all
        gt = _gt_tracks(gt_clouds, frame_ns) if gt_clouds else None
        if gt is not None:
            write_tracks(tmp / "gt" / "tracks.npz", gt)

    out = write_sequence(out_dir, (p[0] for p in left_it), (p[1] for p in right_it), calib, queries,
                         stamps_ns=frame_ns, T_world_cam=T_world_cam, progress=progress, finish=finish)
    log.info("%s: wrote %d frames, %d queries to %s", where, T, len(queries), out)
    return out


def _queries_from_stream(
    polygons: list[tuple[int, np.ndarray]], gt_clouds: dict[int, np.ndarray], frame_ns: np.ndarray,
    calib: StereoCalib, auto_grid: int,
) -> Queries:
    lo, hi = int(frame_ns[0]), int(frame_ns[-1])
    for s, uv in polygons:
        if lo <= s <= hi and len(uv):
            t = int(np.argmin(np.abs(frame_ns - s)))
            tuv = np.concatenate([np.full((len(uv), 1), float(t)), uv], axis=1)
            return Queries(ids=np.arange(len(uv), dtype=np.int64), query_tuv=tuv)
    for t, s in enumerate(frame_ns):
        pts = gt_clouds.get(int(s))
        if pts is not None and "visible" in (pts.dtype.names or ()):
            vis = pts[pts["visible"] > 0]
            if len(vis):
                tuv = np.stack([np.full(len(vis), float(t)), vis["u"].astype(np.float64),
                                vis["v"].astype(np.float64)], 1)
                return Queries(ids=vis["id"].astype(np.int64), query_tuv=tuv)
    return grid_queries(calib.width, calib.height, auto_grid)


def _kinematics(
    pose_stamps: list[int], poses: list[np.ndarray], frame_ns: np.ndarray, T_ecm_cam: np.ndarray | None,
    time_offset_s: float, max_gap_s: float, where: str,
) -> np.ndarray | None:
    if not poses:
        return None
    st = np.asarray(pose_stamps, dtype=np.int64)
    order = np.argsort(st, kind="stable")
    st, keep = np.unique(st[order], return_index=True)
    T_world_ecm = np.stack(poses)[order][keep]
    query = frame_ns + int(round(time_offset_s * 1e9))
    gap = int(round(max_gap_s * 1e9))
    if query.min() < st[0] - gap or query.max() > st[-1] + gap:
        log.warning("%s: poses cover %.3f..%.3f s but frames need %.3f..%.3f s; kinematics left out",
                    where, st[0] * 1e-9, st[-1] * 1e-9, query.min() * 1e-9, query.max() * 1e-9)
        return None
    T_world_cam = interpolate_poses(st, T_world_ecm, np.clip(query, st[0], st[-1]))
    if T_ecm_cam is not None:
        T_world_cam = T_world_cam @ np.asarray(T_ecm_cam, dtype=np.float64)
    return T_world_cam


def _gt_tracks(gt_clouds: dict[int, np.ndarray], frame_ns: np.ndarray) -> Tracks | None:

    clouds = [gt_clouds.get(int(s)) for s in frame_ns]
    present = [c for c in clouds if c is not None]
    if not present or any(not set(POINT_RECORD_FIELDS) <= set(c.dtype.names or ()) for c in present):
        return None
    return tracks_from_records(clouds, meta={"method": "ground_truth", "source": "bag"})
