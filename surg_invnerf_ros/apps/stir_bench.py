"""`surg-invnerf stir-bench CLIPS_DIR --out DIR`: STIR end to end over a folder of clips.

Every clip (a folder with `calib.json` and `left/<seq>/…/*.mp4`; one entry per `<seq>`) is
imported once into `DIR/sequences/<clip>` with its labels, tracked by each method into
`DIR/tracks/<clip>/<method>.npz` (raw pixels, as STIR scores them), and scored: per clip, and
**pooled over clips** as STIRMetrics does (all point distances together). Clips are one batch job
each (`batch.run_batch`: local, or one Ray task per clip); a clip whose track files all exist is not
run again, so a stopped run resumes where it was, and a clip that fails is reported without losing
the others. Written: `stir_bench.json`, `stir_bench.md`, `stir_bench.png` (accuracy against the
threshold, pooled, per method and the zero-motion control) and the challenge's prediction JSONs
`submission_<method>_2d.json` / `_3d.json`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..batch import Task, TaskResult, run_batch
from ..config import FitConfig, FrontendConfig, StirBenchConfig
from ..errors import InputError
from ..eval.plots import plot_stir_accuracy
from ..eval.report import format_stir_scores, json_safe
from ..eval.stir import StirDistances, pooled_stir_scores, read_stir_end, stir_distances, submission
from ..io.sequence import read_sequence
from ..io.stir import GT_END_FILE, stir_clip_to_sequence
from ..io.trackfile import atomic_write, read_tracks, write_tracks
from ..structs import Tracks
from ..track import METHODS, track_sequence
from .bench import machine_info, stamp_line

log = logging.getLogger(__name__)

LABEL_DEFAULTS = {"start_json": "start.json", "end_json": "end.json", "start_json_3d": "start_3d.json",
                  "end_json_3d": "end_3d.json"}


@dataclass(frozen=True)
class StirClip:
    """One clip sequence: its label key (`<clip>/left/<seq>`, as STIRMetrics keys clips), folder and seq."""

    key: str
    clip_dir: Path
    seq: str

    @property
    def slug(self) -> str:
        return self.key.replace("/left/", "_").replace("/", "_")


def discover_clips(clips_dir: str | Path) -> list[StirClip]:
    """Every `<clip>/left/<seq>` with a video under CLIPS_DIR, sorted.

    Raises:
        InputError: the folder is missing or holds no clip.
    """
    root = Path(clips_dir)
    if not root.is_dir():
        raise InputError(f"{root}: clips folder not found", "missing_file")
    clips = []
    for calib in sorted(root.rglob("calib.json")):
        left = calib.parent / "left"
        if not left.is_dir():
            continue
        for seq_dir in sorted(p for p in left.iterdir() if p.is_dir()):
            if any(seq_dir.rglob("*.mp4")):
                clips.append(StirClip(f"{calib.parent.name}/left/{seq_dir.name}", calib.parent, seq_dir.name))
    if not clips:
        raise InputError(f"{root}: no STIR clips (folders with calib.json and left/<seq>/…/*.mp4)", "missing_file")
    return clips


def label_files(clips_dir: Path, cfg: StirBenchConfig) -> dict[str, Path | None]:
    """The label JSONs to import with: the configured ones, else CLIPS_DIR's defaults when present."""
    out: dict[str, Path | None] = {}
    for key, default in LABEL_DEFAULTS.items():
        given = getattr(cfg, key)
        if given:
            if not Path(given).is_file():
                raise InputError(f"stir_bench.{key}: {given}: label file not found", "missing_file")
            out[key] = Path(given)
        else:
            out[key] = clips_dir / default if (clips_dir / default).is_file() else None
    return out


def track_path(out_dir: Path, clip: StirClip, method: str) -> Path:
    return out_dir / "tracks" / clip.slug / f"{method}.npz"


def clip_job(clip: StirClip, out_dir: Path, labels: dict[str, Path | None], cfg: StirBenchConfig,
             fit_cfg: FitConfig, frontend_cfg: FrontendConfig) -> dict[str, float]:
    """One clip: import (once), then every method whose track file is missing; seconds per method."""
    seq_dir = out_dir / "sequences" / clip.slug
    if not (seq_dir / "calib.yaml").is_file():
        stir_clip_to_sequence(clip.clip_dir, seq_dir, max_frames=cfg.max_frames or None, clip=clip.key, seq=clip.seq,
                              start_json=labels["start_json"], end_json=labels["end_json"],
                              start_json_3d=labels["start_json_3d"], end_json_3d=labels["end_json_3d"])
    seq = read_sequence(seq_dir)
    seconds = {}
    for method in cfg.methods:
        path = track_path(out_dir, clip, method)
        if path.is_file():
            continue
        t0 = time.perf_counter()
        tracks = track_sequence(seq, method, fit_cfg, frontend_cfg)
        if seq.rectify is not None:
            tracks = seq.rectify.rect_to_raw_tracks(tracks)
        write_tracks(path, tracks)
        seconds[method] = time.perf_counter() - t0
    return seconds


