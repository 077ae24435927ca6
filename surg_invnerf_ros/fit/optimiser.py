"""The fit loop: parameter groups, loss schedules, budgets and progress (DESIGN §3.2, §3.4).

One step draws pixels from the sampler, pairs each with a correspondence (frame i → frame j),
renders the ray at the pixel in frame i mapped into frame j (with `loss.directions` both, also the ray
at the matched pixel in frame j mapped back into frame i; the store's pairs are usually held both ways,
so one direction is the default where they are), plus the photometric,
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
from ..frontend.store import CorrespondenceStore, DepthMaps
from ..model.pose_correction import PoseCorrection, invert_rigid
from ..model.rays import pixel_rays, project_px, sample_depths
from ..model.render import InvNeRF, RenderOutput
from ..shapes import Bool, Float, Int
from . import losses
from .sampler import PixelSampler

log = logging.getLogger(__name__)




@dataclass
class FitData:
    """Everything a fit reads: the correspondence store as device tensors (S samples, R records), the
    camera, and the per-frame stereo depth maps for inference (host memory or a memory-mapped file).

    No whole images are held: colour, depth and supervision are what the store kept at each sample
    and at each match (`frontend.store`).
    """

    num_frames: int
    image_hw: tuple[int, int]
    cell_px: int  # the store's (and sampler's) cell side
    per_cell: int  # samples per cell
    uv_px: Int[Tensor, "S 2"]  # int16 sample pixels
    rgb: Tensor  # (S, 3) uint8 left colour
    depth_m: Float[Tensor, " S"]  # stereo depth, NaN invalid
    supervise: Bool[Tensor, " S"]  # False where masked (specular)
    rec_start: Int[Tensor, " S1"]  # records of sample s: rec_start[s]:rec_start[s + 1]
    rec_frame: Int[Tensor, " R"]
    rec_uv_px: Float[Tensor, "R 2"]
    rec_conf: Tensor  # (R,) float16 or float32
    rec_depth_m: Float[Tensor, " R"]
    rec_rgb: Tensor  # (R, 3) uint8
    rec_supervise: Bool[Tensor, " R"]
    K: Float[Tensor, "3 3"]
    baseline_m: float
    depth_maps: DepthMaps
    T_world_cam: Float[Tensor, "T 4 4"] | None = None
    right_rgb: Tensor | None = None  # (S, 3) uint8 right colour at the sample pixels
    subpixel_lookup: bool = False  # bilinear depth lookups at fractional pixels (`render.subpixel_lookup`)
    num_pairs: int = 0
    frame_pairs: Int[Tensor, " T"] | None = None  # frame pairs leaving each frame (None: each sample's own records)
    pairs_both_ways: bool = True  # every frame pair (i, j) with records has records (j, i) too
    T_cam_world: Float[Tensor, "T 4 4"] | None = field(init=False)
    pose_correction: PoseCorrection | None = field(default=None, init=False)  # set by `enable_pose_refine`

    def __post_init__(self) -> None:
        self.T_cam_world = torch.linalg.inv(self.T_world_cam) if self.T_world_cam is not None else None
        self._fx_b = float(self.K[0, 0]) * self.baseline_m  # a Python float: no device sync per use
        self.rec_count = self.rec_start[1:] - self.rec_start[:-1]

    @property
    def device(self) -> torch.device:
        return self.uv_px.device

    @property
    def hw(self) -> tuple[int, int]:
        return self.image_hw

    @property
    def samples_per_frame(self) -> int:
        return int(self.uv_px.shape[0]) // max(self.num_frames, 1)

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
        """Stereo depth at any pixel of any frame, from the depth maps (inference; a host read): the nearest
        pixel's, or with `subpixel_lookup` bilinear where all four neighbours are valid; NaN outside the
        image or where invalid."""
        d = self.depth_maps.at(frame.cpu().numpy(), uv_px.detach().cpu().double().numpy(), self.subpixel_lookup)
        return torch.from_numpy(d).to(uv_px.device)


@dataclass(frozen=True)
class CorrespondenceBatch:
    """P stored samples (frames i), each paired with one of its stored matches in a frame j (`correspondence_batch`)."""

    frame_i: Int[Tensor, " P"]
    uv_i_px: Float[Tensor, "P 2"]  # sample pixel (integer valued)
    depth_i_m: Float[Tensor, " P"]  # stereo depth at the sample, NaN invalid
    rgb_i: Float[Tensor, "P 3"]
    sup_i: Bool[Tensor, " P"]
    frame_j: Int[Tensor, " P"]  # target frame (the sample's own frame where it has no match)
    uv_j_px: Float[Tensor, "P 2"]  # matched (fractional) pixel in frame j
    depth_j_m: Float[Tensor, " P"]
    rgb_j: Float[Tensor, "P 3"]
    sup_j: Bool[Tensor, " P"]
    conf: Float[Tensor, " P"]  # correspondence confidence in [0, 1]; 0 = no match


def correspondence_batch(data: FitData, sample: Int[Tensor, " P"], generator: torch.Generator | None
                         ) -> CorrespondenceBatch:
    """Pair each stored sample with one of the frame pairs leaving its frame, drawn uniformly: where the
    sample has no checked correspondence in that pair (occluded, failed checks) its confidence is 0, so a
    pixel weighs in proportion to how many of its frame's pairs it has (as with whole-image pairs). The
    sample's records stand for the pairs it has, in any order. Without `frame_pairs`, one of the sample's
    own records, uniformly."""
    deg = data.rec_count[sample]
    frame_i = sample // data.samples_per_frame
    slots = deg if data.frame_pairs is None else torch.maximum(data.frame_pairs[frame_i], deg)
    k = (torch.rand(sample.shape[0], device=sample.device, generator=generator) * slots.clamp_min(1)).long()
    has = k < deg
    r = (data.rec_start[sample] + k.clamp(max=(deg - 1).clamp_min(0))).clamp(max=max(int(data.rec_frame.shape[0]) - 1, 0))
    uv_i = data.uv_px[sample].float()
    rgb_i = data.rgb[sample].float() / 255.0
    if data.rec_frame.shape[0] == 0:  # no correspondence at all: the photometric and stereo terms still train
        zeros = torch.zeros_like(frame_i, dtype=torch.float32)
        return CorrespondenceBatch(frame_i=frame_i, uv_i_px=uv_i, depth_i_m=data.depth_m[sample], rgb_i=rgb_i,
                                   sup_i=data.supervise[sample], frame_j=frame_i, uv_j_px=uv_i,
                                   depth_j_m=data.depth_m[sample], rgb_j=rgb_i, sup_j=data.supervise[sample],
                                   conf=zeros)
    conf = torch.where(has, data.rec_conf[r].float(), torch.zeros((), device=sample.device))
    return CorrespondenceBatch(
        frame_i=frame_i, uv_i_px=uv_i, depth_i_m=data.depth_m[sample], rgb_i=rgb_i,
        sup_i=data.supervise[sample],
        frame_j=torch.where(has, data.rec_frame[r].long(), frame_i),
        uv_j_px=torch.where(has[:, None], data.rec_uv_px[r], uv_i),
        depth_j_m=torch.where(has, data.rec_depth_m[r], data.depth_m[sample]),
        rgb_j=torch.where(has[:, None], data.rec_rgb[r].float() / 255.0, rgb_i),
        sup_j=torch.where(has, data.rec_supervise[r], data.supervise[sample]),
        conf=conf)


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
                  target: Int[Tensor, " R"], depth_st: Float[Tensor, " R"], jitter: bool,
                  generator: torch.Generator | None, with_colour: bool = True, with_anchor: bool = False
                  ) -> MappedRender:
    """Render left-camera rays of `frame` at `uv_px` (stereo depth `depth_st` there, NaN unknown) and project
    their mapped points into `target`; with `with_anchor`, also map each ray's stereo surface point (depth 1 m
    where it has none) into `target` (`render.anchor_target_m`)."""
    origins, dirs = pixel_rays(uv_px, data.K, data.poses(frame))
    z, valid = sample_depths(origins, dirs, depth_st, model.workspace, cfg.render, data.fx_b, jitter, generator)
    anchor_z = torch.where(valid, depth_st, torch.ones_like(depth_st)) if with_anchor else None
    out = model.render(origins, dirs, z, frame, target, with_colour=with_colour, mapped_point=cfg.render.mapped_point,
                       detach_weights_for_target=cfg.loss.corr_detach_weights, anchor_z_m=anchor_z)
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


def contiguous_buffer(params: list[Tensor]) -> Tensor:
    """One leaf tensor holding the values of `params`, which become views of it (their gradients views of its
    gradient; autograd accumulates into them in place), so an optimiser over it updates every parameter in
    one call per step. The parameters must share device and dtype."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        p.grad = grad[offset:offset + n].view_as(p)
        offset += n
    flat.requires_grad_(True)
    flat.grad = grad
    return flat


