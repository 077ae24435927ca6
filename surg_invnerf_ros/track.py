"""Queries → 2D/3D tracks with visibility, from a fitted InvNeRF or a classical baseline (DESIGN §3.2).

`track_sequence` is the public entry point (CLI `track`, the bench, the node). For `invnerf` it runs
the weight-free front end (SGBM depth, specular masks, DIS flow bank, multi-gap chains), fits the
model (`fit_invnerf`) and queries it (`infer_tracks`): query pixel → ray → max-weight surface
sample → canonical point u → X_t = F_t⁻¹(u) for every frame t, all queries × all frames in one
batched call. A point is visible at t when it projects inside the image, when no stereo surface
lies well in front of it at its pixel (an instrument), and, if `render.visibility_transmittance` > 0,
when the rendered transmittance in front of X_t along its ray at time t exceeds that threshold.
With `render.surface="stereo"` (default) the surface point at the query frame is the stereo point
the anchor term trains F on; `max_weight` is the max-weight sample. Output depth is fused with SGBM
where they agree (`render.stereo_depth_fusion_px`), then each point's depth at frame t becomes the
median of its points from every visible frame carried to t by the map (`render.depth_consensus`).
`reconstruct` renders depth maps and coloured
point clouds of the fitted model.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
import torch
from torch import Tensor

from .config import FitConfig, FrontendConfig, to_dict
from .device import resolve_device
from .errors import ConfigError, InputError
from .fit.optimiser import FitData, Fitter, to_device_data
from .fit.profile import StepProfile, profile_steps
from .frontend.baselines import BASELINES, run_baseline
from .frontend.memory import check_frontend_memory
from .frontend.store import CorrespondenceStore, FrontendCache, build_store
from .geometry import unproject_m
from .model.rays import band_limits_m, pixel_rays, project_px, sample_depths, stratified, transform_m
from .model.render import InvNeRF, RenderOutput, volume_weights
from .model.workspace import Workspace
from .shapes import Bool, Float, Int
from .structs import Queries, Sequence, StereoCalib, Tracks

log = logging.getLogger(__name__)

#: The method registry: InvNeRF, then the classical trackers of `frontend.baselines`.
BASELINE_METHODS = BASELINES
METHODS = ("invnerf", *BASELINES)
STATE_VERSION = 1


@dataclass
class FitResult:
    """A fitted model with what inference needs: its data (K, poses, stereo depth) and `meta`."""

    model: InvNeRF
    data: FitData
    cfg: FitConfig
    meta: dict[str, Any] = field(default_factory=dict)
    stamps_ns: np.ndarray | None = None  # (T,) the fitted frames' stamps (a later window aligns on them)
    T_world_anchor: np.ndarray | None = None  # (4, 4) the kinematic pose that is the model's world, if poses

    @property
    def workspace(self) -> Workspace:
        return self.model.workspace

    def state_dict(self) -> dict[str, Any]:
        """Warm-start state for `fit_invnerf(init_state=...)` (CPU tensors): the model, its frames' stamps
        and its world's anchor pose, so a window that slid on keeps its canonical space and the map of
        the frames it shares."""
        return {"version": STATE_VERSION, "num_frames": self.model.num_frames,
                "config": to_dict(self.cfg),
                "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "stamps_ns": None if self.stamps_ns is None else np.asarray(self.stamps_ns, np.int64).copy(),
                "T_world_anchor": None if self.T_world_anchor is None else np.asarray(self.T_world_anchor).copy()}


# ------------------------------------------------------------------------------------------------
# Front end → FitData
# ------------------------------------------------------------------------------------------------


def peak_gpu_memory_mb(device: torch.device) -> float:
    """Most GPU memory held by tensors since the fit started (PyTorch's allocator), MiB."""
    return torch.cuda.max_memory_allocated(device) / 2**20


def _relative_poses(seq: Sequence, T_world_anchor: np.ndarray | None = None) -> np.ndarray | None:
    """Camera poses relative to `T_world_anchor` (default frame 0: the world is the first left camera), or None."""
    if seq.T_world_cam is None:
        return None
    T = np.asarray(seq.T_world_cam, np.float64)
    if not np.isfinite(T).all():
        raise InputError(f"{seq.name}: T_world_cam: non-finite pose", reason="bad_pose")
    anchor = T[0] if T_world_anchor is None else np.asarray(T_world_anchor, np.float64)
    return np.linalg.inv(anchor)[None] @ T


def warm_start_alignment(init_state: dict, stamps_ns: np.ndarray | None) -> int | None:
    """How far a window slid since the fit that made `init_state`: the number of its first frames that
    left (0 when it only grew, or when either side has no stamps). A window wholly after the old one
    drops all its frames: the canonical space is kept and every new frame starts from the last fitted
    one. None when the new window starts before the old one ends without sharing its frames (a reset,
    time going back: the warm start would be wrong, fit from scratch)."""
    old = init_state.get("stamps_ns")
    if old is None or stamps_ns is None or len(stamps_ns) == 0:
        return 0
    old, new = np.asarray(old, np.int64), np.asarray(stamps_ns, np.int64)
    hit = np.flatnonzero(old == new[0])
    if not len(hit):
        return len(old) if len(old) and new[0] > old[-1] else None
    drop = int(hit[0])
    shared = min(len(old) - drop, len(new))
    return drop if np.array_equal(old[drop:drop + shared], new[:shared]) else None


def run_frontend(seq: Sequence, frontend_cfg: FrontendConfig, timings: dict[str, float],
                 fit_cfg: FitConfig | None = None, progress: Callable[[int], object] | None = None,
                 cache: FrontendCache | None = None) -> CorrespondenceStore:
    """The correspondence store of a sequence: stereo depth, masks and checked correspondences, built
    frame by frame (`frontend.store`), with its time in `timings`. With `cache`, the stereo and flows of
    frames (by stamp) that an earlier window computed are reused."""
    fit_cfg = fit_cfg or FitConfig()
    check_frontend_memory(seq.name, seq.num_frames, seq.calib.height, seq.calib.width, frontend_cfg,
                          frontend_cfg.max_memory_share)
    t0 = time.perf_counter()
    store = build_store(seq.left_rgb_u8, seq.right_rgb_u8, seq.calib, frontend_cfg, cell_px=fit_cfg.sampler.cell_px,
                        subpixel=fit_cfg.render.subpixel_lookup, with_right_colour=fit_cfg.render.right_ray_share > 0,
                        seed=fit_cfg.seed, progress=progress, name=seq.name,
                        frame_keys=seq.stamps_ns if cache is not None else None, cache=cache)
    timings["frontend_s"] = time.perf_counter() - t0
    timings.update(store.timings_s)
    log.info("%s: %d samples, %d correspondences (%.0f MB) in %.1f s", seq.name, store.uv_px.shape[0],
             store.num_records, store.nbytes() / 1e6, timings["frontend_s"])
    return store


def stereo_points_world_m(store: CorrespondenceStore, K: np.ndarray, T_world_cam: np.ndarray | None,
                          max_points: int = 2_000_000) -> np.ndarray:
    """(P, 3) world points of the stored samples with valid stereo depth (at most about `max_points`)."""
    S = store.samples_per_frame
    step = max(1, store.uv_px.shape[0] // max_points)
    idx = np.arange(0, store.uv_px.shape[0], step)
    d = store.depth_m[idx].astype(np.float64)
    ok = np.isfinite(d) & (d > 0)
    idx, d = idx[ok], d[ok]
    xyz = unproject_m(store.uv_px[idx].astype(np.float64), d, K)
    if T_world_cam is not None:
        T = np.asarray(T_world_cam, np.float64)[idx // S]  # (P, 4, 4)
        xyz = np.einsum("pij,pj->pi", T[:, :3, :3], xyz) + T[:, :3, 3]
    return xyz


# ------------------------------------------------------------------------------------------------
# Fit
# ------------------------------------------------------------------------------------------------


def _build_model(fit_cfg: FitConfig, num_frames: int, workspace: Workspace | None, init_state: dict | None,
                 device: torch.device, drop_first: int = 0) -> InvNeRF:
    """A new model in `workspace`, or one warm-started from `init_state` (whose box it loads: `workspace` is None),
    its first `drop_first` frames left behind."""
    if init_state is None:
        if workspace is None:
            raise ValueError("_build_model: a new model needs a workspace")
        return InvNeRF(fit_cfg, num_frames, workspace, seed=fit_cfg.seed).to(device)
    try:
        old_T = int(init_state["num_frames"])
        model = InvNeRF(fit_cfg, old_T, Workspace(torch.zeros(3), torch.ones(3)), seed=fit_cfg.seed)
        model.load_state_dict(init_state["model"])
    except (KeyError, RuntimeError) as err:
        raise ConfigError(f"init_state: does not match this config ({str(err).splitlines()[0]})") from None
    model.grow_time(num_frames, drop_first)
    return model.to(device)


def fit_invnerf(seq: Sequence, fit_cfg: FitConfig | None = None, frontend_cfg: FrontendConfig | None = None,
                progress: Callable[[dict], None] | None = None, init_state: dict | None = None,
                frontend: CorrespondenceStore | None = None, frontend_cache: FrontendCache | None = None) -> FitResult:
    """Fit the InvNeRF model to one sequence: front end, then test-time optimisation.

    Args:
        seq: a rectified stereo sequence (T ≥ 1 frames).
        fit_cfg, frontend_cfg: configs (defaults when None).
        progress: called with {"step", "max_steps", "loss", "converged", ...} every `log_every` steps.
        init_state: a previous `FitResult.state_dict()` to warm-start from; it may hold fewer frames
            (the time planes are extended by repeating the last frame).
        frontend: a precomputed `run_frontend` store (benchmarks reuse it across ablations).
        frontend_cache: stereo and flows of frames an earlier window computed (`frontend.store.FrontendCache`).
    """
    fit_cfg = fit_cfg or FitConfig()
    frontend_cfg = frontend_cfg or FrontendConfig()
    device = torch.device(resolve_device(fit_cfg.device, key="fit.device"))
    with fit_cpu(fit_cfg.num_threads):
        return _fit(seq, fit_cfg, frontend_cfg, device, progress, init_state, frontend, frontend_cache)


@contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """torch's CPU thread count set to `num_threads` for the block and restored after (0 leaves it as it is):
    `fit.num_threads` for the fit and for inference."""
    threads = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def fit_cpu(num_threads: int) -> Iterator[None]:
    """How a fit runs on the CPU: on `num_threads` torch threads (`torch_threads`), with denormal floats
    flushed to zero (off again after). A fit's gradients and Adam moments drift into the denormal range
    after a few dozen steps, where the CPU computes many times slower: on the 2-core machine a step's
    backward took 46 ms instead of 32. Values below 1.2e-38 do not matter to the fit; GPUs are unaffected."""
    with torch_threads(num_threads):
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(False)


def _fit(seq: Sequence, fit_cfg: FitConfig, frontend_cfg: FrontendConfig, device: torch.device,
         progress: Callable[[dict], None] | None, init_state: dict | None,
         frontend: CorrespondenceStore | None, frontend_cache: FrontendCache | None = None) -> FitResult:
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if seq.num_frames < 1:
        raise InputError(f"{seq.name}: no frames to fit", reason="empty")
    if frontend is None:
        T = seq.num_frames
        done = [0]

        def frame_done(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress({"stage": "frontend", "frame": done[0], "frames": T})

        fe = run_frontend(seq, frontend_cfg, timings, fit_cfg, progress=frame_done, cache=frontend_cache)
    else:
        fe = frontend
    if fe.num_frames != seq.num_frames:
        raise InputError(f"{seq.name}: the correspondence store holds {fe.num_frames} frames, the sequence "
                         f"{seq.num_frames}", reason="frame_count")
    if fit_cfg.render.right_ray_share > 0 and fe.right_rgb_u8 is None:
        raise ConfigError("render.right_ray_share: the correspondence store was built without right colours")
    drop_first = warm_start_alignment(init_state, seq.stamps_ns) if init_state is not None else 0
    if drop_first is None:
        log.info("%s: the warm start shares no frame with this window; fitting from scratch", seq.name)
        init_state = None
        drop_first = 0
    anchor = None
    if fit_cfg.use_kinematics and seq.T_world_cam is not None:
        held = init_state.get("T_world_anchor") if init_state is not None else None
        anchor = np.asarray(held if held is not None else seq.T_world_cam[0], np.float64)
    poses = _relative_poses(seq, anchor) if anchor is not None else None
    K = np.asarray(seq.calib.K, np.float64)
    t0 = time.perf_counter()
    data = to_device_data(fe, K, seq.calib.baseline_m, poses, device)
    if init_state is None:
        workspace = Workspace.from_points(stereo_points_world_m(fe, K, poses), fit_cfg.render)
    else:
        workspace = None
    torch.manual_seed(fit_cfg.seed)
    model = _build_model(fit_cfg, seq.num_frames, workspace, init_state, device, drop_first)
    if fit_cfg.pose_refine and data.enable_pose_refine() is None:
        log.info("%s: pose_refine is on but the sequence has no camera poses; nothing to refine", seq.name)
    timings["setup_s"] = time.perf_counter() - t0
    fitter = Fitter(model, data, fit_cfg, device)
    stats = fitter.run(progress)
    timings.update(stats.timings_s)
    steps = max(stats.steps, 1)
    timings["forward_per_step_s"] = timings.get("forward_s", 0.0) / steps
    timings["backward_per_step_s"] = timings.get("backward_s", 0.0) / steps
    timings["total_fit_s"] = time.perf_counter() - t_all
    meta = {"method": "invnerf", "config": {"fit": to_dict(fit_cfg), "frontend": to_dict(frontend_cfg)},
            "steps": stats.steps, "stop_reason": stats.stop_reason, "time_s": timings["total_fit_s"],
            "final_losses": stats.losses, "converged_fraction": stats.converged_share,
            "timings_s": timings, "device": str(device), "num_pairs": int(fe.pairs.shape[0]),
            "store": {"samples_per_frame": fe.samples_per_frame, "stride_px": fe.stride_px,
                      "records": fe.num_records, "mb": round(fe.nbytes() / 1e6, 1),
                      "depth_maps_on_disk": fe.depth.on_disk}}
    if device.type == "cuda":
        meta["peak_gpu_memory_mb"] = peak_gpu_memory_mb(device)
    if data.pose_correction is not None:
        meta["pose_correction"] = data.pose_correction.summary()
        log.info("invnerf fit: pose corrections up to %.3f deg, %.3f mm", meta["pose_correction"]["max_rot_deg"],
                 meta["pose_correction"]["max_trans_mm"])
    log.info("invnerf fit: %d steps in %.1f s (%s), converged %.2f", stats.steps, timings["total_fit_s"],
             stats.stop_reason, stats.converged_share)
    meta["warm_start"] = {"used": init_state is not None, "drop_first": drop_first}
    return FitResult(model=model, data=data, cfg=fit_cfg, meta=meta,
                     stamps_ns=None if seq.stamps_ns is None else np.asarray(seq.stamps_ns, np.int64), T_world_anchor=anchor)


# ------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def surface_points_world_m(model: InvNeRF, data: FitData, cfg: FitConfig, frame: Int[Tensor, " N"],
                           uv_px: Float[Tensor, "N 2"]) -> tuple[Float[Tensor, "N 3"], RenderOutput]:
    """Surface point of each query ray (world metres) and its rendering (for 'expected' surfaces)."""
    origins, dirs = pixel_rays(uv_px, data.K, data.poses(frame))
    depth_st = data.depth_at(frame, uv_px)
    z, _ = sample_depths(origins, dirs, depth_st, model.workspace, cfg.render, data.fx_b, jitter=False,
                         n_near=2 * cfg.render.near_samples, n_ws=cfg.render.inference_samples)
    out = model.render(origins, dirs, z, frame, with_colour=False)
    w = out.weights
    if cfg.render.surface in ("max_weight", "stereo"):
        # the max-weight sample, refined to the weighted mean of it and its two neighbours
        idx = w.argmax(dim=1, keepdim=True)
        nb = torch.cat([idx - 1, idx, idx + 1], dim=1)  # (N, 3)
        inside = ((nb >= 0) & (nb < z.shape[1])).float()
        nb = nb.clamp(0, z.shape[1] - 1)
        wn = w.gather(1, nb) * inside
        z_s = (wn * z.gather(1, nb)).sum(1) / wn.sum(1).clamp_min(1e-12)
    else:
        z_s = (w * z).sum(1) / w.sum(1).clamp_min(1e-6)
    if cfg.render.surface == "stereo":  # the point the anchor term trains F on
        z_s = torch.where(torch.isfinite(depth_st), depth_st, z_s)
    return origins + z_s[:, None] * dirs, out


@torch.no_grad()
def transmittance_at(model: InvNeRF, data: FitData, cfg: FitConfig, frame: Int[Tensor, " P"], uv_px: Float[Tensor, "P 2"],
                     depth_m: Float[Tensor, " P"]) -> Float[Tensor, " P"]:
    """Light reaching `depth_m` (minus the front margin) along the ray of `uv_px` at `frame`: 1 − Σ w."""
    origins, dirs = pixel_rays(uv_px, data.K, data.poses(frame))
    near_ws, _, _ = model.workspace.clip_rays(origins, dirs)
    front = band_limits_m(depth_m.clamp_min(1e-4), data.fx_b, cfg.render.visibility_front_disp_px)[0]
    near = torch.minimum(near_ws, 0.5 * front)
    z = stratified(near, front, cfg.render.inference_samples, jitter=False)
    x = origins[:, None] + z[..., None] * dirs[:, None]
    u = model.to_canonical(x, frame[:, None].expand_as(z))
    sigma, _ = model.field(u, with_colour=False)
    step_scale = dirs.norm(dim=-1, keepdim=True) / model.workspace.scale_m
    w, _ = volume_weights(sigma, z, step_scale)
    return 1.0 - w.sum(1)


@dataclass(frozen=True)
class InferredPoints:
    """N queries tracked through all T frames (`infer_points`), rectified left camera of each frame."""

    uv_px: Float[np.ndarray, "T N 2"]  # float32 pixels
    visible: Bool[np.ndarray, "T N"]
    xyz_cam_m: Float[np.ndarray, "T N 3"]  # float32 metres in the left camera frame of frame t
    canonical: Float[np.ndarray, "N 3"] | None = None  # each query's canonical point (normalised workspace)


@torch.no_grad()
def infer_points(result: FitResult, query_tuv: Float[np.ndarray, "N 3"], chunk: int = 8192,
                 canonical: Float[np.ndarray, "N 3"] | None = None) -> InferredPoints:
    """All queries (rows frame, u, v) × all frames: pixels, visibility and camera-frame points.

    Surface sample at the query frame and its canonical point, then F_t⁻¹ for every t, projection and
    the visibility tests, in chunks of about `chunk` points (frames × queries), so memory stays bounded
    for any number of queries × frames; the result does not depend on `chunk`.

    `canonical` (N, 3), where finite, is a query's canonical point from an earlier fit of the same
    model (online refinement): it is used as it is, and the query's frame and pixel are not read.
    """
    model, data, cfg = result.model, result.data, result.cfg
    dev = data.device
    T = data.num_frames
    H, W = data.hw
    q = torch.as_tensor(np.asarray(query_tuv, np.float64), dtype=torch.float32, device=dev).reshape(-1, 3)
    N = q.shape[0]
    f_q = q[:, 0].round().long().clamp(0, T - 1)
    u_canon = torch.cat([model.to_canonical(surface_points_world_m(model, data, cfg, f_q[s:s + chunk],
                                                                   q[s:s + chunk, 1:3])[0], f_q[s:s + chunk])
                         for s in range(0, N, chunk)]) if N else torch.zeros(0, 3, device=dev)
    given = torch.zeros(N, dtype=torch.bool, device=dev)
    if canonical is not None and N:
        held = torch.as_tensor(np.asarray(canonical, np.float32).reshape(N, 3), device=dev)
        given = torch.isfinite(held).all(dim=1)
        u_canon = torch.where(given[:, None], held, u_canon)
    Tcw_all = data.all_inv_poses()  # corrected when pose refinement is on
    uv_out = torch.empty(T, N, 2, device=dev)
    vis_out = torch.empty(T, N, dtype=torch.bool, device=dev)
    xyz_out = torch.empty(T, N, 3, device=dev)
    per = max(1, chunk // max(N, 1))  # frames per chunk
    for t0 in range(0, T, per):
        C = min(per, T - t0)
        frames = torch.arange(t0, t0 + C, device=dev)[:, None].expand(C, N)
        X = model.from_canonical(u_canon[None].expand(C, N, 3), frames)  # (C, N, 3) world
        xyz_cam = transform_m(None if Tcw_all is None else Tcw_all[t0:t0 + C, None], X)
        uv, z = project_px(xyz_cam, data.K)  # (C, N, 2), (C, N)
        flat_f, flat_uv, flat_z = frames.reshape(-1), uv.reshape(-1, 2), z.reshape(-1)
        visible = (uv[..., 0] >= -0.5) & (uv[..., 0] <= W - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= H - 0.5) & (z > 0)
        if cfg.render.visibility_transmittance > 0:  # the rendered test costs a ray per point and frame: only when on
            trans = transmittance_at(model, data, cfg, flat_f, flat_uv, flat_z).reshape(C, N)
            visible = visible & (trans > cfg.render.visibility_transmittance)
        d_st = data.depth_at(flat_f, flat_uv).reshape(C, N)  # stereo depth at every tracked pixel
        disp_gap = data.fx_b / d_st - data.fx_b / z.clamp_min(1e-6)  # > 0: the stereo surface is in front
        if cfg.render.stereo_visibility_check:
            occluded = torch.isfinite(d_st) & (disp_gap > cfg.render.stereo_occlusion_gap_px)
            visible = visible & ~occluded
        own = (f_q[None] == frames) & ~given[None]  # a query is visible in its own frame by definition
        visible = visible | own
        if cfg.render.stereo_depth_fusion_px > 0:
            # SGBM is the better depth sensor where it agrees with the model: keep the model's pixel, take its depth
            agree = torch.isfinite(d_st) & (disp_gap.abs() <= cfg.render.stereo_depth_fusion_px) & visible
            fused = xyz_cam * (torch.nan_to_num(d_st) / z.clamp_min(1e-6))[..., None]  # same ray, stereo depth
            xyz_cam = torch.where(agree[..., None], fused, xyz_cam)
        uv_out[t0:t0 + C], vis_out[t0:t0 + C], xyz_out[t0:t0 + C] = uv, visible, xyz_cam
    if cfg.render.depth_consensus == "median" and N:
        xyz_out = consensus_depth_m(model, data, xyz_out, vis_out, chunk, cfg.render.consensus_window_frames)
    return InferredPoints(uv_px=uv_out.float().cpu().numpy(), visible=vis_out.cpu().numpy(),
                          xyz_cam_m=xyz_out.float().cpu().numpy(), canonical=u_canon.float().cpu().numpy())


@runtime_checkable
class FrameCanonicalMap(Protocol):
    """What `consensus_depth_m` needs of a model: the map between frame t (world metres) and canonical space."""

    def to_canonical(self, x_world_m: Float[Tensor, "*B 3"], frame_idx: Int[Tensor, "*B"]) -> Float[Tensor, "*B 3"]: ...

    def from_canonical(self, u_canon: Float[Tensor, "*B 3"], frame_idx: Int[Tensor, "*B"]) -> Float[Tensor, "*B 3"]: ...


@runtime_checkable
class FramePoses(Protocol):
    """What `consensus_depth_m` needs of the fit data: T_world_cam and T_cam_world of every frame (None: no poses)."""

    def all_poses(self) -> Float[Tensor, "T 4 4"] | None: ...

    def all_inv_poses(self) -> Float[Tensor, "T 4 4"] | None: ...


def consensus_depth_m(model: FrameCanonicalMap, data: FramePoses, xyz_cam_m: Float[Tensor, "T N 3"],
                      visible: Bool[Tensor, "T N"], chunk: int = 8192, window: int = 0) -> Float[Tensor, "T N 3"]:
    """Each point's depth at frame t := the median depth of its 3D points of the visible frames s within
    `window` frames of t (0: all) carried to t by the map (x_t = F_t⁻¹(F_s(x_s))), on the same camera
    ray (2D unchanged).

    One stereo measurement's error follows the texture under the point; the map ties the point's
    measurements from every frame together, so their median is the multi-frame estimate. Chunked
    over target frames; the work is T · (2·window + 1) · N map evaluations (T² · N without a window).
    """
    T, N, _ = xyz_cam_m.shape
    dev = xyz_cam_m.device
    W = window if window > 0 else T
    T_wc, T_cw = data.all_poses(), data.all_inv_poses()
    frames = torch.arange(T, device=dev)
    x_world = transform_m(None if T_wc is None else T_wc[:, None], xyz_cam_m)
    u_canon = model.to_canonical(x_world, frames[:, None].expand(T, N))  # (T_s, N, 3)
    z_med = torch.empty(T, N, device=dev, dtype=xyz_cam_m.dtype)
    per_step = max(1, chunk // max(1, min(T, 2 * W + 1) * N))
    for t0 in range(0, T, per_step):
        t_idx = frames[t0:t0 + per_step]
        C = t_idx.shape[0]
        s0, s1 = max(0, t0 - W), min(T, t0 + C + W)
        S = s1 - s0
        x_t = model.from_canonical(u_canon[None, s0:s1].expand(C, S, N, 3), t_idx[:, None, None].expand(C, S, N))
        z_t = transform_m(None if T_cw is None else T_cw[t_idx, None, None], x_t)[..., 2]
        near = (frames[s0:s1][None] - t_idx[:, None]).abs() <= W  # (C, S)
        use = visible[None, s0:s1] & near[..., None]
        z_med[t0:t0 + C] = torch.where(use, z_t, torch.nan).nanmedian(dim=1).values  # over source frames
    z_own = xyz_cam_m[..., 2]
    ok = torch.isfinite(z_med) & (z_med > 0) & (z_own > 0)
    return torch.where(ok[..., None], xyz_cam_m * (z_med / torch.where(ok, z_own, 1.0))[..., None], xyz_cam_m)


def infer_tracks(result: FitResult, seq_or_calib: Sequence | StereoCalib | None, queries: Queries,
                 canonical: np.ndarray | None = None) -> Tracks:
    """Tracks of `queries` (rectified left pixels) in every frame of the fitted sequence.

    `canonical` (N, 3): where finite, a query's canonical point from an earlier fit of the same model
    (`infer_points`); `Tracks.meta["canonical"]` then holds every query's canonical point (N, 3).
    """
    if seq_or_calib is not None:
        calib = seq_or_calib.calib if isinstance(seq_or_calib, Sequence) else seq_or_calib
        K_fit = result.data.K.cpu().numpy()
        if not np.allclose(np.asarray(calib.K, np.float32), K_fit, atol=1e-3):
            raise InputError("infer_tracks: calib: K differs from the fitted sequence's", reason="calib_mismatch")
    T = result.data.num_frames
    qt = np.asarray(queries.query_tuv, np.float64).reshape(-1, 3)
    if len(qt) and (qt[:, 0].min() < 0 or qt[:, 0].max() > T - 1):
        raise InputError(f"queries: frame index outside 0..{T - 1}", reason="bad_query")
    t0 = time.perf_counter()
    if len(qt) == 0:
        uv = np.zeros((T, 0, 2), np.float32)
        vis = np.zeros((T, 0), bool)
        xyz = np.zeros((T, 0, 3), np.float32)
    else:
        with torch_threads(result.cfg.num_threads):  # the fit's thread count
            out = infer_points(result, qt, canonical=canonical)
        uv, vis, xyz = out.uv_px, out.visible, out.xyz_cam_m
    infer_s = time.perf_counter() - t0
    meta = json.loads(json.dumps(result.meta, default=float))
    if canonical is not None:
        meta["canonical"] = out.canonical if len(qt) else np.zeros((0, 3), np.float32)
    meta.setdefault("timings_s", {})["inference_s"] = infer_s
    if result.data.device.type == "cuda":  # the fit's peak, or inference's if that was higher
        meta["peak_gpu_memory_mb"] = peak_gpu_memory_mb(result.data.device)
    return Tracks(ids=np.asarray(queries.ids, np.int64), uv=uv.astype(np.float32), visible=vis.astype(bool),
                  xyz=xyz.astype(np.float32), meta=meta)


# ------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------


def track_sequence(seq: Sequence, method: str = "invnerf", fit_cfg: FitConfig | None = None,
                   frontend_cfg: FrontendConfig | None = None,
                   progress: Callable[[dict], None] | None = None) -> Tracks:
    """Track `seq.queries` through `seq` with `method` (rectified left pixels, metres per frame)."""
    if method not in METHODS:
        raise ConfigError(f"method: unknown method {method!r} (expected one of {', '.join(METHODS)})")
    frontend_cfg = frontend_cfg or FrontendConfig()
    if method == "invnerf":
        fit_cfg = fit_cfg or FitConfig()
        resolve_device(fit_cfg.device, key="fit.device")  # refuse cuda-without-GPU before the front end runs
        result = fit_invnerf(seq, fit_cfg, frontend_cfg, progress)
        return infer_tracks(result, seq, seq.queries)
    done = [0]
    lock = threading.Lock()  # depth frames are reported from the front end's threads

    def count(n: int) -> None:  # flow pairs and depth frames done, as the fit's progress dicts
        with lock:
            done[0] += n
            if progress is not None:
                progress({"stage": method, "work": done[0]})

    return run_baseline(method, seq, frontend_cfg, progress=count)


def profile_fit(seq: Sequence, fit_cfg: FitConfig | None = None, frontend_cfg: FrontendConfig | None = None
                ) -> dict[str, float]:
    """Seconds spent in each stage of one fit + inference: front end (stereo and flow summed over its
    threads, chains, records), forward, backward, dense refresh, inference, and per-step averages."""
    result = fit_invnerf(seq, fit_cfg, frontend_cfg)
    tracks = infer_tracks(result, seq, seq.queries)
    out = dict(tracks.meta["timings_s"])
    out["steps"] = float(result.meta["steps"])
    out["correspondence_s"] = out.get("flow_s", 0.0) + out.get("chains_s", 0.0) + out.get("records_s", 0.0)
    return out


def profile_fit_steps(seq: Sequence, fit_cfg: FitConfig | None = None, frontend_cfg: FrontendConfig | None = None,
                      steps: int = 8) -> StepProfile:
    """Operator calls and milliseconds per optimiser step of a fit of `seq` (`fit.profile.profile_steps`):
    the front end and a new model as `fit_invnerf` builds them, then `steps` profiled steps."""
    fit_cfg = fit_cfg or FitConfig()
    frontend_cfg = frontend_cfg or FrontendConfig()
    device = torch.device(resolve_device(fit_cfg.device, key="fit.device"))
    store = run_frontend(seq, frontend_cfg, {}, fit_cfg)
    poses = _relative_poses(seq) if fit_cfg.use_kinematics else None
    K = np.asarray(seq.calib.K, np.float64)
    data = to_device_data(store, K, seq.calib.baseline_m, poses, device)
    torch.manual_seed(fit_cfg.seed)
    model = _build_model(fit_cfg, seq.num_frames, Workspace.from_points(stereo_points_world_m(store, K, poses),
                                                                        fit_cfg.render), None, device)
    with fit_cpu(fit_cfg.num_threads):  # as the fit runs
        return profile_steps(Fitter(model, data, fit_cfg, device), steps=steps)


# ------------------------------------------------------------------------------------------------
# Reconstruction export
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def render_frame(result: FitResult, frame: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Rendered (H, W) depth in metres (NaN where the ray is not opaque) and (H, W, 3) colour of a frame."""
    model, data, cfg = result.model, result.data, result.cfg
    H, W = data.hw
    dev = data.device
    vs, us = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    uv = torch.stack([us.reshape(-1), vs.reshape(-1)], -1).float()
    depth, rgb = [], []
    for s in range(0, uv.shape[0], chunk):
        uvs = uv[s:s + chunk]
        f = torch.full((uvs.shape[0],), int(frame), device=dev, dtype=torch.long)
        origins, dirs = pixel_rays(uvs, data.K, data.poses(f))
        z, _ = sample_depths(origins, dirs, data.depth_at(f, uvs), model.workspace, cfg.render, data.fx_b, jitter=False,
                             n_near=2 * cfg.render.near_samples, n_ws=cfg.render.inference_samples)
        out = model.render(origins, dirs, z, f)
        d = torch.where(out.acc > 0.5, out.depth_m, torch.full_like(out.depth_m, float("nan")))
        depth.append(d)
        rgb.append(out.colour())
    return (torch.cat(depth).reshape(H, W).cpu().numpy(),
            torch.cat(rgb).reshape(H, W, 3).clamp(0, 1).cpu().numpy())


def write_ply(path: str | Path, xyz_m: np.ndarray, rgb_u8: np.ndarray) -> Path:
    """Binary little-endian PLY with float32 x y z and uint8 red green blue (plain numpy)."""
    path = Path(path)
    xyz = np.asarray(xyz_m, np.float32).reshape(-1, 3)
    rgb = np.asarray(rgb_u8, np.uint8).reshape(-1, 3)
    rec = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(xyz)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(rec.tobytes())
    tmp.replace(path)
    return path


def reconstruct(result: FitResult, seq: Sequence, frames: Iterable[int], out_dir: str | Path) -> list[Path]:
    """Write, per frame t: `depth_{t:06d}.npy` (float32 metres, NaN empty), `depth_{t:06d}.png`
    (uint16, tenths of a millimetre, 0 empty) and `cloud_{t:06d}.ply` (rendered colour, metres in
    the left camera frame of frame t). Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    T = result.data.num_frames
    K = np.asarray(seq.calib.K, np.float64)
    paths: list[Path] = []
    for t in frames:
        if not 0 <= int(t) < T:
            raise InputError(f"recon: frame {t} outside 0..{T - 1}", reason="bad_frame")
        depth, rgb = render_frame(result, int(t))
        p = out / f"depth_{int(t):06d}.npy"
        np.save(p, depth.astype(np.float32))
        paths.append(p)
        png = np.where(np.isfinite(depth), np.clip(depth * 1e4, 0, 65535), 0).astype(np.uint16)
        p = out / f"depth_{int(t):06d}.png"
        cv2.imwrite(str(p), png)
        paths.append(p)
        H, W = depth.shape
        vs, us = np.mgrid[0:H, 0:W]
        ok = np.isfinite(depth)
        xyz = unproject_m(np.stack([us[ok], vs[ok]], -1).astype(np.float64), depth[ok].astype(np.float64), K)
        paths.append(write_ply(out / f"cloud_{int(t):06d}.ply", xyz, (rgb[ok] * 255).round()))
    return paths
