"""SCARED keyframes → sequence folders (DESIGN §2.3): stacked stereo video and per-frame poses.

A SCARED keyframe's `data/` holds `rgb.mp4`, whose frames stack the left image over the right
one, and `frame_data/frame_dataNNNNNN.json` (extracted from frame_data.tar.gz), each with a 4×4
`camera-pose` and a `camera-calibration` (`KL`, `KR`, `DL`, `DR`, `R`, `T`). SCARED lengths are
millimetres; we store metres. `camera-pose` is read as world → camera (x_cam = pose · x_world),
the way most SCARED loaders use it, and inverted to T_world_cam; pass `pose_is_cam_world=False`
for files that already hold camera → world.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import cv2
import numpy as np

from ..errors import InputError
from ..geometry import invert_T
from ..structs import Queries
from .calib import RawCalib, calib_from_mapping, flat_numbers_field, numbers_field
from .kinematics import write_kinematics
from .sequence import write_sequence

log = logging.getLogger(__name__)

MM_TO_M = 1e-3


def scared_frames(
    path: str | Path, max_frames: int | None = None, stack: Literal["vertical", "horizontal"] = "vertical"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield RGB (left, right) frames split from a stacked video (left on top, or on the left).

    Raises InputError naming the file if it cannot be opened or has no decodable frame, or if the
    stacked axis has an odd length.
    """
    path = Path(path)
    cap = cv2.VideoCapture(str(path))
    try:
        n = 0
        while max_frames is None or n < max_frames:
            ok, bgr = cap.read() if cap.isOpened() else (False, None)
            if not ok or bgr is None:
                if n == 0:
                    raise InputError(f"{path}: unreadable video (cannot open or decode a frame)", "bad_video")
                return
            axis = 0 if stack == "vertical" else 1
            if bgr.shape[axis] % 2:
                raise InputError(f"{path}: a {stack} stereo stack needs an even "
                                 f"{'height' if axis == 0 else 'width'}, got {bgr.shape[axis]}", "bad_video")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            left, right = np.split(rgb, 2, axis=axis)
            n += 1
            yield np.ascontiguousarray(left), np.ascontiguousarray(right)
    finally:
        cap.release()


def frame_data_files(frame_data_dir: str | Path) -> list[Path]:
    """The per-frame JSON files of a keyframe, in frame order."""
    d = Path(frame_data_dir)
    if not d.is_dir():
        raise InputError(f"{d}: frame_data folder not found (extract frame_data.tar.gz)", "missing_file")
    files = sorted(d.glob("*.json"))
    if not files:
        raise InputError(f"{d}: no per-frame .json files", "missing_file")
    return files


def read_scared_poses(
    files: list[Path], translation_unit_m: float = MM_TO_M, pose_is_cam_world: bool = True
) -> np.ndarray:
    """(T, 4, 4) float64 T_world_cam (metres) from the per-frame JSONs' `camera-pose`."""
    poses = np.empty((len(files), 4, 4))
    for i, f in enumerate(files):
        pose = numbers_field(_frame_json(f), "camera-pose", str(f), (4, 4))
        R = pose[:3, :3]
        if not np.allclose(pose[3], [0, 0, 0, 1]) or not np.allclose(R.T @ R, np.eye(3), atol=1e-3):
            raise InputError(f"{f}: camera-pose: expected a rigid 4x4 transform", "bad_kinematics")
        pose = pose.copy()
        pose[:3, 3] *= translation_unit_m
        poses[i] = pose
    return invert_T(poses) if pose_is_cam_world else poses


