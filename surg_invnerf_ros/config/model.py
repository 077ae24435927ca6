"""Model configs: HexPlanes, coupling layers, the canonical volume and rendering (`model/`, DESIGN §3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .base import (
    check_fields,
    option,
)


@dataclass(frozen=True)
class HexPlaneConfig:
    """Multi-scale HexPlane features that condition each coupling layer (DESIGN §3.2)."""

    resolutions: tuple[int, ...] = option((16, 32), "Spatial plane side per scale.", lo=2)
    feature_dims: tuple[int, ...] = option((8, 8), "Feature channels per scale (one per resolution).", lo=1)
    time_res_per_frame: float = option(1.0, "Time-plane samples per frame (1: one column per frame).", lo=0.05)
    init_low: float = option(0.1, "Spatial planes start uniform in [init_low, init_high].")
    init_high: float = option(0.5, "Spatial planes start uniform in [init_low, init_high].")

    def __post_init__(self) -> None:
        check_fields(self, "fit.hexplane.")
        if len(self.feature_dims) != len(self.resolutions):
            raise ConfigError(f"fit.hexplane.feature_dims: expected one per scale ({len(self.resolutions)}), "
                              f"got {len(self.feature_dims)}")
        if not self.resolutions:
            raise ConfigError("fit.hexplane.resolutions: expected at least one scale")
        if self.init_high < self.init_low:
            raise ConfigError(f"fit.hexplane.init_high: expected >= init_low ({self.init_low}), got {self.init_high}")


@dataclass(frozen=True)
class CouplingConfig:
    """The invertible map F_t: K affine coupling layers (DESIGN §3.2)."""

    num_layers: int = option(6, "Number of affine coupling layers K.", lo=1, hi=64)
    axis_order: tuple[int, ...] = option((0, 1, 2), "Coordinate updated by layer k is axis_order[k % len].", lo=0, hi=2)
    hidden_dim: int = option(32, "Hidden width of each layer's MLP.", lo=1)
    max_log_scale: float = option(0.5, "|log scale| bound of one layer (tanh-squashed).", lo=0.0)
    use_coords: bool = option(True, "Also feed the conditioning coordinates (b, c) to the MLP.")
    fused: bool = option(True, "Run each layer as one autograd node with a hand-written backward (same values and "
                         "gradients, about half the operator calls); off: plain autograd operators.")

    def __post_init__(self) -> None:
        check_fields(self, "fit.coupling.")
        if len(set(self.axis_order)) != 3:
            raise ConfigError(f"fit.coupling.axis_order: expected every axis 0, 1, 2 at least once, got {list(self.axis_order)}")


@dataclass(frozen=True)
class CanonicalConfig:
    """Canonical field: multi-scale tri-plane + tiny MLP → density and colour."""

    resolutions: tuple[int, ...] = option((32, 64), "Tri-plane side per scale.", lo=2)
    feature_dims: tuple[int, ...] = option((8, 8), "Feature channels per scale (one per resolution).", lo=1)
    hidden_dim: int = option(32, "Hidden width of the density/colour MLP.", lo=1)
    density_activation: Literal["softplus", "trunc_exp"] = option("trunc_exp", "Raw output → density.")
    density_bias: float = option(0.0, "Added to the raw density before the activation.")
    appearance_dim: int = option(4, "Per-frame appearance code length (0 disables it).", lo=0)

    def __post_init__(self) -> None:
        check_fields(self, "fit.canonical.")
        if len(self.feature_dims) != len(self.resolutions):
            raise ConfigError(f"fit.canonical.feature_dims: expected one per scale ({len(self.resolutions)}), "
                              f"got {len(self.feature_dims)}")


@dataclass(frozen=True)
class RenderConfig:
    """Workspace, ray sampling and visibility (DESIGN §3.2, §3.4)."""

    workspace_percentiles: tuple[float, ...] = option((2.0, 98.0), "Robust low/high percentiles of stereo "
        "points.", lo=0.0, hi=100.0)
    workspace_margin: float = option(0.15, "Box margin as a share of its extent on each side.", lo=0.0)
    near_samples: int = option(8, "Samples per ray within the stereo-depth band.", lo=0)
    near_band_disp_px: float = option(1.5, "Half-width of the stereo band, in disparity pixels.", lo=0.01)
    workspace_samples: int = option(4, "Stratified samples per ray over the whole workspace.", lo=0)
    invalid_depth_samples: int = option(12, "Workspace samples for rays without stereo depth.", lo=1)
    inference_samples: int = option(48, "Workspace samples per ray at inference (surface, visibility).", lo=2)
    visibility_transmittance: float = option(
        0.0, "Rendered occlusion test: a point is visible when the transmittance in front of it exceeds this "
        "(0 = off; a diffuse density makes the test call visible points occluded).",
        lo=0.0, hi=1.0)
    visibility_front_disp_px: float = option(2.0, "Weight this far in front (disparity px) counts as occluding.", lo=0.0)
    stereo_visibility_check: bool = option(True, "Also call a point occluded when stereo depth at its pixel is well in front.")
    stereo_occlusion_gap_px: float = option(1.0, "Stereo disparity this much above the point's own means an occluder.", lo=0.0)
    stereo_depth_fusion_px: float = option(
        2.0, "Output depth: use the SGBM depth at the tracked pixel where it agrees with the model's within "
        "this many disparity px (0 disables; the model's depth is kept elsewhere).", lo=0.0)
    depth_consensus: Literal["none", "median"] = option(
        "median", "Output depth at frame t: the median over the frames where the point is visible of its "
        "(fused) 3D point carried to t through the map (F_t⁻¹∘F_s), along the ray of its tracked pixel. "
        "Stereo depth errors follow the texture; other frames see the same material point from other "
        "poses and shapes.")
    consensus_window_frames: int = option(
        16, "depth_consensus takes the frames within this distance of t (0: all frames), so its cost grows "
        "with frames × window, not frames²; the nearest frames see the point in the most similar shape.", lo=0)
    subpixel_lookup: bool = option(
        True, "Stereo depth and colour at fractional pixels (matched pixels, queries) are bilinear, not the nearest pixel's.")
    right_ray_share: float = option(0.0, "Share of photometric rays cast from the right camera.", lo=0.0, hi=1.0)
    mapped_point: Literal["per_sample", "expected_canonical"] = option(
        "expected_canonical", "The mapped point X̂_j: F_j⁻¹ of the ray's expected canonical point Σ w F_i(x) (one "
        "inverse map per ray), or Σ w F_j⁻¹(F_i(x)) over the samples (every sample mapped back; about 1.5× the step "
        "time on a CPU).")
    surface: Literal["max_weight", "expected", "stereo"] = option(
        "stereo", "Inference surface point: the max-weight sample (refined by its neighbours), the weighted "
        "mean of samples, or the stereo point where stereo depth is valid (max-weight elsewhere).")

    def __post_init__(self) -> None:
        check_fields(self, "fit.render.")
        p = self.workspace_percentiles
        if len(p) != 2 or p[0] >= p[1]:
            raise ConfigError(f"fit.render.workspace_percentiles: expected [low, high] with low < high, got {list(p)}")
        if self.near_samples + self.workspace_samples < 2:
            raise ConfigError("fit.render.near_samples: near_samples + workspace_samples must be >= 2")
