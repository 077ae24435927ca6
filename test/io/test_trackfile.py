"""Track files: npz round trip, atomic writes, CSV and STIR-JSON exports, bad files."""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import pytest

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.io.trackfile import atomic_write, export_csv, export_stir_json, read_tracks, write_tracks
from surg_invnerf_ros.structs import Tracks


def _tracks(T: int = 3, N: int = 2) -> Tracks:
    rng = np.random.default_rng(0)
    return Tracks(ids=np.array([10, 20][:N], np.int64),
                  uv=rng.uniform(0, 60, (T, N, 2)).astype(np.float32),
                  visible=rng.uniform(size=(T, N)) > 0.3,
                  xyz=rng.uniform(-0.05, 0.1, (T, N, 3)).astype(np.float32),
                  meta={"method": "lk", "config": {"a": np.float64(1.5)}, "steps": np.int64(3)})


class TestTrackFile:
    def test_round_trip(self, tmp_path):
        tracks = _tracks()
        path = write_tracks(tmp_path / "out" / "t.npz", tracks)
        back = read_tracks(path)
        np.testing.assert_array_equal(back.ids, tracks.ids)
        np.testing.assert_array_equal(back.uv, tracks.uv)
        np.testing.assert_array_equal(back.visible, tracks.visible)
        np.testing.assert_array_equal(back.xyz, tracks.xyz)
        assert back.meta == {"method": "lk", "config": {"a": 1.5}, "steps": 3}
        assert back.ids.dtype == np.int64 and back.uv.dtype == np.float32 and back.visible.dtype == bool

    def test_atomic_write_leaves_nothing_on_failure(self, tmp_path):
        target = tmp_path / "t.npz"
        target.write_bytes(b"old")

        def fail(tmp):
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")

        with pytest.raises(RuntimeError, match="disk full"):
            atomic_write(target, fail)
        assert target.read_bytes() == b"old"  # the old file is untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]  # no temporary left behind

    def test_write_refuses_bad_shapes_and_keeps_no_file(self, tmp_path):
        tracks = _tracks()
        bad = Tracks(ids=tracks.ids, uv=tracks.uv, visible=tracks.visible[:, :1], xyz=tracks.xyz)
        with pytest.raises(InputError, match="visible: expected shape"):
            write_tracks(tmp_path / "t.npz", bad)
        assert list(tmp_path.iterdir()) == []
        # a meta value JSON cannot hold fails before anything is written
        with pytest.raises(TypeError):
            write_tracks(tmp_path / "t.npz", Tracks(tracks.ids, tracks.uv, tracks.visible, tracks.xyz, {"x": object()}))
        assert list(tmp_path.iterdir()) == []

    def test_export_csv(self, tmp_path):
        tracks = _tracks()
        path = export_csv(tracks, tmp_path / "t.csv")
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["frame", "id", "u", "v", "visible", "x", "y", "z"]
        assert len(rows) == 1 + 3 * 2
        # row 4 (after the header) is frame 1, second query
        frame, qid, u, v, vis, x, y, z = rows[4]
        assert (int(frame), int(qid), int(vis)) == (1, 20, int(tracks.visible[1, 1]))
        np.testing.assert_allclose([float(u), float(v)], tracks.uv[1, 1], atol=1e-4)
        np.testing.assert_allclose([float(x), float(y), float(z)], tracks.xyz[1, 1], atol=1e-6)

    def test_export_stir_json(self, tmp_path):
        tracks = _tracks()
        data = json.loads(export_stir_json(tracks, tmp_path / "p.json", "clipA").read_text())
        np.testing.assert_allclose(data["clipA"], tracks.uv[-1], atol=1e-5)
        data = json.loads(export_stir_json(tracks, tmp_path / "p3.json", "clipA", with_3d=True).read_text())
        np.testing.assert_allclose(data["clipA"], tracks.xyz[-1] * 1000.0, rtol=1e-6)  # millimetres

    def test_bad_files(self, tmp_path):
        with pytest.raises(InputError, match="missing.npz: track file not found"):
            read_tracks(tmp_path / "missing.npz")
        junk = tmp_path / "junk.npz"
        junk.write_bytes(b"this is not a zip")
        with pytest.raises(InputError, match="junk.npz: not a readable track file"):
            read_tracks(junk)
        partial = tmp_path / "partial.npz"
        np.savez(partial, ids=np.array([1]), uv=np.zeros((1, 1, 2)))
        with pytest.raises(InputError, match="partial.npz: visible: missing"):
            read_tracks(partial)
        shapes = tmp_path / "shapes.npz"
        np.savez(shapes, ids=np.array([1, 2]), uv=np.zeros((3, 1, 2)), visible=np.zeros((3, 1), bool),
                 xyz=np.zeros((3, 1, 3)))
        with pytest.raises(InputError, match="shapes.npz: uv: expected shape"):
            read_tracks(shapes)
        dup = tmp_path / "dup.npz"
        np.savez(dup, ids=np.array([1, 1]), uv=np.zeros((3, 2, 2)), visible=np.zeros((3, 2), bool),
                 xyz=np.zeros((3, 2, 3)))
        with pytest.raises(InputError, match="dup.npz: ids: expected unique"):
            read_tracks(dup)
        assert zipfile.is_zipfile(dup)


def test_tracks_from_records_matches_ids():
    from surg_invnerf_ros.io.trackfile import tracks_from_records
    from surg_invnerf_ros.structs import TRACKED_POINTS_DTYPE

    def rec(ids, u):
        r = np.zeros(len(ids), TRACKED_POINTS_DTYPE)
        r["id"], r["u"], r["v"], r["z"], r["visible"] = ids, u, 2.0 * np.asarray(u), 0.05, 1
        return r

    records = [rec([7, 3, 99], [1.0, 2.0, 3.0]), None, rec([3], [5.0])]
    tr = tracks_from_records(records, ids=np.array([7, 3]))  # unsorted columns; id 99 is not wanted
    assert tr.uv.shape == (3, 2, 2) and tr.ids.tolist() == [7, 3]
    np.testing.assert_allclose(tr.uv[0], [[1.0, 2.0], [2.0, 4.0]])
    assert np.isnan(tr.uv[1]).all() and not tr.visible[1].any()  # no record for frame 1
    assert tr.visible[2].tolist() == [False, True] and tr.uv[2, 1, 0] == 5.0 and np.isnan(tr.xyz[2, 0]).all()
    every = tracks_from_records(records)
    assert every.ids.tolist() == [3, 7, 99]
