"""The front-end throughput probe runs and reports every stage (its numbers belong to `make bench`)."""

import numpy as np

from surg_invnerf_ros.apps.frontend_bench import frontend_fps, random_stereo_video


def test_random_stereo_video():
    left, right, calib = random_stereo_video(64, 48, 3)
    assert left.shape == right.shape == (3, 48, 64, 3) and left.dtype == np.uint8
    assert calib.image_size == (64, 48)
    # The right view is the left one shifted by width/16 = 4 px: right(u) = left(u + 4).
    np.testing.assert_allclose(right[0, :, :-4].astype(float), left[0, :, 4:].astype(float), atol=1)


def test_frontend_fps_keys():
    out = frontend_fps(64, 48, frames=3)
    for key in ("lk_64pts_fps", "lk_query_64pts_fps", "dis_bank_fps", "store_fps", "sgbm_fps"):
        assert out[key] > 0, key
    assert (out["width"], out["height"], out["frames"]) == (64, 48, 3)
