"""Fit-loop helpers: depth look-ups at fractional pixels, and correspondence batches from the store."""

import math

import numpy as np
import torch

from surg_invnerf_ros.config import FitConfig, FrontendConfig, MaskConfig, StoreConfig, load_config
from surg_invnerf_ros.fit import optimiser
from surg_invnerf_ros.fit.optimiser import Fitter, correspondence_batch, pairs_both_ways, to_device_data
from surg_invnerf_ros.fit.profile import profile_steps, timed_step
from surg_invnerf_ros.frontend.store import DepthMaps, build_store, depth_lookup
from surg_invnerf_ros.model.render import InvNeRF
from surg_invnerf_ros.model.workspace import Workspace
from surg_invnerf_ros.structs import StereoCalib

from ..frontend.synthetic import translated_video


class TestDepthLookup:
    def test_depth_falls_back_to_nearest_next_to_invalid(self):
        u = np.arange(6, dtype=np.float32)
        depth = np.broadcast_to(0.05 + 0.001 * u, (1, 4, 6)).copy()  # a slope along u
        depth[0, :, 5] = np.nan
        uv = np.array([[2.3, 1.0], [4.4, 1.0], [7.0, 1.0]])
        f = np.zeros(3, np.intp)
        sub = depth_lookup(depth, f, uv, True)
        near = depth_lookup(depth, f, uv, False)
        assert abs(float(sub[0]) - 0.0523) < 1e-6 and abs(float(near[0]) - 0.052) < 1e-6
        assert abs(float(sub[1]) - 0.054) < 1e-6  # a neighbour is invalid: nearest pixel's depth
        assert math.isnan(float(sub[2])) and math.isnan(float(near[2]))  # outside the image

    def test_memory_mapped_maps_give_the_same_values_in_half_precision(self):
        ram = DepthMaps.allocate(2, 4, 6, ram_limit_bytes=1e9)
        disk = DepthMaps.allocate(2, 4, 6, ram_limit_bytes=0)
        assert not ram.on_disk and disk.on_disk and disk.maps.dtype == np.float16
        vals = np.linspace(0.04, 0.09, 48, dtype=np.float32).reshape(2, 4, 6)
        ram.maps[:] = vals
        disk.maps[:] = vals
        f, uv = np.array([0, 1, 1]), np.array([[1.0, 2.0], [5.0, 3.0], [2.4, 0.6]])
        np.testing.assert_allclose(disk.at(f, uv, True), ram.at(f, uv, True), rtol=1e-3)


def _store():
    video = translated_video(9, (0.7, 0.3))
    H, W = video.shape[1:3]
    calib = StereoCalib(K=np.array([[80.0, 0, W / 2], [0, 80.0, H / 2], [0, 0, 1]]), baseline_m=0.005,
                        image_size=(W, H))
    cfg = FrontendConfig(store=StoreConfig(sample_stride_px=2), masks=MaskConfig(specular_min_value=255, dilate_px=0))
    return build_store(video, video, calib, cfg, cell_px=4)


