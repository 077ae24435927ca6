"""STIR clips → sequence folders (DESIGN §2.3).

A STIR clip folder (STIROrig or STIR Challenge) holds `left/seqNN/frames/*.mp4`,
`right/seqNN/frames/*.mp4` and a `calib.json` with the keys STIRLoader reads: `leftcameramat`,
`rightcameramat` (3×3), `leftdistortioncoeffs`, `rightdistortioncoeffs`, `translation` (metres,
X_right = R·X_left + T) and `rotation` (a Rodrigues vector). Queries are the IR-tattoo centres of
the first frame, from a label JSON (`{clip: [[x, y], …]}` or a bare list) or, failing that, from
the clip's own `segmentation/icgstartseg.png`. End-frame labels become `gt/stir_end.json`, so the
evaluation can score a track file STIRMetrics-style (nearest ground-truth point at the last frame).

The written folder keeps the raw pixels and calibration (`rectified: false`): `read_sequence`
rectifies on load and track files come back in the clip's own pixels, as STIR scores them.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from ..errors import InputError
from ..structs import Queries
from .calib import RawCalib, calib_from_mapping, flat_numbers_field, numbers_field
from .sequence import write_sequence

log = logging.getLogger(__name__)

GT_END_FILE = "gt/stir_end.json"

# Key names as STIR's calib.json spells them, then tolerated spellings.
_KEYS = {
    "K_left": ("leftcameramat", "leftcameramatrix", "K_left"),
    "K_right": ("rightcameramat", "rightcameramatrix", "K_right"),
    "D_left": ("leftdistortioncoeffs", "leftdistcoeffs", "leftdistortion", "D_left"),
    "D_right": ("rightdistortioncoeffs", "rightdistcoeffs", "rightdistortion", "D_right"),
    "T": ("translation", "T"),
    "R": ("rotation", "R"),
}


def stir_clip_to_sequence(
    clip_dir: str | Path,
    out_dir: str | Path,
    max_frames: int | None = None,
    progress: Callable[[int], object] | None = None,
    *,
    start_json: str | Path | None = None,
    end_json: str | Path | None = None,
    end_json_3d: str | Path | None = None,
    start_json_3d: str | Path | None = None,
    clip: str | None = None,
    seq: str | None = None,
) -> Path:
    """Convert one STIR clip to a sequence folder (raw calibration, rectified on load).

    Args:
        clip_dir: folder with `calib.json`, `left/` and `right/` (one .mp4 under each, searched
            recursively; `seq` picks `left/<seq>/…` when there are several).
        out_dir: the sequence folder to write (replaced if it exists).
        max_frames: keep only the first frames; the end labels then no longer apply and no
            `gt/stir_end.json` is written.
        progress: called with 1 after each stereo frame is written.
        start_json: 2D start labels (`{clip: [[x, y], …]}` or `[[x, y], …]`, pixels); default:
            centres of `segmentation/icgstartseg.png` next to the left video's `frames/`.
        end_json: 2D end labels (same forms); default: `segmentation/icgendseg.png` if present.
        end_json_3d: 3D end labels in millimetres (`{clip: [[X, Y, Z], …]}` or a list).
        start_json_3d: 3D start labels in millimetres, one per start label (the 3D zero-motion control).
        clip: the key of this clip in the label JSONs; default: the key whose path ends with
            `<clip_dir name>/left/<seq>`.
        seq: the sequence sub-folder (e.g. "seq01") when `left/` holds several.

    Returns:
        The sequence folder. Query ids are 0..N-1 at frame 0 in raw left pixels.
    """
    clip_dir = Path(clip_dir)
    if not clip_dir.is_dir():
        raise InputError(f"{clip_dir}: STIR clip folder not found", "missing_file")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames: expected >= 1, got {max_frames}", "bad_argument")
    left_mp4 = _find_video(clip_dir, "left", seq)
    right_mp4 = _find_video(clip_dir, "right", seq)
    W, H, fps = _probe_video(left_mp4)
    W_r, H_r, _ = _probe_video(right_mp4)
    if (W_r, H_r) != (W, H):
        raise InputError(f"{right_mp4}: expected {W}x{H} frames (as the left video), got {W_r}x{H_r}", "bad_video")
    raw = read_stir_calib(clip_dir / "calib.json", (W, H), fps)

    seq_dir = left_mp4.parent.parent if left_mp4.parent.name == "frames" else left_mp4.parent
    names = [clip] if clip else [_default_clip_name(clip_dir, seq_dir)]
    key, start_uv = _labels_or_segmentation(start_json, seq_dir / "segmentation" / "icgstartseg.png", names, 2)
    if start_uv is None:
        raise InputError(f"{clip_dir}: no start labels (pass start_json, or provide "
                         f"{seq_dir / 'segmentation' / 'icgstartseg.png'})", "missing_file")
    if len(start_uv) == 0:
        raise InputError(f"{start_json or seq_dir / 'segmentation' / 'icgstartseg.png'}: no start points",
                         "bad_labels")
    _check_inside(start_uv, W, H, start_json or "icgstartseg.png")
    end_key, end_uv = _labels_or_segmentation(end_json, seq_dir / "segmentation" / "icgendseg.png", names, 2)
    end_xyz_mm = read_stir_labels(end_json_3d, names, 3)[1] if end_json_3d is not None else None
    start_xyz_mm = read_stir_labels(start_json_3d, names, 3)[1] if start_json_3d is not None else None
    if start_xyz_mm is not None and len(start_xyz_mm) != len(start_uv):
        raise InputError(f"{start_json_3d}: expected {len(start_uv)} points (one per start label), got "
                         f"{len(start_xyz_mm)}", "bad_labels")
    clip_name = key or end_key or names[0]

    queries = Queries(ids=np.arange(len(start_uv), dtype=np.int64),
                      query_tuv=np.column_stack([np.zeros(len(start_uv)), start_uv]))
    state: dict[str, Any] = {}

    def finish(tmp: Path) -> None:
        """Runs before the folder is renamed into place, so the labels come with it or not at all."""
        num_frames = state["count"]
        if num_frames == 0:
            raise InputError(f"{left_mp4}: no frames could be decoded", "bad_video")
        if state.get("mismatch"):
            log.warning("%s: left and right videos differ in length; kept the first %d frames", clip_dir, num_frames)
        if end_uv is None and end_xyz_mm is None:
            return
        if state.get("truncated"):
            log.warning("%s: max_frames=%d cut the clip short; end labels not written", clip_dir, num_frames)
            return
        gt: dict[str, Any] = {"clip": clip_name, "end_frame": num_frames - 1, "start_uv_px": start_uv.tolist()}
        if end_uv is not None:
            gt["end_uv_px"] = end_uv.tolist()
        if end_xyz_mm is not None:
            gt["end_xyz_mm"] = end_xyz_mm.tolist()
        if start_xyz_mm is not None:
            gt["start_xyz_mm"] = start_xyz_mm.tolist()
        (tmp / GT_END_FILE).parent.mkdir(parents=True, exist_ok=True)
        (tmp / GT_END_FILE).write_text(json.dumps(gt))

    pairs = _stereo_frames(left_mp4, right_mp4, max_frames, state)
    left_it, right_it = itertools.tee(pairs)
    out = write_sequence(out_dir, (p[0] for p in left_it), (p[1] for p in right_it), raw.to_dict(), queries,
                         progress=progress, finish=finish)
    num_frames = state["count"]
    log.info("%s → %s: %d frames, %d queries", clip_dir, out, num_frames, len(queries))
    return out


def read_stir_calib(path: str | Path, image_size: tuple[int, int], fps: float) -> RawCalib:
    """STIR calib.json → `RawCalib` (rectified: false). `rotation` may be Rodrigues (3) or 3×3."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: calibration file not found", "missing_file")
    data = _load_json(path)
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: expected a JSON object of calibration fields", "bad_calib")
    where = str(path)
    found: dict[str, str] = {}  # our name → the key this file uses for it
    for ours, names in _KEYS.items():
        key = next((k for k in names if k in data), None)
        if key is not None:
            found[ours] = key
    for ours in ("K_left", "K_right", "T", "R"):
        if ours not in found:
            raise InputError(f"{path}: {_KEYS[ours][0]}: missing", "bad_calib")
    rot_key = found["R"]
    rvec = flat_numbers_field(data, rot_key, where)  # Rodrigues as 3, 1x3 or 3x1; or a 3x3 matrix
    if rvec.size == 3:
        R = cv2.Rodrigues(rvec)[0]
    else:
        R = numbers_field({rot_key: rvec.tolist()}, rot_key, where, (3, 3))
    T = flat_numbers_field(data, found["T"], where)
    if T.shape != (3,):
        raise InputError(f"{path}: {found['T']}: expected 3 numbers (metres), got {T.size}", "bad_calib")
    if not T[0] < 0:
        raise InputError(f"{path}: {found['T']}: expected x < 0 (metres, X_right = R·X_left + T, right camera "
                         f"to the right), got {T.tolist()}", "bad_calib")
    mapping = {
        "image_size": [int(image_size[0]), int(image_size[1])],
        "K_left": numbers_field(data, found["K_left"], where, (3, 3)).tolist(),
        "K_right": numbers_field(data, found["K_right"], where, (3, 3)).tolist(),
        "R": R.tolist(), "T": T.tolist(), "rectified": False, "fps": float(fps),
    }
    for ours in ("D_left", "D_right"):
        if ours in found:
            mapping[ours] = np.asarray(flat_numbers_field(data, found[ours], where)).tolist()
        else:
            log.info("%s: no %s; assuming no distortion", path, _KEYS[ours][0])
    return calib_from_mapping(mapping, where)


