"""The progress bar of a fit, shared by the command line and the demo."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm


@contextmanager
def fit_bar(desc: str) -> Iterator[Callable[[dict], None]]:
    """A tqdm bar driven by the optimiser's progress dicts (step, max_steps, loss, converged)."""
    bar = tqdm(desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False, unit="step", delay=0.5)

    def update(info: dict) -> None:
        if "frames" in info:  # the front end: frames streamed into the correspondence store
            if bar.total != info["frames"]:
                bar.reset(total=info["frames"])
                bar.unit = "frame"
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
        if "max_steps" in info and (bar.total != info["max_steps"] or bar.unit != "step"):
            bar.reset(total=info["max_steps"])
            bar.unit = "step"
        if "step" in info:
            bar.n = int(info["step"])
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
