"""Loss terms: units, known values, and that each can fail."""

import torch

from surg_invnerf_ros.fit import losses


class TestLosses:
    def test_reprojection_known_values(self):
        # errors 3 px and 4 px, confidences 1 and 0: Charbonnier(3) − eps = sqrt(9 + eps²) − eps
        pred = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
        tgt = torch.zeros(2, 2)
        got = losses.reprojection_loss_px(pred, tgt, torch.tensor([1.0, 0.0]), eps_px=1e-3)
        torch.testing.assert_close(got, torch.tensor(3.0), atol=1e-3, rtol=0)
        assert float(losses.reprojection_loss_px(tgt, tgt, torch.ones(2))) == 0.0

    def test_stereo_depth_in_disparity_px(self):
        # fx·B = 1 px·m: depths 0.1 and 0.125 m are disparities 10 and 8 px → 2 px apart
        got = losses.stereo_depth_loss_px(torch.tensor([0.1, 5.0]), torch.tensor([0.125, float("nan")]),
                                          torch.tensor([1.0, 0.0]), fx_b=1.0)
        torch.testing.assert_close(got, torch.tensor(2.0))

    def test_line_of_sight(self):
        z = torch.tensor([[0.09, 0.1, 0.11]])
        d = torch.tensor([0.1])
        on = losses.line_of_sight_loss_px(torch.tensor([[0.0, 1.0, 0.0]]), z, d, torch.ones(1), fx_b=1.0)
        off = losses.line_of_sight_loss_px(torch.tensor([[1.0, 0.0, 0.0]]), z, d, torch.ones(1), fx_b=1.0)
        empty = losses.line_of_sight_loss_px(torch.zeros(1, 3), z, d, torch.ones(1), fx_b=1.0)
        assert float(on) == 0.0 and float(off) > 0.5 and float(empty) == 8.0

    def test_range_and_distortion(self):
        assert float(losses.range_loss(torch.tensor([[0.5, -1.0, 0.9]]))) == 0.0
        torch.testing.assert_close(losses.range_loss(torch.tensor([[1.5, 0.0, -2.0]])), torch.tensor(1.25))
        z = torch.linspace(0, 1, 8)[None]
        peaked = losses.distortion_loss(torch.tensor([[0, 0, 0, 1.0, 0, 0, 0, 0]]), z)
        spread = losses.distortion_loss(torch.full((1, 8), 1 / 8), z)
        assert float(spread) > float(peaked) > 0

    def test_photometric(self):
        got = losses.photometric_loss(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), torch.zeros(2, 3),
                                      torch.tensor([1.0, 1.0]))
        torch.testing.assert_close(got, torch.tensor(0.5))
