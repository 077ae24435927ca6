"""Sequence folders (DESIGN §2.1): write them; read and validate them (rectifying on load).

```
SEQ/left/000000.png …   8-bit RGB left images (rectified, or raw with `rectified: false`)
SEQ/right/000000.png …  same for the right camera
SEQ/calib.yaml          image_size, K_left, K_right, D_left, D_right, R, T (metres), rectified, fps
SEQ/timestamps.csv      frame,stamp_ns                 (optional; else from fps)
SEQ/queries.csv         id,frame,u,v                   (left-image pixels of the files)
SEQ/kinematics.csv      frame,x,y,z,qx,qy,qz,qw        (optional: T_world_leftcam, metres)
```

`read_sequence` checks everything before it decodes a single image, and refuses bad input with
one `InputError` line naming the file and field. Raw (non-rectified) input is rectified on load;
the returned `Sequence.rectify` then maps tracks back to the input's pixels.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Iterable, cast

import cv2
import numpy as np
import yaml

from ..errors import InputError
from ..structs import Queries, Sequence, StereoCalib
from .calib import RawCalib, Rectifier, read_calib, stereo_calib_from_rectified
from .csvtable import check_frame_column, read_csv_table
from .kinematics import read_kinematics, write_kinematics

log = logging.getLogger(__name__)

# Rectification zooms in (alpha = 0, no black border) unless that would crop a query away.
_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def calib_dict_rectified(calib: StereoCalib) -> dict:
    """calib.yaml content for an already rectified pair (right camera at +baseline along x)."""
    K = np.asarray(calib.K, dtype=float).tolist()
    return {
        "image_size": [int(calib.width), int(calib.height)],
        "K_left": K,
        "K_right": K,
        "D_left": [0.0] * 5,
        "D_right": [0.0] * 5,
        "R": np.eye(3).tolist(),
        "T": [-float(calib.baseline_m), 0.0, 0.0],
        "rectified": True,
        "fps": float(calib.fps),
    }


def write_sequence(
    out_dir: str | Path,
    left_rgb_u8: np.ndarray | Iterable[np.ndarray],
    right_rgb_u8: np.ndarray | Iterable[np.ndarray],
    calib: StereoCalib | dict,
    queries: Queries,
    stamps_ns: np.ndarray | None = None,
    T_world_cam: np.ndarray | None = None,
    progress: Callable[[int], object] | None = None,
    finish: Callable[[Path], object] | None = None,
) -> Path:
    """Write a sequence folder. The folder is built under a temporary name and renamed at the end,
    so an interrupted write leaves nothing that looks like a valid sequence.

    Args:
        left_rgb_u8, right_rgb_u8: (T, H, W, 3) uint8 RGB images, or iterables of (H, W, 3)
            frames (streamed: long videos never sit in memory whole).
        calib: a rectified `StereoCalib`, or a full calib.yaml mapping (for raw, unrectified input).
        queries: ids and (frame_idx, u_px, v_px) in left-image pixels.
        stamps_ns: optional (T,) int64 timestamps.
        T_world_cam: optional (T, 4, 4) left-camera poses in metres.
        progress: called with 1 after each frame is written.
        finish: called with the temporary folder once every frame is written, before the rename:
            files that depend on what was written (labels that need the frame count) go in here,
            so they appear together with the sequence or not at all.
    """
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_folder(tmp, left_rgb_u8, right_rgb_u8, calib, queries, stamps_ns, T_world_cam, progress)
        if finish is not None:
            finish(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (e.g. a video that breaks off) leaves nothing
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _write_folder(tmp: Path, left_rgb_u8, right_rgb_u8, calib, queries, stamps_ns, T_world_cam, progress) -> None:
    (tmp / "left").mkdir(parents=True)
    (tmp / "right").mkdir()
    for i, (lft, rgt) in enumerate(zip(left_rgb_u8, right_rgb_u8)):
        for side, img in (("left", lft), ("right", rgt)):
            f = tmp / side / f"{i:06d}.png"
            if not cv2.imwrite(str(f), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"{f}: could not write the image")
        if progress is not None:
            progress(1)
    calib_data = calib_dict_rectified(calib) if isinstance(calib, StereoCalib) else calib
    (tmp / "calib.yaml").write_text(yaml.safe_dump(calib_data, sort_keys=False))
    rows = ["id,frame,u,v"] + [
        f"{int(i)},{int(t)},{u:.4f},{v:.4f}" for i, (t, u, v) in zip(queries.ids, queries.query_tuv)
    ]
    (tmp / "queries.csv").write_text("\n".join(rows) + "\n")
    if stamps_ns is not None:
        rows = ["frame,stamp_ns"] + [f"{i},{int(s)}" for i, s in enumerate(stamps_ns)]
        (tmp / "timestamps.csv").write_text("\n".join(rows) + "\n")
    if T_world_cam is not None:
        write_kinematics(tmp / "kinematics.csv", T_world_cam)


class FrameStack:
    """(T, H, W, 3) uint8 RGB frames of one camera, decoded (and rectified) when indexed, so a long clip
    never sits in memory whole. `stack[t]` is one frame; slices, index arrays and `np.asarray(stack)`
    decode the frames they cover."""

    def __init__(self, files: list[Path], width: int, height: int, rectifier: Rectifier | None, side: str) -> None:
        self.files, self.width, self.height = list(files), int(width), int(height)
        self.rectifier, self.side = rectifier, side

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.height, self.width, 3)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.files)

    def frame(self, t: int) -> np.ndarray:
        img = _read_rgb(self.files[t], self.width, self.height)
        return img if self.rectifier is None else self.rectifier.rectify_image(img, self.side)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.frame(int(index) % len(self.files) if index < 0 else int(index))
        idx = np.arange(len(self.files))[index]
        return np.stack([self.frame(int(t)) for t in np.atleast_1d(idx)]) if np.ndim(idx) else self.frame(int(idx))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for t in range(len(self.files)):
            out[t] = self.frame(t)
        return out if dtype is None else out.astype(dtype)


def read_sequence(
    path: str | Path,
    load_images: bool = True,
    progress: Callable[[int], object] | None = None,
    lazy: bool = False,
) -> Sequence:
    """Read and validate a sequence folder (DESIGN §2.1).

    Every file is checked before any image is decoded; a problem raises `InputError` with one
    line that names the file and field. A raw pair (`rectified: false`) is rectified on load:
    images are remapped, queries are mapped raw → rectified, and `seq.rectify` holds the
    `io.calib.Rectifier` that maps outputs back (`rect_to_raw_tracks`).

    Args:
        path: the sequence folder; its name becomes `seq.name`.
        load_images: if False, only the PNG headers are checked and `left_rgb_u8`/`right_rgb_u8`
            are (T, 0, 0, 3) placeholders (cheap validation, calibration and queries only).
        progress: called with 1 after each stereo frame is loaded.
        lazy: images are `FrameStack`s, decoded when read (long clips; the fit's front end reads each
            frame once), instead of arrays loaded here.

    Returns:
        A `Sequence` with (T, H, W, 3) uint8 RGB rectified images, (T,) int64 `stamps_ns` (from
        timestamps.csv, else frame_idx / fps), queries in rectified left pixels and optional
        (T, 4, 4) `T_world_cam` from kinematics.csv.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: sequence folder not found", "missing_file")
    left_files, right_files = _frame_files(root)
    num_frames = len(left_files)
    raw = read_calib(root / "calib.yaml")
    where = str(root / "calib.yaml")
    W, H = raw.image_size
    stamps_ns = (read_timestamps(root / "timestamps.csv", num_frames) if (root / "timestamps.csv").exists()
                 else stamps_from_fps(num_frames, raw.fps))
    queries = read_queries(root / "queries.csv", num_frames, raw.image_size)
    T_world_cam = (read_kinematics(root / "kinematics.csv", num_frames) if (root / "kinematics.csv").exists()
                   else None)

    rectifier: Rectifier | None = None
    if raw.rectified:
        calib = stereo_calib_from_rectified(raw, where)
    else:
        rectifier, uv_rect = _rectifier_keeping_queries(raw, queries, root / "queries.csv", where)
        calib = rectifier.calib_rect
        queries = Queries(ids=queries.ids, query_tuv=np.column_stack([queries.query_tuv[:, 0], uv_rect]))

    for f in (*left_files, *right_files):  # cheap: a truncated or foreign file fails before decoding
        _check_png_header(f, W, H)
    if load_images and lazy:  # array-like: shape, dtype, indexing, np.asarray
        left = cast(np.ndarray, FrameStack(left_files, W, H, rectifier, "left"))
        right = cast(np.ndarray, FrameStack(right_files, W, H, rectifier, "right"))
    elif load_images:
        left = np.empty((num_frames, H, W, 3), np.uint8)
        right = np.empty((num_frames, H, W, 3), np.uint8)
        for i, (fl, fr) in enumerate(zip(left_files, right_files)):
            left[i], right[i] = _read_rgb(fl, W, H), _read_rgb(fr, W, H)
            if rectifier is not None:
                left[i], right[i] = rectifier.rectify_pair(left[i], right[i])
            if progress is not None:
                progress(1)
    else:
        left = np.zeros((num_frames, 0, 0, 3), np.uint8)
        right = np.zeros((num_frames, 0, 0, 3), np.uint8)
    return Sequence(left_rgb_u8=left, right_rgb_u8=right, calib=calib, stamps_ns=stamps_ns, queries=queries,
                    T_world_cam=T_world_cam, name=root.resolve().name, rectify=rectifier)


