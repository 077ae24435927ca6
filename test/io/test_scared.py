"""SCARED adapter on a tiny synthetic keyframe: a stacked mp4 and per-frame pose JSONs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.geometry import invert_T
from surg_invnerf_ros.io.scared import read_scared_poses, scared_frames, scared_to_sequence
from surg_invnerf_ros.io.sequence import read_sequence

from ._make_seq import H, K, W, textured_frames

NUM_FRAMES = 4


def _poses_mm() -> np.ndarray:
    """World → camera poses in millimetres: a camera sliding along x and turning about y."""
    poses = np.tile(np.eye(4), (NUM_FRAMES, 1, 1))
    for i in range(NUM_FRAMES):
        poses[i, :3, :3] = cv2.Rodrigues(np.array([0.0, 0.05 * i, 0.0]))[0]
        poses[i, :3, 3] = [2.0 * i, -1.0, 30.0]
    return poses


def make_keyframe(root: Path) -> Path:
    data = root / "keyframe_1" / "data"
    (data / "frame_data").mkdir(parents=True)
    left, right = textured_frames(NUM_FRAMES, seed=6), textured_frames(NUM_FRAMES, seed=7)
    writer = cv2.VideoWriter(str(data / "rgb.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, 2 * H))
    for lf, rf in zip(left, right):
        writer.write(cv2.cvtColor(np.concatenate([lf, rf], axis=0), cv2.COLOR_RGB2BGR))  # left on top
    writer.release()
    calib = {"KL": K.tolist(), "KR": K.tolist(), "DL": [[0.0] * 5], "DR": [[0.0] * 5],
             "R": np.eye(3).tolist(), "T": [[-4.2], [0.0], [0.0]]}  # millimetres
    for i, pose in enumerate(_poses_mm()):
        (data / "frame_data" / f"frame_data{i:06d}.json").write_text(
            json.dumps({"camera-pose": pose.tolist(), "camera-calibration": calib}))
    return data


class TestScared:
    def test_smoke(self, tmp_path):
        data = make_keyframe(tmp_path)
        out = scared_to_sequence(data, tmp_path / "seq")
        seq = read_sequence(out)
        assert seq.num_frames == NUM_FRAMES and seq.left_rgb_u8.shape == (NUM_FRAMES, H, W, 3)
        assert seq.calib.baseline_m == pytest.approx(0.0042)  # 4.2 mm
        assert len(seq.queries) == 12
        expected = _poses_mm().copy()
        expected[:, :3, 3] *= 1e-3
        np.testing.assert_allclose(seq.T_world_cam, invert_T(expected), atol=1e-8)
        # frames split from the stack unchanged: the written left PNG is the decoded top half
        left0, right0 = next(scared_frames(data / "rgb.mp4"))
        np.testing.assert_array_equal(cv2.imread(str(out / "left" / "000000.png"))[..., ::-1], left0)
        np.testing.assert_array_equal(cv2.imread(str(out / "right" / "000000.png"))[..., ::-1], right0)

    def test_max_frames_and_poses(self, tmp_path):
        data = make_keyframe(tmp_path)
        out = scared_to_sequence(data, tmp_path / "seq", query_uv_px=np.array([[5.0, 6.0]]), max_frames=2)
        seq = read_sequence(out, load_images=False)
        assert seq.num_frames == 2 and seq.T_world_cam.shape == (2, 4, 4)
        T = read_scared_poses(sorted((data / "frame_data").glob("*.json")), pose_is_cam_world=False)
        np.testing.assert_allclose(T[1, :3, 3], [0.002, -0.001, 0.03])  # mm → m, not inverted

    def test_bad_input(self, tmp_path):
        data = make_keyframe(tmp_path)
        f = data / "frame_data" / "frame_data000002.json"
        payload = json.loads(f.read_text())
        payload["camera-pose"][0][0] = 3.0
        f.write_text(json.dumps(payload))
        with pytest.raises(InputError, match="frame_data000002.json: camera-pose: expected a rigid"):
            scared_to_sequence(data, tmp_path / "seq")
        assert not (tmp_path / "seq").exists()
        (data / "rgb.mp4").write_bytes(b"garbage" * 10)
        with pytest.raises(InputError, match="rgb.mp4: unreadable video"):
            scared_to_sequence(data, tmp_path / "seq")
        with pytest.raises(InputError, match="frame_data: frame_data folder not found"):
            scared_to_sequence(_without_frame_data(data), tmp_path / "s")


def _without_frame_data(data: Path) -> Path:
    for f in (data / "frame_data").glob("*.json"):
        f.unlink()
    (data / "frame_data").rmdir()
    return data
