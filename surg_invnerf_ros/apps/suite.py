"""`make bench`: the whole benchmark, driven by one config (DESIGN §4).

1. Accuracy: every method on the fixed synthetic set (`apps/bench.py`), with InvNeRF and its
   ablation rows (error-driven sampling, no stereo guidance, one-directional supervision).
2. Targets on the hard set: InvNeRF against the best classical baseline, per sequence.
3. Kinematics: exact, no and noisy lagging poses on the camera-motion sequences
   (`apps/kinematics_bench.py`), written to `OUT/kinematics/`.
4. The ROS node under a 30 Hz synthetic stream (`apps/ros_bench.py`).
5. Speed: generator seconds and front-end frames per second at 256×192 and 640×512.

Results go to `OUT/<preset>/bench.md`, `bench.json`, `vs_baseline.md` and `plots/`, `OUT/kinematics/kinematics.md`
and `.json`, `OUT/ros.md`, `OUT/speed.md` and `OUT/summary.json`. With a docs folder (`make bench`:
`docs/bench/`), each Markdown result that was produced is copied there under its published name
(`DOCS_NAMES`), so the documentation holds one current file per benchmark.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping
from typing import Sequence as Seq

import numpy as np
from tqdm import tqdm

from ..config import BenchConfig, FitConfig, FrontendConfig, SynthConfig, apply_overrides, from_dict, to_dict
from ..config.bench import BenchPreset
from ..errors import ConfigError
from ..eval.metrics import compute_metrics, query_frames_from
from ..eval.report import format_table, json_safe
from ..frontend.baselines import BASELINES
from ..io.sequence import read_sequence
from ..io.trackfile import read_tracks
from ..structs import Sequence, Tracks
from ..synth.generate import generate_sequence, time_generation
from ..track import fit_invnerf, infer_tracks, profile_fit_steps, run_frontend, track_sequence
from .bench import bench_specs, bench_total, machine_info, run_bench, stamp_line
from .frontend_bench import frontend_fps
from .kinematics_bench import VARIANTS, run_kinematics_bench

log = logging.getLogger(__name__)

#: Ablations are config switches on top of the run's FitConfig, never code forks.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "invnerf_error_driven": ("sampler.strategy=error_driven",),
    "invnerf_nostereo": ("loss.stereo_weight=0", "loss.line_of_sight_weight=0", "loss.corr_depth_weight=0"),
    "invnerf_bidir": ("loss.directions=both",),
}

#: Targets of InvNeRF against the best classical baseline on every hard sequence: EPE and end-frame
#: EPE and 3D error at most these ratios of the baseline's, δ_avg at least `delta_gain` higher,
#: occlusion accuracy at least `oa_min`.
TARGETS = {"epe_ratio": 0.7, "epe_end_ratio": 0.5, "delta_gain": 0.05, "err3d_ratio": 0.8, "oa_min": 0.9}


def variant(cfg: FitConfig, overrides: Seq[str]) -> FitConfig:
    """`cfg` with dotted overrides applied (typed and validated like a YAML file)."""
    return from_dict(FitConfig, apply_overrides(to_dict(cfg), overrides))


def invnerf_runners(fit_cfg: FitConfig, methods: Seq[str],
                    frontend_cfg: FrontendConfig | None = None) -> dict[str, Callable[[Sequence], Tracks]]:
    """Runners for "invnerf" and the ablation names among `methods`."""
    cfgs = {"invnerf": fit_cfg}
    cfgs.update({name: variant(fit_cfg, ov) for name, ov in ABLATIONS.items()})

    def runner(cfg: FitConfig) -> Callable[[Sequence], Tracks]:
        return lambda seq: track_sequence(seq, "invnerf", fit_cfg=cfg, frontend_cfg=frontend_cfg)

    return {m: runner(cfgs[m]) for m in methods if m in cfgs}


def baseline_check(rows: Seq[Mapping[str, Any]], method: str = "invnerf") -> list[dict[str, Any]]:
    """Per sequence: InvNeRF's figures, the best baseline's for each, and whether each target is met.

    "Best baseline" is chosen per metric (the lowest EPE, the highest δ, ...), which is the
    strictest reading of the targets.
    """
    out = []
    for seq_name in sorted({r["sequence"] for r in rows if "sequence" in r}):
        mine = next((r for r in rows if r.get("sequence") == seq_name and r["method"] == method and "epe_px" in r), None)
        base = [r for r in rows if r.get("sequence") == seq_name and r["method"] in BASELINES and "epe_px" in r]
        if mine is None or not base:
            continue

        def best(key: str, high: bool = False, base: list[Mapping[str, Any]] = base) -> float:
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
        row["epe_ok"] = mine["epe_px"] <= TARGETS["epe_ratio"] * b["epe_px"]
        row["epe_end_ok"] = mine["epe_end_px"] <= TARGETS["epe_end_ratio"] * b["epe_end_px"]
        row["delta_ok"] = mine["delta_avg"] >= b["delta_avg"] + TARGETS["delta_gain"]
        row["err3d_ok"] = mine["err3d_mm"] <= TARGETS["err3d_ratio"] * b["err3d_mm"]
        row["oa_ok"] = mine["oa"] >= TARGETS["oa_min"]
        out.append(row)
    return out


def speed_report(sizes: Seq[tuple[int, int]] = ((256, 192), (640, 512)), frames: int = 48) -> dict[str, Any]:
    """Generator seconds (48 frames) and front-end frames per second at each size; one fit step profiled and
    the steps to reach the accuracy, both on the hard 256×192 set's seed 0."""
    out: dict[str, Any] = {"generator_s": {}, "frontend_fps": {}, "machine": machine_info()}
    for w, h in sizes:
        key = f"{w}x{h}"
        cfg = SynthConfig(frames=frames, width=w, height=h, seed=0, instrument=True, camera_motion=True,
                          difficulty="hard")
        out["generator_s"][key] = time_generation(cfg)
        out["frontend_fps"][key] = frontend_fps(w, h, frames=24)
        print(f"[bench] speed {key}: generator {out['generator_s'][key]:.1f} s / {frames} frames", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:  # the hard 256×192 set's seed 0, generated once for both
        seq_dir = Path(tmp) / "seq"
        generate_sequence(seq_dir, SynthConfig(frames=frames, width=256, height=192, seed=0, instrument=True,
                                               camera_motion=True, difficulty="hard"))
        seq = read_sequence(seq_dir)
        out["fit_step"] = fit_step_report(seq)
        out["convergence"] = convergence_report(seq, read_tracks(seq_dir / "gt" / "tracks.npz"))
    return out


def fit_step_report(seq: Sequence, steps: int = 8) -> dict[str, Any]:
    """One fit step of `seq` profiled (`track.profile_fit_steps`), default config."""
    prof = profile_fit_steps(seq, steps=steps)
    print(f"[bench] fit step: {prof.aten_ops_per_step:.0f} ATen ops, {prof.ms_per_step:.0f} ms", file=sys.stderr)
    H, W = seq.left_rgb_u8.shape[1:3]
    return {"frames": seq.num_frames, "size": f"{W}x{H}", **asdict(prof)}


def accuracy_by_steps(seq: Sequence, gt: Tracks, steps: Seq[int], fit_cfg: FitConfig | None = None,
                      frontend_cfg: FrontendConfig | None = None) -> list[dict[str, Any]]:
    """Accuracy of a fit of `seq` given each step budget in `steps` (no time limit; the fit may still stop
    earlier on its convergence rule): one front end, then one fit per budget, each with its learning-rate
    schedule over its own budget. A row per budget: steps taken, fit seconds, EPE, end EPE, 3D error, δ_avg."""
    fit_cfg = fit_cfg or FitConfig()
    frontend_cfg = frontend_cfg or FrontendConfig()
    store = run_frontend(seq, frontend_cfg, {}, fit_cfg)
    query_frames = query_frames_from(gt, seq.queries)
    rows = []
    for budget in steps:
        cfg = replace(fit_cfg, max_steps=int(budget), time_budget_s=0.0, time_budget_per_frame_s=0.0)
        t0 = time.perf_counter()
        result = fit_invnerf(seq, cfg, frontend_cfg, frontend=store)
        fit_s = time.perf_counter() - t0
        m = compute_metrics(infer_tracks(result, seq, seq.queries), gt, query_frames)
        rows.append({"max_steps": int(budget), "steps": int(result.meta["steps"]), "fit_s": fit_s,
                     "epe_px": m["epe_px"], "epe_end_px": m["epe_end_px"], "err3d_mm": m["err3d_mm"],
                     "delta_avg": m["delta_avg"]})
        print(f"[bench] convergence: {rows[-1]['steps']} steps, EPE {m['epe_px']:.3f} px in {fit_s:.0f} s",
              file=sys.stderr)
    return rows


def first_reaching(rows: Seq[Mapping[str, Any]], target_epe_px: float) -> Mapping[str, Any] | None:
    """The first row (fewest steps) whose EPE is at most `target_epe_px`, or None."""
    return next((r for r in sorted(rows, key=lambda r: r["steps"]) if r["epe_px"] <= target_epe_px), None)


CONVERGENCE_STEPS = (200, 400, 800, 1600)
CONVERGENCE_TARGET_PX = 0.24  # the hard set's accuracy the fit is held to


def convergence_report(seq: Sequence, gt: Tracks, steps: Seq[int] = CONVERGENCE_STEPS) -> dict[str, Any]:
    """Steps to reach the accuracy: `accuracy_by_steps` on `seq` against `gt`, default config."""
    H, W = seq.left_rgb_u8.shape[1:3]
    return {"frames": seq.num_frames, "size": f"{W}x{H}", "target_epe_px": CONVERGENCE_TARGET_PX,
            "rows": accuracy_by_steps(seq, gt, steps)}


#: Offline methods whose error on the ROS benchmark's hard scene is reported beside the node's live error.
ROS_REFERENCE = ("invnerf", "dis", "lk")


def ros_report(out: Path, device: str) -> list[dict[str, Any]]:
    """The node under a 30 Hz synthetic stream: the hard scene (instrument, camera motion) for 120 s at 256×192,
    alone and beside a CPU-bound process, against `ROS_REFERENCE` offline on the scene's frames; then the
    default scene for 60 s at 640×512."""
    from .ros_bench import HARD_SCENE, format_ros_bench, run_ros_bench  # optional: needs the ROS 2 wheels

    hard = {"scene": HARD_SCENE, "scene_frames": 300, "duration_s": 120.0, "reference": ROS_REFERENCE,
            "reference_dir": out / "ros_reference"}
    results = [run_ros_bench(256, 192, rate_hz=30.0, device=device, **hard),
               run_ros_bench(256, 192, rate_hz=30.0, device=device, cpu_load=1, **hard),
               run_ros_bench(640, 512, rate_hz=30.0, duration_s=60.0, device=device)]
    text = format_ros_bench(results)
    (out / "ros.md").write_text(text)
    print(text)
    return results


def _speed_markdown(speed: Mapping[str, Any]) -> str:
    head = ["# Speed: front end and fit step", "", *([stamp_line(speed["machine"]), ""] if speed.get("machine") else []),
            "Frames per second of each front-end stage on 48 synthetic frames; the generator's time for them.", ""]
    rows = []
    for key, fps in speed["frontend_fps"].items():
        rows.append({"size": key, "generator_48f_s": speed["generator_s"][key],
                     **{k: v for k, v in fps.items() if k.endswith("_fps")}})
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    fs = speed.get("fit_step")
    if fs:
        st = fs["ms_by_stage"]
        lines += ["", f"One fit step ({fs['size']}, {fs['frames']} hard frames, default config, {fs['device']}; "
                  f"`track.profile_fit_steps`, mean of {fs['steps']} steps after warm-up):", "",
                  "| ATen operator calls | ms per step | forward | backward | optimiser |", "|---:|---:|---:|---:|---:|",
                  f"| {fs['aten_ops_per_step']:.0f} | {fs['ms_per_step']:.1f} | {st['forward']:.1f} | "
                  f"{st['backward']:.1f} | {st['optimiser']:.1f} |", "",
                  "Most called: " + ", ".join(f"`{n}` {c:.0f}" for n, c in fs["top_ops"]) + "."]
    conv = speed.get("convergence")
    if conv:
        lines += ["", f"Steps to reach the accuracy ({conv['size']}, {conv['frames']} hard frames, seed 0, default "
                  "config; one fit per step budget, no time limit, each with its learning-rate schedule over its "
                  "budget; the fit stops earlier where its convergence rule says so):", "",
                  "| step budget | steps | fit s | EPE px | end EPE px | 3D mm | δ_avg |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['max_steps']} | {r['steps']} | {r['fit_s']:.0f} | {r['epe_px']:.3f} | {r['epe_end_px']:.3f} | "
                  f"{r['err3d_mm']:.2f} | {r['delta_avg']:.3f} |" for r in conv["rows"]]
        hit = first_reaching(conv["rows"], conv["target_epe_px"])
        lines += ["", f"EPE ≤ {conv['target_epe_px']} px first reached with {hit['steps']} steps ({hit['fit_s']:.0f} s)."
                  if hit else f"No budget here reached EPE ≤ {conv['target_epe_px']} px."]
    return "\n".join(head + lines) + "\n"


#: Result file under OUT → its name in the docs folder.
DOCS_NAMES: dict[str, str] = {
    "hard/bench.md": "bench.md",
    "default/bench.md": "bench_default.md",
    "hard/vs_baseline.md": "vs_baseline.md",
    "long/bench.md": "long.md",
    "kinematics/kinematics.md": "kinematics.md",
    "ros.md": "ros.md",
    "speed.md": "speed.md",
}


def publish_docs(out: Path, docs_dir: Path, produced: Seq[str] | None = None) -> list[Path]:
    """Copy the Markdown results of this run (`produced`: keys of DOCS_NAMES; None: every one present)
    into `docs_dir` under their published names; returns the files written."""
    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rel, name in DOCS_NAMES.items():
        src = Path(out) / rel
        if (produced is None or rel in produced) and src.is_file():
            lines = []
            for line in src.read_text(encoding="utf-8").splitlines():
                m = _PLOT_LINK.fullmatch(line)
                if m is None:
                    lines.append(line)
                elif m["file"] == "accuracy_vs_threshold.png" and (src.parent / "plots" / m["file"]).is_file():
                    plot = f"{Path(name).stem}_{m['file']}"  # small: published beside the table
                    shutil.copyfile(src.parent / "plots" / m["file"], docs_dir / plot)
                    lines.append(f"![{m['alt']}]({plot})")
                    written.append(docs_dir / plot)
                # contact sheets (about 1 MB each) stay in OUT/<preset>/plots/
            (docs_dir / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
            written.append(docs_dir / name)
    return written


_PLOT_LINK = re.compile(r"!\[(?P<alt>[^\]]*)\]\(plots/(?P<file>[^)]+)\)")


@dataclass(frozen=True)
class SuiteOptions:
    """What `run_full_bench` runs: the preset, the methods and which parts."""

    preset: BenchPreset = "default"  #: "default" runs the default and the hard set; any other preset runs itself
    methods: tuple[str, ...] = ()  #: empty: every baseline, InvNeRF and its ablations
    seeds: tuple[int, ...] = ()  #: empty: the preset's
    width: int = 0  #: 0: the preset's
    height: int = 0  #: 0: the preset's
    frames: int = 0  #: 0: the preset's
    accuracy: bool = True
    kinematics: bool = True
    ros: bool = True
    speed: bool = True
    docs_dir: Path | None = None  #: copy the Markdown results there (`publish_docs`)

    def set_config(self, preset: BenchPreset) -> BenchConfig:
        """The bench set of `preset` with these seeds, size and frame count."""
        return BenchConfig(preset=preset, seeds=self.seeds, width=self.width, height=self.height,
                           frames=self.frames)


def _run_set(out: Path, cfg: BenchConfig, methods: list[str], fit_cfg: FitConfig,
             frontend_cfg: FrontendConfig) -> list[dict[str, Any]]:
    runners = invnerf_runners(fit_cfg, methods, frontend_cfg)
    with tqdm(total=bench_total(cfg, methods), desc=f"bench[{cfg.preset}]", file=sys.stderr, leave=False) as bar:
        result = run_bench(out, cfg, methods, progress=bar.update, runners=runners, frontend_cfg=frontend_cfg)
    print(f"[bench] {cfg.preset}: wrote {result.md_path}, {result.json_path}", file=sys.stderr)
    for p in result.plot_paths:
        print(f"[bench] wrote {p}", file=sys.stderr)
    return result.rows


def kinematics_section(out: Path, cfg: BenchConfig, fit_cfg: FitConfig,
                       frontend_cfg: FrontendConfig) -> list[dict[str, Any]]:
    """Exact / no / noisy kinematics on the camera-motion sequences (hard set by default)."""
    total = len([s for s in bench_specs(cfg) if s.camera_motion]) * len(VARIANTS)
    with tqdm(total=total, desc="bench[kinematics]", file=sys.stderr, leave=False) as bar:
        result = run_kinematics_bench(out / "kinematics", cfg, fit_cfg, progress=bar.update,
                                      frontend_cfg=frontend_cfg)
    print(f"[bench] kinematics: wrote {out / 'kinematics' / 'kinematics.md'}")
    print(format_table(result["targets"], columns=list(result["targets"][0])) if result["targets"] else "")
    return result["targets"]


def run_full_bench(out: Path, opts: SuiteOptions, fit_cfg: FitConfig, frontend_cfg: FrontendConfig) -> dict[str, Any]:
    """The whole benchmark (see the module docstring); returns the summary also written to `summary.json`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # the speed and summary files land here whatever parts run
    all_methods = [*BASELINES, "invnerf", *ABLATIONS]
    methods = list(opts.methods or all_methods)
    unknown = [m for m in methods if m not in all_methods]
    if unknown:
        raise ConfigError(f"--methods: unknown method {unknown[0]!r} (expected some of {', '.join(all_methods)})")
    presets: list[BenchPreset] = [opts.preset] if opts.preset != "default" else ["default", "hard", "long"]
    if not opts.accuracy:
        presets = []
    summary: dict[str, Any] = {}
    for preset in presets:
        # The default set runs the baselines and InvNeRF; ablations run on the hard set only.
        m = [x for x in methods if preset == "hard" or x not in ABLATIONS]
        if preset in ("long", "real_size"):  # InvNeRF first: the process's peak RSS after it is its own
            m = sorted(m, key=lambda x: x != "invnerf")
        rows = _run_set(out / preset, opts.set_config(preset), m, fit_cfg, frontend_cfg)
        if "invnerf" in m:
            check = baseline_check(rows)
            summary[f"vs_baseline_{preset}"] = check
            text = format_table(check, columns=list(check[0]) if check else None)
            (out / preset / "vs_baseline.md").write_text(
                f"# InvNeRF against the best baseline: preset `{preset}`\n\n{stamp_line(machine_info())}\n\n{text}")
            print(f"[bench] {preset}: InvNeRF vs best baseline\n{text}")
    if opts.kinematics:
        kin_preset = "hard" if opts.preset == "default" else opts.preset
        summary["kinematics"] = kinematics_section(out, opts.set_config(kin_preset), fit_cfg, frontend_cfg)
    if opts.ros:
        summary["ros"] = ros_report(out, fit_cfg.device)
    if opts.speed:
        speed = speed_report()
        summary["speed"] = speed
        (out / "speed.md").write_text(_speed_markdown(speed))
        print(_speed_markdown(speed))
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    print(f"[bench] wrote {out / 'summary.json'}")
    if opts.docs_dir is not None:
        produced = [f"{p}/bench.md" for p in presets] + [f"{p}/vs_baseline.md" for p in presets]
        produced += ["kinematics/kinematics.md"] * opts.kinematics + ["ros.md"] * opts.ros + ["speed.md"] * opts.speed
        for path in publish_docs(out, opts.docs_dir, produced):
            print(f"[bench] updated {path}")
    return summary
