"""HexPlane features: shapes, time planes start at 1, pixel-exact lookups, time growth."""

import pytest
import torch

from surg_invnerf_ros.config import HexPlaneConfig
from surg_invnerf_ros.model.hexplane import ALL_PLANES, MultiScaleHexPlane, t_norm_from_frame


def random_time_planes(num_frames: int) -> MultiScaleHexPlane:
    """A small HexPlane whose time planes vary (a new one is constant 1 along time)."""
    hp = MultiScaleHexPlane(HexPlaneConfig(resolutions=(4,), feature_dims=(2,)), num_frames=num_frames, planes=ALL_PLANES)
    with torch.no_grad():
        hp.time_grids[0].copy_(torch.rand(hp.time_grids[0].shape))
    return hp


def at_frames_and_last(hp: MultiScaleHexPlane, frames: torch.Tensor, num_frames: int, n: int):
    """n random points at `frames` (t set from the frame index), the same points at the last frame, and hp of both."""
    pts = torch.rand(n, 4) * 2 - 1
    pts[:, 3] = t_norm_from_frame(frames, num_frames)
    last = pts.clone()
    last[:, 3] = 1.0
    return pts, last, hp(pts), hp(last)


class TestMultiScaleHexPlane:
    def test_smoke(self):
        hp = MultiScaleHexPlane(HexPlaneConfig(resolutions=(4, 8), feature_dims=(3, 5)), num_frames=6)
        out = hp(torch.rand(2, 7, 4) * 2 - 1)
        assert out.shape == (2, 7, 8) and out.dtype == torch.float32

    def test_time_planes_start_at_one(self):
        cfg = HexPlaneConfig(resolutions=(4,), feature_dims=(2,))
        only_time = MultiScaleHexPlane(cfg, num_frames=5, planes=((0, 3), (1, 3)))
        torch.testing.assert_close(only_time(torch.rand(9, 4) * 2 - 1), torch.ones(9, 2))

    def test_known_values_at_texels(self):
        # One spatial plane (x, y) of 3x3 texels: at the texel grid the lookup returns the texel.
        hp = MultiScaleHexPlane(HexPlaneConfig(resolutions=(3,), feature_dims=(1,)), num_frames=2, planes=((0, 1),))
        with torch.no_grad():
            hp.spatial_grids[0].copy_(torch.arange(9.0).reshape(1, 1, 3, 3))
        # x = +1 (column 2), y = -1 (row 0) → texel 2; x = -1, y = 0 (row 1) → texel 3
        pts = torch.tensor([[1.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.5, 0.3]])
        torch.testing.assert_close(hp(pts)[:, 0], torch.tensor([2.0, 3.0]))

    def test_product_over_planes(self):
        hp = MultiScaleHexPlane(HexPlaneConfig(resolutions=(2,), feature_dims=(1,)), num_frames=3, planes=((0, 1), (0, 3)))
        with torch.no_grad():
            hp.spatial_grids[0].fill_(2.0)
            hp.time_grids[0].fill_(3.0)
        torch.testing.assert_close(hp(torch.zeros(4, 4))[:, 0], torch.full((4,), 6.0))

    def test_grow_time_repeats_last_frame(self):
        hp = random_time_planes(4)
        f = torch.tensor([0, 1, 2, 3]).repeat(4)
        pts, last, before, before_last = at_frames_and_last(hp, f, 4, 16)
        hp.grow_time(7)
        assert hp.time_grids[0].shape[2] == 7
        pts[:, 3] = t_norm_from_frame(f, 7)
        torch.testing.assert_close(hp(pts), before)
        new = last.clone()
        new[:, 3] = 1.0  # frame 6 repeats frame 3
        torch.testing.assert_close(hp(new), before_last)

    def test_a_window_that_slid_keeps_the_map_of_the_frames_it_shares(self):
        hp = random_time_planes(6)
        f_old = torch.tensor([2, 3, 4, 5]).repeat(6)
        pts, last, before, before_last = at_frames_and_last(hp, f_old, 6, 24)
        hp.grow_time(6, drop_first=2)  # frames 2..5 become 0..3; 4 and 5 are new
        pts[:, 3] = t_norm_from_frame(f_old - 2, 6)
        torch.testing.assert_close(hp(pts), before)
        torch.testing.assert_close(hp(last), before_last)  # a new frame repeats the last fitted one
        hp.grow_time(3, drop_first=6)  # a window wholly after the old one: every frame is the last fitted one
        torch.testing.assert_close(hp(pts[:3] * torch.tensor([1.0, 1, 1, 0])), before_last[:3])
        with pytest.raises(AssertionError):  # without the shift the same frames would change
            hp2 = random_time_planes(6)
            pts[:, 3] = t_norm_from_frame(f_old, 6)
            b2 = hp2(pts)
            hp2.grow_time(6)
            pts[:, 3] = t_norm_from_frame(f_old - 2, 6)
            torch.testing.assert_close(hp2(pts), b2)

    def test_gradcheck(self):
        hp = MultiScaleHexPlane(HexPlaneConfig(resolutions=(3,), feature_dims=(2,)), num_frames=3).double()
        pts = (torch.rand(4, 4, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
        assert torch.autograd.gradcheck(hp, (pts,), eps=1e-6, atol=1e-4)
