"""The soak (`surg-invnerf soak`, `make soak`): the node for half an hour, judged against its limits.

`run_soak` runs `ros_bench.run_ros_bench` (synthetic_stereo → track_node with refinement on, from
outside, RSS of the tracker and its refine process sampled every second) for `SoakConfig.duration_s`
and judges the run:
- **memory**: RSS growth of tracker + refiner over the final `rss_span_s`, as the least-squares line
  through the samples times the span (a steady climb; the step at each fit start averages out), and
  the difference of the means of the span's first and last minute;
- **accuracy stability**: median live 2D error against the source's ground truth in the last
  `window_s` over the first `window_s` after `warmup_s`;
- **per-frame service**: dropped source frames and the p95 latency publication → `~/tracked_points`.

It writes `soak.json` (everything, the RSS and error series included), `soak.md` and `soak.png`
(RSS and live error over time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..config import SoakConfig, to_dict
from ..eval.report import json_safe
from .bench import stamp_line


def rss_growth(series: list[list[float]], t_end_s: float, span_s: float) -> dict[str, float]:
    """RSS growth (tracker + refiner, MB) over [t_end_s − span_s, t_end_s] of `series` ([t_s, node MB, kids MB]).

    Returns `fit_mb` (the least-squares slope × span) and `ends_mb` (mean of the last minute − mean of
    the first minute of the span); NaN with fewer than 3 samples.
    """
    a = np.asarray(series, np.float64).reshape(-1, 3)
    t0 = t_end_s - span_s
    sel = (a[:, 0] >= t0) & (a[:, 0] <= t_end_s)
    t, m = a[sel, 0], a[sel, 1] + a[sel, 2]
    if len(t) < 3:
        return {"fit_mb": float("nan"), "ends_mb": float("nan"), "samples": int(len(t))}
    slope = float(np.polyfit(t - t0, m, 1)[0])
    first, last = m[t <= t0 + 60.0], m[t >= t_end_s - 60.0]
    return {"fit_mb": slope * span_s, "ends_mb": float(last.mean() - first.mean()), "samples": int(len(t)),
            "start_mb": float(first.mean()), "end_mb": float(last.mean())}


def window_error(series: list[list[float]], t0_s: float, t1_s: float) -> float:
    """Point-frame-weighted mean of the per-bucket medians in [t0_s, t1_s) of an error series
    ([bucket start s, median px, mean px, count]); NaN when no bucket falls inside."""
    a = np.asarray(series, np.float64).reshape(-1, 4)
    sel = (a[:, 0] >= t0_s) & (a[:, 0] < t1_s) & (a[:, 3] > 0)
    if not sel.any():
        return float("nan")
    return float(np.average(a[sel, 1], weights=a[sel, 3]))


def judge(run: Mapping[str, Any], cfg: SoakConfig) -> dict[str, Any]:
    """The soak's figures and pass/fail per limit from one `run_ros_bench` result."""
    duration = float(run["duration_s"])
    growth = rss_growth(run["rss"].get("series", []), duration, cfg.rss_span_s)
    series = run["accuracy"].get("series", [])
    first = window_error(series, cfg.warmup_s, cfg.warmup_s + cfg.window_s)
    last = window_error(series, duration - cfg.window_s, duration + 1.0)
    ratio = last / first if first > 0 else float("nan")
    dropped = float(run["frames"]["dropped_fraction"])
    p95 = float(run["latency_ms"]["p95"])
    checks = {
        "rss_growth": {"value": max(growth["fit_mb"], growth["ends_mb"]), "limit": cfg.max_rss_growth_mb,
                       "unit": "MB", "ok": bool(max(growth["fit_mb"], growth["ends_mb"]) <= cfg.max_rss_growth_mb)},
        "error_ratio": {"value": ratio, "limit": cfg.max_error_ratio, "unit": "×",
                        "ok": bool(ratio <= cfg.max_error_ratio)},
        "dropped_fraction": {"value": dropped, "limit": cfg.max_dropped_fraction, "unit": "",
                             "ok": bool(dropped <= cfg.max_dropped_fraction)},
        "latency_p95_ms": {"value": p95, "limit": cfg.max_latency_p95_ms, "unit": "ms",
                           "ok": bool(p95 <= cfg.max_latency_p95_ms)},
    }
    return {"rss_growth": growth, "error_first_px": first, "error_last_px": last, "checks": checks,
            "passed": all(c["ok"] for c in checks.values())}


