"""Ray casting, shading and sensor effects (synth/render.py)."""

import numpy as np
import pytest

from surg_invnerf_ros.config import SynthConfig
from surg_invnerf_ros.synth.generate import SyntheticScene
from surg_invnerf_ros.synth.render import (
    Appearance,
    cast_image,
    cast_rays,
    normalised_grid,
    plane_guess,
    sensor_image,
    vignetting,
)


@pytest.fixture(scope="module")
def scene():
    return SyntheticScene(SynthConfig(width=64, height=48, frames=4, camera_motion=True, difficulty="hard"))


class TestCastRays:
    def test_solution_projects_to_the_pixel(self, scene):
        T = scene.true_pose(0.9)
        xn, yn = normalised_grid(scene.calib, 7)
        s0, r0 = plane_guess(scene.surface, T, xn, yn)
        s, r, X, _, _, xyz, resid = cast_rays(scene.surface, T, xn, yn, 0.9, s0, r0, iters=20, fx=scene.calib.fx)
        assert resid.max() < 1e-8
        Xc = np.linalg.inv(T) @ np.stack([*scene.surface.points_m(s, r, 0.9).reshape(-1, 3).T,
                                          np.ones(s.size)])
        np.testing.assert_allclose(Xc[0] / Xc[2], xn.ravel(), atol=1e-10)
        np.testing.assert_allclose(Xc[1] / Xc[2], yn.ravel(), atol=1e-10)

    def test_coarse_to_fine_matches_direct_solve(self, scene):
        T = scene.true_pose(0.5)
        grid = normalised_grid(scene.calib)
        grid32 = (grid[0].astype(np.float32), grid[1].astype(np.float32))
        s, r, *_, resid = cast_image(scene.surface, scene.calib, T, 0.5, grid32, normalised_grid(scene.calib, 4))
        assert s.shape == (48, 64) and resid.max() < 1e-3
        s0, r0 = plane_guess(scene.surface, T, *grid)
        s_ref, r_ref, *_ = cast_rays(scene.surface, T, *grid, 0.5, s0, r0, iters=20)
        px_per_m = scene.calib.fx / scene.cfg.distance_m
        assert np.abs(s - s_ref).max() * px_per_m < 1e-3 and np.abs(r - r_ref).max() * px_per_m < 1e-3

    def test_grid_includes_last_pixel(self, scene):
        xn, yn = normalised_grid(scene.calib, 4)
        assert xn[0, -1] * scene.calib.fx + scene.calib.cx >= 63 and yn[-1, 0] * scene.calib.fy + scene.calib.cy >= 47


class TestSensor:
    def test_vignetting_darkens_corners(self, scene):
        v = vignetting(normalised_grid(scene.calib), 0.6)
        assert v[24, 32] > 0.99 and v[0, 0] < 0.85

    def test_noise_and_tone_curve(self):
        look = Appearance.from_difficulty("medium")
        rad = np.full((32, 32, 3), 0.5, np.float32)
        rad[:8] = 5.0  # a highlight saturates
        img = sensor_image(rad, np.ones((32, 32), np.float32), 1.0, look, np.random.default_rng(0))
        assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
        assert (img[:8] == 255).mean() > 0.99  # saturated highlights clip flat
        mid = img[8:].astype(float)
        assert abs(mid.mean() - 127.5) < 2 and 0.5 < mid.std() < 6  # noisy around 0.5 · 255

    def test_difficulty_orders_appearance(self):
        e, m, h = (Appearance.from_difficulty(d) for d in ("easy", "medium", "hard"))
        assert e.ks < m.ks < h.ks and e.noise_read < m.noise_read < h.noise_read and e.flicker < h.flicker
