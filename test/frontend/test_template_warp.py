"""Template warping by the smooth motion of tracked points (frontend/template_warp.py)."""

import numpy as np
import pytest

from surg_invnerf_ros.frontend.template_warp import MIN_POINTS, smooth_motion, warp_template
from surg_invnerf_ros.geometry import sample_bilinear

from .synthetic import texture

A = np.array([[1.12, 0.08], [-0.06, 0.95]])  # scale, shear and rotation
T = np.array([4.0, -3.0])


def grey(seed: int = 0) -> np.ndarray:
    return np.ascontiguousarray(texture(96, 128, seed, sigma_px=2.0)[..., 0])


def test_an_affine_motion_is_undone_between_and_at_the_points():
    img = grey()
    rng = np.random.default_rng(1)
    src = rng.uniform([20, 15], [90, 70], (12, 2))
    warped, moved = warp_template(img, src, src @ A.T + T)
    np.testing.assert_allclose(moved, src @ A.T + T, atol=1e-3)  # an affine map is not smoothed away
    between = rng.uniform([30, 25], [80, 60], (200, 2))
    diff = np.abs(sample_bilinear(warped, between @ A.T + T) - sample_bilinear(img, between))
    unwarped = np.abs(sample_bilinear(img, between @ A.T + T) - sample_bilinear(img, between))
    assert np.nanmean(diff) < 2.0 < 10.0 < np.nanmean(unwarped)  # grey levels of 0..255
    assert warped.shape == img.shape and warped.dtype == img.dtype


def test_noisy_estimates_are_smoothed_towards_the_motion_they_share():
    rng = np.random.default_rng(2)
    src = rng.uniform([10, 10], [118, 86], (40, 2))
    truth = src @ A.T + T
    noisy = truth + rng.normal(0.0, 1.5, truth.shape)
    _, moved = warp_template(grey(), src, noisy)
    assert np.linalg.norm(moved - truth, axis=1).mean() < 0.5 * np.linalg.norm(noisy - truth, axis=1).mean()


def test_rgb_images_and_nan_rows():
    img = texture(96, 128, 3).astype(np.uint8)
    rng = np.random.default_rng(3)
    src = rng.uniform([20, 15], [100, 80], (10, 2))
    dst = src + [2.0, 1.0]
    dst[3] = np.nan  # a point without an estimate: left out of the fit, still placed by it
    warped, moved = warp_template(img, src, dst)
    assert warped.shape == img.shape
    np.testing.assert_allclose(moved, src + [2.0, 1.0], atol=1e-3)


@pytest.mark.parametrize("case", ["few", "collinear"])
def test_no_usable_shape_gives_none(case):
    if case == "few":
        src = np.random.default_rng(4).uniform(10, 80, (MIN_POINTS - 1, 2))
    else:
        src = np.stack([np.linspace(10, 100, 8), np.linspace(20, 70, 8)], axis=1)
    assert warp_template(grey(), src, src + 1.0) is None


def test_a_query_placed_twice_on_one_pixel_still_warps():
    # a user clicking the same pixel twice: two identical source pixels, with equal or differing estimates
    rng = np.random.default_rng(5)
    src = rng.uniform([10, 10], [118, 86], (12, 2))
    src[5] = src[4]
    dst = src + [2.0, 1.0]
    for other in (dst[4], dst[4] + [3.0, 0.0]):
        dst[5] = other
        warped, moved = warp_template(grey(), src, dst)
        assert np.isfinite(warped).all()
        np.testing.assert_allclose(np.delete(moved, [4, 5], axis=0), np.delete(src + [2.0, 1.0], [4, 5], axis=0),
                                   atol=0.5)


def test_smooth_motion_moves_other_points_as_the_template_warp_moves_its_own():
    rng = np.random.default_rng(4)
    src = rng.uniform([10, 10], [118, 86], (30, 2))
    noisy = src @ A.T + T + rng.normal(0.0, 1.0, src.shape)
    _, moved = warp_template(grey(), src, noisy)
    np.testing.assert_allclose(smooth_motion(src, noisy, src, 128.0), moved, atol=1e-9)
    # a point left out of the fit lands where the shared motion takes it
    others = rng.uniform([30, 25], [90, 70], (5, 2))
    assert np.linalg.norm(smooth_motion(src, noisy, others, 128.0) - (others @ A.T + T), axis=1).max() < 1.0
    assert smooth_motion(src[:MIN_POINTS - 1], noisy[:MIN_POINTS - 1], others, 128.0) is None
