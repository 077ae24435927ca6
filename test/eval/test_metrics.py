"""Metrics on hand-made tracks whose scores can be worked out by hand."""

import math

import numpy as np
import pytest

from surg_invnerf_ros.config import TapVidConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.eval.evaluate import evaluate_files
from surg_invnerf_ros.eval.metrics import (
    compute_metrics,
    nearest_distances,
    query_frames_from,
    stir_delta_2d,
    stir_delta_3d,
)
from surg_invnerf_ros.io.trackfile import write_tracks
from surg_invnerf_ros.structs import Queries, Tracks


def make_gt(T=6, N=5, seed=0):
    rng = np.random.default_rng(seed)
    uv = rng.uniform(20, 200, size=(T, N, 2)).astype(np.float32)
    xyz = np.concatenate([rng.uniform(-0.02, 0.02, (T, N, 2)), rng.uniform(0.05, 0.1, (T, N, 1))], -1)
    return Tracks(ids=np.arange(10, 10 + N, dtype=np.int64), uv=uv, visible=np.ones((T, N), bool),
                  xyz=xyz.astype(np.float32))


def copy_tracks(t, **changes):
    fields = dict(ids=t.ids.copy(), uv=t.uv.copy(), visible=t.visible.copy(), xyz=t.xyz.copy())
    fields.update(changes)
    return Tracks(**fields)


class TestComputeMetrics:
    def test_smoke(self):
        gt = make_gt()
        m = compute_metrics(gt, gt)
        for key in ("epe_px", "epe_end_px", "delta_avg", "delta_avg_end", "oa", "aj", "err3d_mm",
                    "err3d_end_mm", "stir_delta2d", "stir_delta3d", "delta_1", "delta_16"):
            assert isinstance(m[key], float), key

    def test_ground_truth_scores_perfect(self):
        gt = make_gt()
        gt.visible[2, 1] = False  # an occluded GT point predicted occluded is correct
        m = compute_metrics(copy_tracks(gt), gt)
        assert m["epe_px"] == 0.0 and m["epe_end_px"] == 0.0
        assert m["delta_avg"] == 1.0 and m["delta_avg_end"] == 1.0
        assert m["oa"] == 1.0 and m["aj"] == 1.0 and m["aj_end"] == 1.0
        assert m["err3d_mm"] == pytest.approx(0.0, abs=1e-9)
        assert m["stir_delta2d"] == 1.0 and m["stir_delta3d"] == 1.0
        assert m["fail_frac"] == 0.0

    def test_known_offset(self):
        gt = make_gt()
        pred = copy_tracks(gt)
        pred.uv[..., 0] += 3.0
        m = compute_metrics(pred, gt)
        # |err| = 3 px everywhere: not < 1, not < 2; < 4, < 8, < 16 → δ_avg = 3/5.
        assert m["epe_px"] == pytest.approx(3.0, abs=1e-4)
        assert m["epe_end_px"] == pytest.approx(3.0, abs=1e-4)
        assert (m["delta_1"], m["delta_2"], m["delta_4"], m["delta_8"], m["delta_16"]) == (0, 0, 1, 1, 1)
        assert m["delta_avg"] == pytest.approx(0.6)
        # AJ: at 1 and 2 px every visible prediction is a FP and every GT point a FN → J = 0.
        assert m["aj"] == pytest.approx(0.6)
        assert m["oa"] == 1.0

    def test_err3d_known_value(self):
        gt = make_gt()
        pred = copy_tracks(gt)
        pred.xyz[..., 2] += 0.004  # 4 mm in z; x,y moved by 3 mm → sqrt(9 + 16) = 5 mm
        pred.xyz[..., 0] += 0.003
        m = compute_metrics(pred, gt)
        assert m["err3d_mm"] == pytest.approx(5.0, abs=1e-3)
        assert m["err3d_end_mm"] == pytest.approx(5.0, abs=1e-3)
        # STIR 3D at thresholds 2,4,8,16,32 mm with every point 5 mm from its own GT; the
        # points are centimetres apart, so the nearest GT is their own: 3/5 within.
        assert m["stir_delta3d"] == pytest.approx(0.6)

    def test_query_first_excludes_query_frame_and_before(self):
        gt = make_gt(T=6, N=2)
        pred = copy_tracks(gt)
        pred.uv[:3, 0, 0] += 100.0  # wrong at frames 0..2, which are at or before point 0's query frame
        given = TapVidConfig(query_frame="queries")
        m = compute_metrics(pred, gt, query_frames=np.array([2, 0]), tapvid=given)
        assert m["epe_px"] == 0.0
        m_all = compute_metrics(pred, gt, query_frames=np.array([0, 0]), tapvid=given)
        # frames 1, 2 of point 0 are wrong by 100 px among 5 + 5 evaluated entries.
        assert m_all["epe_px"] == pytest.approx(200.0 / 10, abs=1e-3)

    def test_missing_ids_and_nans_count_as_failures(self):
        gt = make_gt(T=4, N=4)
        pred = copy_tracks(gt)
        keep = np.array([0, 1, 2])  # id 13 missing
        pred = Tracks(ids=pred.ids[keep], uv=pred.uv[:, keep], visible=pred.visible[:, keep],
                      xyz=pred.xyz[:, keep])
        pred.uv[:, 1] = np.nan  # id 11 lost, though it claims visible
        m = compute_metrics(pred, gt, query_frames=np.zeros(4, int), tapvid=TapVidConfig(nan_visible="occluded"))
        assert math.isinf(m["epe_px"]) and math.isinf(m["err3d_mm"])
        assert m["epe_finite_px"] == 0.0
        assert m["fail_frac"] == pytest.approx(0.5)
        assert m["delta_avg"] == pytest.approx(0.5)
        # Failures are predicted occluded while the GT is visible: OA 1/2; AJ = 2/(2+0+2) per threshold.
        assert m["oa"] == pytest.approx(0.5)
        assert m["aj"] == pytest.approx(0.5)
        assert m["stir_delta2d"] == pytest.approx(0.5)
        # TAP-Vid's default: the lost point still claims visible, a wrong visible prediction: OA 3/4
        # (the missing id is predicted occluded); AJ = 2 / (4 visible + 1 false positive).
        tv = compute_metrics(pred, gt, query_frames=np.zeros(4, int))
        assert tv["oa"] == pytest.approx(0.75) and tv["aj"] == pytest.approx(0.4)
        assert tv["delta_avg"] == pytest.approx(0.5)

    def test_visible_false_positive_lowers_aj_not_delta(self):
        gt = make_gt(T=3, N=2)
        gt.visible[1:, 1] = False
        pred = copy_tracks(gt, visible=np.ones((3, 2), bool))  # claims point 1 visible
        m = compute_metrics(pred, gt, query_frames=np.zeros(2, int))
        assert m["delta_avg"] == 1.0
        # evaluated: frames 1, 2 × 2 points; OA 2/4; TP 2, FP 2, FN 0 → AJ 0.5.
        assert m["oa"] == pytest.approx(0.5)
        assert m["aj"] == pytest.approx(0.5)

    def test_ids_matched_not_positional(self):
        gt = make_gt()
        perm = np.array([4, 2, 0, 1, 3])
        pred = Tracks(ids=gt.ids[perm], uv=gt.uv[:, perm], visible=gt.visible[:, perm], xyz=gt.xyz[:, perm])
        assert compute_metrics(pred, gt)["epe_px"] == 0.0

    def test_bad_input(self):
        gt = make_gt(T=6)
        pred = make_gt(T=5)
        with pytest.raises(InputError, match="uv: expected 6 frames"):
            compute_metrics(pred, gt)
        with pytest.raises(InputError, match="query_frames"):
            compute_metrics(gt, gt, query_frames=np.zeros(2, int))