def read_scared_calib(
    path: str | Path, image_size: tuple[int, int], fps: float, translation_unit_m: float = MM_TO_M
) -> RawCalib:
    """A per-frame JSON's `camera-calibration` (KL, KR, DL, DR, R, T in mm) → `RawCalib` (metres)."""
    path = Path(path)
    data = _frame_json(path).get("camera-calibration")
    where = f"{path}: camera-calibration"
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: missing", "bad_calib")
    mapping = {
        "image_size": [int(image_size[0]), int(image_size[1])],
        "K_left": numbers_field(data, "KL", where, (3, 3)).tolist(),
        "K_right": numbers_field(data, "KR", where, (3, 3)).tolist(),
        "R": numbers_field(data, "R", where, (3, 3)).tolist(),
        "T": (flat_numbers_field(data, "T", where) * translation_unit_m).tolist(),
        "rectified": False,
        "fps": float(fps),
    }
    for ours, theirs in (("D_left", "DL"), ("D_right", "DR")):
        if theirs in data:
            mapping[ours] = flat_numbers_field(data, theirs, where).tolist()
    return calib_from_mapping(mapping, where)


def scared_to_sequence(
    data_dir: str | Path,
    out_dir: str | Path,
    query_uv_px: np.ndarray | None = None,
    max_frames: int | None = None,
    progress: Callable[[int], object] | None = None,
    stack: Literal["vertical", "horizontal"] = "vertical",
    pose_is_cam_world: bool = True,
) -> Path:
    """Convert a SCARED keyframe `data/` folder (rgb.mp4 + frame_data/) to a sequence folder.

    Args:
        data_dir: folder with `rgb.mp4` and `frame_data/*.json`.
        out_dir: the sequence folder to write (raw calibration, rectified on load; kinematics.csv).
        query_uv_px: (N, 2) raw left pixels queried at frame 0; default a 4×3 grid over the middle.
        max_frames: keep only the first frames.
        progress: called with 1 after each stereo frame is written.
        stack: how rgb.mp4 stacks the pair (left first).
        pose_is_cam_world: see the module docstring.
    """
    data_dir = Path(data_dir)
    video = data_dir / "rgb.mp4"
    if not video.is_file():
        raise InputError(f"{video}: video not found", "missing_file")
    files = frame_data_files(data_dir / "frame_data")
    limit = len(files) if max_frames is None else min(max_frames, len(files))
    first_left, _ = next(scared_frames(video, 1, stack))
    H, W = first_left.shape[:2]
    cap = cv2.VideoCapture(str(video))
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    cap.release()
    if not np.isfinite(fps) or fps <= 0:
        log.warning("%s: no frame rate in the container; assuming 25 fps", video)
        fps = 25.0
    raw = read_scared_calib(files[0], (W, H), fps)
    if query_uv_px is None:
        uu, vv = np.meshgrid(np.linspace(0.2, 0.8, 4) * (W - 1), np.linspace(0.25, 0.75, 3) * (H - 1))
        query_uv_px = np.stack([uu.ravel(), vv.ravel()], axis=-1)
    uv = np.asarray(query_uv_px, dtype=np.float64).reshape(-1, 2)
    queries = Queries(ids=np.arange(len(uv), dtype=np.int64), query_tuv=np.column_stack([np.zeros(len(uv)), uv]))

    state: dict[str, Any] = {"count": 0}

    def counted() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for pair in scared_frames(video, limit, stack):
            state["count"] += 1
            yield pair

    T_world_cam = read_scared_poses(files[:limit], pose_is_cam_world=pose_is_cam_world)  # fail before writing
    left_it, right_it = itertools.tee(counted())

    def finish(tmp: Path) -> None:  # before the rename: the poses come with the frames or not at all
        num_frames = state["count"]
        if num_frames < limit:
            log.warning("%s: %d video frames for %d poses; kept %d", data_dir, num_frames, limit, num_frames)
        write_kinematics(tmp / "kinematics.csv", T_world_cam[:num_frames])

    return write_sequence(out_dir, (p[0] for p in left_it), (p[1] for p in right_it), raw.to_dict(), queries,
                          progress=progress, finish=finish)


def _frame_json(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON file ({type(err).__name__})", "bad_json") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: expected a JSON object", "bad_json")
    return data
