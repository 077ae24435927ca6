"""Multi-gap flow chains: long-range dense correspondences with confidence (DESIGN §3.1).

MFT's idea, rebuilt on the weight-free `FlowBank`: the flow from a frame r to a far frame t is
reached through several candidate paths, one per gap g, each the already-known chain to t − g
composed with the bank flow (t − g → t). Every pixel keeps the path with the lowest score,

    score = Σ cycle error of its links  +  link_cost_px · number of links,

so an occlusion at one intermediate frame is jumped over by a longer gap, and ties go to the
shorter chain. A chain is valid only if every link is (cycle closed, inside the image, unmasked).

    confidence = valid · exp(−Σ cycle error / conf_scale_px) · link_decay^(links − 1)

Composition is whole-image: F_rt(x) = F_rs(x) + F_st(x + F_rs(x)), one `cv2.remap` per candidate.

Pairs returned by `build_correspondences`:
- every bank pair (i, i ± g), g in `cfg.gaps` (one link);
- long-range pairs from keyframes r = 0, S, 2S, … (S = `keyframe_stride`): (r, t) and (t, r) for
  every t at distance d ≤ `max_chain_frames`, d a multiple of `long_range_step`. Where d is also a
  gap, the direct pair keeps, per pixel, the more confident of its flow and the chain (a long direct
  flow bridges occlusions; the chain holds where a large displacement defeats DIS).
  (t, r) chains are target-fixed: F_tr(x) = F_ts(x) + F_sr(x + F_ts(x)), s one gap closer to r.

Memory: each pair is 12 bytes a pixel (float32 flow and confidence). The long-range count is about
(T / S) · 2 · 2 · max_chain_frames / long_range_step; raise `keyframe_stride` or `long_range_step`
(the pair budget) for big images. At 256×192, T = 48 and the defaults: 424 pairs (354 of them
direct), 250 MB.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..config import FlowConfig
from ..errors import InputError
from ..structs import Queries
from .bulk_motion import median_shift
from .flow import FlowBank, checked_flow_pair, make_dis, pixel_grid, prepare_video
from .workers import thread_map

_ERR_CAP_PX = 1e4  # stands in for +inf where values are interpolated (0 · inf would give NaN)
_VALID_MIN = 0.99  # a bilinear look-up counts as valid only if (nearly) all its neighbours are


@dataclass
class DenseCorrespondences:
    """Dense pixel correspondences between frame pairs, the fit's supervision.

    Attributes:
        pairs: (Q, 2) int64 rows [i, j], direct gap pairs first, then long-range ones.
        flow_px: (Q, H, W, 2) float32; pixel (u, v) of frame i maps to (u, v) + flow in frame j.
        confidence: (Q, H, W) float32 in [0, 1]; 0 = no correspondence (occluded, failed, masked).
    """

    pairs: np.ndarray
    flow_px: np.ndarray
    confidence: np.ndarray


def _link_stack(bank: FlowBank, q: int) -> np.ndarray:
    """(H, W, 4) float32 [fu, fv, cycle error (capped), valid] of bank row q, for one remap."""
    return np.concatenate([
        bank.flow_px[q],
        np.minimum(bank.cycle_err_px[q], _ERR_CAP_PX)[..., None],
        bank.valid[q][..., None].astype(np.float32),
    ], axis=-1)


def _sample(
    stack: np.ndarray, flow_px: np.ndarray, grid: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """`stack` (H, W, C) looked up at x + flow(x); plus (H, W) bool: the look-up lies in the image."""
    H, W = flow_px.shape[:2]
    map_u = grid[0] + flow_px[..., 0]
    map_v = grid[1] + flow_px[..., 1]
    inside = (map_u >= 0) & (map_v >= 0) & (map_u <= W - 1) & (map_v <= H - 1)
    return cv2.remap(stack, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), inside


class _ChainState:
    """One dense chain: flow, accumulated cycle error, link count and validity, each (H, W)."""

    __slots__ = ("flow", "err", "links", "valid", "_stack")

    def __init__(self, flow: np.ndarray, err: np.ndarray, links: np.ndarray, valid: np.ndarray) -> None:
        self.flow, self.err, self.links, self.valid = flow, err, links, valid
        self._stack: np.ndarray | None = None

    @classmethod
    def identity(cls, H: int, W: int) -> "_ChainState":
        return cls(np.zeros((H, W, 2), np.float32), np.zeros((H, W), np.float32),
                   np.zeros((H, W), np.float32), np.ones((H, W), bool))

    def stack(self) -> np.ndarray:
        """(H, W, 5) float32 for one remap of the whole state (built once: up to len(gaps) uses)."""
        if self._stack is None:
            self._stack = np.concatenate([
                self.flow, np.minimum(self.err, _ERR_CAP_PX)[..., None], self.links[..., None],
                self.valid[..., None].astype(np.float32)], axis=-1)
        return self._stack

    def confidence(self, cfg: FlowConfig) -> np.ndarray:
        conf = np.exp(-self.err / cfg.conf_scale_px) * cfg.link_decay ** np.maximum(self.links - 1.0, 0.0)
        return np.where(self.valid, conf, 0.0).astype(np.float32)


def _compose_source_fixed(prev: _ChainState, link: np.ndarray, grid) -> _ChainState:
    """Chain r→s then bank link s→t (sampled where the chain lands): the chain r→t."""
    got, inside = _sample(link, prev.flow, grid)  # (H, W, 4)
    return _ChainState(prev.flow + got[..., :2], prev.err + got[..., 2], prev.links + 1.0,
                       prev.valid & inside & (got[..., 3] >= _VALID_MIN))


def _compose_target_fixed(link: np.ndarray, nxt: _ChainState, grid) -> _ChainState:
    """Bank link t→s at the grid then chain s→r (sampled where the link lands): the chain t→r."""
    flow = link[..., :2]
    got, inside = _sample(nxt.stack(), flow, grid)  # (H, W, 5)
    return _ChainState(flow + got[..., :2], link[..., 2] + got[..., 2], np.rint(got[..., 3]) + 1.0,
                       (link[..., 3] >= _VALID_MIN) & inside & (got[..., 4] >= _VALID_MIN))


def _best(cands: list[_ChainState], link_cost_px: float) -> _ChainState:
    """Per pixel, the candidate with the lowest score (invalid candidates score +inf); ties keep
    the earlier (shorter-gap) candidate."""
    best = cands[0]
    if len(cands) == 1:
        return best
    best = _ChainState(best.flow.copy(), best.err.copy(), best.links.copy(), best.valid.copy())
    score = np.where(best.valid, best.err + link_cost_px * best.links, np.inf)
    for c in cands[1:]:
        cand = np.where(c.valid, c.err + link_cost_px * c.links, np.inf)
        better = cand < score
        np.copyto(score, cand, where=better)
        np.copyto(best.flow, c.flow, where=better[..., None])
        np.copyto(best.err, c.err, where=better)
        np.copyto(best.links, c.links, where=better)
        np.copyto(best.valid, c.valid, where=better)
    return best


def _chain_from(bank: FlowBank, index: dict, r: int, direction: int, num_frames: int, cfg: FlowConfig,
                keep: set[int], target_fixed: bool, grid) -> dict[int, _ChainState]:
    """Chains between keyframe r and t = r + direction·d, d = 1 … max_chain_frames.

    Source-fixed chains map frame r to t; target-fixed ones map t to r. Returns the states at the
    distances in `keep`; only the last max(gaps) states are held while stepping.
    """
    H, W = bank.image_hw
    gaps = sorted(set(cfg.gaps))
    states: dict[int, _ChainState] = {0: _ChainState.identity(H, W)}
    out: dict[int, _ChainState] = {}
    for d in range(1, max(keep, default=0) + 1):
        t = r + direction * d
        if not 0 <= t < num_frames:
            break
        cands = []
        for g in gaps:
            if g > d:
                break
            s = t - direction * g  # one gap closer to r
            key = (t, s) if target_fixed else (s, t)
            q = index.get(key)
            if q is None or (d - g) not in states:
                continue
            link = _link_stack(bank, q)  # each bank row is used once per chain: no cache
            if target_fixed:
                cands.append(_compose_target_fixed(link, states[d - g], grid))
            else:
                cands.append(_compose_source_fixed(states[d - g], link, grid))
        if not cands:  # the bank has no gap reaching this far: stop the chain here
            break
        states[d] = _best(cands, cfg.link_cost_px)
        if d in keep:
            out[d] = states[d]
        states.pop(d - gaps[-1], None)  # no gap reaches back further than the largest one
    return out


def _check_bank(bank: FlowBank, num_frames: int) -> None:
    if bank.pairs.size and (bank.pairs.min() < 0 or bank.pairs.max() >= num_frames):
        raise InputError(f"flow bank: pairs: frame index outside 0..{num_frames - 1}", reason="bad_bank")


def build_correspondences(
    bank: FlowBank,
    num_frames: int,
    cfg: FlowConfig,
    progress: Callable[[int], object] | None = None,
    workers: int = 0,
) -> DenseCorrespondences:
    """Direct gap pairs plus keyframe-anchored long-range chains, each with a confidence map.

    Args:
        bank: DIS flows of every gap pair (`flow.compute_flow_bank`).
        num_frames: T, the sequence length the bank was computed on.
        cfg: gaps, chain length, keyframe stride, long-range step and confidence constants.
        progress: called with 1 after each keyframe, from the worker threads.
        workers: threads (0 = every CPU core); the output does not depend on it.
    """
    _check_bank(bank, num_frames)
    H, W = bank.image_hw
    grid = pixel_grid(H, W)
    index = bank.index()
    keep = {d for d in range(cfg.long_range_step, cfg.max_chain_frames + 1, cfg.long_range_step) if d > 1}

    pairs = [bank.pairs]
    flows = [bank.flow_px]
    # Direct pairs are one link: confidence = exp(-cycle error / scale) where valid.
    direct_conf = np.zeros(bank.valid.shape, np.float32)
    np.exp(-np.where(bank.valid, bank.cycle_err_px, 0) / np.float32(cfg.conf_scale_px), out=direct_conf,
           where=bank.valid)
    confs = [direct_conf]
    seen = set(index)
    merges: list[tuple[int, np.ndarray, np.ndarray]] = []  # (direct pair, chained flow, its confidence)

    def keyframe(r: int) -> list[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
        """(pair, flow, confidence) of every chain to and from keyframe r, in a fixed order."""
        got = []
        for direction in (1, -1):
            for target_fixed in (False, True):
                states = _chain_from(bank, index, r, direction, num_frames, cfg, keep, target_fixed, grid)
                for d, st in sorted(states.items()):
                    t = r + direction * d
                    got.append(((t, r) if target_fixed else (r, t), st.flow, st.confidence(cfg)))
        if progress is not None:
            progress(1)
        return got

    for chained in thread_map(keyframe, range(0, num_frames, cfg.keyframe_stride), workers):
        for pair, flow, conf in chained:
            if pair in index:  # a long direct gap: the chain fills in where the direct flow failed
                merges.append((index[pair], flow, conf))
                continue
            if pair in seen:  # two keyframes d apart reach each other both ways: keep one
                continue
            seen.add(pair)
            pairs.append(np.asarray([pair], np.int64))
            flows.append(flow[None])
            confs.append(conf[None])
    out = DenseCorrespondences(pairs=np.concatenate(pairs).reshape(-1, 2),
                               flow_px=np.concatenate(flows).astype(np.float32, copy=False),
                               confidence=np.concatenate(confs))
    for q, flow, conf in merges:  # per pixel, the more confident of the direct flow and the chain
        better = conf > out.confidence[q]
        out.flow_px[q][better] = flow[better]
        out.confidence[q][better] = conf[better]
    return out


# ------------------------------------------------------------------------------------------------
# Sparse chaining for query points (the "dis" baseline)
# ------------------------------------------------------------------------------------------------



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
    dis = make_dis(cfg)
    T, (H, W) = len(grey), grey[0].shape

    def link_of(s: int, t: int) -> Link:
        fwd, _ = checked_flow_pair(dis, grey[s], grey[t], grid, cfg,
                                   None if mask is None else mask[s], None if mask is None else mask[t])
        if progress is not None:
            progress(2)
        return fwd

    return _track_points(link_of, queries, T, (H, W), cfg)
