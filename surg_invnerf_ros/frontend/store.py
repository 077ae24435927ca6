"""The correspondence store: the fit's supervision, built frame by frame in bounded memory (DESIGN §3.1).

The fit only ever reads a few hundred correspondences per step, so nothing whole-image per frame
pair is kept. Frames are read one at a time, in order; for each new frame t the front end computes
its stereo depth and specular mask and the checked DIS flows (t − g ↔ t) of every gap g, and at once
reduces them to what the fit needs:

- **Samples**: the source pixels of frame t, one per `stride × stride` block at a random offset
  (stride 1: every pixel), grouped by the sampler's cells so a cell's samples are contiguous. Each
  keeps its colour, stereo depth and supervision flag.
- **Records**: a sample's correspondences. A record holds the target frame, the matched
  (fractional) pixel, its confidence and what the fit looks up at the match (stereo depth, colour,
  supervision). Direct gap pairs give records both ways (s → t and t → s). Long-range records come
  from source-fixed chains: the samples of each keyframe r are carried forward through the gap
  flows, each point taking the best path (lowest Σ cycle error + `link_cost_px` · links, as in
  `chains`), for up to `max_chain_frames`, with a record every `long_range_step` frames; the samples
  of any other frame are carried likewise to the keyframes ahead at those distances. Where
  the distance is also a gap, the more confident of the direct flow and the chain wins. Records
  with no confidence (occluded, masked, failed checks; below `MIN_CONFIDENCE`) are not stored.

What is held while streaming is the last max(gaps) frames (grey, colour, depth, mask) and, per
active chain, the last max(gaps) states of its samples; what is kept grows with frames ×
samples, not frames × pixels × gaps. Per-frame depth maps (for inference at query pixels) stay in
RAM up to `store.depth_in_ram_gib`, else in a memory-mapped temporary file.

Backward chains need the backward flows of the last frames held, so they run only where those fit
`store.backward_chains_gib`; without them the long-range pairs are held one way, and the fit renders
each correspondence both ways (`loss.directions` auto).
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from ..config import FrontendConfig
from ..errors import InputError
from ..heap import map_large_blocks, release_free_memory
from ..structs import StereoCalib
from .flow import checked_flow_pair, make_dis, pixel_grid, to_grey
from .masks import specular_mask
from .stereo import depth_with_matchers_m, make_refiner, make_sgbm, num_disparities_for
from .workers import thread_map

log = logging.getLogger(__name__)

_ERR_CAP_PX = 1e4  # stands in for +inf where values are interpolated
_VALID_MIN = 0.99  # a bilinear look-up is valid only if (nearly) all its neighbours are
MIN_CONFIDENCE = 1e-3  # weaker correspondences are not stored (they weigh nothing in the fit; float16 keeps 1e-3)
SAMPLE_BYTES = 18  # uv int16 ×2, rgb ×3, right rgb ×3, depth float32, supervise, record offset int64 (amortised)
RECORD_BYTES = 24  # sample int32, frame int32, uv float32 ×2, conf float16, depth float32, rgb ×3, supervise


class StereoFrames(Protocol):
    """What the store reads: rectified frames by index (arrays and `io.sequence.FrameStack`s qualify)."""

    def __len__(self) -> int: ...

    def __getitem__(self, t: Any, /) -> Any: ...


@dataclass
class DepthMaps:
    """Per-frame stereo depth (T, H, W) in metres, NaN invalid: in RAM, or memory-mapped from a temporary file."""

    maps: np.ndarray
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @classmethod
    def allocate(cls, num_frames: int, height: int, width: int, ram_limit_bytes: float) -> "DepthMaps":
        if num_frames * height * width * 4 <= ram_limit_bytes:
            return cls(np.full((num_frames, height, width), np.nan, np.float32))
        tmp = tempfile.TemporaryDirectory(prefix="surg_invnerf_depth_")
        maps = np.lib.format.open_memmap(Path(tmp.name) / "depth.npy", mode="w+", dtype=np.float16,
                                         shape=(num_frames, height, width))
        return cls(maps, tmp)

    @property
    def on_disk(self) -> bool:
        return self._tmp is not None

    def at(self, frame: np.ndarray, uv_px: np.ndarray, subpixel: bool) -> np.ndarray:
        """Depth at (N,) frames and (N, 2) pixels, float32: the nearest pixel's, or with `subpixel` bilinear
        where all four neighbours are valid; NaN outside the image or where invalid."""
        return depth_lookup(self.maps, np.asarray(frame, np.intp), np.asarray(uv_px, np.float64), subpixel)


def depth_lookup(maps: np.ndarray, frame: np.ndarray, uv_px: np.ndarray, subpixel: bool) -> np.ndarray:
    """`DepthMaps.at` on any (T, H, W) array (or one (H, W) map with `frame` all zero)."""
    if maps.ndim == 2:
        maps = maps[None]
    H, W = maps.shape[1:]
    u, v = uv_px[:, 0], uv_px[:, 1]
    with np.errstate(invalid="ignore"):
        ur, vr = np.rint(np.nan_to_num(u, nan=-1.0)), np.rint(np.nan_to_num(v, nan=-1.0))
    inside = (ur >= 0) & (ur < W) & (vr >= 0) & (vr < H)
    d = maps[frame, np.clip(vr, 0, H - 1).astype(np.intp), np.clip(ur, 0, W - 1).astype(np.intp)].astype(np.float32)
    if subpixel and len(frame):
        uc, vc = np.clip(np.nan_to_num(u), 0, W - 1), np.clip(np.nan_to_num(v), 0, H - 1)
        u0 = np.clip(np.floor(uc), 0, max(W - 2, 0)).astype(np.intp)
        v0 = np.clip(np.floor(vc), 0, max(H - 2, 0)).astype(np.intp)
        du, dv = np.clip(uc - u0, 0, 1), np.clip(vc - v0, 0, 1)
        u1, v1 = np.minimum(u0 + 1, W - 1), np.minimum(v0 + 1, H - 1)
        bil = ((1 - du) * (1 - dv) * maps[frame, v0, u0] + du * (1 - dv) * maps[frame, v0, u1]
               + (1 - du) * dv * maps[frame, v1, u0] + du * dv * maps[frame, v1, u1]).astype(np.float32)
        d = np.where(np.isfinite(bil), bil, d)
    return np.where(inside, d, np.float32(np.nan)).astype(np.float32)


class FrontendCache:
    """Per-frame stereo depth and per-pair checked flows kept between stores of overlapping windows,
    keyed by frame keys (stamps): a window that slid on computes only its new frames and pairs.

    Holds at most `max_bytes`; what would not fit is not kept (it is computed again when needed).
    `retain(keys)` drops every entry of a frame no longer in the window.
    """

    def __init__(self, max_bytes: float = 1 << 30) -> None:
        self.max_bytes = float(max_bytes)
        self._items: dict[tuple, tuple[Any, int]] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(value: Any) -> int:
        if isinstance(value, np.ndarray):
            return int(value.nbytes)
        if isinstance(value, (tuple, list)):
            return sum(FrontendCache._size(v) for v in value)
        return 64

    def get(self, key: tuple) -> Any | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        return item[0]

    def put(self, key: tuple, value: Any) -> None:
        size = self._size(value)
        if key in self._items or self.nbytes + size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self.nbytes += size

    def retain(self, frame_keys: Any) -> None:
        """Keep only entries whose frames are all among `frame_keys`."""
        keep = {int(k) for k in frame_keys}
        for key in [k for k in self._items if not all(int(f) in keep for f in k[1:])]:
            self.nbytes -= self._items.pop(key)[1]

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class CorrespondenceStore:
    """Samples of every frame and their checked correspondences (`build_store`).

    Samples are ordered frame, cell row, cell column, then `per_cell` samples within the cell, so the
    sample of cell c is `c · per_cell + m`. Records are sorted by sample: those of sample s are
    `rec_start[s]:rec_start[s + 1]`.
    """

    image_hw: tuple[int, int]
    num_frames: int
    cell_px: int  # the sampler's cell side
    per_cell: int  # samples per cell
    stride_px: int  # one sample per stride × stride pixels
    uv_px: np.ndarray  # (S, 2) int16 source pixel (u, v)
    rgb_u8: np.ndarray  # (S, 3) left colour at the sample
    right_rgb_u8: np.ndarray | None  # (S, 3) right colour at the same pixel (only when asked for)
    depth_m: np.ndarray  # (S,) float32 stereo depth, NaN invalid
    supervise: np.ndarray  # (S,) bool, False where masked
    rec_start: np.ndarray  # (S + 1,) int64
    rec_frame: np.ndarray  # (R,) int32 target frame
    rec_uv_px: np.ndarray  # (R, 2) float32 matched pixel in the target frame
    rec_conf: np.ndarray  # (R,) float16 in (0, 1]
    rec_depth_m: np.ndarray  # (R,) float32 stereo depth at the match (`DepthMaps.at` rule), NaN invalid
    rec_rgb_u8: np.ndarray  # (R, 3) target colour at the match (nearest pixel, or bilinear with subpixel)
    rec_supervise: np.ndarray  # (R,) bool: the match's pixel is not masked
    pairs: np.ndarray  # (P, 2) int64 frame pairs with at least one record
    depth: DepthMaps
    subpixel: bool
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def grid_hw(self) -> tuple[int, int]:
        H, W = self.image_hw
        return math.ceil(H / self.cell_px), math.ceil(W / self.cell_px)

    @property
    def samples_per_frame(self) -> int:
        Hc, Wc = self.grid_hw
        return Hc * Wc * self.per_cell

    @property
    def num_records(self) -> int:
        return int(self.rec_frame.shape[0])

    def sample_frame(self, sample: np.ndarray) -> np.ndarray:
        return np.asarray(sample) // self.samples_per_frame

    def nbytes(self) -> int:
        arrays = [self.uv_px, self.rgb_u8, self.depth_m, self.supervise, self.rec_start, self.rec_frame,
                  self.rec_uv_px, self.rec_conf, self.rec_depth_m, self.rec_rgb_u8, self.rec_supervise]
        if self.right_rgb_u8 is not None:
            arrays.append(self.right_rgb_u8)
        return int(sum(a.nbytes for a in arrays))

    def records_of(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(samples, matched uv (K, 2), conf (K,)) of the records from frame i to frame j (tests, plots)."""
        S = self.samples_per_frame
        lo, hi = self.rec_start[i * S], self.rec_start[(i + 1) * S]
        sample = np.repeat(np.arange(S * i, S * (i + 1)), np.diff(self.rec_start[i * S:(i + 1) * S + 1]))
        sel = np.flatnonzero(self.rec_frame[lo:hi] == j)
        return sample[sel], self.rec_uv_px[lo:hi][sel], self.rec_conf[lo:hi][sel].astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Layout and memory
