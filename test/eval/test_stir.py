"""eval/stir.py against an independent oracle of STIRMetrics' formulas, and its label-file errors.

The oracle below is written from the published scoring (calculate_error_from_json2d/3d.py): for
each clip in the prediction JSON, a KD-tree over that clip's end labels is queried with every
predicted point; the distances of all clips are concatenated; accuracy at a threshold is the share
of distances <= it; δ is the mean over the thresholds. It shares no code with the implementation.
"""

import json

import numpy as np
import pytest
from scipy.spatial import KDTree

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.eval.stir import StirLabels, pooled_stir_scores, read_stir_end, stir_distances, submission
from surg_invnerf_ros.structs import Tracks

T2D = (4, 8, 16, 32, 64)
T3D = (2, 4, 8, 16, 32)


def oracle(pred_json: dict, start_json: dict, end_json: dict, thresholds) -> tuple[list[float], float, list[float], float]:
    """(model accuracies, model avg, control accuracies, control avg), STIRMetrics-style."""
    dists, control = [], []
    for name, pts in pred_json.items():
        assert name in start_json and name in end_json
        tree = KDTree(np.array(end_json[name]), leafsize=10)
        dists.extend(tree.query(np.array(pts))[0].tolist())
        control.extend(tree.query(np.array(start_json[name]))[0].tolist())

    def acc(d):
        d = np.array(d)
        a = [np.sum(d <= t) / len(d) for t in thresholds]
        return a, float(np.mean(a))

    return (*acc(dists), *acc(control))


def random_clip(rng, n=30, m=25, scale=40.0):
    start = rng.uniform(0, 1000, (n, 2))
    end = start[:m] + rng.normal(0, scale, (m, 2))
    pred = start + rng.normal(0, scale / 2, (n, 2))
    return start, end, pred


def tracks_ending_at(pred_uv, pred_xyz_m=None, T=3):
    n = len(pred_uv)
    uv = np.repeat(pred_uv[None], T, 0).astype(np.float32)
    xyz = (np.repeat(pred_xyz_m[None], T, 0) if pred_xyz_m is not None else np.zeros((T, n, 3))).astype(np.float32)
    return Tracks(ids=np.arange(n), uv=uv, visible=np.ones((T, n), bool), xyz=xyz)


class TestAgainstTheOracle:
    def test_pooled_2d_and_3d_match_over_three_clips(self):
        rng = np.random.default_rng(3)
        pred_j, start_j, end_j = {}, {}, {}
        pred3, start3, end3 = {}, {}, {}
        dists = []
        for k in range(3):
            name = f"clip{k}/left/seq00"
            start, end, pred = random_clip(rng, n=20 + 5 * k, m=15 + 4 * k)
            s3, e3, p3 = (a[:, [0, 1, 0]] / 20.0 for a in (start, end, pred))  # mm, spread over tens of mm
            pred_j[name], start_j[name], end_j[name] = pred.tolist(), start.tolist(), end.tolist()
            pred3[name], start3[name], end3[name] = p3.tolist(), s3.tolist(), e3.tolist()
            labels = StirLabels(clip=name, end_frame=2, start_uv_px=start, end_uv_px=end, start_xyz_mm=s3,
                                end_xyz_mm=e3)
            dists.append(stir_distances(tracks_ending_at(pred, p3 / 1000.0), labels))
        ours = pooled_stir_scores(dists)
        acc, avg, cacc, cavg = oracle(pred_j, start_j, end_j, T2D)
        assert ours["stir_delta2d"] == pytest.approx(avg, abs=1e-9)
        assert ours["stir_control_delta2d"] == pytest.approx(cavg, abs=1e-9)
        for t, a, c in zip(T2D, acc, cacc):
            assert ours[f"stir_delta2d_{t}"] == pytest.approx(a, abs=1e-9)
            assert ours[f"stir_control_delta2d_{t}"] == pytest.approx(c, abs=1e-9)
        acc3, avg3, _, cavg3 = oracle(pred3, start3, end3, T3D)
        assert ours["stir_delta3d"] == pytest.approx(avg3, abs=1e-9)
        assert ours["stir_control_delta3d"] == pytest.approx(cavg3, abs=1e-9)
        assert ours["stir_points_2d"] == sum(len(v) for v in pred_j.values())
        # pooled is not the mean of the per-clip scores (clips differ in size)
        per_clip = np.mean([pooled_stir_scores([d])["stir_delta2d"] for d in dists])
        assert ours["stir_delta2d"] != pytest.approx(per_clip, abs=1e-6)

    def test_thresholds_are_inclusive(self):
        labels = StirLabels(clip="c", end_frame=0, start_uv_px=np.zeros((2, 2)), end_uv_px=np.array([[0.0, 0.0]]))
        d = stir_distances(tracks_ending_at(np.array([[4.0, 0.0], [0.0, 8.001]]), T=1), labels)
        s = pooled_stir_scores([d])
        assert s["stir_delta2d_4"] == 0.5 and s["stir_delta2d_8"] == 0.5 and s["stir_delta2d_16"] == 1.0