def read_timestamps(path: str | Path, num_frames: int) -> np.ndarray:
    """timestamps.csv → (T,) int64 strictly increasing stamps, one row per frame 0..T-1 in order."""
    path = Path(path)
    table = read_csv_table(path, ("frame", "stamp_ns"), "ii")
    n = len(table["frame"])
    if n != num_frames:
        raise InputError(f"{path}: expected {num_frames} rows (one per frame), got {n}", "bad_timestamps")
    check_frame_column(table, path, "bad_timestamps")
    stamps = table["stamp_ns"]
    if n and stamps[0] < 0:
        raise InputError(f"{path}: line {table['_line'][0]}: stamp_ns: expected >= 0, got {stamps[0]}",
                         "bad_timestamps")
    bad = np.flatnonzero(np.diff(stamps) <= 0)
    if bad.size:
        i = bad[0] + 1
        raise InputError(f"{path}: line {table['_line'][i]}: stamp_ns: expected strictly increasing, got "
                         f"{stamps[i]} after {stamps[i - 1]}", "bad_timestamps")
    return stamps.astype(np.int64)


def stamps_from_fps(num_frames: int, fps: float) -> np.ndarray:
    """(T,) int64 stamps frame_idx / fps in nanoseconds, starting at 0."""
    return np.round(np.arange(num_frames) * (1e9 / fps)).astype(np.int64)


