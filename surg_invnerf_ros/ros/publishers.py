"""The node's data outputs (DESIGN §5): ~/tracked_points, ~/markers, ~/cloud, ~/overlay.

`TrackPublishers` owns the four publishers and the little state they need (short per-id trails,
the cloud's rate limit). Conversions live in `convert.py`; drawing is vectorised numpy (dots and
rings stamped with one fancy-index write), with id labels only for a handful of points.
Every message gets the header the node passes in: the source image stamp and the camera_info frame.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from ..config import PublishConfig
from ..online import FrameTracks
from . import convert

OUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LABEL_MAX_POINTS = 32  # id text is drawn one cv2.putText at a time, so only for a few points

# RGB colours of the overlay
REFINED_RGB = (60, 230, 80)
FRONT_RGB = (255, 215, 30)
HIDDEN_RGB = (230, 50, 50)


def _disk_offsets(radius_px: int, ring: bool) -> np.ndarray:
    r = np.arange(-radius_px, radius_px + 1)
    dv, du = np.meshgrid(r, r, indexing="ij")
    d2 = du**2 + dv**2
    keep = (d2 <= radius_px**2) & ((d2 >= (radius_px - 1) ** 2) if ring else True)
    return np.stack([du[keep], dv[keep]], axis=-1)  # (K, 2) (du, dv)


def draw_tracks(rgb_u8: np.ndarray, uv_px: np.ndarray, visible: np.ndarray, refined: np.ndarray,
                ids: np.ndarray | None = None, radius_px: int = 3) -> np.ndarray:
    """A copy of (H, W, 3) `rgb_u8` with visible points as filled dots and hidden ones as rings.

    Colours: green refined, yellow front end, red not visible. Vectorised over points.
    """
    out = rgb_u8.copy()
    H, W = out.shape[:2]
    finite = np.all(np.isfinite(uv_px), axis=1)
    centre = np.rint(np.where(finite[:, None], uv_px, -1e6)).astype(np.int64)  # (N, 2)
    colours = np.where(refined[:, None], np.array(REFINED_RGB), np.array(FRONT_RGB))
    colours = np.where(visible[:, None], colours, np.array(HIDDEN_RGB)).astype(np.uint8)  # (N, 3)
    for mask, offsets in ((visible & finite, _disk_offsets(radius_px, False)),
                          (~visible & finite, _disk_offsets(radius_px, True))):
        if not mask.any():
            continue
        pix = centre[mask][:, None, :] + offsets[None]  # (M, K, 2)
        col = np.broadcast_to(colours[mask][:, None, :], pix.shape[:2] + (3,))
        inside = (pix[..., 0] >= 0) & (pix[..., 0] < W) & (pix[..., 1] >= 0) & (pix[..., 1] < H)
        out[pix[..., 1][inside], pix[..., 0][inside]] = col[inside]
    if ids is not None and len(ids) <= LABEL_MAX_POINTS:
        for i in np.nonzero(finite)[0]:
            org = (int(centre[i, 0]) + radius_px + 1, int(centre[i, 1]) - radius_px - 1)
            cv2.putText(out, str(int(ids[i])), org, cv2.FONT_HERSHEY_SIMPLEX, 0.3, tuple(int(c) for c in colours[i]),
                        1, cv2.LINE_AA)
    return out


class TrackPublishers:
    """Publishers for one tracker node plus their per-id trails and cloud rate limit."""

    def __init__(self, node: Node, cfg: PublishConfig, qos: QoSProfile = OUT_QOS) -> None:
        self.cfg = cfg
        self.points = node.create_publisher(PointCloud2, "~/tracked_points", qos)
        self.markers = node.create_publisher(MarkerArray, "~/markers", qos) if cfg.markers else None
        self.cloud = node.create_publisher(PointCloud2, "~/cloud", qos) if cfg.cloud_rate_hz > 0 else None
        self.overlay = node.create_publisher(Image, "~/overlay", qos) if cfg.overlay else None
        self._trails: dict[int, deque[np.ndarray]] = {}
        self._last_cloud_s = -np.inf
        self._last_markers_s = -np.inf
        self._lock = threading.Lock()

    def clear_trails(self) -> None:
        with self._lock:
            self._trails.clear()

    def tracks(self, ft: FrameTracks, hdr: Header, live: bool = True) -> None:
        """~/tracked_points, and for live (newest) frames ~/markers with trails (at most `markers_rate_hz`)."""
        self.points.publish(convert.tracked_points_msg(ft.ids, ft.uv_px, ft.xyz_cam_m, ft.visible, ft.confidence,
                                                       ft.refined, hdr))
        if not live or self.markers is None:
            return
        with self._lock:
            alive = set(int(i) for i in ft.ids)
            for gone in set(self._trails) - alive:
                del self._trails[gone]
            for i, qid in enumerate(ft.ids):
                trail = self._trails.setdefault(int(qid), deque(maxlen=max(self.cfg.trail_frames, 1)))
                if ft.visible[i] and np.isfinite(ft.xyz_cam_m[i]).all():
                    trail.append(ft.xyz_cam_m[i].astype(np.float64))
            now_s = time.monotonic()
            rate = self.cfg.markers_rate_hz
            if rate > 0 and now_s - self._last_markers_s < 1.0 / rate:
                return
            self._last_markers_s = now_s
            trails = {k: np.asarray(v) for k, v in self._trails.items() if len(v) >= 2} if self.cfg.trail_frames else {}
        self.markers.publish(convert.markers_msg(ft.ids, ft.xyz_cam_m, ft.visible, ft.refined, trails, hdr,
                                                 self.cfg.marker_diameter_m))

    def overlay_image(self, left_rgb_u8: np.ndarray, ft: FrameTracks, hdr: Header) -> None:
        """~/overlay: the left image with the tracks drawn (rgb8)."""
        if self.overlay is None:
            return
        drawn = draw_tracks(left_rgb_u8, ft.uv_px, ft.visible, ft.refined, ft.ids)
        self.overlay.publish(convert.numpy_to_image(drawn, "rgb8", hdr.stamp, hdr.frame_id))

    def cloud_due(self) -> bool:
        """True when the next ~/cloud may go out (so the front end computes a dense depth map)."""
        return self.cloud is not None and time.monotonic() - self._last_cloud_s >= 1.0 / self.cfg.cloud_rate_hz

    def claim_cloud(self) -> None:
        """The next ~/cloud is being made elsewhere: `cloud_due` is false for 1/cloud_rate_hz from now."""
        self._last_cloud_s = time.monotonic()

    def cloud_from_depth(self, depth_m: np.ndarray | None, left_rgb_u8: np.ndarray, K: np.ndarray,
                         hdr: Header, force: bool = False) -> bool:
        """~/cloud from a depth map, at most `cloud_rate_hz` unless forced (a model render); True if sent."""
        if self.cloud is None or depth_m is None or not (force or self.cloud_due()):
            return False
        self._last_cloud_s = time.monotonic()
        xyz, rgb = convert.depth_to_points(depth_m, left_rgb_u8, K, self.cfg.cloud_stride_px)
        self.cloud.publish(convert.xyzrgb_cloud_msg(xyz, rgb, hdr))
        return True