# ------------------------------------------------------------------------------------------------


def cell_layout(stride_px: int, cell_px: int) -> tuple[int, int]:
    """(cell side, samples per cell): the sampler's cell when the stride divides it, else one sample a cell."""
    if stride_px <= cell_px and cell_px % stride_px == 0:
        return cell_px, (cell_px // stride_px) ** 2
    return stride_px, 1


def long_range_distances(cfg) -> list[int]:
    """Chain distances kept as records: every `long_range_step` frames up to `max_chain_frames` (not 1)."""
    return [d for d in range(cfg.long_range_step, cfg.max_chain_frames + 1, cfg.long_range_step) if d > 1]


def records_per_sample(num_frames: int, cfg, backward: bool = True) -> float:
    """Upper bound of the mean record count per sample: direct gaps both ways plus long-range chains
    (forward, and backward with `backward`)."""
    gaps = sorted({g for g in cfg.gaps if g < num_frames})
    direct = sum(2 * (num_frames - g) for g in gaps) / max(num_frames, 1)
    longs = sum(1 for t in range(num_frames) for d in chain_distances(t, cfg) if d not in gaps and t + d < num_frames)
    if backward:
        longs += sum(1 for t in range(num_frames) for d in backward_distances(t, cfg) if d not in gaps)
    return direct + longs / max(num_frames, 1)


def store_bytes(num_frames: int, height: int, width: int, stride_px: int, cfg: FrontendConfig) -> int:
    """Upper bound of the store's size (every record valid)."""
    per_frame = math.ceil(height / stride_px) * math.ceil(width / stride_px)
    samples = num_frames * per_frame
    backward = backward_chains_run(height, width, cfg)
    return int(samples * (SAMPLE_BYTES + RECORD_BYTES * records_per_sample(num_frames, cfg.flow, backward)))


def choose_stride(num_frames: int, height: int, width: int, cfg: FrontendConfig) -> int:
    """`store.sample_stride_px`, or with 0 the smallest stride whose store fits `store.budget_gib`."""
    if cfg.store.sample_stride_px > 0:
        return cfg.store.sample_stride_px
    budget = cfg.store.budget_gib * 2**30
    stride = 1
    while stride < 256 and store_bytes(num_frames, height, width, stride, cfg) > budget:
        stride += 1
    return stride


def streaming_bytes(height: int, width: int, cfg: FrontendConfig) -> int:
    """RAM the streaming pass holds besides the store: the last max(gaps) frames, one frame's flows, and the
    backward chains' held flows where they run."""
    px = height * width
    window = (max(cfg.flow.gaps) + 1) * px * 10  # grey, rgb, depth float32, mask, padding
    flows = len(cfg.flow.gaps) * px * 2 * 40  # two flows with their checks per gap, and temporaries
    held = lookback_bytes(height, width, cfg)
    return window + flows + (held if backward_chains_run(height, width, cfg) else 0)


# ------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    grey: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    sample_uv: np.ndarray  # (S, 2) int
    _look: np.ndarray | None = None

    def look(self) -> np.ndarray:
        """(H, W, 4) float32 [r, g, b, depth]: colour and depth at matches in one bilinear look-up."""
        if self._look is None:
            self._look = np.concatenate([self.rgb.astype(np.float32), self.depth[..., None]], -1)
        return self._look


@dataclass
class _Chain:
    """Source-fixed chain states of one frame's samples: distance → (uv, err, links, valid); records are
    kept at the distances in `emit_at`, and the chain ends at the largest."""

    r: int
    states: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    emit_at: frozenset[int]


def backward_distances(t: int, cfg) -> frozenset[int]:
    """Distances back in time at which frame t's samples get long-range records: every kept distance from
    a keyframe, and from any frame the kept distances that land on a keyframe behind."""
    keep = long_range_distances(cfg)
    if t % cfg.keyframe_stride == 0:
        return frozenset(d for d in keep if d <= t)
    return frozenset(d for d in keep if d <= t and (t - d) % cfg.keyframe_stride == 0)


def backward_chains_run(height: int, width: int, cfg: FrontendConfig) -> bool:
    """Whether the held backward flows of `lookback_bytes` fit `store.backward_chains_gib`."""
    return lookback_bytes(height, width, cfg) <= cfg.store.backward_chains_gib * 2**30


def lookback_bytes(height: int, width: int, cfg: FrontendConfig) -> int:
    """What backward chains hold: each of the last `max_chain_frames` frames' backward gap flows (with their
    checks) and its colour and mask."""
    return cfg.flow.max_chain_frames * height * width * (16 * len(cfg.flow.gaps) + 4)


def chain_distances(t: int, cfg) -> frozenset[int]:
    """Distances at which frame t's samples get long-range records: every kept distance from a keyframe,
    and from any frame the kept distances that land on a keyframe ahead."""
    keep = long_range_distances(cfg)
    if t % cfg.keyframe_stride == 0:
        return frozenset(keep)
    return frozenset(d for d in keep if (t + d) % cfg.keyframe_stride == 0)


class _Records:
    """Record columns as they are found (from the front end's threads, under a lock), one chunk per frame pair
    (i, j); laid out by sample, then target frame at the end without a sort: a sample has at most one record
    in a chunk, so a counting pass gives each record its slot, and each column is scattered into place and its
    chunks freed (the peak is the records once plus one column). The order does not depend on which thread
    added a chunk first."""

    _DTYPES = (np.int32, np.int32, np.float32, np.float16, np.float32, np.uint8, bool)
    _WIDTHS = (0, 0, 2, 0, 0, 3, 0)

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int, list[np.ndarray]]] = []  # (i, j, columns)
        self.pairs: set[tuple[int, int]] = set()

    def add(self, sample: np.ndarray, j: int, uv: np.ndarray, conf: np.ndarray, depth: np.ndarray, rgb: np.ndarray,
            sup: np.ndarray, i: int) -> None:
        if not len(sample):
            return
        self.pairs.add((i, j))
        cols = [np.asarray(arr, dtype) for arr, dtype in
                zip((sample, np.full(len(sample), j), uv, conf, depth, rgb, sup), self._DTYPES)]
        self.chunks.append((i, j, cols))

    def finish(self, num_samples: int) -> list[np.ndarray]:
        self.chunks.sort(key=lambda c: (c[0], c[1], int(c[2][0][0]), len(c[2][0])))
        count = np.zeros(num_samples, np.int64)
        for _, _, cols in self.chunks:
            count[cols[0]] += 1  # a sample appears once per chunk
        start = np.zeros(num_samples + 1, np.int64)
        np.cumsum(count, out=start[1:])
        total = int(start[-1])
        cursor = start[:-1].astype(np.int32 if total < 2**31 else np.int64)  # slots: 4 bytes a record
        slots = []
        for _, _, cols in self.chunks:  # chunks in (i, j) order: a sample's records end up by target frame
            slots.append(cursor[cols[0]])
            cursor[cols[0]] += 1
        del cursor, count
        out: list[np.ndarray] = [start]
        for k in range(1, len(self._DTYPES)):
            width = self._WIDTHS[k]
            col = np.empty((total, width) if width else (total,), self._DTYPES[k])
            for slot, (_, _, cols) in zip(slots, self.chunks):
                col[slot] = cols[k]
                cols[k] = cols[k][:0]  # freed as soon as it is in place
            out.append(col)
        self.chunks.clear()
        return out


