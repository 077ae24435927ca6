"""The kinematics benchmark: InvNeRF with exact, without, and with noisy, lagging kinematics.

On every camera-motion sequence of a `BenchConfig` preset, three fits with the same `FitConfig`:

- `kin_exact`: the sequence's true endoscope poses (rays cast in the world frame);
- `kin_off`: the same sequence with the poses ignored (`use_kinematics=false`);
- `kin_noisy`: the same scene with poses that carry `kin_noise_m` / `kin_noise_deg` of noise and lag
  the images by `kin_lag_s`, compensated by re-sampling them at `stamp + kin_lag_s`
  through the node's pose buffer with `kinematics.time_offset_s` (`ros.kinematics.camera_poses_at`).

The targets (`KIN_TARGETS`): exact kinematics give a mean 3D error ≤ 0.8× that without, with no worse 2D
error; noisy, compensated kinematics are no worse than none in 2D and 3D. Each row also splits its
3D error into lateral and depth parts, and each sequence gets its depth cues from the ground truth
(`depth_cues`): how far a depth error moves a point in the images through the stereo baseline and
through the camera's motion, and how far the tissue moves in the world frame.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping
from typing import Sequence as Seq

from ..config import BenchConfig, FitConfig, FrontendConfig, KinematicsConfig
from ..eval.depth_cues import err3d_parts, motion_depth_cues
from ..eval.metrics import compute_metrics, query_frames_from
from ..eval.report import format_table, json_safe, mean_rows, metrics_row
from ..io.sequence import read_sequence
from ..io.trackfile import read_tracks, write_tracks
from ..ros.kinematics import camera_poses_at
from ..track import track_sequence
from .bench import bench_specs, ensure_sequence, machine_info, stamp_line

log = logging.getLogger(__name__)

VARIANTS = ("kin_exact", "kin_off", "kin_noisy")
KIN_TARGETS = {"err3d_ratio_exact": 0.8}
COLUMNS = ["sequence", "method", "epe_px", "epe_end_px", "delta_avg", "oa", "err3d_mm", "err3d_end_mm",
           "err3d_lateral_mm", "depth_err_mm", "depth_bias_mm", "time_s"]
CUE_COLUMNS = ["sequence", "stereo_px_per_mm", "parallax_px_per_mm", "camera_travel_mm", "tissue_motion_world_mm"]


def run_kinematics_bench(out_dir: str | Path, cfg: BenchConfig, fit_cfg: FitConfig,
                         progress: Callable[[int], object] | None = None,
                         frontend_cfg: FrontendConfig | None = None) -> dict[str, Any]:
    """Fit every variant on every camera-motion sequence; write `kinematics.md`, `kinematics.json` and
    each variant's tracks (`tracks/<sequence>/<variant>.npz`)."""
    out = Path(out_dir)
    specs = [s for s in bench_specs(cfg) if s.camera_motion]
    rows: list[dict[str, Any]] = []
    cues: list[dict[str, Any]] = []
    for spec in specs:
        exact_dir = ensure_sequence(out / "sequences", spec)
        gt = read_tracks(exact_dir / "gt" / "tracks.npz")
        exact = read_sequence(exact_dir)  # one read: `use_kinematics=false` ignores its poses
        assert exact.T_world_cam is not None, f"{exact_dir}: a camera-motion sequence without kinematics.csv"
        query_frames = query_frames_from(gt, exact.queries)
        cues.append({"sequence": spec.name, **motion_depth_cues(gt, exact.T_world_cam, exact.calib.K,
                                                               exact.calib.baseline_m, query_frames)})
        runs = {"kin_exact": (exact, replace(fit_cfg, use_kinematics=True)),
                "kin_off": (exact, replace(fit_cfg, use_kinematics=False))}
        noisy = read_sequence(ensure_sequence(out / "sequences", spec, "_kinnoise", pose_noise_m=cfg.kin_noise_m,
                                              pose_noise_deg=cfg.kin_noise_deg, pose_time_offset_s=cfg.kin_lag_s))
        assert noisy.T_world_cam is not None, f"{spec.name}: the noisy variant wrote no kinematics.csv"
        noisy.T_world_cam = camera_poses_at(noisy.stamps_ns, noisy.stamps_ns, noisy.T_world_cam,
                                            KinematicsConfig(time_offset_s=cfg.kin_lag_s))[0]
        runs["kin_noisy"] = (noisy, replace(fit_cfg, use_kinematics=True))
        for name, (seq, fcfg) in runs.items():
            seq.name = spec.name
            t0 = time.perf_counter()
            tracks = track_sequence(seq, "invnerf", fit_cfg=fcfg, frontend_cfg=frontend_cfg)
            elapsed_s = time.perf_counter() - t0
            write_tracks(out / "tracks" / spec.name / f"{name}.npz", tracks)
            metrics = {**compute_metrics(tracks, gt, query_frames), **err3d_parts(tracks, gt, query_frames)}
            rows.append(metrics_row(name, metrics, sequence=spec.name, time_s=elapsed_s))
            log.info("%s on %s: EPE %.3f px, 3D %.3f mm", name, spec.name, metrics["epe_px"], metrics["err3d_mm"])
            if progress is not None:
                progress(1)
    targets = kinematics_targets(rows)
    result = {"rows": rows, "summary": mean_rows(rows, key="method", label={"sequence": "mean"}), "targets": targets,
              "depth_cues": cues,
              "config": {"kin_noise_m": cfg.kin_noise_m, "kin_noise_deg": cfg.kin_noise_deg,
                         "kin_lag_s": cfg.kin_lag_s}, "machine": machine_info()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "kinematics.json").write_text(json.dumps(json_safe(result), indent=2))
    (out / "kinematics.md").write_text(kinematics_markdown(result))
    return result


