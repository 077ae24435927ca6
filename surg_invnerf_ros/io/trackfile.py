"""Track files (DESIGN §2.2): `.npz` written atomically, plus CSV and STIR-style JSON exports.

A track file holds `ids [N] int64`, `uv [T,N,2] float32` (left-image pixels of the input images),
`visible [T,N] bool`, `xyz [T,N,3] float32` (metres, left optical frame of frame t) and `meta`
(a JSON string). Writers go through a temporary file and `os.replace`, so a crash or a bad value
never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..structs import Tracks

POINT_RECORD_FIELDS = ("id", "u", "v", "x", "y", "z", "visible")


def tracks_from_records(records: list[np.ndarray | None], ids: np.ndarray | None = None,
                        meta: dict[str, Any] | None = None) -> Tracks:
    """Stack per-frame point records into Tracks.

    Args:
        records: one structured array per frame with the `POINT_RECORD_FIELDS` (pixels, metres; the
            layout of ~/tracked_points and of a bag's ground-truth clouds), or None for no record.
        ids: the point ids to keep, in column order; default every id seen, sorted. Records of other
            ids are ignored; a point without a record in a frame is NaN and not visible there.
    """
    present = [r for r in records if r is not None]
    if ids is None:
        ids = np.unique(np.concatenate([r["id"] for r in present]).astype(np.int64)) if present else np.zeros(0)
    ids = np.asarray(ids, np.int64)
    T, N = len(records), len(ids)
    uv = np.full((T, N, 2), np.nan, np.float32)
    xyz = np.full((T, N, 3), np.nan, np.float32)
    visible = np.zeros((T, N), bool)
    order = np.argsort(ids)
    for t, rec in enumerate(records):
        if rec is None or N == 0:
            continue
        rid = rec["id"].astype(np.int64)
        col = order[np.minimum(np.searchsorted(ids, rid, sorter=order), N - 1)]
        ok = ids[col] == rid
        uv[t, col[ok]] = np.stack([rec["u"], rec["v"]], -1)[ok]
        xyz[t, col[ok]] = np.stack([rec["x"], rec["y"], rec["z"]], -1)[ok]
        visible[t, col[ok]] = rec["visible"][ok] > 0
    return Tracks(ids=ids, uv=uv, visible=visible, xyz=xyz, meta=dict(meta or {}))


def atomic_write(path: str | Path, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Call `write(tmp_path)` on a temporary file in the target folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def validate_tracks(tracks: Tracks, where: str = "tracks") -> None:
    """Check the shapes agree; raise InputError naming the field."""
    n = tracks.ids.shape[0]
    if tracks.ids.ndim != 1:
        raise InputError(f"{where}: ids: expected shape [N], got {list(tracks.ids.shape)}")
    if tracks.uv.ndim != 3 or tracks.uv.shape[1:] != (n, 2):
        raise InputError(f"{where}: uv: expected shape [T,{n},2], got {list(tracks.uv.shape)}")
    T = tracks.uv.shape[0]
    if tracks.visible.shape != (T, n):
        raise InputError(f"{where}: visible: expected shape [{T},{n}], got {list(tracks.visible.shape)}")
    if tracks.xyz.shape != (T, n, 3):
        raise InputError(f"{where}: xyz: expected shape [{T},{n},3], got {list(tracks.xyz.shape)}")
    if len(np.unique(tracks.ids)) != n:
        raise InputError(f"{where}: ids: expected unique ids")


def write_tracks(path: str | Path, tracks: Tracks) -> Path:
    """Write a track file atomically (the `.npz` suffix is kept as given)."""
    validate_tracks(tracks, str(path))
    meta = json.dumps(tracks.meta, default=_json_default)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                ids=tracks.ids.astype(np.int64),
                uv=tracks.uv.astype(np.float32),
                visible=tracks.visible.astype(bool),
                xyz=tracks.xyz.astype(np.float32),
                meta=np.array(meta),
            )

    return atomic_write(path, write)


def read_tracks(path: str | Path) -> Tracks:
    """Read and validate a track file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: track file not found", "missing_file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("ids", "uv", "visible", "xyz") if k not in data.files]
            if missing:
                raise InputError(f"{path}: {missing[0]}: missing from the track file", "bad_trackfile")
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
            tracks = Tracks(
                ids=data["ids"].astype(np.int64),
                uv=data["uv"].astype(np.float32),
                visible=data["visible"].astype(bool),
                xyz=data["xyz"].astype(np.float32),
                meta=meta,
            )
    except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: not a readable track file ({err})", "bad_trackfile") from None
    validate_tracks(tracks, str(path))
    return tracks


def export_csv(tracks: Tracks, path: str | Path) -> Path:
    """One row per (frame, id): `frame,id,u,v,visible,x,y,z` (pixels, 0/1, metres)."""
    T, N = tracks.visible.shape
    frame = np.repeat(np.arange(T), N)
    ids = np.tile(tracks.ids, T)
    uv = tracks.uv.reshape(-1, 2)
    xyz = tracks.xyz.reshape(-1, 3)
    vis = tracks.visible.reshape(-1).astype(int)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["frame", "id", "u", "v", "visible", "x", "y", "z"])
            for row in zip(frame, ids, uv[:, 0], uv[:, 1], vis, xyz[:, 0], xyz[:, 1], xyz[:, 2]):
                w.writerow([int(row[0]), int(row[1])] + [f"{x:.4f}" for x in row[2:4]] + [int(row[4])]
                           + [f"{x:.6f}" for x in row[5:]])

    return atomic_write(path, write)


def export_stir_json(tracks: Tracks, path: str | Path, clip: str, with_3d: bool = False) -> Path:
    """End-frame positions keyed by clip, as STIRMetrics reads them: `{clip: [[u, v], ...]}`
    (pixels), or `{clip: [[X, Y, Z], ...]}` in millimetres with `with_3d`."""
    if with_3d:
        pts = (tracks.xyz[-1].astype(np.float64) * 1000.0).tolist()
    else:
        pts = tracks.uv[-1].astype(np.float64).tolist()

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps({clip: pts}))

    return atomic_write(path, write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
