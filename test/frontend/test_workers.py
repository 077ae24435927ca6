"""Front-end threads: order kept, result independent of the number of workers."""

import threading

import numpy as np
import pytest

from surg_invnerf_ros.config import FlowConfig, FrontendConfig, StereoConfig
from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.frontend.flow import compute_flow_bank
from surg_invnerf_ros.frontend.stereo import stereo_depth_sequence_m
from surg_invnerf_ros.frontend.workers import num_workers, thread_map
from surg_invnerf_ros.structs import StereoCalib

from .synthetic import translated_video


def test_thread_map_keeps_order_and_uses_threads():
    seen = set()

    def square(x):
        seen.add(threading.get_ident())
        return x * x

    assert thread_map(square, range(50), 4) == [x * x for x in range(50)]
    assert thread_map(square, [], 4) == []
    assert num_workers(3) == 3 and num_workers(0) >= 1


def test_thread_map_raises_worker_errors():
    def boom(x):
        raise ValueError(f"item {x}")

    with pytest.raises(ValueError, match="item"):
        thread_map(boom, range(4), 2)


def test_bank_does_not_depend_on_workers():
    video = translated_video(13, (0.7, 0.3))
    cfg = FlowConfig(gaps=(1, 2, 4), keyframe_stride=4, max_chain_frames=12, long_range_step=4)
    b1, b3 = (compute_flow_bank(video, cfg, workers=w) for w in (1, 3))
    assert np.array_equal(b1.pairs, b3.pairs) and np.array_equal(b1.flow_px, b3.flow_px)
    assert np.array_equal(b1.valid, b3.valid) and np.array_equal(b1.cycle_err_px, b3.cycle_err_px)


def test_stereo_does_not_depend_on_workers():
    left = translated_video(5, (0.5, 0.0))
    right = np.roll(left, -6, axis=2)  # a constant 6 px disparity
    calib = StereoCalib(K=np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]), baseline_m=0.005, image_size=(64, 48))
    one, many = (stereo_depth_sequence_m(left, right, calib, StereoConfig(), workers=w) for w in (1, 3))
    assert np.array_equal(one, many, equal_nan=True)
    assert np.nanmedian(one) == pytest.approx(60.0 * 0.005 / 6, rel=0.02)


def test_negative_workers_is_a_config_error():
    with pytest.raises(ConfigError, match="frontend.workers"):
        FrontendConfig(workers=-1)
