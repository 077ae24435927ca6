"""Volume rendering: hand-computed weights, an analytic plane, and the assembled model."""

import pytest
import torch

from surg_invnerf_ros.config import FitConfig
from surg_invnerf_ros.model.render import InvNeRF, expected, volume_weights
from surg_invnerf_ros.model.workspace import Workspace


class TestVolumeWeights:
    def test_known_values(self):
        # σ = [1, 1], z = [0, 1] (δ = 1, 1): α = 1 − e⁻¹ = 0.632; T = [1, e⁻¹ = 0.368]
        # w = [0.632, 0.368 · 0.632 = 0.2325]
        w, T = volume_weights(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 1))
        torch.testing.assert_close(w, torch.tensor([[0.6321, 0.2325]]), atol=1e-4, rtol=0)
        torch.testing.assert_close(T, torch.tensor([[1.0, 0.3679]]), atol=1e-4, rtol=0)

    def test_analytic_plane(self):
        # An opaque half-space behind z0 = 0.07 m: the expected depth is the plane's depth.
        z = torch.linspace(0.05, 0.10, 201).expand(3, 201).contiguous()
        for z0 in (0.06, 0.07, 0.085):
            sigma = torch.where(z >= z0, torch.full_like(z, 1e5), torch.zeros_like(z))
            w, _ = volume_weights(sigma, z, torch.full((3, 1), 50.0))
            assert float(w.sum(1).max()) <= 1.0 + 1e-6
            torch.testing.assert_close(expected(w, z), torch.full((3,), z0), atol=2.6e-4, rtol=0)  # ≤ one step

    def test_weights_sum_at_most_one(self):
        g = torch.Generator().manual_seed(0)
        sigma = torch.rand(64, 16, generator=g) * 30
        z = torch.sort(torch.rand(64, 16, generator=g), dim=1).values
        w, T = volume_weights(sigma, z, torch.ones(64, 1))
        assert (w >= 0).all() and (w.sum(1) <= 1 + 1e-6).all()
        assert (T[:, 1:] <= T[:, :-1] + 1e-7).all()  # transmittance never grows


class TestInvNeRF:
    def _model(self):
        return InvNeRF(FitConfig(), num_frames=4, workspace=Workspace(torch.tensor([0.0, 0.0, 0.08]),
                                                                      torch.tensor([0.03, 0.03, 0.02])))

    def test_smoke(self):
        m = self._model()
        R, S = 5, 12
        dirs = torch.cat([torch.rand(R, 2) * 0.2 - 0.1, torch.ones(R, 1)], -1)
        z = torch.sort(torch.rand(R, S) * 0.04 + 0.06, 1).values
        out = m.render(torch.zeros(R, 3), dirs, z, torch.zeros(R, dtype=torch.long), torch.full((R,), 3))
        x_target_m, x_target_norm = out.mapped()
        assert out.weights.shape == (R, S) and out.colour().shape == (R, 3) and x_target_m.shape == (R, 3)
        assert x_target_norm.shape == (R, S, 3)  # `per_sample` maps every sample
        assert ((out.colour() >= 0) & (out.colour() <= 1)).all()

    def test_without_colour_or_targets(self):
        m = self._model()
        R, S = 4, 8
        dirs = torch.cat([torch.zeros(R, 2), torch.ones(R, 1)], -1)
        z = torch.sort(torch.rand(R, S) * 0.04 + 0.06, 1).values
        out = m.render(torch.zeros(R, 3), dirs, z, torch.zeros(R, dtype=torch.long), with_colour=False)
        assert out.rgb is None and out.x_target_m is None and out.x_target_norm is None
        with pytest.raises(ValueError, match="no colour"):
            out.colour()
        with pytest.raises(ValueError, match="no mapped points"):
            out.mapped()

    def test_identity_map_maps_to_expected_point(self):
        # F starts as the identity: the mapped point in any frame is the expected 3D point of the ray.
        m = self._model()
        R, S = 6, 10
        dirs = torch.cat([torch.rand(R, 2) * 0.2 - 0.1, torch.ones(R, 1)], -1)
        z = torch.sort(torch.rand(R, S) * 0.04 + 0.06, 1).values
        out = m.render(torch.zeros(R, 3), dirs, z, torch.zeros(R, dtype=torch.long), torch.full((R,), 2))
        torch.testing.assert_close(out.mapped()[0], out.depth_m[:, None] * dirs, atol=1e-5, rtol=0)

    @pytest.mark.parametrize("mapped_point", ["per_sample", "expected_canonical"])
    def test_anchor_points_map_as_they_would_on_their_own(self, mapped_point):
        # The anchor point of each ray goes through F_i and F_j⁻¹ in the samples' calls: the same values and
        # gradients as mapping it by itself, and the rendering of the samples unchanged.
        # float64: with parameters this far from their start, F⁻¹(F(x)) amplifies float32 rounding (which
        # differs with the batch's shape) by orders of magnitude; in float64 both ways agree to rounding.
        # Perturbations of 0.2 move the anchors by up to 15 mm; at 0.3 the map turns chaotic (a 1e-15
        # relative change of x moves F(x) by 2e-8 m) and the comparison measures the CPU's summation order.
        m = self._model().double()
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():  # a map and a field far from their start (the last coupling layers start at zero)
            for p in m.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        R, S = 7, 9
        origins = torch.rand(R, 3, generator=g, dtype=torch.float64) * 0.01
        dirs = torch.cat([torch.rand(R, 2, generator=g, dtype=torch.float64) * 0.2 - 0.1,
                          torch.ones(R, 1, dtype=torch.float64)], -1)
        z = torch.sort(torch.rand(R, S, generator=g, dtype=torch.float64) * 0.04 + 0.06, 1).values
        frame, target = torch.randint(0, 4, (R,), generator=g), torch.randint(0, 4, (R,), generator=g)
        anchor_z = torch.rand(R, generator=g, dtype=torch.float64) * 0.04 + 0.06
        params = list(m.parameters())

        out = m.render(origins, dirs, z, frame, target, mapped_point=mapped_point, anchor_z_m=anchor_z)
        assert out.anchor_target_m is not None and out.anchor_target_m.shape == (R, 3)
        got = torch.autograd.grad((out.anchor_target_m.square().sum() + out.mapped()[0].square().sum()
                                   + out.colour().sum()), params, allow_unused=True)

        ref = m.render(origins, dirs, z, frame, target, mapped_point=mapped_point)
        alone = m.from_canonical(m.to_canonical(origins + anchor_z[:, None] * dirs, frame), target)
        torch.testing.assert_close(out.anchor_target_m, alone, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(out.mapped()[0], ref.mapped()[0], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(out.weights, ref.weights, atol=1e-12, rtol=1e-10)
        assert out.u_canon.shape == (R, S, 3) and out.mapped()[1].shape == ref.mapped()[1].shape
        want = torch.autograd.grad(alone.square().sum() + ref.mapped()[0].square().sum() + ref.colour().sum(), params,
                                   allow_unused=True)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)

    def test_anchor_points_need_a_target(self):
        m = self._model()
        dirs = torch.tensor([[0.0, 0.0, 1.0]])
        with pytest.raises(ValueError, match="anchor_z_m needs target_frame"):
            m.render(torch.zeros(1, 3), dirs, torch.tensor([[0.07, 0.08]]), torch.zeros(1, dtype=torch.long),
                     anchor_z_m=torch.tensor([0.075]))