def read_stir_labels(
    path: str | Path, clip_names: Sequence[str] = (), dims: int = 2
) -> tuple[str | None, np.ndarray]:
    """Read a STIR label JSON: `{clip: [[x, y], …]}` / `{clip: [[X, Y, Z], …]}` or a bare list.

    Args:
        path: the JSON file.
        clip_names: names to look for among the keys: an exact key, or a key whose path ends with
            the name's path parts (STIRMetrics keys clips by the full left/seqNN path).
        dims: 2 for pixels, 3 for millimetres.

    Returns:
        (matched key or None for a list, (N, dims) float64 points).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label file not found", "missing_file")
    data = _load_json(path)
    key = None
    if isinstance(data, Mapping):
        key = _match_clip(data, clip_names, path)
        data = data[key]
    return key, label_points(data, dims, str(path))


def label_points(data: Any, dims: int, where: str) -> np.ndarray:
    """A list of [x, y] (dims 2) or [X, Y, Z] (dims 3) finite numbers → (N, dims) float64.

    Raises:
        InputError: `<where>: expected …`, one line.
    """
    try:
        pts = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        what = "x, y" if dims == 2 else "X, Y, Z"
        raise InputError(f"{where}: expected a list of [{what}] points", "bad_labels") from None
    if pts.size == 0:
        pts = pts.reshape(0, dims)
    if pts.ndim != 2 or pts.shape[1] != dims or not np.isfinite(pts).all():
        raise InputError(f"{where}: expected N x {dims} finite numbers, got shape {list(pts.shape)}", "bad_labels")
    return pts


def centres_from_segmentation(path: str | Path) -> np.ndarray:
    """(N, 2) centres of the blobs of a STIR segmentation image, as STIR labels them: the centre of
    each blob's bounding box, x + w // 2, y + h // 2 (integer pixels)."""
    path = Path(path)
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise InputError(f"{path}: corrupt or unreadable segmentation image", "bad_labels")
    contours, _ = cv2.findContours((img > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    centres = np.stack([boxes[:, 0] + boxes[:, 2] // 2, boxes[:, 1] + boxes[:, 3] // 2], axis=-1)
    order = np.lexsort((centres[:, 0], centres[:, 1]))  # deterministic: row-major
    return centres[order].astype(np.float64)


# --- helpers ----------------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({str(err).splitlines()[0]})", "bad_json") from None


def _find_video(clip_dir: Path, side: str, seq: str | None) -> Path:
    base = clip_dir / side if seq is None else clip_dir / side / seq
    if not base.is_dir():
        raise InputError(f"{base}: folder not found (expected {side}/seqNN/frames/*.mp4)", "missing_file")
    videos = sorted(base.rglob("*.mp4"))
    if len(videos) != 1:
        found = ", ".join(str(v.relative_to(clip_dir)) for v in videos[:4]) or "none"
        raise InputError(f"{base}: expected exactly one .mp4 under it (pass seq= to pick one), found "
                         f"{len(videos)}: {found}", "missing_file")
    return videos[0]


def _probe_video(path: Path) -> tuple[int, int, float]:
    """(W, H, fps) from the first decodable frame; InputError naming the file if there is none."""
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok or frame is None:
            raise InputError(f"{path}: unreadable video (cannot open or decode a frame)", "bad_video")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    if not np.isfinite(fps) or fps <= 0:
        log.warning("%s: no frame rate in the container; assuming 30 fps", path)
        fps = 30.0
    return int(frame.shape[1]), int(frame.shape[0]), fps


def _stereo_frames(
    left: Path, right: Path, max_frames: int | None, state: dict[str, Any]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield RGB (left, right) frames in lockstep; `state` gets count, truncated and mismatch."""
    caps = [cv2.VideoCapture(str(left)), cv2.VideoCapture(str(right))]
    state.update(count=0, truncated=False, mismatch=False)
    try:
        while True:
            reads = [cap.read() for cap in caps]
            oks = [ok and img is not None for ok, img in reads]
            if not all(oks):
                state["mismatch"] = any(oks)
                return
            if max_frames is not None and state["count"] >= max_frames:
                state["truncated"] = True
                return
            state["count"] += 1
            yield (cv2.cvtColor(reads[0][1], cv2.COLOR_BGR2RGB), cv2.cvtColor(reads[1][1], cv2.COLOR_BGR2RGB))
    finally:
        for cap in caps:
            cap.release()


def _default_clip_name(clip_dir: Path, seq_dir: Path) -> str:
    try:
        return str(Path(clip_dir.name) / seq_dir.relative_to(clip_dir))
    except ValueError:
        return clip_dir.name


def _match_clip(data: Mapping, clip_names: Sequence[str], path: Path) -> str:
    if len(data) == 1:
        return next(iter(data))
    for name in clip_names:
        if name in data:
            return name
        parts = Path(name).parts
        hits = [k for k in data if Path(str(k)).parts[-len(parts):] == parts]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InputError(f"{path}: several clips match {name!r}; pass clip= with the exact key", "bad_labels")
    raise InputError(f"{path}: no entry for clip {', '.join(map(repr, clip_names)) or '?'} among {len(data)} clips; "
                     "pass clip= with the key", "bad_labels")


def _labels_or_segmentation(
    json_path: str | Path | None, seg_path: Path, names: Sequence[str], dims: int
) -> tuple[str | None, np.ndarray | None]:
    if json_path is not None:
        return read_stir_labels(json_path, names, dims)
    if seg_path.is_file():
        return None, centres_from_segmentation(seg_path)
    return None, None


def _check_inside(uv: np.ndarray, W: int, H: int, source: Any) -> None:
    bad = np.flatnonzero((uv[:, 0] < 0) | (uv[:, 0] > W - 1) | (uv[:, 1] < 0) | (uv[:, 1] > H - 1))
    if bad.size:
        i = bad[0]
        raise InputError(f"{source}: point {i} ({uv[i, 0]:g}, {uv[i, 1]:g}) is outside the {W}x{H} video",
                         "bad_labels")
