"""Optional ROS pieces (ROS_STACK.md, recommendation (b)): use them when importable, else ours.

| piece | present (ROS install)                    | absent (PyPI wheels)                       |
|-------|------------------------------------------|--------------------------------------------|
| TF    | tf2_ros broadcasters                     | `tf.py` broadcasters (needs tf2_msgs); else TF off |
| sync  | message_filters synchronisers            | `sync.StereoSync`                          |
| image | cv_bridge                                | `convert.image_to_rgb_u8`                  |

The node calls `choose_backends()` once and logs the result. Availability is a `find_spec` check,
injectable so the fallbacks are unit-tested on a machine that has none of these packages.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, InputError
from . import convert

log = logging.getLogger(__name__)


def have(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Backends:
    """The implementation chosen for each optional piece."""

    tf: str      # "tf2_ros" | "builtin" | "none"
    sync: str    # "message_filters" | "builtin"
    image: str   # "cv_bridge" | "builtin"

    def describe(self) -> str:
        return f"tf={self.tf} sync={self.sync} image={self.image}"


def choose_backends(sync_pref: str = "auto", available: Callable[[str], bool] = have) -> Backends:
    """Pick a backend per piece. `sync_pref` is `sync.backend` (auto | builtin | message_filters)."""
    if available("tf2_ros"):
        tf = "tf2_ros"
    elif available("tf2_msgs"):
        tf = "builtin"
    else:
        tf = "none"
    if sync_pref == "builtin":
        sync = "builtin"
    elif sync_pref == "message_filters" and not available("message_filters"):
        raise ConfigError("sync.backend: message_filters requested but not installed")
    else:
        sync = "message_filters" if available("message_filters") else "builtin"
    image = "cv_bridge" if available("cv_bridge") else "builtin"
    return Backends(tf=tf, sync=sync, image=image)


def make_tf_broadcasters(node: Any, backend: str) -> tuple[Any, Any]:
    """(dynamic, static) broadcasters with tf2_ros's `sendTransform`; (None, None) when TF is off."""
    if backend == "tf2_ros":
        tf2_ros = importlib.import_module("tf2_ros")
        return tf2_ros.TransformBroadcaster(node), tf2_ros.StaticTransformBroadcaster(node)
    if backend == "builtin":
        from .tf import StaticTransformBroadcaster, TransformBroadcaster

        return TransformBroadcaster(node), StaticTransformBroadcaster(node)
    return None, None


def image_decoder(backend: str) -> Callable[[Any], np.ndarray]:
    """A function Image → (H, W, 3) uint8 RGB raising `InputError` with a drop reason."""
    if backend != "cv_bridge":
        return convert.image_to_rgb_u8
    bridge = importlib.import_module("cv_bridge").CvBridge()

    def decode(msg: Any) -> np.ndarray:
        convert.image_to_numpy(msg)  # same checks and reason keys as the built-in path
        try:
            return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception as err:  # CvBridgeError and cv2.error carry no common base we can name
            raise InputError(f"Image: cv_bridge failed ({err})", "bad_image") from None

    return decode


def make_message_filters_sync(node: Any, topics: dict[str, tuple[type, str]], qos: Any, approximate: bool,
                              queue_size: int, slop_s: float, callback: Callable[..., None],
                              callback_group: Any, qos_overriding_options: Any = None) -> tuple[list[Any], Any]:
    """message_filters Subscribers for left, right, info_left, info_right → one synchroniser.

    `callback(left, right, info_left, info_right)` gets each complete set.
    """
    mf = importlib.import_module("message_filters")
    kwargs: dict[str, Any] = {"callback_group": callback_group}
    if qos_overriding_options is not None:
        kwargs["qos_overriding_options"] = qos_overriding_options
    # one profile object per subscription: QoS overrides modify the object they are given
    subs = [mf.Subscriber(node, msg_type, topic, qos_profile=copy.copy(qos), **kwargs)
            for msg_type, topic in topics.values()]
    if approximate:
        sync = mf.ApproximateTimeSynchronizer(subs, queue_size, slop_s)
    else:
        sync = mf.TimeSynchronizer(subs, queue_size)
    sync.registerCallback(callback)
    return subs, sync


def remove_queries_service() -> Any | None:
    """The `surg_invnerf_msgs/srv/RemoveQueries` type (the interfaces/ wheel, or a colcon build), None without it."""
    try:
        from surg_invnerf_msgs.srv import RemoveQueries  # pyright: ignore[reportMissingImports]
    except ImportError:
        return None
    return RemoveQueries
