"""refiner.py: the InvNeRF refinement backends (in-thread and in a child process)."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from surg_invnerf_ros.config import FrontendConfig, RefineConfig
from surg_invnerf_ros.config.fit import OptimConfig
from surg_invnerf_ros.device import resolve_device
from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.refiner import FitAborted, ProcessRefiner, RefineJob, WorkerDied, exit_text
from surg_invnerf_ros.structs import Queries, Sequence, StereoCalib

W, H = 64, 48


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("gpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: cuda"):
            resolve_device("cuda")


def test_exit_text():
    assert exit_text(-9) == "exit code -9 (SIGKILL)" and exit_text(1) == "exit code 1"
    assert exit_text(None) == "exit code unknown" and exit_text(-200) == "exit code -200"


class TestProcessRefiner:
    """The default backend: track.fit_invnerf + infer_tracks in a child process."""

    def seq_job(self, warm):
        rng = np.random.default_rng(0)
        tex = cv2.resize((rng.random((16, 24)) * 255).astype(np.uint8), (W + 16, H),
                         interpolation=cv2.INTER_CUBIC)
        tex = np.repeat(tex[:, :, None], 3, 2)
        T, d = 4, 4
        left = np.stack([tex[:, t:t + W] for t in range(T)])
        right = np.stack([tex[:, t + d:t + d + W] for t in range(T)])
        calib = StereoCalib(K=np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]), baseline_m=0.004,
                            image_size=(W, H))
        seq = Sequence(left, right, calib, np.arange(T, dtype=np.int64) * 33_000_000,
                       Queries(np.array([7, 9]), np.array([[0, 30.0, 20.0], [0, 40.0, 30.0]])))
        return RefineJob(seq=seq, init_state="warm" if warm else None, generation=0)

    @pytest.mark.parametrize("nice,threads,idle", [(10, 1, False), (0, 2, False), (10, 1, True)])
    def test_priority_and_thread_limits_are_applied_in_the_child(self, nice, threads, idle):
        cfg = RefineConfig(worker_nice=nice, worker_threads=threads, worker_idle=idle)
        ref = ProcessRefiner(cfg, FrontendConfig(), device="cpu")
        try:
            mine = os.getpriority(os.PRIO_PROCESS, 0)
            assert ref.limits == {"nice": mine + nice, "idle_class": int(idle), "torch_threads": threads,
                                  "opencv_threads": threads}
            # seen from outside, too: the kernel's niceness and scheduling class of the child
            assert os.getpriority(os.PRIO_PROCESS, ref._proc.pid) == mine + nice
            assert (os.sched_getscheduler(ref._proc.pid) == os.SCHED_IDLE) == idle
        finally:
            ref.close()

    def test_the_child_shares_the_node_session_in_a_process_group_of_its_own(self):
        # Same session: Linux's autogroup scheduler weighs sessions against each other before niceness,
        # so only a child in the node's session is really below the node. Own group: a Ctrl-C at the
        # terminal (sent to the foreground group) reaches the node, which stops the child in order.
        ref = ProcessRefiner(RefineConfig(worker_nice=10), FrontendConfig(), device="cpu")
        try:
            child = ref._proc.pid
            assert os.getsid(child) == os.getsid(0)
            assert os.getpgid(child) == child != os.getpgid(0)
            autogroup = Path("/proc/self/autogroup")
            if autogroup.exists():  # kernels built with CONFIG_SCHED_AUTOGROUP; some sandboxes leave it empty
                mine = autogroup.read_text().split()[:1]
                assert Path(f"/proc/{child}/autogroup").read_text().split()[:1] == mine
        finally:
            ref.close()

    def test_the_fit_and_its_front_end_run_on_worker_threads(self):
        from surg_invnerf_ros.refiner import InvNeRFRefiner

        one = InvNeRFRefiner(RefineConfig(worker_threads=1, fit_overrides=("num_threads=0",)), FrontendConfig())
        assert one.frontend_cfg.workers == 1 and one.fit_cfg.num_threads == 1
        every = InvNeRFRefiner(RefineConfig(worker_threads=0, fit_overrides=("num_threads=2",)), FrontendConfig(workers=3))
        assert every.frontend_cfg.workers == 3 and every.fit_cfg.num_threads == 2

    def test_refits_refine_stereo_once(self):
        from surg_invnerf_ros.refiner import InvNeRFRefiner

        assert FrontendConfig().stereo.refine_upsample_below_px > 0  # offline fits refine twice
        ref = InvNeRFRefiner(RefineConfig(), FrontendConfig())
        assert ref.frontend_cfg.stereo.refine_upsample_below_px == 0
        assert ref.frontend_cfg.stereo.refine_min_width_px == FrontendConfig().stereo.refine_min_width_px

    def test_a_window_that_slid_on_is_fitted_warm_and_computes_only_its_new_frames(self, monkeypatch):
        from dataclasses import replace

        from surg_invnerf_ros import track
        from surg_invnerf_ros.refiner import InvNeRFRefiner

        cfg = RefineConfig(fit_overrides=("max_steps=2", "num_threads=1", "log_every=1", "optim.warmup_steps=50"),
                           cold_fit_s=7.0, warm_fit_s=3.0, query_anchor="canonical")
        ref = InvNeRFRefiner(cfg, FrontendConfig(workers=1), "cpu")
        budgets = []
        real = track.fit_invnerf

        def spy(seq, fit_cfg, *a, **kw):
            budgets.append((fit_cfg.time_budget_s, fit_cfg.time_budget_per_frame_s, fit_cfg.optim.warmup_steps,
                            fit_cfg.optim.lr_final_scale))
            return real(seq, fit_cfg, *a, **kw)

        monkeypatch.setattr(track, "fit_invnerf", spy)
        job = self.seq_job(warm=False)
        first = ref(job)
        assert not first.stats["warm"] and first.stats["cache_mb"] > 0
        assert sorted(ref.canonical) == [7, 9]  # each query's canonical point, kept for the next fit
        kept = {k: v.copy() for k, v in ref.canonical.items()}
        misses = ref.cache.misses
        seq = job.seq  # slide on by one frame: frames 1..3 and a new frame 4
        slid = replace(seq, left_rgb_u8=np.concatenate([seq.left_rgb_u8[1:], seq.left_rgb_u8[-1:]]),
                       right_rgb_u8=np.concatenate([seq.right_rgb_u8[1:], seq.right_rgb_u8[-1:]]),
                       stamps_ns=np.append(seq.stamps_ns[1:], seq.stamps_ns[-1] + 33_000_000))
        second = ref(RefineJob(seq=slid, init_state=first.state, generation=0))
        assert second.stats["warm"]
        for k in (7, 9):  # the queries were carried by the model, not placed again from the window's pixels
            np.testing.assert_array_equal(ref.canonical[k], kept[k])
        assert ref.cache.hits >= 3  # the stereo of frames 1..3 at least
        assert ref.cache.misses - misses < misses  # far less computed than the first time
        assert budgets == [(7.0, 0.0, 50, OptimConfig.lr_final_scale), (3.0, 0.0, 0, 1.0)]

    def test_fits_in_a_child_and_warm_starts(self):
        cfg = RefineConfig(fit_overrides=("max_steps=2", "time_budget_s=5.0", "num_threads=1", "log_every=1"),
                           render_cloud=True)
        ref = ProcessRefiner(cfg, FrontendConfig(), device="cpu")
        seen = []
        ref.progress = seen.append
        try:
            assert ref.device == "cpu"
            out = ref(self.seq_job(warm=False))
            assert out.tracks.ids.tolist() == [7, 9] and out.tracks.uv.shape == (4, 2, 2)
            assert np.isfinite(out.tracks.uv).all() and out.state == 1
            assert out.stats["steps"] >= 1 and seen and "step" in seen[-1]
            assert out.depth_m.shape == (H, W) and out.stats["render_s"] > 0  # the model's depth, last frame
            out2 = ref(self.seq_job(warm=True))  # the child warm-starts from its own stored state
            assert out2.state == 2 and out2.tracks.uv.shape == (4, 2, 2)

            def abort(info):
                raise FitAborted()

            ref.progress = abort  # e.g. ~/reset during a fit
            with pytest.raises(FitAborted):
                ref(self.seq_job(warm=True))
            ref.progress = None
            assert ref(self.seq_job(warm=False)).state == 3  # the child is still usable
        finally:
            ref.close()
        assert ref._proc.poll() is not None  # the child has exited

    def test_the_child_ignores_sigint_and_ends_quietly_on_sigterm(self, capfd):
        import signal
        import time

        ref = ProcessRefiner(RefineConfig(fit_overrides=("max_steps=2", "time_budget_s=5.0", "num_threads=1")),
                             FrontendConfig(), device="cpu")
        try:
            ref._proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the node, which owns the child's lifetime
            time.sleep(0.5)
            assert ref._proc.poll() is None
            assert ref(self.seq_job(warm=False)).tracks.ids.tolist() == [7, 9]  # still serving
            t0 = time.monotonic()
            ref._proc.send_signal(signal.SIGTERM)
            assert ref._proc.wait(timeout=5) == 0 and time.monotonic() - t0 < 2.0
        finally:
            ref.close()
        err = capfd.readouterr().err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err

    def test_a_killed_child_raises_worker_died_and_a_restarted_one_serves(self, capfd):
        import os
        import signal
        import time

        ref = ProcessRefiner(RefineConfig(fit_overrides=("max_steps=5", "time_budget_s=30.0", "num_threads=1",
                                                         "log_every=1")), FrontendConfig(), device="cpu")
        try:
            first_pid = ref._proc.pid

            def kill_the_child(info):  # the child is in the middle of the fit
                os.kill(first_pid, signal.SIGKILL)

            ref.progress = kill_the_child
            with pytest.raises(WorkerDied) as died:
                ref(self.seq_job(warm=False))
            assert died.value.exit_code == -signal.SIGKILL and ref.exit_code == -signal.SIGKILL
            assert "SIGKILL" in str(died.value)
            ref.progress = None
            ref.restart()
            assert ref._proc.pid != first_pid and ref.exit_code is None and ref.device == "cpu"
            out = ref(self.seq_job(warm=True))  # the new child has no warm state: it fits from scratch
            assert out.tracks.ids.tolist() == [7, 9] and np.isfinite(out.tracks.uv).all()
            os.kill(ref._proc.pid, signal.SIGKILL)  # dies between calls: the next call says so
            deadline = time.monotonic() + 10.0
            while ref.exit_code is None and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(WorkerDied) as died:
                ref(self.seq_job(warm=False))
            assert died.value.exit_code == -signal.SIGKILL
        finally:
            ref.close()
        with pytest.raises(WorkerDied):  # closed: no new child
            ref.restart()
        assert ref.exit_code is not None
        assert "Traceback" not in capfd.readouterr().err

    def test_bad_device_is_refused_through_the_child(self):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        with pytest.raises(ConfigError, match="device: cuda requested"):
            ProcessRefiner(RefineConfig(), FrontendConfig(), device="cuda")

    def test_bad_fit_override_is_refused_through_the_child(self):
        with pytest.raises(ConfigError, match="max_stepz"):
            ProcessRefiner(RefineConfig(fit_overrides=("max_stepz=3",)), FrontendConfig(), device="cpu")
