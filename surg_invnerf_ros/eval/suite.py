"""`make bench`: the whole benchmark, driven by one config (DESIGN §4).

1. Accuracy: every method on the fixed synthetic set (`eval/bench.py`), with InvNeRF and its
   ablation rows (error-driven sampling, no stereo guidance, one-directional supervision).
2. The issue-3 bar on the hard set: InvNeRF against the best classical baseline, per sequence.
3. Kinematics (issue 5): exact, no and noisy lagging poses on the camera-motion sequences
   (`eval/kinematics_bench.py`), written to `OUT/kinematics/`.
4. The ROS node under a 30 Hz synthetic stream (`ros/bench.py`).
5. Speed: generator seconds and front-end frames per second at 256×192 and 640×512.

Results go to `OUT/<preset>/bench.md`, `bench.json`, `bar.md` and `plots/`, `OUT/kinematics/kinematics.md`
and `.json`, `OUT/ros.md`, `OUT/speed.md` and `OUT/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence as Seq

import numpy as np

from ..config import BenchConfig, FitConfig, FrontendConfig, SynthConfig, apply_overrides, from_dict, to_dict
from ..structs import Sequence, Tracks
from .baselines import BASELINES
from .report import format_table, json_safe

log = logging.getLogger(__name__)

#: Ablations are config switches on top of the run's FitConfig, never code forks.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "invnerf_error_driven": ("sampler.strategy=error_driven",),
    "invnerf_nostereo": ("loss.stereo_weight=0", "loss.line_of_sight_weight=0", "loss.corr_depth_weight=0"),
    "invnerf_onedir": ("loss.bidirectional=false",),
}

#: The issue-3 bar: InvNeRF against the best classical baseline on every hard sequence.
BAR = {"epe_ratio": 0.7, "epe_end_ratio": 0.5, "delta_gain": 0.05, "err3d_ratio": 0.8, "oa_min": 0.9}


def variant(cfg: FitConfig, overrides: Seq[str]) -> FitConfig:
    """`cfg` with dotted overrides applied (typed and validated like a YAML file)."""
    return from_dict(FitConfig, apply_overrides(to_dict(cfg), overrides))


def invnerf_runners(fit_cfg: FitConfig, methods: Seq[str],
                    frontend_cfg: FrontendConfig | None = None) -> dict[str, Callable[[Sequence], Tracks]]:
    """Runners for "invnerf" and the ablation names among `methods`."""
    from ..track import track_sequence

    cfgs = {"invnerf": fit_cfg}
    cfgs.update({name: variant(fit_cfg, ov) for name, ov in ABLATIONS.items()})

    def runner(cfg: FitConfig) -> Callable[[Sequence], Tracks]:
        return lambda seq: track_sequence(seq, "invnerf", fit_cfg=cfg, frontend_cfg=frontend_cfg)

    return {m: runner(cfgs[m]) for m in methods if m in cfgs}


def bar_check(rows: Seq[Mapping[str, Any]], method: str = "invnerf") -> list[dict[str, Any]]:
    """Per sequence: InvNeRF's figures, the best baseline's for each, and whether each bar is met.

    "Best baseline" is chosen per metric (the lowest EPE, the highest δ, ...), which is the
    strictest reading of the bar.
    """
    out = []
    for seq_name in sorted({r["sequence"] for r in rows if "sequence" in r}):
        mine = next((r for r in rows if r.get("sequence") == seq_name and r["method"] == method and "epe_px" in r), None)
        base = [r for r in rows if r.get("sequence") == seq_name and r["method"] in BASELINES and "epe_px" in r]
        if mine is None or not base:
            continue

        def best(key: str, high: bool = False) -> float:
            vals = [float(r[key]) for r in base if np.isfinite(r.get(key, np.nan))]
            return (max(vals) if high else min(vals)) if vals else float("nan")

        b = {"epe_px": best("epe_px"), "epe_end_px": best("epe_end_px"), "delta_avg": best("delta_avg", True),
             "err3d_mm": best("err3d_mm")}
        row = {
            "sequence": seq_name,
            "epe_px": mine["epe_px"], "best_epe_px": b["epe_px"],
            "epe_end_px": mine["epe_end_px"], "best_epe_end_px": b["epe_end_px"],
            "delta_avg": mine["delta_avg"], "best_delta_avg": b["delta_avg"],
            "err3d_mm": mine["err3d_mm"], "best_err3d_mm": b["err3d_mm"],
            "oa": mine["oa"],
        }
        row["epe_ok"] = mine["epe_px"] <= BAR["epe_ratio"] * b["epe_px"]
        row["epe_end_ok"] = mine["epe_end_px"] <= BAR["epe_end_ratio"] * b["epe_end_px"]
        row["delta_ok"] = mine["delta_avg"] >= b["delta_avg"] + BAR["delta_gain"]
        row["err3d_ok"] = mine["err3d_mm"] <= BAR["err3d_ratio"] * b["err3d_mm"]
        row["oa_ok"] = mine["oa"] >= BAR["oa_min"]
        out.append(row)
    return out


def speed_report(sizes: Seq[tuple[int, int]] = ((256, 192), (640, 512)), frames: int = 48) -> dict[str, Any]:
    """Generator seconds (48 frames) and front-end frames per second at each size."""
    from ..frontend.bench import frontend_fps
    from ..synth.generate import time_generation

    out: dict[str, Any] = {"generator_s": {}, "frontend_fps": {}}
    for w, h in sizes:
        key = f"{w}x{h}"
        cfg = SynthConfig(frames=frames, width=w, height=h, seed=0, instrument=True, camera_motion=True,
                          difficulty="hard")
        out["generator_s"][key] = time_generation(cfg)
        out["frontend_fps"][key] = frontend_fps(w, h, frames=24)
        print(f"[bench] speed {key}: generator {out['generator_s'][key]:.1f} s / {frames} frames", file=sys.stderr)
    return out


def ros_report(out: Path, device: str) -> list[dict[str, Any]]:
    """The node under a 30 Hz synthetic stream for 60 s at 256×192 and 640×512 (issue 4)."""
    from ..ros.bench import format_ros_bench, run_ros_bench

    results = [run_ros_bench(w, h, rate_hz=30.0, duration_s=60.0, device=device) for w, h in ((256, 192), (640, 512))]
    text = format_ros_bench(results)
    (out / "ros.md").write_text(text)
    print(text)
    return results


def _speed_markdown(speed: Mapping[str, Any]) -> str:
    rows = []
    for key, fps in speed["frontend_fps"].items():
        rows.append({"size": key, "generator_48f_s": speed["generator_s"][key],
                     **{k: v for k, v in fps.items() if k.endswith("_fps")}})
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def set_config(preset: str, args: argparse.Namespace) -> BenchConfig:
    """The bench set of `preset`, with the command line's seeds, size and frame count (0/None: the preset's)."""
    width, height = args.size or (0, 0)
    return BenchConfig(preset=preset, seeds=tuple(args.seeds or ()), width=width, height=height,
                       frames=args.frames or 0)


def _run_set(out: Path, cfg: BenchConfig, methods: list[str], fit_cfg: FitConfig,
             frontend_cfg: FrontendConfig) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from .bench import bench_total, run_bench

    runners = invnerf_runners(fit_cfg, methods, frontend_cfg)
    with tqdm(total=bench_total(cfg, methods), desc=f"bench[{cfg.preset}]", file=sys.stderr, leave=False) as bar:
        result = run_bench(out, cfg, methods, progress=bar.update, runners=runners, frontend_cfg=frontend_cfg)
    print(f"[bench] {cfg.preset}: wrote {result.md_path}, {result.json_path}", file=sys.stderr)
    for p in result.plot_paths:
        print(f"[bench] wrote {p}", file=sys.stderr)
    return result.rows


def kinematics_section(out: Path, cfg: BenchConfig, fit_cfg: FitConfig,
                       frontend_cfg: FrontendConfig) -> list[dict[str, Any]]:
    """Issue 5's bar: exact / no / noisy kinematics on the camera-motion sequences (hard set by default)."""
    from tqdm import tqdm

    from .bench import bench_specs
    from .kinematics_bench import VARIANTS, run_kinematics_bench

    total = len([s for s in bench_specs(cfg) if s.camera_motion]) * len(VARIANTS)
    with tqdm(total=total, desc="bench[kinematics]", file=sys.stderr, leave=False) as bar:
        result = run_kinematics_bench(out / "kinematics", cfg, fit_cfg, progress=bar.update,
                                      frontend_cfg=frontend_cfg)
    print(f"[bench] kinematics: wrote {out / 'kinematics' / 'kinematics.md'}")
    print(format_table(result["bar"], columns=list(result["bar"][0])) if result["bar"] else "")
    return result["bar"]


