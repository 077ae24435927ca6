"""Refinement backends for OnlineTracker (DESIGN §3.3): fit the InvNeRF model on a window of keyframes.

A refiner is a callable `RefineJob -> RefineOutput`. Two are provided:
- `InvNeRFRefiner`: `track.fit_invnerf` (warm-started from the previous fit) + `track.infer_tracks`,
  in the calling thread;
- `ProcessRefiner`: the same in a child Python process (`python -m surg_invnerf_ros.refiner`), so the
  fit neither holds the caller's GIL nor loads torch into it. This is the node's default
  (`refine.worker: process`): measured on the 2-core CI machine, a thread worker stalled the front
  end (p95 latency 0.32 s, frames dropped), the process worker did not (p95 0.06 s, none dropped).
A progress callback may raise `FitAborted` to stop a fit (reset, shutdown). When the child process goes
away under a call (killed, out of memory), `ProcessRefiner` raises `WorkerDied`; `restart()` starts a
fresh child (the warm-start state is lost).
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Listener
from typing import Any, Callable

import cv2
import numpy as np

from .config import FitConfig, FrontendConfig, RefineConfig, load_config
from .device import resolve_device
from .errors import ConfigError
from .frontend.store import FrontendCache
from .heap import release_free_memory
from .structs import Sequence, Tracks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineJob:
    """What the worker hands to a refiner: a window of keyframes with queries, plus the last state."""

    seq: Sequence
    init_state: Any | None
    generation: int


@dataclass
class RefineOutput:
    """A refiner's answer: tracks over the job's frames (ids = the job's query ids), its state, stats."""

    tracks: Tracks
    state: Any | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    depth_m: Any | None = None  # optional (H, W) model depth of the job's last frame, metres, NaN invalid


Refiner = Callable[[RefineJob], RefineOutput]


def worker_memory() -> dict[str, int]:
    """Peak host RSS of this process and, on CUDA, peak device memory (bytes), for /diagnostics."""
    out = {"worker_peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["device_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


class FitAborted(Exception):
    """Raised from a progress callback to stop a fit (reset, shutdown)."""


class WorkerDied(RuntimeError):
    """The refinement process exited under a call (or while starting).

    Attributes:
        exit_code: its exit status as `subprocess.Popen.returncode` has it: -N for signal N
            (-9: SIGKILL, e.g. the kernel's out-of-memory killer), None when it could not be read.
    """

    def __init__(self, exit_code: int | None) -> None:
        self.exit_code = exit_code
        super().__init__(f"refinement process exited ({exit_text(exit_code)})")


def exit_text(exit_code: int | None) -> str:
    """A child's exit status in words: "exit code 1", "exit code -9 (SIGKILL)", "exit code unknown"."""
    if exit_code is None:
        return "exit code unknown"
    if exit_code < 0:
        try:
            return f"exit code {exit_code} ({signal.Signals(-exit_code).name})"
        except ValueError:
            pass
    return f"exit code {exit_code}"


class InvNeRFRefiner:
    """The default refiner: `track.fit_invnerf` on the window, then `track.infer_tracks`."""

    def __init__(self, refine_cfg: RefineConfig, frontend_cfg: FrontendConfig, device: str = "auto") -> None:
        from . import track  # noqa: F401  torch loads here, at start-up, not in the middle of a stream

        self.fit_cfg = load_config(FitConfig, refine_cfg.fit_config or None, list(refine_cfg.fit_overrides))
        self.fit_cfg = replace(self.fit_cfg, device=resolve_device(device))
        if refine_cfg.worker_threads > 0:  # the fit stays on the refinement's threads, whatever fit.num_threads says
            self.fit_cfg = replace(self.fit_cfg, num_threads=refine_cfg.worker_threads)
        # the fit's own front end (flow bank, chains, stereo) on refine.worker_threads threads
        self.frontend_cfg = (replace(frontend_cfg, workers=refine_cfg.worker_threads)
                             if refine_cfg.worker_threads > 0 else frontend_cfg)
        if refine_cfg.sample_stride_px > 0:
            self.frontend_cfg = replace(self.frontend_cfg, store=replace(self.frontend_cfg.store,
                                                                         sample_stride_px=refine_cfg.sample_stride_px))
        # refits refine stereo once: at 256x192 the second refinement cut the model's steps per second to half
        self.frontend_cfg = replace(self.frontend_cfg, stereo=replace(self.frontend_cfg.stereo,
                                                                      refine_upsample_below_px=0))
        self.render_cloud = refine_cfg.render_cloud
        self.cold_fit_s, self.warm_fit_s = refine_cfg.cold_fit_s, refine_cfg.warm_fit_s
        self.cache = FrontendCache(refine_cfg.cache_gib * 2**30)
        self.query_anchor = refine_cfg.query_anchor
        self.check_cells = refine_cfg.check_cells
        self.canonical: dict[int, np.ndarray] = {}  # query id → its canonical point in the living model
        self.progress: Callable[..., None] | None = None

    def __call__(self, job: RefineJob) -> RefineOutput:
        from .track import fit_invnerf, infer_tracks, warm_start_alignment

        t0 = time.perf_counter()
        self.cache.retain(job.seq.stamps_ns)  # frames that left the window leave the cache
        warm = job.init_state is not None and warm_start_alignment(job.init_state, job.seq.stamps_ns) is not None
        cfg = replace(self.fit_cfg, time_budget_s=self.warm_fit_s if warm else self.cold_fit_s,
                      time_budget_per_frame_s=0.0)
        if warm:  # the model goes on: no learning-rate warm-up or decay within a short fit
            cfg = replace(cfg, optim=replace(cfg.optim, warmup_steps=0, lr_final_scale=1.0))
        # the converged share the re-anchoring test reads: measured on the final model
        cfg = replace(cfg, sampler=replace(cfg.sampler, final_refresh=True, refresh_max_rays=self.check_cells))
        try:
            result = fit_invnerf(job.seq, cfg, self.frontend_cfg, progress=self.progress,
                                 init_state=job.init_state if warm else None, frontend_cache=self.cache)
        except FitAborted:
            raise
        except Exception as err:  # a warm start from a differently configured model may not load
            if not warm:
                raise
            log.warning("refine: warm start failed (%s); fitting from scratch", err)
            cfg = replace(cfg, time_budget_s=self.cold_fit_s)
            result = fit_invnerf(job.seq, cfg, self.frontend_cfg, progress=self.progress, frontend_cache=self.cache)
        ids = np.asarray(job.seq.queries.ids, np.int64)
        continued = bool(result.meta.get("warm_start", {}).get("used", False))  # False: a new canonical space
        if not continued:
            self.canonical.clear()
        canon = None
        if self.query_anchor == "canonical":
            canon = np.stack([self.canonical.get(int(i), np.full(3, np.nan, np.float32)) for i in ids]) \
                if len(ids) else np.zeros((0, 3), np.float32)
        tracks = infer_tracks(result, job.seq, job.seq.queries, canonical=canon)
        if canon is not None:
            got = np.asarray(tracks.meta.pop("canonical"), np.float32)
            self.canonical = {int(i): got[k] for k, i in enumerate(ids)}  # removed queries leave
        meta = getattr(result, "meta", {}) or {}
        stats = {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))}
        stats["fit_s"] = time.perf_counter() - t0
        stats["warm"] = continued
        stats["frontend_s"] = float(meta.get("timings_s", {}).get("frontend_s", 0.0))
        stats["cache_mb"] = round(self.cache.nbytes / 1e6, 1)
        depth_m = None
        if self.render_cloud:
            from .track import render_frame

            t1 = time.perf_counter()
            depth_m = render_frame(result, job.seq.num_frames - 1)[0].astype("float32")
            stats["render_s"] = time.perf_counter() - t1
        stats.update(worker_memory())
        return RefineOutput(tracks=tracks, state=result.state_dict(), stats=stats, depth_m=depth_m)


