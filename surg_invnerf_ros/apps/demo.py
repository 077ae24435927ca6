"""The main job on the embedded default (`make demo`).

1. Generate a synthetic stereo endoscope sequence (instrument and camera motion) with ground truth.
2. Track its queries with every method (the classical baselines and InvNeRF), print the metric table
   and write the accuracy plot and an overlay contact sheet.
3. Unless `--offline`: run the ROS 2 pipeline (synthetic source → tracker node → a live checker that
   prints accuracy against ground truth every second) for about a minute.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..config import FitConfig, FrontendConfig, SynthConfig
from ..eval.metrics import compute_metrics, query_frames_from
from ..eval.plots import contact_frames, contact_sheet, plot_accuracy_vs_threshold
from ..eval.report import format_table, metrics_row
from ..frontend.baselines import BASELINES
from ..io.sequence import read_sequence
from ..io.trackfile import read_tracks, write_tracks
from ..synth.generate import generate_sequence
from ..track import track_sequence
from .progress import fit_bar

#: The embedded default scene: medium difficulty, an instrument and a moving endoscope.
DEMO_SCENE = SynthConfig(frames=48, width=256, height=192, seed=7, instrument=True, camera_motion=True,
                         difficulty="medium", num_queries=64)


def run_offline(out: Path, fit_cfg: FitConfig, methods: tuple[str, ...] | None = None,
                frontend_cfg: FrontendConfig | None = None) -> dict:
    """Steps 1–2; returns {"rows": ..., "table": str, "plots": [paths]}."""
    seq_dir = out / "seq"
    if not (seq_dir / "gt" / "tracks.npz").is_file():
        with tqdm(total=DEMO_SCENE.frames, desc="synth", unit="frame", file=sys.stderr, leave=False) as bar:
            generate_sequence(seq_dir, DEMO_SCENE, progress=bar.update)
    seq = read_sequence(seq_dir)
    gt = read_tracks(seq_dir / "gt" / "tracks.npz")
    query_frames = query_frames_from(gt, seq.queries)
    methods = methods or (*BASELINES, "invnerf")
    rows, by_method = [], {}
    for method in methods:
        t0 = time.perf_counter()
        with fit_bar(f"track[{method}]") as update:
            tracks = track_sequence(seq, method, fit_cfg=fit_cfg, frontend_cfg=frontend_cfg, progress=update)
        elapsed_s = time.perf_counter() - t0
        write_tracks(out / "tracks" / f"{method}.npz", tracks)
        by_method[method] = tracks
        rows.append(metrics_row(method, compute_metrics(tracks, gt, query_frames), time_s=elapsed_s))
        print(f"  {method:<9} done in {elapsed_s:6.1f} s", file=sys.stderr)
    plots = [
        plot_accuracy_vs_threshold(rows, out / "accuracy_vs_threshold.png"),
        contact_sheet(seq, by_method, gt, out / "contact_sheet.png", frames=contact_frames(seq.num_frames, 4)),
    ]
    table = format_table(rows)
    (out / "metrics.md").write_text(table)
    return {"rows": rows, "table": table, "plots": plots}


def run_demo(out: Path, fit_cfg: FitConfig, frontend_cfg: FrontendConfig, offline: bool = False) -> int:
    """The whole demo (see the module docstring); 0 on success."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] offline: synthetic sequence → every tracker → metrics ({out})")
    result = run_offline(out, fit_cfg, frontend_cfg=frontend_cfg)
    print(result["table"])
    for p in result["plots"]:
        print(f"[demo] wrote {p}")
    if not offline:
        from .demo_pipeline import run_ros_demo  # optional: needs the ROS 2 wheels

        return run_ros_demo(out / "ros", device=fit_cfg.device)
    return 0