def read_queries(path: str | Path, num_frames: int, image_size: tuple[int, int]) -> Queries:
    """queries.csv → `Queries`: at least one row, unique ids, existing frames, pixels inside the image.

    A query is inside when 0 <= u <= W-1 and 0 <= v <= H-1 (pixel centres at integers), so it can
    be sampled bilinearly.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected id,frame,u,v)", "missing_file")
    table = read_csv_table(path, ("id", "frame", "u", "v"), "iiff")
    ids, frame, u, v, line = table["id"], table["frame"], table["u"], table["v"], table["_line"]
    if len(ids) == 0:
        raise InputError(f"{path}: no queries (expected at least one row id,frame,u,v)", "bad_queries")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        second = np.flatnonzero(ids == dup)[1]
        raise InputError(f"{path}: line {line[second]}: id: duplicate id {dup}", "bad_queries")
    bad = np.flatnonzero((frame < 0) | (frame >= num_frames))
    if bad.size:
        i = bad[0]
        raise InputError(f"{path}: line {line[i]}: frame: frame {frame[i]} does not exist (expected 0.."
                         f"{num_frames - 1})", "bad_queries")
    W, H = image_size
    bad = np.flatnonzero((u < 0) | (u > W - 1) | (v < 0) | (v > H - 1))
    if bad.size:
        i = bad[0]
        raise InputError(f"{path}: line {line[i]}: u,v: ({u[i]:g}, {v[i]:g}) is outside the {W}x{H} image "
                         f"(expected 0 <= u <= {W - 1}, 0 <= v <= {H - 1})", "bad_queries")
    return Queries(ids=ids.astype(np.int64), query_tuv=np.column_stack([frame, u, v]).astype(np.float64))


def _frame_files(root: Path) -> tuple[list[Path], list[Path]]:
    out = []
    for side in ("left", "right"):
        d = root / side
        if not d.is_dir():
            raise InputError(f"{d}: folder not found (expected {side}/000000.png …)", "missing_file")
        files = sorted(d.glob("*.png"))
        if not files:
            raise InputError(f"{d}: no PNG frames", "missing_file")
        out.append(files)
    left, right = out
    if len(left) != len(right):
        raise InputError(f"{root / 'right'}: expected {len(left)} frames (as in left/), got {len(right)}",
                         "frame_count")
    return left, right


def _check_png_header(path: Path, W: int, H: int) -> None:
    """Check the PNG signature and the IHDR size without decoding the image."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError as err:
        raise InputError(f"{path}: unreadable ({type(err).__name__})", "bad_image") from None
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise InputError(f"{path}: not a PNG image (corrupt or truncated)", "bad_image")
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if (w, h) != (W, H):
        raise InputError(f"{path}: expected {W}x{H} (calib.yaml image_size), got {w}x{h}", "bad_image")