def run_full_bench(args: argparse.Namespace) -> int:
    """The `surg-invnerf bench` command (see the module docstring)."""
    from ..cli import load_run_configs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # the speed and summary files land here whatever parts run
    fit_cfg, frontend_cfg = load_run_configs(args)
    all_methods = [*BASELINES, "invnerf", *ABLATIONS]
    methods = list(args.methods or all_methods)
    unknown = [m for m in methods if m not in all_methods]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"--methods: unknown method {unknown[0]!r} (expected some of {', '.join(all_methods)})")
    presets = [args.preset] if args.preset != "default" else ["default", "hard"]
    if args.no_accuracy:
        presets = []
    summary: dict[str, Any] = {}
    for preset in presets:
        # The default set runs the baselines and InvNeRF; ablations run on the hard set only.
        m = [x for x in methods if preset == "hard" or x not in ABLATIONS]
        rows = _run_set(out / preset, set_config(preset, args), m, fit_cfg, frontend_cfg)
        if "invnerf" in m:
            bar = bar_check(rows)
            summary[f"bar_{preset}"] = bar
            text = format_table(bar, columns=list(bar[0]) if bar else None)
            (out / preset / "bar.md").write_text(text)
            print(f"[bench] {preset}: InvNeRF vs best baseline\n{text}")
    if not args.no_kinematics:
        kin_preset = "hard" if args.preset == "default" else args.preset
        summary["kinematics"] = kinematics_section(out, set_config(kin_preset, args), fit_cfg, frontend_cfg)
    if not args.no_ros:
        summary["ros"] = ros_report(out, fit_cfg.device)
    if not args.no_speed:
        speed = speed_report()
        summary["speed"] = speed
        (out / "speed.md").write_text(_speed_markdown(speed))
        print(_speed_markdown(speed))
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    print(f"[bench] wrote {out / 'summary.json'}")
    return 0
