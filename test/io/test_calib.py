"""calib.yaml parsing and the Rectifier: raw ↔ rectified maps, stereo geometry, tracks back to raw."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.geometry import project_px
from surg_invnerf_ros.io.calib import Rectifier, calib_from_mapping, read_calib, stereo_calib_from_rectified
from surg_invnerf_ros.structs import Tracks

from ._make_seq import H, K, W, raw_calib


def _grid(step: float = 4.0) -> np.ndarray:
    vv, uu = np.mgrid[0:H:step, 0:W:step]
    return np.stack([uu.ravel(), vv.ravel()], axis=-1).astype(np.float64)  # (P, 2)


def _points_m(n: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.04, 0.12, n)
    x = rng.uniform(-0.3, 0.3, n) * z
    y = rng.uniform(-0.25, 0.25, n) * z
    return np.stack([x, y, z], axis=-1)  # (n, 3) raw left camera frame


class TestReadCalib:
    def test_round_trip(self, tmp_path):
        raw = raw_calib()
        path = tmp_path / "calib.yaml"
        path.write_text(yaml.safe_dump(raw.to_dict()))
        back = read_calib(path)
        for key in ("K_left", "K_right", "D_left", "D_right", "R", "T"):
            np.testing.assert_allclose(getattr(back, key), getattr(raw, key), err_msg=key)
        assert back.image_size == (W, H) and back.rectified is False and back.fps == 25.0

    def test_defaults_and_flat_K(self):
        data = raw_calib().to_dict()
        del data["D_left"], data["D_right"]
        data["K_left"] = np.asarray(data["K_left"]).ravel().tolist()  # 9 numbers, as in camera_info
        raw = calib_from_mapping(data, "x.yaml")
        np.testing.assert_array_equal(raw.D_left, np.zeros(5))
        np.testing.assert_allclose(raw.K_left, K)

    def test_rectified_known_values(self):
        data = raw_calib().to_dict()
        data.update(K_right=data["K_left"], D_left=[0.0] * 5, D_right=[0.0] * 5, R=np.eye(3).tolist(),
                    T=[-0.004, 0.0, 0.0], rectified=True)
        calib = stereo_calib_from_rectified(calib_from_mapping(data))
        assert calib.baseline_m == pytest.approx(0.004)  # baseline = -T_x
        np.testing.assert_allclose(calib.K, K)

    def test_bad_input(self, tmp_path):
        with pytest.raises(InputError, match="nope.yaml: calibration file not found"):
            read_calib(tmp_path / "nope.yaml")
        data = raw_calib().to_dict()
        data["K_left"] = "K"
        with pytest.raises(InputError, match="c.yaml: K_left: expected 3x3 numbers"):
            calib_from_mapping(data, "c.yaml")
        data = raw_calib().to_dict()
        data["T"] = [-0.005, 0.0, float("nan")]
        with pytest.raises(InputError, match="c.yaml: T: expected finite"):
            calib_from_mapping(data, "c.yaml")


class TestRectifier:
    def test_smoke(self):
        rect = Rectifier(raw_calib())
        assert rect.calib_rect.image_size == (W, H)
        assert rect.calib_rect.baseline_m == pytest.approx(np.linalg.norm(raw_calib().T), rel=1e-6)
        np.testing.assert_allclose(rect.calib_rect.K, rect.P1[:3, :3])
        left, right = rect.rectify_pair(np.zeros((H, W, 3), np.uint8), np.zeros((H, W, 3), np.uint8))
        assert left.shape == (H, W, 3) and left.dtype == np.uint8 and right.shape == (H, W, 3)

    def test_raw_rect_raw_round_trip(self):
        rect = Rectifier(raw_calib())
        uv_raw = _grid(2.0)
        uv_rect = rect.raw_to_rect_px(uv_raw)
        assert np.abs(uv_rect - uv_raw).max() > 1.0  # distortion + rotation really move pixels
        err_px = np.abs(rect.rect_to_raw_px(uv_rect) - uv_raw).max()
        assert err_px < 0.05
        err_px = np.abs(rect.raw_to_rect_px(rect.rect_to_raw_px(uv_raw)) - uv_raw).max()
        assert err_px < 0.05

    def test_nan_rows_stay_nan(self):
        rect = Rectifier(raw_calib())
        uv = np.array([[10.0, 10.0], [np.nan, 3.0]])
        assert np.isnan(rect.raw_to_rect_px(uv)[1]).all() and np.isfinite(rect.raw_to_rect_px(uv)[0]).all()
        assert np.isnan(rect.rect_to_raw_px(uv)[1]).all()

    def test_stereo_geometry(self):
        """A 3D point seen by both raw cameras lands on one rectified row with d = fx·B/Z."""
        raw = raw_calib()
        rect = Rectifier(raw)
        xyz_raw = _points_m()
        uv_l, _ = cv2.projectPoints(xyz_raw, np.zeros(3), np.zeros(3), raw.K_left, raw.D_left)
        uv_r, _ = cv2.projectPoints(xyz_raw, cv2.Rodrigues(raw.R)[0], raw.T, raw.K_right, raw.D_right)
        uv_l_rect = rect.raw_to_rect_px(uv_l.reshape(-1, 2))
        uv_r_rect = cv2.undistortPoints(uv_r.reshape(-1, 1, 2), raw.K_right, raw.D_right, R=rect.R2,
                                        P=rect.P2).reshape(-1, 2)
        xyz_rect = xyz_raw @ rect.R1.T  # xyz_rect = R1 · xyz_raw
        np.testing.assert_allclose(uv_l_rect, project_px(xyz_rect, rect.calib_rect.K), atol=1e-3)
        np.testing.assert_allclose(uv_l_rect[:, 1], uv_r_rect[:, 1], atol=1e-3)
        disp_px = uv_l_rect[:, 0] - uv_r_rect[:, 0]
        cal = rect.calib_rect
        np.testing.assert_allclose(disp_px, cal.fx * cal.baseline_m / xyz_rect[:, 2], rtol=1e-4)

    def test_rect_to_raw_tracks(self):
        raw = raw_calib()
        rect = Rectifier(raw)
        xyz_raw = _points_m(6).reshape(2, 3, 3)  # (T, N, 3)
        xyz_rect = xyz_raw @ rect.R1.T
        uv_rect = project_px(xyz_rect, rect.calib_rect.K)
        uv_rect[1, 2] = np.nan  # a lost point stays lost
        visible = np.array([[True, False, True], [True, True, False]])
        tracks = Tracks(ids=np.array([4, 5, 6]), uv=uv_rect.astype(np.float32), visible=visible,
                        xyz=xyz_rect.astype(np.float32), meta={"method": "x"})
        out = rect.rect_to_raw_tracks(tracks)
        np.testing.assert_allclose(out.xyz, xyz_raw, atol=1e-6)
        uv_expected, _ = cv2.projectPoints(xyz_raw.reshape(-1, 3), np.zeros(3), np.zeros(3), raw.K_left, raw.D_left)
        uv_expected = uv_expected.reshape(2, 3, 2)
        np.testing.assert_allclose(out.uv[0], uv_expected[0], atol=1e-3)
        np.testing.assert_allclose(out.uv[1, :2], uv_expected[1, :2], atol=1e-3)
        assert np.isnan(out.uv[1, 2]).all()
        np.testing.assert_array_equal(out.visible, visible)
        np.testing.assert_array_equal(out.ids, tracks.ids)
        assert out.uv.dtype == np.float32 and out.meta == {"method": "x"}

    def test_alpha_one_keeps_all_raw_pixels(self):
        corners = np.array([[0.0, 0.0], [W - 1, 0.0], [0.0, H - 1], [W - 1, H - 1]])
        zoomed = Rectifier(raw_calib(), alpha=0.0).raw_to_rect_px(corners)
        kept = Rectifier(raw_calib(), alpha=1.0).raw_to_rect_px(corners)
        assert not ((zoomed >= 0) & (zoomed <= [W - 1, H - 1])).all()
        assert ((kept >= -1e-3) & (kept <= [W - 1 + 1e-3, H - 1 + 1e-3])).all()

    def test_bad_input(self):
        rect = Rectifier(raw_calib())
        with pytest.raises(InputError, match="rectify_pair: left image: expected 64x48"):
            rect.rectify_pair(np.zeros((10, 10, 3), np.uint8), np.zeros((H, W, 3), np.uint8))