def _read_rgb(path: Path, W: int, H: int) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: corrupt or unreadable image", "bad_image")
    if bgr.shape[:2] != (H, W):
        raise InputError(f"{path}: expected {W}x{H} (calib.yaml image_size), got {bgr.shape[1]}x{bgr.shape[0]}",
                         "bad_image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _rectifier_keeping_queries(
    raw: RawCalib, queries: Queries, queries_path: Path, where: str
) -> tuple[Rectifier, np.ndarray]:
    """The least-zoomed-out rectification (alpha from `_ALPHAS`) that keeps every query in view.

    Returns the rectifier and the (N, 2) rectified query pixels.
    """
    W, H = raw.image_size
    inside: np.ndarray | None = None
    for alpha in _ALPHAS:
        rect = Rectifier(raw, alpha=alpha, where=where)
        uv = rect.raw_to_rect_px(queries.uv_px)
        tol_px = 1e-3  # alpha = 1 puts the extreme corners a hair outside
        inside = (np.isfinite(uv).all(axis=1) & (uv[:, 0] >= -tol_px) & (uv[:, 0] <= W - 1 + tol_px)
                  & (uv[:, 1] >= -tol_px) & (uv[:, 1] <= H - 1 + tol_px))
        if inside.all():
            if alpha > 0:
                log.info("%s: rectifying with alpha=%.2f so every query stays in the image", where, alpha)
            return rect, np.clip(uv, 0.0, [W - 1, H - 1])
    assert inside is not None  # _ALPHAS is not empty
    i = int(np.flatnonzero(~inside)[0])
    raise InputError(f"{queries_path}: id {queries.ids[i]}: ({queries.uv_px[i, 0]:g}, {queries.uv_px[i, 1]:g}) "
                     "falls outside the rectified image", "bad_queries")
