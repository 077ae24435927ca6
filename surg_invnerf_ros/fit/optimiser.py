"""The fit loop: parameter groups, loss schedules, budgets and progress (DESIGN §3.2, §3.4).

One step draws pixels from the sampler, pairs each with a correspondence (frame i → frame j),
renders the ray at the pixel in frame i mapped into frame j and, in the same step, the ray at the
matched pixel in frame j mapped back into frame i (the bidirectional term), plus the photometric,
stereo, range, distortion and plane terms. Everything stays on the device; nothing loops over
pixels or points in Python, and the host reads losses only every `log_every` steps.

Two measured choices keep the density sharp (a fog of weights along the ray made depth, and with
camera motion parallax, wrong): the "anchor" term maps the stereo surface point itself
F_j⁻¹(F_i(x_stereo)) and trains F from the first step, and by default the rendered X̂_j term does not
back-propagate into the weights (`loss.corr_detach_weights`), so only the stereo, line-of-sight and
photometric terms shape the density.

With `fit.pose_refine` the kinematic poses get learnable per-frame corrections
(`model/pose_correction.py`): `FitData.poses`/`inv_poses` then return the corrected poses, the
corrections train in their own Adam group at `pose_lr`, and the "pose" term pulls them towards the
kinematics. Without it every pose read is the plain indexed tensor, as before.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..config import FitConfig
from ..model.pose_correction import PoseCorrection, invert_rigid
from ..model.rays import pixel_rays, project_px, sample_depths
from ..model.render import InvNeRF, RenderOutput
from ..shapes import Bool, Float, Int
from . import losses
from .sampler import PixelSampler

log = logging.getLogger(__name__)




@dataclass
class FitData:
    """Everything a fit reads, as device tensors (T frames of H×W pixels, Q correspondence pairs)."""

    rgb: Float[Tensor, "T H W 3"]  # left colour in [0, 1]
    depth_m: Float[Tensor, "T H W"]  # stereo depth, NaN invalid
    supervise: Bool[Tensor, "T H W"]  # False where masked (specular)
    pairs: Int[Tensor, "Q 2"]
    flow_px: Tensor  # (Q, H, W, 2) float32 or float16
    confidence: Tensor  # (Q, H, W) float32 or float16
    K: Float[Tensor, "3 3"]
    baseline_m: float
    T_world_cam: Float[Tensor, "T 4 4"] | None = None
    right_rgb: Float[Tensor, "T H W 3"] | None = None
    subpixel_lookup: bool = False  # bilinear depth and colour lookups at fractional pixels (`render.subpixel_lookup`)
    by_src: Int[Tensor, "T D"] = field(init=False)
    degree: Int[Tensor, " T"] = field(init=False)
    T_cam_world: Float[Tensor, "T 4 4"] | None = field(init=False)
    pose_correction: PoseCorrection | None = field(default=None, init=False)  # set by `enable_pose_refine`

    def __post_init__(self) -> None:
        T = self.num_frames
        dev = self.rgb.device
        src = self.pairs[:, 0]
        degree = torch.bincount(src, minlength=T)[:T]
        D = max(int(degree.max()) if degree.numel() else 0, 1)
        by_src = torch.zeros(T, D, dtype=torch.long, device=dev)
        if self.pairs.shape[0]:
            order = torch.argsort(src, stable=True)
            start = torch.cumsum(degree, 0) - degree
            rank = torch.arange(order.numel(), device=dev) - start[src[order]]
            by_src[src[order], rank] = order
        self.by_src, self.degree = by_src, degree.to(dev)
        self.T_cam_world = torch.linalg.inv(self.T_world_cam) if self.T_world_cam is not None else None
        self._fx_b = float(self.K[0, 0]) * self.baseline_m  # a Python float: no device sync per use

    @property
    def num_frames(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.rgb.shape[1]), int(self.rgb.shape[2])

    @property
    def fx_b(self) -> float:
        return self._fx_b

    def enable_pose_refine(self) -> PoseCorrection | None:
        """Attach learnable per-frame pose corrections (None without poses: nothing to refine)."""
        if self.T_world_cam is None:
            return None
        self.pose_correction = PoseCorrection(self.num_frames).to(self.T_world_cam.device)
        return self.pose_correction

    def all_poses(self) -> Float[Tensor, "T 4 4"] | None:
        """T_world_cam of every frame, corrected (T_world_cam @ dT) when pose refinement is on."""
        if self.T_world_cam is None or self.pose_correction is None:
            return self.T_world_cam
        return self.T_world_cam @ self.pose_correction.matrices()

    def all_inv_poses(self) -> Float[Tensor, "T 4 4"] | None:
        if self.T_cam_world is None or self.pose_correction is None:
            return self.T_cam_world
        return invert_rigid(self.pose_correction.matrices()) @ self.T_cam_world

    def poses(self, frame: Int[Tensor, " R"]) -> Tensor | None:
        T = self.all_poses()  # per frame, then indexed: the correction costs O(T), not O(R)
        return None if T is None else T[frame]

    def inv_poses(self, frame: Int[Tensor, " R"]) -> Tensor | None:
        T = self.all_inv_poses()
        return None if T is None else T[frame]

    def depth_at(self, frame: Int[Tensor, " R"], uv_px: Float[Tensor, "R 2"]) -> Float[Tensor, " R"]:
        """Stereo depth at sub-pixel `uv_px`: bilinear where all four neighbours are valid, else the
        nearest pixel's (NaN outside the image or where invalid). Matched pixels are fractional, and a
        rounded lookup misplaces depth by up to half a pixel of surface slope."""
        H, W = self.hw
        u = uv_px[:, 0].round().long()
        v = uv_px[:, 1].round().long()
        inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        d = self.depth_m[frame, v.clamp(0, H - 1), u.clamp(0, W - 1)]
        if self.subpixel_lookup:
            d_bil = bilinear_at(self.depth_m, frame, uv_px)
            d = torch.where(torch.isfinite(d_bil), d_bil, d)
        return torch.where(inside, d, torch.full_like(d, float("nan")))


@dataclass(frozen=True)
class CorrespondenceBatch:
    """P source pixels of frames i, each paired with its match in a frame j (`correspondence_batch`)."""

    frame_j: Int[Tensor, " P"]  # target frame of each pair
    uv_i_px: Float[Tensor, "P 2"]  # source pixel (integer-valued) in frame i
    uv_j_px: Float[Tensor, "P 2"]  # matched (fractional) pixel in frame j; 0 where the flow is not finite
    conf: Float[Tensor, " P"]  # correspondence confidence in [0, 1]; 0 = unusable


def correspondence_batch(data: FitData, frame: Int[Tensor, " P"], u: Int[Tensor, " P"], v: Int[Tensor, " P"],
                         generator: torch.Generator | None) -> CorrespondenceBatch:
    """Pair each source pixel with a random correspondence pair leaving its frame."""
    H, W = data.hw
    P = frame.shape[0]
    deg = data.degree[frame]
    k = (torch.rand(P, device=frame.device, generator=generator) * deg.clamp_min(1)).long()
    q = data.by_src[frame, k.clamp(max=data.by_src.shape[1] - 1)]  # (P,)
    fl = data.flow_px[q, v, u].float()  # (P, 2)
    conf = data.confidence[q, v, u].float() * (deg > 0).float()
    j = data.pairs[q, 1]
    uv_i = torch.stack([u, v], dim=-1).float()
    uv_j = uv_i + fl
    uj, vj = uv_j[:, 0].round().long(), uv_j[:, 1].round().long()
    inside = (uj >= 0) & (uj < W) & (vj >= 0) & (vj < H)
    ok = inside & data.supervise[frame, v, u] & data.supervise[j, vj.clamp(0, H - 1), uj.clamp(0, W - 1)]
    conf = torch.where(ok & torch.isfinite(fl).all(-1), conf, torch.zeros_like(conf))
    uv_j = torch.nan_to_num(uv_j)
    return CorrespondenceBatch(frame_j=j, uv_i_px=uv_i, uv_j_px=uv_j, conf=conf)


def bilinear_at(images: Tensor, frame: Int[Tensor, " R"], uv_px: Float[Tensor, "R 2"]) -> Tensor:
    """Bilinear lookup of (T, H, W) or (T, H, W, C) `images` at (frame, uv_px), clamped to the image;
    NaN propagates, so a value next to an invalid pixel comes out NaN."""
    H, W = images.shape[1:3]
    u = uv_px[:, 0].clamp(0, W - 1)
    v = uv_px[:, 1].clamp(0, H - 1)
    u0 = u.floor().long().clamp(max=max(W - 2, 0))
    v0 = v.floor().long().clamp(max=max(H - 2, 0))
    du, dv = (u - u0).clamp(0, 1), (v - v0).clamp(0, 1)
    if images.dim() == 4:
        du, dv = du[:, None], dv[:, None]
    u1, v1 = (u0 + 1).clamp(max=W - 1), (v0 + 1).clamp(max=H - 1)
    return ((1 - du) * (1 - dv) * images[frame, v0, u0] + du * (1 - dv) * images[frame, v0, u1]
            + (1 - du) * dv * images[frame, v1, u0] + du * dv * images[frame, v1, u1])


def colour_at(rgb: Float[Tensor, "T H W 3"], frame: Int[Tensor, " R"], uv_px: Float[Tensor, "R 2"],
              subpixel: bool = False) -> Float[Tensor, "R 3"]:
    """Colour at `uv_px`: bilinear with `subpixel`, else the nearest pixel's."""
    if subpixel:
        return bilinear_at(rgb, frame, uv_px)
    H, W = rgb.shape[1:3]
    u = uv_px[:, 0].round().long().clamp(0, W - 1)
    v = uv_px[:, 1].round().long().clamp(0, H - 1)
    return rgb[frame, v, u]