def make_optimiser(model: InvNeRF, cfg: FitConfig, pose_correction: PoseCorrection | None = None
                   ) -> torch.optim.Optimizer:
    """Adam over `parameter_groups`; with `optim.contiguous_params`, over one buffer per group
    (`contiguous_buffer`): clear its gradients with `zero_grad(set_to_none=False)`, which keeps the views."""
    groups = parameter_groups(model, cfg, pose_correction)
    if cfg.optim.contiguous_params:
        for g in groups:
            kinds = {(p.device, p.dtype) for p in g["params"]}
            if len(kinds) == 1:
                g["params"] = [contiguous_buffer(g["params"])]
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


def fit_time_budget_s(cfg: FitConfig, num_frames: int) -> float:
    """The loop's wall-clock budget: `time_budget_per_frame_s` × frames, at most `time_budget_s`;
    `time_budget_s` alone when the per-frame budget is 0; 0 (no limit) when `time_budget_s` is 0."""
    if cfg.time_budget_per_frame_s <= 0 or cfg.time_budget_s <= 0:
        return cfg.time_budget_s
    return min(cfg.time_budget_per_frame_s * num_frames, cfg.time_budget_s)


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
        self.sampler = PixelSampler(cfg.sampler, data.num_frames, H, W, device=device, generator=self.gen,
                                    cell_px=data.cell_px, per_cell=data.per_cell)
        self.opt = make_optimiser(model, cfg, data.pose_correction)
        self._weight_vectors: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}
        self.stats = FitStats()
        self.budget_s = fit_time_budget_s(cfg, data.num_frames)

    def _term_weights(self, names: tuple[str, ...], stereo_scale: float) -> Float[Tensor, " K"]:
        """Weights of the loss terms `names`, in order, on the device: fixed weights plus `stereo_scale` times the
        scheduled stereo weights (one operation a step; the two vectors are made once per set of terms)."""
        if names not in self._weight_vectors:
            lc, cfg = self.cfg.loss, self.cfg
            fixed = {"corr": lc.corr_weight, "anchor": lc.anchor_weight, "photo": lc.photo_weight,
                     "photo_right": lc.photo_weight, "range": lc.range_weight, "dist": lc.distortion_weight,
                     "tv": lc.tv_weight, "time_smooth": lc.time_smooth_weight, "pose": cfg.pose_reg_weight}
            scheduled = {"corr_depth": lc.corr_depth_weight, "stereo": lc.stereo_weight, "los": lc.line_of_sight_weight}
            unknown = [k for k in names if k not in fixed and k not in scheduled]
            if unknown:
                raise KeyError(f"fit: no weight for the loss terms {unknown}")
            self._weight_vectors[names] = (
                torch.tensor([fixed.get(k, 0.0) for k in names], device=self.device),
                torch.tensor([scheduled.get(k, 0.0) for k in names], device=self.device))
        fixed_w, scheduled_w = self._weight_vectors[names]
        return torch.add(fixed_w, scheduled_w, alpha=stereo_scale)

    def zero_grad(self) -> None:
        """Clear the gradients before a backward pass (contiguous buffers keep theirs, zeroed: the parameters'
        gradients are views of it)."""
        self.opt.zero_grad(set_to_none=not self.cfg.optim.contiguous_params)

    # ------------------------------------------------------------------------------------------
    def progress_share(self, step: int, elapsed_s: float) -> float:
        parts = []
        if self.cfg.max_steps > 0:
            parts.append(step / self.cfg.max_steps)
        if self.budget_s > 0:
            parts.append(elapsed_s / self.budget_s)
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
        sample = self.sampler.draw(n)
        cb = correspondence_batch(data, sample, self.gen)
        f_i = cb.frame_i
        if lc.directions == "both" or (lc.directions == "auto" and not data.pairs_both_ways):
            frame = torch.cat([f_i, cb.frame_j])
            uv = torch.cat([cb.uv_i_px, cb.uv_j_px])
            target = torch.cat([cb.frame_j, f_i])
            uv_tgt = torch.cat([cb.uv_j_px, cb.uv_i_px])
            conf = torch.cat([cb.conf, cb.conf])
            depth_src, depth_tgt = torch.cat([cb.depth_i_m, cb.depth_j_m]), torch.cat([cb.depth_j_m, cb.depth_i_m])
            rgb_src, sup_src = torch.cat([cb.rgb_i, cb.rgb_j]), torch.cat([cb.sup_i, cb.sup_j])
        else:
            frame, uv, target, uv_tgt, conf = f_i, cb.uv_i_px, cb.frame_j, cb.uv_j_px, cb.conf
            depth_src, depth_tgt, rgb_src, sup_src = cb.depth_i_m, cb.depth_j_m, cb.rgb_i, cb.sup_i
        t0 = _add(timings, "sample_s", t0)
        out = render_mapped(self.model, data, cfg, frame, uv, target, depth_src, jitter=True, generator=self.gen,
                            with_anchor=lc.anchor_weight > 0)
        rend = out.render
        terms: dict[str, Tensor] = {}
        terms["corr"] = losses.reprojection_loss_px(out.uv_pred_px, uv_tgt, conf, lc.charbonnier_eps_px)
        sup = sup_src.float()
        if lc.photo_weight > 0:
            terms["photo"] = losses.photometric_loss(rend.colour(), rgb_src, sup)
        sv = out.stereo_valid.float() * sup
        sscale = self._stereo_scale(share)
        # scene flow: the matched pixel's stereo depth is the mapped point's depth in the target frame
        if lc.anchor_weight > 0 or lc.corr_depth_weight > 0:
            d_tgt = depth_tgt
            if lc.anchor_weight > 0:
                terms["anchor"] = self._anchor_loss(out, target, uv_tgt, d_tgt, conf)
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
            terms["photo_right"] = self._right_photometric(data.right_rgb, sample, cb)
        if step % lc.reg_every == 0 and (lc.tv_weight > 0 or lc.time_smooth_weight > 0):
            tv, ts = self.model.plane_regularisers()
            terms["tv"], terms["time_smooth"] = tv, ts
        if data.pose_correction is not None and cfg.pose_reg_weight > 0:
            terms["pose"] = data.pose_correction.penalty()
        names = tuple(terms)  # always holds "corr"
        total = torch.dot(torch.stack([terms[k] for k in names]), self._term_weights(names, sscale))
        with torch.no_grad():
            err = (out.uv_pred_px - uv_tgt).norm(dim=-1)
            self.sampler.update(frame, uv[:, 0], uv[:, 1], err, conf > 0)
        _add(timings, "forward_s", t0)
        return total, {k: v.detach() for k, v in terms.items()}  # tensors: read only when logging

    def _anchor_loss(self, out: MappedRender, target: Int[Tensor, " R"], uv_tgt: Float[Tensor, "R 2"],
                     d_tgt: Float[Tensor, " R"], conf: Float[Tensor, " R"]) -> Float[Tensor, ""]:
        """The stereo surface point itself (one point per ray), mapped into the target frame with the samples
        (`render_mapped(with_anchor=True)`).

        The rendered term X̂_j needs a sharp density to be precise; this one trains F_t from the
        first step (scene flow: 2D reprojection plus the target's stereo depth, both in px).
        """
        data = self.data
        xj = out.render.anchor_target_m
        if xj is None:
            raise ValueError("anchor loss: the render has no anchor points (render_mapped(with_anchor=True))")
        uv_pred, z_pred = project_px(xj, data.K, data.inv_poses(target))
        w = conf * out.stereo_valid.float()
        loss = losses.reprojection_loss_px(uv_pred, uv_tgt, w, self.cfg.loss.charbonnier_eps_px)
        ok = torch.isfinite(d_tgt).float() * w
        return loss + losses.stereo_depth_loss_px(z_pred, d_tgt, ok, data.fx_b)

    def _right_photometric(self, right_rgb: Tensor, sample: Int[Tensor, " P"],
                           cb: CorrespondenceBatch) -> Float[Tensor, ""]:
        """Photometric term on right-camera rays at the samples' pixels (stereo supervision of the colour field)."""
        data, cfg = self.data, self.cfg
        n = max(1, int(round(cfg.render.right_ray_share * sample.shape[0])))
        f, uv = cb.frame_i[:n], cb.uv_i_px[:n]
        offset = torch.tensor([data.baseline_m, 0.0, 0.0], device=uv.device)
        origins, dirs = pixel_rays(uv, data.K, data.poses(f), cam_offset_m=offset)
        nan = torch.full((n,), float("nan"), device=uv.device)
        z, _ = sample_depths(origins, dirs, nan, self.model.workspace, cfg.render, data.fx_b, True, self.gen)
        out = self.model.render(origins, dirs, z, f)
        sup = cb.sup_i[:n].float()  # left mask as a proxy at the same pixel
        return losses.photometric_loss(out.colour(), right_rgb[sample[:n]].float() / 255.0, sup)

    @torch.no_grad()
    def dense_refresh(self) -> None:
        """Reprojection error of one stored sample per cell (one record each), in chunks; at most
        `sampler.refresh_max_rays` cells, drawn at random, per refresh."""
        sample = self.sampler.refresh_samples()
        errs, valids = [], []
        chunk = self.cfg.sampler.refresh_chunk
        for s in range(0, sample.shape[0], chunk):
            cb = correspondence_batch(self.data, sample[s:s + chunk], self.gen)
            out = render_mapped(self.model, self.data, self.cfg, cb.frame_i, cb.uv_i_px, cb.frame_j, cb.depth_i_m,
                                jitter=False, generator=self.gen, with_colour=False)
            errs.append((out.uv_pred_px - cb.uv_j_px).norm(dim=-1))
            valids.append(cb.conf > 0)
        self.sampler.refresh(sample, torch.cat(errs), torch.cat(valids))

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
            if self.budget_s > 0 and elapsed >= self.budget_s:
                stop = "time_budget"
                break
            if cfg.max_steps == 0 and self.budget_s == 0:
                stop = "no_budget"
                break
            share = self.progress_share(step, elapsed)
            self._set_lr(step, share)
            total, terms = self.step_losses(step, share, timings)
            t0 = time.perf_counter()
            self.zero_grad()
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
                elapsed = time.perf_counter() - t_start
                share = self.progress_share(step, elapsed)
                rec = {"step": step, "max_steps": cfg.max_steps, "loss": float(total.detach()),
                       "converged": self.sampler.converged_share(), "elapsed_s": elapsed,
                       "eta_s": elapsed * (1.0 - share) / max(share, 1e-6),
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
        if cfg.sampler.final_refresh and stop != "converged" and step > 0:
            t0 = time.perf_counter()
            self.dense_refresh()
            _add(timings, "refresh_s", t0)
        self.stats.steps = step
        self.stats.stop_reason = stop
        self.stats.losses = {k: float(v) for k, v in last_terms.items()}
        self.stats.converged_share = self.sampler.converged_share()
        return self.stats


def to_device_data(store: CorrespondenceStore, K: np.ndarray, baseline_m: float, T_world_cam: np.ndarray | None,
                   device: torch.device) -> FitData:
    """The correspondence store → `FitData` on `device` (colours to [0, 1] floats; CPU tensors of the
    store's other arrays share its memory)."""
    def t(a, dtype=None):
        x = torch.from_numpy(np.ascontiguousarray(a))
        return x.to(device=device, dtype=dtype) if (dtype is not None or device.type != "cpu") else x

    def colour(a):  # uint8 stays uint8 (a quarter of float32's memory); batches convert
        return t(a)

    return FitData(num_frames=store.num_frames, image_hw=store.image_hw, cell_px=store.cell_px, per_cell=store.per_cell,
                   uv_px=t(store.uv_px), rgb=colour(store.rgb_u8), depth_m=t(store.depth_m),
                   supervise=t(store.supervise), rec_start=t(store.rec_start), rec_frame=t(store.rec_frame),
                   rec_uv_px=t(store.rec_uv_px), rec_conf=t(store.rec_conf), rec_depth_m=t(store.rec_depth_m),
                   rec_rgb=colour(store.rec_rgb_u8), rec_supervise=t(store.rec_supervise),
                   K=t(np.asarray(K, np.float32)), baseline_m=float(baseline_m), depth_maps=store.depth,
                   T_world_cam=None if T_world_cam is None else t(np.asarray(T_world_cam, np.float32)),
                   right_rgb=None if store.right_rgb_u8 is None else colour(store.right_rgb_u8),
                   subpixel_lookup=store.subpixel, num_pairs=int(store.pairs.shape[0]),
                   frame_pairs=t(np.bincount(store.pairs[:, 0], minlength=store.num_frames)[:store.num_frames]),
                   pairs_both_ways=pairs_both_ways(store.pairs, store.num_frames))


def pairs_both_ways(pairs: np.ndarray, num_frames: int) -> bool:
    """Whether every frame pair (i, j) of `pairs` (P, 2) also appears as (j, i)."""
    key = pairs[:, 0].astype(np.int64) * num_frames + pairs[:, 1]
    return bool(np.isin(pairs[:, 1].astype(np.int64) * num_frames + pairs[:, 0], key).all())
