"""Tissue surface and texture (synth/tissue.py)."""

import numpy as np
import pytest

from surg_invnerf_ros.synth.tissue import DEFORMATION, TissueSurface, TissueTexture


@pytest.fixture(scope="module")
def surface():
    return TissueSurface(np.random.default_rng(3), 0.075, "hard")


class TestTissueSurface:
    def test_smoke(self, surface):
        s = np.linspace(-0.03, 0.03, 12).reshape(3, 4)
        X, Xs, Xr = surface.evaluate(s, s.T.reshape(3, 4), 0.4)
        assert all(c.shape == (3, 4) and c.dtype == np.float64 for c in X + Xs + Xr)
        X32, _, _ = surface.evaluate(s.astype(np.float32), s.astype(np.float32), 0.4)
        assert X32[2].dtype == np.float32

    def test_tangents_match_finite_differences(self, surface):
        rng = np.random.default_rng(0)
        s, r = rng.uniform(-0.04, 0.04, size=(2, 200))
        h = 1e-6
        for t_s in (0.0, 0.7, 2.1):
            _, Xs, Xr = surface.evaluate(s, r, t_s)
            fd_s = (surface.points_m(s + h, r, t_s) - surface.points_m(s - h, r, t_s)) / (2 * h)
            fd_r = (surface.points_m(s, r + h, t_s) - surface.points_m(s, r - h, t_s)) / (2 * h)
            np.testing.assert_allclose(np.stack(Xs, -1), fd_s, atol=1e-7)
            np.testing.assert_allclose(np.stack(Xr, -1), fd_r, atol=1e-7)

    def test_working_distance_and_motion(self, surface):
        g = np.linspace(-0.04, 0.04, 41)
        s, r = np.meshgrid(g, g)
        z = np.stack([surface.points_m(s, r, t)[..., 2] for t in np.linspace(0, 4, 9)])
        assert 0.05 < z.min() and z.max() < 0.12  # 5–12 cm working distance
        moved_mm = np.abs(z - z[0]).max() * 1e3
        # Breathing, pulsation and push move the surface by millimetres (hard: up to ~11 mm).
        assert 1.0 < moved_mm < 15.0

    def test_difficulty_scales_deformation(self):
        g = np.linspace(-0.03, 0.03, 21)
        s, r = np.meshgrid(g, g)
        motion = {}
        for level in DEFORMATION:
            surf = TissueSurface(np.random.default_rng(5), 0.075, level)
            pts = np.stack([surf.points_m(s, r, t) for t in np.linspace(0, 3, 13)])
            motion[level] = np.abs(pts - pts[0]).max()
        assert motion["easy"] < motion["medium"] < motion["hard"]


class TestTissueTexture:
    def test_smoke_and_fixed_to_material(self):
        tex = TissueTexture(np.random.default_rng(1), 0.02, 0.0004)
        assert tex.data.shape == (tex.size, tex.size, 5) and tex.data.dtype == np.float32
        s = np.random.default_rng(2).uniform(-0.015, 0.015, size=(8, 8))
        a = tex.sample(s, s.T)
        assert a.shape == (8, 8, 5)
        assert (a[..., :3] > 0).all() and (a[..., :3] <= 1).all()
        np.testing.assert_array_equal(tex.sample(s, s.T), a)  # a function of (s, r) only
        assert a[..., :3].std() > 0.02  # textured, not flat

    def test_seed_changes_texture(self):
        t1 = TissueTexture(np.random.default_rng(1), 0.01, 0.0005)
        t2 = TissueTexture(np.random.default_rng(2), 0.01, 0.0005)
        assert np.abs(t1.data - t2.data).mean() > 1e-3