@dataclass(frozen=True)
class MappedRender:
    """Rays of frame i rendered and mapped into frame j, with their stereo supervision (`render_mapped`)."""

    render: RenderOutput  # holds the mapped points (`x_target_m`, `x_target_norm`)
    uv_pred_px: Float[Tensor, "R 2"]  # mapped point projected into the target frame's left image
    z_target_m: Float[Tensor, " R"]  # its depth in the target camera, metres
    stereo_depth_m: Float[Tensor, " R"]  # stereo depth at the ray's pixel, NaN where invalid
    stereo_valid: Bool[Tensor, " R"]  # finite, positive stereo depth
    ray_origins_m: Float[Tensor, "R 3"]  # world metres
    ray_dirs: Float[Tensor, "R 3"]  # world, unit depth in the camera


def render_mapped(model: InvNeRF, data: FitData, cfg: FitConfig, frame: Int[Tensor, " R"], uv_px: Float[Tensor, "R 2"],
                  target: Int[Tensor, " R"], jitter: bool, generator: torch.Generator | None,
                  with_colour: bool = True) -> MappedRender:
    """Render left-camera rays of `frame` at `uv_px` and project their mapped points into `target`."""
    origins, dirs = pixel_rays(uv_px, data.K, data.poses(frame))
    depth_st = data.depth_at(frame, uv_px)
    z, valid = sample_depths(origins, dirs, depth_st, model.workspace, cfg.render, data.fx_b, jitter, generator)
    out = model.render(origins, dirs, z, frame, target, with_colour=with_colour, mapped_point=cfg.render.mapped_point,
                       detach_weights_for_target=cfg.loss.corr_detach_weights)
    x_target_m, _ = out.mapped()
    uv_pred, z_pred = project_px(x_target_m, data.K, data.inv_poses(target))
    return MappedRender(render=out, uv_pred_px=uv_pred, z_target_m=z_pred, stereo_depth_m=depth_st, stereo_valid=valid,
                        ray_origins_m=origins, ray_dirs=dirs)


