"""Stereo ray casting of the tissue, specular shading, instrument occlusion and sensor effects.

Each pixel's ray is intersected with the deforming surface by solving π(X(s, r, t)) = pixel for
the material point (s, r) with Newton steps (the 2×2 Jacobian is closed-form): first on a grid
every `COARSE_STEP` pixels from a plane guess, then at every pixel from the bilinearly upsampled
coarse solution (in float32, in bands of rows). The solution is good to ~1e-4 px, so the texture
at a pixel is the texture of the material point that projects there; ground truth is computed
apart, in float64, by projecting X(s, r, t) of the query points (no image is involved).

Shading (world frame, one point light at the endoscope tip, shared by both cameras):

    radiance = exposure · (z_ref / |L − X|)² · (albedo · (ambient + max(n·l, 0)) + k_s · max(n·h, 0)^shininess)

with n the surface normal tilted by the texture's micro-relief, l the direction to the light and
h the half vector towards *this* camera, so highlights differ between the views and move over the
tissue. A soft shoulder tone curve, cos⁴ vignetting, a per-frame brightness flicker (shared by the
pair) and Gaussian read + shot noise follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..structs import StereoCalib
from .instrument import Instrument
from .tissue import TissueSurface, TissueTexture

COARSE_STEP = 4
BAND_PIXELS = 32768  # pixels per band of rows in the per-pixel pass (fits in L2 as float32)
MAX_STEP_M = 0.01  # Newton steps are clamped to this, so a poor guess cannot jump off the view
RESIDUAL_TOL_PX = 1e-3  # a pixel whose ray is not solved to this is left empty (never seen in practice)

Vec3 = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Appearance:
    """Light, surface and sensor settings for one difficulty (unitless gains, radiance in [0, ~1])."""

    ks: float
    shininess: float
    bump_gain: float
    ambient: float
    vignette: float
    flicker: float
    noise_read: float
    noise_shot: float
    exposure: float = 0.72

    @classmethod
    def from_difficulty(cls, difficulty: str) -> "Appearance":
        table = {
            "easy": cls(ks=0.25, shininess=60.0, bump_gain=0.6, ambient=0.12, vignette=0.45,
                        flicker=0.015, noise_read=0.003, noise_shot=0.004),
            "medium": cls(ks=0.8, shininess=80.0, bump_gain=1.0, ambient=0.10, vignette=0.6,
                          flicker=0.035, noise_read=0.006, noise_shot=0.008),
            "hard": cls(ks=1.8, shininess=110.0, bump_gain=1.5, ambient=0.08, vignette=0.75,
                        flicker=0.07, noise_read=0.012, noise_shot=0.014),
        }
        return table[difficulty]


@dataclass
class ViewRender:
    """One camera's render before sensor effects.

    Attributes:
        radiance: (H, W, 3) float32 linear radiance (before tone curve and noise).
        depth_m: (H, W) float32 tissue z in this camera (NaN where the instrument is in front or no
            tissue was found).
        instrument_mask: (H, W) bool, the instrument covers the pixel.
        s_m, r_m: (H, W) float64 material coordinates seen at each pixel (NaN where no tissue).
        max_residual_px: largest ray-casting residual among the tissue pixels.
        unsolved_px: pixels whose ray was not solved to RESIDUAL_TOL_PX (left black, depth NaN).
    """

    radiance: np.ndarray
    depth_m: np.ndarray
    instrument_mask: np.ndarray
    s_m: np.ndarray
    r_m: np.ndarray
    max_residual_px: float
    unsolved_px: int = 0


def normalised_grid(calib: StereoCalib, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image coordinates ((u − cx)/fx, (v − cy)/fy) of every `step`-th pixel, (h, w) float64.

    The last row and column are always included so a coarse grid spans the whole image.
    """
    us = np.arange(0, calib.width - 1 + step, step, dtype=np.float64)
    vs = np.arange(0, calib.height - 1 + step, step, dtype=np.float64)
    xn = (us - calib.cx) / calib.fx
    yn = (vs - calib.cy) / calib.fy
    return np.broadcast_to(xn[None, :], (len(vs), len(us))).copy(), np.broadcast_to(
        yn[:, None], (len(vs), len(us))).copy()


def _apply(R: np.ndarray, v: Vec3, t: np.ndarray | None = None) -> Vec3:
    """R·v (+ t) on component arrays; python-float coefficients keep float32 arrays float32."""
    Rl = np.asarray(R, dtype=np.float64).tolist()
    tl = None if t is None else np.asarray(t, dtype=np.float64).tolist()
    out = []
    for i in range(3):
        o = Rl[i][0] * v[0] + Rl[i][1] * v[1] + Rl[i][2] * v[2]
        if tl is not None:
            o = o + tl[i]
        out.append(o)
    return out[0], out[1], out[2]