class TestCorrespondenceBatch:
    def test_batch_reads_a_stored_record_of_each_sample(self):
        store = _store()
        data = to_device_data(store, np.eye(3), 0.005, None, torch.device("cpu"))
        sample = torch.arange(0, store.uv_px.shape[0], 7)
        cb = correspondence_batch(data, sample, torch.Generator().manual_seed(0))
        s = sample.numpy()
        np.testing.assert_array_equal(cb.frame_i.numpy(), store.sample_frame(s))
        np.testing.assert_array_equal(cb.uv_i_px.numpy(), store.uv_px[s].astype(np.float32))
        deg = store.rec_start[s + 1] - store.rec_start[s]
        has = deg > 0
        assert has.mean() > 0.5
        conf = cb.conf.numpy()
        assert bool((conf[~has] == 0).all())
        # a pair of the frame is drawn: the sample has a correspondence in it with probability deg / pairs
        pairs = np.bincount(store.pairs[:, 0], minlength=store.num_frames)[store.sample_frame(s)]
        expect = (deg / np.maximum(pairs, deg)).mean()
        assert abs((conf > 0).mean() - expect) < 0.05
        has = conf > 0
        for k in np.flatnonzero(has)[:50]:  # the drawn record is one of the sample's own
            lo, hi = store.rec_start[s[k]], store.rec_start[s[k] + 1]
            rows = np.flatnonzero((store.rec_frame[lo:hi] == int(cb.frame_j[k]))
                                  & (np.abs(store.rec_uv_px[lo:hi] - cb.uv_j_px[k].numpy()).max(1) == 0))
            assert rows.size == 1
            assert abs(float(cb.depth_j_m[k]) - float(store.rec_depth_m[lo + rows[0]])) < 1e-6 or (
                math.isnan(float(cb.depth_j_m[k])) and math.isnan(float(store.rec_depth_m[lo + rows[0]])))
        # a translation by (0.7, 0.3) per frame: every match agrees with it
        dt = (cb.frame_j - cb.frame_i).numpy()[has]
        flow = (cb.uv_j_px - cb.uv_i_px).numpy()[has]
        np.testing.assert_allclose(flow, dt[:, None] * np.array([0.7, 0.3]), atol=0.35)


class TestTimeBudget:
    def test_scales_with_frames_up_to_the_cap(self):
        from surg_invnerf_ros.config import FitConfig
        from surg_invnerf_ros.fit.optimiser import fit_time_budget_s

        cfg = FitConfig()
        assert abs(fit_time_budget_s(cfg, 48) - 96.0) < 0.1
        assert fit_time_budget_s(cfg, 2000) == cfg.time_budget_s == 3600.0
        assert fit_time_budget_s(FitConfig(time_budget_s=90.0, time_budget_per_frame_s=0.0), 1000) == 90.0
        assert fit_time_budget_s(FitConfig(time_budget_s=0.0), 48) == 0.0  # no time limit


def _fitter(overrides: list[str]) -> Fitter:
    """A Fitter on the small store (`_store`), a model in a fixed workspace box, the given FitConfig overrides."""
    store = _store()
    K = np.array([[80.0, 0, 20], [0, 80.0, 16], [0, 0, 1]])
    data = to_device_data(store, K, 0.005, None, torch.device("cpu"))
    cfg = load_config(FitConfig, None, ["render.inference_samples=16", *overrides])
    corners = np.stack(np.meshgrid([-0.01, 0.01], [-0.01, 0.01], [0.04, 0.06]), -1).reshape(-1, 3)
    ws = Workspace.from_points(np.concatenate([corners, corners * 0.5 + [0, 0, 0.025]]), cfg.render)
    return Fitter(InvNeRF(cfg, store.num_frames, ws), data, cfg, torch.device("cpu"))


class TestDirections:
    def test_pairs_both_ways(self):
        assert pairs_both_ways(np.array([[0, 1], [1, 0], [2, 0], [0, 2]]), 3)
        assert not pairs_both_ways(np.array([[0, 1], [1, 0], [0, 2]]), 3)  # (2, 0) missing
        assert pairs_both_ways(np.zeros((0, 2), np.int64), 3)

    def test_auto_renders_one_way_where_every_pair_is_held_both_ways(self, monkeypatch):
        rays: list[int] = []
        real = optimiser.render_mapped

        def counted(model, data, cfg, frame, *a, **kw):
            rays.append(int(frame.shape[0]))
            return real(model, data, cfg, frame, *a, **kw)

        monkeypatch.setattr(optimiser, "render_mapped", counted)
        n = 64
        for directions, symmetric, expect in (("auto", True, n), ("auto", False, 2 * n), ("one", False, n),
                                              ("both", True, 2 * n)):
            fitter = _fitter([f"loss.directions={directions}", f"sampler.rays_per_step={n}"])
            assert fitter.data.pairs_both_ways  # the small store holds every pair both ways
            fitter.data.pairs_both_ways = symmetric
            rays.clear()
            timed_step(fitter, 1, {})
            assert rays == [expect], (directions, symmetric)


