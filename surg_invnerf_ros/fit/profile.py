"""What one optimiser step costs: operator calls and time by stage, measured with torch.profiler.

`profile_steps` runs a few warm-up steps of a `Fitter`, then profiles `steps` more and reports per
step: the ATen operator calls (forward, backward and the optimiser; each is a kernel launch on a
GPU), the milliseconds of the forward pass (sampling, rendering, losses), the backward pass and the
optimiser update, and the most called operators. It measures the same step the fit runs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

from .optimiser import Fitter


@dataclass
class StepProfile:
    """Per-step averages over the profiled steps."""

    steps: int
    aten_ops_per_step: float  # ATen operator calls (top-level and nested)
    ms_per_step: float
    ms_by_stage: dict[str, float]  # forward, backward, optimiser
    top_ops: list[tuple[str, float]] = field(default_factory=list)  # (operator, calls per step), most called first
    device: str = "cpu"


def timed_step(fitter: Fitter, step: int, timings: dict[str, float]) -> dict[str, float]:
    """One optimiser step as the fit runs it (losses, backward, update); seconds of each stage (device-synchronised)."""
    sync = torch.cuda.synchronize if fitter.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    total, _ = fitter.step_losses(step, 0.5, timings)
    sync()
    t1 = time.perf_counter()
    fitter.zero_grad()
    total.backward()
    sync()
    t2 = time.perf_counter()
    fitter.opt.step()
    sync()
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimiser": t3 - t2}


def profile_steps(fitter: Fitter, steps: int = 8, warmup: int = 2, top: int = 10) -> StepProfile:
    """Profile `steps` optimiser steps of `fitter` after `warmup` unprofiled ones (see the module docstring).

    The steps are numbered past the log and refresh points so that none of them reads back losses
    or refreshes the error maps. The default 8 steps hold two plane-regulariser steps (`loss.reg_every`
    = 4), so the average counts the regularisers at their rate.
    """
    if steps < 1:
        raise ValueError(f"profile_steps: steps must be >= 1, got {steps}")
    fitter.model.train()
    timings: dict[str, float] = {}
    base = 1
    for i in range(warmup):
        timed_step(fitter, base + i, timings)
    stage = Counter[str]()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if fitter.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(steps):
            stage.update(timed_step(fitter, base + warmup + i, timings))
    calls = Counter[str]()
    for ev in prof.events() or []:
        if ev.name.startswith("aten::"):
            calls[ev.name] += 1
    per = float(steps)
    ms = {k: 1e3 * v / per for k, v in stage.items()}
    return StepProfile(steps=steps, aten_ops_per_step=sum(calls.values()) / per, ms_per_step=sum(ms.values()),
                       ms_by_stage=ms, top_ops=[(name, n / per) for name, n in calls.most_common(top)],
                       device=str(fitter.device))
