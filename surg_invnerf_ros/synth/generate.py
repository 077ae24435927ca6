"""Synthetic stereo endoscope: a streaming scene and a sequence-folder writer (DESIGN §2.1, §4).

`SyntheticScene(cfg).frame(t)` renders frame t of a rectified stereo pair with exact ground truth
(2D, 3D and visibility of every query, a dense depth map). It is a pure function of (cfg, t), so
the ROS source node can stream it forever and the offline writer produces the same images.
`generate_sequence` writes a sequence folder plus

```
OUT/gt/tracks.npz   ground-truth track file (same ids as queries.csv)
OUT/gt/depth.npz    depth_m (T, H, W) float32, left camera z, NaN where no tissue;
                    instrument_mask (T, H, W) bool
OUT/gt/poses.npz    T_world_cam (T, 4, 4): the true poses (kinematics.csv may hold perturbed ones)
```
kinematics.csv is written when the endoscope moves or pose noise is configured.

The world frame is the left camera at t = 0 without endoscope motion. Ground-truth visibility is
false when the projection falls outside [0, W−1] × [0, H−1], when the instrument hides the point
(closed-form ray test) or, rarely, when a fold of tissue does (checked against the depth map).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from ..config import SynthConfig, to_dict
from ..geometry import invert_T, project_px, sample_bilinear, transform_points
from ..io.sequence import write_sequence
from ..io.trackfile import write_tracks
from ..structs import Queries, StereoCalib, Tracks
from .instrument import Instrument
from .render import (
    COARSE_STEP,
    Appearance,
    cast_rays,
    flicker_gain,
    normalised_grid,
    plane_guess,
    render_view,
    sensor_image,
    vignetting,
)
from .tissue import DEFORMATION, TissueSurface, TissueTexture

log = logging.getLogger(__name__)

STAMP0_NS = 1_700_000_000 * 10**9  # a plausible wall-clock start, so stamps are never zero
MAX_TEXTURE_SIDE = 3072
CAMERA_MOTION_SCALE = {"easy": 0.6, "medium": 1.0, "hard": 1.5}
SELF_OCCLUSION_M, SELF_OCCLUSION_REL = 0.001, 0.01  # depth-map margin before tissue hides a point


@dataclass
class SynthFrame:
    """One rendered stereo frame with ground truth.

    Attributes:
        left_rgb_u8, right_rgb_u8: (H, W, 3) uint8 rectified images, RGB.
        depth_m: (H, W) float32 tissue z in the left camera; NaN where no tissue (instrument).
        gt_uv_px: (N, 2) float64 left-image projections of the query material points.
        gt_xyz_cam_m: (N, 3) float64 the same points in the left camera frame of this frame.
        gt_visible: (N,) bool, inside the image and not hidden by the instrument.
        T_world_cam: (4, 4) left-camera pose as *published* (with the configured kinematics noise,
            lag and jitter; equal to the true pose when those are zero).
        stamp_ns: image timestamp.
        T_world_cam_true: (4, 4) the true pose used for rendering.
        instrument_mask: (H, W) bool, instrument pixels in the left image.
    """

    left_rgb_u8: np.ndarray
    right_rgb_u8: np.ndarray
    depth_m: np.ndarray
    gt_uv_px: np.ndarray
    gt_xyz_cam_m: np.ndarray
    gt_visible: np.ndarray
    T_world_cam: np.ndarray
    stamp_ns: int
    T_world_cam_true: np.ndarray | None = None
    instrument_mask: np.ndarray | None = None


def intrinsics(cfg: SynthConfig) -> np.ndarray:
    """(3, 3) K with square pixels, fx = (W/2)/tan(hfov/2), principal point at the image centre."""
    fx = 0.5 * cfg.width / math.tan(math.radians(cfg.hfov_deg) / 2)
    return np.array([[fx, 0.0, (cfg.width - 1) / 2], [0.0, fx, (cfg.height - 1) / 2], [0.0, 0.0, 1.0]])


class SyntheticScene:
    """A deforming, textured, specular tissue seen by a rectified stereo endoscope.

    Each component draws from its own seeded stream, so switching the instrument or the camera
    motion on does not change the tissue. `frame(t)` depends only on (cfg, t).
    """

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        self.num_frames = cfg.frames
        K = intrinsics(cfg)
        self.calib = StereoCalib(K=K, baseline_m=float(cfg.baseline_m), image_size=(cfg.width, cfg.height),
                                 fps=float(cfg.fps))
        self.look = Appearance.from_difficulty(cfg.difficulty)
        self.surface = TissueSurface(np.random.default_rng([cfg.seed, 1]), cfg.distance_m, cfg.difficulty)
        tan_half = max(0.5 * cfg.width / K[0, 0], 0.5 * cfg.height / K[1, 1])
        half_extent_m = 1.25 * cfg.distance_m * tan_half + 0.012
        texel_m = max(0.64 * cfg.distance_m / K[0, 0], 2 * half_extent_m / (MAX_TEXTURE_SIDE - 1))
        self.texture = TissueTexture(np.random.default_rng([cfg.seed, 2]), half_extent_m, texel_m)
        self.instrument = None
        if cfg.instrument:
            self.instrument = Instrument(np.random.default_rng([cfg.seed, 3]), self.surface,
                                         cfg.distance_m * tan_half, DEFORMATION[cfg.difficulty]["speed"])
        rng = np.random.default_rng([cfg.seed, 4])
        self._motion_hz = rng.uniform(0.15, 0.35, size=6) * DEFORMATION[cfg.difficulty]["speed"]
        scale = CAMERA_MOTION_SCALE[cfg.difficulty]
        self._motion_amp = np.array([0.003, 0.003, 0.004, math.radians(2.0), math.radians(2.0),
                                     math.radians(3.0)]) * scale * rng.choice([-1.0, 1.0], size=6)
        self._right_gain = float(np.random.default_rng([cfg.seed, 5]).uniform(0.95, 1.05))
        self._light_cam = np.array([0.5 * cfg.baseline_m, -0.004, 0.0])
        self._T_left_right = np.eye(4)
        self._T_left_right[0, 3] = cfg.baseline_m
        self._grid = normalised_grid(self.calib)
        self._grid32 = (self._grid[0].astype(np.float32), self._grid[1].astype(np.float32))
        self._grid_coarse = normalised_grid(self.calib, COARSE_STEP)
        self._vignette = vignetting(self._grid, self.look.vignette)
        self.queries, self._query_s, self._query_r = self._place_queries()

    # -- poses -----------------------------------------------------------------------------

    def true_pose(self, t_s: float) -> np.ndarray:
        """(4, 4) T_world_cam of the left camera at time t_s: identity at 0, smooth, periodic."""
        T = np.eye(4)
        if not self.cfg.camera_motion:
            return T
        w = np.sin(2 * math.pi * self._motion_hz * t_s) * self._motion_amp
        T[:3, :3] = Rotation.from_rotvec(w[3:]).as_matrix()
        T[:3, 3] = w[:3]
        return T

    def published_pose(self, t: int) -> np.ndarray:
        """Pose of frame t as kinematics would report it: lagged by pose_time_offset_s, plus noise."""
        cfg = self.cfg
        T = self.true_pose(t / cfg.fps - cfg.pose_time_offset_s)
        if cfg.pose_noise_m > 0 or cfg.pose_noise_deg > 0:
            rng = np.random.default_rng([cfg.seed, t, 11])
            dT = np.eye(4)
            dT[:3, 3] = rng.normal(0.0, cfg.pose_noise_m, size=3) if cfg.pose_noise_m > 0 else 0.0
            if cfg.pose_noise_deg > 0:
                dT[:3, :3] = Rotation.from_rotvec(np.radians(rng.normal(0.0, cfg.pose_noise_deg, size=3))).as_matrix()
            T = T @ dT
        return T

    def stamp_ns(self, t: int) -> int:
        return STAMP0_NS + int(round(t * 1e9 / self.cfg.fps))

    # -- ground truth ----------------------------------------------------------------------

    def _material_at(self, uv_px: np.ndarray, T_world_cam: np.ndarray, t_s: float):
        """Material coordinates seen at left pixels (N, 2): (s, r, residual_px)."""
        K = self.calib.K
        xn = (uv_px[:, 0] - K[0, 2]) / K[0, 0]
        yn = (uv_px[:, 1] - K[1, 2]) / K[1, 1]
        s0, r0 = plane_guess(self.surface, T_world_cam, xn, yn)
        s, r, *_, resid = cast_rays(self.surface, T_world_cam, xn, yn, t_s, s0, r0, iters=40,
                                    tol_px=1e-9, fx=self.calib.fx)
        return s, r, resid

    def ground_truth(self, t_s: float, T_world_cam: np.ndarray, s: np.ndarray | None = None,
                     r: np.ndarray | None = None):
        """(uv_px (N, 2), xyz_cam_m (N, 3), visible (N,)) of material points (default: the queries)."""
        s = self._query_s if s is None else s
        r = self._query_r if r is None else r
        X_w = self.surface.points_m(s, r, t_s)  # (N, 3)
        xyz = transform_points(invert_T(T_world_cam), X_w)
        uv = project_px(xyz, self.calib.K)
        W, H = self.calib.image_size
        with np.errstate(invalid="ignore"):
            visible = (xyz[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1)
        if self.instrument is not None:
            visible &= ~self.instrument.occludes(T_world_cam[:3, 3], X_w, t_s)
        return uv, xyz, visible

    def _place_queries(self) -> tuple[Queries, np.ndarray, np.ndarray]:
        """Jittered grid over frame 0, away from borders and from the instrument."""
        cfg = self.cfg
        W, H = cfg.width, cfg.height
        n = cfg.num_queries
        margin = max(2.0, 0.08 * min(W, H))
        lo = np.array([margin, margin])
        hi = np.array([W - 1 - margin, H - 1 - margin])
        span = hi - lo
        rng = np.random.default_rng([cfg.seed, 6])
        T0 = self.true_pose(0.0)
        ring = 0.04 * min(W, H) + 2.0
        for factor in (1.0, 1.5, 2.5, 4.0, 8.0, 16.0):
            nx = max(1, int(math.ceil(math.sqrt(n * factor * span[0] / max(span[1], 1e-9)))))
            ny = max(1, int(math.ceil(n * factor / nx)))
            cell = span / np.array([nx, ny])
            gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
            centres = lo + (np.stack([gx.ravel(), gy.ravel()], -1) + 0.5) * cell
            uv = centres + rng.uniform(-0.35, 0.35, size=centres.shape) * cell
            s, r, resid = self._material_at(uv, T0, 0.0)
            ok = resid < 1e-6
            if self.instrument is not None:
                # The query and a ring around it must be clear of the instrument at frame 0.
                for ang in np.linspace(0, 2 * math.pi, 8, endpoint=False):
                    probe = uv + ring * np.array([math.cos(ang), math.sin(ang)])
                    ps, pr, _ = self._material_at(probe, T0, 0.0)
                    _, _, vis = self.ground_truth(0.0, T0, ps, pr)
                    ok &= vis | (probe[:, 0] < 0) | (probe[:, 0] > W - 1) | (probe[:, 1] < 0) | (probe[:, 1] > H - 1)
                _, _, vis = self.ground_truth(0.0, T0, s, r)
                ok &= vis
            idx = np.nonzero(ok)[0]
            if len(idx) >= n:
                pick = np.sort(rng.choice(idx, size=n, replace=False))
                tuv = np.concatenate([np.zeros((n, 1)), uv[pick]], axis=1)
                return Queries(ids=np.arange(n, dtype=np.int64), query_tuv=tuv), s[pick], r[pick]
        raise ValueError(f"synth.num_queries: could not place {n} queries on frame 0")

    # -- rendering -------------------------------------------------------------------------

    def frame(self, t: int) -> SynthFrame:
        """Render frame t (t >= 0; motion continues past num_frames)."""
        if t < 0:
            raise ValueError(f"frame index: expected >= 0, got {t}")
        cfg = self.cfg
        t_s = t / cfg.fps
        T_wl = self.true_pose(t_s)
        T_wr = T_wl @ self._T_left_right
        light_w = T_wl[:3, :3] @ self._light_cam + T_wl[:3, 3]
        args = (self.surface, self.texture, self.instrument, self.calib)
        left = render_view(*args, T_wl, light_w, t_s, self.look, self._grid32, self._grid_coarse)
        right = render_view(*args, T_wr, light_w, t_s, self.look, self._grid32, self._grid_coarse)
        if left.unsolved_px or right.unsolved_px:
            log.warning("synth frame %d: %d left / %d right pixels see no tissue (field of view too wide?)",
                        t, left.unsolved_px, right.unsolved_px)
        gain = flicker_gain(cfg.seed, t, self.look.flicker)
        left_u8 = sensor_image(left.radiance, self._vignette, gain, self.look,
                               np.random.default_rng([cfg.seed, t, 0]))
        right_u8 = sensor_image(right.radiance, self._vignette, gain * self._right_gain, self.look,
                                np.random.default_rng([cfg.seed, t, 1]))
        uv, xyz, visible = self.ground_truth(t_s, T_wl)
        # Safety net for self-occlusion (a fold in front of the point, possible only at grazing
        # views): the rendered surface at the point's pixel must not be clearly nearer.
        d = sample_bilinear(left.depth_m, uv)
        with np.errstate(invalid="ignore"):
            visible &= ~(d < xyz[:, 2] * (1.0 - SELF_OCCLUSION_REL) - SELF_OCCLUSION_M)
        return SynthFrame(
            left_rgb_u8=left_u8, right_rgb_u8=right_u8, depth_m=left.depth_m, gt_uv_px=uv,
            gt_xyz_cam_m=xyz, gt_visible=visible, T_world_cam=self.published_pose(t),
            stamp_ns=self.stamp_ns(t), T_world_cam_true=T_wl, instrument_mask=left.instrument_mask)


def tee_pairs(pairs):
    """(left iterator, right iterator) over an iterator of (left, right) pairs, holding at most one pair
    (`zip(left, right)` takes them alternately)."""
    held: list = []

    def lefts():
        for pair in pairs:
            held.append(pair[1])
            yield pair[0]

    def rights():
        while True:
            if not held:
                return
            yield held.pop(0)

    return lefts(), rights()


def generate_sequence(out_dir: str | Path, cfg: SynthConfig,
                      progress: Callable[[int], object] | None = None) -> Path:
    """Render `cfg.frames` frames and write a sequence folder with ground truth under `gt/`.

    Args:
        out_dir: the sequence folder (replaced if it exists).
        cfg: the synthetic scene.
        progress: called with 1 after each rendered frame.

    Returns:
        The folder written.
    """
    scene = SyntheticScene(cfg)
    T, N = cfg.frames, len(scene.queries)
    H, W = cfg.height, cfg.width
    uv = np.empty((T, N, 2), np.float32)
    xyz = np.empty((T, N, 3), np.float32)
    vis = np.empty((T, N), bool)
    poses = np.empty((T, 4, 4))
    poses_true = np.empty((T, 4, 4))
    stamps = np.empty(T, np.int64)
    render_s = 0.0
    with tempfile.TemporaryDirectory(prefix="surg_invnerf_synth_") as tmp:
        # Frames are rendered, written and dropped one at a time: a long clip never sits in memory. The
        # ground-truth depth and instrument masks go to .npy files frame by frame, zipped into depth.npz.
        fields = {"depth_m": (np.float32, Path(tmp) / "depth_m.npy"),
                  "instrument_mask": (np.bool_, Path(tmp) / "instrument_mask.npy")}
        files = {k: open(path, "wb") for k, (_, path) in fields.items()}
        try:
            for k, (dtype, _) in fields.items():
                np.lib.format.write_array_header_1_0(files[k], {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                                "fortran_order": False, "shape": (T, H, W)})

            def frames():
                nonlocal render_s
                for t in range(T):
                    t0 = time.perf_counter()
                    f = scene.frame(t)
                    render_s += time.perf_counter() - t0
                    uv[t], xyz[t], vis[t] = f.gt_uv_px, f.gt_xyz_cam_m, f.gt_visible
                    poses[t], poses_true[t], stamps[t] = f.T_world_cam, f.T_world_cam_true, f.stamp_ns
                    files["depth_m"].write(np.ascontiguousarray(f.depth_m, np.float32).tobytes())
                    files["instrument_mask"].write(np.ascontiguousarray(f.instrument_mask, np.bool_).tobytes())
                    if progress is not None:
                        progress(1)
                    yield f.left_rgb_u8, f.right_rgb_u8

            left, right = tee_pairs(frames())
            # A still, noise-free endoscope writes no kinematics.csv (readers then take T = I, the same poses).
            has_kinematics = cfg.camera_motion or cfg.pose_noise_m > 0 or cfg.pose_noise_deg > 0

            def write_ground_truth(seq_tmp: Path) -> None:
                """Into the sequence folder before it is renamed into place: no sequence without its truth."""
                for fh in files.values():
                    fh.close()
                meta = {"method": "ground_truth", "synth": to_dict(cfg), "timings": {"render_s": render_s}}
                write_tracks(seq_tmp / "gt" / "tracks.npz",
                             Tracks(ids=scene.queries.ids, uv=uv, visible=vis, xyz=xyz, meta=meta))
                # an .npz is a zip of .npy files: streamed from disk (the folder's rename makes it atomic)
                with zipfile.ZipFile(seq_tmp / "gt" / "depth.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for k, (_, path) in fields.items():
                        zf.write(path, arcname=f"{k}.npy")
                np.savez(seq_tmp / "gt" / "poses.npz", T_world_cam=poses_true)

            # stamps and poses are filled while the images are written, before write_sequence reads them
            out = write_sequence(out_dir, left, right, scene.calib, scene.queries, stamps_ns=stamps,
                                 T_world_cam=poses if has_kinematics else None, finish=write_ground_truth)
        finally:
            for fh in files.values():
                fh.close()
    log.info("synthetic sequence %s: %d frames %dx%d, %d queries, rendered in %.1f s", out, T, W, H, N, render_s)
    return out


def time_generation(cfg: SynthConfig) -> float:
    """Seconds to build the scene and render all `cfg.frames` frames (no disk writes)."""
    t0 = time.perf_counter()
    scene = SyntheticScene(cfg)
    for t in range(cfg.frames):
        scene.frame(t)
    return time.perf_counter() - t0