_AUTHKEY_ENV = "SURG_INVNERF_REFINE_AUTHKEY"


def limit_process(refine_cfg: RefineConfig) -> dict[str, int]:
    """Lower this (refine) process's priority and bound its threads; the limits now in force.

    `refine.worker_nice` is added to the niceness (a process can only lower its own priority);
    `refine.worker_idle` moves it to the idle scheduling class (Linux);
    `refine.worker_threads` > 0 bounds torch's and OpenCV's thread pools.
    """
    import torch

    nice = os.nice(refine_cfg.worker_nice) if refine_cfg.worker_nice > 0 else os.nice(0)
    idle = 0
    if refine_cfg.worker_idle and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        idle = 1
    if refine_cfg.worker_threads > 0:
        torch.set_num_threads(refine_cfg.worker_threads)
        cv2.setNumThreads(refine_cfg.worker_threads)
    return {"nice": nice, "idle_class": idle, "torch_threads": torch.get_num_threads(),
            "opencv_threads": cv2.getNumThreads()}


def _refine_process_main(conn: Any) -> None:
    """Child side of `ProcessRefiner`: owns torch, the model and the warm-start state.

    Protocol (pickled tuples over a multiprocessing Connection): in ("init", refine_cfg, frontend_cfg,
    device), then ("job", seq, warm) | ("abort",) | ("stop",); out ("ready", device) |
    ("config_error", text) | ("progress", info) | ("result", tracks, stats, depth_m) | ("aborted",) | ("error", text).
    A reader thread takes every message as it arrives, so a stop (or the parent going away) ends a
    fit at its next progress report and the process returns without answering.
    """
    _, refine_cfg, frontend_cfg, device = conn.recv()
    try:
        refiner = InvNeRFRefiner(refine_cfg, frontend_cfg, device)
    except ConfigError as err:
        conn.send(("config_error", str(err)))
        return
    conn.send(("ready", refiner.fit_cfg.device, limit_process(refine_cfg)))
    jobs: queue.Queue[Any] = queue.Queue()
    stop, abort = threading.Event(), threading.Event()

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the parent went away
                msg = ("stop",)
            if msg[0] == "stop":
                stop.set()
                jobs.put(None)
                return
            if msg[0] == "abort":
                abort.set()
            else:
                jobs.put(msg)

    def progress(info: Any = None, *args: Any, **kwargs: Any) -> None:
        if stop.is_set() or abort.is_set():
            raise FitAborted()
        if isinstance(info, dict):
            conn.send(("progress", {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}))

    threading.Thread(target=read, name="refine_reader", daemon=True).start()
    refiner.progress = progress
    state: Any = None
    while not stop.is_set():
        msg = jobs.get()
        if msg is None or stop.is_set():
            return
        if msg[0] != "job":
            continue
        abort.clear()  # an abort that came before this job was meant for an earlier one
        _, seq, warm = msg
        try:
            out = refiner(RefineJob(seq=seq, init_state=state if warm else None, generation=0))
        except FitAborted:
            if stop.is_set():
                return
            conn.send(("aborted",))
            continue
        except Exception as err:  # reported to the parent, which keeps running
            if stop.is_set():
                return
            conn.send(("error", f"{type(err).__name__}: {err}"))
            continue
        if stop.is_set():
            return
        state = out.state
        conn.send(("result", out.tracks, out.stats, out.depth_m))
        release_free_memory()


