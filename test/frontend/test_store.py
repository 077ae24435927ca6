"""The correspondence store: the same correspondences as a whole-image computation where both keep
them, memory linear in frames, independence from the worker count, chains that jump occlusions."""

import tracemalloc

import cv2
import numpy as np
import pytest

from surg_invnerf_ros.config import FlowConfig, FrontendConfig, MaskConfig, StoreConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.frontend.flow import compute_flow_bank, pixel_grid
from surg_invnerf_ros.frontend.store import (
    MIN_CONFIDENCE,
    backward_distances,
    build_store,
    chain_distances,
    depth_lookup,
    store_bytes,
)
from surg_invnerf_ros.structs import StereoCalib

from .synthetic import translated_video

VEL = (0.7, 0.3)
T = 17
FLOW = FlowConfig(gaps=(1, 2, 4, 8), keyframe_stride=8, max_chain_frames=16, long_range_step=4)
NO_MASK = MaskConfig(specular_min_value=255, dilate_px=0)


def calib_for(video):
    H, W = video.shape[1:3]
    return StereoCalib(K=np.array([[80.0, 0, W / 2], [0, 80.0, H / 2], [0, 0, 1]]), baseline_m=0.005, image_size=(W, H))


def store_of(video, flow=FLOW, stride=1, workers=0, **kw):
    cfg = FrontendConfig(flow=flow, store=StoreConfig(sample_stride_px=stride), masks=NO_MASK, workers=workers)
    return build_store(video, video, calib_for(video), cfg, cell_px=8, **kw)