def format_soak(result: Mapping[str, Any]) -> str:
    """Markdown: the limits table and the run's settings."""
    run, v, cfg = result["run"], result["verdict"], result["config"]
    g = v["rss_growth"]
    names = {"rss_growth": f"RSS growth over the last {cfg['rss_span_s'] / 60:.0f} min (tracker + refiner)",
             "error_ratio": f"median live error, last {cfg['window_s'] / 60:.0f} min / first "
                            f"{cfg['window_s'] / 60:.0f} min after {cfg['warmup_s'] / 60:.0f} min warm-up",
             "dropped_fraction": "source frames without tracked points",
             "latency_p95_ms": "latency p95, publication → ~/tracked_points"}
    lines = ["# Soak: the node for a long run", "", stamp_line(run["machine"]), "",
             f"{run['width']}×{run['height']} at {run['rate_hz']:.0f} Hz, {run['num_queries']} queries, refinement "
             f"{'on' if run['refine'] else 'off'}, device {run['device']}, {run['duration_s'] / 60:.1f} min measured.",
             "", "| check | measured | limit | ok |", "|---|---|---|---|"]
    for key, c in v["checks"].items():
        val = c["value"]
        text = f"{100 * val:.2f} %" if key == "dropped_fraction" else f"{val:.2f} {c['unit']}".strip()
        lim = f"{100 * c['limit']:.0f} %" if key == "dropped_fraction" else f"{c['limit']:g} {c['unit']}".strip()
        lines.append(f"| {names[key]} | {text} | {lim} | {'yes' if c['ok'] else '**no**'} |")
    lines += ["", f"RSS over the final span: {g.get('start_mb', float('nan')):.0f} MB → {g.get('end_mb', float('nan')):.0f}"
              f" MB (first and last minute); least-squares growth {g['fit_mb']:.1f} MB, ends {g['ends_mb']:.1f} MB. "
              f"Peak {run['rss'].get('peak_total_mb', float('nan')):.0f} MB. Live error {v['error_first_px']:.2f} px → "
              f"{v['error_last_px']:.2f} px. Frames: {run['frames']['tracked']} of {run['frames']['ground_truth']} "
              f"tracked; refined messages {run['refined']['messages']}, fits {run['refined']['fits']:.0f}; "
              f"node drops: {', '.join(f'{k} {n}' for k, n in sorted(run['node_drops'].items())) or 'none'}.",
              "", "![RSS and live error over time](soak.png)", ""]
    return "\n".join(lines)


def plot_soak(result: Mapping[str, Any], path: str | Path) -> Path:
    """RSS (tracker, refiner, total) and the per-minute median live error over time, one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run, cfg = result["run"], result["config"]
    rss = np.asarray(run["rss"].get("series", []), np.float64).reshape(-1, 3)
    err = np.asarray(run["accuracy"].get("series", []), np.float64).reshape(-1, 4)
    fig = Figure(figsize=(8, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    minutes = rss[:, 0] / 60.0
    ax1.plot(minutes, rss[:, 1] + rss[:, 2], label="tracker + refiner", color="k")
    ax1.plot(minutes, rss[:, 1], label="tracker", color="tab:blue", alpha=0.7)
    ax1.plot(minutes, rss[:, 2], label="refine process", color="tab:orange", alpha=0.7)
    span0 = (run["duration_s"] - cfg["rss_span_s"]) / 60.0
    ax1.axvspan(span0, run["duration_s"] / 60.0, color="0.9", zorder=0, label="growth span")
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(loc="center right", fontsize=8)
    ax1.set_title(f"Soak {run['width']}×{run['height']} @ {run['rate_hz']:.0f} Hz, refinement "
                  f"{'on' if run['refine'] else 'off'}")
    err = err[(err[:, 0] >= 0) & (err[:, 0] + 60.0 <= run["duration_s"] + 1.0)]  # whole minutes of the run only
    if len(err):
        ax2.plot((err[:, 0] + 30.0) / 60.0, err[:, 1], marker="o", ms=3, color="tab:green", label="median per minute")
    ax2.axvspan(cfg["warmup_s"] / 60.0, (cfg["warmup_s"] + cfg["window_s"]) / 60.0, color="0.9", zorder=0)
    ax2.axvspan((run["duration_s"] - cfg["window_s"]) / 60.0, run["duration_s"] / 60.0, color="0.9", zorder=0)
    ax2.set_xlabel("minutes since the first tracked points")
    ax2.set_ylabel("live 2D error (px)")
    ax2.set_ylim(bottom=0)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(str(path))
    return path


def run_soak(cfg: SoakConfig, out_dir: str | Path,
             progress: Callable[[float, float], None] | None = None) -> dict[str, Any]:
    """Run the soak; write soak.json, soak.md and soak.png into `out_dir`; the result dict."""
    from .ros_bench import run_ros_bench  # needs the ROS 2 wheels

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = run_ros_bench(cfg.width, cfg.height, cfg.rate_hz, cfg.duration_s, cfg.device, refine=True,
                        num_queries=cfg.num_queries, log_dir=out / "logs", progress=progress)
    result = {"config": to_dict(cfg), "run": run, "verdict": judge(run, cfg)}
    (out / "soak.json").write_text(json.dumps(json_safe(result), indent=2))
    plot_soak(result, out / "soak.png")
    (out / "soak.md").write_text(format_soak(result))
    return result
