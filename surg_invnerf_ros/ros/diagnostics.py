"""Node health for /diagnostics (DESIGN §5): rates, stereo skew, drops by reason, queues, model, latency.

`NodeStats` is plain code (thread-safe counters over a monotonic clock the caller passes in), so it
is tested without DDS; `diagnostic_array()` turns one snapshot into a DiagnosticArray. Levels: OK;
WARN when messages were dropped since the last report or input stopped, or while the refinement
worker process is being restarted; ERROR when the refinement worker failed (a fit failed, or the
worker process died too often and refinement stopped).
"""

from __future__ import annotations

import os
import resource
import threading
from collections import Counter, deque
from typing import Any, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .convert import header

_NS = 1_000_000_000


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class NodeStats:
    """Counters the node updates from its callbacks; read by the diagnostics timer."""

    def __init__(self, rate_window_s: float = 2.0, latency_window: int = 500) -> None:
        self._lock = threading.Lock()
        self._window_ns = int(rate_window_s * _NS)
        self._arrivals: dict[str, deque[int]] = {}
        self._latency_s: deque[float] = deque(maxlen=latency_window)
        self._skew_s: deque[float] = deque(maxlen=latency_window)
        self.drops: Counter[str] = Counter()
        self._drops_reported: Counter[str] = Counter()
        self.frames_processed = 0
        self.frames_shed = 0
        self.refined_updates = 0
        self._refined_seen: set[int] = set()  # stamps of frames refined at least once (bounded below)
        self._refined_order: deque[int] = deque()
        self.refined_frames = 0
        self._refine_lag_s: deque[float] = deque(maxlen=latency_window)
        self._last_input_ns: int | None = None

    def count_input(self, topic: str, now_ns: int) -> None:
        """One message arrived on `topic`."""
        with self._lock:
            q = self._arrivals.setdefault(topic, deque())
            q.append(now_ns)
            while q and q[0] < now_ns - self._window_ns:
                q.popleft()
            self._last_input_ns = now_ns

    def count_drop(self, reason: str, n: int = 1) -> None:
        """`n` messages or frames dropped for `reason` (an InputError reason or a sync reason)."""
        if n > 0:
            with self._lock:
                self.drops[reason] += n

    def set_drops(self, counts: Mapping[str, int]) -> None:
        """Mirror counters kept elsewhere (the synchroniser) without double counting: max wins."""
        with self._lock:
            for k, v in counts.items():
                self.drops[k] = max(self.drops[k], int(v))

    def record_frame(self, latency_s: float, skew_s: float) -> None:
        """A frame was processed: latency from its image stamp to publish, and its stereo skew."""
        with self._lock:
            self.frames_processed += 1
            self._latency_s.append(float(latency_s))
            self._skew_s.append(float(skew_s))

    def count_shed(self) -> None:
        """A frame was processed without its optional work (`online.shed_when_behind`)."""
        with self._lock:
            self.frames_shed += 1

    def record_refined(self, stamps_ns: Any = (), now_ns: int | None = None,
                       arrival_ns: Mapping[int, int] | None = None, keep: int = 100_000) -> None:
        """One refined result was published, covering the frames `stamps_ns`; a frame refined for the
        first time adds its lag: from its arrival (`arrival_ns[stamp]`, the clock of `now_ns`; the
        stamp itself without it) to this publication at `now_ns`."""
        with self._lock:
            self.refined_updates += 1
            for stamp in stamps_ns:
                stamp = int(stamp)
                if stamp in self._refined_seen:
                    continue
                self._refined_seen.add(stamp)
                self._refined_order.append(stamp)
                if len(self._refined_order) > keep:
                    self._refined_seen.discard(self._refined_order.popleft())
                self.refined_frames += 1
                if now_ns is not None:
                    since = arrival_ns.get(stamp, stamp) if arrival_ns is not None else stamp
                    self._refine_lag_s.append((now_ns - since) / _NS)

    def rates_hz(self, now_ns: int) -> dict[str, float]:
        """Messages per second per input topic over the rate window."""
        with self._lock:
            out = {}
            for topic, q in self._arrivals.items():
                recent = [t for t in q if t >= now_ns - self._window_ns]
                out[topic] = len(recent) / (self._window_ns / _NS)
            return out

    def latency_percentiles_s(self) -> tuple[float, float]:
        """(p50, p95) of stamp → publish latency; NaN before the first frame."""
        with self._lock:
            if not self._latency_s:
                return float("nan"), float("nan")
            p50, p95 = np.percentile(np.asarray(self._latency_s), [50, 95])
            return float(p50), float(p95)

    def snapshot(self, now_ns: int) -> dict[str, Any]:
        """Everything the report needs, plus `new_drops` since the previous snapshot."""
        rates = self.rates_hz(now_ns)
        p50, p95 = self.latency_percentiles_s()
        with self._lock:
            lag = np.asarray(self._refine_lag_s) if self._refine_lag_s else np.full(1, np.nan)
            lag50, lag95 = (float(v) for v in np.percentile(lag, [50, 95]))
            new = {k: v - self._drops_reported[k] for k, v in self.drops.items() if v > self._drops_reported[k]}
            self._drops_reported = Counter(self.drops)
            skew = max(self._skew_s) if self._skew_s else float("nan")
            idle_s = (now_ns - self._last_input_ns) / _NS if self._last_input_ns is not None else float("inf")
            return {"rates_hz": rates, "latency_p50_s": p50, "latency_p95_s": p95, "stereo_skew_max_s": skew,
                    "drops": dict(self.drops), "new_drops": new, "frames_processed": self.frames_processed,
                    "frames_shed": self.frames_shed,
                    "refined_updates": self.refined_updates, "refined_frames": self.refined_frames,
                    "refine_lag_p50_s": lag50, "refine_lag_p95_s": lag95, "idle_s": idle_s}


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, float):
        value = f"{value:.6g}"
    return KeyValue(key=key, value=str(value))


