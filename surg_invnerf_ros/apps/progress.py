"""The progress bar of a fit, shared by the command line and the demo."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm


def projected_steps(info: dict) -> int | None:
    """The step the fit will stop at if it keeps its pace: the time budget's end (elapsed + eta) at the
    steps per second so far, at most max_steps; None without a step, elapsed time and eta."""
    values = [info.get(k) for k in ("step", "elapsed_s", "eta_s")]
    if not all(isinstance(x, (int, float)) for x in values):
        return None
    step, elapsed_s, eta_s = (float(x) for x in values)  # pyright: ignore[reportArgumentType]  (checked above)
    if step <= 0 or elapsed_s <= 0:
        return None
    projected = max(int(step), round(step * (elapsed_s + eta_s) / elapsed_s))
    max_steps = info.get("max_steps")
    return min(projected, int(max_steps)) if isinstance(max_steps, int) and max_steps > 0 else projected


@contextmanager
def fit_bar(desc: str) -> Iterator[Callable[[dict], None]]:
    """A tqdm bar driven by the optimiser's progress dicts (step, max_steps, loss, converged)."""
    bar = tqdm(desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False, unit="step", delay=0.5)
    fit_max_steps: int | None = None  # from the fit's first progress dict

    def update(info: dict) -> None:
        nonlocal fit_max_steps
        if "frames" in info:  # the front end: frames streamed into the correspondence store
            if bar.total != info["frames"]:
                bar.unit = "frame"
                bar.reset(total=info["frames"])
            bar.n = int(info["frame"])
            bar.set_postfix({"stage": "front end"}, refresh=False)
            bar.refresh()
            return
        if "work" in info:  # a classical tracker: flow pairs and depth frames done (no total known ahead)
            bar.n = int(info["work"])
            bar.unit = "op"
            bar.set_postfix({"stage": info.get("stage", "")}, refresh=False)
            bar.refresh()
            return
        if "max_steps" in info and (fit_max_steps != info["max_steps"] or bar.unit != "step"):
            bar.unit = "step"  # before the reset, which redraws it
            bar.set_postfix({}, refresh=False)
            bar.reset(total=info["max_steps"])
            fit_max_steps = info["max_steps"]
        if "step" in info:
            bar.n = int(info["step"])
            projected = projected_steps(info)
            if projected is not None and projected != bar.total:
                bar.total = projected  # filled, and tqdm's time left spent, when the budget ends
        post = {k: f"{info[k]:.3g}" for k in ("loss", "converged") if isinstance(info.get(k), (int, float))}
        if isinstance(info.get("eta_s"), (int, float)):
            post["eta"] = f"{info['eta_s']:.0f}s"
        if "stage" in info:
            post["stage"] = info["stage"]
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
