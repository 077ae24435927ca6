"""TF output (DESIGN §5): `track_<id>` frames (and world → camera from kinematics) on /tf, the stereo
frame on /tf_static.

The transform builders are pure functions. `TransformBroadcaster` and `StaticTransformBroadcaster`
are the built-in fallbacks for `tf2_ros` (chosen in `compat.py`), with tf2_ros's semantics:
/tf is reliable, depth 100; /tf_static is TRANSIENT_LOCAL, depth 1, and republishes its whole set
keyed by child_frame_id, so a late subscriber gets every static frame in one message.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Quaternion, Transform, TransformStamped, Vector3
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..geometry import xyz_qxyzw_from_T
from ..structs import StereoCalib
from .convert import to_stamp

TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                    history=HistoryPolicy.KEEP_LAST)
TF_STATIC_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)


def track_frame(track_id: int) -> str:
    """TF frame name of a query (STYLE §3)."""
    return f"track_{int(track_id)}"


def transform_msg(T_parent_child: np.ndarray, parent: str, child: str, stamp: int | Time) -> TransformStamped:
    """4×4 T_parent_child → TransformStamped (translation metres, rotation quaternion xyzw)."""
    xyz, q = xyz_qxyzw_from_T(np.asarray(T_parent_child, dtype=np.float64))
    msg = TransformStamped()
    msg.header.stamp = to_stamp(stamp) if isinstance(stamp, int) else stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    msg.transform = Transform(translation=Vector3(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
                              rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
    return msg


def track_transforms(ids: np.ndarray, xyz_cam_m: np.ndarray, visible: np.ndarray, frame_id: str,
                     stamp: int | Time) -> list[TransformStamped]:
    """One identity-rotation `track_<id>` frame per visible query with finite xyz, under `frame_id`."""
    keep = np.nonzero(np.asarray(visible, bool) & np.isfinite(xyz_cam_m).all(axis=1))[0]
    stamp_msg = to_stamp(stamp) if isinstance(stamp, int) else stamp
    out = []
    for i in keep:
        msg = TransformStamped()
        msg.header.stamp = stamp_msg
        msg.header.frame_id = frame_id
        msg.child_frame_id = track_frame(ids[i])
        p = xyz_cam_m[i]
        msg.transform.translation = Vector3(x=float(p[0]), y=float(p[1]), z=float(p[2]))
        msg.transform.rotation.w = 1.0
        out.append(msg)
    return out


def T_left_right(calib: StereoCalib) -> np.ndarray:
    """Pose of the rectified right optical frame in the left one: a shift of +baseline along x.

    X_right = X_left − [B, 0, 0] (structs.StereoCalib), so the right origin is (B, 0, 0) in the left frame.
    """
    T = np.eye(4)
    T[0, 3] = calib.baseline_m
    return T


def stereo_transform(calib: StereoCalib, left_frame: str, right_frame: str, stamp: int | Time) -> TransformStamped:
    """The left→right optical transform for /tf_static."""
    return transform_msg(T_left_right(calib), left_frame, right_frame, stamp)


def world_transform(T_world_cam: np.ndarray, world_frame: str, camera_frame: str,
                    stamp: int | Time) -> TransformStamped:
    """world → left optical from kinematics (T_world_cam = T_world_ecm · T_ecm_cam) for /tf."""
    return transform_msg(T_world_cam, world_frame, camera_frame, stamp)


class TransformBroadcaster:
    """Built-in /tf broadcaster (tf2_ros.TransformBroadcaster's interface)."""

    def __init__(self, node: Node, qos: QoSProfile = TF_QOS) -> None:
        from tf2_msgs.msg import TFMessage  # the interfaces/ wheel or a ROS install

        self._msg_type = TFMessage
        self._pub = node.create_publisher(TFMessage, "/tf", qos)

    def sendTransform(self, transforms: TransformStamped | list[TransformStamped]) -> None:  # noqa: N802 (tf2_ros name)
        items = transforms if isinstance(transforms, list) else [transforms]
        if items:
            self._pub.publish(self._msg_type(transforms=items))


class StaticTransformBroadcaster:
    """Built-in /tf_static broadcaster: accumulates by child_frame_id, republishes the full set."""

    def __init__(self, node: Node, qos: QoSProfile = TF_STATIC_QOS) -> None:
        from tf2_msgs.msg import TFMessage

        self._msg_type = TFMessage
        self._pub = node.create_publisher(TFMessage, "/tf_static", qos)
        self._net: dict[str, TransformStamped] = {}

    def sendTransform(self, transforms: TransformStamped | list[TransformStamped]) -> None:  # noqa: N802
        for t in transforms if isinstance(transforms, list) else [transforms]:
            self._net[t.child_frame_id] = t
        self._pub.publish(self._msg_type(transforms=list(self._net.values())))

    @property
    def frames(self) -> dict[str, TransformStamped]:
        """The accumulated static set, keyed by child frame."""
        return dict(self._net)
