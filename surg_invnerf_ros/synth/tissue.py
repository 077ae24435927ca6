"""Deforming tissue surface and a texture fixed to its material (DESIGN §4, synthetic benchmark).

The tissue is a height field over material coordinates (s, r): metres, the world x and y of the
undeformed surface. Its world position at time t (seconds) is

    X(s, r, t) = (s + d_s, r + d_r, h(s, r) + d_z)

with a static base h (working distance, tilt, a bounded dome and a few folds) and a displacement
d(s, r, t) that sums breathing (a broad lift, a lateral slide and a stretch), a pulsation near a
vessel and a local push that dents the surface and drags it sideways. Every term has closed-form
partial derivatives, so the renderer inverts the surface exactly with Newton steps.

The texture is a function of (s, r) only, so a material point keeps its colour while the surface
moves and deforms: ground-truth tracks are projections of X(s, r, t). Highlights, shading and
noise do change over time, as they would on real, wet tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Deformation per difficulty: amplitudes in metres, `stretch` dimensionless, `speed` scales every
# temporal frequency. Sizes follow in-vivo footage at 5–12 cm: breathing moves the surface by
# millimetres, pulsation by a fraction of one.
DEFORMATION = {
    "easy": dict(lift_m=0.0015, slide_m=0.0010, stretch=0.010, pulse_m=0.0003, push_m=0.0020,
                 drag_m=0.0008, speed=0.7),
    "medium": dict(lift_m=0.0030, slide_m=0.0020, stretch=0.025, pulse_m=0.0006, push_m=0.0040,
                   drag_m=0.0015, speed=1.0),
    "hard": dict(lift_m=0.0050, slide_m=0.0035, stretch=0.040, pulse_m=0.0010, push_m=0.0060,
                 drag_m=0.0025, speed=1.5),
}

Vec3 = tuple[np.ndarray, np.ndarray, np.ndarray]


def _gauss(s: np.ndarray, r: np.ndarray, cs: float, cr: float, sigma_m: float):
    """exp(-|p - c|² / 2σ²) and its partial derivatives in s and r."""
    ds = s - cs
    dr = r - cr
    g = np.exp((ds * ds + dr * dr) * (-0.5 / sigma_m**2))
    k = -1.0 / sigma_m**2
    return g, g * ds * k, g * dr * k


@dataclass(frozen=True)
class _Fold:
    amp_m: float
    ks: float  # wave number along s, rad/m
    kr: float
    phase: float


class TissueSurface:
    """The deforming surface X(s, r, t) in the world frame (metres), drawn from a seeded rng.

    The world frame is the left camera's frame at t = 0 without endoscope motion: x right, y down,
    z away from the camera, so the tissue lies around z = distance_m.
    """

    def __init__(self, rng: np.random.Generator, distance_m: float, difficulty: str) -> None:
        p = DEFORMATION[difficulty]
        speed = p["speed"]
        self.distance_m = float(distance_m)
        # Base shape: the lower image half is farther away (a typical endoscope view angle).
        self.tilt_s = float(rng.uniform(-0.12, 0.12))
        self.tilt_r = float(rng.uniform(0.10, 0.28))
        # A dome (convex or concave, by seed) that levels off beyond DOME_RADIUS_M, so even very
        # wide views meet a surface that neither folds nor curls towards the camera.
        self.dome_per_m = float(rng.uniform(1.5, 3.0) * rng.choice([-1.0, 1.0]))
        self.folds = []
        for _ in range(3):
            wavelength_m = rng.uniform(0.02, 0.05)
            ang = rng.uniform(0.0, 2 * math.pi)
            k = 2 * math.pi / wavelength_m
            self.folds.append(_Fold(float(rng.uniform(0.0006, 0.0014)), k * math.cos(ang), k * math.sin(ang),
                                    float(rng.uniform(0, 2 * math.pi))))
        # Breathing: a broad lift, a slide and an anisotropic stretch about a centre.
        self.breath_hz = float(rng.uniform(0.25, 0.35) * speed)
        self.breath_phase = float(rng.uniform(0, 2 * math.pi))
        self.lift_m = p["lift_m"]
        self.lift_sigma_m = 0.06
        ang = rng.uniform(0, 2 * math.pi)
        self.slide_m = (p["slide_m"] * math.cos(ang), p["slide_m"] * math.sin(ang))
        self.stretch = (p["stretch"] * float(rng.uniform(0.5, 1.0)), p["stretch"] * float(rng.uniform(0.5, 1.0)))
        self.stretch_centre_m = (float(rng.uniform(-0.01, 0.01)), float(rng.uniform(-0.01, 0.01)))
        # Pulsation of a vessel: fast, small, local.
        self.pulse_hz = float(rng.uniform(1.0, 1.4) * speed)
        self.pulse_phase = float(rng.uniform(0, 2 * math.pi))
        self.pulse_m = p["pulse_m"]
        self.pulse_centre_m = (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.015, 0.015)))
        self.pulse_sigma_m = float(rng.uniform(0.006, 0.010))
        # A local push (a dent away from the camera) with a sideways drag, slowly circling.
        self.push_period_s = float(rng.uniform(2.5, 3.5) / speed)
        self.push_phase = float(rng.uniform(0, 2 * math.pi))
        self.push_m = p["push_m"]
        self.push_centre_m = (float(rng.uniform(-0.015, 0.015)), float(rng.uniform(-0.012, 0.012)))
        self.push_sigma_m = float(rng.uniform(0.007, 0.010))
        ang = rng.uniform(0, 2 * math.pi)
        self.drag_m = (p["drag_m"] * math.cos(ang), p["drag_m"] * math.sin(ang))

    DOME_RADIUS_M = 0.05

    def base_depth_m(self, s: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Undeformed height without folds (world z): tilted plane minus c·ρ²/(1 + ρ²/ρ0²)."""
        q = s * s + r * r
        return self.distance_m + self.tilt_s * s + self.tilt_r * r - self.dome_per_m * q / (
            1.0 + q * (1.0 / self.DOME_RADIUS_M**2))

    def evaluate(self, s: np.ndarray, r: np.ndarray, t_s: float) -> tuple[Vec3, Vec3, Vec3]:
        """World position X and tangents ∂X/∂s, ∂X/∂r at material points (s, r) and time t_s.

        Args:
            s, r: material coordinates in metres, any (same) shape; float32 in gives float32 out.
            t_s: time in seconds.

        Returns:
            (X, X_s, X_r), each a tuple (x, y, z) of arrays shaped like `s`.
        """
        # float32 inputs stay float32 (the renderer's per-pixel pass; ~1e-4 px), others become float64.
        dtype = np.float32 if np.asarray(s).dtype == np.float32 else np.float64
        s = np.asarray(s, dtype=dtype)
        r = np.asarray(r, dtype=dtype)
        two_pi = 2 * math.pi
        breath = math.sin(two_pi * self.breath_hz * t_s + self.breath_phase)
        breath2 = math.sin(two_pi * self.breath_hz * t_s + self.breath_phase + 0.7)
        pulse = 0.5 - 0.5 * math.cos(two_pi * self.pulse_hz * t_s + self.pulse_phase)
        push = 0.5 - 0.5 * math.cos(two_pi * t_s / self.push_period_s + self.push_phase)
        push_ang = two_pi * t_s / (2.3 * self.push_period_s)
        pcs = self.push_centre_m[0] + 0.003 * math.cos(push_ang)
        pcr = self.push_centre_m[1] + 0.003 * math.sin(push_ang)

        # Base height and its gradient.
        z = self.base_depth_m(s, r)
        k = 1.0 + (s * s + r * r) * (1.0 / self.DOME_RADIUS_M**2)
        dome_slope = (-2.0 * self.dome_per_m) / (k * k)  # d/dq of −c·q/(1 + q/ρ0²), times 2
        zs = self.tilt_s + dome_slope * s
        zr = self.tilt_r + dome_slope * r
        for f in self.folds:
            arg = f.ks * s + f.kr * r + f.phase
            z = z + f.amp_m * np.sin(arg)
            c = np.cos(arg)
            zs = zs + (f.amp_m * f.ks) * c
            zr = zr + (f.amp_m * f.kr) * c

        # Breathing lift, slide and stretch.
        g, gs, gr = _gauss(s, r, 0.0, 0.0, self.lift_sigma_m)
        a = self.lift_m * breath
        z = z + a * g
        zs = zs + a * gs
        zr = zr + a * gr
        es, er = self.stretch[0] * breath2, self.stretch[1] * breath2
        x = s + self.slide_m[0] * breath + es * (s - self.stretch_centre_m[0])
        y = r + self.slide_m[1] * breath + er * (r - self.stretch_centre_m[1])
        xs = np.full_like(s, 1.0 + es)
        xr = np.zeros_like(s)
        ys = np.zeros_like(s)
        yr = np.full_like(s, 1.0 + er)

        # Pulsation.
        g, gs, gr = _gauss(s, r, self.pulse_centre_m[0], self.pulse_centre_m[1], self.pulse_sigma_m)
        a = self.pulse_m * pulse
        z = z + a * g
        zs = zs + a * gs
        zr = zr + a * gr

        # Push: dent plus drag.
        g, gs, gr = _gauss(s, r, pcs, pcr, self.push_sigma_m)
        a = self.push_m * push
        z = z + a * g
        zs = zs + a * gs
        zr = zr + a * gr
        dx, dy = self.drag_m[0] * push, self.drag_m[1] * push
        x = x + dx * g
        xs = xs + dx * gs
        xr = xr + dx * gr
        y = y + dy * g
        ys = ys + dy * gs
        yr = yr + dy * gr
        return (x, y, z), (xs, ys, zs), (xr, yr, zr)

    def points_m(self, s: np.ndarray, r: np.ndarray, t_s: float) -> np.ndarray:
        """World positions (..., 3) of material points (s, r) at time t_s."""
        X, _, _ = self.evaluate(s, r, t_s)
        return np.stack(X, axis=-1)


