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


class TestFusedLayer:
    """The fused layer (one autograd node, hand-written backward) against the plain autograd layer."""

    @staticmethod
    def both(layer_kw, x, t, inverse, weights):
        out = {}
        for fused in (False, True):
            layer = layer_kw()
            layer.fused = fused
            xx = x.clone().requires_grad_(True)
            y = layer.inverse(xx, t) if inverse else layer(xx, t)
            (y * weights).sum().backward()
            out[fused] = (y.detach(), xx.grad, {n: p.grad for n, p in layer.named_parameters()})
        return out[False], out[True]

    @pytest.mark.parametrize("inverse", [False, True])
    @pytest.mark.parametrize("use_coords", [True, False])
    @pytest.mark.parametrize("axis", [0, 2])
    def test_values_and_gradients_equal_the_plain_layer(self, device, inverse, use_coords, axis):
        # two scales with different sizes and channel counts; points partly outside the box (border padding)
        hex_cfg = HexPlaneConfig(resolutions=(4, 7), feature_dims=(2, 3))
        cfg = CouplingConfig(hidden_dim=5, use_coords=use_coords)

        def layer_kw():
            torch.manual_seed(0)
            return perturbed(AffineCoupling(axis, cfg, hex_cfg, num_frames=5), std=0.3).double().to(device)

        x, t = random_points(300, "cpu", seed=5)
        x = (x * 1.2).double().to(device)
        t = t.double().to(device)
        weights = torch.randn(300, 3, generator=torch.Generator().manual_seed(6)).double().to(device)
        (y0, gx0, gp0), (y1, gx1, gp1) = self.both(layer_kw, x, t, inverse, weights)
        assert (y0 - x).abs().max() > 1e-2 and gx0.abs().max() > 0
        torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx1, gx0, rtol=1e-10, atol=1e-10)
        assert gp0.keys() == gp1.keys() and len(gp0) == 10  # 2 × (spatial, time) grids + 3 × (weight, bias)
        for name in gp0:
            assert gp0[name].abs().max() > 0, name
            torch.testing.assert_close(gp1[name], gp0[name], rtol=1e-10, atol=1e-10, msg=name)

    def test_float32_map_equals_the_plain_map(self, device):
        torch.manual_seed(0)
        m = perturbed(InvertibleMap(CouplingConfig(), HexPlaneConfig(), num_frames=8), seed=7).to(device)
        x, t = random_points(2048, device, seed=8)
        res = []
        for fused in (False, True):
            for layer in m.couplings:
                layer.fused = fused
            m.zero_grad()
            xx = x.clone().requires_grad_(True)
            u = m(xx, t)
            back = m.inverse(u.detach() * 0.9, t)
            (u.square().sum() + back.sin().sum()).backward()
            res.append((u.detach(), back.detach(), xx.grad, [p.grad.clone() for p in m.parameters()]))
        (u0, b0, g0, p0), (u1, b1, g1, p1) = res
        torch.testing.assert_close(u1, u0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b1, b0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-4)
        for a, b in zip(p0, p1):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()))

    def test_the_fused_map_passes_gradcheck_in_its_parameters(self):
        m = perturbed(InvertibleMap(CouplingConfig(num_layers=2, hidden_dim=4),
                                    HexPlaneConfig(resolutions=(4,), feature_dims=(2,)), num_frames=3)).double()
        assert all(layer.fused for layer in m.couplings)
        x, t = random_points(6, "cpu", seed=9)
        x, t = (x * 0.9).double(), t.double()
        names = [n for n, _ in m.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())

        def run(*ps):
            state = dict(zip(names, ps))
            u = torch.func.functional_call(m, state, (x, t))
            return torch.cat([u.reshape(-1), torch.func.functional_call(m, state, (u, t), strict=False).reshape(-1)])

        assert torch.autograd.gradcheck(run, params, eps=1e-6, atol=1e-5)

    def test_off_and_bf16_use_the_plain_operators(self):
        layer = AffineCoupling(0, CouplingConfig(fused=False), HexPlaneConfig(), num_frames=4)
        x, t = random_points(64, "cpu")
        y = layer(x.requires_grad_(True), t)
        assert "CouplingStep" not in type(y.grad_fn).__name__
        layer.fused, layer.bf16 = True, False
        assert "CouplingStep" in type(layer(x, t).grad_fn).__name__
        layer.bf16 = True
        assert "CouplingStep" not in type(layer(x, t).grad_fn).__name__