def plane_guess(surface: TissueSurface, T_world_cam: np.ndarray, xn: np.ndarray, yn: np.ndarray):
    """Material coordinates where each ray meets the tilted plane of the base surface."""
    R = T_world_cam[:3, :3]
    o = T_world_cam[:3, 3]
    dx, dy, dz = _apply(R, (xn, yn, np.ones_like(xn)))
    denom = dz - surface.tilt_s * dx - surface.tilt_r * dy
    lam = (surface.distance_m + surface.tilt_s * o[0] + surface.tilt_r * o[1] - o[2]) / denom
    lam = np.where(lam > 0, lam, surface.distance_m)
    return o[0] + lam * dx, o[1] + lam * dy


def cast_rays(surface: TissueSurface, T_world_cam: np.ndarray, xn: np.ndarray, yn: np.ndarray, t_s: float,
              s: np.ndarray, r: np.ndarray, iters: int, tol_px: float = 0.0, fx: float = 1.0):
    """Newton solve of π(T_cam_world · X(s, r, t)) = (xn, yn) for the material point of each ray.

    Args:
        T_world_cam: (4, 4) pose of the camera.
        xn, yn: normalised image coordinates of the rays (any shape).
        s, r: initial material coordinates (same shape).
        iters: maximum number of Newton updates; stops early once every residual < tol_px.
        fx: focal length, only to express the residual in pixels.

    Returns:
        s, r, X (world), X_s, X_r (world tangents), xyz_cam (camera-frame point), residual_px:
        evaluated at the final (s, r).
    """
    T_cam_world = np.linalg.inv(T_world_cam)
    R = T_cam_world[:3, :3]
    t = T_cam_world[:3, 3]
    for k in range(iters + 1):
        X, Xs, Xr = surface.evaluate(s, r, t_s)
        xc, yc, zc = _apply(R, X, t)
        iz = 1.0 / zc
        px = xc * iz
        py = yc * iz
        ex = px - xn
        ey = py - yn
        if k == iters or (tol_px > 0 and float(np.max(np.abs(ex) + np.abs(ey), initial=0.0)) * fx < tol_px):
            break
        sx, sy, sz = _apply(R, Xs)
        rx, ry, rz = _apply(R, Xr)
        j11 = (sx - px * sz) * iz
        j12 = (rx - px * rz) * iz
        j21 = (sy - py * sz) * iz
        j22 = (ry - py * rz) * iz
        inv_det = 1.0 / (j11 * j22 - j12 * j21)
        ds = np.clip((j12 * ey - j22 * ex) * inv_det, -MAX_STEP_M, MAX_STEP_M)
        dr = np.clip((j21 * ex - j11 * ey) * inv_det, -MAX_STEP_M, MAX_STEP_M)
        s = s + ds
        r = r + dr
    resid_px = np.hypot(ex, ey) * fx
    return s, r, X, Xs, Xr, (xc, yc, zc), resid_px