class TestFailures:
    def test_a_lost_or_missing_point_fails_every_threshold(self):
        start = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
        labels = StirLabels(clip="c", end_frame=1, start_uv_px=start, end_uv_px=start.copy())
        tr = tracks_ending_at(start.copy(), T=2)
        tr.uv[1, 1] = np.nan  # lost
        tr = Tracks(ids=tr.ids[[0, 1]], uv=tr.uv[:, :2], visible=tr.visible[:, :2], xyz=tr.xyz[:, :2])  # id 2 missing
        d = stir_distances(tr, labels)
        assert d.model_2d_px[0] == 0.0 and np.isinf(d.model_2d_px[1:]).all()
        assert pooled_stir_scores([d])["stir_delta2d"] == pytest.approx(1 / 3)
        sub = submission({"c": tr}, {"c": labels})
        assert sub["c"][0] == [10.0, 10.0] and np.isnan(sub["c"][1]).all() and np.isnan(sub["c"][2]).all()

    def test_too_few_frames_names_the_clip(self):
        labels = StirLabels(clip="c7", end_frame=5, start_uv_px=np.zeros((1, 2)), end_uv_px=np.zeros((1, 2)))
        with pytest.raises(InputError, match="end_frame 5 of clip c7"):
            stir_distances(tracks_ending_at(np.zeros((1, 2)), T=3), labels)


class TestLabelFile:
    def write(self, tmp_path, data):
        p = tmp_path / "stir_end.json"
        p.write_text(data if isinstance(data, str) else json.dumps(data))
        return p

    def test_reads_what_stir_import_writes(self, tmp_path):
        p = self.write(tmp_path, {"clip": "a/left/seq00", "end_frame": 9, "start_uv_px": [[1, 2]],
                                  "end_uv_px": [[1, 3], [5, 5]], "end_xyz_mm": [[1, 2, 50]]})
        lab = read_stir_end(p)
        assert lab.clip == "a/left/seq00" and lab.end_frame == 9 and lab.end_uv_px.shape == (2, 2)
        assert lab.start_xyz_mm is None and lab.end_xyz_mm.shape == (1, 3)

    @pytest.mark.parametrize("data,match", [
        ("{not json", "not valid JSON"),
        ({"end_frame": 1, "start_uv_px": [[1, 2]], "end_uv_px": [[1, 2]]}, "clip: expected"),
        ({"clip": "a", "end_frame": -1, "start_uv_px": [[1, 2]], "end_uv_px": [[1, 2]]}, "end_frame: expected"),
        ({"clip": "a", "end_frame": 1, "end_uv_px": [[1, 2]]}, "start_uv_px: missing"),
        ({"clip": "a", "end_frame": 1, "start_uv_px": [[1, 2]], "end_uv_px": [[1, "x"]]}, "end_uv_px: expected"),
        ({"clip": "a", "end_frame": 1, "start_uv_px": [[1, 2]], "end_uv_px": [[1, 2, 3]]}, "end_uv_px: expected"),
        ({"clip": "a", "end_frame": 1, "start_uv_px": [[1, 2]]}, "nothing to score against"),
        ({"clip": "a", "end_frame": 1, "start_uv_px": [[1, 2]], "end_uv_px": [[1, 2]],
          "start_xyz_mm": [[1, 2, 3], [4, 5, 6]]}, "start_xyz_mm: expected 1 points"),
    ])
    def test_malformed_is_one_line_naming_file_and_key(self, tmp_path, data, match):
        p = self.write(tmp_path, data)
        with pytest.raises(InputError, match=match) as info:
            read_stir_end(p)
        assert str(info.value).startswith(str(p)) and "\n" not in str(info.value)

    def test_missing_file(self, tmp_path):
        with pytest.raises(InputError, match="STIR labels not found"):
            read_stir_end(tmp_path / "nope.json")
