"""Benchmark figures (DESIGN §4): accuracy against threshold per method, and an overlay contact
sheet of tracks on the left images.

Matplotlib runs on the Agg backend (no display), selected per figure, so importing this module
changes no global state. The contact sheet is drawn with OpenCV at native pixel size, so a point's
drawn position is its pixel position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping
from typing import Sequence as Seq

import cv2
import numpy as np

from ..io.trackfile import atomic_write
from ..structs import Sequence, Tracks
from .metrics import STIR_THRESHOLDS_2D_PX, STIR_THRESHOLDS_3D_MM, TAPVID_THRESHOLDS_PX, match_by_id

GT_COLOUR_RGB = (0, 255, 0)
METHOD_COLOURS_RGB = ((255, 64, 64), (64, 160, 255), (255, 200, 0), (255, 0, 255), (0, 255, 255),
                      (255, 128, 0), (160, 96, 255), (255, 255, 255))


def plot_accuracy_vs_threshold(rows: Seq[Mapping[str, Any]], path: str | Path,
                               thresholds_px: Seq[int] = TAPVID_THRESHOLDS_PX,
                               size_px: tuple[int, int] = (640, 400)) -> Path:
    """Line plot of TAP-Vid δ at each threshold per method, averaged over the rows (sequences).

    Args:
        rows: metric rows with `method` and `delta_<thr>` keys (NaN entries are skipped).
        path: output PNG.
        size_px: (W, H) of the PNG.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        group = [r for r in rows if r["method"] == method]
        ys = []
        for thr in thresholds_px:
            vals = np.array([float(r.get(f"delta_{thr}", np.nan)) for r in group])
            ys.append(np.nanmean(vals) if np.isfinite(vals).any() else np.nan)
        colour = np.array(METHOD_COLOURS_RGB[i % len(METHOD_COLOURS_RGB)]) / 255.0
        ax.plot(thresholds_px, ys, marker="o", label=method, color=colour * 0.85)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(thresholds_px))
    ax.set_xticklabels([str(t) for t in thresholds_px])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("threshold (px)")
    ax.set_ylabel("share of visible points within threshold")
    ax.set_title("TAP-Vid accuracy against threshold (mean over sequences)")
    ax.grid(True, alpha=0.3)
    if methods:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def plot_stir_accuracy(pooled: Mapping[str, Mapping[str, float]], path: str | Path,
                       size_px: tuple[int, int] = (900, 380)) -> Path:
    """STIR accuracy against the threshold, 2D (px) and 3D (mm) side by side: one line per method
    and a dashed one for the zero-motion control (keys of `stir.pooled_stir_scores`, per method)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    for k, (dim, unit, thresholds) in enumerate((("2d", "px", STIR_THRESHOLDS_2D_PX),
                                                 ("3d", "mm", STIR_THRESHOLDS_3D_MM))):
        ax = fig.add_subplot(1, 2, k + 1)
        control = None
        for i, (method, scores) in enumerate(pooled.items()):
            ys = [float(scores.get(f"stir_delta{dim}_{t}", np.nan)) for t in thresholds]
            colour = np.array(METHOD_COLOURS_RGB[i % len(METHOD_COLOURS_RGB)]) / 255.0 * 0.85
            ax.plot(thresholds, ys, marker="o", label=f"{method} (δ {scores.get(f'stir_delta{dim}', np.nan):.3f})",
                    color=colour)
            if control is None and f"stir_control_delta{dim}_{thresholds[0]}" in scores:
                control = [float(scores[f"stir_control_delta{dim}_{t}"]) for t in thresholds]
        if control is not None:
            ax.plot(thresholds, control, "--", color="0.4", label="zero motion")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(thresholds))
        ax.set_xticklabels([str(t) for t in thresholds])
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(f"threshold ({unit})")
        ax.set_ylabel("share of end points within threshold")
        ax.set_title(f"STIR {dim.upper()}, pooled over clips")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def contact_frames(num_frames: int, count: int = 4) -> list[int]:
    """`count` frames spread evenly from the first to the last."""
    return sorted(set(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(int).tolist()))


def _draw_panel(image_rgb_u8: np.ndarray, gt_uv: np.ndarray | None, gt_vis: np.ndarray | None,
                uv: np.ndarray | None, vis: np.ndarray | None, colour_rgb: tuple[int, int, int],
                label: str) -> np.ndarray:
    """One frame: GT (`gt_uv`, `gt_vis`: both or neither) as green rings, the method's points (`uv`, `vis`:
    both or neither) as dots, each joined to its GT by a line."""
    # Dim the image so the markers stand out; a dark frame separates the panels of the grid.
    panel = np.ascontiguousarray((image_rgb_u8.astype(np.float32) * 0.7).astype(np.uint8))
    H, W = panel.shape[:2]
    cv2.rectangle(panel, (0, 0), (W - 1, H - 1), (0, 0, 0), 1)
    radius = max(2, round(min(H, W) / 80))
    ok_gt = np.zeros(0, bool)  # read only with GT
    if gt_uv is not None and gt_vis is not None:
        ok_gt = np.isfinite(gt_uv).all(-1) & gt_vis
        for (u, v) in gt_uv[ok_gt]:
            cv2.circle(panel, (int(round(u)), int(round(v))), radius + 1, GT_COLOUR_RGB, 1, cv2.LINE_AA)
    if uv is not None and vis is not None:
        ok = np.isfinite(uv).all(-1)
        for j in np.flatnonzero(ok):
            p = (int(round(uv[j, 0])), int(round(uv[j, 1])))
            if gt_uv is not None and ok_gt[j]:
                cv2.line(panel, p, (int(round(gt_uv[j, 0])), int(round(gt_uv[j, 1]))), colour_rgb, 1, cv2.LINE_AA)
            cv2.circle(panel, p, radius, colour_rgb, -1 if vis[j] else 1, cv2.LINE_AA)
    scale = max(0.3, min(H, W) / 400)
    cv2.putText(panel, label, (3, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3,
                cv2.LINE_AA)
    cv2.putText(panel, label, (3, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return panel


def contact_sheet(seq: Sequence, tracks_by_method: Mapping[str, Tracks], gt: Tracks | None, path: str | Path,
                  frames: Seq[int] | None = None) -> Path:
    """Grid of left images: one row per method (with GT, a first row shows GT alone), one column per frame.

    Method rows show that method's points (filled when predicted visible, hollow when occluded). With
    GT, every panel also shows the GT points (green rings) and each method point is joined to its GT
    point (matched by id). The PNG is (rows·H, cols·W) at native resolution, rows = len(methods), plus
    one with GT.

    Args:
        seq: the sequence (left images, rectified pixels as the tracks).
        tracks_by_method: method name → its tracks.
        gt: ground-truth tracks, or None (real data): the method's points alone.
        frames: frame indices to show; None picks 4 evenly spread.
    """
    T = seq.num_frames
    frames = contact_frames(T) if frames is None else [int(f) for f in frames]
    bad = [f for f in frames if not 0 <= f < T]
    if bad:
        raise ValueError(f"frames: {bad[0]} outside 0..{T - 1}")
    rows = []
    if gt is not None:
        header = [_draw_panel(seq.left_rgb_u8[f], gt.uv[f], gt.visible[f], None, None, GT_COLOUR_RGB,
                              f"GT t={f}") for f in frames]
        rows.append(np.concatenate(header, axis=1))

    def gt_at(f: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        return (gt.uv[f], gt.visible[f]) if gt is not None else (None, None)

    for i, (method, tracks) in enumerate(tracks_by_method.items()):
        uv, vis = match_by_id(tracks, gt)[:2] if gt is not None else (tracks.uv, tracks.visible)
        colour = METHOD_COLOURS_RGB[i % len(METHOD_COLOURS_RGB)]
        row = [_draw_panel(seq.left_rgb_u8[f], *gt_at(f), uv[f], vis[f], colour, f"{method} t={f}") for f in frames]
        rows.append(np.concatenate(row, axis=1))
    if not rows:
        raise ValueError("tracks_by_method: nothing to draw without ground truth")
    sheet_bgr = cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR)

    def write(tmp: Path) -> None:
        ok, buf = cv2.imencode(".png", sheet_bgr)
        if not ok:  # pragma: no cover - only on an OpenCV build without PNG
            raise RuntimeError(f"{path}: PNG encoding failed")
        tmp.write_bytes(buf.tobytes())

    return atomic_write(path, write)
