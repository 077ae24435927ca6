"""Fit-loop helpers: sub-pixel lookups of stereo depth and colour."""

import math

import numpy as np
import torch

from surg_invnerf_ros.fit.optimiser import bilinear_at, colour_at, to_device_data


def _data(depth_m: np.ndarray, subpixel: bool):
    T, H, W = depth_m.shape
    rgb = np.zeros((T, H, W, 3), np.uint8)
    return to_device_data(rgb, depth_m, np.ones((T, H, W), bool), np.zeros((0, 2), np.int64),
                          np.zeros((0, H, W, 2), np.float32), np.zeros((0, H, W), np.float32),
                          np.eye(3), 0.005, None, torch.device("cpu"), subpixel_lookup=subpixel)


class TestSubpixelLookup:
    def test_bilinear_values_and_nan(self):
        img = torch.arange(12.0).reshape(1, 3, 4)  # value = 4 v + u
        uv = torch.tensor([[1.5, 0.5], [3.0, 2.0], [0.25, 1.75]])
        out = bilinear_at(img, torch.zeros(3, dtype=torch.long), uv)
        torch.testing.assert_close(out, 4 * uv[:, 1] + uv[:, 0])  # exact on a linear ramp
        img[0, 1, 1] = float("nan")
        assert math.isnan(float(bilinear_at(img, torch.tensor([0]), torch.tensor([[1.5, 0.5]]))[0]))

    def test_colour_is_bilinear_only_when_asked(self):
        rgb = torch.zeros(1, 2, 2, 3)
        rgb[0, :, 1] = 1.0  # right column white
        uv = torch.tensor([[0.4, 0.0]])
        assert float(colour_at(rgb, torch.tensor([0]), uv)[0, 0]) == 0.0  # nearest: left column
        assert abs(float(colour_at(rgb, torch.tensor([0]), uv, subpixel=True)[0, 0]) - 0.4) < 1e-6

    def test_depth_falls_back_to_nearest_next_to_invalid(self):
        u = np.arange(6, dtype=np.float32)
        depth = np.broadcast_to(0.05 + 0.001 * u, (1, 4, 6)).copy()  # a slope along u
        depth[0, :, 5] = np.nan
        uv = torch.tensor([[2.3, 1.0], [4.4, 1.0], [7.0, 1.0]])
        f = torch.zeros(3, dtype=torch.long)
        sub = _data(depth, True).depth_at(f, uv)
        near = _data(depth, False).depth_at(f, uv)
        assert abs(float(sub[0]) - 0.0523) < 1e-6 and abs(float(near[0]) - 0.052) < 1e-6
        assert abs(float(sub[1]) - 0.054) < 1e-6  # a neighbour is invalid: nearest pixel's depth
        assert math.isnan(float(sub[2])) and math.isnan(float(near[2]))  # outside the image
