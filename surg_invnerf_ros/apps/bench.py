"""Benchmark runner (DESIGN §4): every method on a fixed synthetic set → `bench.md`, `bench.json`
and PNG plots.

The set is a named preset of `BenchConfig` (default, hard, quick): seeds × conditions, each
condition a difficulty plus instrument occlusion and camera motion. Sequences are generated once
into `OUT/sequences/<name>` (the name spells out every generator setting, so a changed setting
never reuses a stale folder) and reused on later runs. Each method is a runner, `Sequence → Tracks`:
the baselines by default, and any callable the caller injects (the InvNeRF method, ablations).
Only the runner call is timed; metrics, plots and I/O are not.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping
from typing import Sequence as Seq

import cv2
import numpy as np
import torch

from ..batch import Task, run_batch
from ..config import BenchConfig, FrontendConfig, SynthConfig, to_dict
from ..config.synth import Difficulty
from ..errors import ConfigError
from ..eval.metrics import compute_metrics, query_frames_from
from ..eval.plots import contact_frames, contact_sheet, plot_accuracy_vs_threshold
from ..eval.report import DEFAULT_COLUMNS, format_table, json_safe, mean_rows, metrics_row
from ..frontend.baselines import BASELINES, run_baseline
from ..io.sequence import read_sequence
from ..io.trackfile import atomic_write, read_tracks
from ..structs import Sequence, Tracks
from ..synth.generate import generate_sequence

log = logging.getLogger(__name__)

Runner = Callable[[Sequence], Tracks]

# (difficulty, instrument, camera_motion) per condition.
_EASY_STATIC: tuple[Difficulty, bool, bool] = ("easy", False, False)
_HARD_BOTH: tuple[Difficulty, bool, bool] = ("hard", True, True)


@dataclass(frozen=True)
class Preset:
    """One named benchmark set: conditions × seeds at one size."""

    conditions: tuple[tuple[Difficulty, bool, bool], ...]
    seeds: tuple[int, ...]
    frames: int
    width: int
    height: int
    num_queries: int


PRESETS: dict[str, Preset] = {
    "default": Preset(
        conditions=(_EASY_STATIC, ("medium", True, False), ("medium", False, True), _HARD_BOTH),
        seeds=(0, 1), frames=48, width=256, height=192, num_queries=64),
    # The InvNeRF-vs-baseline targets are measured on this set: keep it fixed.
    "hard": Preset(conditions=(_HARD_BOTH,), seeds=(0, 1, 2), frames=48, width=256, height=192, num_queries=64),
    "quick": Preset(conditions=(_EASY_STATIC, _HARD_BOTH), seeds=(0,), frames=16, width=128, height=96,
                    num_queries=24),
    # Long and full-size clips: the correspondence store's memory bound and the fit's scaling.
    "long": Preset(conditions=(_HARD_BOTH,), seeds=(0,), frames=300, width=640, height=512, num_queries=64),
    "real_size": Preset(conditions=(_HARD_BOTH,), seeds=(0,), frames=1000, width=1280, height=1024, num_queries=64),
}


@dataclass(frozen=True)
class SeqSpec:
    """One benchmark sequence: the generator settings (`synth.generate.SynthConfig` fields)."""

    difficulty: Difficulty
    instrument: bool
    camera_motion: bool
    seed: int
    frames: int
    width: int
    height: int
    num_queries: int

    @property
    def name(self) -> str:
        """Folder and table name, e.g. `hard_inst_cam_s0_256x192x48_q64`."""
        inst = "inst" if self.instrument else "noinst"
        cam = "cam" if self.camera_motion else "static"
        return (f"{self.difficulty}_{inst}_{cam}_s{self.seed}_"
                f"{self.width}x{self.height}x{self.frames}_q{self.num_queries}")


@dataclass
class BenchResult:
    """What `run_bench` measured and wrote.

    Attributes:
        rows: one metric row per (sequence, method), with `sequence`, `method`, `time_s`.
        summary: per-method means over sequences (`sequence` = "mean").
        timings_s: method → sequence → runner wall time in seconds.
        errors: "sequence/method" → message, for runs that raised (with `keep_going`).
        fits: one `fit_row` per run of a fitted method (InvNeRF, ablations): where the time went.
        md_path, json_path: the written reports.
        plot_paths: the written PNGs.
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    timings_s: dict[str, dict[str, float]]
    errors: dict[str, str] = field(default_factory=dict)
    fits: list[dict[str, Any]] = field(default_factory=list)
    md_path: Path | None = None
    json_path: Path | None = None
    plot_paths: list[Path] = field(default_factory=list)


