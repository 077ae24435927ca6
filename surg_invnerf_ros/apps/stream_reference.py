"""Offline trackers on the frames a synthetic stream played: the reference for the node's live accuracy.

The ROS benchmark streams `synth.frames` distinct frames back and forth (`end = pingpong`). Here the same
scene is written as a sequence, tracked offline by each reference method (InvNeRF, the classical
baselines) from the same queries, and every ground-truth frame the benchmark received is matched to
the scene frame it shows, so a method's error is taken over exactly the frames the node's live error
was. The classical trackers see each scene frame once, from its start (at most `synth.frames` links),
while the node has chained through the whole stream: the comparison favours them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import __version__
from ..config import FitConfig, FrontendConfig, SynthConfig, SyntheticSourceConfig
from ..config.base import load_config, to_dict
from ..eval.metrics import live_accuracy
from ..io.sequence import read_sequence
from ..io.trackfile import read_tracks, write_tracks
from ..online import index_of
from ..structs import Tracks, tracked_points
from ..synth.generate import generate_sequence
from ..track import track_sequence

log = logging.getLogger(__name__)

#: Largest mean |Δu| + |Δv| (px) between a received ground-truth frame and a scene frame that still
#: counts as the same frame (the message carries float32 pixels; other scene frames differ by far more).
SAME_FRAME_PX = 1e-3


def scene_config(source_params: Mapping[str, str]) -> SynthConfig:
    """The scene `synthetic_stereo` renders with these parameters (name → ROS value text, `synth.*` and
    the node's own); the node's defaults elsewhere."""
    return load_config(SyntheticSourceConfig, None, [f"{k}={v}" for k, v in source_params.items()]).synth


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def scene_key(cfg: SynthConfig) -> str:
    """A short digest of the scene's settings and the package version (folder name of its cached reference)."""
    return _digest({"synth": to_dict(cfg), "version": __version__})


def reference_file(root: Path, method: str, fit_cfg: FitConfig | None, frontend_cfg: FrontendConfig) -> Path:
    """Where one method's tracks of the scene are kept: named by the method and a digest of the configs
    it ran with and the package version, so a changed default or release never reuses old tracks."""
    used = {"method": method, "fit": to_dict(fit_cfg) if fit_cfg is not None else None,
            "frontend": to_dict(frontend_cfg), "version": __version__}
    return root / f"{method}_{_digest(used)}.npz"


def offline_tracks(cfg: SynthConfig, methods: Sequence[str], work_dir: str | Path,
                   device: Literal["auto", "cpu", "cuda"] = "auto") -> tuple[Tracks, dict[str, Tracks]]:
    """The scene's ground truth and each method's tracks of its queries over its `cfg.frames` frames.

    The sequence and each method's tracks are kept under `work_dir/<scene_key>/` and reused when asked
    again for the same scene, method and configuration (the benchmark's runs with and without CPU load
    share one scene).
    """
    root = Path(work_dir) / scene_key(cfg)
    seq_dir = root / "scene"
    if not (seq_dir / "gt" / "tracks.npz").is_file():
        log.info("reference: rendering the stream's %d frames (%dx%d) to %s", cfg.frames, cfg.width, cfg.height,
                 seq_dir)
        generate_sequence(seq_dir, cfg)
    gt = read_tracks(seq_dir / "gt" / "tracks.npz")
    seq = None
    out: dict[str, Tracks] = {}
    frontend_cfg = FrontendConfig()
    for method in methods:
        fit_cfg = FitConfig(device=device) if method == "invnerf" else None
        path = reference_file(root, method, fit_cfg, frontend_cfg)
        if not path.is_file():
            seq = seq if seq is not None else read_sequence(seq_dir)
            log.info("reference: %s on the stream's %d frames", method, cfg.frames)
            write_tracks(path, track_sequence(seq, method, fit_cfg=fit_cfg, frontend_cfg=frontend_cfg))
        out[method] = read_tracks(path)
    return gt, out


def match_scene_frames(frames_gt: Sequence[np.ndarray], gt: Tracks) -> np.ndarray:
    """For each received ground-truth frame (tracked_points arrays), the scene frame it shows, or −1.

    A frame matches where its points (by id) sit within `SAME_FRAME_PX` on average of that scene frame's.
    """
    out = np.full(len(frames_gt), -1, np.int64)
    for n, g in enumerate(frames_gt):
        cols = index_of(np.asarray(gt.ids), np.asarray(g["id"], np.int64))
        if not len(cols) or cols.min() < 0:
            continue
        uv = np.stack([g["u"], g["v"]], -1).astype(np.float64)  # (N, 2)
        d = np.abs(gt.uv[:, cols].astype(np.float64) - uv).sum(-1).mean(-1)  # (F,)
        best = int(np.argmin(d))
        if d[best] <= SAME_FRAME_PX:
            out[n] = best
    return out


def frame_points(tracks: Tracks, frame: int, ids: np.ndarray) -> np.ndarray:
    """One frame of `tracks` as a tracked_points array in the order of `ids` (confidence 1, refined 0)."""
    cols = index_of(np.asarray(tracks.ids), np.asarray(ids, np.int64))
    if len(cols) and cols.min() < 0:
        raise ValueError(f"frame_points: ids {np.asarray(ids)[cols < 0].tolist()} are not in the tracks")
    return tracked_points(np.asarray(ids), tracks.uv[frame, cols], tracks.xyz[frame, cols],
                          tracks.visible[frame, cols], refined=0)


def reference_accuracy(frames_gt: Sequence[np.ndarray], frames_live: Sequence[np.ndarray],
                       references: tuple[Tracks, Mapping[str, Tracks]] | None) -> dict[str, Any] | None:
    """Each offline method's accuracy (`live_accuracy`) over the scene frames the received ground-truth
    frames show, beside the live accuracy over the same (matched) frames; None without references."""
    if references is None:
        return None
    scene_gt, tracks = references
    idx = match_scene_frames(frames_gt, scene_gt)
    ok = [int(n) for n in np.flatnonzero(idx >= 0)]
    methods = {name: live_accuracy([(frame_points(tr, int(idx[n]), frames_gt[n]["id"]), frames_gt[n]) for n in ok])
               for name, tr in tracks.items()}
    return {"frames": len(frames_gt), "matched_frames": len(ok), "scene_frames_seen": len(set(idx[ok].tolist())),
            "live": live_accuracy([(frames_live[n], frames_gt[n]) for n in ok]), "methods": methods}