class ProcessRefiner:
    """`InvNeRFRefiner` in a child Python process, so the fit neither holds the node's GIL nor loads
    torch into it. The warm-start state stays in the child; `RefineOutput.state` is only a token.

    The child is `python -m surg_invnerf_ros.refiner` connected over a Unix socket (not
    multiprocessing's spawn, which would re-run an unguarded main script of the caller).

    A call raises `WorkerDied` when the child goes away under it; `restart()` then starts a new one.

    Raises (at construction):
        ConfigError: the child refused the config or the device (e.g. cuda without a GPU).
    """

    def __init__(self, refine_cfg: RefineConfig, frontend_cfg: FrontendConfig, device: str = "auto",
                 start_timeout_s: float = 120.0) -> None:
        # Refuse a bad fit config here, at once; only the device check needs the child's torch.
        load_config(FitConfig, refine_cfg.fit_config or None, list(refine_cfg.fit_overrides))
        self._args = (refine_cfg, frontend_cfg, device)
        self._start_timeout_s = start_timeout_s
        self.progress: Callable[..., None] | None = None
        self._fits = 0
        self._lock = threading.Lock()  # guards _proc, _conn and _closed against a close() from another thread
        self._closed = False
        self._conn: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.limits: dict[str, int] = {}  # the child's niceness and thread pools (`limit_process`)
        self.device = self._start(restarting=False)

    def _start(self, restarting: bool) -> str:
        """Start a child and hand it the config; return its device.

        Raises:
            ConfigError: the child refused the config or the device, or did not connect in time (at
                construction also: it died while starting).
            WorkerDied: on a restart, the child died while starting (or `close()` ended it).
        """
        refine_cfg, frontend_cfg, device = self._args
        key = secrets.token_bytes(16)
        listener = Listener(family="AF_UNIX", authkey=key)
        env = dict(os.environ, **{_AUTHKEY_ENV: key.hex()})
        with self._lock:
            if self._closed:
                listener.close()
                raise WorkerDied(None)
            # Its own process group, so a Ctrl-C at the terminal reaches the node, which stops the child
            # in order; but the node's setsid: Linux's autogroup scheduler shares the CPU between setsid
            # groups first, so a child with a new one would compete with the whole node as an equal,
            # whatever its niceness (`refine.worker_nice` only counts inside one group; docs/live_refinement.md).
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-m", "surg_invnerf_ros.refiner", str(listener.address)], env=env,
                stdin=subprocess.DEVNULL, process_group=0)
        accepted: list[Any] = []

        def accept() -> None:
            try:
                accepted.append(listener.accept())
            except OSError:  # the listener was closed: the child did not connect in time
                pass

        waiter = threading.Thread(target=accept, daemon=True)
        waiter.start()
        t0 = time.monotonic()
        while (waiter.is_alive() and proc.poll() is None and not self._closed
               and time.monotonic() - t0 < self._start_timeout_s):
            waiter.join(0.05)
        listener.close()

        def failed(text: str) -> Exception:
            self._end_child(0.5)
            if restarting and proc.returncode is not None:
                return WorkerDied(proc.returncode)
            return ConfigError(text)

        if not accepted:
            raise failed("refine.worker: the refinement process did not start")
        with self._lock:
            self._conn = accepted[0]
        rest: list[Any]
        try:
            self._conn.send(("init", refine_cfg, frontend_cfg, device))
            kind, *rest = self._conn.recv()
        except (EOFError, OSError):
            kind, rest = "config_error", ["refine.worker: the refinement process died while starting"]
        if kind != "ready":
            raise failed(str(rest[0]))
        self.limits = {str(k): int(v) for k, v in rest[1].items()}
        return str(rest[0])

    @property
    def exit_code(self) -> int | None:
        """The child's exit status once it has exited (see `WorkerDied.exit_code`); None while it runs."""
        proc = self._proc
        return None if proc is None else proc.poll()

    def restart(self) -> None:
        """End the current child (if it still runs) and start a fresh one; the warm-start state is lost.

        Raises:
            WorkerDied: the new child died while starting, or the refiner was closed.
            ConfigError: the new child refused the config or the device, or did not connect in time.
        """
        self._end_child(0.5)
        self.device = self._start(restarting=True)

    def _died(self) -> WorkerDied:
        """The connection broke under a call: reap the child and say how it ended."""
        proc = self._proc
        assert proc is not None
        try:
            code = proc.wait(5.0)
        except subprocess.TimeoutExpired:  # the connection broke but the process lives on: end it
            proc.kill()
            code = proc.wait()
        return WorkerDied(code)

    def __call__(self, job: RefineJob) -> RefineOutput:
        try:
            self._conn.send(("job", job.seq, job.init_state is not None))
        except (OSError, ValueError):  # the child went away since the last call
            raise self._died() from None
        aborting = False
        while True:
            try:
                kind, *rest = self._conn.recv()  # waits without the GIL
            except (EOFError, OSError):
                raise self._died() from None
            if kind == "progress":
                try:
                    if self.progress is not None and not aborting:
                        self.progress(rest[0])
                except FitAborted:
                    aborting = True
                    self._conn.send(("abort",))  # the child stops at its next progress report
            elif kind == "result":
                if aborting:
                    raise FitAborted()
                self._fits += 1
                return RefineOutput(tracks=rest[0], state=self._fits, stats=rest[1], depth_m=rest[2])
            elif kind == "aborted":
                raise FitAborted()
            else:
                raise RuntimeError(rest[0] if rest else kind)

    def close(self, timeout_s: float = 0.5) -> None:
        """Stop the child: a running fit ends at its next progress report; after `timeout_s` the
        child is terminated (SIGTERM, then SIGKILL). No restart after this."""
        with self._lock:
            self._closed = True
        self._end_child(timeout_s)

    def _end_child(self, timeout_s: float) -> None:
        """Stop the current child (as `close`), reap it and close its connection."""
        with self._lock:
            conn, proc = self._conn, self._proc
            self._conn = None
        if conn is not None:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        if proc is not None:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:  # busy before its next progress report
                proc.terminate()
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if conn is not None:
            conn.close()


def _exit_now(code: int = 0) -> None:
    """End the worker at once: it holds nothing to save, and torch's interpreter teardown can take
    seconds on a loaded machine, which would hold up the node's shutdown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # the ProcessRefiner child: python -m surg_invnerf_ros.refiner ADDRESS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal Ctrl-C: the parent stops this process in order
    signal.signal(signal.SIGTERM, lambda signum, frame: _exit_now(0))  # a direct SIGTERM: end now, quietly
    from multiprocessing.connection import Client as _Client

    from surg_invnerf_ros.refiner import _AUTHKEY_ENV as _ENV
    from surg_invnerf_ros.refiner import _refine_process_main as _serve

    logging.basicConfig(level=logging.INFO, format="[refine worker] %(levelname)s %(name)s: %(message)s")
    try:
        _serve(_Client(sys.argv[1], family="AF_UNIX", authkey=bytes.fromhex(os.environ[_ENV])))
    except (EOFError, OSError):  # the parent went away (or stopped starting us): nothing to report to
        pass
    _exit_now(0)
