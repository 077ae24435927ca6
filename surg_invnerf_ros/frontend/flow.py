"""Dense optical flow at several frame gaps, both ways, with forward-backward cycle masks (DESIGN §3.1).

OpenCV DIS flow is computed for every pair (i, i+g) and (i+g, i), g in `cfg.gaps`. A flow pixel is
kept only where
- the round trip closes: |F_ij(x) + F_ji(x + F_ij(x))| < `cycle_thresh_px`;
- the flow is smooth: within `max_roughness_px` of its 5×5 mean;
- the target lies inside the image and neither end is masked;
- the target looks like the source, in 7×7 windows: zero-mean NCC at least `min_ncc` where both
  sides have texture (grey std >= 4), no texture on one side only (std ratio under 1/2), and mean
  absolute grey difference at most `photo_thresh`.
The appearance test is needed because DIS is smooth both ways over something that appears in one
frame only (an instrument entering, a specular flash): the region is wrongly matched in both
directions and the cycle closes. DIS runs at full resolution (`finest_scale` 0; the presets stop at
half or quarter resolution, which smooths sub-pixel motion away: on the hard 256×192 scenes the DIS-chain
baseline's EPE 0.82 → 0.65 px). `dis_min_width_px` lets wide frames skip the finest levels (`dis_level`):
on the hard 1280×1024 synthetic clip level 1 (640×512) has less error per flow at the ground-truth tracks
(gap 1: 0.12 against 0.17 px mean) in a fifth of the time, but the fit's tracks are about 10 % worse
(mean EPE 0.87-0.88 against 0.77-0.85 px over two fits each), so it is a speed option, off by default.
At full resolution DIS can also piece a region seen once together from unrelated texture well enough to
pass the appearance test; such a flow is rough, hence that test. Several gaps, keeping the reliable
flows, is MFT's lesson without learned weights; `chains.py` composes the bank into long-range pairs.

Memory: the bank holds Q = 2·Σ_g (T − g) pairs of (H, W, 2) float32 flow, (H, W) float32 cycle
error and (H, W) bool: 13 bytes a pixel a pair. At 256×192 with T = 48 and gaps (1, 2, 4, 8) that is
354 pairs, about 230 MB; at 640×512 about 1.5 GB, so bank large images over windows of frames.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from ..config import FlowConfig
from ..errors import InputError
from .workers import thread_map

_PRESETS = {
    "ultrafast": cv2.DISOpticalFlow_PRESET_ULTRAFAST,
    "fast": cv2.DISOpticalFlow_PRESET_FAST,
    "medium": cv2.DISOpticalFlow_PRESET_MEDIUM,
}


def _refuse_non_rgb(name: str, shape: tuple[int, ...], dtype: Any, ndim: int) -> None:
    """The rule of `check_rgb_u8` and `check_rgb_frames` on a shape and dtype."""
    if len(shape) != ndim or shape[-1] != 3 or np.dtype(dtype) != np.uint8:
        want = "(H, W, 3)" if ndim == 3 else "(T, H, W, 3)"
        raise InputError(f"{name}: expected uint8 {want}, got {np.dtype(dtype)} {tuple(shape)}", reason="bad_image")


def check_rgb_u8(name: str, rgb_u8: np.ndarray, ndim: int = 3) -> np.ndarray:
    """Refuse anything but uint8 RGB of the expected rank: (H, W, 3) for ndim 3, (T, H, W, 3) for 4."""
    arr = np.asarray(rgb_u8)
    _refuse_non_rgb(name, arr.shape, arr.dtype, ndim)
    return arr


def check_same_size(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """Refuse two images (or stacks) whose shapes differ."""
    if a.shape != b.shape:
        raise InputError(f"{name_b}: expected the shape of {name_a} {a.shape}, got {b.shape}", reason="size_mismatch")


def check_rgb_frames(name: str, frames: Any) -> Any:
    """Refuse anything but (T, H, W, 3) uint8 RGB frames, without reading them: an array, or a stack that
    decodes a frame when it is indexed (`io.sequence.FrameStack`). Returns `frames` as given."""
    if getattr(frames, "shape", None) is None or getattr(frames, "dtype", None) is None:
        frames = np.asarray(frames)
    _refuse_non_rgb(name, tuple(frames.shape), frames.dtype, 4)
    return frames


class GreyFrames:
    """The grey frames of a (T, H, W, 3) RGB stack, converted when first read.

    The most recently read frames are held, up to `max_bytes`: a clip in RAM is converted once, a long
    clip decoded from disk is never held whole (a frame read again after it left is decoded again).
    Safe to read from several threads.
    """

    def __init__(self, frames: Any, max_bytes: float = 256 * 2**20) -> None:
        self.frames = frames
        T, H, W = (int(n) for n in frames.shape[:3])
        self.shape = (T, H, W)
        self.keep = max(2, int(max_bytes // max(H * W, 1)))
        self._held: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: int) -> np.ndarray:
        t = int(t)
        with self._lock:
            grey = self._held.get(t)
            if grey is not None:
                self._held.move_to_end(t)
                return grey
        grey = to_grey(np.asarray(self.frames[t]))
        with self._lock:
            self._held[t] = grey
            while len(self._held) > self.keep:
                self._held.popitem(last=False)
        return grey


def to_grey(rgb_u8: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 → (H, W) grey uint8 (the input DIS, LK and SGBM work on)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb_u8), cv2.COLOR_RGB2GRAY)


def dis_level(finest_scale: int, min_width_px: int, width_px: int) -> int:
    """DIS's finest pyramid level for frames `width_px` wide: at least `finest_scale`, and raised while
    the next coarser level is still at least `min_width_px` wide (0 = never raised)."""
    level = finest_scale
    if min_width_px > 0:
        while (width_px >> (level + 1)) >= min_width_px:
            level += 1
    return level


def make_dis(cfg: FlowConfig, width_px: int) -> cv2.DISOpticalFlow:
    """A DIS instance for the configured preset, at the finest level `dis_level` picks for frames
    `width_px` wide (not thread-safe: one per thread)."""
    dis = cv2.DISOpticalFlow.create(_PRESETS[cfg.preset])
    dis.setFinestScale(dis_level(cfg.finest_scale, cfg.dis_min_width_px, width_px))
    return dis


def dis_flow(src_rgb_u8: np.ndarray, dst_rgb_u8: np.ndarray, cfg: FlowConfig) -> np.ndarray:
    """DIS flow from src to dst: (H, W, 2) float32 with uv_dst = uv_src + flow (pixels)."""
    src = check_rgb_u8("dis_flow: src_rgb_u8", src_rgb_u8)
    dst = check_rgb_u8("dis_flow: dst_rgb_u8", dst_rgb_u8)
    check_same_size("src_rgb_u8", src, "dis_flow: dst_rgb_u8", dst)
    return dis_grey_flow(make_dis(cfg, src.shape[1]), to_grey(src), to_grey(dst))


def dis_grey_flow(dis: cv2.DISOpticalFlow, src_grey: np.ndarray, dst_grey: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 flow of `dis` from one grey image to the other (uv_dst = uv_src + flow)."""
    flow = dis.calc(src_grey, dst_grey, None)  # pyright: ignore[reportCallIssue, reportArgumentType]  (stubs lack flow=None)
    return flow.astype(np.float32, copy=False)


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 u and v coordinates of every pixel centre."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return u, v


