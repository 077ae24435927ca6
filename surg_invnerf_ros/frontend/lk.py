"""Pyramidal Lucas-Kanade point tracking with a visibility test (DESIGN §3.1, §4 baselines).

A point is visible in the new frame only if LK converged both ways (OpenCV status), the
forward-backward error |LK_ba(LK_ab(x)) − x| is under `fb_thresh_px`, the zero-mean normalised
cross-correlation of the old and new patches is at least `min_ncc` (frame to frame) or
`min_ncc_query` (against an older template, which deforms and changes lighting), and the point
lies inside the image. An occluder or the image border fails at least one of these: a flat
occluder has no correlation, a textured one no correlation with tissue, and an occluder that moves
with the point (which fools the forward-backward check) still fails the correlation on the frame
where it arrives.

Two modes, both forwards and backwards from each query's frame:
- "chained": frame to frame. A lost point is not visible; its position either holds
  (`lost_points: hold`) or moves with the median motion of the points tracked in that step
  (`follow_median`, the default: under camera motion a held point is soon far off). With
  `reacquire`, it is re-tracked each frame straight from the frame and position where it was last
  seen (a big-displacement LK, `query_max_level` levels, seeded at its guess); it is visible again
  only if that passes the checks, so a point never comes back on the strength of a guess.
- "from_query": every frame straight from the query frame's image, starting LK at the neighbouring
  frame's estimate (for a failed point, moved by the median motion as above); no drift, but the
  template ages.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from ..config import LKConfig
from ..errors import ConfigError, InputError
from ..structs import Queries
from .bulk_motion import median_shift
from .flow import GreyFrames, check_rgb_frames, check_rgb_u8, check_same_size, to_grey

LK_MODES = ("chained", "from_query")


def _inside(uv_px: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    H, W = hw
    return (np.isfinite(uv_px).all(-1) & (uv_px[:, 0] >= 0) & (uv_px[:, 1] >= 0)
            & (uv_px[:, 0] <= W - 1) & (uv_px[:, 1] <= H - 1))


class LKPointTracker:
    """Pyramidal LK between two images with a forward-backward and patch check per point."""

    def __init__(self, cfg: LKConfig) -> None:
        self.cfg = cfg
        self._criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, cfg.max_iters, 0.01)

    def track_pair(
        self, prev_rgb_u8: np.ndarray, cur_rgb_u8: np.ndarray, uv_px: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Move (N, 2) pixels of `prev_rgb_u8` into `cur_rgb_u8`.

        Returns:
            uv (N, 2) float32 new positions (the old position where LK failed) and ok (N,) bool.
        """
        prev = check_rgb_u8("track_pair: prev_rgb_u8", prev_rgb_u8)
        cur = check_rgb_u8("track_pair: cur_rgb_u8", cur_rgb_u8)
        check_same_size("prev_rgb_u8", prev, "track_pair: cur_rgb_u8", cur)
        uv_px = np.asarray(uv_px, dtype=np.float32).reshape(-1, 2)
        return self.track_grey(to_grey(prev), to_grey(cur), uv_px)

    def track_grey(
        self, prev_grey: np.ndarray, cur_grey: np.ndarray, uv_px: np.ndarray,
        init_uv_px: np.ndarray | None = None, max_level: int | None = None, min_ncc: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`track_pair` on grey images, with an optional initial guess (N, 2), pyramid depth and
        NCC threshold (default `cfg.min_ncc`)."""
        uv, ok, _ = self.track_grey_ncc(prev_grey, cur_grey, uv_px, init_uv_px, max_level, min_ncc)
        return uv, ok

    def track_grey_ncc(
        self, prev_grey: np.ndarray, cur_grey: np.ndarray, uv_px: np.ndarray,
        init_uv_px: np.ndarray | None = None, max_level: int | None = None, min_ncc: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`track_grey`, also returning each point's patch NCC (N,) (-1 where LK or the forward-backward
        check already failed), for a caller that grades the passing matches further."""
        n = len(uv_px)
        if n == 0:
            return np.zeros((0, 2), np.float32), np.zeros(0, bool), np.zeros(0)
        level = self.cfg.max_level if max_level is None else max_level
        win = (self.cfg.win_size_px, self.cfg.win_size_px)
        p0 = np.ascontiguousarray(uv_px, dtype=np.float32).reshape(-1, 1, 2)
        flags = 0
        p1 = None
        if init_uv_px is not None:
            p1 = np.ascontiguousarray(init_uv_px, dtype=np.float32).reshape(-1, 1, 2).copy()
            flags = cv2.OPTFLOW_USE_INITIAL_FLOW
        # the cv2 stubs lack nextPts=None (no initial guess)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(  # pyright: ignore[reportCallIssue]
            prev_grey, cur_grey, p0, p1,  # pyright: ignore[reportArgumentType]
            winSize=win, maxLevel=level, criteria=self._criteria, flags=flags)
        p0r, st2, _ = cv2.calcOpticalFlowPyrLK(cur_grey, prev_grey, p1, p0.copy(), winSize=win, maxLevel=level,
                                               criteria=self._criteria, flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
        p1 = p1.reshape(-1, 2)
        fb_px = np.linalg.norm(p0r.reshape(-1, 2) - uv_px, axis=-1)
        ok = ((st1.ravel() == 1) & (st2.ravel() == 1) & (fb_px < self.cfg.fb_thresh_px)
              & _inside(p1, prev_grey.shape[:2]))
        ncc = np.full(n, -1.0)
        ncc[ok] = patch_ncc(prev_grey, uv_px[ok], cur_grey, p1[ok], self.cfg.win_size_px)
        ok &= ncc >= (self.cfg.min_ncc if min_ncc is None else min_ncc)
        return np.where(ok[:, None], p1, uv_px).astype(np.float32), ok, ncc


def patch_ncc(grey_a: np.ndarray, uv_a_px: np.ndarray, grey_b: np.ndarray, uv_b_px: np.ndarray,
              win_px: int) -> np.ndarray:
    """Zero-mean NCC of the (win, win) patches at sub-pixel points, (N,) in [-1, 1]; -1 if either is flat.

    All patches come from one `cv2.remap` per image (maps of shape (N·win, win)), no loop over points.
    """
    n = len(uv_a_px)
    if n == 0:
        return np.zeros(0)
    off = np.arange(win_px, dtype=np.float32) - (win_px - 1) / 2.0
    def patches(grey: np.ndarray, uv: np.ndarray) -> np.ndarray:
        mu = (uv[:, 0, None, None] + off[None, None, :]).astype(np.float32)  # (N, 1, win)
        mv = (uv[:, 1, None, None] + off[None, :, None]).astype(np.float32)  # (N, win, 1)
        mu, mv = np.broadcast_arrays(mu, mv)
        got = cv2.remap(grey.astype(np.float32), np.ascontiguousarray(mu.reshape(n * win_px, win_px)),
                        np.ascontiguousarray(mv.reshape(n * win_px, win_px)), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        p = got.reshape(n, win_px * win_px).astype(np.float64)
        return p - p.mean(axis=1, keepdims=True)
    a, b = patches(grey_a, uv_a_px), patches(grey_b, uv_b_px)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    flat = den < 1e-6 * win_px * win_px
    return np.where(flat, -1.0, (a * b).sum(1) / np.where(flat, 1.0, den))


def _check_queries(queries: Queries, T: int, who: str) -> np.ndarray:
    q = queries.frame_idx
    if len(q) and (q.min() < 0 or q.max() >= T):
        raise InputError(f"{who}: queries: frame index outside 0..{T - 1}", reason="bad_query")
    return q


def track_lk(
    left_rgb_u8: np.ndarray,
    queries: Queries,
    cfg: LKConfig,
    mode: Literal["chained", "from_query"],
) -> tuple[np.ndarray, np.ndarray]:
    """Track every query forwards and backwards from its query frame with pyramidal LK.

    Args:
        left_rgb_u8: (T, H, W, 3) uint8 left images (an array, or a stack decoded when indexed).
        queries: points (frame_idx, u_px, v_px) in those images.
        mode: "chained" (frame to frame) or "from_query" (each frame from the query image).

    Returns:
        uv (T, N, 2) float32 pixels and visible (T, N) bool.
    """
    if mode not in LK_MODES:
        raise ConfigError(f"track_lk: mode: expected one of {'|'.join(LK_MODES)}, got {mode!r}")
    grey = GreyFrames(check_rgb_frames("track_lk: left_rgb_u8", left_rgb_u8))  # converted (or decoded) when read
    T = len(grey)
    q_frame = _check_queries(queries, T, "track_lk")
    N = len(queries)
    uv = np.zeros((T, N, 2), np.float32)
    vis = np.zeros((T, N), bool)
    q_uv = queries.uv_px.astype(np.float32)
    uv[q_frame, np.arange(N)] = q_uv
    vis[q_frame, np.arange(N)] = _inside(q_uv, grey.shape[1:])
    tracker = LKPointTracker(cfg)
    for direction in (1, -1):
        if mode == "chained":
            _chained(tracker, grey, q_frame, uv, vis, direction)
        else:
            _from_query(tracker, grey, q_frame, uv, vis, direction)
    return uv, vis


def _shift_or_zero(old_uv: np.ndarray, new_uv: np.ndarray, group_size: int) -> np.ndarray:
    """`bulk_motion.median_shift` as float32, zero when too few points were tracked."""
    shift = median_shift(old_uv, new_uv, group_size)
    return np.zeros(2, np.float32) if shift is None else shift.astype(np.float32)


def _chained(tracker: LKPointTracker, grey: GreyFrames, q_frame: np.ndarray,
             uv: np.ndarray, vis: np.ndarray, direction: int) -> None:
    """Frame-to-frame LK away from each query frame, filling uv/vis in place."""
    T, N = vis.shape
    cols = np.arange(N)
    follow = tracker.cfg.lost_points == "follow_median"
    last_frame = q_frame.copy()  # frame and position where each point was last visible
    last_uv = uv[q_frame, cols].copy()
    frames = range(0, T - 1) if direction > 0 else range(T - 1, 0, -1)
    for t in frames:
        nxt = t + direction
        started = (q_frame <= t) if direction > 0 else (q_frame >= t)
        alive = started & vis[t]
        lost = started & ~vis[t]
        idx = cols[alive]
        new, ok = tracker.track_grey(grey[t], grey[nxt], uv[t, idx])
        shift = _shift_or_zero(uv[t, idx[ok]], new[ok], int(started.sum())) if follow else np.zeros(2, np.float32)
        # Default for every started point that does not pass below: its guess, not visible.
        uv[nxt, started] = (uv[t, started] + shift) if follow else last_uv[started]
        uv[nxt, idx[ok]] = new[ok]
        vis[nxt, idx[ok]] = True
        if tracker.cfg.reacquire and lost.any():
            # Re-track from where each lost point was last seen, never from its chained guess
            # (the guess only seeds LK); it must pass the same checks against that older template.
            for f in np.unique(last_frame[lost]):
                idx = cols[lost & (last_frame == f)]
                if not _inside(last_uv[idx], grey.shape[1:]).any():
                    continue
                new, ok = tracker.track_grey(grey[f], grey[nxt], last_uv[idx], init_uv_px=uv[nxt, idx],
                                             max_level=tracker.cfg.query_max_level,
                                             min_ncc=tracker.cfg.min_ncc_query)
                uv[nxt, idx[ok]] = new[ok]
                vis[nxt, idx[ok]] = True
        seen = started & vis[nxt]
        last_frame[seen] = nxt
        last_uv[seen] = uv[nxt, seen]


def _from_query(tracker: LKPointTracker, grey: GreyFrames, q_frame: np.ndarray,
                uv: np.ndarray, vis: np.ndarray, direction: int) -> None:
    """LK from each query frame's image straight to every frame, seeded by the neighbour's estimate."""
    T = vis.shape[0]
    follow = tracker.cfg.lost_points == "follow_median"
    for q in np.unique(q_frame):
        idx = np.flatnonzero(q_frame == q)
        src = uv[q, idx].copy()
        guess = src.copy()
        level = tracker.cfg.query_max_level
        for t in range(q + direction, T if direction > 0 else -1, direction):
            new, ok = tracker.track_grey(grey[q], grey[t], src, init_uv_px=guess, max_level=level,
                                         min_ncc=tracker.cfg.min_ncc_query)
            if follow:  # failed points move with the tracked ones, so their next seed is not stale
                guess = guess + _shift_or_zero(guess[ok], new[ok], len(idx))
            uv[t, idx] = np.where(ok[:, None], new, guess)
            vis[t, idx] = ok & vis[q, idx]
            guess = uv[t, idx].copy()
