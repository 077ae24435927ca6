"""Fit configs: losses, sampler, optimiser and the whole InvNeRF fit (`fit/`, DESIGN §3.4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from ..errors import ConfigError
from .base import (
    _from_data,
    check_fields,
    nested,
    option,
    read_yaml_mapping,
)
from .frontend import FrontendConfig
from .model import CanonicalConfig, CouplingConfig, HexPlaneConfig, RenderConfig


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and schedules (DESIGN §3.2). Each term is in the unit its function states."""

    corr_weight: float = option(0.1, "Rendered correspondence reprojection X̂_j (px).", lo=0.0)
    corr_detach_weights: bool = option(True, "Correspondence terms train the map only, not the density (keeps "
        "the surface sharp).")
    directions: Literal["auto", "both", "one"] = option(
        "auto", "Rays per correspondence and step: both (the ray of i mapped to j and the ray of j mapped to i), one "
        "(i → j only: half the rays, twice the steps in a budget), or auto: one where the store holds every frame "
        "pair both ways, both where it does not (clips too large for backward chains).")
    charbonnier_eps_px: float = option(0.5, "Charbonnier smoothing of the reprojection error.", lo=1e-6)
    photo_weight: float = option(1.0, "Photometric (colour in [0, 1], squared).", lo=0.0)
    anchor_weight: float = option(1.0, "Reprojection of the stereo surface point mapped i→j (px): trains F "
        "before the density is sharp.", lo=0.0)
    corr_depth_weight: float = option(0.2, "Mapped point's depth vs stereo depth at the matched pixel (disparity px).", lo=0.0)
    stereo_weight: float = option(0.2, "Expected depth vs stereo depth (disparity px).", lo=0.0)
    line_of_sight_weight: float = option(0.1, "Weights concentrated at the stereo depth.", lo=0.0)
    stereo_decay_share: float = option(0.5, "Stereo weights fall to stereo_final_scale by this share of the "
        "budget.", lo=0.0, hi=1.0)
    stereo_final_scale: float = option(0.5, "Final multiplier of the stereo terms.", lo=0.0)
    range_weight: float = option(1.0, "Canonical and mapped points outside [-1, 1]^3.", lo=0.0)
    distortion_weight: float = option(0.001, "Mip-NeRF 360 distortion.", lo=0.0)
    tv_weight: float = option(1e-4, "Total variation of spatial planes.", lo=0.0)
    time_smooth_weight: float = option(1e-3, "Second difference of time planes along t.", lo=0.0)
    reg_every: int = option(4, "Plane regularisers are evaluated every this many steps.", lo=1)

    def __post_init__(self) -> None:
        check_fields(self, "fit.loss.")


@dataclass(frozen=True)
class SamplerConfig:
    """Error-driven pixel sampling and the stopping rule (DESIGN §3.2)."""

    strategy: Literal["error_driven", "uniform"] = option(
        "uniform", "How pixels are drawn: uniformly over the error-map cells, or in proportion to their error "
        "(`error_share`).")
    rays_per_step: int = option(384, "Correspondences per step while nothing has converged.", lo=1)
    min_budget_share: float = option(0.35, "The budget never shrinks below this share.", lo=0.0, hi=1.0)
    error_share: float = option(0.5, "Share of the budget drawn in proportion to error.", lo=0.0, hi=1.0)
    uniform_from: Literal["all", "unconverged"] = option(
        "all", "Pool of the uniform share: every cell (converged regions keep being revisited, so they do not "
        "drift while the shared parameters move), or only the unconverged ones.")
    cell_px: int = option(8, "Error maps hold one cell per cell_px × cell_px pixels.", lo=1)
    converged_below_px: float = option(
        0.25, "τ: a cell has converged below this error. Keep it below the correspondences' own accuracy "
        "(sub-pixel with full-resolution flow), or fits stop early.", lo=0.0)
    converged_share: float = option(0.95, "γ: stop once this share of every frame converged.", lo=0.0, hi=1.0)
    refresh_every: int = option(300, "Dense refresh of the error maps every this many steps (0: never).", lo=0)
    refresh_chunk: int = option(4096, "Rays per batch during a dense refresh.", lo=1)
    refresh_max_rays: int = option(
        65536, "A dense refresh measures every cell up to this many; beyond, this many random cells (0: every cell).",
        lo=0)
    final_refresh: bool = option(
        False, "Refresh the error maps once more when the loop ends, so the converged share the fit reports "
        "is the final model's (a short fit may end before its first refresh).")
    error_ema: float = option(0.5, "Weight of a new error sample in its cell.", lo=0.0, hi=1.0)
    stall_steps: int = option(1500, "Stop when the loss EMA has not improved by stall_rel for this many steps (0: never).", lo=0)
    stall_rel: float = option(0.005, "Relative improvement that counts as progress.", lo=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "fit.sampler.")


