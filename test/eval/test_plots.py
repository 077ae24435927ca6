"""Plots are written as valid PNGs of the expected size."""

import cv2
import numpy as np
import pytest

from surg_invnerf_ros.eval.plots import contact_frames, contact_sheet, plot_accuracy_vs_threshold
from surg_invnerf_ros.structs import Queries, Sequence, StereoCalib, Tracks


def tiny_sequence(T=5, W=64, H=48, N=4):
    rng = np.random.default_rng(0)
    left = rng.integers(0, 255, size=(T, H, W, 3), dtype=np.uint8)
    calib = StereoCalib(K=np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]]), baseline_m=0.005,
                        image_size=(W, H))
    uv = rng.uniform(5, 40, size=(T, N, 2)).astype(np.float32)
    gt = Tracks(ids=np.arange(N), uv=uv, visible=np.ones((T, N), bool), xyz=np.zeros((T, N, 3), np.float32))
    seq = Sequence(left_rgb_u8=left, right_rgb_u8=left.copy(), calib=calib, stamps_ns=np.arange(T),
                   queries=Queries(ids=np.arange(N), query_tuv=np.c_[np.zeros(N), uv[0]]), name="tiny")
    return seq, gt


def load_png(path):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None
    return img


class TestAccuracyPlot:
    def test_writes_png_of_size(self, tmp_path):
        rows = [{"method": m, "sequence": s, **{f"delta_{t}": min(1.0, t / 10 + k) for t in (1, 2, 4, 8, 16)}}
                for k, m in enumerate(["zero", "lk"]) for s in ("a", "b")]
        rows[0]["delta_4"] = float("nan")  # skipped, not propagated
        out = plot_accuracy_vs_threshold(rows, tmp_path / "acc.png", size_px=(500, 300))
        img = load_png(out)
        assert img.shape[:2] == (300, 500)
        assert img.std() > 0  # something was drawn


class TestContactSheet:
    def test_writes_grid_of_expected_size(self, tmp_path):
        seq, gt = tiny_sequence()
        pred = Tracks(ids=gt.ids[::-1].copy(), uv=gt.uv[:, ::-1] + 2.0, visible=gt.visible.copy(),
                      xyz=gt.xyz.copy())
        pred.uv[2, 0] = np.nan
        out = contact_sheet(seq, {"zero": gt, "lk": pred}, gt, tmp_path / "sheet.png", frames=[0, 2, 4])
        img = load_png(out)
        assert img.shape == (3 * 48, 3 * 64, 3)  # (1 GT row + 2 methods) x 3 frames
        # GT row panel differs from the raw image where rings were drawn.
        raw = cv2.cvtColor(seq.left_rgb_u8[0], cv2.COLOR_RGB2BGR)
        assert (img[:48, :64] != raw).any()

    def test_without_ground_truth_draws_the_tracks_alone(self, tmp_path):
        seq, gt = tiny_sequence()
        pred = Tracks(ids=gt.ids.copy(), uv=gt.uv.copy(), visible=gt.visible.copy(), xyz=gt.xyz.copy())
        out = contact_sheet(seq, {"lk": pred}, None, tmp_path / "sheet.png", frames=[0, 2, 4])
        img = load_png(out)
        assert img.shape == (48, 3 * 64, 3)  # one method row, no GT row
        dimmed = (seq.left_rgb_u8[0].astype(np.float32) * 0.7).astype(np.uint8)
        u, v = np.round(gt.uv[0][np.isfinite(gt.uv[0]).all(-1)][0]).astype(int)
        drawn = cv2.cvtColor(img[:48, :64], cv2.COLOR_BGR2RGB)
        assert (drawn[v, u] != dimmed[v, u]).any()  # a marker at the track's pixel
        with pytest.raises(ValueError, match="nothing to draw"):
            contact_sheet(seq, {}, None, tmp_path / "empty.png")

    def test_default_frames(self):
        assert contact_frames(48, 4) == [0, 16, 31, 47]
        assert contact_frames(2, 4) == [0, 1]

    def test_bad_frames(self, tmp_path):
        seq, gt = tiny_sequence()
        with pytest.raises(ValueError, match="frames: 9"):
            contact_sheet(seq, {}, gt, tmp_path / "x.png", frames=[0, 9])