def warp_sample(image: np.ndarray, flow_px: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bilinear look-up of `image` (H, W[, C]) float32 at x + flow(x); edges replicate (callers mask
    targets outside the image themselves)."""
    map_u = grid[0] + flow_px[..., 0]
    map_v = grid[1] + flow_px[..., 1]
    return cv2.remap(image, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def inside_image(flow_px: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(H, W) bool: x + flow(x) lies inside the image (pixel centres 0 … W−1, 0 … H−1)."""
    H, W = flow_px.shape[:2]
    u = grid[0] + flow_px[..., 0]
    v = grid[1] + flow_px[..., 1]
    return (u >= 0) & (v >= 0) & (u <= W - 1) & (v <= H - 1)


def cycle_error_px(fwd_px: np.ndarray, bwd_px: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """|F_ij(x) + F_ji(x + F_ij(x))| in pixels, (H, W) float32; +inf where the target leaves the image."""
    back = warp_sample(bwd_px, fwd_px, grid)  # (H, W, 2)
    s = fwd_px + back
    err = np.hypot(s[..., 0], s[..., 1]).astype(np.float32)
    err[~inside_image(fwd_px, grid)] = np.inf
    return err


_ROUGH_WIN = (5, 5)


def flow_roughness_px(flow_px: np.ndarray) -> np.ndarray:
    """(H, W) float32 distance between each pixel's flow and the mean flow of its 5×5 neighbourhood."""
    dev = flow_px - cv2.blur(flow_px, _ROUGH_WIN)
    return np.hypot(dev[..., 0], dev[..., 1])


_PHOTO_WIN = (7, 7)
_MIN_STD = 4.0  # grey levels: below this a window is flat and NCC means nothing


def photo_consistent(src_grey: np.ndarray, dst_grey: np.ndarray, flow_px: np.ndarray,
                     grid: tuple[np.ndarray, np.ndarray], cfg: FlowConfig) -> np.ndarray:
    """(H, W) bool: the destination, warped back by the flow, looks like the source in 7×7 windows.

    NCC (gain- and offset-invariant, so lighting changes pass) decides where both windows have
    texture; texture on one side only (contrast ratio under 1/2) fails; the mean absolute
    difference bounds the rest.
    """
    a = src_grey.astype(np.float32)
    b = warp_sample(dst_grey.astype(np.float32), flow_px, grid)
    ok = np.ones(a.shape, bool)
    if cfg.photo_thresh > 0:
        ok &= cv2.blur(np.abs(b - a), _PHOTO_WIN) <= cfg.photo_thresh
    if cfg.min_ncc > -1:
        mu_a, mu_b = cv2.blur(a, _PHOTO_WIN), cv2.blur(b, _PHOTO_WIN)
        var_a = np.maximum(cv2.blur(a * a, _PHOTO_WIN) - mu_a * mu_a, 0)
        var_b = np.maximum(cv2.blur(b * b, _PHOTO_WIN) - mu_b * mu_b, 0)
        cov = cv2.blur(a * b, _PHOTO_WIN) - mu_a * mu_b
        textured = (var_a >= _MIN_STD**2) & (var_b >= _MIN_STD**2)
        ncc = cov / np.sqrt(np.maximum(var_a * var_b, 1e-6))
        ok &= ~textured | (ncc >= cfg.min_ncc)
        # Texture on one side only (a flat instrument over tissue): contrast ratio under 1/2.
        lo, hi = np.minimum(var_a, var_b), np.maximum(var_a, var_b)
        ok &= (hi < _MIN_STD**2) | (lo >= 0.25 * hi)
    return ok


@dataclass
class FlowBank:
    """DIS flows of every gap pair, both ways, with their cycle checks.

    Attributes:
        pairs: (Q, 2) int64 rows [i, j]: flow from frame i to frame j.
        flow_px: (Q, H, W, 2) float32; pixel (u, v) of frame i lands at (u, v) + flow in frame j.
        valid: (Q, H, W) bool; cycle closed, target in the image, neither end masked.
        cycle_err_px: (Q, H, W) float32 forward-backward error (+inf where the target leaves the image).
    """

    pairs: np.ndarray
    flow_px: np.ndarray
    valid: np.ndarray
    cycle_err_px: np.ndarray

    def index(self) -> dict[tuple[int, int], int]:
        """{(i, j): row} for looking pairs up."""
        return {(int(i), int(j)): q for q, (i, j) in enumerate(self.pairs)}

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.flow_px.shape[1]), int(self.flow_px.shape[2])


def gap_pairs(num_frames: int, gaps: tuple[int, ...]) -> np.ndarray:
    """(Q, 2) int64 pairs [i, i+g] and [i+g, i] for every gap g < num_frames, the two ways adjacent."""
    rows = [(i, i + g, i + g, i) for g in sorted(set(gaps)) if g < num_frames for i in range(num_frames - g)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def checked_flow_pair(
    dis: cv2.DISOpticalFlow, grey_i: np.ndarray, grey_j: np.ndarray, grid: tuple[np.ndarray, np.ndarray],
    cfg: FlowConfig, mask_i: np.ndarray | None = None, mask_j: np.ndarray | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """DIS flow i→j and j→i with their checks: ((flow_ij, valid_ij, cycle_ij), (flow_ji, ...)).

    Shapes (H, W, 2) float32, (H, W) bool, (H, W) float32; masks (H, W) bool, True = excluded.
    """
    H, W = grey_i.shape
    flows = (dis_grey_flow(dis, grey_i, grey_j), dis_grey_flow(dis, grey_j, grey_i))
    greys, masks = (grey_i, grey_j), (mask_i, mask_j)
    out = []
    for a in (0, 1):
        b = 1 - a
        cycle = cycle_error_px(flows[a], flows[b], grid)
        ok = cycle < cfg.cycle_thresh_px
        if cfg.max_roughness_px > 0:
            ok &= flow_roughness_px(flows[a]) <= cfg.max_roughness_px
        ok &= photo_consistent(greys[a], greys[b], flows[a], grid, cfg)
        mask_a, mask_b = masks[a], masks[b]
        if mask_a is not None:
            ok &= ~mask_a
        if mask_b is not None:
            tgt_u = np.clip(np.rint(grid[0] + flows[a][..., 0]), 0, W - 1).astype(np.intp)
            tgt_v = np.clip(np.rint(grid[1] + flows[a][..., 1]), 0, H - 1).astype(np.intp)
            ok &= ~mask_b[tgt_v, tgt_u]
        out.append((flows[a], ok, cycle))
    return out[0], out[1]


def compute_flow_bank(
    left_rgb_u8: np.ndarray,
    cfg: FlowConfig,
    mask: np.ndarray | None = None,
    progress: Callable[[int], object] | None = None,
    workers: int = 0,
) -> FlowBank:
    """DIS flow for every gap pair both ways, kept where the forward-backward cycle closes.

    Args:
        left_rgb_u8: (T, H, W, 3) uint8 rectified left images.
        cfg: gaps, DIS preset and the cycle threshold.
        mask: optional (T, H, W) bool, True = excluded (e.g. `masks.specular_mask`): a flow pixel is
            invalid if its source is masked or its target lands (nearest pixel) on a masked pixel.
        progress: called with 2 after each couple of flows (i→j and j→i), from the worker threads.
        workers: threads (0 = every CPU core); the bank does not depend on it.
    """
    grey, mask, grid = prepare_video(left_rgb_u8, mask, "compute_flow_bank")
    T, (H, W) = len(grey), grey[0].shape
    pairs = gap_pairs(T, cfg.gaps)
    Q = len(pairs)
    flow = np.empty((Q, H, W, 2), np.float32)
    valid = np.empty((Q, H, W), bool)
    cycle = np.empty((Q, H, W), np.float32)
    per_thread = threading.local()  # DIS instances are not thread-safe

    def couple(q: int) -> None:
        """Rows q, q+1: an adjacent (i→j, j→i) couple, so its cycle check uses both its flows."""
        if not hasattr(per_thread, "dis"):
            per_thread.dis = make_dis(cfg, W)
        i, j = pairs[q]
        fwd, bwd = checked_flow_pair(per_thread.dis, grey[i], grey[j], grid, cfg,
                                     None if mask is None else mask[i], None if mask is None else mask[j])
        flow[q], valid[q], cycle[q] = fwd
        flow[q + 1], valid[q + 1], cycle[q + 1] = bwd
        if progress is not None:
            progress(2)

    thread_map(couple, range(0, Q, 2), workers)
    return FlowBank(pairs=pairs, flow_px=flow, valid=valid, cycle_err_px=cycle)


def prepare_video(left_rgb_u8: Any, mask: np.ndarray | None, who: str
                  ) -> tuple[GreyFrames, np.ndarray | None, tuple[np.ndarray, np.ndarray]]:
    """Validated (grey frames, mask, pixel grid): what every multi-frame flow user needs. The frames may be
    an array or a stack decoded when indexed; grey frames are converted when read (`GreyFrames`)."""
    frames = check_rgb_frames(f"{who}: left_rgb_u8", left_rgb_u8)
    T, H, W = (int(n) for n in frames.shape[:3])
    return GreyFrames(frames), check_mask(mask, (T, H, W), who), pixel_grid(H, W)


def check_mask(mask: np.ndarray | None, shape: tuple[int, ...], who: str) -> np.ndarray | None:
    """A bool (T, H, W) mask of the frames' shape, or None."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise InputError(f"{who}: mask: expected shape {shape}, got {mask.shape}", reason="size_mismatch")
    return mask