@dataclass(frozen=True)
class OptimConfig:
    """Adam with per-group learning rates and an exponential decay over the budget."""

    lr_planes: float = option(0.02, "Learning rate of the feature planes.", lo=0.0)
    lr_mlp: float = option(0.003, "Learning rate of the MLPs and appearance codes.", lo=0.0)
    lr_final_scale: float = option(0.03, "Learning rates decay to this share at the end of the budget.", lo=0.0, hi=1.0)
    warmup_steps: int = option(50, "Linear learning-rate warm-up.", lo=0)
    fused_adam: bool = option(True, "torch.optim.Adam(fused=True) where supported.")
    contiguous_params: bool = option(True, "Hold each parameter group in one buffer (parameters and gradients are views "
                                           "of it), so each update is one tensor per group, not one per parameter.")
    bf16_mlp: bool = option(False, "bf16 autocast on the small MLPs (coordinates stay fp32).")

    def __post_init__(self) -> None:
        check_fields(self, "fit.optim.")


@dataclass(frozen=True)
class FitConfig:
    """Test-time optimisation of the InvNeRF model on one sequence (DESIGN §3.2)."""

    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto uses CUDA when present.")
    seed: int = option(0, "Seed of parameters and sampling.", lo=0)
    time_budget_s: float = option(
        3600.0, "Wall-clock budget of the optimisation loop, seconds (0: no time limit); with "
        "time_budget_per_frame_s, the most it may grow to.", lo=0.0)
    time_budget_per_frame_s: float = option(
        2.0, "The loop's budget scales with the clip: this many seconds per frame, at most time_budget_s "
        "(0: time_budget_s alone). 48 frames get 96 s.", lo=0.0)
    max_steps: int = option(6000, "Step budget.", lo=0)
    num_threads: int = option(0, "torch CPU threads for the fit and inference (process-wide; 0 leaves torch's "
        "default, one per core). The node's refinement runs on refine.worker_threads instead.", lo=0)
    log_every: int = option(25, "Progress callback every this many steps.", lo=1)
    use_kinematics: bool = option(True, "Cast rays in the world frame from the sequence's camera poses when it has them.")
    pose_refine: bool = option(
        False, "Learn a per-frame rigid correction of the kinematic poses (T_world_cam @ dT, camera frame; "
        "frame 0 fixed), initialised at the identity and regularised towards it. Needs use_kinematics.")
    pose_lr: float = option(
        0.01, "Learning rate of the pose corrections (Adam; degrees and millimetres per step at most, roughly).",
        lo=0.0, hi=10.0)
    pose_reg_weight: float = option(
        0.05, "Weight of the pull towards the kinematics: mean over frames of |rotation|^2 in deg^2 + "
        "|translation|^2 in mm^2.", lo=0.0)
    hexplane: HexPlaneConfig = nested(HexPlaneConfig, "Deformation features.")
    coupling: CouplingConfig = nested(CouplingConfig, "Invertible map.")
    canonical: CanonicalConfig = nested(CanonicalConfig, "Canonical field.")
    render: RenderConfig = nested(RenderConfig, "Rays, samples, visibility.")
    loss: LossConfig = nested(LossConfig, "Loss weights and schedules.")
    sampler: SamplerConfig = nested(SamplerConfig, "Pixel sampling and convergence.")
    optim: OptimConfig = nested(OptimConfig, "Optimiser.")

    def __post_init__(self) -> None:
        check_fields(self, "fit.")
        if self.pose_refine and not self.use_kinematics:
            raise ConfigError("fit.pose_refine: expected use_kinematics=true (the corrections refine kinematic poses)")


def load_fit_and_frontend(path: str | Path | None = None, overrides: Sequence[str] = ()
                          ) -> tuple["FitConfig", "FrontendConfig"]:
    """FitConfig and FrontendConfig from one YAML file and one override list: the file's `frontend:`
    section and the `frontend.*` overrides go to the front end, the rest to the fit."""
    data = read_yaml_mapping(path) if path is not None else {}
    frontend = data.pop("frontend", None) or {}
    if not isinstance(frontend, dict):
        raise ConfigError(f"{path}: frontend: expected a mapping")
    prefix = "frontend."
    fit_overrides = [o for o in overrides if not o.startswith(prefix)]
    frontend_overrides = [o[len(prefix):] for o in overrides if o.startswith(prefix)]
    return (_from_data(FitConfig, data, fit_overrides, path),
            _from_data(FrontendConfig, frontend, frontend_overrides, path, section=prefix))
