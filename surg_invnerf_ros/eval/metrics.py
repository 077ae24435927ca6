"""Point-tracking metrics (DESIGN §4): EPE, TAP-Vid δ_avg, occlusion accuracy, Average Jaccard,
3D error, and STIR's nearest-ground-truth δ_avg in 2D and 3D.

Conventions:
- Predictions are matched to ground truth by id. A ground-truth id missing from the prediction, or a
  prediction with a NaN position, is a failure: infinite error (so `epe_px` and `err3d_mm` become
  `inf`) and predicted occluded. `*_finite_*` and `fail_frac` report the same errors without the
  failures, for tables where one lost point would otherwise hide the rest.
- TAP-Vid "query first" semantics: a point is evaluated only on frames strictly after its query
  frame (the query frame itself is given, so it would score a free hit). All frame-wise metrics
  are over visible ground truth at those frames, except OA and AJ, which also count occluded
  ground truth (a false "visible" there is a false positive).
- TAP-Vid thresholds {1, 2, 4, 8, 16} px count a point as within when its error is strictly
  below the threshold, as TAP-Vid's own evaluation does.
- `TapVidConfig` picks the rest, by default as TAP-Vid's evaluation: the query frame is the first
  visible one, a never-visible track is dropped, a NaN position predicted visible is a wrong visible
  prediction; δ, OA and AJ at the native resolution unless `size` (TAP-Vid publishes at 256×256).
  The other choices (`keep`, `queries`, `occluded`) were this project's earlier behaviour.
- STIR (STIRMetrics): at the end frame only, each *predicted* point is scored against the
  *nearest* ground-truth end point, whatever its id, with thresholds inclusive (error <= thr):
  2D {4, 8, 16, 32, 64} px, 3D {2, 4, 8, 16, 32} mm. That is how STIR's labels work (end-frame
  tattoo centres carry no identity); the ground-truth end set is the points visible at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial import KDTree

from ..config import TapVidConfig
from ..errors import InputError
from ..io.csvtable import read_csv_table
from ..structs import Queries, Tracks

TAPVID_THRESHOLDS_PX = (1, 2, 4, 8, 16)
STIR_THRESHOLDS_2D_PX = (4, 8, 16, 32, 64)
STIR_THRESHOLDS_3D_MM = (2, 4, 8, 16, 32)


def _ratio(num: float | np.ndarray, den: float | np.ndarray) -> float:
    """num/den as a float; NaN when there is nothing to evaluate."""
    return float(num) / float(den) if den > 0 else float("nan")


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of values[mask] (inf stays inf); NaN for an empty mask."""
    return float(values[mask].mean()) if mask.any() else float("nan")


