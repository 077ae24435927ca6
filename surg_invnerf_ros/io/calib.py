"""Stereo calibration files and rectification (DESIGN §2.1).

`calib.yaml` holds the raw OpenCV stereo calibration (`X_right = R·X_left + T`, metres, as
`cv2.stereoCalibrate` writes it). `read_calib` parses and validates it into a `RawCalib`.
A pair marked `rectified: true` must already be rectified (R = I, equal K, no distortion,
T = [-B, 0, 0]) and maps straight to a `StereoCalib`. Otherwise a `Rectifier` builds OpenCV's
rectification (`stereoRectify` + `initUndistortRectifyMap`) and maps pixels and tracks between the
raw and rectified left images, so every output can be reported in the input's pixels.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, TypeGuard

import cv2
import numpy as np
import yaml

from ..errors import InputError
from ..structs import StereoCalib, Tracks

log = logging.getLogger(__name__)

DIST_LENGTHS = (4, 5, 8, 12, 14)  # OpenCV's accepted distortion vector lengths
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
_ZERO_DISPARITY = getattr(cv2, "STEREO_ZERO_DISPARITY", getattr(cv2, "CALIB_ZERO_DISPARITY", 1024))


@dataclass(frozen=True)
class RawCalib:
    """A stereo calibration as stored in calib.yaml (OpenCV conventions, metres).

    Attributes:
        K_left, K_right: (3, 3) intrinsics in pixels.
        D_left, D_right: (4|5|8|12|14,) OpenCV distortion coefficients.
        R: (3, 3) rotation and T: (3,) translation in metres with X_right = R·X_left + T, so a right
            camera to the right of the left one has T_x < 0.
        image_size: (W, H) in pixels.
        rectified: True if the images are already rectified (then R = I, K equal, D = 0).
        fps: frame rate, frames per second.
    """

    K_left: np.ndarray
    K_right: np.ndarray
    D_left: np.ndarray
    D_right: np.ndarray
    R: np.ndarray
    T: np.ndarray
    image_size: tuple[int, int]
    rectified: bool
    fps: float

    def to_dict(self) -> dict[str, Any]:
        """calib.yaml content (plain lists, floats and ints)."""
        return {
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
            "K_left": np.asarray(self.K_left, dtype=float).tolist(),
            "K_right": np.asarray(self.K_right, dtype=float).tolist(),
            "D_left": np.asarray(self.D_left, dtype=float).tolist(),
            "D_right": np.asarray(self.D_right, dtype=float).tolist(),
            "R": np.asarray(self.R, dtype=float).tolist(),
            "T": np.asarray(self.T, dtype=float).tolist(),
            "rectified": bool(self.rectified),
            "fps": float(self.fps),
        }


def read_calib(path: str | Path) -> RawCalib:
    """Read and validate calib.yaml; every error is one line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: calibration file not found", "missing_file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not valid YAML ({first})", "bad_calib") from None
    return calib_from_mapping(data, str(path))


def calib_from_mapping(data: Any, where: str = "calib") -> RawCalib:
    """Validate a calib.yaml-shaped mapping (see `RawCalib`). D_left/D_right default to zeros."""
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a mapping of calibration fields, got {type(data).__name__}",
                         "bad_calib")
    W, H = _image_size(data, where)
    K_left = _intrinsics(data, "K_left", where)
    K_right = _intrinsics(data, "K_right", where)
    D_left = _distortion(data, "D_left", where)
    D_right = _distortion(data, "D_right", where)
    R = numbers_field(data, "R", where, (3, 3))
    if abs(np.linalg.det(R) - 1.0) > 1e-3 or not np.allclose(R.T @ R, np.eye(3), atol=1e-3):
        raise InputError(f"{where}: R: expected a rotation matrix (R^T R = I, det = +1)", "bad_calib")
    T = numbers_field(data, "T", where, (3,))
    _check_baseline(T, where)
    rectified = data.get("rectified")
    if not isinstance(rectified, bool):
        raise InputError(f"{where}: rectified: expected true or false, got {rectified!r}", "bad_calib")
    fps = data.get("fps")
    if not _is_number(fps) or not np.isfinite(fps) or fps <= 0:
        raise InputError(f"{where}: fps: expected a number > 0, got {fps!r}", "bad_calib")
    return RawCalib(K_left, K_right, D_left, D_right, R, T, (W, H), rectified, float(fps))


