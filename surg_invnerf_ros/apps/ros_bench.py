"""ROS latency benchmark (`make bench`): the node as its users run it, measured
from outside.

`run_ros_bench` starts `synthetic_stereo` and `track_node` as subprocesses (console-script targets,
LARGE_DATA transports, output to log files), subscribes from this process, and for `duration_s`
measures:
- latency from the publication of a frame (the receipt here of its ground truth, which the source
  sends with the images) to the receipt of its `~/tracked_points` here, p50/p95/p99: image transport
  into the node, the front end and the transport out. (Not receipt − stamp: the source's stamps can
  run ahead of wall time when its timer catches up.)
- refined updates: tracked_points messages with refined = 1 per minute, the frames they cover, and
  the fits reported in /diagnostics;
- dropped frames: ground-truth frames that never got front-end tracked points, beside the node's own
  drop counters from /diagnostics;
- memory: VmRSS of the tracker and of its descendants (the refinement process) from /proc every
  second; peak, and growth = mean of the last third of the samples − mean of the middle third, plus
  the least-squares slope over the last two thirds in MB/min.

Both nodes run in a fresh namespace and the tracker's /diagnostics is remapped into it, so other
tracker runs on the same ROS domain cannot leak into the numbers. Timings depend on the machine and
its load: report them with both.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from ..eval.metrics import live_accuracy
from ..eval.report import json_safe
from ..ros import convert
from ..ros.bag_nodes import use_large_data_transport
from ..ros.diagnostics import diagnostic_float, diagnostics_to_dict
from ..ros.procs import start_entry_point, stop_process, use_local_discovery
from ..structs import Tracks
from .bench import machine_info, stamp_line
from .stream_reference import offline_tracks, reference_accuracy, scene_config

log = logging.getLogger(__name__)

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "track.yaml"
NODE = "surg_invnerf_tracker"
_TRACKER = "surg_invnerf_ros.ros.track_node:main"
_SOURCE = "surg_invnerf_ros.ros.synthetic_source_node:main"


# ----------------------------------------------------------------------------------------------
# /proc sampling (psutil is not a dependency)
# ----------------------------------------------------------------------------------------------


def vmrss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` from /proc/<pid>/status (VmRSS), None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children, grandchildren, ...), from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: the ppid is the 2nd field after ')'
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class RssSampler:
    """Samples (t_s, node_rss_bytes, descendants_rss_bytes) of one process every `period_s` in a thread."""

    def __init__(self, pid: int, period_s: float = 1.0) -> None:
        self.pid = pid
        self.period_s = period_s
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss_sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = vmrss_bytes(self.pid)
            if rss is None:
                return
            kids = sum(r for r in (vmrss_bytes(c) for c in descendants(self.pid)) if r is not None)
            self.samples.append((time.monotonic(), rss, kids))
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def rss_summary(samples: Sequence[tuple[float, int, int]], t0: float, t1: float) -> dict[str, Any]:
    """Peak RSS over all samples; growth and slope over the samples in [t0, t1] (the measurement).

    `series` lists every sample as [t − t0 (s), node MB, descendants MB].
    """
    if not samples:
        return {"samples": 0}
    arr = np.asarray(samples, dtype=np.float64)
    total = arr[:, 1] + arr[:, 2]
    out: dict[str, Any] = {"samples": len(arr), "peak_total_mb": total.max() / 1e6,
                           "peak_node_mb": arr[:, 1].max() / 1e6, "peak_children_mb": arr[:, 2].max() / 1e6}
    # the whole series, seconds from the measurement start, MB: steps at fit starts vs a steady climb
    out["series"] = [[round(float(a[0] - t0), 2), round(a[1] / 1e6, 1), round(a[2] / 1e6, 1)] for a in arr]
    win = (arr[:, 0] >= t0) & (arr[:, 0] <= t1)
    t, m = arr[win, 0], total[win] / 1e6
    n = len(t)
    if n >= 3:
        mid, last = m[n // 3:2 * n // 3], m[2 * n // 3:]
        out.update(mean_middle_third_mb=float(mid.mean()), mean_last_third_mb=float(last.mean()),
                   growth_mb=float(last.mean() - mid.mean()))
        tail_t, tail_m = t[n // 3:], m[n // 3:]
        slope = np.polyfit((tail_t - tail_t[0]) / 60.0, tail_m, 1)[0] if len(tail_t) >= 2 else float("nan")
        out["slope_mb_per_min"] = float(slope)
        # "grows": the last third sits clearly above the middle one (> 5 MB and > 2 %)
        out["grows"] = bool(out["growth_mb"] > max(5.0, 0.02 * out["mean_middle_third_mb"]))
    else:
        out.update(mean_middle_third_mb=float("nan"), mean_last_third_mb=float("nan"), growth_mb=float("nan"),
                   slope_mb_per_min=float("nan"), grows=False)
    return out


def error_series(t_s: Sequence[float], err_px: Sequence[float], bucket_s: float = 60.0) -> list[list[float]]:
    """Live error over time: [bucket start (s), median error (px), mean error (px), point-frames] per bucket."""
    if not len(err_px):
        return []
    t, e = np.asarray(t_s, np.float64), np.asarray(err_px, np.float64)
    b = np.floor(t / bucket_s).astype(np.int64)
    out = []
    for k in np.unique(b):
        sel = e[b == k]
        out.append([float(k * bucket_s), float(np.median(sel)), float(sel.mean()), int(len(sel))])
    return out


STIR_LATENCY_SKIP_FRAMES = 15
HARD_SCENE = {"synth.difficulty": "hard", "synth.instrument": "true", "synth.camera_motion": "true"}
ACCURACY_WINDOW_S = 60.0  # live accuracy over the last this many seconds of a run (at most half of it)
COVERAGE_WARMUP_S = 10.0  # refined coverage counts keyframes from this many seconds into the run ...
LAG_ALLOWANCE_S = 5.0  # ... to this many seconds before its end


def stir_latency_ms(values_s: Sequence[float], skip: int = STIR_LATENCY_SKIP_FRAMES) -> float:
    """The STIR challenge's latency figure: (p99 + p95 + mean) / 3 of the per-frame latencies in
    milliseconds, the first `skip` frames (warm-up) left out as STIRMetrics' latency logger does;
    NaN when no frame is left."""
    a = np.asarray(values_s, dtype=np.float64)[skip:] * 1e3
    if not len(a):
        return float("nan")
    p95, p99 = np.percentile(a, [95, 99])
    return float((p99 + p95 + a.mean()) / 3.0)


def percentiles_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds (NaN when empty)."""
    if not len(values_s):
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan"),
                "max": float("nan")}
    a = np.asarray(values_s, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(len(a)), "p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()),
            "max": float(a.max())}


