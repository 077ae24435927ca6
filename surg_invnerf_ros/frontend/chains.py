"""Multi-gap flow chains for query points: the "dis" classical baseline (DESIGN §3.1).

MFT's idea on the weight-free flow bank: a point reaches frame t through several candidate paths, one
per gap g (its position at t − g moved by the checked flow t − g → t); it keeps the path with the
lowest cost (Σ cycle error + `link_cost_px` per link, `invalid_link_cost_px` for an invalid link), so
an occlusion at one intermediate frame is jumped over by a longer gap. The fit's correspondences use
the same rule on stored samples (`store.py`).
"""

from __future__ import annotations

import functools
import operator
from typing import Callable

import numpy as np

from ..config import FlowConfig
from ..errors import InputError
from ..structs import Queries
from .bulk_motion import median_shift
from .flow import FlowBank, checked_flow_pair, make_dis, prepare_video

_ERR_CAP_PX = 1e4  # stands in for +inf where values are interpolated (0 · inf would give NaN)
_VALID_MIN = 0.99  # a bilinear look-up counts as valid only if (nearly) all its neighbours are


# ------------------------------------------------------------------------------------------------
# Sparse chaining for query points (the "dis" baseline)
# ------------------------------------------------------------------------------------------------



def _check_bank(bank: FlowBank, num_frames: int) -> None:
    if bank.pairs.size and (bank.pairs.min() < 0 or bank.pairs.max() >= num_frames):
        raise InputError(f"flow bank: pairs: frame index outside 0..{num_frames - 1}", reason="bad_bank")


Link = tuple[np.ndarray, np.ndarray, np.ndarray]  # flow (H, W, 2), valid (H, W), cycle error (H, W)