def dense_chain_oracle(bank, r, d_max, cfg, direction=1):
    """Whole-image source-fixed chains from frame r to r + direction·d (the rule the store applies per
    sample), written independently: {d: (flow (H, W, 2), confidence (H, W))}."""
    H, W = bank.image_hw
    gu, gv = pixel_grid(H, W)
    idx = bank.index()
    states = {0: (np.zeros((H, W, 2), np.float32), np.zeros((H, W), np.float32), np.zeros((H, W), np.float32),
                  np.ones((H, W), bool))}
    out = {}
    for d in range(1, d_max + 1):
        t = r + direction * d
        best = None
        for g in sorted(cfg.gaps):
            q = idx.get((t - direction * g, t))
            if g > d or q is None or (d - g) not in states:
                continue
            flow, err, links, valid = states[d - g]
            mu, mv = gu + flow[..., 0], gv + flow[..., 1]
            link = np.dstack([bank.flow_px[q], np.minimum(bank.cycle_err_px[q], 1e4), bank.valid[q].astype(np.float32)])
            got = cv2.remap(link, mu, mv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            inside = (mu >= 0) & (mv >= 0) & (mu <= W - 1) & (mv <= H - 1)
            cand = (flow + got[..., :2], err + got[..., 2], links + 1, valid & inside & (got[..., 3] >= 0.99))
            score = np.where(cand[3], cand[1] + cfg.link_cost_px * cand[2], np.inf)
            if best is None:
                best, best_score = cand, score
            else:
                better = score < best_score
                best_score = np.where(better, score, best_score)
                best = tuple(np.where(better[..., None] if a.ndim == 3 else better, c, a) for a, c in zip(best, cand))
        states[d] = best
        conf = np.where(best[3], np.exp(-best[1] / cfg.conf_scale_px) * cfg.link_decay ** np.maximum(best[2] - 1, 0), 0)
        out[d] = (best[0], conf)
    return out


@pytest.fixture(scope="module")
def video():
    return translated_video(T, VEL)


@pytest.fixture(scope="module")
def store(video):
    return store_of(video)


class TestAgainstTheDenseComputation:
    def test_direct_pairs_are_the_bank_at_every_pixel(self, video, store):
        bank = compute_flow_bank(video, FLOW)
        H, W = bank.image_hw
        assert store.stride_px == 1 and store.samples_per_frame >= H * W
        checked = 0
        for q, (i, j) in enumerate(bank.pairs):
            if (j - i) in chain_distances(int(i), FLOW) or (i - j) in backward_distances(int(i), FLOW):
                continue  # a long direct gap merged with a chain (below)
            smp, uv_j, conf = store.records_of(int(i), int(j))
            uv = store.uv_px[smp].astype(int)
            want_conf = np.where(bank.valid[q], np.exp(-bank.cycle_err_px[q] / FLOW.conf_scale_px), 0)
            kept = want_conf[uv[:, 1], uv[:, 0]]
            assert (kept >= MIN_CONFIDENCE).all()
            np.testing.assert_allclose(uv_j - uv, bank.flow_px[q][uv[:, 1], uv[:, 0]], atol=1e-5)
            np.testing.assert_allclose(conf, kept, rtol=2e-3, atol=1e-4)  # float16 confidence
            # every pixel with a usable correspondence (inside the image) is stored
            tgt = np.rint(np.stack([np.arange(W)[None].repeat(H, 0), np.arange(H)[:, None].repeat(W, 1)], -1)
                          + bank.flow_px[q])
            inside = (tgt[..., 0] >= 0) & (tgt[..., 0] < W) & (tgt[..., 1] >= 0) & (tgt[..., 1] < H)
            usable = (want_conf >= MIN_CONFIDENCE) & inside
            assert len(np.unique(smp)) == int(usable.sum())
            checked += 1
        assert checked > 40

    def test_keyframe_chains_match_whole_image_chains(self, video, store):
        bank = compute_flow_bank(video, FLOW)
        oracle = dense_chain_oracle(bank, 0, 16, FLOW)
        for d in (12, 16):
            smp, uv_j, conf = store.records_of(0, d)
            uv = store.uv_px[smp].astype(int)
            flow, dconf = oracle[d]
            strong = dconf >= MIN_CONFIDENCE
            assert len(smp) == int(strong.sum()) - int((~_inside(uv_dense(flow), flow.shape[:2]) & strong).sum())
            np.testing.assert_allclose(uv_j - uv, flow[uv[:, 1], uv[:, 0]], atol=1e-3)
            np.testing.assert_allclose(conf, dconf[uv[:, 1], uv[:, 0]], rtol=2e-3, atol=1e-4)
            err = np.abs(uv_j - uv - d * np.asarray(VEL))
            assert np.median(err) < 0.2, d

    def test_frames_reach_the_keyframes_ahead(self, video, store):
        # keyframes 0, 8, 16; kept distances 4, 8, 12, 16: frame 4 gets (4, 16), frame 1 no long-range pair
        bank = compute_flow_bank(video, FLOW)
        flow, dconf = dense_chain_oracle(bank, 4, 12, FLOW)[12]
        smp, uv_j, conf = store.records_of(4, 16)
        uv = store.uv_px[smp].astype(int)
        assert len(smp) > 0.5 * 48 * 64
        np.testing.assert_allclose(uv_j - uv, flow[uv[:, 1], uv[:, 0]], atol=1e-3)
        np.testing.assert_allclose(conf, dconf[uv[:, 1], uv[:, 0]], rtol=2e-3, atol=1e-4)
        longest = {int(j) - int(i) for i, j in store.pairs if i == 1 and j > i}
        assert max(longest) <= max(FLOW.gaps)

    @pytest.mark.parametrize("r,d", [(16, 12), (12, 12), (16, 16)])  # keyframe back; a frame to the keyframe behind
    def test_backward_chains_match_whole_image_chains(self, video, store, r, d):
        bank = compute_flow_bank(video, FLOW)
        flow, dconf = dense_chain_oracle(bank, r, d, FLOW, direction=-1)[d]
        smp, uv_j, conf = store.records_of(r, r - d)
        uv = store.uv_px[smp].astype(int)
        assert len(smp) > 0.5 * 48 * 64
        np.testing.assert_allclose(uv_j - uv, flow[uv[:, 1], uv[:, 0]], atol=1e-3)
        np.testing.assert_allclose(conf, dconf[uv[:, 1], uv[:, 0]], rtol=2e-3, atol=1e-4)
        assert np.median(np.abs(uv_j - uv + d * np.asarray(VEL))) < 0.2

    def test_no_backward_chains_beyond_their_budget(self, video):
        cfg = FrontendConfig(flow=FLOW, store=StoreConfig(sample_stride_px=2, backward_chains_gib=0.0), masks=NO_MASK)
        st = build_store(video, video, calib_for(video), cfg, cell_px=8)
        assert not any(int(i) - int(j) > max(FLOW.gaps) for i, j in st.pairs)
        assert any(int(j) - int(i) > max(FLOW.gaps) for i, j in st.pairs)

    def test_long_direct_gap_keeps_the_more_confident_of_flow_and_chain(self, video, store):
        bank = compute_flow_bank(video, FLOW)
        q = bank.index()[(0, 8)]
        direct = np.where(bank.valid[q], np.exp(-bank.cycle_err_px[q] / FLOW.conf_scale_px), 0)
        chain = dense_chain_oracle(bank, 0, 8, FLOW)[8][1]
        smp, _, conf = store.records_of(0, 8)
        uv = store.uv_px[smp].astype(int)
        want = np.maximum(direct, chain)[uv[:, 1], uv[:, 0]]
        np.testing.assert_allclose(conf, want, rtol=2e-3, atol=1e-4)


def uv_dense(flow):
    H, W = flow.shape[:2]
    gu, gv = pixel_grid(H, W)
    return np.stack([gu, gv], -1) + flow


def _inside(uv, hw):
    H, W = hw
    r = np.rint(uv)
    return (r[..., 0] >= 0) & (r[..., 0] < W) & (r[..., 1] >= 0) & (r[..., 1] < H)


class TestStore:
    def test_layout_and_dtypes(self, store):
        S = store.samples_per_frame
        assert store.uv_px.shape == (T * S, 2) and store.uv_px.dtype == np.int16
        assert store.rec_start.shape == (T * S + 1,) and store.rec_start[-1] == store.num_records
        assert store.rec_conf.dtype == np.float16 and (store.rec_conf > 0).all() and (store.rec_conf <= 1).all()
        # samples of one cell are contiguous and inside it
        cell = store.uv_px[: store.per_cell] // store.cell_px
        assert (cell == cell[0]).all()
        assert store.nbytes() <= store_bytes(T, 48, 64, 1, FrontendConfig(flow=FLOW))

    def test_sparse_store_keeps_one_sample_per_block(self, video):
        sparse = store_of(video, stride=4)
        assert sparse.stride_px == 4 and sparse.per_cell == 4 and sparse.samples_per_frame == 12 * 16
        blocks = sparse.uv_px[:sparse.samples_per_frame] // 4
        assert len({tuple(b) for b in blocks}) == 12 * 16  # one per 4×4 block
        smp, uv_j, _ = sparse.records_of(0, 12)
        assert np.median(np.abs(uv_j - sparse.uv_px[smp] - 12 * np.asarray(VEL))) < 0.2

    def test_does_not_depend_on_workers(self, video):
        a, b = store_of(video, stride=2, workers=1), store_of(video, stride=2, workers=3)
        for name in ("uv_px", "rec_start", "rec_frame", "rec_uv_px", "rec_conf", "rec_depth_m", "rec_rgb_u8"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)

    def test_chain_jumps_an_occlusion_with_a_long_gap(self, video):
        v = video.copy()
        v[5:8, 16:32, 24:40] = 128
        short = store_of(v, FlowConfig(gaps=(1, 2), keyframe_stride=8, max_chain_frames=12, long_range_step=4))
        longer = store_of(v, FlowConfig(gaps=(1, 2, 4), keyframe_stride=8, max_chain_frames=12, long_range_step=4))

        def kept(store, box):
            smp, _, _ = store.records_of(0, 12)
            uv = store.uv_px[smp]
            return ((uv[:, 0] >= box[0]) & (uv[:, 0] < box[1]) & (uv[:, 1] >= box[2]) & (uv[:, 1] < box[3])).sum()

        box = (22, 30, 18, 26)  # frame-0 pixels under the patch at frame 6
        assert kept(short, box) == 0  # every gap-1/2 path crosses frames 5..7
        assert kept(longer, box) >= 40  # 0 → 4 → 8 → 12 jumps over them

    def test_matches_carry_the_targets_depth_and_colour(self, video):
        right = np.roll(video, -6, axis=2)  # a constant 6 px disparity: valid stereo depth
        cfg = FrontendConfig(flow=FLOW, store=StoreConfig(sample_stride_px=2), masks=NO_MASK)
        st = build_store(video, right, calib_for(video), cfg, cell_px=8, subpixel=True)
        r = np.arange(0, st.num_records, 97)
        j = st.rec_frame[r]
        want_d = depth_lookup(st.depth.maps, j, st.rec_uv_px[r].astype(np.float64), True)
        ok = np.isfinite(want_d)
        assert ok.mean() > 0.5
        np.testing.assert_allclose(st.rec_depth_m[r][ok], want_d[ok], rtol=2e-3)  # remap: 1/32 px positions
        u = np.clip(np.rint(st.rec_uv_px[r, 0]), 0, 63).astype(int)
        v = np.clip(np.rint(st.rec_uv_px[r, 1]), 0, 47).astype(int)
        assert np.abs(st.rec_rgb_u8[r].astype(int) - video[j, v, u].astype(int)).mean() < 12  # bilinear vs nearest

    def test_bad_input(self, video):
        with pytest.raises(InputError, match="right: expected 17 frames"):
            build_store(video, video[:3], calib_for(video), FrontendConfig())
        with pytest.raises(InputError, match="frame 0: expected uint8"):
            build_store(video[:, :20], video[:, :20], calib_for(video), FrontendConfig())


def test_memory_grows_linearly_with_frames():
    """Kept memory per frame is a small constant: 200 frames of 64×48 cost ~10× 20 frames, not 100×."""
    cfg = FlowConfig(gaps=(1, 2, 4), keyframe_stride=8, max_chain_frames=16, long_range_step=4)

    def peak(frames):
        v = translated_video(frames, (0.3, 0.1))
        tracemalloc.start()
        s = store_of(v, cfg, stride=2)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, s.nbytes()

    p20, n20 = peak(20)
    p200, n200 = peak(200)
    assert n200 / 200 < 1.3 * n20 / 20  # what is kept: linear in frames (short clips have fewer pairs at the ends)
    per_frame = (p200 - p20) / 180
    assert per_frame < 2.5 * n200 / 200  # the peak per frame is the store's own size (and its sorted copy)
    assert p200 / 200 < 1.3 * p20 / 20


class TestFrontendCache:
    def test_a_slid_window_reuses_stereo_and_flows_and_builds_the_same_store(self, video):
        from surg_invnerf_ros.frontend.store import FrontendCache

        keys = np.arange(len(video)) * 1000 + 7
        cache = FrontendCache()
        store_of(video[:10], frame_keys=keys[:10], cache=cache)
        assert cache.hits == 0 and len(cache) > 0
        computed = cache.misses
        cache.retain(keys[4:14])
        assert all(all(int(f) in set(keys[4:14].tolist()) for f in k[1:]) for k in cache._items)
        cached = store_of(video[4:14], frame_keys=keys[4:14], cache=cache)
        plain = store_of(video[4:14])
        assert cache.hits > 0 and cache.misses - computed < computed  # frames 4..9 and their pairs came back
        for name in ("uv_px", "depth_m", "rec_start", "rec_frame", "rec_uv_px", "rec_conf", "rec_depth_m"):
            np.testing.assert_array_equal(getattr(cached, name), getattr(plain, name), err_msg=name)

    def test_what_does_not_fit_is_not_kept(self, video):
        from surg_invnerf_ros.frontend.store import FrontendCache

        cache = FrontendCache(max_bytes=1)
        store_of(video[:4], frame_keys=np.arange(4), cache=cache)
        assert len(cache) == 0 and cache.nbytes == 0

    def test_a_cache_needs_one_key_per_frame(self, video):
        from surg_invnerf_ros.frontend.store import FrontendCache

        with pytest.raises(ValueError, match="needs 4 frame_keys"):
            store_of(video[:4], frame_keys=np.arange(3), cache=FrontendCache())