def sample_positions(height: int, width: int, cell_px: int, per_cell: int, stride_px: int,
                     rng: np.random.Generator) -> np.ndarray:
    """(Hc·Wc·per_cell, 2) int16 pixels (u, v) in cell order: one per stride block, at a random offset in it
    (stride 1: every pixel); blocks past the image border are clamped into it."""
    Hc, Wc = math.ceil(height / cell_px), math.ceil(width / cell_px)
    n_side = cell_px // stride_px if per_cell > 1 else 1
    cv, cu, bv, bu = np.meshgrid(np.arange(Hc), np.arange(Wc), np.arange(n_side), np.arange(n_side), indexing="ij")
    n = cv.size
    jitter = rng.integers(0, stride_px, size=(n, 2)) if stride_px > 1 else np.zeros((n, 2), np.int64)
    u = cu.reshape(-1) * cell_px + bu.reshape(-1) * stride_px + jitter[:, 0]
    v = cv.reshape(-1) * cell_px + bv.reshape(-1) * stride_px + jitter[:, 1]
    return np.stack([np.clip(u, 0, width - 1), np.clip(v, 0, height - 1)], -1).astype(np.int16)


def _remap_points(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear look-up of (H, W, C) `image` at (N, 2) points: one `cv2.remap` with the points laid out as a
    map of rows of 1024 (remap takes maps below 32767 per side). Returns (N, C) float32."""
    n = uv.shape[0]
    cols = 1024
    rows = max(1, -(-n // cols))
    m = np.zeros((rows * cols, 2), np.float32)
    m[:n] = uv
    m = m.reshape(rows, cols, 2)
    got = cv2.remap(image, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return got.reshape(rows * cols, -1)[:n]


def _gather(stack: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear look-up of (H, W, C) `stack` at (N, 2) points (one remap); plus (N,) bool inside the image."""
    H, W = stack.shape[:2]
    u, v = uv[:, 0], uv[:, 1]
    inside = (u >= 0) & (v >= 0) & (u <= W - 1) & (v <= H - 1)
    if uv.shape[0] == 0:
        return np.zeros((0, stack.shape[2]), np.float32), inside
    return _remap_points(stack, uv), inside


ChainState = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # uv (N, 2), Σ cycle error, links, valid


def _stack(link: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(H, W, 4) float32 [flow u, flow v, cycle error (capped), valid] of one checked flow, for one look-up."""
    flow, valid, cycle = link
    return np.concatenate([flow, np.minimum(cycle, _ERR_CAP_PX)[..., None], valid[..., None].astype(np.float32)], -1)


def _more_confident(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the (matched uv, confidence) of `a` or `b` with the higher confidence (ties: `a`)."""
    take = a[1] >= b[1]
    return np.where(take[:, None], a[0], b[0]), np.where(take, a[1], b[1])


def _best_candidate(ch: _Chain, d: int, gaps: list[int], stacks: dict[int, np.ndarray],
                    link_cost_px: float) -> ChainState | None:
    """The chain state at distance d: per point, the best of "state at d − g, moved by the gap-g link into t"
    (ties keep the shorter gap). The first candidate's fresh arrays take the better ones in place."""
    best: ChainState | None = None
    score = None
    cost = np.float32(link_cost_px)
    for g in gaps:
        if g > d or g not in stacks or (d - g) not in ch.states:
            continue
        p_uv, p_err, p_links, p_valid = ch.states[d - g]
        got, inside = _gather(stacks[g], p_uv)
        c_uv = p_uv + got[:, :2]
        c_err = p_err + got[:, 2]
        c_links = p_links + np.float32(1.0)
        c_valid = p_valid & inside & (got[:, 3] >= _VALID_MIN)
        c_score = c_err + cost * c_links
        c_score[~c_valid] = np.inf
        if best is None or score is None:
            best, score = (c_uv, c_err, c_links, c_valid), c_score
            continue
        better = c_score < score
        np.copyto(score, c_score, where=better)
        np.copyto(best[0], c_uv, where=better[:, None])
        np.copyto(best[1], c_err, where=better)
        np.copyto(best[2], c_links, where=better)
        np.copyto(best[3], c_valid, where=better)
    return best


def build_store(
    left: StereoFrames,
    right: StereoFrames,
    calib: StereoCalib,
    cfg: FrontendConfig,
    cell_px: int = 8,
    subpixel: bool = False,
    with_right_colour: bool = False,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
    name: str = "sequence",
    frame_keys: Any | None = None,
    cache: FrontendCache | None = None,
) -> CorrespondenceStore:
    """Stream the frames once and build the store (see the module docstring).

    Args:
        left, right: T rectified (H, W, 3) uint8 RGB frames each, read in order, once.
        calib: the rectified calibration (SGBM's disparity range, depth from disparity).
        cfg: flow gaps and chain rules, stereo, masks, the store's density and budget, worker threads.
        cell_px: the sampler's error-map cell.
        subpixel: look depth and colour up bilinearly at matches (`render.subpixel_lookup`).
        with_right_colour: keep the right colour at each sample (`render.right_ray_share` > 0).
        seed: seed of the sample offsets.
        progress: called with 1 after each frame.
        frame_keys: T distinct keys (e.g. stamps) naming the frames in `cache`.
        cache: stereo depth and checked flows from earlier stores of the same frames (needs `frame_keys`);
            what is computed here is added to it.
    """
    T = len(left)
    if T < 1:
        raise InputError(f"{name}: no frames", reason="empty")
    if cache is not None and (frame_keys is None or len(frame_keys) != T):
        raise ValueError(f"build_store: a cache needs {T} frame_keys")
    keys = [int(k) for k in frame_keys] if cache is not None and frame_keys is not None else []
    if len(right) != T:
        raise InputError(f"{name}: right: expected {T} frames, got {len(right)}", reason="frame_count")
    H, W = int(calib.height), int(calib.width)
    fcfg = cfg.flow
    map_large_blocks()  # the per-frame arrays are freed at once: keep them off the fragmenting heap
    stride = choose_stride(T, H, W, cfg)
    cell, per_cell = cell_layout(stride, cell_px)
    rng = np.random.default_rng(seed)
    depth = DepthMaps.allocate(T, H, W, cfg.store.depth_in_ram_gib * 2**30)
    Hc, Wc = math.ceil(H / cell), math.ceil(W / cell)
    S = Hc * Wc * per_cell
    n_samples = T * S
    uv_all = np.zeros((n_samples, 2), np.int16)
    rgb_all = np.zeros((n_samples, 3), np.uint8)
    right_all = np.zeros((n_samples, 3), np.uint8) if with_right_colour else None
    depth_all = np.zeros(n_samples, np.float32)
    sup_all = np.zeros(n_samples, bool)
    gaps = sorted({g for g in fcfg.gaps if g >= 1})
    max_gap = gaps[-1]
    grid = pixel_grid(H, W)
    num_disp = num_disparities_for(calib, cfg.stereo)
    records = _Records()
    window: dict[int, _Frame] = {}
    # backward chains hold the last max_chain_frames frames' backward flows: only where that fits the budget
    backward = backward_chains_run(H, W, cfg)
    if not backward:
        log.info("%s: no backward chains (%.1f GiB of held flows > frontend.store.backward_chains_gib)", name,
                 lookback_bytes(H, W, cfg) / 2**30)
    lookback: dict[int, tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]] = {}

    def _past_frame(u: int) -> _Frame:
        rgb, msk, _ = lookback[u]
        return _Frame(grey=rgb[..., 0], rgb=rgb, depth=np.asarray(depth.maps[u], np.float32), mask=msk,
                      sample_uv=uv_all[:0])
    chains: list[_Chain] = []
    log.info("%s: correspondence store with one sample per %d px block (%d per frame), %d frames", name, stride ** 2,
             S, T)

    local = threading.local()
    lock = threading.Lock()

    def tools():
        if not hasattr(local, "dis"):
            local.dis = make_dis(fcfg, W)
            local.sgbm, local.refiner = make_sgbm(num_disp, cfg.stereo), make_refiner(cfg.stereo, W)
        return local

    timings = {"read_s": 0.0, "stereo_s": 0.0, "flow_s": 0.0, "chains_s": 0.0, "records_s": 0.0}

    def task(job):
        kind, a, b = job
        t0 = time.perf_counter()
        if kind == "stereo":
            tl = tools()
            out = depth_with_matchers_m(a, b, calib, cfg.stereo, tl.sgbm, tl.refiner)
        else:
            out = checked_flow_pair(tools().dis, a.grey, b.grey, grid, fcfg, a.mask, b.mask)
        with lock:
            timings[f"{kind}_s"] += time.perf_counter() - t0
        return out

    def direct_conf(link: tuple[np.ndarray, np.ndarray, np.ndarray], uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flow, valid, cycle = link
        u, v = uv[:, 0].astype(np.intp), uv[:, 1].astype(np.intp)
        conf = np.where(valid[v, u], np.exp(-np.minimum(cycle[v, u], _ERR_CAP_PX) / fcfg.conf_scale_px), 0.0)
        return uv.astype(np.float32) + flow[v, u], conf.astype(np.float32)

    def emit(i: int, j: int, uv_j: np.ndarray, conf: np.ndarray, tgt: _Frame) -> None:
        """Records i → j of frame i's samples: the fit's usability rules applied, target look-ups stored."""
        finite = np.asarray(np.isfinite(uv_j).all(1))
        uv_j = np.where(finite[:, None], uv_j, np.float32(0)).astype(np.float32, copy=False)
        ur, vr = np.rint(uv_j[:, 0]), np.rint(uv_j[:, 1])
        inside = (ur >= 0) & (ur < W) & (vr >= 0) & (vr < H)
        sup_j = ~tgt.mask[np.clip(vr, 0, H - 1).astype(np.intp), np.clip(ur, 0, W - 1).astype(np.intp)]
        conf = np.where(finite & inside & sup_all[i * S:(i + 1) * S] & sup_j, conf, 0.0)
        ok = conf >= MIN_CONFIDENCE
        if not ok.any():
            return
        uv_ok = uv_j[ok]
        ui, vi = ur[ok].astype(np.intp), vr[ok].astype(np.intp)  # inside the image: rounded pixels
        d_j = tgt.depth[vi, ui].astype(np.float32)  # the nearest pixel's, as `depth_lookup`
        if subpixel:  # bilinear where all four neighbours are valid (NaN spreads), else the nearest pixel's
            got = _remap_points(tgt.look(), uv_ok)
            rgb_j = np.clip(np.rint(got[:, :3]), 0, 255).astype(np.uint8)
            d_j = np.where(np.isfinite(got[:, 3]), got[:, 3], d_j)
        else:
            rgb_j = tgt.rgb[vi, ui]
        with lock:
            records.add(i * S + np.flatnonzero(ok), j, uv_ok, conf[ok], d_j, rgb_j, sup_j[ok], i)

    def chain_conf(err: np.ndarray, links: np.ndarray, valid: np.ndarray) -> np.ndarray:
        conf = np.exp(-err / fcfg.conf_scale_px) * fcfg.link_decay ** np.maximum(links - 1.0, 0.0)
        return np.where(valid, conf, 0.0).astype(np.float32)

    t_start = time.perf_counter()
    for t in range(T):
        t0 = time.perf_counter()
        lt, rt = np.asarray(left[t]), np.asarray(right[t])
        timings["read_s"] += time.perf_counter() - t0
        if lt.shape != (H, W, 3) or lt.dtype != np.uint8 or rt.shape != (H, W, 3) or rt.dtype != np.uint8:
            raise InputError(f"{name}: frame {t}: expected uint8 ({H}, {W}, 3) images, got {lt.dtype} {lt.shape} / "
                             f"{rt.dtype} {rt.shape}", reason="bad_image")
        mask = specular_mask(lt, cfg.masks)
        cur = _Frame(grey=to_grey(lt), rgb=lt, depth=np.empty(0, np.float32), mask=mask,
                     sample_uv=sample_positions(H, W, cell, per_cell, stride, rng))
        link_gaps = [g for g in gaps if t - g in window]
        jobs = [("stereo", lt, rt)] + [("flow", window[t - g], cur) for g in link_gaps]
        if cache is None:
            got: list[Any] = thread_map(task, jobs, cfg.workers)
        else:  # only what no earlier store of these frames computed
            job_keys = [("stereo", keys[t])] + [("flow", keys[t - g], keys[t]) for g in link_gaps]
            got = [cache.get(k) for k in job_keys]
            todo = [i for i, v in enumerate(got) if v is None]
            for i, v in zip(todo, thread_map(task, [jobs[i] for i in todo], cfg.workers)):
                got[i] = v
                cache.put(job_keys[i], v)
        cur.depth = np.asarray(got[0])
        depth.maps[t] = cur.depth
        links = dict(zip(link_gaps, got[1:]))  # g → (fwd (t−g → t), bwd (t → t−g))
        window[t] = cur

        # samples of t
        s0 = t * S
        uv = cur.sample_uv
        u, v = uv[:, 0].astype(np.intp), uv[:, 1].astype(np.intp)
        uv_all[s0:s0 + S] = uv
        rgb_all[s0:s0 + S] = lt[v, u]
        if right_all is not None:
            right_all[s0:s0 + S] = rt[v, u]
        depth_all[s0:s0 + S] = cur.depth[v, u]
        sup_all[s0:s0 + S] = ~mask[v, u]

        t0 = time.perf_counter()
        # direct pairs: t → t−g now; t−g → t after the chains (a chain may improve it)
        direct: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # g → (uv in t, conf) of frame t−g's samples
        direct_back: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # g → (uv in t − g, conf) of t's samples
        for g, (fwd, bwd) in links.items():
            direct[g] = direct_conf(fwd, window[t - g].sample_uv)
            direct_back[g] = direct_conf(bwd, uv)
        if backward:
            lookback[t] = (lt, mask, {g: _stack(bwd) for g, (_, bwd) in links.items()})

        t1 = time.perf_counter()
        timings["records_s"] += t1 - t0
        # long-range chains, forward: the samples of keyframes, and of frames with a keyframe at a kept
        # distance ahead, carried into t
        emit_at = chain_distances(t, fcfg)
        if emit_at:
            chains.append(_Chain(r=t, states={0: (uv.astype(np.float32), np.zeros(S, np.float32),
                                                  np.zeros(S, np.float32), np.ones(S, bool))}, emit_at=emit_at))
        stacks = {g: _stack(fwd) for g, (fwd, _) in links.items()}
        def advance(ch: _Chain, t: int = t, stacks: dict = stacks, direct: dict = direct,
                    cur: _Frame = cur) -> _Chain | None:
            """One chain carried into t (records where it is kept); the chain, or None once it has ended."""
            d = t - ch.r
            if d == 0:
                return ch
            best = _best_candidate(ch, d, gaps, stacks, fcfg.link_cost_px)
            if best is None:
                return None  # no gap reaches: the chain ends
            ch.states[d] = best
            ch.states.pop(d - max_gap, None)
            if d in ch.emit_at:
                c_uv, c_conf = best[0], chain_conf(best[1], best[2], best[3])
                if d in direct:  # a long direct gap: per sample, the more confident of the flow and the chain
                    direct[d] = _more_confident(direct[d], (c_uv, c_conf))
                else:
                    emit(ch.r, t, c_uv, c_conf, cur)
            return ch if d < max(ch.emit_at) else None

        def trace_back(t: int = t, uv: np.ndarray = uv, direct_back: dict = direct_back) -> None:
            """t's samples carried back through the held backward flows, to the distances of `backward_distances`."""
            back_at = backward_distances(t, fcfg)
            if not back_at:
                return
            states = {0: (uv.astype(np.float32), np.zeros(S, np.float32), np.zeros(S, np.float32), np.ones(S, bool))}
            for d in range(1, max(back_at) + 1):
                stacks_d = {g: lookback[t - d + g][2][g] for g in gaps if g <= d and t - d + g in lookback
                            and g in lookback[t - d + g][2]}
                best = _best_candidate(_Chain(r=t, states=states, emit_at=back_at), d, gaps, stacks_d,
                                       fcfg.link_cost_px)
                if best is None:
                    return
                states[d] = best
                states.pop(d - max_gap, None)
                if d in back_at:
                    c_uv, c_conf = best[0], chain_conf(best[1], best[2], best[3])
                    if d in direct_back:
                        direct_back[d] = _more_confident(direct_back[d], (c_uv, c_conf))
                    else:
                        emit(t, t - d, c_uv, c_conf, _past_frame(t - d))

        # chains are independent (each writes only its own distance's records): on the front end's threads
        jobs_c: list = list(chains) + (["back"] if backward else [])
        done_c = thread_map(lambda job: trace_back() if job == "back" else advance(job), jobs_c, cfg.workers)
        alive = [c for c in done_c if isinstance(c, _Chain)]
        if backward:
            lookback.pop(t - fcfg.max_chain_frames, None)
        chains[:] = alive
        t2 = time.perf_counter()
        timings["chains_s"] += t2 - t1
        emits = [(t - g, t, uv_st, conf_st, cur) for g, (uv_st, conf_st) in direct.items()]
        emits += [(t, t - g, uv_ts, conf_ts, window[t - g]) for g, (uv_ts, conf_ts) in direct_back.items()]
        thread_map(lambda job: emit(*job), emits, cfg.workers)
        timings["records_s"] += time.perf_counter() - t2
        window.pop(t - max_gap, None)
        if progress is not None:
            progress(1)

    release_free_memory()
    t0 = time.perf_counter()
    cols = records.finish(n_samples)
    timings["records_s"] += time.perf_counter() - t0
    timings["stream_s"] = time.perf_counter() - t_start
    return CorrespondenceStore(
        image_hw=(H, W), num_frames=T, cell_px=cell, per_cell=per_cell, stride_px=stride, uv_px=uv_all,
        rgb_u8=rgb_all, right_rgb_u8=right_all, depth_m=depth_all, supervise=sup_all, rec_start=cols[0],
        rec_frame=cols[1], rec_uv_px=cols[2], rec_conf=cols[3], rec_depth_m=cols[4], rec_rgb_u8=cols[5],
        rec_supervise=cols[6], pairs=np.asarray(sorted(records.pairs), np.int64).reshape(-1, 2), depth=depth,
        subpixel=subpixel, timings_s=timings)
