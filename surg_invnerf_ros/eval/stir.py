"""STIR scoring against label files, as STIRMetrics computes it (DESIGN §4).

STIR labels carry no identity at the end frame: every *predicted* end point of a point tracked
from the start frame is scored against the *nearest* labelled end point (a KD-tree query from the
predictions into the labels), and accuracy at a threshold is the share of those distances <= the
threshold: 2D {4, 8, 16, 32, 64} px, 3D {2, 4, 8, 16, 32} mm, δ = their mean. The zero-motion
control scores the start labels the same way. Over several clips the distances are **pooled**
(concatenated, then the accuracies taken), not averaged per clip.

Where this differs from the official scripts, on purpose:
- a non-finite prediction (a point the tracker lost, NaN) is a failure at every threshold (an
  infinite distance); the official KD-tree query fails on it instead;
- a start point missing from the prediction is a failure too (the official scripts take whatever
  list the prediction JSON holds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..io.stir import label_points
from ..structs import Tracks
from .metrics import STIR_THRESHOLDS_2D_PX, STIR_THRESHOLDS_3D_MM, nearest_distances, stir_accuracies


@dataclass(frozen=True)
class StirLabels:
    """A clip's STIR labels (`gt/stir_end.json`, written by `stir-import`).

    Attributes:
        clip: the clip's key in the label JSONs (STIRMetrics keys clips by the left seq path).
        end_frame: index of the labelled end frame in the sequence.
        start_uv_px: (N, 2) start labels, raw left pixels; query i of the sequence is start point i.
        end_uv_px: (M, 2) end labels, raw left pixels, or None.
        start_xyz_mm: (N, 3) start labels in mm (left camera frame), or None (no 3D control).
        end_xyz_mm: (M, 3) end labels in mm, or None.
    """

    clip: str
    end_frame: int
    start_uv_px: np.ndarray
    end_uv_px: np.ndarray | None = None
    start_xyz_mm: np.ndarray | None = None
    end_xyz_mm: np.ndarray | None = None


def _points(data: Mapping[str, Any], key: str, dims: int, path: Path, required: bool = False) -> np.ndarray | None:
    if key not in data:
        if required:
            raise InputError(f"{path}: {key}: missing", "bad_labels")
        return None
    return label_points(data[key], dims, f"{path}: {key}")


def read_stir_end(path: str | Path) -> StirLabels:
    """Read `gt/stir_end.json`; a missing or malformed field is one InputError naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: STIR labels not found (written by stir-import with --end-json)", "missing_file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({str(err).splitlines()[0]})", "bad_json") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: expected a JSON object with clip, end_frame and start_uv_px", "bad_labels")
    if not isinstance(data.get("clip"), str):
        raise InputError(f"{path}: clip: expected the clip's name (a string)", "bad_labels")
    end_frame = data.get("end_frame")
    if not isinstance(end_frame, int) or isinstance(end_frame, bool) or end_frame < 0:
        raise InputError(f"{path}: end_frame: expected a frame index >= 0, got {end_frame!r}", "bad_labels")
    start = _points(data, "start_uv_px", 2, path, required=True)
    assert start is not None
    labels = StirLabels(clip=data["clip"], end_frame=end_frame, start_uv_px=start,
                        end_uv_px=_points(data, "end_uv_px", 2, path),
                        start_xyz_mm=_points(data, "start_xyz_mm", 3, path),
                        end_xyz_mm=_points(data, "end_xyz_mm", 3, path))
    if labels.end_uv_px is None and labels.end_xyz_mm is None:
        raise InputError(f"{path}: end_uv_px: missing (and no end_xyz_mm): nothing to score against", "bad_labels")
    if labels.start_xyz_mm is not None and len(labels.start_xyz_mm) != len(start):
        raise InputError(f"{path}: start_xyz_mm: expected {len(start)} points (as start_uv_px), got "
                         f"{len(labels.start_xyz_mm)}", "bad_labels")
    return labels


@dataclass(frozen=True)
class StirDistances:
    """One clip's point distances to the nearest end label (px, mm); None where a label set is absent."""

    clip: str
    model_2d_px: np.ndarray | None
    control_2d_px: np.ndarray | None
    model_3d_mm: np.ndarray | None
    control_3d_mm: np.ndarray | None


