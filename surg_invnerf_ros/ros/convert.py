"""rclpy messages ↔ numpy arrays and structs (DESIGN §5): pure functions, no DDS, no node.

Decoding (stamps, images, camera_info, clouds) is the message codec of `io/messages.py`, the same
rules and drop reasons as the bag reader; this module adds what only the node needs: building
rclpy messages (headers, images, camera_info, PointCloud2, markers) and reading query inputs.
Every failure is an `InputError` whose `reason` is the drop-counter key the node reports in
/diagnostics. PointCloud2 goes through numpy structured arrays (what `sensor_msgs_py` would do,
which the PyPI wheels lack).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, PointStamped, PolygonStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..errors import InputError
from ..geometry import project_px, transform_points
from ..io.messages import DTYPE_POINTFIELDS, rectified_projection, stamp_sec_nanosec

# The decoders are the codec's (io/messages.py), shared with the bag reader; the node reaches them here.
from ..io.messages import ENCODINGS as ENCODINGS
from ..io.messages import camera_info_to_calib as camera_info_to_calib
from ..io.messages import cloud_to_struct as cloud_to_struct
from ..io.messages import image_to_numpy as image_to_numpy
from ..io.messages import image_to_rgb_u8 as image_to_rgb_u8
from ..io.messages import stamp_ns as stamp_ns
from ..structs import TRACKED_POINTS_DTYPE, StereoCalib, tracked_points

CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4")])


# ------------------------------------------------------------------------------------------
# Stamps and headers
# ------------------------------------------------------------------------------------------


def to_stamp(ns: int) -> Time:
    """Integer nanoseconds → builtin_interfaces/Time."""
    sec, nanosec = stamp_sec_nanosec(ns)
    return Time(sec=sec, nanosec=nanosec)


def header(stamp: int | Time, frame_id: str) -> Header:
    """A Header carrying the source stamp (never now()) and the optical frame."""
    return Header(stamp=to_stamp(stamp) if isinstance(stamp, int) else stamp, frame_id=frame_id)


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def numpy_to_image(arr: np.ndarray, encoding: str, stamp: int | Time = 0, frame_id: str = "") -> Image:
    """(H, W[, C]) array → Image with a packed step (no padding)."""
    if encoding not in ENCODINGS:
        raise InputError(f"numpy_to_image: unsupported encoding {encoding!r}", "wrong_encoding")
    dtype, ch = ENCODINGS[encoding]
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != ch or a.dtype != dtype:
        raise InputError(f"numpy_to_image: {encoding} expects (H, W, {ch}) {dtype}, got {a.shape} {a.dtype}",
                         "wrong_encoding")
    a = np.ascontiguousarray(a, dtype=dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype)
    H, W = a.shape[:2]
    return Image(header=header(stamp, frame_id), height=H, width=W, encoding=encoding, is_bigendian=0,
                 step=W * ch * dtype.itemsize, data=a.tobytes())


# ------------------------------------------------------------------------------------------
# Camera info
# ------------------------------------------------------------------------------------------


def calib_to_camera_info(calib: StereoCalib, stamp: int | Time = 0, frame_left: str = "left_optical",
                         frame_right: str = "right_optical") -> tuple[CameraInfo, CameraInfo]:
    """StereoCalib → rectified (left, right) CameraInfo, with Tx = −fx·B in the right P."""
    infos = []
    for frame, right in ((frame_left, False), (frame_right, True)):
        P = rectified_projection(calib, right)
        infos.append(CameraInfo(
            header=header(stamp, frame), width=calib.width, height=calib.height, distortion_model="plumb_bob",
            d=[0.0] * 5, k=calib.K.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(),
            p=P.reshape(-1).tolist()))
    return infos[0], infos[1]


def check_stereo_images(left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray, calib: StereoCalib) -> None:
    """Both images equal in size and matching camera_info.

    Raises:
        InputError: `stereo_size_mismatch` or `camera_info_size_mismatch`.
    """
    if left_rgb_u8.shape != right_rgb_u8.shape:
        raise InputError(f"Image: left {left_rgb_u8.shape[1]}x{left_rgb_u8.shape[0]} and right "
                         f"{right_rgb_u8.shape[1]}x{right_rgb_u8.shape[0]} sizes differ", "stereo_size_mismatch")
    H, W = left_rgb_u8.shape[:2]
    if (W, H) != tuple(calib.image_size):
        raise InputError(f"Image: {W}x{H} but camera_info says {calib.width}x{calib.height}",
                         "camera_info_size_mismatch")


# ------------------------------------------------------------------------------------------
# PointCloud2
# ------------------------------------------------------------------------------------------


def pack_cloud(points: np.ndarray, hdr: Header) -> PointCloud2:
    """Structured array (P,) → unorganised PointCloud2 (height 1, little-endian, dense if finite)."""
    pts = np.ascontiguousarray(points)
    names: tuple[str, ...] = pts.dtype.names or ()
    layout: dict[str, Any] = {str(k): v for k, v in (pts.dtype.fields or {}).items()}
    fields = []
    for name in names:
        dt, offset = layout[name][:2]
        if dt not in DTYPE_POINTFIELDS:
            raise InputError(f"pack_cloud: field {name!r} has unsupported dtype {dt}", "bad_cloud")
        fields.append(PointField(name=name, offset=offset, datatype=DTYPE_POINTFIELDS[dt], count=1))
    dense = all(np.isfinite(pts[n]).all() for n in ("x", "y", "z") if n in names)
    return PointCloud2(header=hdr, height=1, width=len(pts), fields=fields, is_bigendian=False,
                       point_step=pts.dtype.itemsize, row_step=pts.dtype.itemsize * len(pts),
                       data=pts.tobytes(), is_dense=bool(dense))


def tracked_points_msg(ids: np.ndarray, uv_px: np.ndarray, xyz_cam_m: np.ndarray, visible: np.ndarray,
                       confidence: np.ndarray, refined: np.ndarray, hdr: Header) -> PointCloud2:
    """One point per query in the ~/tracked_points schema (x y z m, u v px, id, visible, confidence, refined)."""
    return pack_cloud(tracked_points(ids, uv_px, xyz_cam_m, visible, confidence, refined), hdr)


def tracked_points_from_msg(msg: PointCloud2) -> np.ndarray:
    """~/tracked_points (or ~/ground_truth) → (N,) TRACKED_POINTS_DTYPE; missing fields are refused."""
    pts = cloud_to_struct(msg, "PointCloud2")
    schema: tuple[str, ...] = TRACKED_POINTS_DTYPE.names or ()
    missing = [n for n in schema if n not in (pts.dtype.names or ())]
    if missing:
        raise InputError(f"PointCloud2: fields: missing {', '.join(missing)} of the tracked_points schema",
                         "bad_cloud")
    out = np.zeros(len(pts), dtype=TRACKED_POINTS_DTYPE)
    for n in schema:
        out[n] = pts[n]
    return out


def pack_rgb_float(rgb_u8: np.ndarray) -> np.ndarray:
    """(P, 3) uint8 → (P,) float32 holding 0x00RRGGBB bit patterns (the PCL / RViz 'rgb' field)."""
    rgb = rgb_u8.astype(np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)


def xyzrgb_cloud_msg(xyz_cam_m: np.ndarray, rgb_u8: np.ndarray, hdr: Header) -> PointCloud2:
    """(P, 3) points (metres) and (P, 3) colours → PointCloud2 with x y z rgb (RViz colours it)."""
    pts = np.zeros(len(xyz_cam_m), dtype=CLOUD_DTYPE)
    pts["x"], pts["y"], pts["z"] = xyz_cam_m[:, 0], xyz_cam_m[:, 1], xyz_cam_m[:, 2]
    pts["rgb"] = pack_rgb_float(rgb_u8)
    return pack_cloud(pts, hdr)


def depth_to_points(depth_m: np.ndarray, rgb_u8: np.ndarray, K: np.ndarray,
                    stride_px: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Valid pixels of an (H, W) depth map (NaN invalid) on a stride grid → ((P, 3) xyz m, (P, 3) rgb)."""
    d = depth_m[::stride_px, ::stride_px]
    c = rgb_u8[::stride_px, ::stride_px]
    v, u = np.nonzero(np.isfinite(d) & (d > 0))
    z = d[v, u].astype(np.float64)
    u_px = u * stride_px
    v_px = v * stride_px
    y = (v_px - K[1, 2]) / K[1, 1]
    x = (u_px - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return np.stack([x * z, y * z, z], axis=-1), c[v, u]


# ------------------------------------------------------------------------------------------
# Markers
# ------------------------------------------------------------------------------------------


def _colour(refined: bool, visible: bool) -> ColorRGBA:
    if not visible:
        return ColorRGBA(r=0.9, g=0.2, b=0.2, a=0.6)
    return ColorRGBA(r=0.2, g=0.9, b=0.3, a=1.0) if refined else ColorRGBA(r=1.0, g=0.85, b=0.1, a=1.0)


def markers_msg(ids: np.ndarray, xyz_cam_m: np.ndarray, visible: np.ndarray, refined: np.ndarray,
                trails_m: dict[int, np.ndarray], hdr: Header, diameter_m: float = 0.002,
                ns: str = "tracks") -> MarkerArray:
    """Spheres (one SPHERE_LIST), id labels and short trails (LINE_STRIP per id) for RViz.

    The array starts with DELETEALL so that removed queries disappear. Points with non-finite xyz
    are skipped. `trails_m[id]` is an (L, 3) array of past positions, oldest first.
    """
    markers = [Marker(header=hdr, ns=ns, id=0, action=Marker.DELETEALL)]
    finite = np.isfinite(xyz_cam_m).all(axis=1)
    sel = np.nonzero(finite)[0]
    spheres = Marker(header=hdr, ns=f"{ns}/points", id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
    spheres.scale.x = spheres.scale.y = spheres.scale.z = float(diameter_m)
    spheres.pose.orientation.w = 1.0
    spheres.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in xyz_cam_m[sel]]
    spheres.colors = [_colour(bool(refined[i]), bool(visible[i])) for i in sel]
    markers.append(spheres)
    for i in sel:
        qid = int(ids[i])
        p = xyz_cam_m[i]
        label = Marker(header=hdr, ns=f"{ns}/labels", id=qid, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                       text=str(qid))
        label.pose.position = Point(x=float(p[0]), y=float(p[1]) - 1.5 * diameter_m, z=float(p[2]))
        label.pose.orientation.w = 1.0
        label.scale.z = max(2.0 * diameter_m, 1e-4)
        label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        markers.append(label)
        trail = trails_m.get(qid)
        if trail is not None:
            trail = trail[np.isfinite(trail).all(axis=1)]
            if len(trail) >= 2:
                line = Marker(header=hdr, ns=f"{ns}/trails", id=qid, type=Marker.LINE_STRIP, action=Marker.ADD)
                line.scale.x = max(0.25 * diameter_m, 1e-5)
                line.pose.orientation.w = 1.0
                line.color = _colour(bool(refined[i]), True)
                line.points = [Point(x=float(q[0]), y=float(q[1]), z=float(q[2])) for q in trail]
                markers.append(line)
    return MarkerArray(markers=markers)


# ------------------------------------------------------------------------------------------
# Queries
# ------------------------------------------------------------------------------------------


def polygon_to_uv_px(msg: PolygonStamped, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """PolygonStamped (x = u, y = v, left-image pixels) → (N, 2) float64 query pixels.

    Raises:
        InputError: no points (`empty_queries`), non-finite (`bad_queries`), outside the image
            (`queries_outside_image`).
    """
    uv = np.array([[p.x, p.y] for p in msg.polygon.points], dtype=np.float64).reshape(-1, 2)
    if len(uv) == 0:
        raise InputError("PolygonStamped.polygon.points: empty", "empty_queries")
    if not np.isfinite(uv).all():
        raise InputError("PolygonStamped.polygon.points: non-finite pixel", "bad_queries")
    if image_size is not None:
        W, H = image_size
        out = (uv[:, 0] < 0) | (uv[:, 1] < 0) | (uv[:, 0] > W - 1) | (uv[:, 1] > H - 1)
        if out.any():
            u, v = uv[np.argmax(out)]
            raise InputError(f"PolygonStamped.polygon.points: ({u}, {v}) lies outside the {W}x{H} image",
                             "queries_outside_image")
    return uv


def point_to_uv_px(msg: PointStamped, calib: StereoCalib, T_cam_src: np.ndarray | None = None) -> np.ndarray:
    """A clicked 3D point → (1, 2) pixel in the left image (its projection).

    Args:
        msg: the point, in `msg.header.frame_id`.
        calib: the current left intrinsics and image size.
        T_cam_src: 4×4 from the point's frame to the left optical frame (None: it is that frame).

    Raises:
        InputError: non-finite (`bad_clicked_point`), behind the camera or outside the image
            (`clicked_point_outside_image`).
    """
    xyz = np.array([[msg.point.x, msg.point.y, msg.point.z]], dtype=np.float64)
    if not np.isfinite(xyz).all():
        raise InputError("PointStamped.point: non-finite", "bad_clicked_point")
    if T_cam_src is not None:
        xyz = transform_points(T_cam_src, xyz)
    uv = project_px(xyz, calib.K)
    W, H = calib.image_size
    if not np.isfinite(uv).all() or not (0 <= uv[0, 0] <= W - 1 and 0 <= uv[0, 1] <= H - 1):
        raise InputError(f"PointStamped.point: ({xyz[0, 0]:.4f}, {xyz[0, 1]:.4f}, {xyz[0, 2]:.4f}) m projects "
                         f"outside the {W}x{H} left image", "clicked_point_outside_image")
    return uv
