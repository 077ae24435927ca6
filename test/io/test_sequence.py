"""Sequence folders: write → read round trip, raw input rectified on load, and every bad input
refused with one line naming the file or field."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.io.calib import Rectifier
from surg_invnerf_ros.io.sequence import read_sequence, stamps_from_fps, write_sequence
from surg_invnerf_ros.structs import Queries

from ._make_seq import BASELINE_M, H, K, T, W, make_seq, queries, raw_calib, textured_frames


class TestReadSequence:
    def test_smoke_round_trip(self, tmp_path):
        seq = read_sequence(make_seq(tmp_path))
        assert seq.left_rgb_u8.shape == (T, H, W, 3) and seq.left_rgb_u8.dtype == np.uint8
        np.testing.assert_array_equal(seq.left_rgb_u8, textured_frames(seed=1))
        np.testing.assert_array_equal(seq.right_rgb_u8, textured_frames(seed=2))
        np.testing.assert_allclose(seq.calib.K, K)
        assert seq.calib.baseline_m == pytest.approx(BASELINE_M)
        assert seq.calib.image_size == (W, H) and seq.calib.fps == 25.0
        assert seq.stamps_ns.dtype == np.int64
        np.testing.assert_array_equal(seq.stamps_ns, [1_000, 41_000_000, 81_000_000, 121_000_000])
        np.testing.assert_array_equal(seq.queries.ids, queries().ids)
        np.testing.assert_allclose(seq.queries.query_tuv, queries().query_tuv)
        assert seq.T_world_cam.shape == (T, 4, 4)
        np.testing.assert_allclose(seq.T_world_cam[:, 0, 3], [0.0, 0.01, 0.02, 0.03], atol=1e-9)
        np.testing.assert_allclose(seq.T_world_cam[:, :3, :3], np.tile(np.eye(3), (T, 1, 1)), atol=1e-9)
        assert seq.name == "seq" and seq.rectify is None

    def test_rgb_order_kept(self, tmp_path):
        left = np.zeros((T, H, W, 3), np.uint8)
        left[..., 0] = 200  # pure red in RGB
        p = write_sequence(tmp_path / "red", left, left, read_sequence(make_seq(tmp_path)).calib, queries())
        seq = read_sequence(p)
        assert (seq.left_rgb_u8[..., 0] == 200).all() and (seq.left_rgb_u8[..., 2] == 0).all()

    def test_optional_files_absent(self, tmp_path):
        seq = read_sequence(make_seq(tmp_path, stamps_ns=None, T_world_cam=None))
        assert seq.T_world_cam is None
        # 25 fps → 40 ms per frame
        np.testing.assert_array_equal(seq.stamps_ns, [0, 40_000_000, 80_000_000, 120_000_000])
        np.testing.assert_array_equal(stamps_from_fps(3, 30.0), [0, 33_333_333, 66_666_667])

    def test_lazy_frames_equal_loaded_frames(self, tmp_path):
        path = make_seq(tmp_path)
        eager, lazy = read_sequence(path), read_sequence(path, lazy=True)
        assert not isinstance(lazy.left_rgb_u8, np.ndarray) and lazy.num_frames == T
        assert lazy.left_rgb_u8.shape == eager.left_rgb_u8.shape and len(lazy.right_rgb_u8) == T
        np.testing.assert_array_equal(lazy.left_rgb_u8[2], eager.left_rgb_u8[2])
        np.testing.assert_array_equal(lazy.right_rgb_u8[-1], eager.right_rgb_u8[-1])
        np.testing.assert_array_equal(lazy.left_rgb_u8[1:3], eager.left_rgb_u8[1:3])
        np.testing.assert_array_equal(np.asarray(lazy.right_rgb_u8), eager.right_rgb_u8)

    def test_without_images_and_progress(self, tmp_path):
        path = make_seq(tmp_path)
        light = read_sequence(path, load_images=False)
        assert light.num_frames == T and light.left_rgb_u8.shape == (T, 0, 0, 3)
        assert len(light.queries) == 3
        calls = []
        read_sequence(path, progress=calls.append)
        assert calls == [1] * T

    def test_raw_input_rectified_on_load(self, tmp_path):
        raw = raw_calib()
        q = queries()
        path = write_sequence(tmp_path / "raw", textured_frames(seed=1), textured_frames(seed=2), raw.to_dict(), q)
        seq = read_sequence(path)
        assert isinstance(seq.rectify, Rectifier)
        assert seq.left_rgb_u8.shape == (T, H, W, 3)
        lazy = read_sequence(path, lazy=True)  # rectified frame by frame when read: the same images
        np.testing.assert_array_equal(np.asarray(lazy.left_rgb_u8), seq.left_rgb_u8)
        np.testing.assert_array_equal(lazy.right_rgb_u8[1], seq.right_rgb_u8[1])
        assert seq.calib.baseline_m == pytest.approx(seq.rectify.calib_rect.baseline_m)
        assert seq.calib.baseline_m == pytest.approx(np.linalg.norm(raw.T), rel=1e-6)
        uv_rect = seq.queries.uv_px
        assert np.abs(uv_rect - q.uv_px).max() > 0.1  # really mapped
        np.testing.assert_allclose(seq.rectify.rect_to_raw_px(uv_rect), q.uv_px, atol=1e-3)
        np.testing.assert_array_equal(seq.queries.frame_idx, q.frame_idx)
        # the rectified image is the raw image resampled: a linear ramp lets us check it exactly
        vv, uu = np.mgrid[0:H, 0:W].astype(np.float64)
        ramp = np.stack([2 * uu + 2 * vv, 3 * uu, 4 * vv], axis=-1).astype(np.uint8)  # (H, W, 3)
        path = write_sequence(tmp_path / "ramp", np.stack([ramp] * T), textured_frames(), raw.to_dict(), q)
        seq = read_sequence(path)
        uv_rect = np.stack([uu.ravel(), vv.ravel()], axis=-1)
        uv_raw = seq.rectify.rect_to_raw_px(uv_rect)
        inside = ((uv_raw >= 1) & (uv_raw <= [W - 2, H - 2])).all(axis=1)
        assert inside.mean() > 0.9  # alpha = 0: almost every rectified pixel has a source
        u, v = uv_raw[inside].T
        expected = np.stack([2 * u + 2 * v, 3 * u, 4 * v], axis=-1)
        got = seq.left_rgb_u8[2].reshape(-1, 3)[inside].astype(np.float64)
        assert np.abs(got - expected).max() < 1.5  # uint8 rounding + 1/32 px map quantisation

    def test_corner_query_widens_rectification(self, tmp_path):
        q = Queries(ids=np.array([0, 1]), query_tuv=np.array([[0, 0.0, 0.0], [0, 63.0, 47.0]]))
        path = write_sequence(tmp_path / "corner", textured_frames(), textured_frames(seed=3),
                              raw_calib().to_dict(), q)
        seq = read_sequence(path, load_images=False)
        assert seq.rectify.alpha > 0  # alpha = 0 would crop the corners away
        uv = seq.queries.uv_px
        assert ((uv >= 0) & (uv <= [W - 1, H - 1])).all()


# --- bad input: each case corrupts a valid folder and names the file or field ---------------------


def _edit_yaml(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))


_DELETE = object()


def _write(name: str, text: str):
    return lambda p: (p / name).write_text(text)


def _png(size_wh):
    def corrupt(p):
        img = np.zeros((size_wh[1], size_wh[0], 3), np.uint8)
        cv2.imwrite(str(p / "left" / "000002.png"), img)
    return corrupt


def _truncate_png(p):
    f = p / "right" / "000001.png"
    f.write_bytes(f.read_bytes()[:60])  # header intact, pixel data gone


def _swap_kin(row: int, text: str):
    def corrupt(p):
        lines = (p / "kinematics.csv").read_text().splitlines()
        lines[row + 1] = text
        (p / "kinematics.csv").write_text("\n".join(lines) + "\n")
    return corrupt


BAD_CASES = {
    "missing_folder": (lambda p: shutil.rmtree(p), "seq: sequence folder not found"),
    "missing_left": (lambda p: shutil.rmtree(p / "left"), "left: folder not found"),
    "missing_right": (lambda p: shutil.rmtree(p / "right"), "right: folder not found"),
    "no_frames": (lambda p: [f.unlink() for f in (p / "left").glob("*.png")], "left: no PNG frames"),
    "missing_calib": (lambda p: (p / "calib.yaml").unlink(), "calib.yaml: calibration file not found"),
    "missing_queries": (lambda p: (p / "queries.csv").unlink(), "queries.csv: file not found"),
    "frame_counts_differ": (lambda p: (p / "right" / "000003.png").unlink(), "right: expected 4 frames"),
    "image_wrong_size": (_png((32, 24)), "000002.png: expected 64x48"),
    "corrupt_png": (lambda p: (p / "left" / "000001.png").write_bytes(b"not a png at all" * 4),
                    "000001.png: not a PNG"),
    "truncated_png": (_truncate_png, "000001.png: corrupt"),
    "K_non_numeric": (lambda p: _edit_yaml(p / "calib.yaml", K_left=[["a", 0, 1], [0, 1, 1], [0, 0, 1]]),
                      "K_left: expected 3x3 numbers"),
    "K_not_3x3": (lambda p: _edit_yaml(p / "calib.yaml", K_right=[[60, 0, 31.5, 0], [0, 60, 23.5, 0], [0, 0, 1, 0]]),
                  "K_right: expected 3x3, got 3x4"),
    "K_not_intrinsics": (lambda p: _edit_yaml(p / "calib.yaml", K_left=[[-60, 0, 31.5], [0, 60, 23.5], [0, 0, 1]]),
                         "K_left: expected"),
    "negative_baseline": (lambda p: _edit_yaml(p / "calib.yaml", T=[0.005, 0.0, 0.0]), "T: expected T_x < 0"),
    "zero_baseline": (lambda p: _edit_yaml(p / "calib.yaml", T=[0.0, 0.0, 0.0]), "T: expected a non-zero baseline"),
    "vertical_pair": (lambda p: _edit_yaml(p / "calib.yaml", T=[-0.001, 0.005, 0.0]), "T: expected a horizontal"),
    "T_wrong_length": (lambda p: _edit_yaml(p / "calib.yaml", T=[-0.005, 0.0]), "T: expected 3, got 2"),
    "R_not_rotation": (lambda p: _edit_yaml(p / "calib.yaml", R=[[2, 0, 0], [0, 1, 0], [0, 0, 1]]),
                       "R: expected a rotation"),
    "D_bad_length": (lambda p: _edit_yaml(p / "calib.yaml", D_left=[0.0, 0.0, 0.0]), "D_left: expected"),
    "image_size_bad": (lambda p: _edit_yaml(p / "calib.yaml", image_size=[64]), "image_size: expected"),
    "fps_missing": (lambda p: _edit_yaml(p / "calib.yaml", fps=_DELETE), "fps: expected a number > 0"),
    "rectified_not_bool": (lambda p: _edit_yaml(p / "calib.yaml", rectified="yes please"), "rectified: expected"),
    "calib_not_yaml": (_write("calib.yaml", "K_left: [1, 2\n  : ]: ["), "calib.yaml: not valid YAML"),
    "calib_not_mapping": (_write("calib.yaml", "- 1\n- 2\n"), "calib.yaml: expected a mapping"),
    "rectified_R_not_identity": (
        lambda p: _edit_yaml(p / "calib.yaml", R=cv2.Rodrigues(np.array([0.0, 0.05, 0.0]))[0].tolist()),
        "R: expected the identity"),
    "rectified_K_differ": (
        lambda p: _edit_yaml(p / "calib.yaml", K_right=[[61.0, 0, 31.5], [0, 61.0, 23.5], [0, 0, 1]]),
        "K_right: expected K_right = K_left"),
    "rectified_D_nonzero": (lambda p: _edit_yaml(p / "calib.yaml", D_right=[0.1, 0, 0, 0, 0]),
                            "D_right: expected zeros"),
    "rectified_T_off_axis": (lambda p: _edit_yaml(p / "calib.yaml", T=[-0.005, 0.001, 0.0]),
                             "T: expected \\[-baseline_m, 0, 0\\]"),
    "query_outside_image": (_write("queries.csv", "id,frame,u,v\n0,0,70.0,10.0\n"), "queries.csv: line 2: u,v"),
    "query_negative_v": (_write("queries.csv", "id,frame,u,v\n0,0,10.0,-1.0\n"), "queries.csv: line 2: u,v"),
    "query_frame_missing": (_write("queries.csv", "id,frame,u,v\n0,0,1,1\n1,9,10.0,10.0\n"),
                            "queries.csv: line 3: frame: frame 9 does not exist"),
    "queries_header_only": (_write("queries.csv", "id,frame,u,v\n"), "queries.csv: no queries"),
    "queries_empty_file": (_write("queries.csv", ""), "queries.csv: empty file"),
    "queries_duplicate_id": (_write("queries.csv", "id,frame,u,v\n5,0,1,1\n5,1,2,2\n"),
                             "queries.csv: line 3: id: duplicate id 5"),
    "queries_non_numeric": (_write("queries.csv", "id,frame,u,v\n0,0,abc,1\n"),
                            "queries.csv: line 2: u: expected a number"),
    "queries_nan": (_write("queries.csv", "id,frame,u,v\n0,0,nan,1\n"), "queries.csv: line 2: u: expected a finite"),
    "queries_bad_header": (_write("queries.csv", "id,t,x,y\n0,0,1,1\n"), "queries.csv: line 1: expected the header"),
    "queries_short_row": (_write("queries.csv", "id,frame,u,v\n0,0,1\n"), "queries.csv: line 2: expected 4 values"),
    "timestamps_not_increasing": (_write("timestamps.csv", "frame,stamp_ns\n0,10\n1,20\n2,20\n3,30\n"),
                                  "timestamps.csv: line 4: stamp_ns: expected strictly increasing"),
    "timestamps_decreasing": (_write("timestamps.csv", "frame,stamp_ns\n0,10\n1,5\n2,20\n3,30\n"),
                              "timestamps.csv: line 3: stamp_ns"),
    "timestamps_row_count": (_write("timestamps.csv", "frame,stamp_ns\n0,10\n1,20\n"),
                             "timestamps.csv: expected 4 rows"),
    "timestamps_frame_order": (_write("timestamps.csv", "frame,stamp_ns\n0,10\n2,20\n1,30\n3,40\n"),
                               "timestamps.csv: line 3: frame: expected 1"),
    "timestamps_float_stamp": (_write("timestamps.csv", "frame,stamp_ns\n0,10\n1,20.5\n2,30\n3,40\n"),
                               "timestamps.csv: line 3: stamp_ns: expected an integer"),
    "kinematics_non_finite": (_swap_kin(2, "2,0.0,inf,0.0,0,0,0,1"), "kinematics.csv: line 4: y: expected a finite"),
    "kinematics_nan": (_swap_kin(1, "1,nan,0.0,0.0,0,0,0,1"), "kinematics.csv: line 3: x: expected a finite"),
    "kinematics_non_unit_quaternion": (_swap_kin(3, "3,0.0,0.0,0.0,0,0,0,0.5"),
                                       "kinematics.csv: line 5: qx,qy,qz,qw: expected a unit quaternion"),
    "kinematics_missing_row": (lambda p: (p / "kinematics.csv").write_text(
        "\n".join((p / "kinematics.csv").read_text().splitlines()[:-1]) + "\n"), "kinematics.csv: expected 4 rows"),
    "kinematics_text": (_swap_kin(0, "0,a,0,0,0,0,0,1"), "kinematics.csv: line 2: x: expected a number"),
}


class TestBadInput:
    @pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
    def test_bad_input(self, tmp_path, case):
        corrupt, match = BAD_CASES[case]
        path = make_seq(tmp_path)
        corrupt(path)
        with pytest.raises(InputError, match=match) as info:
            read_sequence(path)
        msg = str(info.value)
        assert "\n" not in msg and msg.strip() == msg  # one line, as the CLI prints it

    def test_raw_query_outside_rectified_view_names_query(self, tmp_path, monkeypatch):
        # Force the widest rectification to still crop the query: only alpha = 0 is tried.
        import surg_invnerf_ros.io.sequence as sequence_mod

        monkeypatch.setattr(sequence_mod, "_ALPHAS", (0.0,))
        q = Queries(ids=np.array([42]), query_tuv=np.array([[0, 0.0, 0.0]]))
        path = write_sequence(tmp_path / "raw", textured_frames(), textured_frames(), raw_calib().to_dict(), q)
        with pytest.raises(InputError, match=re.escape("queries.csv: id 42")):
            read_sequence(path)

    def test_raw_negative_baseline(self, tmp_path):
        raw = raw_calib()
        data = raw.to_dict()
        data["T"] = [0.005, 0.0, 0.0]
        path = write_sequence(tmp_path / "raw", textured_frames(), textured_frames(), data, queries())
        with pytest.raises(InputError, match="calib.yaml: T: expected T_x < 0"):
            read_sequence(path)


class TestWriteSequence:
    def test_streamed_frames(self, tmp_path):
        frames = textured_frames()
        path = write_sequence(tmp_path / "s", iter(frames), (f for f in frames[:, :, ::-1]),
                              read_sequence(make_seq(tmp_path)).calib, queries())
        seq = read_sequence(path)
        np.testing.assert_array_equal(seq.left_rgb_u8, frames)
        np.testing.assert_array_equal(seq.right_rgb_u8, frames[:, :, ::-1])

    def test_finish_adds_files_before_the_rename_and_its_failure_leaves_nothing(self, tmp_path):
        calib = read_sequence(make_seq(tmp_path)).calib
        frames = textured_frames(2)
        path = write_sequence(tmp_path / "s", frames, frames, calib, queries(),
                              finish=lambda tmp: (tmp / "extra.txt").write_text(str(len(list(tmp.glob("left/*"))))))
        assert (path / "extra.txt").read_text() == "2"

        def refuse(tmp):
            raise InputError("labels.json: expected 2 frames")

        with pytest.raises(InputError, match="labels.json"):
            write_sequence(tmp_path / "t", frames, frames, calib, queries(), finish=refuse)
        assert not (tmp_path / "t").exists() and not (tmp_path / ".t.partial").exists()

    def test_failed_write_leaves_nothing(self, tmp_path):
        calib = read_sequence(make_seq(tmp_path)).calib

        def broken():
            yield textured_frames(1)[0]
            raise InputError("video.mp4: decoding broke off")

        with pytest.raises(InputError, match="video.mp4"):
            write_sequence(tmp_path / "s", broken(), textured_frames(), calib, queries())
        assert not (tmp_path / "s").exists() and not (tmp_path / ".s.partial").exists()