def parameter_groups(model: InvNeRF, cfg: FitConfig, pose_correction: PoseCorrection | None = None) -> list[dict]:
    """Planes at `lr_planes`, MLPs and appearance codes at `lr_mlp` (K-Planes' get_params), pose
    corrections (when refined) at `pose_lr`."""
    planes, other = [], []
    for name, p in model.named_parameters():
        (planes if "grids" in name else other).append(p)
    groups = [{"params": planes, "lr": cfg.optim.lr_planes, "base_lr": cfg.optim.lr_planes},
              {"params": other, "lr": cfg.optim.lr_mlp, "base_lr": cfg.optim.lr_mlp}]
    if pose_correction is not None:
        groups.append({"params": list(pose_correction.parameters()), "lr": cfg.pose_lr, "base_lr": cfg.pose_lr})
    return groups


def make_optimiser(model: InvNeRF, cfg: FitConfig, pose_correction: PoseCorrection | None = None
                   ) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg, pose_correction)
    if cfg.optim.fused_adam:
        try:
            return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=True)
        except (RuntimeError, TypeError) as err:  # older torch without fused CPU Adam
            log.debug("fused Adam unavailable: %s", err)
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


@dataclass
class FitStats:
    steps: int = 0
    stop_reason: str = ""
    losses: dict[str, float] = field(default_factory=dict)
    converged_share: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def _add(timings: dict[str, float], key: str, t0: float) -> float:
    now = time.perf_counter()
    timings[key] = timings.get(key, 0.0) + now - t0
    return now