def stereo_calib_from_rectified(raw: RawCalib, where: str = "calib") -> StereoCalib:
    """The `StereoCalib` of a pair declared `rectified: true`, after checking it really is."""
    if not np.allclose(raw.R, np.eye(3), atol=1e-5):
        raise InputError(f"{where}: R: expected the identity for a rectified pair", "bad_calib")
    if not np.allclose(raw.K_left, raw.K_right, rtol=0.0, atol=1e-3):
        raise InputError(f"{where}: K_right: expected K_right = K_left for a rectified pair", "bad_calib")
    for key, D in (("D_left", raw.D_left), ("D_right", raw.D_right)):
        if np.any(np.abs(D) > 1e-9):
            raise InputError(f"{where}: {key}: expected zeros for a rectified pair", "bad_calib")
    baseline_m = -float(raw.T[0])
    if np.any(np.abs(raw.T[1:]) > 1e-4 * baseline_m):
        raise InputError(f"{where}: T: expected [-baseline_m, 0, 0] for a rectified pair, got "
                         f"{np.round(raw.T, 6).tolist()}", "bad_calib")
    return StereoCalib(K=np.array(raw.K_left, dtype=np.float64), baseline_m=baseline_m,
                       image_size=raw.image_size, fps=raw.fps)


class Rectifier:
    """OpenCV rectification of a raw stereo pair, and the raw ↔ rectified left-pixel maps.

    `stereoRectify` (zero disparity at infinity) gives R1 (raw left → rectified left camera frame)
    and P1, P2. The rectified left camera shares its optical centre with the raw one, so
    xyz_rect = R1 · xyz_raw, and pixels map through undistortion (raw → rect) or projection with
    distortion (rect → raw).

    Attributes:
        raw: the raw calibration.
        alpha: OpenCV's free scaling (0: no black border, 1: keep every raw pixel).
        R1, R2: (3, 3) rectifying rotations; P1, P2: (3, 4) rectified projections; Q: (4, 4).
        calib_rect: the rectified `StereoCalib` (K = P1[:3, :3], baseline_m = -P2[0, 3] / P2[0, 0]).
    """

    def __init__(self, raw: RawCalib, alpha: float = 0.0, where: str = "calib") -> None:
        self.raw = raw
        self.alpha = float(alpha)
        size = (int(raw.image_size[0]), int(raw.image_size[1]))
        self.R1, self.R2, self.P1, self.P2, self.Q, _, _ = cv2.stereoRectify(
            raw.K_left, raw.D_left, raw.K_right, raw.D_right, size, raw.R, raw.T.reshape(3, 1),
            flags=_ZERO_DISPARITY, alpha=self.alpha)
        baseline_m = -float(self.P2[0, 3] / self.P2[0, 0])
        if not np.isfinite(baseline_m) or baseline_m <= 0:
            raise InputError(f"{where}: T: rectification gives a baseline of {baseline_m:.6g} m; expected > 0 "
                             "(right camera to the right of the left)", "bad_calib")
        self.calib_rect = StereoCalib(K=np.array(self.P1[:3, :3], dtype=np.float64), baseline_m=baseline_m,
                                      image_size=size, fps=raw.fps)
        self._maps: tuple[np.ndarray, ...] | None = None

    def _ensure_maps(self) -> tuple[np.ndarray, ...]:
        # Built on first use: mapping points alone (e.g. when choosing alpha) needs no maps.
        if self._maps is None:
            size = self.calib_rect.image_size
            m1l, m2l = cv2.initUndistortRectifyMap(self.raw.K_left, self.raw.D_left, self.R1, self.P1, size,
                                                   cv2.CV_16SC2)
            m1r, m2r = cv2.initUndistortRectifyMap(self.raw.K_right, self.raw.D_right, self.R2, self.P2, size,
                                                   cv2.CV_16SC2)
            self._maps = (m1l, m2l, m1r, m2r)
        return self._maps

    def rectify_pair(self, left_rgb_u8: np.ndarray, right_rgb_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rectify one raw (H, W, 3) pair; returns the rectified (H, W, 3) pair (bilinear)."""
        W, H = self.raw.image_size
        for name, img in (("left", left_rgb_u8), ("right", right_rgb_u8)):
            if img.shape[:2] != (H, W):
                raise InputError(f"rectify_pair: {name} image: expected {W}x{H}, got "
                                 f"{img.shape[1]}x{img.shape[0]}", "bad_image")
        return self.rectify_image(left_rgb_u8, "left"), self.rectify_image(right_rgb_u8, "right")

    def rectify_image(self, rgb_u8: np.ndarray, side: str) -> np.ndarray:
        """Rectify one raw (H, W, 3) image of the `side` ("left" or "right") camera (bilinear)."""
        m1l, m2l, m1r, m2r = self._ensure_maps()
        m1, m2 = (m1l, m2l) if side == "left" else (m1r, m2r)
        return cv2.remap(rgb_u8, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def raw_to_rect_px(self, uv_raw_px: np.ndarray) -> np.ndarray:
        """(N, 2) raw left pixels → (N, 2) rectified left pixels (NaN rows stay NaN)."""
        uv = np.asarray(uv_raw_px, dtype=np.float64).reshape(-1, 2)
        out = np.full_like(uv, np.nan)
        ok = np.isfinite(uv).all(axis=1)
        if ok.any():
            pts = cv2.undistortPoints(uv[ok].reshape(-1, 1, 2), self.raw.K_left, self.raw.D_left,
                                      R=self.R1, P=self.P1, criteria=_UNDISTORT_CRITERIA)
            out[ok] = pts.reshape(-1, 2)
        return out

    def rect_to_raw_px(self, uv_rect_px: np.ndarray) -> np.ndarray:
        """(N, 2) rectified left pixels → (N, 2) raw left pixels: ray through P1, rotate by R1ᵀ,
        project with K_left and D_left."""
        uv = np.asarray(uv_rect_px, dtype=np.float64).reshape(-1, 2)
        out = np.full_like(uv, np.nan)
        K1 = self.P1[:3, :3]
        rays_rect = np.concatenate([uv, np.ones((len(uv), 1))], axis=1) @ np.linalg.inv(K1).T  # (N, 3)
        rays_raw = rays_rect @ self.R1  # row form of R1ᵀ · ray
        ok = np.isfinite(rays_raw).all(axis=1) & (rays_raw[:, 2] > 0)
        if ok.any():
            pts, _ = cv2.projectPoints(rays_raw[ok].reshape(-1, 1, 3), np.zeros(3), np.zeros(3),
                                       self.raw.K_left, self.raw.D_left)
            out[ok] = pts.reshape(-1, 2)
        return out

    def rect_to_raw_tracks(self, tracks: Tracks) -> Tracks:
        """Tracks in the rectified frame → tracks in the raw input frame.

        uv goes through `rect_to_raw_px`; xyz_raw = R1ᵀ · xyz_rect (same optical centre).
        """
        T, N = tracks.visible.shape
        uv = self.rect_to_raw_px(tracks.uv.reshape(-1, 2)).reshape(T, N, 2)
        xyz = np.asarray(tracks.xyz, dtype=np.float64) @ self.R1  # (T, N, 3), row form of R1ᵀ · x
        return replace(tracks, ids=tracks.ids.copy(), uv=uv.astype(np.float32), visible=tracks.visible.copy(),
                       xyz=xyz.astype(np.float32), meta=dict(tracks.meta))


# --- field parsing ---------------------------------------------------------------------------


def _is_number(x: Any) -> TypeGuard[float]:
    """A real number (int, float or a numpy real scalar), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "a scalar"


def _nestednumbers_field(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_nestednumbers_field(v) for v in value)
    return _is_number(value)


def numbers_field(data: Mapping, key: str, where: str, shape: tuple[int, ...]) -> np.ndarray:
    """A finite float array of `shape`; a flat list of the right length is reshaped (3x3 as 9)."""
    if key not in data:
        raise InputError(f"{where}: {key}: missing", "bad_calib")
    value = data[key]
    if not isinstance(value, (list, tuple)) or not _nestednumbers_field(value):
        raise InputError(f"{where}: {key}: expected {_shape_text(shape)} numbers, got {str(value)[:60]!r}",
                         "bad_calib")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except ValueError:  # ragged nesting
        raise InputError(f"{where}: {key}: expected {_shape_text(shape)} numbers, got a ragged list",
                         "bad_calib") from None
    if arr.shape != shape and arr.size == int(np.prod(shape)) and arr.ndim == 1:
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise InputError(f"{where}: {key}: expected {_shape_text(shape)}, got {_shape_text(arr.shape)}",
                         "bad_calib")
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: {key}: expected finite numbers", "bad_calib")
    return arr


def flat_numbers_field(data: Mapping, key: str, where: str) -> np.ndarray:
    """The numbers under `key` flattened to 1-D (vectors stored as N, 1xN or Nx1 lists)."""
    if key not in data:
        raise InputError(f"{where}: {key}: missing", "bad_calib")
    value = data[key]
    flat = value
    if isinstance(value, (list, tuple)):
        try:
            flat = np.asarray(value, dtype=object).ravel().tolist()
        except ValueError:  # ragged: left for numbers_field to refuse
            pass
    n = len(flat) if isinstance(flat, list) else 1
    return numbers_field({key: flat}, key, where, (n,))


def _intrinsics(data: Mapping, key: str, where: str) -> np.ndarray:
    K = numbers_field(data, key, where, (3, 3))
    if K[0, 0] <= 0 or K[1, 1] <= 0 or K[1, 0] != 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise InputError(f"{where}: {key}: expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0",
                         "bad_calib")
    return K


def _distortion(data: Mapping, key: str, where: str) -> np.ndarray:
    if key not in data or data[key] is None:
        return np.zeros(5)
    value = data[key]
    if not isinstance(value, (list, tuple)) or not _nestednumbers_field(value):
        raise InputError(f"{where}: {key}: expected {'/'.join(map(str, DIST_LENGTHS))} numbers", "bad_calib")
    D = np.asarray(value, dtype=np.float64).reshape(-1)
    if len(D) not in DIST_LENGTHS or not np.isfinite(D).all():
        raise InputError(f"{where}: {key}: expected {'/'.join(map(str, DIST_LENGTHS))} finite numbers, "
                         f"got {len(D)}", "bad_calib")
    return D


def _image_size(data: Mapping, where: str) -> tuple[int, int]:
    value = data.get("image_size")
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(_is_number(v) and float(v).is_integer() and v > 0 for v in value)):
        raise InputError(f"{where}: image_size: expected [W, H], two positive integers, got {value!r}",
                         "bad_calib")
    return int(value[0]), int(value[1])


def _check_baseline(T: np.ndarray, where: str) -> None:
    # X_right = R·X_left + T: a right camera at +B along x has T ≈ [-B, 0, 0].
    if not np.linalg.norm(T) > 0:
        raise InputError(f"{where}: T: expected a non-zero baseline, got {T.tolist()}", "bad_calib")
    if not T[0] < 0:
        raise InputError(f"{where}: T: expected T_x < 0 (right camera to the right of the left, "
                         f"X_right = R·X_left + T); T_x = {T[0]:.6g} m gives a baseline <= 0", "bad_calib")
    if abs(T[0]) < abs(T[1]):
        raise InputError(f"{where}: T: expected a horizontal pair (|T_x| >= |T_y|), got {T.tolist()}",
                         "bad_calib")
