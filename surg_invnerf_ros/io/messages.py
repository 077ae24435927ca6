"""The message codec: ROS messages → stamps, images, calibration, poses and point structs.

One set of rules for the node (rclpy messages) and the bag reader (rosbags' deserialised
objects): both carry the ROS field names, so the functions here read fields by name and import
no ROS package. Every refusal is an `InputError` whose message starts with `where` (the topic or
message type) and the field at fault, and whose `reason` is the drop-counter key the node reports
in /diagnostics.

Calibration is for rectified stereo only (DESIGN §5): the intrinsics come from the left projection
matrix P (K when P is all zero), the baseline from the right one (P_r[0, 3] = Tx = −fx·B).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry import T_from_xyz_qxyzw
from ..structs import StereoCalib

NS_PER_S = 1_000_000_000

#: Image encoding → (numpy dtype, channels), REP-118 names.
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

#: sensor_msgs/PointField datatype constants → little-endian numpy dtypes.
POINTFIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("i1"), 2: np.dtype("u1"), 3: np.dtype("<i2"), 4: np.dtype("<u2"),
    5: np.dtype("<i4"), 6: np.dtype("<u4"), 7: np.dtype("<f4"), 8: np.dtype("<f8"),
}
DTYPE_POINTFIELDS: dict[np.dtype, int] = {v: k for k, v in POINTFIELD_DTYPES.items()}

#: A quaternion is normalised when its squared norm is within this of 1, refused otherwise (tf2's
#: BufferCore QUATERNION_NORMALIZATION_TOLERANCE).
QUAT_NORM2_TOL = 1e-2


# ------------------------------------------------------------------------------------------
# Stamps
# ------------------------------------------------------------------------------------------


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (sec, nanosec) → integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_sec_nanosec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds → (sec, nanosec) for a builtin_interfaces/Time."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def image_to_numpy(msg: Any, where: str = "Image") -> np.ndarray:
    """Image → (H, W, C) array in the encoding's dtype and channel order; honours `step` padding.

    Raises:
        InputError: unsupported encoding (`wrong_encoding`), zero size (`empty_image`), step shorter
            than a row (`bad_step`), data shorter than height×step (`data_too_short`).
    """
    enc = str(msg.encoding)
    if enc not in ENCODINGS:
        raise InputError(f"{where}: encoding: unsupported {enc!r} (expected one of {', '.join(ENCODINGS)})",
                         "wrong_encoding")
    dtype, ch = ENCODINGS[enc]
    H, W, step = int(msg.height), int(msg.width), int(msg.step)
    if H <= 0 or W <= 0:
        raise InputError(f"{where}: empty image ({W}x{H})", "empty_image")
    row_bytes = W * ch * dtype.itemsize
    if step < row_bytes:
        raise InputError(f"{where}: step: {step} bytes is shorter than a {W}x{ch} {enc} row ({row_bytes})", "bad_step")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < H * step:
        raise InputError(f"{where}: data: {buf.size} bytes, expected height×step = {H}×{step} = {H * step}",
                         "data_too_short")
    rows = buf[: H * step].reshape(H, step)[:, :row_bytes]
    out_dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    arr = np.ascontiguousarray(rows).view(out_dtype).reshape(H, W, ch)
    return arr.astype(dtype, copy=False) if out_dtype != dtype else arr


def image_to_rgb_u8(msg: Any, where: str = "Image") -> np.ndarray:
    """Image → (H, W, 3) uint8 RGB, the tracker's input. 16-bit keeps the top byte; 32FC1 maps [0, 1]."""
    arr = image_to_numpy(msg, where)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == np.float32:
        arr = (np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if str(msg.encoding).startswith("bgr"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


# ------------------------------------------------------------------------------------------
# Camera info
# ------------------------------------------------------------------------------------------


def _k_and_p(info: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    P = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    if not np.isfinite(K).all() or not np.isfinite(P).all():
        raise InputError(f"{where}: k/p: non-finite values", "camera_info_not_finite")
    return K, P


def camera_info_to_calib(info_l: Any, info_r: Any, fps: float = 30.0, where: str = "CameraInfo") -> StereoCalib:
    """Rectified stereo calibration from a left/right CameraInfo pair.

    Raises:
        InputError: non-finite K or P (`camera_info_not_finite`), the left K all zero or no
            positive focal length in the left P (`camera_info_k_zero`), left/right sizes differ or are zero
            (`camera_info_size_mismatch`), no positive baseline (`camera_info_no_baseline`).
    """
    K_l, P_l = _k_and_p(info_l, f"{where} (left)")
    _, P_r = _k_and_p(info_r, f"{where} (right)")
    size_l, size_r = (int(info_l.width), int(info_l.height)), (int(info_r.width), int(info_r.height))
    if size_l != size_r or 0 in size_l:
        raise InputError(f"{where}: left {size_l[0]}x{size_l[1]} and right {size_r[0]}x{size_r[1]} "
                         "sizes differ or are empty", "camera_info_size_mismatch")
    if not K_l.any():  # sensor_msgs/CameraInfo: an uncalibrated camera leaves K (and P) zero
        raise InputError(f"{where} (left): k: all zero (uncalibrated camera)", "camera_info_k_zero")
    K = P_l[:, :3].copy() if P_l[:, :3].any() else K_l.copy()
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise InputError(f"{where} (left): p: expected positive focal lengths, got fx {K[0, 0]}, fy {K[1, 1]}",
                         "camera_info_k_zero")
    fx_r = P_r[0, 0] if P_r[0, 0] > 0 else K[0, 0]
    baseline_m = -float(P_r[0, 3]) / float(fx_r)
    if not (baseline_m > 0 and math.isfinite(baseline_m)):
        raise InputError(f"{where} (right): p: Tx = {P_r[0, 3]} gives baseline {baseline_m} m "
                         "(expected Tx = -fx*B < 0)", "camera_info_no_baseline")
    return StereoCalib(K=K, baseline_m=baseline_m, image_size=size_l, fps=float(fps))


def rectified_projection(calib: StereoCalib, right: bool) -> np.ndarray:
    """The (3, 4) rectified projection matrix P = [K | t] of a camera_info, Tx = −fx·B on the right."""
    P = np.zeros((3, 4))
    P[:, :3] = calib.K
    if right:
        P[0, 3] = -calib.fx * calib.baseline_m
    return P


# ------------------------------------------------------------------------------------------
# Poses
# ------------------------------------------------------------------------------------------


def pose_to_T(msg: Any, where: str = "pose") -> tuple[int, np.ndarray]:
    """A PoseStamped or TransformStamped → (stamp_ns, T (4, 4), metres: header frame ← pose frame).

    Told apart by `.pose` versus `.transform`. The quaternion is normalised when its squared norm
    is within `QUAT_NORM2_TOL` of 1 and refused otherwise.

    Raises:
        InputError: reason `bad_type` (neither layout), `nonfinite_pose` (NaN/Inf in position or
            orientation) or `bad_quaternion` (zero or far from unit norm).
    """
    try:
        ns = stamp_ns(msg.header.stamp)
        if hasattr(msg, "pose"):
            p, q = msg.pose.position, msg.pose.orientation
        elif hasattr(msg, "transform"):
            p, q = msg.transform.translation, msg.transform.rotation
        else:
            raise AttributeError("pose")
        xyz_m = np.array([p.x, p.y, p.z], dtype=np.float64)
        q_xyzw = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        raise InputError(f"{where}: expected geometry_msgs/PoseStamped or TransformStamped, got {type(msg).__name__}",
                         reason="bad_type") from None
    if not (np.isfinite(xyz_m).all() and np.isfinite(q_xyzw).all()):
        raise InputError(f"{where}: non-finite pose (xyz {xyz_m.tolist()}, q_xyzw {q_xyzw.tolist()})",
                         reason="nonfinite_pose")
    norm2 = float(q_xyzw @ q_xyzw)
    if abs(norm2 - 1.0) > QUAT_NORM2_TOL:
        raise InputError(f"{where}: orientation: expected a unit quaternion, got norm {math.sqrt(norm2):.6g}",
                         reason="bad_quaternion")
    return ns, T_from_xyz_qxyzw(xyz_m, q_xyzw / math.sqrt(norm2))


# ------------------------------------------------------------------------------------------
# PointCloud2
# ------------------------------------------------------------------------------------------


def cloud_to_struct(msg: Any, where: str = "PointCloud2") -> np.ndarray:
    """PointCloud2 → (height·width,) structured array with the message's fields (padding honoured).

    Raises:
        InputError (`bad_cloud`): big-endian data, a field of unknown datatype or count ≠ 1, data
            shorter than the points it declares.
    """
    if msg.is_bigendian:
        raise InputError(f"{where}: is_bigendian: big-endian clouds are not supported", "bad_cloud")
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if int(f.datatype) not in POINTFIELD_DTYPES or int(f.count) != 1:
            raise InputError(f"{where}: fields: {f.name!r} has datatype {f.datatype} count {f.count}", "bad_cloud")
        names.append(str(f.name))
        formats.append(POINTFIELD_DTYPES[int(f.datatype)])
        offsets.append(int(f.offset))
    height, width, point_step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    n = height * width
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if height > 1 and row_step != width * point_step:
        if row_step < width * point_step or buf.size < height * row_step:
            raise InputError(f"{where}: row_step: {row_step} bytes for {height} rows of {width}×{point_step}, "
                             f"data {buf.size} bytes", "bad_cloud")
        rows = buf[: height * row_step].reshape(height, row_step)[:, : width * point_step]
        buf = np.ascontiguousarray(rows).reshape(-1)
    if buf.size < n * point_step:
        raise InputError(f"{where}: data: {buf.size} bytes, expected {n}×{point_step}", "bad_cloud")
    return np.frombuffer(buf[: n * point_step].tobytes(), dtype=dtype, count=n)