class Fitter:
    """Runs the optimisation of one `InvNeRF` on one `FitData` under `FitConfig`'s budgets."""

    def __init__(self, model: InvNeRF, data: FitData, cfg: FitConfig, device: torch.device) -> None:
        self.model, self.data, self.cfg, self.device = model, data, cfg, device
        self.gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
        H, W = data.hw
        self.sampler = PixelSampler(cfg.sampler, data.num_frames, H, W, device=device, generator=self.gen)
        self.opt = make_optimiser(model, cfg, data.pose_correction)
        self.stats = FitStats()

    # ------------------------------------------------------------------------------------------
    def progress_share(self, step: int, elapsed_s: float) -> float:
        parts = []
        if self.cfg.max_steps > 0:
            parts.append(step / self.cfg.max_steps)
        if self.cfg.time_budget_s > 0:
            parts.append(elapsed_s / self.cfg.time_budget_s)
        return min(1.0, max(parts) if parts else 0.0)

    def _set_lr(self, step: int, share: float) -> None:
        o = self.cfg.optim
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
        decay = o.lr_final_scale ** share
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * warm * decay

    def _stereo_scale(self, share: float) -> float:
        lc = self.cfg.loss
        if lc.stereo_decay_share <= 0:
            return lc.stereo_final_scale
        a = min(1.0, share / lc.stereo_decay_share)
        return 1.0 + (lc.stereo_final_scale - 1.0) * a

    # ------------------------------------------------------------------------------------------
    def step_losses(self, step: int, share: float, timings: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one step (forward only); also updates the error maps."""
        cfg, data, lc = self.cfg, self.data, self.cfg.loss
        t0 = time.perf_counter()
        n = self.sampler.budget(recompute=step % self.cfg.log_every == 0)
        f_i, u, v = self.sampler.draw(n)
        cb = correspondence_batch(data, f_i, u, v, self.gen)
        if lc.bidirectional:
            frame = torch.cat([f_i, cb.frame_j])
            uv = torch.cat([cb.uv_i_px, cb.uv_j_px])
            target = torch.cat([cb.frame_j, f_i])
            uv_tgt = torch.cat([cb.uv_j_px, cb.uv_i_px])
            conf = torch.cat([cb.conf, cb.conf])
        else:
            frame, uv, target, uv_tgt, conf = f_i, cb.uv_i_px, cb.frame_j, cb.uv_j_px, cb.conf
        t0 = _add(timings, "sample_s", t0)
        out = render_mapped(self.model, data, cfg, frame, uv, target, jitter=True, generator=self.gen)
        rend = out.render
        terms: dict[str, Tensor] = {}
        terms["corr"] = losses.reprojection_loss_px(out.uv_pred_px, uv_tgt, conf, lc.charbonnier_eps_px)
        sup = (data.supervise[frame, uv[:, 1].round().long().clamp(0, data.hw[0] - 1),
                              uv[:, 0].round().long().clamp(0, data.hw[1] - 1)]).float()
        if lc.photo_weight > 0:
            terms["photo"] = losses.photometric_loss(rend.colour(), colour_at(data.rgb, frame, uv, data.subpixel_lookup),
                                                     sup)
        sv = out.stereo_valid.float() * sup
        sscale = self._stereo_scale(share)
        # scene flow: the matched pixel's stereo depth is the mapped point's depth in the target frame
        if lc.anchor_weight > 0 or lc.corr_depth_weight > 0:
            d_tgt = data.depth_at(target, uv_tgt)
            if lc.anchor_weight > 0:
                terms["anchor"] = self._anchor_loss(out, frame, target, uv_tgt, d_tgt, conf)
            if lc.corr_depth_weight > 0:
                ok_t = (conf > 0) & torch.isfinite(d_tgt)
                terms["corr_depth"] = losses.stereo_depth_loss_px(out.z_target_m, d_tgt, conf * ok_t.float(), data.fx_b)
        if lc.stereo_weight > 0:
            terms["stereo"] = losses.stereo_depth_loss_px(rend.depth_m, out.stereo_depth_m, sv, data.fx_b)
        if lc.line_of_sight_weight > 0:
            terms["los"] = losses.line_of_sight_loss_px(rend.weights, rend.z_m, out.stereo_depth_m, sv, data.fx_b)
        if lc.range_weight > 0:
            terms["range"] = losses.range_loss(rend.u_canon) + losses.range_loss(rend.mapped()[1])
        if lc.distortion_weight > 0:
            terms["dist"] = losses.distortion_loss(rend.weights, rend.z_m)
        if cfg.render.right_ray_share > 0 and data.right_rgb is not None and lc.photo_weight > 0:
            terms["photo_right"] = self._right_photometric(data.right_rgb, f_i, u, v)
        if step % lc.reg_every == 0 and (lc.tv_weight > 0 or lc.time_smooth_weight > 0):
            tv, ts = self.model.plane_regularisers()
            terms["tv"], terms["time_smooth"] = tv, ts
        if data.pose_correction is not None and cfg.pose_reg_weight > 0:
            terms["pose"] = data.pose_correction.penalty()
        weights = {"corr": lc.corr_weight, "anchor": lc.anchor_weight, "corr_depth": lc.corr_depth_weight * sscale,
                   "photo": lc.photo_weight, "photo_right": lc.photo_weight,
                   "stereo": lc.stereo_weight * sscale, "los": lc.line_of_sight_weight * sscale,
                   "range": lc.range_weight, "dist": lc.distortion_weight, "tv": lc.tv_weight,
                   "time_smooth": lc.time_smooth_weight, "pose": cfg.pose_reg_weight}
        weighted = [weights[k] * v for k, v in terms.items()]  # terms always holds "corr"
        total = sum(weighted[1:], start=weighted[0])
        with torch.no_grad():
            err = (out.uv_pred_px - uv_tgt).norm(dim=-1)
            self.sampler.update(frame, uv[:, 0], uv[:, 1], err, conf > 0)
        _add(timings, "forward_s", t0)
        return total, {k: v.detach() for k, v in terms.items()}  # tensors: read only when logging

    def _anchor_loss(self, out: MappedRender, frame: Int[Tensor, " R"], target: Int[Tensor, " R"],
                     uv_tgt: Float[Tensor, "R 2"], d_tgt: Float[Tensor, " R"], conf: Float[Tensor, " R"]) -> Float[Tensor, ""]:
        """Map the stereo surface point itself (one point per ray) into the target frame.

        The rendered term X̂_j needs a sharp density to be precise; this one trains F_t from the
        first step (scene flow: 2D reprojection plus the target's stereo depth, both in px).
        """
        data = self.data
        valid = out.stereo_valid
        d = torch.where(valid, out.stereo_depth_m, torch.ones_like(out.stereo_depth_m))
        x = out.ray_origins_m + d[:, None] * out.ray_dirs  # the rendered rays' stereo points
        u = self.model.to_canonical(x, frame)
        xj = self.model.from_canonical(u, target)
        uv_pred, z_pred = project_px(xj, data.K, data.inv_poses(target))
        w = conf * valid.float()
        loss = losses.reprojection_loss_px(uv_pred, uv_tgt, w, self.cfg.loss.charbonnier_eps_px)
        ok = torch.isfinite(d_tgt).float() * w
        return loss + losses.stereo_depth_loss_px(z_pred, d_tgt, ok, data.fx_b)

    def _right_photometric(self, right_rgb: Float[Tensor, "T H W 3"], f_i: Int[Tensor, " P"], u: Int[Tensor, " P"],
                           v: Int[Tensor, " P"]) -> Float[Tensor, ""]:
        """Photometric term on right-camera rays (stereo supervision of the colour field)."""
        data, cfg = self.data, self.cfg
        n = max(1, int(round(cfg.render.right_ray_share * f_i.shape[0])))
        f, uv = f_i[:n], torch.stack([u[:n], v[:n]], -1).float()
        offset = torch.tensor([data.baseline_m, 0.0, 0.0], device=uv.device)
        origins, dirs = pixel_rays(uv, data.K, data.poses(f), cam_offset_m=offset)
        nan = torch.full((n,), float("nan"), device=uv.device)
        z, _ = sample_depths(origins, dirs, nan, self.model.workspace, cfg.render, data.fx_b, True, self.gen)
        out = self.model.render(origins, dirs, z, f)
        sup = data.supervise[f, v[:n], u[:n]].float()  # left mask as a proxy at the same pixel
        return losses.photometric_loss(out.colour(), colour_at(right_rgb, f, uv), sup)

    @torch.no_grad()
    def dense_refresh(self) -> None:
        """Reprojection error of one pixel per cell of every frame (one pair each), in chunks."""
        f, u, v = self.sampler.dense_pixels()
        errs, valids = [], []
        chunk = self.cfg.sampler.refresh_chunk
        for s in range(0, f.shape[0], chunk):
            fs, us, vs = f[s:s + chunk], u[s:s + chunk], v[s:s + chunk]
            cb = correspondence_batch(self.data, fs, us, vs, self.gen)
            out = render_mapped(self.model, self.data, self.cfg, fs, cb.uv_i_px, cb.frame_j, jitter=False,
                                generator=self.gen, with_colour=False)
            errs.append((out.uv_pred_px - cb.uv_j_px).norm(dim=-1))
            valids.append(cb.conf > 0)
        self.sampler.refresh(f, u.float(), v.float(), torch.cat(errs), torch.cat(valids))

    # ------------------------------------------------------------------------------------------
    def run(self, progress: Callable[[dict], None] | None = None) -> FitStats:
        cfg = self.cfg
        timings = self.stats.timings_s
        t_start = time.perf_counter()
        self.model.train()
        step = 0
        stop = ""
        last_terms: dict[str, Tensor] = {}
        while True:
            elapsed = time.perf_counter() - t_start
            if cfg.max_steps > 0 and step >= cfg.max_steps:
                stop = "max_steps"
                break
            if cfg.time_budget_s > 0 and elapsed >= cfg.time_budget_s:
                stop = "time_budget"
                break
            if cfg.max_steps == 0 and cfg.time_budget_s == 0:
                stop = "no_budget"
                break
            share = self.progress_share(step, elapsed)
            self._set_lr(step, share)
            total, terms = self.step_losses(step, share, timings)
            t0 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            self.opt.step()
            _add(timings, "backward_s", t0)
            step += 1
            last_terms = terms
            stalled = False
            if step % cfg.log_every == 0:  # host reads (device syncs) only here
                loss_val = float(total.detach())
                if not math.isfinite(loss_val):
                    stop = "non_finite_loss"
                    log.warning("fit: loss became %s at step %d; stopping", loss_val, step)
                    break
                corr = terms.get("anchor", terms.get("corr", total))
                stalled = self.sampler.observe_loss(step, float(corr))
            if cfg.sampler.refresh_every > 0 and step % cfg.sampler.refresh_every == 0:
                t0 = time.perf_counter()
                self.dense_refresh()
                _add(timings, "refresh_s", t0)
                if self.sampler.is_converged():
                    stop = "converged"
            if step % cfg.log_every == 0 or stop:
                rec = {"step": step, "max_steps": cfg.max_steps, "loss": float(total.detach()),
                       "converged": self.sampler.converged_share(), "elapsed_s": time.perf_counter() - t_start,
                       **{f"loss_{k}": float(val) for k, val in terms.items()}}
                self.stats.history.append(rec)
                if progress is not None:
                    progress(rec)
            if stop:
                break
            if stalled:
                stop = "stalled"
                break
        timings["fit_loop_s"] = time.perf_counter() - t_start
        self.model.eval()
        self.stats.steps = step
        self.stats.stop_reason = stop
        self.stats.losses = {k: float(v) for k, v in last_terms.items()}
        self.stats.converged_share = self.sampler.converged_share()
        return self.stats


def to_device_data(rgb_u8: np.ndarray, depth_m: np.ndarray, supervise: np.ndarray, pairs: np.ndarray,
                   flow_px: np.ndarray, confidence: np.ndarray, K: np.ndarray, baseline_m: float,
                   T_world_cam: np.ndarray | None, device: torch.device, right_rgb_u8: np.ndarray | None = None,
                   subpixel_lookup: bool = False) -> FitData:
    """numpy front-end outputs → `FitData` on `device` (CPU tensors share the numpy memory)."""
    def t(a, dtype=None):
        x = torch.from_numpy(np.ascontiguousarray(a))
        return x.to(device=device, dtype=dtype) if (dtype is not None or device.type != "cpu") else x

    rgb = t(rgb_u8).to(torch.float32) / 255.0
    right = t(right_rgb_u8).to(torch.float32) / 255.0 if right_rgb_u8 is not None else None
    return FitData(rgb=rgb, depth_m=t(depth_m.astype(np.float32)), supervise=t(supervise.astype(bool)),
                   pairs=t(pairs.astype(np.int64)), flow_px=t(flow_px), confidence=t(confidence),
                   K=t(np.asarray(K, np.float32)), baseline_m=float(baseline_m),
                   T_world_cam=None if T_world_cam is None else t(np.asarray(T_world_cam, np.float32)),
                   right_rgb=right, subpixel_lookup=subpixel_lookup)