# --------------------------------------------------------------------------------------------
# Texture
# --------------------------------------------------------------------------------------------


class TissueTexture:
    """Albedo and bump slopes on a regular grid over material coordinates (s, r).

    Channels 0–2: RGB albedo in [0, 1]; channels 3–4: slopes of a micro-relief height (∂h/∂s,
    ∂h/∂r, dimensionless) used only to perturb normals, so highlights sparkle like wet tissue.
    Content: multi-octave colour noise, branching vessels with capillaries, and fat/pigment specks;
    the finest detail is about two texels wide so minification does not alias much.
    Outside the grid the texture is mirrored, so the tissue never ends.
    """

    def __init__(self, rng: np.random.Generator, half_extent_m: float, texel_m: float) -> None:
        self.texel_m = float(texel_m)
        n = int(math.ceil(2 * half_extent_m / texel_m)) + 1
        self.size = n
        self.origin_m = -0.5 * (n - 1) * self.texel_m  # material coordinate of texel 0 (both axes)
        self.data = self._build(rng, n)  # (n, n, 5) float32

    def _noise(self, rng: np.random.Generator, n: int, wavelength_m: float) -> np.ndarray:
        """Smooth zero-mean, unit-std noise with features about `wavelength_m` wide."""
        wl_tex = max(wavelength_m / self.texel_m, 2.5)
        nc = max(3, int(round(n / wl_tex)) + 3)
        coarse = rng.standard_normal((nc, nc)).astype(np.float32)
        field = cv2.resize(coarse, (n, n), interpolation=cv2.INTER_CUBIC)
        field -= field.mean()
        return field / max(float(field.std()), 1e-6)

    def _vessels(self, rng: np.random.Generator, n: int, count: int, width_mm: tuple[float, float],
                 depth: int) -> np.ndarray:
        """Branching random-walk vessels drawn antialiased; returns a [0, 1] float32 mask."""
        canvas = np.zeros((n, n), np.uint8)
        px_per_m = 1.0 / self.texel_m
        step_m = max(0.0006, 1.5 * self.texel_m)
        shift = 3  # cv2 sub-texel precision: 1/8
        scale = float(1 << shift)

        def walk(x: float, y: float, heading: float, width_m: float, length_m: float, level: int) -> None:
            steps = max(2, int(length_m / step_m))
            pts = [(x, y)]
            branches = []
            for k in range(steps):
                heading += rng.normal(0.0, 0.18)
                x += step_m * math.cos(heading)
                y += step_m * math.sin(heading)
                pts.append((x, y))
                if level < depth and rng.random() < 0.04:
                    side = 1.0 if rng.random() < 0.5 else -1.0
                    branches.append((x, y, heading + side * rng.uniform(0.4, 1.0), width_m * 0.6,
                                     (steps - k) * step_m * 0.6, level + 1))
            # Taper: draw in chunks of decreasing thickness.
            chunk = 8
            for i in range(0, len(pts) - 1, chunk):
                seg = np.asarray(pts[i:i + chunk + 1], dtype=np.float64)
                w_m = width_m * (1.0 - 0.5 * i / len(pts))
                thick = max(1, int(round(w_m * px_per_m)))
                poly = np.round((seg * px_per_m + 0.5 * (n - 1)) * scale).astype(np.int32)
                cv2.polylines(canvas, [poly.reshape(-1, 1, 2)], False, 255, thick, cv2.LINE_AA, shift)
            for b in branches:
                walk(*b)

        half = 0.5 * (n - 1) * self.texel_m
        for _ in range(count):
            walk(float(rng.uniform(-half, half)), float(rng.uniform(-half, half)),
                 float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(*width_mm)) * 1e-3,
                 float(rng.uniform(0.02, 0.06)), 0)
        mask = canvas.astype(np.float32) / 255.0
        return cv2.GaussianBlur(mask, (0, 0), 0.7)

    def _specks(self, rng: np.random.Generator, n: int, count: int, radius_mm: tuple[float, float]) -> np.ndarray:
        canvas = np.zeros((n, n), np.uint8)
        shift = 3
        xy = rng.uniform(0, n - 1, size=(count, 2))
        rad = rng.uniform(*radius_mm, size=count) * 1e-3 / self.texel_m
        for (x, y), rr in zip(xy, rad):
            cv2.circle(canvas, (int(x * 8), int(y * 8)), max(1, int(rr * 8)), 255, -1, cv2.LINE_AA, shift)
        return cv2.GaussianBlur(canvas.astype(np.float32) / 255.0, (0, 0), 0.6)

    def _build(self, rng: np.random.Generator, n: int) -> np.ndarray:
        area_cm2 = (n * self.texel_m * 100.0) ** 2
        n1 = self._noise(rng, n, 0.015)
        n2 = self._noise(rng, n, 0.005)
        n3 = self._noise(rng, n, 0.0015)
        n4 = self._noise(rng, n, 0.0005)
        base = np.array([0.78, 0.42, 0.37], np.float32)
        albedo = np.empty((n, n, 3), np.float32)
        for c, (w1, w2, w3, w4) in enumerate([(0.07, 0.05, 0.035, 0.025), (0.05, 0.04, 0.03, 0.02),
                                              (0.045, 0.035, 0.03, 0.02)]):
            albedo[..., c] = base[c] * (1.0 + w1 * n1 + w2 * n2 + w3 * n3 + w4 * n4)
        vessels = self._vessels(rng, n, max(4, int(area_cm2 * 0.2)), (0.5, 1.4), depth=3)
        capillaries = self._vessels(rng, n, max(8, int(area_cm2 * 0.8)), (0.15, 0.35), depth=1)
        fat = self._specks(rng, n, max(10, int(area_cm2 * 3.5)), (0.25, 0.8))
        pigment = self._specks(rng, n, max(5, int(area_cm2 * 2)), (0.15, 0.4))
        albedo *= 1.0 - capillaries[..., None] * np.array([0.18, 0.35, 0.25], np.float32)
        albedo *= 1.0 - vessels[..., None] * np.array([0.45, 0.70, 0.50], np.float32)
        fat_rgb = np.array([0.95, 0.85, 0.62], np.float32)
        albedo += (0.6 * fat)[..., None] * (fat_rgb - albedo)
        albedo *= 1.0 - (0.45 * pigment)[..., None]
        np.clip(albedo, 0.02, 1.0, out=albedo)
        # Micro-relief in metres: fine noise plus raised vessels and fat; slopes by Sobel.
        height_m = (0.00004 * n3 + 0.00002 * n4 + 0.00008 * vessels + 0.00005 * fat).astype(np.float32)
        gs = cv2.Sobel(height_m, cv2.CV_32F, 1, 0, ksize=3) / (8.0 * self.texel_m)
        gr = cv2.Sobel(height_m, cv2.CV_32F, 0, 1, ksize=3) / (8.0 * self.texel_m)
        return np.concatenate([albedo, gs[..., None], gr[..., None]], axis=-1)

    def sample(self, s: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Bilinear texture at material points; (H, W) inputs give (H, W, 5) float32."""
        map_x = ((s - self.origin_m) / self.texel_m).astype(np.float32)
        map_y = ((r - self.origin_m) / self.texel_m).astype(np.float32)
        return cv2.remap(self.data, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
