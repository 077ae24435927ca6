"""Invertible map: identity at init, exact inverse, time growth."""

import pytest
import torch

from surg_invnerf_ros.config import CouplingConfig, HexPlaneConfig
from surg_invnerf_ros.model.coupling import AffineCoupling, InvertibleMap

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=requires_cuda)])
def device(request):
    return torch.device(request.param)


def random_points(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 2 - 1
    t = torch.rand(n, 1, generator=g) * 2 - 1
    return x.to(device), t.to(device)


def perturbed(module, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


class TestAffineCoupling:
    def test_identity_at_init(self, device):
        layer = AffineCoupling(1, CouplingConfig(), HexPlaneConfig(), num_frames=8).to(device)
        x, t = random_points(1024, device)
        torch.testing.assert_close(layer(x, t), x)

    def test_inverse_is_exact(self, device):
        layer = perturbed(AffineCoupling(1, CouplingConfig(), HexPlaneConfig(), num_frames=8)).to(device)
        x, t = random_points(1024, device)
        y = layer(x, t)
        assert (y - x).abs().max() > 1e-2  # the map really moves points
        torch.testing.assert_close(y[:, [0, 2]], x[:, [0, 2]])  # only the moving axis changes
        torch.testing.assert_close(layer.inverse(y, t), x, atol=1e-5, rtol=0)


class TestInvertibleMap:
    def test_smoke(self, device):
        m = InvertibleMap(CouplingConfig(num_layers=3), HexPlaneConfig(), num_frames=5).to(device)
        x, t = random_points(7, device)
        y = m(x.reshape(7, 1, 3).expand(7, 2, 3), t.reshape(7, 1, 1).expand(7, 2, 1))
        assert y.shape == (7, 2, 3) and y.dtype == torch.float32 and y.device.type == device.type

    def test_identity_at_init(self, device):
        m = InvertibleMap(CouplingConfig(), HexPlaneConfig(), num_frames=8).to(device)
        x, t = random_points(512, device)
        torch.testing.assert_close(m(x, t), x)
        torch.testing.assert_close(m.inverse(x, t), x)

    def test_forward_inverse_identity(self, device):
        m = perturbed(InvertibleMap(CouplingConfig(), HexPlaneConfig(), num_frames=8), seed=1).to(device)
        x, t = random_points(4096, device, seed=2)
        u = m(x, t)
        assert (u - x).abs().max() > 1e-2
        torch.testing.assert_close(m.inverse(u, t), x, atol=1e-5, rtol=0)
        torch.testing.assert_close(m(m.inverse(x, t), t), x, atol=1e-5, rtol=0)

    def test_gradcheck(self):
        m = perturbed(InvertibleMap(CouplingConfig(num_layers=2, hidden_dim=4),
                                    HexPlaneConfig(resolutions=(4,), feature_dims=(2,)), num_frames=3)).double()
        x, t = random_points(5, "cpu")
        x = (x * 0.9).double().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a: m(a, t.double()), (x,), eps=1e-6, atol=1e-4)

    def test_a_sliding_window_keeps_the_shared_frames(self):
        m = perturbed(InvertibleMap(CouplingConfig(), HexPlaneConfig(), num_frames=8), seed=4)
        x, _ = random_points(256, "cpu")
        frames = torch.arange(3, 8).repeat(52)[:256].float()
        before = m(x, (frames * 2 / 7 - 1)[:, None])
        m.grow_time(10, drop_first=3)  # old frames 3..7 are now 0..4 of 10
        torch.testing.assert_close(m(x, ((frames - 3) * 2 / 9 - 1)[:, None]), before, atol=1e-5, rtol=0)

    def test_grow_time_keeps_fitted_frames(self):
        m = perturbed(InvertibleMap(CouplingConfig(), HexPlaneConfig(), num_frames=6), seed=3)
        x, _ = random_points(256, "cpu")
        frames = torch.arange(6).repeat_interleave(1).float()
        t_old = (frames * 2 / 5 - 1).repeat(43)[:256, None]
        before = m(x, t_old)
        m.grow_time(9)
        t_new = ((t_old + 1) / 2 * 5) * 2 / 8 - 1  # same frame indices, new normalisation
        torch.testing.assert_close(m(x, t_new), before, atol=1e-5, rtol=0)