def bench_specs(cfg: BenchConfig) -> list[SeqSpec]:
    """The sequences of `cfg`: its preset, with any non-zero / non-empty field overriding it."""
    p = PRESETS[cfg.preset]
    seeds = cfg.seeds or p.seeds
    return [
        SeqSpec(difficulty=d, instrument=i, camera_motion=c, seed=s, frames=cfg.frames or p.frames,
                width=cfg.width or p.width, height=cfg.height or p.height,
                num_queries=cfg.num_queries or p.num_queries)
        for s in seeds for (d, i, c) in p.conditions
    ]


def bench_total(cfg: BenchConfig, methods: Seq[str]) -> int:
    """How many times `run_bench` calls `progress(1)`: one per (sequence, method)."""
    return len(bench_specs(cfg)) * len(methods)


def baseline_runner(name: str, frontend_cfg: FrontendConfig | None = None) -> Runner:
    """The runner of a baseline from `frontend.baselines`: `run_baseline(name, seq, FrontendConfig())`."""
    if name not in BASELINES:
        raise ConfigError(f"bench.methods: unknown method {name!r} (expected one of {', '.join(BASELINES)} "
                          "or an injected runner)")
    cfg = frontend_cfg or FrontendConfig()
    return lambda seq: run_baseline(name, seq, cfg)


def _generate(seq_dir: Path, spec: SeqSpec, **synth_extra: Any) -> None:
    """Write the synthetic sequence of `spec` (folder + gt/tracks.npz) at `seq_dir`; `synth_extra`
    sets further `SynthConfig` fields (e.g. pose noise)."""
    generate_sequence(seq_dir, SynthConfig(
        frames=spec.frames, width=spec.width, height=spec.height, seed=spec.seed, instrument=spec.instrument,
        camera_motion=spec.camera_motion, difficulty=spec.difficulty, num_queries=spec.num_queries, **synth_extra))


def _read(seq_dir: Path) -> Sequence:
    return read_sequence(seq_dir, lazy=True)  # frames decoded when read: long clips never sit in RAM whole


def is_cached(seq_dir: Path) -> bool:
    """A finished sequence folder: calibration, images and ground truth are all there."""
    return (seq_dir / "calib.yaml").is_file() and (seq_dir / "gt" / "tracks.npz").is_file() \
        and (seq_dir / "left").is_dir()