class TestStir:
    def test_nearest_gt_semantics(self):
        gt_uv = np.array([[10.0, 10.0], [100.0, 50.0]])
        swapped = gt_uv[::-1] + 0.5  # ids swapped: nearest-GT still scores perfectly
        assert stir_delta_2d(swapped, gt_uv) == 1.0
        # A far point fails every threshold up to 64 px; the other passes all: 1/2.
        far = np.array([[10.0, 10.0], [300.0, 300.0]])
        assert stir_delta_2d(far, gt_uv) == pytest.approx(0.5)
        # 10 px away: within 16, 32, 64 only → (0+0+1+1+1)/5; inclusive at the threshold (8 → 1).
        assert stir_delta_2d(np.array([[20.0, 10.0]]), gt_uv) == pytest.approx(0.6)
        assert stir_delta_2d(np.array([[18.0, 10.0]]), gt_uv) == pytest.approx(0.8)

    def test_m_differs_from_n_and_nan(self):
        gt_mm = np.array([[0.0, 0.0, 50.0], [20.0, 0.0, 50.0], [40.0, 0.0, 50.0]])
        pred_mm = np.array([[21.0, 0.0, 50.0], [np.nan, 0.0, 50.0]])
        # 1 mm (all 5 thresholds) and a NaN failure → 5/10.
        assert stir_delta_3d(pred_mm, gt_mm) == pytest.approx(0.5)
        np.testing.assert_allclose(nearest_distances(pred_mm, gt_mm), [1.0, np.inf])

    def test_compute_metrics_swapped_ids(self):
        gt = make_gt(T=3, N=2)
        pred = copy_tracks(gt)
        pred.uv[-1] = gt.uv[-1, ::-1]
        pred.xyz[-1] = gt.xyz[-1, ::-1]
        m = compute_metrics(pred, gt)
        assert m["stir_delta2d"] == 1.0 and m["stir_delta3d"] == 1.0
        assert m["epe_end_px"] > 1.0  # the id-matched EPE does see the swap


class TestQueryFrames:
    def test_from_queries_and_first_visible(self):
        gt = make_gt(T=5, N=3)
        gt.visible[:2, 2] = False
        q = Queries(ids=np.array([10]), query_tuv=np.array([[3.0, 1.0, 1.0]]))
        np.testing.assert_array_equal(query_frames_from(gt, q), [3, 0, 2])