def end_points(tracks: Tracks, labels: StirLabels) -> tuple[np.ndarray, np.ndarray]:
    """The start points' predictions at `labels.end_frame`: (N, 2) px and (N, 3) mm, in start-label
    order (start point i is query id i); NaN for an id the prediction lacks.

    Raises:
        InputError: the prediction has too few frames for the labelled end frame.
    """
    T = tracks.uv.shape[0]
    if labels.end_frame >= T:
        raise InputError(f"pred: uv: expected at least {labels.end_frame + 1} frames (end_frame "
                         f"{labels.end_frame} of clip {labels.clip}), got {T}", "frame_count")
    n = len(labels.start_uv_px)
    start_ids = np.arange(n)
    order = np.argsort(tracks.ids, kind="stable")
    pos = np.clip(np.searchsorted(tracks.ids[order], start_ids), 0, max(len(order) - 1, 0))
    found = (tracks.ids[order][pos] == start_ids) if len(order) else np.zeros(n, bool)
    col = order[pos]
    uv = np.full((n, 2), np.nan)
    xyz_mm = np.full((n, 3), np.nan)
    uv[found] = tracks.uv[labels.end_frame, col[found]]
    xyz_mm[found] = np.asarray(tracks.xyz[labels.end_frame, col[found]], np.float64) * 1000.0
    return uv, xyz_mm


def stir_distances(tracks: Tracks, labels: StirLabels) -> StirDistances:
    """Distances of one clip, predictions taken at `labels.end_frame` for the start points (`end_points`)."""
    uv, xyz_mm = end_points(tracks, labels)

    def dist(pred: np.ndarray | None, gt: np.ndarray | None) -> np.ndarray | None:
        return None if pred is None or gt is None else nearest_distances(pred, gt)

    return StirDistances(clip=labels.clip, model_2d_px=dist(uv, labels.end_uv_px),
                         control_2d_px=dist(labels.start_uv_px, labels.end_uv_px),
                         model_3d_mm=dist(xyz_mm, labels.end_xyz_mm),
                         control_3d_mm=dist(labels.start_xyz_mm, labels.end_xyz_mm))


def _scores(prefix: str, parts: Sequence[np.ndarray | None], thresholds: tuple[float, ...]) -> dict[str, float]:
    present = [p for p in parts if p is not None]
    if not present:
        return {}
    acc = stir_accuracies(np.concatenate(present), thresholds)
    out = {f"{prefix}_{thr:g}": a for thr, a in acc.items()}
    out[prefix] = float(np.mean(list(acc.values())))
    return out


def pooled_stir_scores(clips: Sequence[StirDistances]) -> dict[str, float]:
    """STIR δ per threshold and averaged, of the model and the zero-motion control, over the distances
    of all `clips` pooled: `stir_delta2d`, `stir_delta2d_4` … `stir_delta2d_64`, `stir_control_delta2d…`,
    the same in 3D (`stir_delta3d`, mm) where labels exist, and `stir_points_2d` / `stir_points_3d`."""
    out: dict[str, float] = {}
    out.update(_scores("stir_delta2d", [c.model_2d_px for c in clips], STIR_THRESHOLDS_2D_PX))
    out.update(_scores("stir_control_delta2d", [c.control_2d_px for c in clips], STIR_THRESHOLDS_2D_PX))
    out.update(_scores("stir_delta3d", [c.model_3d_mm for c in clips], STIR_THRESHOLDS_3D_MM))
    out.update(_scores("stir_control_delta3d", [c.control_3d_mm for c in clips], STIR_THRESHOLDS_3D_MM))
    out["stir_points_2d"] = float(sum(len(c.model_2d_px) for c in clips if c.model_2d_px is not None))
    out["stir_points_3d"] = float(sum(len(c.model_3d_mm) for c in clips if c.model_3d_mm is not None))
    return out


def submission(tracks_by_clip: Mapping[str, Tracks], labels_by_clip: Mapping[str, StirLabels],
               with_3d: bool = False) -> dict[str, list[list[float]]]:
    """The challenge's prediction JSON: `{clip: [[u, v], …]}` (or `[[X, Y, Z], …]` mm) of the start
    points at each clip's end frame, in start-label order; a lost point is written as NaN."""
    out = {}
    for clip, tracks in tracks_by_clip.items():
        uv, xyz_mm = end_points(tracks, labels_by_clip[clip])
        out[clip] = (xyz_mm if with_3d else uv).tolist()
    return out
