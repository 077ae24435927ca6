"""The front end's RAM estimate bounds what the store really holds, and too-large fits are refused."""

import numpy as np
import pytest

from surg_invnerf_ros.config import FlowConfig, FrontendConfig, MaskConfig, StoreConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.frontend import memory
from surg_invnerf_ros.frontend.store import build_store, choose_stride, store_bytes
from surg_invnerf_ros.structs import StereoCalib

from .synthetic import translated_video


@pytest.mark.parametrize("flow", [FlowConfig(gaps=(1, 2, 4, 8), keyframe_stride=8, max_chain_frames=16, long_range_step=4),
                                  FlowConfig(gaps=(1, 3), keyframe_stride=5, max_chain_frames=12, long_range_step=3)])
def test_estimate_bounds_the_real_store(flow):
    T = 17
    video = translated_video(T, (0.7, 0.3))
    calib = StereoCalib(K=np.array([[80.0, 0, 32], [0, 80.0, 24], [0, 0, 1]]), baseline_m=0.005, image_size=(64, 48))
    cfg = FrontendConfig(flow=flow, store=StoreConfig(sample_stride_px=1), masks=MaskConfig(specular_min_value=255))
    store = build_store(video, video, calib, cfg)
    bound = store_bytes(T, 48, 64, 1, cfg)
    assert 0.5 * bound < store.nbytes() <= bound  # an upper bound, not a wild one


def test_stride_grows_until_the_store_fits_the_budget():
    cfg = FrontendConfig(store=StoreConfig(budget_gib=2.0))
    assert choose_stride(48, 192, 256, cfg) == 1  # short clips keep every pixel
    s = choose_stride(1000, 1024, 1280, cfg)
    assert s > 1 and store_bytes(1000, 1024, 1280, s, cfg) <= 2 * 2**30 < store_bytes(1000, 1024, 1280, s - 1, cfg)
    assert choose_stride(1000, 1024, 1280, FrontendConfig(store=StoreConfig(sample_stride_px=3))) == 3


def test_a_clip_the_whole_image_design_refused_now_fits_24_gib(monkeypatch):
    """1,000 frames at 1280×1024 needed about 409 GiB as whole-image pairs; the store passes the check."""
    cfg = FrontendConfig()
    monkeypatch.setattr(memory, "available_bytes", lambda: 24 * 2**30)
    need = memory.check_frontend_memory("long", 1000, 1024, 1280, cfg, max_share=cfg.max_memory_share)
    assert need < 8 * 2**30
    whole_image_pairs = 1000 * 2 * len(cfg.flow.gaps) * 1024 * 1280 * 25  # bank + dense pairs, 25 B/px
    assert whole_image_pairs > cfg.max_memory_share * 24 * 2**30


def test_refused_only_over_the_share(monkeypatch):
    cfg = FrontendConfig()
    need = memory.frontend_peak_bytes(48, 192, 256, cfg)
    monkeypatch.setattr(memory, "available_bytes", lambda: need)
    assert memory.check_frontend_memory("seq", 48, 192, 256, cfg, max_share=1.0) == need
    with pytest.raises(InputError, match=r"seq: the fit's front end needs about [0-9.]+ GiB for 48 frames of 256x192"):
        memory.check_frontend_memory("seq", 48, 192, 256, cfg, max_share=0.5)
    memory.check_frontend_memory("seq", 48, 192, 256, cfg, max_share=0.0)  # 0: never refuses
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown: nothing to compare with
    memory.check_frontend_memory("seq", 48, 192, 256, cfg, max_share=0.5)


def test_available_bytes_reads_the_machine():
    have = memory.available_bytes()
    assert have is None or have > 0