def _gather_link(link: Link, uv_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flow (N, 2), cycle error (N,) and validity (N,) of one link at (N, 2) pixels, bilinear;
    invalid outside the image or next to an invalid pixel."""
    flow_px, valid, cycle = link
    H, W = valid.shape
    u, v = uv_px[:, 0], uv_px[:, 1]
    inside = (u >= 0) & (v >= 0) & (u <= W - 1) & (v <= H - 1)
    u0 = np.clip(np.floor(u), 0, max(W - 2, 0)).astype(np.intp)
    v0 = np.clip(np.floor(v), 0, max(H - 2, 0)).astype(np.intp)
    du = np.clip(u - u0, 0, 1)[:, None]
    dv = np.clip(v - v0, 0, 1)[:, None]
    u1, v1 = np.minimum(u0 + 1, W - 1), np.minimum(v0 + 1, H - 1)
    corners = [(v0, u0, (1 - du) * (1 - dv)), (v0, u1, du * (1 - dv)), (v1, u0, (1 - du) * dv), (v1, u1, du * dv)]
    flow = functools.reduce(operator.add, (w * flow_px[vv, uu] for vv, uu, w in corners))  # (N, 2)
    err = functools.reduce(operator.add, (w[:, 0] * np.minimum(cycle[vv, uu], _ERR_CAP_PX) for vv, uu, w in corners))
    val = functools.reduce(operator.add, (w[:, 0] * valid[vv, uu] for vv, uu, w in corners))
    return flow, err, inside & (val >= _VALID_MIN)


def _track_points(link_of: Callable[[int, int], Link | None], queries: Queries, num_frames: int,
                  image_hw: tuple[int, int], cfg: FlowConfig) -> tuple[np.ndarray, np.ndarray]:
    """The chaining rule of `track_dis_chained`, frame by frame in time order.

    `link_of(s, t)` gives the checked flow s → t (or None if there is none). It is asked once per
    pair and direction, and only for frames some point needs, so a caller may compute links on
    the fly and forget them (`track_dis_streaming`).
    """
    H, W = image_hw
    T, N = num_frames, len(queries)
    q_frame = queries.frame_idx
    if N and (q_frame.min() < 0 or q_frame.max() >= T):
        raise InputError(f"queries: frame index outside 0..{T - 1}", reason="bad_query")
    gaps = sorted(set(cfg.gaps))
    uv = np.zeros((T, N, 2), np.float64)
    score = np.full((T, N), np.inf)  # path cost; inf = no path reached this frame
    visible = np.zeros((T, N), bool)
    cols = np.arange(N)
    q_uv = queries.uv_px.astype(np.float64)
    uv[q_frame, cols] = q_uv
    score[q_frame, cols] = 0.0
    visible[q_frame, cols] = (q_uv[:, 0] >= 0) & (q_uv[:, 1] >= 0) & (q_uv[:, 0] <= W - 1) & (q_uv[:, 1] <= H - 1)

    for direction in (1, -1):
        for t in (range(1, T) if direction > 0 else range(T - 2, -1, -1)):
            n = cols[(q_frame < t) if direction > 0 else (q_frame > t)]  # points tracked into t
            if not len(n):
                continue
            prev = t - direction
            best = np.full(len(n), np.inf)
            best_uv = uv[prev, n].copy()  # fallback: stay put (no path at all)
            best_vis = np.zeros(len(n), bool)
            for g in gaps:
                s = t - direction * g
                if not 0 <= s < T:
                    break
                between = (s >= q_frame[n]) if direction > 0 else (s <= q_frame[n])
                ok = between & np.isfinite(score[s, n])
                if not ok.any():
                    continue
                link = link_of(s, t)
                if link is None:
                    continue
                flow, err, valid = _gather_link(link, uv[s, n])
                cost = np.where(valid, err + cfg.link_cost_px, cfg.invalid_link_cost_px)
                cand = np.where(ok, score[s, n] + cost, np.inf)
                better = cand < best
                best = np.where(better, cand, best)
                best_uv[better] = uv[s, n][better] + flow[better]
                best_vis = np.where(better, valid & visible[s, n], best_vis)
            # A point that is not visible rides with the median motion of the visible ones
            # (camera motion, bulk tissue motion), not with the flow of whatever covers it.
            moving = best_vis & visible[prev, n]
            shift = median_shift(uv[prev, n[moving]], best_uv[moving], len(n)) if (~best_vis).any() else None
            if shift is not None:
                best_uv[~best_vis] = uv[prev, n[~best_vis]] + shift
            uv[t, n] = best_uv
            score[t, n] = best
            visible[t, n] = best_vis
    return uv.astype(np.float32), visible


def track_dis_chained(
    bank: FlowBank, queries: Queries, num_frames: int, cfg: FlowConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Track query points through the flow bank, forwards and backwards from each query frame.

    At every frame, each point takes the best of the candidates "its position g frames closer to
    the query frame, moved by the bank flow over gap g". A candidate costs its source's score plus
    the link's cycle error and `link_cost_px`; an invalid link (occlusion, failed cycle, masked)
    costs `invalid_link_cost_px` instead, so paths that jump over an occlusion win. As in MFT, the
    position is always carried by the best path, but the point is visible only if that path's last
    link is valid and starts from a frame where the point was visible. A point that is not visible
    moves with the median motion of the visible points of its frame (camera and bulk motion), not
    with the flow of what covers it. A point occluded for less than the longest gap is re-acquired
    by a path from before the occlusion; after a longer occlusion it stays not visible, its
    position a best guess.

    Returns:
        uv (T, N, 2) float32 pixels and visible (T, N) bool.
    """
    _check_bank(bank, num_frames)
    index = bank.index()

    def link_of(s: int, t: int) -> Link | None:
        q = index.get((s, t))
        return None if q is None else (bank.flow_px[q], bank.valid[q], bank.cycle_err_px[q])

    return _track_points(link_of, queries, num_frames, bank.image_hw, cfg)


def track_dis_streaming(
    left_rgb_u8: np.ndarray,
    queries: Queries,
    cfg: FlowConfig,
    mask: np.ndarray | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`track_dis_chained` without a bank: each checked flow is computed when first needed and
    dropped after, so memory is a few images, not Q = 2·Σ(T − g) flow fields (which grows past RAM
    for long or large videos). DIS runs for the pairs the queries need: once per pair if all
    queries sit at the first (or last) frame, at most twice otherwise.

    Args:
        left_rgb_u8: (T, H, W, 3) uint8 left images.
        mask: optional (T, H, W) bool, True = excluded, as in `compute_flow_bank`.
        progress: called with 2 after each couple of flows.
    """
    grey, mask, grid = prepare_video(left_rgb_u8, mask, "track_dis_streaming")
    T, (H, W) = len(grey), grey[0].shape
    dis = make_dis(cfg, W)

    def link_of(s: int, t: int) -> Link:
        fwd, _ = checked_flow_pair(dis, grey[s], grey[t], grid, cfg,
                                   None if mask is None else mask[s], None if mask is None else mask[t])
        if progress is not None:
            progress(2)
        return fwd

    return _track_points(link_of, queries, T, (H, W), cfg)
