"""The offline reference of the ROS benchmark: the streamed scene, frame matching, accuracy on it."""

import numpy as np
import pytest

from surg_invnerf_ros.apps import stream_reference as sr
from surg_invnerf_ros.config import FitConfig, FrontendConfig, SynthConfig
from surg_invnerf_ros.config.base import load_config

PARAMS = {"synth.width": "64", "synth.height": "48", "synth.frames": "6", "synth.num_queries": "5",
          "synth.fps": "20.0", "rate_hz": "20.0", "end": "pingpong", "synth.difficulty": "hard",
          "synth.instrument": "true"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    cfg = sr.scene_config(PARAMS)
    work = tmp_path_factory.mktemp("ref")
    gt, refs = sr.offline_tracks(cfg, ["lk"], work)
    return cfg, work, gt, refs


def test_scene_config_takes_the_source_parameters():
    cfg = sr.scene_config(PARAMS)
    assert (cfg.width, cfg.height, cfg.frames, cfg.num_queries, cfg.fps) == (64, 48, 6, 5, 20.0)
    assert cfg.difficulty == "hard" and cfg.instrument is True and cfg.camera_motion == SynthConfig().camera_motion
    assert sr.scene_key(cfg) == sr.scene_key(sr.scene_config(PARAMS))
    assert sr.scene_key(cfg) != sr.scene_key(sr.scene_config({**PARAMS, "synth.seed": "1"}))


def test_offline_tracks_are_kept_and_reused(scene):
    cfg, work, gt, refs = scene
    assert gt.uv.shape == (6, 5, 2) and refs["lk"].uv.shape == (6, 5, 2)
    (path,) = (work / sr.scene_key(cfg)).glob("lk_*.npz")
    assert path == sr.reference_file(work / sr.scene_key(cfg), "lk", None, FrontendConfig())
    before = path.stat().st_mtime_ns
    _, again = sr.offline_tracks(cfg, ["lk"], work)
    assert path.stat().st_mtime_ns == before and np.array_equal(again["lk"].uv, refs["lk"].uv)


def test_a_changed_config_or_version_never_reuses_old_tracks(tmp_path, monkeypatch):
    root = tmp_path
    fit, front = FitConfig(), FrontendConfig()
    base = sr.reference_file(root, "invnerf", fit, front)
    assert sr.reference_file(root, "invnerf", FitConfig(), FrontendConfig()) == base  # same configs: same file
    assert sr.reference_file(root, "invnerf", FitConfig(max_steps=5), front) != base
    assert sr.reference_file(root, "invnerf", fit, load_config(FrontendConfig, None, ["lk.win_size_px=9"])) != base
    assert sr.reference_file(root, "dis", None, front) != base
    key = sr.scene_key(SynthConfig())
    monkeypatch.setattr(sr, "__version__", "0.0.0-other")
    assert sr.reference_file(root, "invnerf", fit, front) != base and sr.scene_key(SynthConfig()) != key


def test_ping_pong_frames_match_their_scene_frames(scene):
    _, _, gt, _ = scene
    order = [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1]
    ids = gt.ids[::-1]  # any id order
    frames = [sr.frame_points(gt, f, ids) for f in order]
    moved = frames[3].copy()
    moved["u"] += 0.5  # not a scene frame
    got = sr.match_scene_frames(frames + [moved], gt)
    assert got.tolist() == order + [-1]


def test_ground_truth_as_reference_is_exact_and_lk_is_not(scene):
    _, _, gt, refs = scene
    order = [2, 3, 4, 5, 4, 3]
    frames_gt = [sr.frame_points(gt, f, gt.ids) for f in order]
    acc = sr.reference_accuracy(frames_gt, frames_gt, (gt, {"gt": gt, **refs}))
    assert acc is not None
    assert acc["matched_frames"] == 6 and acc["scene_frames_seen"] == 4
    exact = acc["methods"]["gt"]
    assert exact["epe_px"] == 0.0 and exact["visibility_accuracy"] == 1.0 and exact["err_3d_mm"] == 0.0
    assert exact["epe_gt_visible_px"] == 0.0 and exact["aj"] == 1.0 and exact["delta_avg"] == 1.0
    assert acc["live"]["epe_px"] == 0.0  # the "live" frames here are the ground truth too
    lk = acc["methods"]["lk"]
    assert lk["point_frames"] > 0 and lk["epe_px"] > 0.0
    assert sr.reference_accuracy(frames_gt, frames_gt, None) is None
