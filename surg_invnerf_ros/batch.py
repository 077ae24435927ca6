"""Batches of independent jobs (one per clip, or per sequence and method) on this machine or on Ray.

`run_batch(tasks, backend)` runs each `Task` and returns one `TaskResult` per task, in task order:
- `local`: one after the other in this process;
- `ray`: one Ray task per job with its CPU/GPU request (`Task.num_cpus`, `Task.num_gpus`), on the
  cluster at `ray_address` or, without one, on a local Ray started on this machine (`num_cpus`
  CPUs). Ray is an optional extra (`pip install '.[ray]'`).

A job that raises is reported as failed (its error in one line) and the others go on; the callers
write each job's result to disk, so a batch that is stopped resumes where it was.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

from .errors import ConfigError

Backend = Literal["local", "ray"]
RAY_EXTRA = "pip install '.[ray]' (or pip install 'ray[default]')"


@dataclass(frozen=True)
class Task:
    """One job: `fn(*args)`; `name` identifies it in progress and results."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class TaskResult:
    """What one job returned, or why it failed."""

    name: str
    ok: bool
    value: Any = None
    error: str = ""
    seconds: float = 0.0
    detail: str = field(default="", repr=False)  # the traceback of a failure, for a log file
    exception: BaseException | None = field(default=None, repr=False)  # the error itself (local backend)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[TaskResult, BaseException | None]:
    """Run one job, catching its error: (result without a name, the exception or None)."""
    t0 = time.perf_counter()
    try:
        value = fn(*args)
    except Exception as err:  # a failed job is reported, the batch goes on
        return TaskResult("", False, None, f"{type(err).__name__}: {err}".splitlines()[0], time.perf_counter() - t0,
                          traceback.format_exc()), err
    return TaskResult("", True, value, "", time.perf_counter() - t0), None


def _run_one(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any, str, str, float]:
    """`_call` as plain data (what a Ray task sends back): (ok, value, one-line error, traceback, seconds)."""
    r, _ = _call(fn, args)
    return r.ok, r.value, r.error, r.detail, r.seconds


def import_ray() -> Any:
    """The `ray` module.

    Raises:
        ConfigError: Ray is not installed (one line naming the extra).
    """
    try:
        import ray  # optional extra
    except ImportError:
        raise ConfigError(f"--backend ray: Ray is not installed: {RAY_EXTRA}") from None
    return ray


def _join_error_reason(err: BaseException) -> str:
    """Why `ray.init(address=...)` failed, in one line; a token-authentication refusal says what to set.

    Ray sends its token to an address given explicitly only when `RAY_AUTH_MODE=token` is set (it
    does not guess, so a token is never sent to a cluster the user did not mean), and reports the
    refusal deep in the error chain.
    """
    chain, e = [], err
    while e is not None and len(chain) < 8:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = "\n".join(chain)
    if "AuthenticationError" in text or "InvalidAuthToken" in text:
        return ("the cluster requires token authentication: set RAY_AUTH_MODE=token, with its token in "
                "RAY_AUTH_TOKEN or ~/.ray/auth_token")
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def run_batch(tasks: Sequence[Task], backend: Backend = "local", *, ray_address: str | None = None,
              num_cpus: int | None = None,
              progress: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Run every task; one result per task, in task order.

    Args:
        backend: "local" (in this process, in order) or "ray".
        ray_address: an existing Ray cluster to join ("HOST:PORT" of a `ray start --head`,
            "ray://head:10001" or "auto"); None starts a local Ray on this machine. A cluster with token
            authentication (Ray's default) needs `RAY_AUTH_MODE=token` and its token in the environment.
        num_cpus: CPUs of that local Ray (None: all of this machine's).
        progress: called with each result as it finishes.

    Raises:
        ConfigError: an unknown backend, or Ray missing for `ray`.
    """
    if backend == "local":
        results = []
        for t in tasks:
            r, exc = _call(t.fn, t.args)
            r.name, r.exception = t.name, exc
            results.append(r)
            if progress is not None:
                progress(r)
        return results
    if backend != "ray":
        raise ConfigError(f"--backend: expected local or ray, got {backend!r}")
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if ray_address:
            try:
                ray.init(address=ray_address, log_to_driver=False)
            except (ConnectionError, RuntimeError) as err:  # no cluster there, or it refused us
                raise ConfigError(f"--ray-address {ray_address}: cannot join the Ray cluster "
                                  f"({_join_error_reason(err)})") from None
        else:
            # "local": a new Ray of its own, even where `ray start` runs a cluster on this machine.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(_run_one)
        refs = {remote.options(num_cpus=t.num_cpus, num_gpus=t.num_gpus, name=t.name[:100]).remote(t.fn, t.args): i
                for i, t in enumerate(tasks)}
        out: list[TaskResult | None] = [None] * len(tasks)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = refs[done[0]]
            try:
                ok, value, error, detail, secs = ray.get(done[0])
            except Exception as err:  # the worker itself died (killed, out of memory)
                ok, value, error, detail, secs = False, None, f"{type(err).__name__}: {err}".splitlines()[0], "", 0.0
            res = out[i] = TaskResult(tasks[i].name, ok, value, error, secs, detail)
            if progress is not None:
                progress(res)
        return [r for r in out if r is not None]
    finally:
        if started_here:
            ray.shutdown()