# ----------------------------------------------------------------------------------------------
# processes
# ----------------------------------------------------------------------------------------------


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------


def scene_label(scene: Mapping[str, str] | None) -> str:
    """A short name for a source scene: "hard" for HARD_SCENE, else its settings (or "default")."""
    if not scene:
        return "default"
    if dict(scene) == HARD_SCENE:
        return "hard"
    return ", ".join(f"{k.removeprefix('synth.')}={v}" for k, v in scene.items())


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def run_ros_bench(width: int, height: int, rate_hz: float = 30.0, duration_s: float = 60.0, device: str = "auto",
                  *, refine: bool = True, fit_overrides: Sequence[str] | None = None, num_queries: int = 64,
                  scene_frames: int = 60, params_file: str | Path | None = REPO_CONFIG,
                  extra_params: Mapping[str, str] | None = None, log_dir: str | Path | None = None,
                  startup_timeout_s: float = 120.0, drain_s: float = 3.0,
                  progress: Callable[[float, float], None] | None = None,
                  scene: Mapping[str, str] | None = None, cpu_load: int = 0,
                  reference: Sequence[str] = (), reference_dir: str | Path | None = None) -> dict[str, Any]:
    """Run synthetic_stereo → track_node for `duration_s` and measure it from this process.

    Args:
        width, height: image size of the synthetic stream.
        rate_hz: publish rate; stamps step by 1/rate_hz too (synth.fps), so they follow wall time.
        duration_s: measured seconds, from the first tracked_points message.
        device: the tracker's `device` parameter.
        refine: refinement on (the node's defaults, or `params_file`) or off (front end only).
        fit_overrides: `refine.fit_overrides` strings (e.g. "max_steps=100"); None keeps the config's.
        num_queries: tracked points (synth.num_queries; the source sends them to ~/queries).
        scene_frames: distinct frames rendered up front; the stream ping-pongs over them.
        params_file: the tracker's parameter file (config/track.yaml of a checkout); None: defaults.
        extra_params: more tracker parameters, name → ROS value text.
        log_dir: where tracker.log and source.log go (default: a new temporary folder).
        startup_timeout_s: for the tracker's first /diagnostics and for the first tracked points.
        drain_s: after the source stops, how long to wait for in-flight frames before stopping the tracker.
        progress: called about once a second with (elapsed_s, duration_s).
        scene: more `synth.*` parameters of the source, name → ROS value text (e.g. HARD_SCENE).
        cpu_load: CPU-bound processes run beside the node during the measurement (each busy on one core).
        reference: methods (e.g. "invnerf", "dis", "lk") run offline after the measurement on the scene's
            frames (`stream_reference`); their error over the frames of the live accuracy window is reported
            beside the node's.
        reference_dir: where the scene and the reference tracks are kept and reused (default: `log_dir`).

    Returns:
        A JSON-ready dict: settings, `latency_ms` (p50/p95/p99/mean/max, this process's receipt),
        `node_latency_ms` (the node's own stamp → publish p50/p95), `frames` (ground truth, tracked,
        dropped), `node_drops`, `refined`, `rss`, `accuracy` and the log paths.

    Raises:
        RuntimeError: a node exited early or produced nothing in time (the log tail is in the message).
    """
    use_large_data_transport()  # before rclpy.init in this process, and inherited by the nodes
    use_local_discovery()  # one machine by design

    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="ros_bench_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    ns = f"/ros_bench_{uuid.uuid4().hex[:8]}"

    tracker_args = ["-r", f"__ns:={ns}", "-r", f"/diagnostics:={ns}/diagnostics"]
    if params_file is not None and Path(params_file).is_file():
        tracker_args += ["--params-file", str(params_file)]
    tracker_params = {"device": device, "refine.enabled": "true" if refine else "false"}
    if fit_overrides is not None:
        tracker_params["refine.fit_overrides"] = "[" + ", ".join(fit_overrides) + "]"
    tracker_params.update(extra_params or {})
    for k, v in tracker_params.items():
        tracker_args += ["-p", f"{k}:={v}"]
    source_params = {"synth.width": str(width), "synth.height": str(height), "synth.frames": str(scene_frames),
                     "synth.num_queries": str(num_queries), "synth.fps": str(float(rate_hz)),
                     "rate_hz": str(float(rate_hz)), "end": "pingpong", "wait_for_subscribers_s": "30.0",
                     **(scene or {})}
    source_args = ["-r", f"__ns:={ns}", "-r", f"queries_out:={ns}/{NODE}/queries"]
    for k, v in source_params.items():
        source_args += ["-p", f"{k}:={v}"]

    got: dict[str, list] = {"points": [], "gt": [], "diag": []}
    load_start = os.getloadavg()
    ctx = Context()
    rclpy.init(context=ctx)
    tracker = source = None
    hogs: list[subprocess.Popen] = []
    sampler: RssSampler | None = None
    logs = {"tracker": str(log_dir / "tracker.log"), "source": str(log_dir / "source.log"),
            "tracks": str(log_dir / "tracks.npz")}
    try:
        node = rclpy.create_node("ros_bench", namespace=ns, context=ctx)
        rel = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(PointCloud2, f"{NODE}/tracked_points",
                                 lambda m: got["points"].append((time.time_ns(), m)), rel)
        node.create_subscription(PointCloud2, "synthetic_stereo/ground_truth",
                                 lambda m: got["gt"].append((time.time_ns(), m)), rel)
        node.create_subscription(DiagnosticArray, "diagnostics", lambda m: got["diag"].append(m), 50)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)

        def spin_until(pred: Callable[[], Any], timeout_s: float, what: str) -> None:
            end = time.monotonic() + timeout_s
            while not pred():
                for name, p in (("tracker", tracker), ("source", source)):
                    if p is not None and p.poll() is not None:
                        raise RuntimeError(f"ros_bench: {name} exited ({p.returncode}) {what}:\n"
                                           + _tail(Path(logs[name])))
                if time.monotonic() > end:
                    last = diagnostics_to_dict(got["diag"][-1]) if got["diag"] else {}
                    raise RuntimeError(
                        f"ros_bench: nothing {what} within {timeout_s:.0f} s ({len(got['gt'])} ground-truth "
                        f"frames seen; last diagnostics {last}); tracker log:\n" + _tail(Path(logs["tracker"])))
                ex.spin_once(timeout_sec=0.01)

        t_launch = time.monotonic()
        tracker = start_entry_point(_TRACKER, tracker_args, Path(logs["tracker"]))
        sampler = RssSampler(tracker.pid).start()
        spin_until(lambda: got["diag"], startup_timeout_s, "while waiting for the tracker's /diagnostics")
        tracker_ready_s = time.monotonic() - t_launch
        source = start_entry_point(_SOURCE, source_args, Path(logs["source"]))
        spin_until(lambda: got["points"], startup_timeout_s, "while waiting for the first tracked_points")
        hogs += [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpu_load)]
        t0, t0_wall_ns = time.monotonic(), time.time_ns()
        next_progress = t0 + 1.0
        while time.monotonic() - t0 < duration_s:
            for name, p in (("tracker", tracker), ("source", source)):
                if p.poll() is not None:
                    raise RuntimeError(f"ros_bench: {name} exited ({p.returncode}) during the run:\n"
                                       + _tail(Path(logs[name])))
            ex.spin_once(timeout_sec=0.01)
            if progress is not None and time.monotonic() >= next_progress:
                progress(time.monotonic() - t0, duration_s)
                next_progress += 1.0
        t1, t1_wall_ns = time.monotonic(), time.time_ns()
        _stop_all(hogs)
        stop_process(source)
        n_gt = len(got["gt"])
        diag_before = len(got["diag"])
        end = time.monotonic() + drain_s
        while time.monotonic() < end or len(got["diag"]) <= diag_before:  # a fresh report after the drain
            if time.monotonic() > end + 5.0:
                break
            ex.spin_once(timeout_sec=0.02)
        ex.shutdown()
        node.destroy_node()
    finally:
        _stop_all(hogs)
        if sampler is not None:
            sampler.stop()
        stop_process(source)
        code = stop_process(tracker)
        rclpy.shutdown(context=ctx)
    if code not in (0, None, -signal.SIGTERM):
        log.warning("tracker exited with %s; see %s", code, logs["tracker"])
    machine = {**machine_info(), "loadavg_1min_start": load_start[0], "loadavg_1min_end": os.getloadavg()[0],
               "cpu_load_procs": cpu_load}
    assert sampler is not None  # the try block above started it and ran to its end
    refs = None
    if reference:  # after the measurement: the offline fits must not share the CPU with the node
        ref_device = device if device in ("cpu", "cuda") else "auto"
        refs = offline_tracks(scene_config(source_params), reference, reference_dir or log_dir, ref_device)
    return _summarise(got, n_gt, t0, t1, (t0_wall_ns, t1_wall_ns), machine, width=width, height=height, rate_hz=rate_hz,
                      device=device, refine=refine, num_queries=num_queries, tracker_ready_s=tracker_ready_s,
                      scene_name=scene_label(scene),
                      sampler=sampler, logs=logs, convert=convert, diagnostics_to_dict=diagnostics_to_dict,
                      references=refs)


