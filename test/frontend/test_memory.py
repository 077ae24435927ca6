"""The front end's RAM estimate is exact for what it counts, and too-large fits are refused."""

import pytest

from surg_invnerf_ros.config import FlowConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.frontend import memory
from surg_invnerf_ros.frontend.chains import build_correspondences
from surg_invnerf_ros.frontend.flow import compute_flow_bank

from .synthetic import translated_video


@pytest.mark.parametrize("cfg", [FlowConfig(gaps=(1, 2, 4, 8), keyframe_stride=8, max_chain_frames=16, long_range_step=4),
                                 FlowConfig(gaps=(1, 3), keyframe_stride=5, max_chain_frames=12, long_range_step=3)])
def test_estimate_counts_the_real_arrays(cfg):
    T = 17
    video = translated_video(T, (0.7, 0.3))
    bank = compute_flow_bank(video, cfg)
    corr = build_correspondences(bank, T, cfg)
    direct = {tuple(p) for p in bank.pairs.tolist()}
    assert memory.long_range_pairs(T, cfg) == {tuple(p) for p in corr.pairs.tolist()} - direct
    real = bank.flow_px.nbytes + bank.valid.nbytes + bank.cycle_err_px.nbytes
    real += corr.flow_px.nbytes + corr.confidence.nbytes
    assert memory.frontend_peak_bytes(T, 48, 64, cfg) == real


def test_refused_only_over_the_share(monkeypatch):
    cfg = FlowConfig()
    need = memory.frontend_peak_bytes(48, 192, 256, cfg)
    monkeypatch.setattr(memory, "available_bytes", lambda: need)
    assert memory.check_frontend_memory("seq", 48, 192, 256, cfg, max_share=1.0) == need
    with pytest.raises(InputError, match=r"seq: the fit's front end needs about 0\.6 GiB for 48 frames of 256x192"):
        memory.check_frontend_memory("seq", 48, 192, 256, cfg, max_share=0.5)
    memory.check_frontend_memory("seq", 48, 192, 256, cfg, max_share=0.0)  # 0: never refuses
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown: nothing to compare with
    memory.check_frontend_memory("seq", 48, 192, 256, cfg, max_share=0.5)


def test_available_bytes_reads_the_machine():
    have = memory.available_bytes()
    assert have is None or have > 0
