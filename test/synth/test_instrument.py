"""Instrument capsule ray intersection (synth/instrument.py)."""

import numpy as np
import pytest

from surg_invnerf_ros.synth.instrument import Instrument
from surg_invnerf_ros.synth.tissue import TissueSurface


class FixedInstrument(Instrument):
    """Tip at (0, 0, 0.05), axis +x, radius 3 mm: known geometry for hand-computed hits."""

    def pose(self, t_s):
        return np.array([0.0, 0.0, 0.05]), np.array([1.0, 0.0, 0.0])


@pytest.fixture
def inst():
    rng = np.random.default_rng(0)
    obj = FixedInstrument(rng, TissueSurface(rng, 0.075, "medium"), half_width_m=0.05)
    obj.radius_m = 0.003
    return obj


class TestInstrument:
    def test_known_values(self, inst):
        o = np.zeros(3)
        # Rays towards (x, 0, 0.05): x = 0 hits the tip sphere at z = 0.047; x = 0.02 the cylinder
        # top at z = 0.047, so λ = 0.047 / 0.05 = 0.94 for d = (x, 0, 0.05); x = -0.02 misses
        # (behind the hemispherical tip); y = 0.01 passes beside the 3 mm shaft.
        d = np.array([[0.0, 0.0, 0.05], [0.02, 0.0, 0.05], [-0.02, 0.0, 0.05], [0.02, 0.01, 0.05]])
        lam, n, metal = inst.intersect(o, (d[:, 0], d[:, 1], d[:, 2]), 0.0)
        np.testing.assert_allclose(lam[:2], [0.94, 0.94], rtol=1e-9)
        assert np.isinf(lam[2]) and np.isinf(lam[3])
        np.testing.assert_allclose(np.stack(n, -1)[:2], [[0, 0, -1], [0, 0, -1]], atol=1e-9)
        assert metal[0] and not metal[1]  # the tip is metal, 2 cm up the shaft is not

    def test_occludes(self, inst):
        o = np.zeros(3)
        pts = np.array([[0.01, 0.0, 0.08], [0.01, 0.0, 0.04], [0.0, 0.02, 0.08]])
        np.testing.assert_array_equal(inst.occludes(o, pts, 0.0), [True, False, False])

    def test_moves_over_time(self):
        rng = np.random.default_rng(4)
        obj = Instrument(rng, TissueSurface(rng, 0.075, "medium"), half_width_m=0.05)
        tips = np.stack([obj.pose(t)[0] for t in np.linspace(0, 1.5, 6)])
        assert np.linalg.norm(tips[-1] - tips[0]) > 0.01
        axis = obj.pose(0.3)[1]
        assert abs(np.linalg.norm(axis) - 1) < 1e-12 and axis[2] < 0  # leaves towards the camera