def save_window_tracks(path: Path, stamps: Sequence[int], live: Mapping[int, np.ndarray],
                       refined: Mapping[int, np.ndarray], gt: Mapping[int, np.ndarray]) -> None:
    """Write the accuracy window's `~/tracked_points` records (live, latest refined, ground truth) to `path`
    (.npz), for a closer look at a run: `<which>` holds the records of every frame one after the other (the
    fields of `convert.tracked_points_from_msg`), `<which>_stamp_ns` each record's frame stamp."""
    out: dict[str, Any] = {}  # Any: numpy's stubs read ** of ndarrays as its allow_pickle flag
    for which, recs in (("live", live), ("refined", refined), ("gt", gt)):
        have = [st for st in stamps if st in recs]
        if have:
            out[which] = np.concatenate([recs[st] for st in have])
            out[f"{which}_stamp_ns"] = np.repeat(np.asarray(have, np.int64), [len(recs[st]) for st in have])
    np.savez_compressed(path, **out)


def _summarise(got: Mapping[str, list], n_gt: int, t0: float, t1: float, window_wall_ns: tuple[int, int],
               machine: Mapping[str, Any], *,
               width: int, height: int, rate_hz: float, device: str, refine: bool, num_queries: int,
               scene_name: str = "default",
               tracker_ready_s: float, sampler: RssSampler, logs: Mapping[str, str], convert: Any,
               diagnostics_to_dict: Any, references: tuple[Tracks, Mapping[str, Tracks]] | None = None
               ) -> dict[str, Any]:
    """The result dict from the recorded messages and RSS samples; `references`: the scene's ground truth
    and offline tracks of it by method (`stream_reference.offline_tracks`)."""
    duration = t1 - t0
    gt, gt_recv_ns = {}, {}
    for recv_ns, m in got["gt"][:n_gt]:
        gt[convert.stamp_ns(m.header.stamp)] = convert.tracked_points_from_msg(m)
        gt_recv_ns.setdefault(convert.stamp_ns(m.header.stamp), recv_ns)
    latency_s, live, live_recv_ns, refined_msgs, in_window = [], {}, {}, 0, 0
    refined_stamps: set[int] = set()
    refined: dict[int, np.ndarray] = {}  # the latest refined result of each frame
    refined_first_ns: dict[int, int] = {}  # when its first refined result arrived
    for recv_ns, m in got["points"]:
        stamp = convert.stamp_ns(m.header.stamp)
        pts = convert.tracked_points_from_msg(m)
        if len(pts) and pts["refined"].any():
            refined_msgs += 1
            refined_stamps.add(stamp)
            refined[stamp] = pts
            refined_first_ns.setdefault(stamp, recv_ns)
            continue
        if stamp not in live:
            live[stamp], live_recv_ns[stamp] = pts, recv_ns
            # From the moment the source published the frame (its ground truth, sent with the
            # images, arrived here) to the tracked points' arrival: independent of how the source
            # spaces its stamps, which can run ahead of wall time when its timer catches up.
            if stamp in gt_recv_ns:  # without the publication time there is no latency to measure
                latency_s.append((recv_ns - gt_recv_ns[stamp]) * 1e-9)
            in_window += window_wall_ns[0] <= recv_ns <= window_wall_ns[1]
    dropped = sorted(set(gt) - set(live))
    err, err_t_s = [], []  # live 2D errors, and when (s after the measurement start) their frame arrived
    for stamp, g in gt.items():
        p = live.get(stamp)
        if p is None or len(p) != len(g):
            continue
        vis = (p["visible"] == 1) & (g["visible"] == 1) & (p["id"] == g["id"])
        e = np.hypot(p["u"] - g["u"], p["v"] - g["v"])[vis]
        err += e.tolist()
        err_t_s += [(live_recv_ns[stamp] - window_wall_ns[0]) * 1e-9] * len(e)

    diag = diagnostics_to_dict(got["diag"][-1]) if got["diag"] else {}
    d_in, d_tr, d_mod = (diag.get(f"{NODE}: {k}", {}) for k in ("input", "tracking", "model"))

    num = diagnostic_float
    node_drops = {k[len("drops."):]: int(v) for k, v in d_in.items() if k.startswith("drops.")}

    # Accuracy over the last `window` seconds of the run: the live (front-end) results as published, and
    # the best known (a frame's latest refined result where it has one); the refined results alone.
    window_s = min(ACCURACY_WINDOW_S, duration / 2.0)
    last_from_ns = window_wall_ns[1] - int(window_s * 1e9)
    last = [st for st in gt if st in live and live_recv_ns[st] >= last_from_ns]
    save_window_tracks(Path(logs["tracks"]), last, live, refined, gt)
    acc_live = live_accuracy([(live[st], gt[st]) for st in last])
    acc_best = live_accuracy([(refined[st] if st in refined else live[st], gt[st]) for st in last])
    acc_refined = live_accuracy([(refined[st], gt[st]) for st in refined if st in gt])
    acc_reference = reference_accuracy([gt[st] for st in last], [live[st] for st in last], references)
    # Refined coverage of keyframes after the warm-up, leaving the last LAG_ALLOWANCE_S (a keyframe of
    # the last seconds may still be in a fit when the run stops); keyframes = processed frames / the
    # keyframe spacing the node reports.
    kf_total, processed = num(d_mod, "keyframes_total"), num(d_tr, "frames_processed")
    kf_every = processed / kf_total if kf_total and kf_total > 0 else float("nan")
    lo_ns = window_wall_ns[0] + int(COVERAGE_WARMUP_S * 1e9)
    hi_ns = window_wall_ns[1] - int(LAG_ALLOWANCE_S * 1e9)
    span = [st for st in live if lo_ns <= live_recv_ns[st] <= hi_ns]
    covered = sum(1 for st in span if st in refined_stamps)
    coverage = covered / (len(span) / kf_every) if span and math.isfinite(kf_every) else float("nan")
    lags = [(refined_first_ns[st] - live_recv_ns[st]) * 1e-9 for st in refined_first_ns if st in live_recv_ns]
    fits = num(d_mod, "refined_updates")
    minutes = duration / 60.0 if duration > 0 else float("nan")
    return {
        "width": width, "height": height, "rate_hz": rate_hz, "device": device, "refine": refine,
        "scene": scene_name, "cpu_load": int(machine.get("cpu_load_procs", 0)),
        "num_queries": num_queries, "duration_s": duration, "tracker_ready_s": tracker_ready_s,
        "latency_ms": {**percentiles_ms(latency_s), "stir": stir_latency_ms(latency_s)},
        "node_latency_ms": {"p50": num(d_tr, "latency_p50_s") * 1e3, "p95": num(d_tr, "latency_p95_s") * 1e3},
        "frames": {"ground_truth": len(gt), "tracked": len(set(gt) & set(live)), "dropped": len(dropped),
                   "dropped_fraction": len(dropped) / len(gt) if gt else float("nan"),
                   "tracked_rate_hz": in_window / duration if duration > 0 else float("nan"),
                   "node_frames_processed": num(d_tr, "frames_processed"),
                   "node_frames_shed": num(d_tr, "frames_shed")},
        "node_drops": node_drops,
        "refined": {"messages": refined_msgs, "messages_per_min": refined_msgs / minutes,
                    "frames_covered": len(refined_stamps),
                    "fraction_covered": len(refined_stamps) / len(live) if live else float("nan"),
                    "fits": fits, "fits_per_min": fits / minutes, "model_state": d_mod.get("_message", "")},
        "accuracy": {"err_2d_px_median": float(np.median(err)) if err else float("nan"), "point_frames": len(err),
                     "series": error_series(err_t_s, err), "window_s": window_s, "live": acc_live,
                     "with_refined": acc_best, "refined_only": acc_refined, "reference": acc_reference},
        "refinement": {"keyframe_coverage": min(coverage, 1.0) if math.isfinite(coverage) else coverage,
                       "keyframes_covered": covered, "keyframe_every": kf_every,
                       "lag_s_median": float(np.median(lags)) if lags else float("nan"),
                       "lag_s_p95": float(np.percentile(lags, 95)) if lags else float("nan"),
                       "steps_per_s": num(d_mod, "steps_per_s"), "warm_fits": num(d_mod, "fits"),
                       "node_coverage": num(d_mod, "refined_coverage")},
        "rss": rss_summary(sampler.samples, t0, t1),
        "machine": dict(machine),
        "logs": dict(logs),
    }


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def _f(x: Any, digits: int = 1) -> str:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def run_label(r: Mapping[str, Any]) -> str:
    """"256×192 @ 30 Hz, hard, 120 s, +1 CPU hog": what a row of the report measured."""
    out = f"{r['width']}×{r['height']} @ {_f(r['rate_hz'], 0)} Hz, {r.get('scene', 'default')}, {_f(r['duration_s'], 0)} s"
    return out + (f", +{r['cpu_load']} CPU hog" if r.get("cpu_load") else "")