def match_by_id(pred: Tracks, gt: Tracks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align predictions to the ground-truth ids.

    Returns:
        uv_px (T, N, 2), visible (T, N) bool, xyz_m (T, N, 3), in `gt.ids` order; a missing id
        gives NaN positions and `visible=False`.
    """
    T, N = gt.visible.shape
    if pred.uv.shape[0] != T:
        raise InputError(f"pred: uv: expected {T} frames (as the ground truth), got {pred.uv.shape[0]}",
                         "frame_count")
    order = np.argsort(pred.ids, kind="stable")
    sorted_ids = pred.ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, gt.ids), 0, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[pos] == gt.ids) if len(sorted_ids) else np.zeros(N, dtype=bool)
    col = order[pos[found]] if len(sorted_ids) else np.zeros(0, dtype=np.int64)
    uv = np.full((T, N, 2), np.nan, dtype=np.float64)
    vis = np.zeros((T, N), dtype=bool)
    xyz = np.full((T, N, 3), np.nan, dtype=np.float64)
    uv[:, found] = pred.uv[:, col]
    vis[:, found] = pred.visible[:, col]
    xyz[:, found] = pred.xyz[:, col]
    return uv, vis, xyz


def query_frames_from(gt: Tracks, queries: Queries | None = None) -> np.ndarray:
    """(N,) query frame of each ground-truth point, in `gt.ids` order.

    Taken from `queries` where it names the id; otherwise the first frame where the ground truth
    is visible (TAP-Vid's query-first sampling), or frame 0 for a never-visible point.
    """
    first_vis = np.where(gt.visible.any(axis=0), gt.visible.argmax(axis=0), 0).astype(np.int64)
    if queries is None or len(queries) == 0:
        return first_vis
    order = np.argsort(queries.ids, kind="stable")
    sorted_ids = queries.ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, gt.ids), 0, len(sorted_ids) - 1)
    found = sorted_ids[pos] == gt.ids
    out = first_vis.copy()
    out[found] = queries.frame_idx[order[pos[found]]]
    return out


def nearest_distances(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) distance from each predicted point (N, D) to the nearest ground-truth point (M, D).

    A non-finite prediction, or an empty ground-truth set, gives `inf`.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    gt = gt[np.isfinite(gt).all(axis=-1)] if gt.size else gt.reshape(0, pred.shape[-1])
    dist = np.full(pred.shape[0], np.inf)
    ok = np.isfinite(pred).all(axis=-1)
    if len(gt) and ok.any():
        dist[ok] = KDTree(gt).query(pred[ok], k=1)[0]
    return dist


def stir_accuracies(dist: np.ndarray, thresholds: tuple[float, ...]) -> dict[float, float]:
    """Share of distances <= each threshold (STIRMetrics' inclusive test); NaN for no points."""
    dist = np.asarray(dist, dtype=np.float64)
    return {thr: _ratio((dist <= thr).sum(), dist.size) for thr in thresholds}


def stir_delta_2d(pred_uv: np.ndarray, gt_uv: np.ndarray,
                  thresholds_px: tuple[float, ...] = STIR_THRESHOLDS_2D_PX) -> float:
    """STIR 2D δ_avg: mean over thresholds of the share of predicted end points (N, 2) px whose
    nearest ground-truth end point (M, 2) px lies within the threshold. N and M may differ."""
    acc = stir_accuracies(nearest_distances(pred_uv, gt_uv), thresholds_px)
    return float(np.mean(list(acc.values())))


def stir_delta_3d(pred_xyz_mm: np.ndarray, gt_xyz_mm: np.ndarray,
                  thresholds_mm: tuple[float, ...] = STIR_THRESHOLDS_3D_MM) -> float:
    """STIR 3D δ_avg, as `stir_delta_2d` on (N, 3) and (M, 3) points in millimetres."""
    acc = stir_accuracies(nearest_distances(pred_xyz_mm, gt_xyz_mm), thresholds_mm)
    return float(np.mean(list(acc.values())))


def frame_metrics(err_px: np.ndarray, pred_vis: np.ndarray, gt_vis: np.ndarray, evaluated: np.ndarray,
                  suffix: str = "") -> dict[str, float]:
    """EPE (over visible ground truth, whatever the prediction says), δ per threshold and δ_avg, OA and AJ
    over the `evaluated` entries of (T', N) arrays (TAP-Vid); keys end in `suffix`."""
    out: dict[str, float] = {}
    vis_eval = gt_vis & evaluated
    out[f"epe{suffix}_px"] = _masked_mean(err_px, vis_eval)
    deltas, jaccards = [], []
    for thr in TAPVID_THRESHOLDS_PX:
        within = err_px < thr  # inf (failure) is never within
        delta = _ratio((within & vis_eval).sum(), vis_eval.sum())
        tp = (pred_vis & within & vis_eval).sum()
        fp = (pred_vis & evaluated & (~gt_vis | ~within)).sum()
        fn = (vis_eval & (~pred_vis | ~within)).sum()
        jac = _ratio(tp, tp + fp + fn)
        deltas.append(delta)
        jaccards.append(jac)
        if not suffix:
            out[f"delta_{thr}"] = delta
    out[f"delta_avg{suffix}"] = float(np.mean(deltas))
    out[f"oa{suffix}"] = _ratio(((pred_vis == gt_vis) & evaluated).sum(), evaluated.sum())
    out[f"aj{suffix}"] = float(np.mean(jaccards))
    return out


def compute_metrics(pred: Tracks, gt: Tracks, query_frames: np.ndarray | None = None,
                    tapvid: TapVidConfig | None = None, image_size: tuple[int, int] | None = None) -> dict[str, float]:
    """All DESIGN §4 metrics of `pred` against ground truth `gt`, at all frames and at the end frame.

    Args:
        pred: predicted tracks; matched to `gt` by id, extra ids are ignored. Same frame count.
        gt: ground truth; `uv` px, `visible`, `xyz` metres (left optical frame of frame t).
        query_frames: (N,) query frame of each ground-truth point in `gt.ids` order, used with
            `tapvid.query_frame = queries`; None (or the default `first_visible`) takes the first
            frame where the ground truth is visible. Frames up to and including it are skipped.
        tapvid: TAP-Vid semantics (default `TapVidConfig()`: TAP-Vid's own).
        image_size: (W, H) of the sequence; needed for `tapvid.size`.

    Returns:
        Floats (NaN where nothing could be evaluated):
        `epe_px`, `epe_end_px` (mean end-point error, failures infinite), `epe_finite_px`,
        `fail_frac` (share of evaluated visible points with no finite prediction);
        `delta_1` … `delta_16`, `delta_avg`, `delta_avg_end` (TAP-Vid, strict <);
        `oa`, `oa_end`, `aj`, `aj_end`;
        `err3d_mm`, `err3d_end_mm` (failures infinite), `err3d_finite_mm`, `fail3d_frac`;
        `stir_delta2d`, `stir_delta3d` and per threshold `stir_delta2d_4` … `stir_delta3d_32`.
        `num_points`, `num_frames`.
    """
    tapvid = tapvid or TapVidConfig()
    T, N = gt.visible.shape
    uv, pred_vis, xyz = match_by_id(pred, gt)
    gt_vis = gt.visible.astype(bool)

    err_px = np.linalg.norm(uv - gt.uv.astype(np.float64), axis=-1)  # (T, N)
    err_px = np.where(np.isfinite(err_px), err_px, np.inf)  # missing id or NaN: a failure
    if tapvid.nan_visible == "occluded":
        pred_vis = pred_vis & np.isfinite(uv).all(axis=-1)
    err_tapvid = err_px
    if tapvid.size:
        if image_size is None:
            raise InputError("tapvid.size: needs the sequence's image size", "bad_argument")
        scale = np.array([tapvid.size / image_size[0], tapvid.size / image_size[1]])
        err_tapvid = np.linalg.norm((uv - gt.uv.astype(np.float64)) * scale, axis=-1)
        err_tapvid = np.where(np.isfinite(err_tapvid), err_tapvid, np.inf)

    given = query_frames_from(gt) if query_frames is None else np.asarray(query_frames, dtype=np.int64).reshape(-1)
    if given.shape[0] != N:
        raise InputError(f"query_frames: expected {N} entries (one per ground-truth id), got {given.shape[0]}",
                         "bad_queries")
    query_frames = query_frames_from(gt) if tapvid.query_frame == "first_visible" else given
    evaluated = np.arange(T)[:, None] > query_frames[None, :]  # (T, N) query-first
    if tapvid.never_visible == "drop":
        evaluated &= np.asarray(gt_vis.any(axis=0))[None, :]
    vis_eval = gt_vis & evaluated

    out: dict[str, float] = {"num_points": float(N), "num_frames": float(T)}
    out.update(frame_metrics(err_tapvid, pred_vis, gt_vis, evaluated, ""))
    out.update(frame_metrics(err_tapvid[-1:], pred_vis[-1:], gt_vis[-1:], evaluated[-1:], "_end"))
    out["epe_px"] = _masked_mean(err_px, vis_eval)  # native pixels, whatever tapvid.size
    out["epe_end_px"] = _masked_mean(err_px[-1:], vis_eval[-1:])
    finite = np.isfinite(err_px)
    out["epe_finite_px"] = _masked_mean(err_px, vis_eval & finite)
    out["fail_frac"] = _ratio((vis_eval & ~finite).sum(), vis_eval.sum())

    gt_xyz_mm = gt.xyz.astype(np.float64) * 1000.0
    xyz_mm = xyz * 1000.0
    err_mm = np.linalg.norm(xyz_mm - gt_xyz_mm, axis=-1)  # (T, N)
    err_mm = np.where(np.isfinite(err_mm), err_mm, np.inf)
    vis3d = vis_eval & np.isfinite(gt_xyz_mm).all(axis=-1)
    out["err3d_mm"] = _masked_mean(err_mm, vis3d)
    out["err3d_end_mm"] = _masked_mean(err_mm[-1], vis3d[-1])
    finite3d = np.isfinite(err_mm)
    out["err3d_finite_mm"] = _masked_mean(err_mm, vis3d & finite3d)
    out["fail3d_frac"] = _ratio((vis3d & ~finite3d).sum(), vis3d.sum())

    # STIR: the end point of every point tracked from the start frame against the nearest visible
    # ground-truth end point.
    end_vis = gt_vis[-1]
    start = given == 0
    acc2d = stir_accuracies(nearest_distances(uv[-1][start], gt.uv[-1][end_vis]), STIR_THRESHOLDS_2D_PX)
    acc3d = stir_accuracies(nearest_distances(xyz_mm[-1][start], gt_xyz_mm[-1][end_vis]), STIR_THRESHOLDS_3D_MM)
    scored = end_vis.any() and start.any()
    out["stir_delta2d"] = float(np.mean(list(acc2d.values()))) if scored else float("nan")
    out["stir_delta3d"] = float(np.mean(list(acc3d.values()))) if scored else float("nan")
    for thr, acc in acc2d.items():
        out[f"stir_delta2d_{thr}"] = acc if scored else float("nan")
    for thr, acc in acc3d.items():
        out[f"stir_delta3d_{thr}"] = acc if scored else float("nan")
    return out


def read_query_frames(path: str | Path, gt: Tracks) -> np.ndarray:
    """Query frames for `gt.ids` from a sequence folder's `queries.csv` (id,frame,u,v); ids it
    does not name, or a missing file, fall back to the first visible frame."""
    path = Path(path)
    if not path.is_file():
        return query_frames_from(gt)
    table = read_csv_table(path, ("id", "frame", "u", "v"), "iiff")
    if table["id"].size == 0:
        return query_frames_from(gt)
    queries = Queries(ids=table["id"], query_tuv=np.stack([table["frame"], table["u"], table["v"]], -1).astype(float))
    return query_frames_from(gt, queries)


def live_accuracy(frames: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Accuracy over (prediction, ground truth) frames of tracked_points records: mean and median 2D EPE (px)
    and mean 3D error (mm) where both say visible (3D where the prediction has depth), visibility accuracy,
    the share of visible predictions without 3D, and the TAP-Vid figures of the offline benchmark
    (`eval.metrics.frame_metrics`: EPE over visible ground truth whatever the prediction says, δ_avg, AJ) with
    the 3D error over visible ground truth. Frames whose ids differ from the ground truth's are left out
    (counted in `frames`, not in `point_frames`)."""
    pairs = [(p, g) for p, g in frames if len(p) == len(g) and np.array_equal(p["id"], g["id"])]
    nan = float("nan")
    if not pairs:
        return {"epe_px": nan, "epe_px_median": nan, "err_3d_mm": nan, "visibility_accuracy": nan,
                "no_3d_share": nan, "epe_gt_visible_px": nan, "err_3d_gt_visible_mm": nan, "delta_avg": nan,
                "aj": nan, "point_frames": 0, "frames": len(frames)}
    pred, gt = np.concatenate([p for p, _ in pairs]), np.concatenate([g for _, g in pairs])  # all point-frames
    shown, gt_vis = pred["visible"] == 1, gt["visible"] == 1
    e2 = np.hypot(pred["u"] - gt["u"], pred["v"] - gt["v"]).astype(np.float64)
    e2 = np.where(np.isfinite(e2), e2, np.inf)  # no position: a failure
    e3 = np.linalg.norm(np.stack([pred[c] - gt[c] for c in ("x", "y", "z")], axis=-1).astype(np.float64), axis=-1)
    both = shown & gt_vis
    a2, a3 = e2[both], e3[both]
    ok2, ok3 = np.isfinite(a2), np.isfinite(a3)
    tap = frame_metrics(e2[None], shown[None], gt_vis[None], np.ones((1, len(e2)), bool))
    g3 = e3[gt_vis & np.isfinite(e3)]  # points without depth: counted in `no_3d_share`, not here
    n_shown = int(shown.sum())
    return {"epe_px": float(a2[ok2].mean()) if ok2.any() else nan,
            "epe_px_median": float(np.median(a2[ok2])) if ok2.any() else nan,
            "err_3d_mm": float(a3[ok3].mean() * 1e3) if ok3.any() else nan,
            "visibility_accuracy": float((shown == gt_vis).mean()),
            "no_3d_share": float((shown & ~np.isfinite(pred["z"])).sum() / n_shown) if n_shown else nan,
            "epe_gt_visible_px": tap["epe_px"], "err_3d_gt_visible_mm": float(g3.mean() * 1e3) if len(g3) else nan,
            "delta_avg": tap["delta_avg"], "aj": tap["aj"], "point_frames": int(ok2.sum()), "frames": len(frames)}