class TestNoHostReadsInAStep:
    """A step between log and refresh points reads nothing back to the host: on a GPU each read is a
    device synchronisation. Counted here on the CPU by the Tensor methods that read values."""

    READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def test_a_step_reads_nothing_back(self, monkeypatch):
        fitter = _fitter(["log_every=1000", "sampler.refresh_every=0", "sampler.rays_per_step=64"])
        timings: dict[str, float] = {}

        def step(i: int) -> None:
            timed_step(fitter, i, timings)

        step(1)  # the first step allocates the optimiser state
        reads: list[str] = []
        for name in self.READS:
            real = getattr(torch.Tensor, name)

            def counted(self, *a, _real=real, _name=name, **kw):
                reads.append(_name)
                return _real(self, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)
        for i in range(2, 5):  # not a multiple of log_every, reg_every may fall on any of them
            step(i)
        monkeypatch.undo()
        assert reads == [], f"host reads in a fit step: {sorted(set(reads))}"


def test_profile_steps_counts_operators_and_stages():
    fitter = _fitter(["sampler.rays_per_step=32"])
    before = [p.detach().clone() for p in fitter.model.parameters()]
    prof = profile_steps(fitter, steps=2, warmup=1)
    assert prof.steps == 2 and prof.aten_ops_per_step > 100  # hundreds of small operators per step
    assert set(prof.ms_by_stage) == {"forward", "backward", "optimiser"}
    assert abs(prof.ms_per_step - sum(prof.ms_by_stage.values())) < 1e-9 and prof.ms_per_step > 0
    names = [n for n, _ in prof.top_ops]
    assert len(names) == 10 and all(n.startswith("aten::") for n in names)
    assert any(not torch.equal(a, b) for a, b in zip(before, fitter.model.parameters())), "the steps trained"


class TestContiguousParameters:
    """One buffer per parameter group: the same optimisation, one tensor per group for the optimiser."""

    def test_the_same_steps_with_one_tensor_per_group(self):
        params, fitters = {}, {}
        for flag in (True, False):
            fitter = _fitter([f"optim.contiguous_params={str(flag).lower()}", "sampler.rays_per_step=32"])
            for i in range(1, 6):  # includes a regulariser step
                timed_step(fitter, i, {})
            params[flag], fitters[flag] = [p.detach().clone() for p in fitter.model.parameters()], fitter
        assert len(params[True]) == len(params[False]) > 10
        # Adam divides by sqrt(v): float32 rounding in a near-zero gradient (summed in another order on
        # another CPU) moves an element by a small share of its step; a missed or doubled step moves it by
        # about lr (2e-2 planes, 3e-3 MLPs).
        for a, b in zip(params[True], params[False]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)
        assert [len(g["params"]) for g in fitters[True].opt.param_groups] == [1, 1]
        assert sum(len(g["params"]) for g in fitters[False].opt.param_groups) == len(params[False])

    def test_parameters_and_gradients_are_views_of_the_buffers(self):
        fitter = _fitter(["sampler.rays_per_step=32"])
        timed_step(fitter, 1, {})
        model = fitter.model
        for group, is_plane in zip(fitter.opt.param_groups, (True, False)):
            (flat,) = group["params"]
            members = [p for n, p in model.named_parameters() if ("grids" in n) == is_plane]
            assert flat.numel() == sum(p.numel() for p in members)
            for p in members:
                assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
                assert p.grad is not None and p.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr()
        assert float(flat.grad.abs().sum()) > 0  # autograd accumulated into the buffer
        fitter.zero_grad()
        assert float(flat.grad.abs().sum()) == 0.0 and model.map.layers[0].linears[0].weight.grad is not None