def format_ros_bench(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """Markdown tables (latency, throughput and refinement, memory), one row per run."""
    runs = [results] if isinstance(results, Mapping) else list(results)
    machine = runs[0].get("machine") if runs else None
    lines = ["# ROS node benchmark", "", *([stamp_line(machine), ""] if machine else []),
             "| run | device | refine | latency p50 / p95 / p99 (ms) | STIR latency (ms) | node p50 / p95 (ms) "
             "| tracked Hz | dropped frames | node drops | load avg start → end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lat, nl, fr = r["latency_ms"], r["node_latency_ms"], r["frames"]
        drops = ", ".join(f"{k} {v}" for k, v in sorted(r["node_drops"].items())) or "none"
        shed = fr.get("node_frames_shed")
        drops += f"; shed {_f(shed, 0)}" if shed is not None and math.isfinite(shed) and shed > 0 else ""
        lines.append(f"| {run_label(r)} | {r['device']} | "
                     f"{'on' if r['refine'] else 'off'} | {_f(lat['p50'])} / {_f(lat['p95'])} / {_f(lat['p99'])} | "
                     f"{_f(lat.get('stir'))} | {_f(nl['p50'])} / {_f(nl['p95'])} | {_f(fr['tracked_rate_hz'])} | "
                     f"{fr['dropped']} / {fr['ground_truth']} ({_f(100 * fr['dropped_fraction'])} %) | {drops} | "
                     f"{_f(r['machine'].get('loadavg_1min_start'))} → {_f(r['machine'].get('loadavg_1min_end'))} |")
    lines += ["", "| run | refined msgs/min | fits/min | frames covered by refined | median 2D err vs GT (px) "
              "| peak RSS node + refiner (MB) | RSS growth last−middle third (MB) | slope (MB/min) | grows |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rf, rs = r["refined"], r["rss"]
        lines.append(f"| {run_label(r)} | {_f(rf['messages_per_min'])} | {_f(rf['fits_per_min'])} | "
                     f"{rf['frames_covered']} ({_f(100 * rf['fraction_covered'])} %) | "
                     f"{_f(r['accuracy']['err_2d_px_median'], 2)} | "
                     f"{_f(rs.get('peak_total_mb'), 0)} ({_f(rs.get('peak_node_mb'), 0)} + "
                     f"{_f(rs.get('peak_children_mb'), 0)}) | {_f(rs.get('growth_mb'))} | "
                     f"{_f(rs.get('slope_mb_per_min'))} | {'yes' if rs.get('grows') else 'no'} |")
    lines += ["", "| run | live EPE mean / median (px) | live 3D (mm) | visibility acc. | visible without 3D "
              "| with refined: EPE mean / median (px) | refined alone: EPE median (px), 3D (mm) "
              "| keyframes refined | lag median / p95 (s) | model steps/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        acc, rf = r.get("accuracy", {}), r.get("refinement")
        lv, best, alone = acc.get("live"), acc.get("with_refined"), acc.get("refined_only")
        if lv is None or rf is None:
            continue
        lines.append(f"| {run_label(r)} | {_f(lv['epe_px'], 2)} / {_f(lv['epe_px_median'], 2)} | "
                     f"{_f(lv['err_3d_mm'], 2)} | {_f(lv['visibility_accuracy'], 3)} | "
                     f"{_f(100 * lv['no_3d_share'])} % | {_f(best['epe_px'], 2)} / {_f(best['epe_px_median'], 2)} | "
                     f"{_f(alone['epe_px_median'], 2)}, {_f(alone['err_3d_mm'], 2)} | "
                     f"{_f(100 * rf['keyframe_coverage'])} % | {_f(rf['lag_s_median'])} / {_f(rf['lag_s_p95'])} | "
                     f"{_f(rf['steps_per_s'])} |")
    ref_rows = [(r, r["accuracy"]["reference"]) for r in runs if r.get("accuracy", {}).get("reference")]
    if ref_rows:
        lines += ["", "| run | tracks | EPE (px) | 3D (mm) | δ_avg | AJ | visibility acc. | EPE, 3D where both "
                  "say visible | live ÷ these: EPE, 3D |", "|---|---|---|---|---|---|---|---|---|"]
        for r, ref in ref_rows:
            lv = ref["live"]
            rows = [(f"live (node), {ref['matched_frames']} frames of {ref['scene_frames_seen']} scene frames", lv)]
            rows += [(f"offline {name}", acc) for name, acc in ref["methods"].items()]
            for i, (label, a) in enumerate(rows):
                ratio = "" if i == 0 else (f"{_f(lv['epe_gt_visible_px'] / a['epe_gt_visible_px'], 2)}×, "
                                           f"{_f(lv['err_3d_gt_visible_mm'] / a['err_3d_gt_visible_mm'], 2)}×")
                lines.append(f"| {run_label(r) if i == 0 else ''} | {label} | {_f(a['epe_gt_visible_px'], 2)} | "
                             f"{_f(a['err_3d_gt_visible_mm'], 2)} | {_f(a['delta_avg'], 3)} | {_f(a['aj'], 3)} | "
                             f"{_f(a['visibility_accuracy'], 3)} | {_f(a['epe_px'], 2)}, {_f(a['err_3d_mm'], 2)} | "
                             f"{ratio} |")
        lines += ["", "Offline: each method run after the measurement on the scene's distinct frames (the stream "
                  "plays them back and forth), from the same queries; its error is taken over the scene frames the "
                  "live window's frames show. The classical trackers chain through at most those frames once, the "
                  "node through the whole stream. EPE, 3D, δ_avg and AJ as in the offline benchmark: over every "
                  "point the ground truth shows, whether or not the tracker calls it visible (3D: those with a depth)."]
    m = runs[0]["machine"] if runs else {}
    lines += ["", f"Accuracy against the source's ground truth over the last {_f(ACCURACY_WINDOW_S, 0)} s of each run "
              f"(at most half of it): live = the front-end messages as published; with refined = a frame's latest "
              f"refined message where it has one; refined alone = every refined message. Keyframes refined: "
              f"keyframes from {_f(COVERAGE_WARMUP_S, 0)} s into the run to {_f(LAG_ALLOWANCE_S, 0)} s before its "
              f"end with a refined message (keyframes = frames processed / the keyframe spacing the node reports); "
              f"lag: a frame's front-end message → its first refined message, both received here. The window's "
              f"messages (live, refined, ground truth) are kept in each run's `tracks.npz` beside its logs."]
    lines += ["", f"Latency: source publication of a frame (its ground truth's receipt) → receipt of "
        f"~/tracked_points in the benchmark process (front-end "
              f"messages only, whole run); STIR latency: (p99 + p95 + mean) / 3 of the same, first "
              f"{STIR_LATENCY_SKIP_FRAMES} frames skipped, as the STIR challenge scores it; "
              f"node: the node's own stamp → end of all outputs of the frame (overlay, "
              f"cloud, TF too), over its last 500 frames. Dropped: ground-truth frames without front-end points. "
              f"{m.get('cpu_count', '?')} CPUs, {m.get('platform', '')}; the source, the tracker, its refinement "
              f"process and this process share them (load avg: 1-minute, whole machine)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m surg_invnerf_ros.apps.ros_bench --size 256x192 --size 640x512 --out out/bench`."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--size", action="append", default=None, help="WxH (repeatable; default 256x192 and 640x512)")
    ap.add_argument("--rate-hz", type=float, default=30.0)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--no-refine", action="store_true")
    ap.add_argument("--hard", action="store_true", help="hard scene with an instrument and camera motion")
    ap.add_argument("--scene-frames", type=int, default=60, help="distinct frames the source ping-pongs over")
    ap.add_argument("--cpu-load", type=int, default=0, help="CPU-bound processes run beside the node")
    ap.add_argument("--reference", action="append", default=[], metavar="METHOD",
                    help="after each run, track the scene offline with this method (invnerf, dis, lk, ...) and "
                         "report its error over the live window's frames (repeatable)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="a tracker parameter, e.g. refine.keyframe_every:=15 (repeatable)")
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for size in args.size or ["256x192", "640x512"]:
        w, h = (int(v) for v in size.lower().split("x"))
        log.info("ros_bench: %dx%d, %.0f Hz, %.0f s, device %s", w, h, args.rate_hz, args.duration_s, args.device)
        runs.append(run_ros_bench(w, h, args.rate_hz, args.duration_s, args.device, refine=not args.no_refine,
                                  log_dir=out / f"ros_{w}x{h}_logs", scene=HARD_SCENE if args.hard else None,
                                  scene_frames=args.scene_frames, cpu_load=args.cpu_load,
                                  reference=args.reference, reference_dir=out / "ros_reference",
                                  extra_params=dict(p.split(":=", 1) for p in args.param)))
    (out / "ros_bench.json").write_text(json.dumps(json_safe(runs), indent=2))
    md = format_ros_bench(runs)
    (out / "ros_bench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
