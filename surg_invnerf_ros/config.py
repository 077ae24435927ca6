"""Configuration as data: frozen dataclasses with documented, range-checked fields (STYLE §4).

Every field is declared with `option(default, doc, lo=, hi=)`. Validation (`check_fields`) runs in
`__post_init__`, so an invalid config cannot exist. `load_config` reads YAML, rejects unknown keys
and parses `key.sub=value` overrides with the field's own type. The same classes drive the CLI, the
node (`ros/params.py`) and the benchmark.

Component configs are grouped by concern: `FrontendConfig` (DESIGN §3.1), `FitConfig` (§3.2; in the
model section below) and `NodeConfig` (§5, in `ros/params.py`'s terms).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, get_args, get_origin

import yaml

from .errors import ConfigError

C = TypeVar("C")


def option(default: Any, doc: str, lo: float | None = None, hi: float | None = None) -> Any:
    """A config field with its help text and inclusive range kept in metadata."""
    meta = {"doc": doc, "lo": lo, "hi": hi}
    if isinstance(default, (list, dict)) or is_dataclass(default):
        factory = (lambda d=default: dataclasses.replace(d)) if is_dataclass(default) else (
            lambda d=default: type(d)(d))
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def nested(cls: type, doc: str) -> Any:
    """A nested component config, built from its own defaults."""
    return field(default_factory=cls, metadata={"doc": doc, "lo": None, "hi": None})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check Literal choices, numeric types and lo/hi ranges; raise ConfigError naming the key."""
    hints = _hints(type(obj))
    for f in fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        tp = hints[f.name]
        _check_type(key, value, tp)
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        values = value if isinstance(value, (tuple, list)) else [value]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if lo is not None and v < lo:
                    raise ConfigError(f"{key}: expected >= {lo}, got {v}")
                if hi is not None and v > hi:
                    raise ConfigError(f"{key}: expected <= {hi}, got {v}")


def _check_type(key: str, value: Any, tp: Any) -> None:
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            choices = "|".join(str(a) for a in get_args(tp))
            raise ConfigError(f"{key}: expected one of {choices}, got {value!r}")
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    elif origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        for v in value:
            if item_tp in (int, float, str, bool):
                _check_type(key, v, item_tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Turn YAML/override values into the field's type (int → float, list → tuple)."""
    origin = get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_coerce(key, v, item_tp) for v in value)
    return value


