"""Classical tracking baselines, each with SGBM depth for 3D (DESIGN §4).

- "zero": every frame keeps the query position (the floor every method must beat).
- "lk": pyramidal LK chained frame to frame, with re-acquisition (`frontend.lk`).
- "lk_query": pyramidal LK from the query frame's image to every frame.
- "dis": query points chained through multi-gap DIS flows (`frontend.chains.track_dis_streaming`:
  the tracks of `track_dis_chained` on a bank, with the flows computed when needed, not stored).
- "csrt": OpenCV's CSRT correlation-filter tracker (opencv-contrib, default parameters), one per
  query and direction, on a box around the point; the track is the box centre plus the query's
  offset from it. Slow: about 15 ms per point and frame at 256×192 on one core.

All run forwards and backwards from each query's frame. Frames may be an array or a stack decoded
when indexed (a long clip is never held whole): the trackers read grey frames as they go, and the
depth pass computes SGBM for a few frames at a time and keeps only the depth at the tracks.
3D: the SGBM depth of frame t at the track's pixel, unprojected with the rectified left intrinsics.
Where that depth is invalid, the fill rule is, in order (so every method is scored in 3D on the same footing):
1. bilinear depth at uv (invalid if any of the four neighbours is NaN);
2. the nearest valid depth pixel within `stereo.fill_radius_px` of the rounded uv;
3. the same track's depth at the nearest frame between it and the query frame that has one
   (the last known depth, carried outwards from the query frame); failing that (no depth yet
   between the query frame and t), the track's depth at the nearest frame in time that has one;
4. NaN if the track never has depth.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import cv2
import numpy as np

from ..config import FrontendConfig
from ..errors import ConfigError, InputError
from ..geometry import sample_bilinear, unproject_m
from ..structs import Queries, Sequence, StereoCalib, Tracks
from .chains import track_dis_streaming
from .flow import check_rgb_frames, check_same_size
from .lk import track_lk
from .stereo import stereo_depth_sequence_m

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("zero", "lk", "lk_query", "dis", "csrt")
DEPTH_CHUNK_FRAMES = 16  # frames of SGBM depth held at once by the depth pass


def run_baseline(
    name: str,
    seq: Sequence,
    cfg: FrontendConfig,
    progress: Callable[[int], object] | None = None,
    depth_m: np.ndarray | None = None,
) -> Tracks:
    """Track `seq.queries` with a classical method; 3D from SGBM depth.

    Args:
        name: one of `BASELINES`.
        seq: rectified stereo sequence; queries in rectified left pixels.
        cfg: front-end settings (LK, DIS, SGBM, masks).
        progress: called with 1 per frame of depth and per flow pair.
        depth_m: optional precomputed (T, H, W) SGBM depth, to share it between baselines; without it the
            depth is computed DEPTH_CHUNK_FRAMES frames at a time, after tracking, and not kept.

    Returns:
        Tracks in the sequence's rectified left pixels; meta = {"method", "timings_s"}.
    """
    if name not in BASELINES:
        raise ConfigError(f"baseline: method: unknown {name!r} (expected one of {', '.join(BASELINES)})")
    left = check_rgb_frames(f"{seq.name}: left_rgb_u8", seq.left_rgb_u8)
    right = check_rgb_frames(f"{seq.name}: right_rgb_u8", seq.right_rgb_u8)
    check_same_size("left_rgb_u8", left, f"{seq.name}: right_rgb_u8", right)
    T = int(left.shape[0])
    queries = seq.queries
    q_frame = queries.frame_idx
    if len(queries) and (q_frame.min() < 0 or q_frame.max() >= T):
        raise InputError(f"{seq.name}: queries: frame index outside 0..{T - 1}", reason="bad_query")

    if depth_m is not None and depth_m.shape != tuple(left.shape[:3]):
        raise InputError(f"{seq.name}: depth_m: expected shape {tuple(left.shape[:3])}, got {depth_m.shape}",
                         reason="size_mismatch")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    uv, visible = _track_2d(name, left, queries, cfg, progress)
    timings["track"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    if depth_m is None:
        z = depth_along_tracks_m(uv, left, right, seq.calib, cfg, progress)
        timings["depth"] = time.perf_counter() - t1
    else:
        z = depth_at_tracks_m(uv, depth_m, cfg.stereo.fill_radius_px)
    xyz = xyz_from_track_depth_m(uv, z, seq.calib.K, q_frame)
    timings["total"] = time.perf_counter() - t0
    log.debug("baseline %s on %s: %s", name, seq.name, timings)
    return Tracks(ids=np.asarray(queries.ids, np.int64), uv=uv.astype(np.float32), visible=visible.astype(bool),
                  xyz=xyz, meta={"method": name, "timings_s": timings})


def _track_2d(name: str, left: Any, queries: Queries, cfg: FrontendConfig,
              progress: Callable[[int], object] | None) -> tuple[np.ndarray, np.ndarray]:
    T, H, W = left.shape[:3]
    N = len(queries)
    if name == "zero":
        uv = np.broadcast_to(queries.uv_px.astype(np.float32), (T, N, 2)).copy()
        return uv, np.ones((T, N), bool)
    if name == "lk":
        return track_lk(left, queries, cfg.lk, "chained")
    if name == "lk_query":
        return track_lk(left, queries, cfg.lk, "from_query")
    if name == "dis":
        # No specular mask here: it guards the fit's supervision, but a tracked point needs a flow
        # through a highlight more than it needs the highlight excluded (measured on synth "hard":
        # masking cut δ_avg from 0.94 to 0.89).
        # Streaming: the same tracks as `track_dis_chained` on a bank, without holding the bank.
        return track_dis_streaming(left, queries, cfg.flow, progress=progress)
    return track_csrt(left, queries)


# ------------------------------------------------------------------------------------------------
# CSRT
# ------------------------------------------------------------------------------------------------


def _make_csrt():
    """A CSRT tracker from whichever opencv-contrib spelling this build has."""
    for make in (getattr(getattr(cv2, "TrackerCSRT", None), "create", None),
                 getattr(cv2, "TrackerCSRT_create", None),
                 getattr(getattr(cv2, "legacy", None), "TrackerCSRT_create", None)):
        if make is not None:
            return make()
    raise ConfigError("baseline: csrt: this OpenCV build has no TrackerCSRT (install opencv-contrib-python)")


def csrt_box_px(width: int, height: int) -> int:
    """CSRT box side: an eighth of the shorter image side, odd, in [15, 63] pixels."""
    return int(np.clip(min(width, height) // 8, 15, 63)) | 1


def track_csrt(left_rgb_u8: Any, queries: Queries) -> tuple[np.ndarray, np.ndarray]:
    """CSRT per query and direction; the box is clipped into the image, its centre offset kept.

    A failed update keeps the last position and marks the point not visible; CSRT keeps updating
    and may find it again. One tracker per point: there is nothing to vectorise. Frames are read
    once per direction, every point's tracker updated on each.
    """
    T, H, W = (int(n) for n in left_rgb_u8.shape[:3])
    N = len(queries)
    side = min(csrt_box_px(W, H), W, H)
    q_frame = queries.frame_idx
    q_uv = queries.uv_px.astype(np.float64)
    uv = np.broadcast_to(q_uv.astype(np.float32), (T, N, 2)).copy()
    visible = np.zeros((T, N), bool)
    inside = (q_uv[:, 0] >= 0) & (q_uv[:, 0] <= W - 1) & (q_uv[:, 1] >= 0) & (q_uv[:, 1] <= H - 1)
    visible[q_frame, np.arange(N)] = inside
    for direction in (1, -1):
        live: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}  # point → (tracker, box offset, last position)
        for t in (range(T) if direction > 0 else range(T - 1, -1, -1)):
            bgr = cv2.cvtColor(np.asarray(left_rgb_u8[t]), cv2.COLOR_RGB2BGR)
            for n, (tracker, offset, last) in live.items():
                ok, box = tracker.update(bgr)
                if ok:
                    bx, by, bw, bh = box
                    last = np.array([bx + bw / 2, by + bh / 2]) + offset
                    live[n] = (tracker, offset, last)
                uv[t, n] = last
                visible[t, n] = bool(ok) and 0 <= last[0] <= W - 1 and 0 <= last[1] <= H - 1
            for n in np.flatnonzero((q_frame == t) & inside):
                u, v = q_uv[n]
                x0 = int(np.clip(round(u - side / 2), 0, W - side))
                y0 = int(np.clip(round(v - side / 2), 0, H - side))
                tracker = _make_csrt()
                tracker.init(bgr, (x0, y0, side, side))
                live[int(n)] = (tracker, np.array([u - (x0 + side / 2), v - (y0 + side / 2)]), q_uv[n])
    return uv, visible


# ------------------------------------------------------------------------------------------------
# 3D from depth
# ------------------------------------------------------------------------------------------------


def _nearest_valid_depth_m(depth_m: np.ndarray, t: np.ndarray, uv_px: np.ndarray, radius_px: int) -> np.ndarray:
    """Depth of the valid pixel of frame t nearest to uv within a (2r+1)² window; NaN if none. (M,)"""
    T, H, W = depth_m.shape
    off = np.arange(-radius_px, radius_px + 1)
    du, dv = np.meshgrid(off, off)
    du, dv = du.ravel(), dv.ravel()  # (K,)
    base_u = np.rint(uv_px[:, 0]).astype(np.int64)
    base_v = np.rint(uv_px[:, 1]).astype(np.int64)
    uu = base_u[:, None] + du[None]  # (M, K)
    vv = base_v[:, None] + dv[None]
    ok = (uu >= 0) & (uu < W) & (vv >= 0) & (vv < H)
    got = depth_m[t[:, None], np.clip(vv, 0, H - 1), np.clip(uu, 0, W - 1)]  # (M, K)
    ok &= np.isfinite(got)
    dist = np.where(ok, (uu - uv_px[:, :1]) ** 2 + (vv - uv_px[:, 1:]) ** 2, np.inf)
    pick = np.argmin(dist, axis=1)
    rows = np.arange(len(t))
    return np.where(ok[rows, pick], got[rows, pick], np.nan)


def depth_at_tracks_m(uv_px: np.ndarray, depth_m: np.ndarray, fill_radius_px: int) -> np.ndarray:
    """(T, N) depth of tracks (T, N, 2) on depth maps (T, H, W): bilinear, else the nearest valid pixel within
    `fill_radius_px` (rules 1 and 2 of the module docstring); NaN where neither has one."""
    T, N = uv_px.shape[:2]
    z = np.full((T, N), np.nan)
    if not N:
        return z
    for t in range(T):
        z[t] = sample_bilinear(depth_m[t], uv_px[t].astype(np.float64))
    miss = ~np.isfinite(z) & np.isfinite(uv_px).all(-1)
    if fill_radius_px > 0 and miss.any():
        tt, nn = np.nonzero(miss)
        z[tt, nn] = _nearest_valid_depth_m(depth_m, tt, uv_px[tt, nn].astype(np.float64), fill_radius_px)
    return z


def depth_along_tracks_m(uv_px: np.ndarray, left: Any, right: Any, calib: StereoCalib, cfg: FrontendConfig,
                         progress: Callable[[int], object] | None = None) -> np.ndarray:
    """`depth_at_tracks_m` with the SGBM depth computed DEPTH_CHUNK_FRAMES frames at a time and dropped."""
    T, N = uv_px.shape[:2]
    z = np.full((T, N), np.nan)
    for a in range(0, T, DEPTH_CHUNK_FRAMES):
        b = min(T, a + DEPTH_CHUNK_FRAMES)
        maps = stereo_depth_sequence_m(left[a:b], right[a:b], calib, cfg.stereo, progress=progress,
                                       workers=cfg.workers)
        z[a:b] = depth_at_tracks_m(uv_px[a:b], maps, cfg.stereo.fill_radius_px)
    return z


def xyz_from_track_depth_m(uv_px: np.ndarray, z_m: np.ndarray, K: np.ndarray, q_frame: np.ndarray) -> np.ndarray:
    """(T, N, 3) float32 camera points of tracks (T, N, 2) at depths (T, N), the gaps filled along each track
    (rule 3); NaN where the track never has depth."""
    z = _fill_along_track(z_m, q_frame)
    return unproject_m(uv_px.astype(np.float64), z, K).astype(np.float32)


def xyz_from_depth_m(uv_px: np.ndarray, depth_m: np.ndarray, K: np.ndarray, q_frame: np.ndarray,
                     fill_radius_px: int) -> np.ndarray:
    """(T, N, 3) float32 camera points of tracks (T, N, 2) on depth maps (T, H, W), filled as the
    module docstring says; NaN where no depth is known for the track at all."""
    return xyz_from_track_depth_m(uv_px, depth_at_tracks_m(uv_px, depth_m, fill_radius_px), K, q_frame)


def _fill_along_track(z: np.ndarray, q_frame: np.ndarray) -> np.ndarray:
    """Carry each track's last known depth outwards from its query frame (then across it)."""
    T, N = z.shape
    out = z.copy()
    cols = np.arange(N)
    for direction in (1, -1):
        last = out[q_frame, cols].copy()
        frames = range(T) if direction > 0 else range(T - 1, -1, -1)
        for t in frames:
            away = (t > q_frame) if direction > 0 else (t < q_frame)
            known = np.isfinite(out[t])
            fill = away & ~known
            out[t, fill] = last[fill]
            last = np.where(away & known, out[t], last)
    # Tracks with no depth between the query and some frame: take the nearest known one anywhere.
    for n in np.flatnonzero(~np.isfinite(out).all(0) & np.isfinite(out).any(0)):
        known_t = np.flatnonzero(np.isfinite(out[:, n]))
        need = np.flatnonzero(~np.isfinite(out[:, n]))
        nearest = known_t[np.abs(need[:, None] - known_t[None]).argmin(1)]
        out[need, n] = out[nearest, n]
    return out
