"""Scoring a track file against a sequence folder (`surg-invnerf eval`, the benchmarks).

Two kinds of ground truth, either or both:
- `SEQ/gt/tracks.npz` (synthetic sequences): every metric of `metrics.compute_metrics`, with the
  query frames of `SEQ/queries.csv` and the image size of `SEQ/calib.yaml`;
- `SEQ/gt/stir_end.json` (a STIR clip imported with its labels): STIR δ in 2D and 3D with the
  zero-motion control, as STIRMetrics computes them (`eval/stir.py`); these replace the `stir_*`
  values computed from dense ground truth.
"""

from __future__ import annotations

from pathlib import Path

from ..config import TapVidConfig
from ..errors import InputError
from ..io.calib import read_calib
from ..io.stir import GT_END_FILE
from ..io.trackfile import read_tracks
from .metrics import compute_metrics, read_query_frames
from .stir import pooled_stir_scores, read_stir_end, stir_distances

GT_TRACKS_FILE = "gt/tracks.npz"


def evaluate_files(seq_dir: str | Path, pred_path: str | Path, tapvid: TapVidConfig | None = None) -> dict[str, float]:
    """Metrics of a track file against a sequence folder's ground truth.

    Raises:
        InputError: neither ground truth exists, or a file is missing or malformed (named).
    """
    seq_dir = Path(seq_dir)
    gt_path, stir_path = seq_dir / GT_TRACKS_FILE, seq_dir / GT_END_FILE
    if not gt_path.is_file() and not stir_path.is_file():
        raise InputError(f"{gt_path}: ground truth not found (synthetic sequences carry {GT_TRACKS_FILE}, "
                         f"STIR clips imported with labels {GT_END_FILE})", "missing_file")
    pred = read_tracks(pred_path)
    out: dict[str, float] = {}
    try:
        if gt_path.is_file():
            gt = read_tracks(gt_path)
            calib_path = seq_dir / "calib.yaml"
            size = read_calib(calib_path).image_size if calib_path.is_file() else None
            out.update(compute_metrics(pred, gt, read_query_frames(seq_dir / "queries.csv", gt), tapvid, size))
        if stir_path.is_file():
            out.update(pooled_stir_scores([stir_distances(pred, read_stir_end(stir_path))]))
    except InputError as err:
        raise InputError(f"{pred_path}: {str(err).removeprefix('pred: ')}", err.reason) from None
    return out
