"""Plane regularisers (one autograd node) against the plain formulas, per plane."""

import pytest
import torch

from surg_invnerf_ros.config import FitConfig, HexPlaneConfig
from surg_invnerf_ros.model.hexplane import ALL_PLANES, MultiScaleHexPlane
from surg_invnerf_ros.model.plane_regularisers import plane_regularisers
from surg_invnerf_ros.model.render import InvNeRF
from surg_invnerf_ros.model.workspace import Workspace


def plain(spatial, temporal):
    """The definitions, one plane at a time, through autograd."""
    tv = sum(((g[..., 1:, :] - g[..., :-1, :]) ** 2).mean() + ((g[..., 1:] - g[..., :-1]) ** 2).mean() for g in spatial)
    ts = sum(((q[:, :, 2:] - 2 * q[:, :, 1:-1] + q[:, :, :-2]) ** 2).mean() for q in temporal if q.shape[2] >= 3)
    return tv, ts


def planes(seed):
    gen = torch.Generator().manual_seed(seed)
    # repeated shapes (grouped), a lone shape, one plane per group and several, a time plane too short to smooth
    spatial = [torch.randn(s, generator=gen, dtype=torch.float64)
               for s in [(1, 2, 4, 4), (1, 2, 4, 4), (3, 2, 5, 6), (1, 2, 4, 4), (1, 3, 7, 7)]]
    temporal = [torch.randn(s, generator=gen, dtype=torch.float64)
                for s in [(2, 2, 6, 4), (2, 2, 6, 4), (2, 3, 9, 7), (2, 2, 2, 4)]]
    return [p.requires_grad_(True) for p in spatial], [p.requires_grad_(True) for p in temporal]


def test_values_and_gradients_equal_the_plain_formulas():
    res = []
    for fn in (plain, plane_regularisers):
        spatial, temporal = planes(0)
        tv, ts = fn(spatial, temporal)
        (0.7 * tv + 1.9 * ts).backward()
        res.append((tv.detach(), ts.detach(), [p.grad for p in spatial + temporal]))
    (tv0, ts0, g0), (tv1, ts1, g1) = res
    assert tv0 > 0 and ts0 > 0
    torch.testing.assert_close(tv1, tv0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ts1, ts0, rtol=1e-12, atol=1e-12)
    for i, (a, b) in enumerate(zip(g0, g1)):
        if i == len(g0) - 1:  # the two-row time plane takes no smoothness: no gradient or a zero one
            assert b is None or float(b.abs().max()) == 0.0
            continue
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=f"plane {i}")


def test_gradcheck():
    spatial, temporal = planes(1)
    spatial, temporal = spatial[:3], temporal[:2]
    n = len(spatial)
    assert torch.autograd.gradcheck(lambda *ps: plane_regularisers(ps[:n], ps[n:]), (*spatial, *temporal), eps=1e-6)


def test_smooth_planes_cost_nothing():
    hp = MultiScaleHexPlane(HexPlaneConfig(resolutions=(4,), feature_dims=(2,)), num_frames=5, planes=ALL_PLANES)
    tv, ts = plane_regularisers(list(hp.spatial_grids), list(hp.time_grids))
    assert float(ts.detach()) == 0.0  # time planes start at 1: perfectly smooth
    assert float(tv.detach()) > 0.0  # random spatial init is not
    with torch.no_grad():
        hp.spatial_grids[0].fill_(0.3)
    assert float(plane_regularisers(list(hp.spatial_grids), [])[0].detach()) == 0.0
    with pytest.raises(ValueError, match="no planes"):
        plane_regularisers([], [])


def test_the_model_sums_every_plane_of_the_map_and_the_field():
    import numpy as np
    cfg = FitConfig()
    model = InvNeRF(cfg, 6, Workspace.from_points(np.random.default_rng(0).random((50, 3)) * 0.05 + [0, 0, 0.1], cfg.render))
    with torch.no_grad():
        for p in model.map.planes():
            for q in p.time_grids:
                q.add_(torch.randn(q.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    sets = [model.field.planes, *model.map.planes()]
    tv0, ts0 = plain([g for p in sets for g in p.spatial_grids], [g for p in sets for g in p.time_grids])
    tv1, ts1 = model.plane_regularisers()
    torch.testing.assert_close(tv1, tv0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ts1, ts0, rtol=1e-5, atol=1e-7)