def run_stir_bench(clips_dir: str | Path, out_dir: str | Path, cfg: StirBenchConfig,
                   fit_cfg: FitConfig | None = None, frontend_cfg: FrontendConfig | None = None,
                   progress: Callable[[TaskResult], None] | None = None) -> dict[str, Any]:
    """Import, track and score every clip under `clips_dir`; write the results into `out_dir`.

    Returns:
        The JSON-ready result: per clip and pooled scores per method, timings, failures, machine.

    Raises:
        InputError: no clips, a missing label file, or an unknown method.
    """
    clips_dir, out = Path(clips_dir), Path(out_dir)
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise InputError(f"--methods: unknown method {unknown[0]!r} (expected some of {', '.join(METHODS)})",
                         "bad_argument")
    fit_cfg, frontend_cfg = fit_cfg or FitConfig(), frontend_cfg or FrontendConfig()
    clips = discover_clips(clips_dir)
    labels = label_files(clips_dir, cfg)
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in clips if not all(track_path(out, c, m).is_file() for m in cfg.methods)]
    if len(todo) < len(clips):
        log.info("stir-bench: %d of %d clips already tracked; running the other %d", len(clips) - len(todo),
                 len(clips), len(todo))
    tasks = [Task(c.key, clip_job, (c, out, labels, cfg, fit_cfg, frontend_cfg), num_cpus=cfg.cpus_per_clip,
                  num_gpus=cfg.gpus_per_clip) for c in todo]
    results = run_batch(tasks, cfg.backend, ray_address=cfg.ray_address or None,
                        num_cpus=cfg.ray_num_cpus or None, progress=progress)
    failures = {r.name: r.error for r in results if not r.ok}
    ran = {r.name: r.value for r in results if r.ok}

    per_clip: dict[str, dict[str, Any]] = {}
    distances: dict[str, list[StirDistances]] = {m: [] for m in cfg.methods}
    tracks_by: dict[str, dict[str, Tracks]] = {m: {} for m in cfg.methods}
    labels_by: dict[str, Any] = {}
    for c in clips:
        gt_file = out / "sequences" / c.slug / GT_END_FILE
        if c.key in failures or not gt_file.is_file():
            if c.key not in failures:
                failures[c.key] = f"{gt_file}: no STIR end labels for this clip (pass --end-json)"
            continue
        lab = read_stir_end(gt_file)
        labels_by[lab.clip] = lab
        per_clip[c.key] = {"methods": {}, "seconds": ran.get(c.key, {})}
        for m in cfg.methods:
            path = track_path(out, c, m)
            if not path.is_file():
                continue
            tracks = read_tracks(path)
            d = stir_distances(tracks, lab)
            distances[m].append(d)
            tracks_by[m][lab.clip] = tracks
            per_clip[c.key]["methods"][m] = pooled_stir_scores([d])
    pooled = {m: {**pooled_stir_scores(ds), "clips": len(ds)} for m, ds in distances.items() if ds}
    for m in pooled:
        for dim, with_3d in (("2d", False), ("3d", True)):
            sub = submission(tracks_by[m], labels_by, with_3d=with_3d)
            atomic_write(out / f"submission_{m}_{dim}.json", lambda tmp, s=sub: tmp.write_text(json.dumps(s)))
    result = {"clips_dir": str(clips_dir), "clips": [c.key for c in clips], "methods": list(cfg.methods),
              "backend": cfg.backend, "pooled": pooled, "per_clip": per_clip, "failures": failures,
              "machine": machine_info()}
    atomic_write(out / "stir_bench.json", lambda tmp: tmp.write_text(json.dumps(json_safe(result), indent=2)))
    if pooled:
        plot_stir_accuracy(pooled, out / "stir_bench.png")
    atomic_write(out / "stir_bench.md", lambda tmp: tmp.write_text(format_stir_bench(result)))
    return result


def format_stir_bench(result: dict[str, Any]) -> str:
    """Markdown: pooled scores per method (with the control), then δ per clip."""
    lines = ["# STIR benchmark", "", stamp_line(result["machine"]), "",
             f"{len(result['clips'])} clips from `{result['clips_dir']}`, backend {result['backend']}; "
             "point distances pooled over clips, as STIRMetrics pools them.", ""]
    for m, scores in result["pooled"].items():
        lines.append(format_stir_scores(scores, f"## {m} ({scores['clips']} clips)"))
    methods = result["methods"]
    lines += ["## Per clip (δ 2D / δ 3D)", "", "| clip | " + " | ".join(methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for clip, row in result["per_clip"].items():
        cells = []
        for m in methods:
            s = row["methods"].get(m)
            cells.append("-" if s is None else f"{s.get('stir_delta2d', float('nan')):.3f} / "
                         f"{s.get('stir_delta3d', float('nan')):.3f}")
        lines.append(f"| {clip} | " + " | ".join(cells) + " |")
    if result["failures"]:
        lines += ["", "Failed clips:", ""] + [f"- {k}: {v}" for k, v in result["failures"].items()]
    lines += ["", "![STIR accuracy against the threshold](stir_bench.png)", ""]
    return "\n".join(lines)
