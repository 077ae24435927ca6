"""The ROS part of `make demo`: synthetic source → tracker node → a live accuracy checker.

Both nodes run as their console scripts' targets in subprocesses (LARGE_DATA transports, stopped
with SIGTERM); the checker runs here, matches `~/tracked_points` to `~/ground_truth` by image stamp
and prints accuracy every second. At the end it writes an overlay contact sheet (frames of the
node's `~/overlay`) and the metric table (front end alone, and with refined tracks where a fit has
delivered them).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image, PointCloud2

from ..eval.metrics import compute_metrics
from ..eval.report import format_table, metrics_row
from ..io.trackfile import tracks_from_records
from ..ros import convert
from ..ros.bag_nodes import use_large_data_transport
from ..ros.diagnostics import diagnostic_float, diagnostics_to_dict
from ..ros.procs import start_entry_point, stop_process, use_local_discovery

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "track.yaml"
TRACKER = "/surg_invnerf_tracker"
SOURCE = "/synthetic_stereo"


def run_ros_demo(out_dir: Path, device: str = "auto", duration_s: float = 60.0, width: int = 256,
                 height: int = 192, rate_hz: float = 30.0, source_timeout_s: float = 180.0) -> int:
    """Run the live pipeline for `duration_s`; print accuracy every second; write the results.

    Returns 1 (with one line saying why) when the tracker exits early or the source publishes no
    ground truth within `source_timeout_s` (it pre-renders its frames first).
    """
    use_large_data_transport()  # the checker must speak the nodes' transports, before rclpy.init
    use_local_discovery()  # the three processes run here; multicast discovery sometimes never matches them
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] ROS pipeline for {duration_s:.0f} s: synthetic_stereo ({width}x{height} @ {rate_hz:.0f} Hz) "
          f"→ surg_invnerf_tracker (device {device}) → live checker")
    tracker = start_entry_point("surg_invnerf_ros.ros.track_node:main",
                                ["--params-file", str(REPO_CONFIG), "-p", f"device:={device}"], out / "tracker.log")
    source = None
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    live: dict[int, np.ndarray] = {}
    refined: dict[int, np.ndarray] = {}
    gt: dict[int, np.ndarray] = {}
    overlays: list[tuple[int, np.ndarray]] = []
    model: dict[str, str] = {}  # the tracker's latest /diagnostics model status

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for name, values in diagnostics_to_dict(msg).items():
            if name.startswith(TRACKER.strip("/")) and name.endswith(": model"):
                model.clear()
                model.update(values)

    def on_points(msg: PointCloud2) -> None:
        p = convert.tracked_points_from_msg(msg)
        (refined if p["refined"].any() else live)[convert.stamp_ns(msg.header.stamp)] = p

    def on_overlay(msg: Image) -> None:
        if not overlays or convert.stamp_ns(msg.header.stamp) - overlays[-1][0] > 2e9:
            overlays.append((convert.stamp_ns(msg.header.stamp), convert.image_to_rgb_u8(msg)))

    node = ex = None
    try:
        node = rclpy.create_node("demo_checker", context=ctx)
        node.create_subscription(PointCloud2, f"{TRACKER}/tracked_points", on_points, 500)
        node.create_subscription(PointCloud2, f"{SOURCE}/ground_truth",
                                 lambda m: gt.__setitem__(convert.stamp_ns(m.header.stamp),
                                                          convert.tracked_points_from_msg(m)), 500)
        node.create_subscription(Image, f"{TRACKER}/overlay", on_overlay, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and node.count_publishers(f"{TRACKER}/tracked_points") == 0:
            ex.spin_once(timeout_sec=0.1)
            if tracker.poll() is not None:
                print(f"[demo] tracker exited early; see {out / 'tracker.log'}", file=sys.stderr)
                return 1
        source = start_entry_point("surg_invnerf_ros.ros.synthetic_source_node:main",
                                   ["-p", f"synth.width:={width}", "-p", f"synth.height:={height}", "-p", "synth.frames:=48",
                                    "-p", "synth.instrument:=true", "-p", "synth.camera_motion:=true",
                                    "-p", "synth.num_queries:=32", "-p", f"rate_hz:={rate_hz}",
                                    "-r", f"queries_out:={TRACKER}/queries"], out / "source.log")
        t_wait = time.monotonic()  # the source pre-renders its frames before the first publish
        while not gt and time.monotonic() - t_wait < source_timeout_s and source.poll() is None:
            ex.spin_once(timeout_sec=0.1)
        if not gt:
            print(f"[demo] the synthetic source published no ground truth (exit code {source.poll()}, "
                  f"{time.monotonic() - t_wait:.0f} s); see {out / 'source.log'}", file=sys.stderr)
            return 1
        t_start = time.monotonic()
        next_print = t_start + 1.0
        while time.monotonic() - t_start < duration_s:
            ex.spin_once(timeout_sec=0.05)
            if time.monotonic() >= next_print:
                next_print += 1.0
                print(_live_line(time.monotonic() - t_start, live, refined, gt), flush=True)
            if tracker.poll() is not None:
                print("[demo] tracker exited early", file=sys.stderr)
                break
    finally:  # on every path, early returns included: an executor left running blocks rclpy.shutdown
        if ex is not None:
            ex.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=ctx)
        stop_process(tracker)
        stop_process(source)
    return _write_results(out, live, refined, gt, overlays, model)


def _errors(preds: dict[int, np.ndarray], gt: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    e2, e3 = [], []
    for s, p in preds.items():
        g = gt.get(s)
        if g is None or len(g) != len(p):
            continue
        vis = (g["visible"] == 1) & (p["id"] == g["id"])
        e2.append(np.hypot(p["u"] - g["u"], p["v"] - g["v"])[vis])
        e3.append(1e3 * np.linalg.norm(np.stack([p["x"] - g["x"], p["y"] - g["y"], p["z"] - g["z"]], -1), axis=-1)[vis])
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    return cat(e2), cat(e3)


def _live_line(t_s: float, live: dict, refined: dict, gt: dict) -> str:
    e2, e3 = _errors(live, gt)
    r2, _ = _errors(refined, gt)
    med = (lambda x: f"{np.nanmedian(x):5.2f}" if len(x) else "  -  ")
    within = f"{np.mean(e2 < 4.0):.2f}" if len(e2) else " -  "
    return (f"[demo] t={t_s:4.0f}s frames={len(live):4d} median 2D {med(e2)} px  <4px {within}  "
            f"median 3D {med(e3)} mm | refined frames={len(refined):4d} median 2D {med(r2)} px")


def refinement_summary(model: dict[str, str], rows: list[dict]) -> str:
    """One line on the live refinement: keyframes refined and lag (the tracker's /diagnostics), and whether
    publishing the refined tracks beat the front end's (mean EPE of the "with refined" row against the live row)."""
    cov, lag, sps = (diagnostic_float(model, k) for k in ("refined_coverage", "refine_lag_p50_s", "steps_per_s"))
    head = (f"refinement: {100 * cov:.0f} % of keyframes refined, median lag {lag:.1f} s, {sps:.1f} model steps/s"
            if np.isfinite(cov) else "refinement: no model diagnostics received")
    by = {r["method"]: r.get("epe_px", float("nan")) for r in rows}
    live_e, ref_e = by.get("front end (live)", float("nan")), by.get("with refined", float("nan"))
    if not np.isfinite(ref_e):
        return f"{head}; no refined tracks matched the ground truth"
    verdict = ("improves what is published" if ref_e < live_e - 0.005 else
               "does not improve what is published" if ref_e > live_e + 0.005 else "changes nothing published")
    # three decimals: the verdict's margin is 0.005 px, which two would round away
    return f"{head}; with refined {ref_e:.3f} px against the front end's {live_e:.3f} px: refinement {verdict}"


def _write_results(out: Path, live: dict, refined: dict, gt: dict, overlays: list,
                   model: dict[str, str] | None = None) -> int:
    stamps = sorted(s for s in gt if s in live)
    if not stamps:
        print("[demo] no tracked frames matched the ground truth", file=sys.stderr)
        return 1
    ids = np.sort(gt[stamps[0]]["id"]).astype(np.int64)
    gt_tracks = tracks_from_records([gt.get(s) for s in stamps], ids)
    live_tracks = tracks_from_records([live.get(s) for s in stamps], ids)
    rows = [metrics_row("front end (live)", compute_metrics(live_tracks, gt_tracks))]
    if refined:
        merged = {**live, **{s: p for s, p in refined.items() if s in live}}
        merged_tracks = tracks_from_records([merged.get(s) for s in stamps], ids)
        rows.append(metrics_row("with refined", compute_metrics(merged_tracks, gt_tracks)))
    table = format_table(rows, columns=["method", "epe_px", "epe_end_px", "delta_avg", "oa", "err3d_finite_mm", "fail3d_frac"])
    summary = refinement_summary(model or {}, rows)
    (out / "metrics.md").write_text(f"{table}\n{summary}\n")
    print(table)
    print(f"[demo] {summary}")
    print(f"[demo] {len(stamps)} frames tracked, {len(refined)} refined; wrote {out / 'metrics.md'}")
    if overlays:
        tiles = [img for _, img in overlays[-8:]]
        rows_img = [np.concatenate(tiles[i:i + 4] + [np.zeros_like(tiles[0])] * (4 - len(tiles[i:i + 4])), 1)
                    for i in range(0, len(tiles), 4)]
        sheet = np.concatenate(rows_img, 0)
        path = out / "overlay_contact_sheet.png"
        cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"[demo] wrote {path}")
    return 0
