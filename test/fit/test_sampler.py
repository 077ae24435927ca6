"""Error-driven sampler: draws, state updates, budget, dense refresh and the stopping rule."""

import torch

from surg_invnerf_ros.config import SamplerConfig
from surg_invnerf_ros.fit.sampler import PixelSampler


def make(strategy="error_driven", **kw):
    cfg = SamplerConfig(strategy=strategy, cell_px=4, rays_per_step=100, converged_below_px=1.0,
                        converged_share=0.9, min_budget_share=0.2, **kw)
    return PixelSampler(cfg, num_frames=3, height=12, width=16, generator=torch.Generator().manual_seed(0))


class TestPixelSampler:
    def test_smoke(self):
        s = make()
        assert s.err.shape == (3, 3, 4) and torch.isnan(s.err).all()
        f, u, v = s.draw(50)
        assert f.shape == u.shape == v.shape == (50,)
        assert int(f.max()) < 3 and int(u.max()) < 16 and int(v.max()) < 12 and int(u.min()) >= 0

    def test_update_blends_errors(self):
        s = make(error_ema=0.5)
        f = torch.tensor([0, 0, 1])
        u = torch.tensor([1.0, 2.0, 5.0])
        v = torch.tensor([1.0, 2.0, 9.0])
        s.update(f, u, v, torch.tensor([2.0, 4.0, 8.0]), torch.tensor([True, True, False]))
        assert float(s.err[0, 0, 0]) == 3.0  # mean of the two samples in cell (0, 0, 0)
        assert torch.isnan(s.err[1, 2, 1])  # invalid sample: no update
        s.update(f[:1], u[:1], v[:1], torch.tensor([1.0]), torch.tensor([True]))
        assert float(s.err[0, 0, 0]) == 2.0  # EMA: 0.5·3 + 0.5·1

    def test_error_driven_draws_follow_error(self):
        s = make(error_share=1.0)
        s.refresh(*s.dense_pixels(), torch.full((36,), 0.1), torch.ones(36, dtype=torch.bool))
        s.err[2, 1, 3] = 50.0  # the only unconverged cell
        f, u, v = s.draw(200)
        assert bool((f == 2).all() and (u // 4 == 3).all() and (v // 4 == 1).all())

    def test_uniform_pool(self):
        for pool, frames in (("unconverged", {2}), ("all", {0, 1, 2})):
            s = make(error_share=0.0, uniform_from=pool)
            s.refresh(*s.dense_pixels(), torch.full((36,), 0.1), torch.ones(36, dtype=torch.bool))
            s.err[2, 1, 3] = 50.0  # the only unconverged cell
            f, _, _ = s.draw(300)
            assert set(f.tolist()) == frames, pool

    def test_uniform_ignores_error(self):
        s = make("uniform")
        s.refresh(*s.dense_pixels(), torch.full((36,), 0.1), torch.ones(36, dtype=torch.bool))
        s.err[2, 1, 3] = 50.0
        f, _, _ = s.draw(300)
        assert set(f.tolist()) == {0, 1, 2}
        assert s.budget() == 100

    def test_budget_shrinks_and_convergence(self):
        s = make()
        assert s.budget() == 100
        assert not s.is_converged()  # no dense refresh yet
        errs = torch.full((36,), 5.0)
        s.refresh(*s.dense_pixels(), errs, torch.ones(36, dtype=torch.bool))
        assert s.budget() == 100 and not s.is_converged()
        errs[:18] = 0.5  # half the cells converged → half the budget
        s.refresh(*s.dense_pixels(), errs, torch.ones(36, dtype=torch.bool))
        assert s.budget() == 50
        errs[:30] = 0.5  # frames 0 and 1 fully converged, frame 2: 6 of 12 cells
        s.refresh(*s.dense_pixels(), errs, torch.ones(36, dtype=torch.bool))
        assert s.budget() == 20  # 1/6 of the cells open, but the budget never drops below 0.2
        torch.testing.assert_close(s.frame_converged_share(), torch.tensor([1.0, 1.0, 0.5]))
        assert not s.is_converged()
        errs[30:35] = 0.5
        valid = torch.ones(36, dtype=torch.bool)
        valid[35] = False  # the last cell has no supervision: unknown, not counted
        s.refresh(*s.dense_pixels(), errs, valid)
        assert torch.isnan(s.err[2, 2, 3]) and s.is_converged()

    def test_stall(self):
        s = make(stall_steps=10, stall_rel=0.01)
        stalled = [s.observe_loss(i, 1.0) for i in range(1, 12)]
        assert stalled[-1] and not stalled[0]