def ensure_sequence(seq_root: Path, spec: SeqSpec, suffix: str = "", **synth_extra: Any) -> Path:
    """The folder of `spec` (named `spec.name + suffix`) under `seq_root`, generated only when missing.

    It is generated under a hidden name and renamed when complete, so an interrupted run never
    leaves a folder that looks cached. `synth_extra` sets further `SynthConfig` fields; give a
    `suffix` with them so the variant does not share the plain sequence's folder.
    """
    name = spec.name + suffix
    seq_dir = seq_root / name
    if is_cached(seq_dir):
        return seq_dir
    tmp = seq_root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    seq_root.mkdir(parents=True, exist_ok=True)
    log.info("generating %s", name)
    _generate(tmp, spec, **synth_extra)
    shutil.rmtree(seq_dir, ignore_errors=True)
    tmp.rename(seq_dir)
    (seq_dir / "bench_spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return seq_dir


def code_commit() -> str:
    """The git commit the package runs from (short hash, `+dirty` with local changes; `unknown` outside git)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def stamp_line(info: dict[str, Any]) -> str:
    """One line saying when, from which commit, by which command and on which machine a result was measured."""
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU"
    return (f"Measured {info['date_utc']} at commit {info['commit']} with `{info['command']}` on "
            f"{info['platform']}, {info['cpu_count']} CPUs{gpu}, torch {info.get('torch')}, OpenCV {info['opencv']}.")


def machine_info() -> dict[str, Any]:
    """Date, commit, command, platform, CPU count and library versions: results mean nothing without them."""
    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": code_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def run_bench(
    out_dir: str | Path,
    cfg: BenchConfig,
    methods: Seq[str],
    progress: Callable[[int], object] | None = None,
    runners: Mapping[str, Runner] | None = None,
    frontend_cfg: FrontendConfig | None = None,
) -> BenchResult:
    """Run every method on every sequence of `cfg`; write `bench.md`, `bench.json` and plots.

    Args:
        out_dir: output folder; sequences are cached in `out_dir/sequences`, plots go in
            `out_dir/plots`.
        cfg: the benchmark set and options.
        methods: method names, in table order. A name in `runners` uses that callable; any other
            must be a baseline of `frontend.baselines.BASELINES`.
        progress: called with 1 after each (sequence, method) run; `bench_total` gives the count.
        runners: injected methods, `Sequence → Tracks` (e.g. "invnerf", ablations).
        frontend_cfg: the baselines' front end (default `FrontendConfig()`); give the injected
            runners the same one.

    Returns:
        The rows, per-method means, timings and written paths.
    """
    out = Path(out_dir)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ConfigError("bench.methods: expected at least one method")
    runners = dict(runners or {})
    table = {m: runners[m] if m in runners else baseline_runner(m, frontend_cfg) for m in methods}
    specs = bench_specs(cfg)
    rows: list[dict[str, Any]] = []
    timings: dict[str, dict[str, float]] = {m: {} for m in methods}
    errors: dict[str, str] = {}
    fits: list[dict[str, Any]] = []
    plot_paths: list[Path] = []
    for spec in specs:
        seq_dir = ensure_sequence(out / "sequences", spec)
        seq = _read(seq_dir)
        seq.name = spec.name
        gt = read_tracks(seq_dir / "gt" / "tracks.npz")
        query_frames = query_frames_from(gt, seq.queries)
        tracks_by_method: dict[str, Tracks] = {}
        # one batch job per method; a broken method must not hide the others' results
        tasks = [Task(f"{spec.name}/{m}", table[m], (seq,)) for m in methods]
        for method, res in zip(methods, run_batch(tasks, "local")):
            if not res.ok:
                if not cfg.keep_going and res.exception is not None:
                    raise res.exception
                log.error("%s on %s failed:\n%s", method, spec.name, res.detail)
                errors[res.name] = res.error
                rows.append(metrics_row(method, {}, sequence=spec.name, error=res.error.split(":")[0]))
                if progress is not None:
                    progress(1)
                continue
            tracks, elapsed_s = res.value, res.seconds
            timings[method][spec.name] = elapsed_s
            metrics = compute_metrics(tracks, gt, query_frames)
            rows.append(metrics_row(method, metrics, sequence=spec.name, time_s=elapsed_s,
                                    frame_time_ms=1000.0 * elapsed_s / max(seq.num_frames, 1),
                                    peak_rss_mb=peak_rss_mb()))
            tracks_by_method[method] = tracks
            if "steps" in tracks.meta:
                fits.append(fit_row(method, spec.name, tracks.meta))
            log.info("%s on %s: delta_avg %.3f in %.2f s", method, spec.name, metrics["delta_avg"], elapsed_s)
            if progress is not None:
                progress(1)
        if cfg.plots:
            frames = contact_frames(seq.num_frames, cfg.contact_frames)
            plot_paths.append(contact_sheet(seq, tracks_by_method, gt, out / "plots" / f"contact_{spec.name}.png",
                                            frames=frames))
    summary = mean_rows(rows, key="method", label={"sequence": "mean"})
    if cfg.plots:
        plot_paths.insert(0, plot_accuracy_vs_threshold([r for r in rows if "delta_1" in r],
                                                        out / "plots" / "accuracy_vs_threshold.png"))
    result = BenchResult(rows=rows, summary=summary, timings_s=timings, errors=errors, fits=fits,
                         plot_paths=plot_paths)
    info = machine_info()
    result.md_path = _write_markdown(out / "bench.md", cfg, specs, result, info)
    result.json_path = _write_json(out / "bench.json", cfg, specs, methods, result, info)
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB): after the first method of a run, that method's peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fit_row(method: str, sequence: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the "Fits" table from a fitted method's track meta (`track._fit`)."""
    t = meta.get("timings_s", {})
    steps = max(int(meta.get("steps", 0)), 1)
    return {
        "method": method, "sequence": sequence, "device": meta.get("device", "?"),
        "steps": int(meta.get("steps", 0)), "stop": meta.get("stop_reason", ""),
        "stereo_s": t.get("stereo_s", 0.0), "flow_s": t.get("flow_s", 0.0), "chains_s": t.get("chains_s", 0.0),
        "forward_ms_per_step": 1000.0 * t.get("forward_s", 0.0) / steps,
        "backward_ms_per_step": 1000.0 * t.get("backward_s", 0.0) / steps,
        "refresh_s": t.get("refresh_s", 0.0), "inference_s": t.get("inference_s", 0.0),
        "fit_total_s": t.get("total_fit_s", 0.0),
        "peak_gpu_memory_mb": meta.get("peak_gpu_memory_mb", float("nan")),
    }


def _write_markdown(path: Path, cfg: BenchConfig, specs: list[SeqSpec], result: BenchResult,
                    info: dict[str, Any]) -> Path:
    lines = [
        f"# Benchmark: preset `{cfg.preset}`",
        "",
        stamp_line(info),
        "",
        f"{len(specs)} synthetic sequences ({specs[0].width}x{specs[0].height}, {specs[0].frames} frames, "
        f"{specs[0].num_queries} queries).",
        "",
        "EPE and δ (TAP-Vid, px) over visible ground truth after each query frame; `inf` means a point "
        "was lost (missing or NaN). STIR δ uses the nearest ground-truth end point. `time_s` is the "
        "method's wall time per sequence; `peak_rss_mb` the process's peak resident memory after the method "
        "(the method's own for the first one).",
        "",
        "## Mean over sequences",
        "",
        format_table(result.summary, [c for c in ("method", "epe_px", "epe_end_px", "delta_avg", "delta_avg_end",
                                                  "oa", "aj", "err3d_mm", "err3d_finite_mm", "stir_delta2d",
                                                  "stir_delta3d", "fail_frac", "time_s", "frame_time_ms", "peak_rss_mb")]),
        "## Per sequence",
        "",
        format_table(result.rows, _columns(result.rows)),
    ]
    if result.fits:
        lines += ["## Fits", "",
                  "Seconds per stage of each fit: front end (SGBM stereo, DIS flow bank, chains) on the CPU, "
                  "then the optimiser on `device`. On CUDA the forward/backward split is the host's view "
                  "(kernels run asynchronously); their sum per step is exact over a run.", "",
                  format_table(result.fits, list(result.fits[0]))]
    if result.errors:
        lines += ["## Errors", ""] + [f"- `{k}`: {v}" for k, v in result.errors.items()] + [""]
    if result.plot_paths:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(path.parent).as_posix()})"
                                     for p in result.plot_paths] + [""]
    text = "\n".join(lines)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols = [c for c in DEFAULT_COLUMNS if any(c in r for r in rows)]
    return cols + (["error"] if any("error" in r for r in rows) else [])


def _write_json(path: Path, cfg: BenchConfig, specs: list[SeqSpec], methods: list[str], result: BenchResult,
                info: dict[str, Any]) -> Path:
    timing_summary = {
        m: {"per_sequence_s": t, "mean_s": float(np.mean(list(t.values()))) if t else None}
        for m, t in result.timings_s.items()
    }
    doc = json_safe({
        "machine": info,
        "config": to_dict(cfg),
        "methods": methods,
        "sequences": [{"name": s.name, **asdict(s)} for s in specs],
        "rows": result.rows,
        "summary": result.summary,
        "timings": timing_summary,
        "errors": result.errors,
        "fits": result.fits,
        "plots": [p.relative_to(path.parent).as_posix() for p in result.plot_paths],
        "created_unix_s": time.time(),
    })
    text = json.dumps(doc, indent=1, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text))
