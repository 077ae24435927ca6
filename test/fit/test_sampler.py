"""Error-driven sampler: draws, state updates, budget, dense refresh and the stopping rule."""

import torch

from surg_invnerf_ros.config import SamplerConfig
from surg_invnerf_ros.fit.sampler import PixelSampler


def make(strategy="error_driven", per_cell=1, **kw):
    cfg = SamplerConfig(strategy=strategy, cell_px=4, rays_per_step=100, converged_below_px=1.0,
                        converged_share=0.9, min_budget_share=0.2, **kw)
    return PixelSampler(cfg, num_frames=3, height=12, width=16, generator=torch.Generator().manual_seed(0),
                        per_cell=per_cell)


def cells_of(s, sample):
    """(frame, cell column, cell row) of stored samples."""
    cell = sample // s.per_cell
    return cell // 12, cell % 4, (cell % 12) // 4


class TestPixelSampler:
    def test_smoke(self):
        s = make()
        assert s.err.shape == (3, 3, 4) and torch.isnan(s.err).all()
        sample = s.draw(50)
        assert sample.shape == (50,) and int(sample.min()) >= 0 and int(sample.max()) < 36

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
        s.refresh(s.refresh_samples(), torch.full((36,), 0.1), torch.ones(36, dtype=torch.bool))
        s.err[2, 1, 3] = 50.0  # the only unconverged cell
        f, cu, cv = cells_of(s, s.draw(200))
        assert bool((f == 2).all() and (cu == 3).all() and (cv == 1).all())

    def test_uniform_pool(self):
        for pool, frames in (("unconverged", {2}), ("all", {0, 1, 2})):
            s = make(error_share=0.0, uniform_from=pool)
            s.refresh(s.refresh_samples(), torch.full((36,), 0.1), torch.ones(36, dtype=torch.bool))
            s.err[2, 1, 3] = 50.0  # the only unconverged cell
            f, _, _ = cells_of(s, s.draw(300))
            assert set(f.tolist()) == frames, pool

    def test_uniform_ignores_error(self):
        s = make("uniform")
        s.refresh(s.refresh_samples(), torch.full((36,), 0.1), torch.ones(36, dtype=torch.bool))
        s.err[2, 1, 3] = 50.0
        f, _, _ = cells_of(s, s.draw(300))
        assert set(f.tolist()) == {0, 1, 2}
        assert s.budget() == 100

    def test_budget_shrinks_and_convergence(self):
        s = make()
        assert s.budget() == 100
        assert not s.is_converged()  # no dense refresh yet
        errs = torch.full((36,), 5.0)
        s.refresh(s.refresh_samples(), errs, torch.ones(36, dtype=torch.bool))
        assert s.budget() == 100 and not s.is_converged()
        errs[:18] = 0.5  # half the cells converged → half the budget
        s.refresh(s.refresh_samples(), errs, torch.ones(36, dtype=torch.bool))
        assert s.budget() == 50
        errs[:30] = 0.5  # frames 0 and 1 fully converged, frame 2: 6 of 12 cells
        s.refresh(s.refresh_samples(), errs, torch.ones(36, dtype=torch.bool))
        assert s.budget() == 20  # 1/6 of the cells open, but the budget never drops below 0.2
        torch.testing.assert_close(s.frame_converged_share(), torch.tensor([1.0, 1.0, 0.5]))
        assert not s.is_converged()
        errs[30:35] = 0.5
        valid = torch.ones(36, dtype=torch.bool)
        valid[35] = False  # the last cell has no supervision: unknown, not counted
        s.refresh(s.refresh_samples(), errs, valid)
        assert torch.isnan(s.err[2, 2, 3]) and s.is_converged()

    def test_update_equals_the_whole_map_rule(self):
        """Touching only the hit cells gives what a per-cell mean over the whole map gives."""
        s = make(error_ema=0.3)
        g = torch.Generator().manual_seed(1)
        s.err[0] = torch.rand(3, 4, generator=g)  # frame 0 known, the others unknown
        for _ in range(5):
            f = torch.randint(0, 3, (40,), generator=g)
            u, v = torch.rand(40, generator=g) * 15, torch.rand(40, generator=g) * 11
            e, ok = torch.rand(40, generator=g) * 4, torch.rand(40, generator=g) > 0.3
            idx = s.cell_index(f, u, v)
            old = s.err.reshape(-1).clone()
            sums = torch.zeros(36).index_add_(0, idx[ok], e[ok])
            counts = torch.zeros(36).index_add_(0, idx[ok], torch.ones(int(ok.sum())))
            mean = sums / counts.clamp_min(1)
            want = torch.where(counts > 0, torch.where(torch.isfinite(old), 0.7 * old + 0.3 * mean, mean), old)
            s.update(f, u, v, e, ok)
            torch.testing.assert_close(s.err.reshape(-1), want, equal_nan=True)

    def test_samples_of_a_cell_are_drawn_within_it(self):
        s = make(error_share=1.0, per_cell=4)
        s.refresh(s.refresh_samples(), torch.full((36,), 0.1), torch.ones(36, dtype=torch.bool))
        s.err[1, 2, 0] = 50.0
        sample = s.draw(400)
        cell = 12 + 2 * 4 + 0
        assert bool((sample // 4 == cell).all()) and set((sample % 4).tolist()) == {0, 1, 2, 3}

    def test_capped_refresh_keeps_unmeasured_cells(self):
        s = make(refresh_max_rays=10)
        s.refresh(s.refresh_samples()[:0], torch.zeros(0), torch.zeros(0, dtype=torch.bool))
        s.err.fill_(3.0)
        sample = s.refresh_samples()
        assert sample.shape == (10,) and len(set(sample.tolist())) == 10
        s.refresh(sample, torch.full((10,), 0.5), torch.ones(10, dtype=torch.bool))
        flat = s.err.reshape(-1)
        assert int((flat == 0.5).sum()) == 10 and int((flat == 3.0).sum()) == 26

    def test_stall(self):
        s = make(stall_steps=10, stall_rel=0.01)
        stalled = [s.observe_loss(i, 1.0) for i in range(1, 12)]
        assert stalled[-1] and not stalled[0]
