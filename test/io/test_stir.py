"""STIR clip adapter on a tiny synthetic clip: two mp4s, calib.json, label JSONs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.io.calib import Rectifier
from surg_invnerf_ros.io.sequence import read_sequence
from surg_invnerf_ros.io.stir import (
    GT_END_FILE,
    centres_from_segmentation,
    read_stir_calib,
    read_stir_labels,
    stir_clip_to_sequence,
)

from ._make_seq import H, K, W, textured_frames

NUM_FRAMES = 5
CLIP_KEY = "/data/STIRDataset/clipA/left/seq01"  # STIRMetrics keys clips by the left seq path
START = [[10.0, 12.0], [40.0, 30.0], [55.0, 8.0]]
END = [[11.0, 13.0], [41.0, 31.0], [56.0, 9.0]]


def _write_video(path: Path, frames_rgb: np.ndarray, fps: float = 20.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for f in frames_rgb:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def make_clip(root: Path) -> Path:
    clip = root / "clipA"
    _write_video(clip / "left" / "seq01" / "frames" / "100ms-350ms.mp4", textured_frames(NUM_FRAMES, seed=4))
    _write_video(clip / "right" / "seq01" / "frames" / "100ms-350ms.mp4", textured_frames(NUM_FRAMES, seed=5))
    K_right = K.copy()
    K_right[0, 2] += 2.0  # STIR's pairs differ in cx
    calib = {"leftcameramat": K.tolist(), "rightcameramat": K_right.tolist(),
             "leftdistortioncoeffs": [[-0.05, 0.01, 0.0, 0.0, 0.0]], "rightdistortioncoeffs": [0.0] * 5,
             "translation": [[-0.0045], [0.0001], [0.0]], "rotation": [0.001, -0.002, 0.0005]}
    (clip / "calib.json").write_text(json.dumps(calib))
    (root / "start.json").write_text(json.dumps({CLIP_KEY: START, "/data/STIRDataset/clipB/left/seq01": [[1, 1]]}))
    (root / "end.json").write_text(json.dumps({CLIP_KEY: END, "/data/STIRDataset/clipB/left/seq01": [[1, 1]]}))
    (root / "end3d.json").write_text(json.dumps({CLIP_KEY: [[1.0, 2.0, 50.0]] * 3}))
    return clip


class TestStirClip:
    def test_smoke(self, tmp_path):
        clip = make_clip(tmp_path)
        calls = []
        out = stir_clip_to_sequence(clip, tmp_path / "seq", progress=calls.append, start_json=tmp_path / "start.json",
                                    end_json=tmp_path / "end.json", end_json_3d=tmp_path / "end3d.json")
        assert calls == [1] * NUM_FRAMES
        seq = read_sequence(out)
        assert seq.num_frames == NUM_FRAMES and seq.left_rgb_u8.shape == (NUM_FRAMES, H, W, 3)
        assert isinstance(seq.rectify, Rectifier)  # raw calib: rectified on load
        assert seq.calib.fps == pytest.approx(20.0)
        assert seq.calib.baseline_m == pytest.approx(np.linalg.norm([0.0045, 0.0001, 0.0]), rel=1e-6)
        np.testing.assert_array_equal(seq.queries.ids, [0, 1, 2])
        np.testing.assert_array_equal(seq.queries.frame_idx, [0, 0, 0])
        np.testing.assert_allclose(seq.rectify.rect_to_raw_px(seq.queries.uv_px), START, atol=1e-3)
        gt = json.loads((out / GT_END_FILE).read_text())
        assert gt["clip"] == CLIP_KEY and gt["end_frame"] == NUM_FRAMES - 1
        np.testing.assert_allclose(gt["end_uv_px"], END)
        np.testing.assert_allclose(gt["start_uv_px"], START)
        np.testing.assert_allclose(gt["end_xyz_mm"], [[1.0, 2.0, 50.0]] * 3)
        # the PNGs hold the decoded video frames unchanged (raw, not yet rectified)
        decoded_bgr = cv2.VideoCapture(str(next((clip / "left").rglob("*.mp4")))).read()[1]
        np.testing.assert_array_equal(cv2.imread(str(out / "left" / "000000.png")), decoded_bgr)

    def test_end_labels_are_in_the_folder_before_it_is_renamed_into_place(self, tmp_path, monkeypatch):
        """A process killed after the rename must never leave a sequence without its labels."""
        clip = make_clip(tmp_path)
        seen = []
        real_rename = Path.rename

        def watching_rename(self, target):
            seen.append((Path(target).name, (self / GT_END_FILE).is_file()))
            return real_rename(self, target)

        monkeypatch.setattr(Path, "rename", watching_rename)
        stir_clip_to_sequence(clip, tmp_path / "seq", start_json=tmp_path / "start.json",
                              end_json=tmp_path / "end.json")
        assert seen == [("seq", True)]

    def test_calib_keys(self, tmp_path):
        raw = read_stir_calib(make_clip(tmp_path) / "calib.json", (W, H), 20.0)
        np.testing.assert_allclose(raw.K_left, K)
        np.testing.assert_allclose(raw.D_left, [-0.05, 0.01, 0.0, 0.0, 0.0])
        np.testing.assert_allclose(raw.T, [-0.0045, 0.0001, 0.0])
        np.testing.assert_allclose(raw.R, cv2.Rodrigues(np.array([0.001, -0.002, 0.0005]))[0])
        assert raw.rectified is False and raw.image_size == (W, H)

    def test_max_frames_drops_end_labels(self, tmp_path):
        clip = make_clip(tmp_path)
        out = stir_clip_to_sequence(clip, tmp_path / "seq", max_frames=3, start_json=tmp_path / "start.json",
                                    end_json=tmp_path / "end.json")
        assert read_sequence(out, load_images=False).num_frames == 3
        assert not (out / GT_END_FILE).exists()  # the end labels belong to frame 4, which was cut

    def test_segmentation_fallback(self, tmp_path):
        clip = make_clip(tmp_path)
        seg = np.zeros((H, W), np.uint8)
        seg[10:15, 20:25] = 255  # box x=20, w=5 → centre 22; y=10, h=5 → centre 12
        seg[30:34, 40:48] = 255  # centre (44, 32)
        seg_dir = clip / "left" / "seq01" / "segmentation"
        seg_dir.mkdir()
        cv2.imwrite(str(seg_dir / "icgstartseg.png"), seg)
        np.testing.assert_array_equal(centres_from_segmentation(seg_dir / "icgstartseg.png"), [[22, 12], [44, 32]])
        out = stir_clip_to_sequence(clip, tmp_path / "seq")
        seq = read_sequence(out, load_images=False)
        np.testing.assert_allclose(seq.rectify.rect_to_raw_px(seq.queries.uv_px), [[22, 12], [44, 32]], atol=1e-3)
        assert not (out / GT_END_FILE).exists()

    def test_labels_list_form(self, tmp_path):
        (tmp_path / "l.json").write_text(json.dumps(START))
        key, pts = read_stir_labels(tmp_path / "l.json")
        assert key is None and pts.shape == (3, 2)


class TestStirBadInput:
    def test_unreadable_mp4(self, tmp_path):
        clip = make_clip(tmp_path)
        bad = next((clip / "right").rglob("*.mp4"))
        bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 but then garbage" * 3)
        with pytest.raises(InputError, match=r"right/seq01/frames/100ms-350ms\.mp4: unreadable video"):
            stir_clip_to_sequence(clip, tmp_path / "seq", start_json=tmp_path / "start.json")
        assert not (tmp_path / "seq").exists() and not (tmp_path / ".seq.partial").exists()

    def test_missing_calib(self, tmp_path):
        clip = make_clip(tmp_path)
        (clip / "calib.json").unlink()
        with pytest.raises(InputError, match="calib.json: calibration file not found"):
            stir_clip_to_sequence(clip, tmp_path / "seq", start_json=tmp_path / "start.json")

    def test_calib_missing_key(self, tmp_path):
        clip = make_clip(tmp_path)
        data = json.loads((clip / "calib.json").read_text())
        del data["rightcameramat"]
        (clip / "calib.json").write_text(json.dumps(data))
        with pytest.raises(InputError, match="calib.json: rightcameramat: missing"):
            stir_clip_to_sequence(clip, tmp_path / "seq", start_json=tmp_path / "start.json")

    def test_calib_positive_translation(self, tmp_path):
        clip = make_clip(tmp_path)
        data = json.loads((clip / "calib.json").read_text())
        data["translation"] = [0.0045, 0.0, 0.0]
        (clip / "calib.json").write_text(json.dumps(data))
        with pytest.raises(InputError, match="calib.json: translation: expected x < 0"):
            stir_clip_to_sequence(clip, tmp_path / "seq", start_json=tmp_path / "start.json")

    def test_two_videos(self, tmp_path):
        clip = make_clip(tmp_path)
        _write_video(clip / "left" / "seq02" / "frames" / "a.mp4", textured_frames(2))
        with pytest.raises(InputError, match="left: expected exactly one .mp4"):
            stir_clip_to_sequence(clip, tmp_path / "seq", start_json=tmp_path / "start.json")

    def test_no_start_labels(self, tmp_path):
        clip = make_clip(tmp_path)
        with pytest.raises(InputError, match="clipA: no start labels"):
            stir_clip_to_sequence(clip, tmp_path / "seq")

    def test_label_clip_not_found(self, tmp_path):
        clip = make_clip(tmp_path)
        with pytest.raises(InputError, match="start.json: no entry for clip 'nope'"):
            stir_clip_to_sequence(clip, tmp_path / "seq", start_json=tmp_path / "start.json", clip="nope")

    def test_label_outside_video(self, tmp_path):
        clip = make_clip(tmp_path)
        (tmp_path / "s.json").write_text(json.dumps([[10, 10], [100, 10]]))
        with pytest.raises(InputError, match="s.json: point 1"):
            stir_clip_to_sequence(clip, tmp_path / "seq", start_json=tmp_path / "s.json")

    def test_label_not_json(self, tmp_path):
        (tmp_path / "s.json").write_text("{not json")
        with pytest.raises(InputError, match="s.json: not valid JSON"):
            read_stir_labels(tmp_path / "s.json")
        (tmp_path / "s.json").write_text(json.dumps([[1, 2, 3]]))
        with pytest.raises(InputError, match="s.json: expected N x 2"):
            read_stir_labels(tmp_path / "s.json")
