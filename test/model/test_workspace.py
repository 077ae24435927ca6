"""Workspace box from stereo points, normalisation, ray clipping, rays and samples."""

import pytest
import torch

from surg_invnerf_ros.config import RenderConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.model.rays import band_limits_m, pixel_rays, project_px, sample_depths
from surg_invnerf_ros.model.workspace import Workspace


def stereo_points(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g) * torch.tensor([0.04, 0.03, 0.02]) + torch.tensor([-0.02, -0.015, 0.07])
    pts[:50] = torch.tensor([5.0, 5.0, 5.0])  # outliers the percentiles must ignore
    return pts


class TestWorkspace:
    def test_box_from_points(self):
        ws = Workspace.from_points(stereo_points(), RenderConfig(workspace_percentiles=(1.0, 99.0), workspace_margin=0.1))
        # true box: x ±0.02, y ±0.015, z 0.07..0.09; the 1/99 percentiles sit ~2% inside; margin 10% each side
        torch.testing.assert_close(ws.center_m, torch.tensor([0.0, 0.0, 0.08]), atol=1e-3, rtol=0)
        torch.testing.assert_close(ws.half_extent_m, torch.tensor([0.02, 0.015, 0.01]) * 0.98 * 1.2, atol=6e-4, rtol=0)

    def test_round_trip(self):
        ws = Workspace.from_points(stereo_points(), RenderConfig())
        x = stereo_points()[100:200]
        n = ws.to_norm(x)
        assert n.abs().max() <= 1.0
        torch.testing.assert_close(ws.from_norm(n), x)

    def test_too_few_points(self):
        with pytest.raises(InputError, match="stereo depth"):
            Workspace.from_points(torch.full((5, 3), float("nan")), RenderConfig())

    def test_clip_rays(self):
        ws = Workspace(torch.tensor([0.0, 0.0, 0.08]), torch.tensor([0.02, 0.02, 0.01]))
        o = torch.zeros(2, 3)
        d = torch.tensor([[0.0, 0.0, 1.0], [10.0, 0.0, 1.0]])  # the second ray misses the box
        near, far, hit = ws.clip_rays(o, d)
        torch.testing.assert_close(near[0], torch.tensor(0.07))
        torch.testing.assert_close(far[0], torch.tensor(0.09))
        assert hit.tolist() == [True, False] and bool((far > near).all())


class TestRays:
    K = torch.tensor([[200.0, 0.0, 64.0], [0.0, 200.0, 48.0], [0.0, 0.0, 1.0]])

    def test_pixel_ray_projects_back(self):
        uv = torch.tensor([[10.0, 20.0], [64.0, 48.0], [120.5, 90.25]])
        o, d = pixel_rays(uv, self.K)
        uv2, z = project_px(o + 0.08 * d, self.K)
        torch.testing.assert_close(uv2, uv)
        torch.testing.assert_close(z, torch.full((3,), 0.08))

    def test_posed_rays(self):
        T = torch.eye(4).expand(3, 4, 4).clone()
        T[:, 0, 3] = 0.01  # camera moved 1 cm along x
        uv = torch.tensor([[10.0, 20.0], [64.0, 48.0], [120.5, 90.25]])
        o, d = pixel_rays(uv, self.K, T)
        uv2, z = project_px(o + 0.07 * d, self.K, torch.linalg.inv(T))
        torch.testing.assert_close(uv2, uv, atol=1e-4, rtol=0)

    def test_samples_near_stereo_depth(self):
        ws = Workspace(torch.tensor([0.0, 0.0, 0.08]), torch.tensor([0.03, 0.03, 0.02]))
        cfg = RenderConfig(near_samples=8, workspace_samples=4, near_band_disp_px=1.0)
        uv = torch.tensor([[64.0, 48.0], [30.0, 40.0]])
        o, d = pixel_rays(uv, self.K)
        fx_b = 200.0 * 0.005  # disparity 12.5 px at 8 cm
        z, valid = sample_depths(o, d, torch.tensor([0.08, float("nan")]), ws, cfg, fx_b, jitter=True)
        assert z.shape == (2, 12) and valid.tolist() == [True, False]
        assert bool((z[:, 1:] >= z[:, :-1]).all())
        lo, hi = band_limits_m(torch.tensor([0.08]), fx_b, 1.0)  # disparity 12.5 ± 1 px
        in_band = ((z[0] >= lo) & (z[0] <= hi)).sum()
        assert int(in_band) >= 8
        assert float(z[1].min()) >= 0.06 - 1e-6 and float(z[1].max()) <= 0.10 + 1e-6  # invalid: whole box
