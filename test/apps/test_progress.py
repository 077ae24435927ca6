"""The fit's progress bar: its total follows the time budget, not max_steps."""

import io

from tqdm import tqdm

from surg_invnerf_ros.apps import progress
from surg_invnerf_ros.apps.progress import fit_bar, projected_steps


def test_projected_steps_runs_to_the_end_of_the_budget():
    # 100 steps in 10 s with 30 s to go: 400 steps at this pace.
    assert projected_steps({"step": 100, "elapsed_s": 10.0, "eta_s": 30.0, "max_steps": 6000}) == 400
    assert projected_steps({"step": 100, "elapsed_s": 10.0, "eta_s": 3000.0, "max_steps": 6000}) == 6000
    assert projected_steps({"step": 100, "elapsed_s": 10.0, "eta_s": 0.0, "max_steps": 6000}) == 100
    assert projected_steps({"step": 100, "elapsed_s": 10.0, "eta_s": 30.0}) == 400
    assert projected_steps({"step": 0, "elapsed_s": 0.0, "eta_s": 30.0, "max_steps": 6000}) is None
    assert projected_steps({"step": 100, "max_steps": 6000}) is None


def test_the_bar_counts_frames_then_steps_up_to_the_projected_end(monkeypatch):
    made: list[tqdm] = []
    out = io.StringIO()

    def recording_tqdm(**kwargs):
        kwargs.update(file=out, delay=0)
        made.append(tqdm(**kwargs))
        return made[-1]

    monkeypatch.setattr(progress, "tqdm", recording_tqdm)
    with fit_bar("track") as update:
        update({"frames": 48, "frame": 12})
        bar = made[0]
        assert (bar.n, bar.total, bar.unit) == (12, 48, "frame")
        update({"step": 50, "max_steps": 6000, "elapsed_s": 5.0, "eta_s": 45.0, "loss": 0.5, "converged": 0.1})
        assert (bar.n, bar.total, bar.unit) == (50, 500, "step")
        update({"step": 300, "max_steps": 6000, "elapsed_s": 20.0, "eta_s": 10.0, "loss": 0.4, "converged": 0.2})
        assert (bar.n, bar.total) == (300, 450)  # the pace rose: the projected end with it
    assert "eta=10s" in out.getvalue() and "300/450" in out.getvalue()
    # the reset to the fit's steps draws no frame unit or front-end stage
    drawn = out.getvalue().split("\r")
    assert any("/6000" in d for d in drawn)
    assert not any("/6000" in d and ("frame" in d or "front end" in d) for d in drawn)
