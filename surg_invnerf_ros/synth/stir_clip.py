"""A synthetic sequence written as a STIR clip, so the STIR path (import → track → eval, `stir-bench`)
runs and is scored against exact ground truth without the data set.

`write_stir_clip(seq_dir, clips_dir, name)` writes, from a synthetic sequence folder (rectified,
with `gt/tracks.npz`):
- `clips_dir/<name>/left/seq00/frames/video.mp4` and `right/…` (mp4v; lossy, as STIR's videos are),
- `clips_dir/<name>/calib.json` with STIR's keys (`leftcameramat`, `rightcameramat`,
  `leftdistortioncoeffs`, `rightdistortioncoeffs`, `translation` in metres, `rotation` Rodrigues),
and adds the clip to the label JSONs in `clips_dir` (`{clip key: points}`, keyed like STIRMetrics
by `<name>/left/seq00`): `start.json` / `end.json` (px) and `start_3d.json` / `end_3d.json` (mm) —
the ground truth of the points visible at the first frame, at the first and at the last frame
(end labels: those still visible there).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..io.sequence import read_sequence
from ..io.trackfile import atomic_write, read_tracks

LABEL_FILES = {"start": "start.json", "end": "end.json", "start_3d": "start_3d.json", "end_3d": "end_3d.json"}


def _write_video(path: Path, frames_rgb: np.ndarray, fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    H, W = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (W, H))
    if not writer.isOpened():
        raise InputError(f"{path}: OpenCV cannot write mp4v video here", "bad_video")
    for f in frames_rgb:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def _add_labels(path: Path, key: str, points: np.ndarray) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = np.asarray(points, np.float64).tolist()
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data)))


def write_stir_clip(seq_dir: str | Path, clips_dir: str | Path, name: str) -> str:
    """Write the synthetic sequence `seq_dir` as STIR clip `clips_dir/name`; the clip's label key.

    Raises:
        InputError: the sequence has no ground truth or is not rectified, or no point is visible in
            the first frame.
    """
    seq_dir, clips_dir = Path(seq_dir), Path(clips_dir)
    seq = read_sequence(seq_dir)
    if seq.rectify is not None:
        raise InputError(f"{seq_dir}: expected a rectified synthetic sequence", "bad_calib")
    gt_path = seq_dir / "gt" / "tracks.npz"
    if not gt_path.is_file():
        raise InputError(f"{gt_path}: ground truth not found", "missing_file")
    gt = read_tracks(gt_path)
    start = gt.visible[0].astype(bool)
    if not start.any():
        raise InputError(f"{gt_path}: no point is visible in the first frame", "bad_labels")
    end = start & gt.visible[-1].astype(bool)
    clip = clips_dir / name
    fps = seq.calib.fps or 30.0
    _write_video(clip / "left" / "seq00" / "frames" / "video.mp4", seq.left_rgb_u8, fps)
    _write_video(clip / "right" / "seq00" / "frames" / "video.mp4", seq.right_rgb_u8, fps)
    K = np.asarray(seq.calib.K, np.float64)
    calib = {"leftcameramat": K.tolist(), "rightcameramat": K.tolist(),
             "leftdistortioncoeffs": [[0.0] * 5], "rightdistortioncoeffs": [[0.0] * 5],
             "translation": [[-float(seq.calib.baseline_m)], [0.0], [0.0]], "rotation": [0.0, 0.0, 0.0]}
    (clip / "calib.json").write_text(json.dumps(calib))
    key = f"{name}/left/seq00"
    _add_labels(clips_dir / LABEL_FILES["start"], key, gt.uv[0][start])
    _add_labels(clips_dir / LABEL_FILES["end"], key, gt.uv[-1][end])
    _add_labels(clips_dir / LABEL_FILES["start_3d"], key, gt.xyz[0][start] * 1000.0)
    _add_labels(clips_dir / LABEL_FILES["end_3d"], key, gt.xyz[-1][end] * 1000.0)
    return key