class TestEvaluateFiles:
    def test_reads_gt_and_queries(self, tmp_path):
        gt = make_gt(T=4, N=3)
        write_tracks(tmp_path / "seq" / "gt" / "tracks.npz", gt)
        (tmp_path / "seq" / "queries.csv").write_text("id,frame,u,v\n10,0,1,1\n11,0,1,1\n12,0,1,1\n")
        pred = copy_tracks(gt)
        pred.uv[..., 1] += 3.0
        write_tracks(tmp_path / "pred.npz", pred)
        m = evaluate_files(tmp_path / "seq", tmp_path / "pred.npz")
        assert m["epe_px"] == pytest.approx(3.0, abs=1e-4)

    def test_missing_gt_names_file(self, tmp_path):
        (tmp_path / "seq").mkdir()
        with pytest.raises(InputError, match=r"gt/tracks.npz"):
            evaluate_files(tmp_path / "seq", tmp_path / "pred.npz")

    def test_frame_mismatch_names_pred(self, tmp_path):
        write_tracks(tmp_path / "seq" / "gt" / "tracks.npz", make_gt(T=4))
        write_tracks(tmp_path / "pred.npz", make_gt(T=3))
        with pytest.raises(InputError, match=r"pred.npz: uv: expected 4 frames"):
            evaluate_files(tmp_path / "seq", tmp_path / "pred.npz")

    def test_bad_queries_csv_names_file(self, tmp_path):
        write_tracks(tmp_path / "seq" / "gt" / "tracks.npz", make_gt(T=4))
        write_tracks(tmp_path / "pred.npz", make_gt(T=4))
        (tmp_path / "seq" / "queries.csv").write_text("id,frame,u,v\n10,zero,1,1\n")
        with pytest.raises(InputError, match=r"queries.csv"):
            evaluate_files(tmp_path / "seq", tmp_path / "pred.npz")


class TestTapVidOptions:
    """Each TAP-Vid choice on a case small enough to score by hand."""

    def case(self):
        # A: visible in all 3 frames at (100, 100); B: never visible. Predicted: A off by (8, 0) px at
        # frame 1 and (0, 4) px at frame 2; B predicted visible throughout.
        uv = np.full((3, 2, 2), 100.0, np.float32)
        gt = Tracks(ids=np.array([0, 1]), uv=uv, visible=np.array([[1, 0]] * 3, bool), xyz=np.zeros((3, 2, 3), np.float32))
        pred_uv = uv.copy()
        pred_uv[1, 0] += [8.0, 0.0]
        pred_uv[2, 0] += [0.0, 4.0]
        pred = Tracks(ids=gt.ids, uv=pred_uv, visible=np.ones((3, 2), bool), xyz=gt.xyz.copy())
        return gt, pred

    def test_tapvid_size_rescales_delta_not_epe(self):
        gt, pred = self.case()
        native = compute_metrics(pred, gt, image_size=(512, 256))
        # native errors 8 and 4 px: strictly within 16 (both) and 8 (the 4 px one): (0+0+0+0.5+1)/5
        assert native["delta_avg"] == pytest.approx(0.3)
        small = compute_metrics(pred, gt, tapvid=TapVidConfig(size=256), image_size=(512, 256))
        # at 256×256, x shrinks by 2: both errors are 4 px, within 8 and 16: (0+0+0+1+1)/5
        assert small["delta_avg"] == pytest.approx(0.4)
        assert small["delta_8"] == 1.0 and small["delta_4"] == 0.0
        assert small["epe_px"] == native["epe_px"] == pytest.approx(6.0)  # EPE stays native
        with pytest.raises(InputError, match="tapvid.size"):
            compute_metrics(pred, gt, tapvid=TapVidConfig(size=256))

    def test_never_visible_track_dropped_or_kept(self):
        gt, pred = self.case()
        assert compute_metrics(pred, gt)["oa"] == 1.0  # B is not scored (TAP-Vid)
        # kept: B's frames 1 and 2 (after its fallback query frame 0) are false visibles: 2 of 4 right
        assert compute_metrics(pred, gt, tapvid=TapVidConfig(never_visible="keep"))["oa"] == pytest.approx(0.5)

    def test_query_frame_first_visible_or_from_queries(self):
        gt, pred = self.case()
        q = np.array([1, 0])  # queries.csv says A was queried at frame 1
        assert compute_metrics(pred, gt, q)["epe_px"] == pytest.approx(6.0)  # frames 1, 2 (first visible: 0)
        assert compute_metrics(pred, gt, q, TapVidConfig(query_frame="queries"))["epe_px"] == pytest.approx(4.0)

    def test_nan_marked_visible_is_a_wrong_visible_prediction(self):
        gt, pred = self.case()
        pred.uv[1:, 0] = np.nan  # lost, yet reported visible
        wrong = compute_metrics(pred, gt)
        assert wrong["oa"] == 1.0 and wrong["delta_avg"] == 0.0  # visible == visible; never within
        assert wrong["aj"] == 0.0
        occ = compute_metrics(pred, gt, tapvid=TapVidConfig(nan_visible="occluded"))
        assert occ["oa"] == 0.0 and occ["aj"] == 0.0