def kinematics_targets(rows: Seq[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per sequence: the targets from the three variants' rows (sequences missing one are skipped)."""
    out = []
    for seq_name in sorted({r["sequence"] for r in rows}):
        by = {r["method"]: r for r in rows if r["sequence"] == seq_name}
        if not all(v in by for v in VARIANTS):
            continue
        ex, off, noisy = by["kin_exact"], by["kin_off"], by["kin_noisy"]
        row = {"sequence": seq_name,
               "err3d_ratio_exact": ex["err3d_mm"] / off["err3d_mm"], "epe_ratio_exact": ex["epe_px"] / off["epe_px"],
               "err3d_ratio_noisy": noisy["err3d_mm"] / off["err3d_mm"],
               "epe_ratio_noisy": noisy["epe_px"] / off["epe_px"]}
        row["exact_3d_ok"] = row["err3d_ratio_exact"] <= KIN_TARGETS["err3d_ratio_exact"]
        row["exact_2d_ok"] = row["epe_ratio_exact"] <= 1.0
        row["noisy_ok"] = row["err3d_ratio_noisy"] <= 1.0 and row["epe_ratio_noisy"] <= 1.0
        out.append(row)
    return out


def kinematics_markdown(result: Mapping[str, Any]) -> str:
    c = result["config"]
    lines = ["# Kinematics benchmark", "", *([stamp_line(result["machine"]), ""] if result.get("machine") else []),
             f"InvNeRF with exact poses (`kin_exact`), without poses (`kin_off`) and with poses carrying "
             f"{c['kin_noise_m'] * 1000:g} mm / {c['kin_noise_deg']:g}° per-axis noise and a {c['kin_lag_s'] * 1000:g} ms "
             "lag, compensated by the same time offset (`kin_noisy`).", "",
             format_table(result["rows"], columns=COLUMNS), "", "Means:", "",
             format_table(result["summary"], columns=COLUMNS), "",
             f"Targets: exact 3D ≤ {KIN_TARGETS['err3d_ratio_exact']}× without and 2D not worse; noisy no worse "
             "than without (ratios to `kin_off`).", ""]
    if result["targets"]:
        lines.append(format_table(result["targets"], columns=list(result["targets"][0])))
    if result.get("depth_cues"):
        lines += ["", "## Depth cues (ground truth)", "",
                  "Image shift per mm of depth error through the stereo baseline (disparity) and through the "
                  "camera's motion from the query frame (parallax, were the tissue rigid: all that known poses "
                  "can add to the depth), against how far the camera and the tissue (in the world frame) "
                  "move; means over the scored frames. `depth_bias_mm` above is the part of the depth error "
                  "that is the same in every frame of a track.", "",
                  format_table(result["depth_cues"], columns=CUE_COLUMNS)]
    m = result["machine"]
    lines += ["", f"Machine: {m.get('platform', '?')}, {m.get('cpu_count', '?')} CPUs, torch {m.get('torch', '?')}, "
              f"CUDA {m.get('cuda') or 'none'}."]
    return "\n".join(lines) + "\n"