def from_dict(cls: type[C], data: Mapping[str, Any] | None, prefix: str = "") -> C:
    """Build `cls` from a nested mapping; unknown keys are refused by name."""
    data = dict(data or {})
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (expected one of {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        value = data[f.name]
        if is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{f.name}: expected a mapping, got {value!r}")
            kwargs[f.name] = from_dict(tp, value, prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(f"{prefix}{f.name}", value, tp)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), for YAML dumps and track-file `meta`."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out[f.name] = to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings; the value is parsed as YAML so `3`, `0.5`, `true` keep types."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: expected key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is not a group")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file ({} when empty); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return loaded or {}


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Load `cls` from an optional YAML file plus overrides; errors name the file and key."""
    return _from_data(cls, read_yaml_mapping(path) if path is not None else {}, overrides, path)


def _from_data(cls: type[C], data: dict[str, Any], overrides: Sequence[str], path: str | Path | None,
               section: str = "") -> C:
    """`cls` from a mapping plus overrides; errors start with the file and the dotted key under `section`."""
    try:
        return from_dict(cls, apply_overrides(data, overrides))
    except ConfigError as err:
        msg = str(err) if str(err).startswith(section) else section + str(err)
        raise ConfigError(f"{path}: {msg}" if path is not None else msg) from None


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


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, Any, str, float | None, float | None]]:
    """(dotted name, default, doc, lo, hi) for every leaf field: the one table for help and ROS."""
    rows = []
    hints = _hints(cls)
    inst = cls()
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            rows += field_docs(tp, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", getattr(inst, f.name), f.metadata.get("doc", ""),
                         f.metadata.get("lo"), f.metadata.get("hi")))
    return rows


# --------------------------------------------------------------------------------------------
# Front end (DESIGN §3.1)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowConfig:
    """DIS optical flow at several frame gaps, with forward-backward cycle checks."""

    gaps: tuple[int, ...] = option(
        (1, 2, 4, 8, 16, 24), "Frame gaps for which flow is computed both ways. The long gaps bridge occlusions "
        "(an instrument passing, tissue leaving the view) that break every chain of short ones.", lo=1)
    preset: Literal["ultrafast", "fast", "medium"] = option("medium", "OpenCV DIS preset.")
    finest_scale: int = option(
        0, "Finest DIS pyramid level (0 = full resolution). The presets stop at 1 (medium) or 2, which "
        "smooths flow over 2-4 px and costs sub-pixel accuracy.", lo=0, hi=6)
    cycle_thresh_px: float = option(1.0, "Max forward-backward cycle error for a valid flow pixel.", lo=0.0)
    max_roughness_px: float = option(
        0.1, "Max distance between a pixel's flow and the 5x5 mean flow around it (0 = off). Tissue moves "
        "smoothly; where full-resolution DIS patches an area seen in one frame only out of "
        "unrelated pieces, its flow is rough (mean error 0.6 px there against 0.1 px on the hard scenes).", lo=0.0)
    photo_thresh: float = option(
        24.0, "Max 7x7 mean absolute grey difference (0-255) between a pixel and where its flow lands "
        "(0 = off).", lo=0.0)
    min_ncc: float = option(
        0.5, "Min 7x7 zero-mean NCC between a textured pixel's neighbourhood and where its flow lands "
        "(-1 = off); catches what appears in one frame only, which the cycle check misses.", lo=-1.0, hi=1.0)
    max_chain_frames: int = option(48, "Longest frame distance a chained correspondence spans.", lo=1)
    keyframe_stride: int = option(
        8, "Frames 0, S, 2S, ... anchor long-range chains (to and from every frame in reach).", lo=1)
    long_range_step: int = option(
        4, "Long-range pairs are kept every this many frames of distance (memory budget).", lo=1)
    link_cost_px: float = option(
        0.25, "Cost added per composed flow when choosing a chain path; prefers short chains on ties.", lo=0.0)
    conf_scale_px: float = option(
        2.0, "Confidence = exp(-accumulated cycle error / this) * link_decay^(links-1).", lo=1e-6)
    link_decay: float = option(0.97, "Confidence factor per extra composed flow in a chain.", lo=0.0, hi=1.0)
    invalid_link_cost_px: float = option(
        20.0, "Chained point tracks: path cost of an invalid flow link (the position is still carried).", lo=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.flow.")
        if not self.gaps:
            raise ConfigError("frontend.flow.gaps: expected at least one gap, got []")


@dataclass(frozen=True)
class LKConfig:
    """Pyramidal Lucas-Kanade point tracking with a forward-backward visibility check."""

    win_size_px: int = option(21, "LK window side.", lo=3)
    max_level: int = option(3, "Pyramid levels above the base image.", lo=0, hi=8)
    fb_thresh_px: float = option(1.5, "Forward-backward error above which a point is not visible.", lo=0.0)
    min_ncc: float = option(
        0.9, "Frame to frame: patch NCC (old vs new position) below which a point is not visible.",
        lo=-1.0, hi=1.0)
    min_ncc_query: float = option(
        0.75, "'from_query' and re-acquisition: the same test against an older template, which ages.",
        lo=-1.0, hi=1.0)
    max_iters: int = option(30, "LK iterations per pyramid level.", lo=1)
    query_max_level: int = option(
        5, "Pyramid levels for 'from_query' tracking, which spans big displacements.", lo=0, hi=8)
    reacquire: bool = option(
        True, "A lost chained point is re-tracked from its last visible frame; kept if it passes the checks.")
    lost_points: Literal["hold", "follow_median"] = option(
        "follow_median", "A lost point's position: 'hold' the last one, or move it with the median motion "
        "of the points tracked in the same frame.")

    def __post_init__(self) -> None:
        check_fields(self, "frontend.lk.")


@dataclass(frozen=True)
class StereoConfig:
    """SGBM disparity with a left-right check, triangulated to metric depth."""

    num_disparities: int = option(
        0, "SGBM disparity search range (multiple of 16); 0 = from calib so min_depth_m fits.", lo=0)
    block_size: int = option(5, "SGBM matching block side (odd).", lo=1, hi=31)
    lr_thresh_px: float = option(1.0, "Max left-right disparity disagreement.", lo=0.0)
    min_depth_m: float = option(0.02, "Depth below this is treated as invalid.", lo=0.0)
    max_depth_m: float = option(0.30, "Depth above this is treated as invalid.", lo=0.0)
    mode: Literal["sgbm", "sgbm_3way", "hh"] = option("sgbm_3way", "OpenCV SGBM variant.")
    uniqueness_ratio: int = option(10, "SGBM uniqueness margin in percent.", lo=0, hi=100)
    speckle_area_px: int = option(50, "Disparity blobs smaller than this are removed (0 = off).", lo=0)
    speckle_range_px: int = option(2, "Disparity variation allowed inside one speckle blob.", lo=0)
    refine: Literal["none", "dis"] = option(
        "dis", "Sub-pixel refinement: DIS flow left->right replaces the SGBM disparity where they agree.")
    refine_agree_px: float = option(
        1.0, "Max |DIS - SGBM| disparity (and |vertical flow| / 2) for the refined value to be used.", lo=0.0)
    refine_finest_scale: int = option(
        0, "Finest pyramid level of the refining DIS (0 = full resolution: mean disparity error "
        "0.08 px on the hard scenes, against 0.13 px at the medium preset's level 1).", lo=0, hi=6)
    fill_radius_px: int = option(
        5, "Baselines: window radius searched for the nearest valid depth at a track.", lo=0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.stereo.")
        if self.max_depth_m <= self.min_depth_m:
            raise ConfigError(
                f"frontend.stereo.max_depth_m: expected > min_depth_m ({self.min_depth_m}), got {self.max_depth_m}")
        if self.num_disparities % 16:
            raise ConfigError(f"frontend.stereo.num_disparities: expected a multiple of 16, got {self.num_disparities}")
        if self.block_size % 2 == 0:
            raise ConfigError(f"frontend.stereo.block_size: expected an odd number, got {self.block_size}")


@dataclass(frozen=True)
class MaskConfig:
    """Pixels excluded from supervision."""

    specular_min_value: int = option(245, "Pixels with all channels at or above this are specular.", lo=0, hi=255)
    dilate_px: int = option(2, "Dilation of the specular mask.", lo=0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.masks.")


@dataclass(frozen=True)
class FrontendConfig:
    """The weight-free front end: flow chains, LK tracks, stereo depth, masks (DESIGN §3.1)."""

    flow: FlowConfig = nested(FlowConfig, "Dense flow and multi-gap chains.")
    lk: LKConfig = nested(LKConfig, "Pyramidal LK point tracker.")
    stereo: StereoConfig = nested(StereoConfig, "SGBM stereo depth.")
    masks: MaskConfig = nested(MaskConfig, "Supervision masks.")
    workers: int = option(
        0, "Threads for the per-frame stereo, the flow bank and the keyframe chains (0 = every CPU core); "
        "results do not depend on it.", lo=0, hi=1024)
    max_memory_share: float = option(
        0.9, "Refuse a fit whose front end (flow bank + dense correspondences) would need more than this "
        "share of the available RAM, with a one-line error, instead of being killed mid-run (0 = never refuse).",
        lo=0.0, hi=100.0)

    def __post_init__(self) -> None:
        check_fields(self, "frontend.")


# --------------------------------------------------------------------------------------------
# InvNeRF model and fit (DESIGN §3.2, §3.4)
# --------------------------------------------------------------------------------------------


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

    workspace_percentiles: tuple[float, ...] = option((2.0, 98.0), "Robust low/high percentiles of stereo points.", lo=0.0, hi=100.0)
    workspace_margin: float = option(0.15, "Box margin as a share of its extent on each side.", lo=0.0)
    near_samples: int = option(8, "Samples per ray within the stereo-depth band.", lo=0)
    near_band_disp_px: float = option(1.5, "Half-width of the stereo band, in disparity pixels.", lo=0.01)
    workspace_samples: int = option(4, "Stratified samples per ray over the whole workspace.", lo=0)
    invalid_depth_samples: int = option(12, "Workspace samples for rays without stereo depth.", lo=1)
    inference_samples: int = option(48, "Workspace samples per ray at inference (surface, visibility).", lo=2)
    visibility_transmittance: float = option(
        0.0, "Rendered occlusion test: a point is visible when the transmittance in front of it exceeds this "
        "(0 turns the test off; on the hard synthetic set a diffuse density made it cost occlusion accuracy).",
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
    subpixel_lookup: bool = option(
        True, "Stereo depth and colour at fractional pixels (matched pixels, queries) are bilinear, not the nearest pixel's.")
    right_ray_share: float = option(0.0, "Share of photometric rays cast from the right camera.", lo=0.0, hi=1.0)
    mapped_point: Literal["per_sample", "expected_canonical"] = option(
        "per_sample", "X̂_j = Σ w F_j⁻¹(F_i(x)) per sample, or F_j⁻¹ of the expected canonical point (cheaper).")
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


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and schedules (DESIGN §3.2). Each term is in the unit its function states."""

    corr_weight: float = option(0.1, "Rendered correspondence reprojection X̂_j (px).", lo=0.0)
    corr_detach_weights: bool = option(True, "Correspondence terms train the map only, not the density (keeps the surface sharp).")
    bidirectional: bool = option(True, "Supervise i→j and j→i in the same step (False: i→j only).")
    charbonnier_eps_px: float = option(0.5, "Charbonnier smoothing of the reprojection error.", lo=1e-6)
    photo_weight: float = option(1.0, "Photometric (colour in [0, 1], squared).", lo=0.0)
    anchor_weight: float = option(1.0, "Reprojection of the stereo surface point mapped i→j (px): trains F before the density is sharp.", lo=0.0)
    corr_depth_weight: float = option(0.2, "Mapped point's depth vs stereo depth at the matched pixel (disparity px).", lo=0.0)
    stereo_weight: float = option(0.2, "Expected depth vs stereo depth (disparity px).", lo=0.0)
    line_of_sight_weight: float = option(0.1, "Weights concentrated at the stereo depth.", lo=0.0)
    stereo_decay_share: float = option(0.5, "Stereo weights fall to stereo_final_scale by this share of the budget.", lo=0.0, hi=1.0)
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
        "uniform", "How pixels are drawn. Uniform measured better than error-driven on the hard synthetic set "
        "(seed 0: EPE 0.40-0.44 vs 0.48-0.54 px over four error-driven settings), which is kept as the ablation.")
    rays_per_step: int = option(384, "Correspondences per step while nothing has converged.", lo=1)
    min_budget_share: float = option(0.35, "The budget never shrinks below this share.", lo=0.0, hi=1.0)
    error_share: float = option(0.5, "Share of the budget drawn in proportion to error.", lo=0.0, hi=1.0)
    uniform_from: Literal["all", "unconverged"] = option(
        "all", "Pool of the uniform share: every cell (converged regions keep being revisited, so they do not "
        "drift while the shared parameters move), or only the unconverged ones.")
    cell_px: int = option(8, "Error maps hold one cell per cell_px × cell_px pixels.", lo=1)
    converged_below_px: float = option(
        0.25, "τ: a cell has converged below this error. With full-resolution flow the correspondences are "
        "sub-pixel: τ = 1 px stopped hard fits after 300 steps, and 0.5 px stopped easier ones after 300-600 "
        "(held-out hard seeds 3, 4: EPE 0.57 / 0.26 / 0.23 px at 1 / 0.5 / 0.25).", lo=0.0)
    converged_share: float = option(0.95, "γ: stop once this share of every frame converged.", lo=0.0, hi=1.0)
    refresh_every: int = option(300, "Dense refresh of the error maps every this many steps (0: never).", lo=0)
    refresh_chunk: int = option(4096, "Rays per batch during a dense refresh.", lo=1)
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
    lr_final_scale: float = option(0.1, "Learning rates decay to this share at the end of the budget.", lo=0.0, hi=1.0)
    warmup_steps: int = option(50, "Linear learning-rate warm-up.", lo=0)
    fused_adam: bool = option(True, "torch.optim.Adam(fused=True) where supported.")
    bf16_mlp: bool = option(False, "bf16 autocast on the small MLPs (coordinates stay fp32).")

    def __post_init__(self) -> None:
        check_fields(self, "fit.optim.")


@dataclass(frozen=True)
class FitConfig:
    """Test-time optimisation of the InvNeRF model on one sequence (DESIGN §3.2)."""

    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto uses CUDA when present.")
    seed: int = option(0, "Seed of parameters and sampling.", lo=0)
    time_budget_s: float = option(200.0, "Wall-clock budget of the optimisation loop.", lo=0.0)
    max_steps: int = option(6000, "Step budget.", lo=0)
    num_threads: int = option(1, "torch CPU threads for the fit (process-wide; 0 leaves torch's default). One thread is as fast on small batches and robust on a shared machine.", lo=0)
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


# --------------------------------------------------------------------------------------------
# Kinematics (DESIGN §3.2 "Kinematics", §5 `ecm/measured_cp`)
# --------------------------------------------------------------------------------------------

_IDENTITY_16 = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class KinematicsConfig:
    """Endoscope (ECM) poses: hand-eye, clock offset and the pose buffer (`ros/kinematics.py`).

    T_world_cam(t_image) = T_world_ecm(t_image + time_offset_s) @ T_ecm_cam.
    """

    enabled: bool = option(True, "Use ECM poses when they are given; false ignores them.")
    time_offset_s: float = option(
        0.0, "Added to an image stamp to get the kinematics stamp of the same instant: "
        "t_kin = t_image + offset. Negative when image stamps lag (e.g. stamped on arrival).")
    T_ecm_cam: tuple[float, ...] = option(
        _IDENTITY_16, "Hand-eye T_ecm_cam (ECM tool frame <- left optical frame), 16 floats row-major, metres.")
    max_age_s: float = option(
        0.05, "A pose is stale when no buffered pose lies within this of the (offset) image stamp.", lo=0.0)
    buffer_s: float = option(10.0, "Seconds of poses kept behind the newest one.", lo=0.01, hi=3600.0)
    message_type: Literal["auto", "PoseStamped", "TransformStamped"] = option(
        "auto", "Type of ecm/measured_cp; auto takes the type the topic is advertised with.")
    wait_s: float = option(
        0.02, "How long the node may hold a frame for a pose newer than its stamp while poses are flowing "
        "(the buffer never extrapolates; ~100 Hz poses need about one period).", lo=0.0, hi=1.0)
    world_frame: str = option("world", "TF frame of the ECM poses: world -> left optical is published on /tf.")
    publish_tf: bool = option(True, "Publish world -> left optical on /tf for frames with a pose.")

    def __post_init__(self) -> None:
        check_fields(self, "kinematics.")
        import math

        import numpy as np

        from .geometry import rigid_transform_problem

        if len(self.T_ecm_cam) != 16:
            raise ConfigError(
                f"kinematics.T_ecm_cam: expected 16 floats (row-major 4x4), got {len(self.T_ecm_cam)}")
        if not all(math.isfinite(v) for v in self.T_ecm_cam):
            raise ConfigError(f"kinematics.T_ecm_cam: expected finite values, got {list(self.T_ecm_cam)}")
        problem = rigid_transform_problem(np.asarray(self.T_ecm_cam, dtype=np.float64).reshape(4, 4))
        if problem:
            raise ConfigError(f"kinematics.T_ecm_cam: {problem}")
        if abs(self.time_offset_s) >= self.buffer_s:
            raise ConfigError(
                f"kinematics.time_offset_s: expected |offset| < buffer_s ({self.buffer_s}), got {self.time_offset_s}")
        if self.max_age_s >= self.buffer_s:
            raise ConfigError(
                f"kinematics.max_age_s: expected < buffer_s ({self.buffer_s}), got {self.max_age_s}")
        if self.publish_tf and not self.world_frame:
            raise ConfigError("kinematics.world_frame: expected a TF frame name, got '' (or set publish_tf false)")


# --------------------------------------------------------------------------------------------
# Benchmark (DESIGN §4)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """The synthetic benchmark set (DESIGN §4): a named preset of sequences, optionally resized.

    Presets (`eval/bench.py` lists them): "default" (2 seeds × 4 conditions, from easy and static to
    hard with an instrument and camera motion), "hard" (hard, instrument + camera motion, 3 seeds: the
    set issue 3's bar is measured on) and "quick" (a small smoke run). Zero or empty fields take the
    preset's value, so `bench.frames=96` resizes a preset without redefining it.
    """

    preset: Literal["default", "hard", "quick"] = option("default", "Named set of synthetic sequences.")
    frames: int = option(0, "Frames per sequence; 0 takes the preset's (48; quick 16).", lo=0)
    width: int = option(0, "Image width in px; 0 takes the preset's (256; quick 128).", lo=0)
    height: int = option(0, "Image height in px; 0 takes the preset's (192; quick 96).", lo=0)
    num_queries: int = option(0, "Query points per sequence; 0 takes the preset's (64; quick 24).", lo=0)
    seeds: tuple[int, ...] = option((), "Sequence seeds; empty takes the preset's.", lo=0)
    plots: bool = option(True, "Write the accuracy plot and one contact sheet per sequence.")
    contact_frames: int = option(4, "Frames (columns) per contact sheet.", lo=1, hi=16)
    keep_going: bool = option(True, "Record a method that raises as failed and go on; false re-raises.")
    kin_noise_m: float = option(0.0005, "Kinematics section: per-axis std of the translation noise on the noisy poses.",
                                lo=0.0, hi=0.1)
    kin_noise_deg: float = option(0.5, "Kinematics section: per-axis std of the rotation noise on the noisy poses.",
                                  lo=0.0, hi=30.0)
    kin_lag_s: float = option(0.04, "Kinematics section: lag of the noisy poses behind the images, compensated "
                              "with the same time offset.", lo=-1.0, hi=1.0)

    def __post_init__(self) -> None:
        check_fields(self, "bench.")
        if self.frames == 1:
            raise ConfigError("bench.frames: expected 0 (preset) or >= 2, got 1")


# --------------------------------------------------------------------------------------------
# Synthetic stereo endoscope (DESIGN §4, synth/)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic stereo endoscopy sequence with exact ground truth (synth/, DESIGN §4).

    The scene (tissue shape, texture, motion phases, instrument path) is drawn from `seed`; the
    same config always gives the same images. The `pose_*` knobs perturb only the poses that are
    written to kinematics.csv or published, never the images or the ground truth.
    """

    frames: int = option(48, "Number of frames written by `generate_sequence`.", lo=1)
    width: int = option(256, "Image width in pixels.", lo=16, hi=4096)
    height: int = option(192, "Image height in pixels.", lo=16, hi=4096)
    seed: int = option(0, "Seed of the scene: shape, texture, motion phases, noise.", lo=0)
    instrument: bool = option(False, "Add an instrument shaft that enters from a border and moves.")
    camera_motion: bool = option(
        False, "Move the endoscope with a smooth rigid motion (kinematics.csv is written when it moves or "
        "pose noise is set).")
    difficulty: Literal["easy", "medium", "hard"] = option(
        "medium", "Scales deformation amplitude and speed, specularity, noise and flicker.")
    num_queries: int = option(64, "Query points placed on a jittered grid over frame 0.", lo=1, hi=100000)
    fps: float = option(30.0, "Frame rate; sets the time step of every motion.", lo=0.1, hi=1000.0)
    baseline_m: float = option(0.0045, "Stereo baseline (right camera at +x of the left).", lo=0.001, hi=0.05)
    hfov_deg: float = option(70.0, "Horizontal field of view; fx = fy = (W/2) / tan(hfov/2).", lo=20.0, hi=100.0)
    distance_m: float = option(0.075, "Working distance to the tissue at the image centre.", lo=0.05, hi=0.12)
    pose_noise_m: float = option(0.0, "Std of the per-axis translation noise on written poses.", lo=0.0, hi=0.1)
    pose_noise_deg: float = option(0.0, "Std of the per-axis rotation noise on written poses.", lo=0.0, hi=30.0)
    pose_time_offset_s: float = option(
        0.0, "Written pose of frame t is the true pose at t/fps - offset (kinematics lag by this much).",
        lo=-10.0, hi=10.0)

    def __post_init__(self) -> None:
        check_fields(self, "synth.")


# --------------------------------------------------------------------------------------------
# ROS node (DESIGN §3.3, §5): one read-only parameter per leaf field (`ros/params.py`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncConfig:
    """Pairing of left/right images and camera_infos by stamp (`ros/sync.py`)."""

    approximate: bool = option(True, "Pair by nearest stamp within slop_s; false: all four stamps must be equal.")
    slop_s: float = option(0.005, "Largest stamp difference inside one stereo set (approximate sync), seconds.",
                           lo=0.0, hi=1.0)
    queue_size: int = option(10, "Messages kept per input while waiting for their partners.", lo=1, hi=1000)
    timeout_s: float = option(0.5, "A left image still unpaired after this long is dropped (missing right image).",
                              lo=0.0, hi=60.0)
    frame_queue_size: int = option(2, "Paired frames waiting for the front end; the oldest is dropped beyond.",
                                   lo=1, hi=100)
    max_rate_hz: float = option(0.0, "Process at most this many pairs per second (0: no limit); extra pairs drop.",
                                lo=0.0)
    backend: Literal["auto", "builtin", "message_filters"] = option(
        "auto", "auto: message_filters when installed, else built-in. Only the built-in one counts pairing "
        "drops (missing right image, duplicate stamps) by reason.")

    def __post_init__(self) -> None:
        check_fields(self, "sync.")


@dataclass(frozen=True)
class QueryConfig:
    """Queries given at start; more arrive on ~/queries and clicked_point (DESIGN §5)."""

    points_px: tuple[float, ...] = option((), "Start queries as a flat list u0, v0, u1, v1, ... (left pixels).")
    auto_grid: int = option(0, "With no points_px: a grid of about this many queries on the first frame (0: wait).",
                            lo=0, hi=10000)
    grid_margin_px: float = option(8.0, "Grid queries keep this distance from the image border.", lo=0.0)
    max_queries: int = option(512, "Queries beyond this many are refused.", lo=1, hi=100000)

    def __post_init__(self) -> None:
        check_fields(self, "queries.")
        if len(self.points_px) % 2:
            raise ConfigError(f"queries.points_px: expected an even count (u, v pairs), got {len(self.points_px)}")


@dataclass(frozen=True)
class OnlineConfig:
    """The online tracker's per-frame front end (`online.py`, DESIGN §3.3)."""

    point_depth: Literal["lk_stereo", "sgbm"] = option(
        "lk_stereo", "Depth of the tracked points each frame: LK from the left to the right image at the "
        "points (~3 ms), or a dense SGBM map (~170 ms at 640x512 on 2 CPU cores; ~cloud_rate_hz anyway).")
    stereo_max_dy_px: float = option(1.0, "lk_stereo: a match further than this off the epipolar row is invalid.",
                                     lo=0.0)
    confidence_half_life_frames: float = option(
        30.0, "Front-end confidence halves every this many frames since a point was last anchored by a fit.",
        lo=0.1)
    reacquire_every: int = option(
        1, "Every this many frames, LK re-finds each query from the image it was placed on, started at its "
        "current estimate and held to the lk.min_ncc_query check; where found it replaces the chained "
        "estimate, so chained-LK drift does not build up when the tissue looks as it did (0 = off).", lo=0)

    def __post_init__(self) -> None:
        check_fields(self, "online.")


@dataclass(frozen=True)
class RefineConfig:
    """Asynchronous InvNeRF refinement on a window of keyframes (`online.py`, DESIGN §3.3)."""

    enabled: bool = option(True, "Fit the model asynchronously; false publishes the front end only.")
    worker: Literal["process", "thread"] = option(
        "process", "Where the fit runs: a child process (keeps the GIL and torch out of the node) or a thread.")
    keyframe_every: int = option(2, "Every this many frames becomes a keyframe.", lo=1, hi=1000)
    window_frames: int = option(16, "Keyframes kept and fitted (older ones leave the window).", lo=2, hi=10000)
    min_keyframes: int = option(4, "A fit starts once this many keyframes are buffered.", lo=2, hi=10000)
    new_keyframes: int = option(2, "Keyframes that must arrive after a fit before the next one starts.", lo=1)
    fit_config: str = option("", "YAML file with FitConfig keys for the worker (empty: defaults).")
    fit_overrides: tuple[str, ...] = option((), "FitConfig overrides as key=value strings, e.g. max_steps=200.")
    history_frames: int = option(300, "Per-frame results kept so refined fits can replace them.", lo=1, hi=100000)
    render_cloud: bool = option(
        False, "After each fit, render the model's depth of the newest keyframe for ~/cloud. Renders every "
        "pixel: seconds on a GPU, ~40 s for 256x192 on a 2-core CPU.")

    def __post_init__(self) -> None:
        check_fields(self, "refine.")
        if self.min_keyframes > self.window_frames:
            raise ConfigError(f"refine.min_keyframes: expected <= window_frames ({self.window_frames}), "
                              f"got {self.min_keyframes}")


@dataclass(frozen=True)
class PublishConfig:
    """What the node publishes and how often (`ros/publishers.py`, `ros/diagnostics.py`)."""

    overlay: bool = option(True, "Publish ~/overlay (left image with the tracks drawn).")
    tf: bool = option(True, "Broadcast track_<id> frames on /tf and the stereo frame on /tf_static.")
    markers: bool = option(True, "Publish ~/markers (spheres, id labels, trails).")
    trail_frames: int = option(10, "Trail length in ~/markers, frames.", lo=0, hi=1000)
    marker_diameter_m: float = option(0.002, "Sphere diameter in ~/markers, metres.", lo=0.0)
    cloud_rate_hz: float = option(2.0, "~/cloud publish rate (0: off).", lo=0.0, hi=1000.0)
    cloud_stride_px: int = option(4, "~/cloud keeps one pixel in stride×stride.", lo=1, hi=256)
    poll_rate_hz: float = option(10.0, "How often refined results are collected from the worker.", lo=0.1, hi=1000.0)
    diagnostics_rate_hz: float = option(1.0, "/diagnostics publish rate.", lo=0.01, hi=100.0)

    def __post_init__(self) -> None:
        check_fields(self, "publish.")


@dataclass(frozen=True)
class NodeConfig:
    """The tracker node `surg_invnerf_tracker` (DESIGN §5); `config/track.yaml` sets it."""

    device: Literal["auto", "cpu", "cuda"] = option("auto", "Model device; auto uses CUDA when present.")
    frontend: FrontendConfig = nested(FrontendConfig, "Per-frame LK tracking and SGBM depth.")
    online: OnlineConfig = nested(OnlineConfig, "Per-frame point depth and confidence.")
    sync: SyncConfig = nested(SyncConfig, "Stereo + camera_info synchronisation.")
    queries: QueryConfig = nested(QueryConfig, "Start queries.")
    refine: RefineConfig = nested(RefineConfig, "Asynchronous InvNeRF refinement.")
    publish: PublishConfig = nested(PublishConfig, "Outputs.")
    kinematics: KinematicsConfig = nested(KinematicsConfig, "ECM poses on ecm/measured_cp: buffer, hand-eye, clock offset, world frame.")

    def __post_init__(self) -> None:
        check_fields(self, "")


# --------------------------------------------------------------------------------------------
# Source nodes beside the tracker (DESIGN §5): synthetic stereo endoscope, bag player
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSourceConfig:
    """The `synthetic_stereo` node: the synthetic generator as a live stereo endoscope.

    Frame k is stamped start + k/synth.fps (start: the node clock when publishing begins, so
    `use_sim_time` follows /clock); images, camera_infos, pose and ground truth of a frame share it.
    """

    synth: SynthConfig = nested(SynthConfig, "The scene: size, seed, difficulty, instrument, motion, queries.")
    rate_hz: float = option(0.0, "Publish rate; 0 uses synth.fps (stamps always step by 1/synth.fps).",
                            lo=0.0, hi=1000.0)
    end: Literal["pingpong", "loop", "continue", "stop"] = option(
        "pingpong", "After synth.frames frames: play them backwards and forwards again (motion stays "
        "continuous), start over at frame 0, keep rendering new frames, or stop and exit. All but continue "
        "render the frames before publishing, so the rate holds at any size.")
    frame_id_left: str = option("endoscope_left_optical_frame", "frame_id of the left image and camera_info.")
    frame_id_right: str = option("endoscope_right_optical_frame", "frame_id of the right image and camera_info.")
    pose_type: Literal["PoseStamped", "TransformStamped", "none"] = option(
        "PoseStamped", "Type of ecm/measured_cp (dVRK CRTK publishes either); none publishes no pose.")
    world_frame_id: str = option("world", "Header frame_id of the ECM pose.")
    ecm_frame_id: str = option("ecm", "child_frame_id of the ECM pose as a TransformStamped.")
    T_ecm_cam: tuple[float, ...] = option(
        _IDENTITY_16, "Hand-eye T_ecm_cam, 16 floats row-major; the pose published is T_world_cam · T_ecm_cam⁻¹.")
    ground_truth: bool = option(True, "Publish ~/ground_truth (tracked_points schema) for every frame.")
    queries_period_s: float = option(
        0.0, "Also republish the queries every this many seconds (0: only with frame 0, or when the first "
        "subscriber appears).", lo=0.0, hi=3600.0)
    wait_for_subscribers_s: float = option(
        5.0, "Before frame 0, wait up to this long until every published topic has a subscriber.",
        lo=0.0, hi=3600.0)
    render_ahead: int = option(8, "Frames rendered ahead in a background thread.", lo=1, hi=1000)
    cache_mb: float = option(
        2048.0, "Rendered frames are kept (and rendered before publishing) if they fit in this many MB; "
        "else they are rendered again as they come round.", lo=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "")
        if len(self.T_ecm_cam) != 16:
            raise ConfigError(f"T_ecm_cam: expected 16 floats, got {len(self.T_ecm_cam)}")


@dataclass(frozen=True)
class BagPlayerConfig:
    """The `bag_player` node: plays an MCAP or sqlite3 bag as raw CDR (`ros/bag_nodes.py`)."""

    bag: str = option("", "Path of the bag folder (required).")
    rate: float = option(1.0, "Playback speed factor on bag time; 0 publishes as fast as possible.", lo=0.0)
    loop: bool = option(False, "Start over at the end (stamps and /clock jump back).")
    clock: bool = option(False, "Publish the bag time on /clock (for nodes with use_sim_time).")
    clock_rate_hz: float = option(100.0, "/clock publish rate while waiting between messages.", lo=1.0, hi=10000.0)
    topics: tuple[str, ...] = option((), "Topics to play (exact bag names); empty plays all.")
    wait_for_subscribers_s: float = option(
        5.0, "Wait up to this long until every played topic has a subscriber.", lo=0.0, hi=3600.0)
    qos_depth: int = option(10, "Publisher history depth (reliable, volatile; /tf_static is latched).",
                            lo=1, hi=10000)
    linger_s: float = option(
        5.0, "After the last message, wait up to this long until reliable subscribers acknowledged all data.",
        lo=0.0, hi=600.0)

    def __post_init__(self) -> None:
        check_fields(self, "")