def coarse_solution(surface: TissueSurface, calib: StereoCalib, T_world_cam: np.ndarray, t_s: float,
                    grid_coarse: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Material coordinates (float32) on the coarse grid, solved from the plane guess."""
    xn_c, yn_c = grid_coarse
    s0, r0 = plane_guess(surface, T_world_cam, xn_c, yn_c)
    s_c, r_c, *_ = cast_rays(surface, T_world_cam, xn_c, yn_c, t_s, s0, r0, iters=12, tol_px=1e-6,
                             fx=calib.fx)
    return s_c.astype(np.float32), r_c.astype(np.float32)


def upsample_rows(coarse: np.ndarray, step: int, width: int, row0: int, row1: int) -> np.ndarray:
    """Bilinear values of a grid sampled every `step` pixels, at pixel rows [row0, row1).

    Coarse node k sits on pixel k·step, so the fractions are multiples of 1/step and exact in
    OpenCV's fixed-point remap weights for step 4.
    """
    map_x = np.broadcast_to(np.arange(width, dtype=np.float32) / step, (row1 - row0, width))
    map_y = np.broadcast_to((np.arange(row0, row1, dtype=np.float32) / step)[:, None], (row1 - row0, width))
    return cv2.remap(coarse, np.ascontiguousarray(map_x), np.ascontiguousarray(map_y), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def cast_image(surface: TissueSurface, calib: StereoCalib, T_world_cam: np.ndarray, t_s: float,
               grid_fine: tuple[np.ndarray, np.ndarray], grid_coarse: tuple[np.ndarray, np.ndarray],
               rows: tuple[int, int] | None = None):
    """`cast_rays` output at every pixel (of rows [a, b) if given): coarse solve, upsample, refine.

    The per-pixel pass runs in float32 (the dtype of `grid_fine`): float64 sin/cos cost 10x more,
    and float32 still resolves ~1e-4 px at 640x512 (ground truth does not depend on it).
    One Newton update from the upsampled guess takes the residual from ~0.05 px to ~1e-4 px.
    """
    s_c, r_c = coarse_solution(surface, calib, T_world_cam, t_s, grid_coarse)
    return _refine(surface, calib, T_world_cam, t_s, grid_fine, s_c, r_c, rows or (0, calib.height))


def _refine(surface, calib, T_world_cam, t_s, grid_fine, s_c, r_c, rows):
    a, b = rows
    step = COARSE_STEP if s_c.shape != grid_fine[0].shape else 1
    dt = grid_fine[0].dtype
    s0 = upsample_rows(s_c, step, calib.width, a, b).astype(dt)
    r0 = upsample_rows(r_c, step, calib.width, a, b).astype(dt)
    return cast_rays(surface, T_world_cam, grid_fine[0][a:b], grid_fine[1][a:b], t_s, s0, r0, iters=6,
                     tol_px=RESIDUAL_TOL_PX * 0.5, fx=calib.fx)


def _normalise(v: Vec3) -> Vec3:
    inv = 1.0 / np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return v[0] * inv, v[1] * inv, v[2] * inv


def _dot(a: Vec3, b: Vec3) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _blinn_phong(P: Vec3, n: Vec3, light_w: np.ndarray, eye_w: np.ndarray, albedo: np.ndarray,
                 ks: float, shininess: float, ambient: float, z_ref_m: float, exposure: float) -> np.ndarray:
    """Radiance (…, 3) at world points P with unit normals n (see the module formula)."""
    light = [float(c) for c in light_w]  # Python floats: the per-pixel arithmetic keeps P's dtype
    eye = [float(c) for c in eye_w]
    lx, ly, lz = light[0] - P[0], light[1] - P[1], light[2] - P[2]
    dist2 = lx * lx + ly * ly + lz * lz
    inv = 1.0 / np.sqrt(dist2)
    to_light = (lx * inv, ly * inv, lz * inv)
    v = _normalise((eye[0] - P[0], eye[1] - P[1], eye[2] - P[2]))
    h = _normalise((to_light[0] + v[0], to_light[1] + v[1], to_light[2] + v[2]))
    diffuse = np.maximum(_dot(n, to_light), 0.0)
    spec = ks * np.maximum(_dot(n, h), 0.0) ** shininess
    fall = exposure * (z_ref_m * z_ref_m) / dist2
    return (fall[..., None] * (albedo * (ambient + diffuse)[..., None] + spec[..., None])).astype(np.float32)


def render_view(surface: TissueSurface, texture: TissueTexture, instrument: Instrument | None,
                calib: StereoCalib, T_world_cam: np.ndarray, light_w: np.ndarray, t_s: float,
                look: Appearance, grid_fine, grid_coarse) -> ViewRender:
    """Radiance, depth and instrument mask of one camera at time t_s (no tone curve, no noise).

    After the coarse solve, the image is processed in bands of rows, so the per-pixel arrays stay
    in cache (×2 at 1280×1024); bands are vectorised, this is no per-pixel loop.
    """
    W, H = calib.width, calib.height
    s_c, r_c = coarse_solution(surface, calib, T_world_cam, t_s, grid_coarse)
    out = ViewRender(radiance=np.zeros((H, W, 3), np.float32), depth_m=np.full((H, W), np.nan, np.float32),
                     instrument_mask=np.zeros((H, W), bool), s_m=np.full((H, W), np.nan),
                     r_m=np.full((H, W), np.nan), max_residual_px=0.0)
    band = max(1, BAND_PIXELS // W)
    for a in range(0, H, band):
        b = min(H, a + band)
        _render_band(surface, texture, instrument, calib, T_world_cam, light_w, t_s, look, grid_fine,
                     s_c, r_c, (a, b), out)
    return out


def _render_band(surface, texture, instrument, calib, T_world_cam, light_w, t_s, look, grid_fine,
                 s_c, r_c, rows, out: ViewRender) -> None:
    a, b = rows
    s, r, X, Xs, Xr, xyz_cam, resid_px = _refine(surface, calib, T_world_cam, t_s, grid_fine, s_c, r_c, rows)
    zc = xyz_cam[2]
    ok = (resid_px < RESIDUAL_TOL_PX) & (zc > 0)
    eye = T_world_cam[:3, 3]

    # Tissue normal towards the camera (X_r × X_s), tilted by the micro-relief slopes.
    n = _normalise((Xr[1] * Xs[2] - Xr[2] * Xs[1], Xr[2] * Xs[0] - Xr[0] * Xs[2], Xr[0] * Xs[1] - Xr[1] * Xs[0]))
    es = _normalise(Xs)
    er = _normalise(Xr)
    tex = texture.sample(np.where(ok, s, 0.0), np.where(ok, r, 0.0))  # (h, W, 5)
    bs = look.bump_gain * tex[..., 3]
    br = look.bump_gain * tex[..., 4]
    n = _normalise((n[0] - bs * es[0] - br * er[0], n[1] - bs * es[1] - br * er[1], n[2] - bs * es[2] - br * er[2]))
    radiance = _blinn_phong(X, n, light_w, eye, tex[..., :3], look.ks, look.shininess, look.ambient,
                            surface.distance_m, look.exposure)
    radiance[~ok] = 0.0

    inst_mask = np.zeros(zc.shape, bool)
    if instrument is not None:
        R = T_world_cam[:3, :3]
        xn, yn = grid_fine[0][a:b], grid_fine[1][a:b]
        d = _apply(R, (xn, yn, np.ones_like(xn)))
        lam, n_i, metal = instrument.intersect(eye, d, t_s)
        inst_mask = np.isfinite(lam) & (~ok | (lam < zc))
        if inst_mask.any():
            idx = np.nonzero(inst_mask)
            lam_i = lam[idx]
            P = tuple(eye[k] + lam_i * d[k][idx] for k in range(3))
            albedo = np.where(metal[idx][:, None], np.array([0.55, 0.56, 0.58]), np.array([0.10, 0.10, 0.11]))
            radiance[idx] = _blinn_phong(P, tuple(c[idx] for c in n_i), light_w, eye, albedo,
                                         ks=1.0, shininess=30.0, ambient=look.ambient,
                                         z_ref_m=surface.distance_m, exposure=look.exposure)
    tissue = ok & ~inst_mask
    out.radiance[a:b] = radiance
    out.depth_m[a:b] = np.where(tissue, zc, np.nan)
    out.instrument_mask[a:b] = inst_mask
    out.s_m[a:b] = np.where(ok, s, np.nan)
    out.r_m[a:b] = np.where(ok, r, np.nan)
    out.max_residual_px = max(out.max_residual_px, float(resid_px[ok].max(initial=0.0)))
    out.unsolved_px += int(ok.size - np.count_nonzero(ok))


def vignetting(grid_fine: tuple[np.ndarray, np.ndarray], strength: float) -> np.ndarray:
    """(H, W) float32 gain: 1 − strength · (1 − cos⁴θ), θ the ray's angle to the optical axis."""
    xn, yn = grid_fine
    cos4 = 1.0 / (1.0 + xn * xn + yn * yn) ** 2
    return (1.0 - strength * (1.0 - cos4)).astype(np.float32)


def sensor_image(radiance: np.ndarray, vignette: np.ndarray, gain: float, look: Appearance,
                 rng: np.random.Generator) -> np.ndarray:
    """Tone curve, vignetting, flicker gain and read + shot noise → (H, W, 3) uint8 RGB."""
    x = radiance * (vignette * gain)[..., None]
    # Linear up to the knee, then a shoulder that passes full scale (1.0) near x ≈ 1.2 and levels
    # off at 1.05, so strong highlights clip to flat 255 despite the noise, as on a real sensor.
    knee, ceiling = 0.8, 1.05
    y = np.where(x < knee, x, knee + (ceiling - knee) * np.tanh((x - knee) / (ceiling - knee)))
    sigma = np.sqrt(look.noise_read**2 + look.noise_shot**2 * y)
    y = y + sigma * rng.standard_normal(y.shape, dtype=np.float32)
    return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)  # round half up, then clip


def flicker_gain(seed: int, t: int, strength: float) -> float:
    """Brightness of frame t (shared by both cameras): 1 + strength · N(0, 1), clipped at ±2.5σ."""
    z = float(np.random.default_rng([seed, t, 7]).standard_normal())
    return 1.0 + strength * max(-2.5, min(2.5, z))