def kinematics_status(kin: Mapping[str, Any], node_name: str = "surg_invnerf_tracker") -> DiagnosticStatus:
    """The `kinematics` status: ECM pose counters (buffer drops, frames with/without a pose).

    `kin` holds `state` (text), counters, and `new_frames_without_pose` / `new_pose_drops` since the
    last report. WARN when poses flow but frames went without one, or pose messages were dropped, since
    then; OK otherwise (also when kinematics are off or nothing was received: that is a mode, not a fault).
    """
    values = [_kv(k, v) for k, v in sorted(kin.items()) if not k.startswith("new_") and k != "state"]
    state = str(kin.get("state", "off"))
    problems = []
    if kin.get("new_pose_drops"):
        problems.append(f"{kin['new_pose_drops']} pose messages dropped")
    if kin.get("new_frames_without_pose"):
        problems.append(f"{kin['new_frames_without_pose']} frames without a pose")
    level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
    return DiagnosticStatus(level=level, name=f"{node_name}: kinematics", message="; ".join(problems) or state,
                            hardware_id=node_name, values=values)


def diagnostic_array(snap: Mapping[str, Any], queues: Mapping[str, int], model: Mapping[str, Any],
                     stamp_ns: int, node_name: str = "surg_invnerf_tracker",
                     idle_warn_s: float = 2.0, kinematics: Mapping[str, Any] | None = None,
                     node_state: str = "active") -> DiagnosticArray:
    """One DiagnosticArray with an `input`, a `tracking` and a `model` status, plus `kinematics` if given.

    `node_state` is the lifecycle state ("active" for the plain node); an inactive node takes no
    images, so its missing input is reported as that, not as a warning.
    """
    hw = f"{node_name}"
    # input
    values = [_kv(f"rate_hz.{t}", r) for t, r in sorted(snap["rates_hz"].items())]
    values += [_kv("stereo_skew_max_s", snap["stereo_skew_max_s"])]
    values += [_kv(f"drops.{k}", v) for k, v in sorted(snap["drops"].items())]
    values += [_kv(f"queue.{k}", v) for k, v in sorted(queues.items())]
    if snap["new_drops"]:
        level, text = DiagnosticStatus.WARN, "dropped: " + ", ".join(
            f"{k} ×{v}" for k, v in sorted(snap["new_drops"].items()))
    elif node_state != "active":
        level, text = DiagnosticStatus.OK, f"node {node_state}: no image subscriptions"
    elif snap["idle_s"] > idle_warn_s:
        level, text = DiagnosticStatus.WARN, "no input"
    else:
        level, text = DiagnosticStatus.OK, "ok"
    inputs = DiagnosticStatus(level=level, name=f"{node_name}: input", message=text, hardware_id=hw, values=values)
    # tracking
    tvals = [_kv("frames_processed", snap["frames_processed"]), _kv("frames_shed", snap["frames_shed"]),
             _kv("drift_resets", snap.get("drift_resets", 0)),
             _kv("latency_p50_s", snap["latency_p50_s"]),
             _kv("latency_p95_s", snap["latency_p95_s"]), _kv("rss_bytes", rss_bytes()), _kv("node_state", node_state)]
    tracking = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{node_name}: tracking",
                                message=f"{snap['frames_processed']} frames ({node_state})", hardware_id=hw,
                                values=tvals)
    # model
    kf_total = model.get("keyframes_total", 0)
    coverage = snap.get("refined_frames", 0) / kf_total if kf_total else float("nan")
    mvals = [_kv("refined_updates", snap["refined_updates"]), _kv("refined_frames", snap.get("refined_frames", 0)),
             _kv("refined_coverage", coverage), _kv("refine_lag_p50_s", snap.get("refine_lag_p50_s", float("nan"))),
             _kv("refine_lag_p95_s", snap.get("refine_lag_p95_s", float("nan")))]
    mvals += [_kv(k, v) for k, v in sorted(model.items())]
    mstate = str(model.get("state", "off"))
    if model.get("error") or mstate == "error":
        mlevel, mtext = DiagnosticStatus.ERROR, str(model.get("error") or mstate)
    elif mstate == "restarting":  # the worker process died; a new one is on its way
        mlevel, mtext = DiagnosticStatus.WARN, f"refine worker restarting ({model.get('worker_last_exit') or 'died'})"
    else:
        mlevel, mtext = DiagnosticStatus.OK, mstate
    mod = DiagnosticStatus(level=mlevel, name=f"{node_name}: model", message=mtext, hardware_id=hw, values=mvals)
    statuses = [inputs, tracking, mod]
    if kinematics is not None:
        statuses.append(kinematics_status(kinematics, node_name))
    return DiagnosticArray(header=header(stamp_ns, ""), status=statuses)


def level_int(level: bytes | int) -> int:
    """DiagnosticStatus.level (a `byte`, bytes in rclpy) → 0 OK, 1 WARN, 2 ERROR, 3 STALE."""
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


def diagnostic_float(values: Mapping[str, str], key: str) -> float:
    """A numeric value of one status of `diagnostics_to_dict`; NaN when absent or not a number."""
    try:
        return float(values.get(key, "nan"))
    except ValueError:
        return float("nan")


def diagnostics_to_dict(msg: DiagnosticArray) -> dict[str, dict[str, str]]:
    """DiagnosticArray → {status name: {key: value, "_level": "0".."3", "_message": text}}."""
    out = {}
    for s in msg.status:
        d = {kv.key: kv.value for kv in s.values}
        d["_level"] = str(level_int(s.level))
        d["_message"] = s.message
        out[s.name] = d
    return out
