"""A surgical instrument as an occluder: a capsule that enters from an image border (DESIGN §4).

The instrument is a cylinder of radius ρ with a hemispherical tip. Its axis points from the tip out
of the view and towards the camera, as a shaft from a trocar does. The tip sweeps in from the
border, across the tissue, and wobbles sideways, hovering a few millimetres above the undeformed
surface. Ray intersection is closed-form, so renderer and ground-truth visibility share one test:
a point is hidden when the segment from the camera centre to it enters the capsule first.
"""

from __future__ import annotations

import math

import numpy as np

from .tissue import TissueSurface

Vec3 = tuple[np.ndarray, np.ndarray, np.ndarray]


class Instrument:
    """A moving capsule in the world frame, drawn from a seeded rng.

    Args:
        rng: scene random generator (only this component's draws).
        surface: the tissue, to keep the tip above it.
        half_width_m: half the width of the view at the working distance.
        speed: scales the sweep frequency (difficulty).
    """

    METAL_LENGTH_M = 0.010  # the last centimetre of the shaft is bare metal, the rest dark plastic

    def __init__(self, rng: np.random.Generator, surface: TissueSurface, half_width_m: float,
                 speed: float = 1.0) -> None:
        self.surface = surface
        self.radius_m = float(rng.uniform(0.0035, 0.0045))
        theta = float(rng.uniform(0, 2 * math.pi))
        self.out_dir = np.array([math.cos(theta), math.sin(theta)])  # image-plane direction to the border
        self.perp_dir = np.array([-self.out_dir[1], self.out_dir[0]])
        axis = np.array([self.out_dir[0], self.out_dir[1], -float(rng.uniform(0.45, 0.7))])
        self.axis = axis / np.linalg.norm(axis)
        self.start_m = float(rng.uniform(0.55, 0.7)) * half_width_m  # tip offset from the centre at t=0
        self.end_m = -float(rng.uniform(0.0, 0.25)) * half_width_m
        self.period_s = float(rng.uniform(2.6, 3.4)) / speed
        self.wobble_m = float(rng.uniform(0.004, 0.008))
        self.wobble_hz = float(rng.uniform(0.3, 0.5)) * speed
        self.clearance_m = float(rng.uniform(0.010, 0.016))
        self.offset_m = rng.uniform(-0.2, 0.2, size=2) * half_width_m

    def pose(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(tip centre (3,), unit axis (3,)) in the world frame at time t_s; periodic in time."""
        q = 0.5 - 0.5 * math.cos(2 * math.pi * t_s / self.period_s)
        lateral = self.start_m + (self.end_m - self.start_m) * q
        wob = self.wobble_m * math.sin(2 * math.pi * self.wobble_hz * t_s)
        xy = self.offset_m + lateral * self.out_dir + wob * self.perp_dir
        z = float(self.surface.base_depth_m(np.asarray(xy[0]), np.asarray(xy[1]))) - self.clearance_m
        z += 0.002 * math.sin(2 * math.pi * 0.37 * t_s)
        return np.array([xy[0], xy[1], z]), self.axis

    def intersect(self, origin: np.ndarray, d: Vec3, t_s: float) -> tuple[np.ndarray, Vec3, np.ndarray]:
        """First hit of rays origin + λ·d with the capsule.

        Args:
            origin: (3,) ray origin (a camera centre), world metres.
            d: ray directions as (dx, dy, dz) arrays of one shape; λ is in units of |d|.
            t_s: time in seconds.

        Returns:
            lam: λ of the first hit (inf where missed), float64.
            normal: unit outward normal (nx, ny, nz) at the hit (undefined where missed).
            metal: bool, the hit lies on the bare-metal tip.
        """
        tip, a_vec = self.pose(t_s)
        rho2 = self.radius_m**2
        w_vec = np.asarray(origin, dtype=np.float64) - tip
        wa = float(w_vec @ a_vec)
        wp = (w_vec - wa * a_vec).tolist()
        C = float(np.dot(wp, wp)) - rho2
        C_s = float(w_vec @ w_vec) - rho2
        a = a_vec.tolist()  # python floats keep float32 rays float32
        w = w_vec.tolist()
        dx, dy, dz = d
        da = dx * a[0] + dy * a[1] + dz * a[2]
        dd = dx * dx + dy * dy + dz * dz
        # Cylinder (the half towards +axis): |w⊥ + λ d⊥|² = ρ².
        A = np.maximum(dd - da * da, 1e-30)
        B = dx * wp[0] + dy * wp[1] + dz * wp[2]
        disc = B * B - A * C
        lam_c = (-B - np.sqrt(np.maximum(disc, 0.0))) / A
        ok_c = (disc >= 0) & (lam_c > 0) & (wa + lam_c * da >= 0)
        # Hemisphere at the tip: |w + λ d|² = ρ².
        wd = dx * w[0] + dy * w[1] + dz * w[2]
        disc_s = wd * wd - dd * C_s
        lam_s = (-wd - np.sqrt(np.maximum(disc_s, 0.0))) / dd
        ok_s = (disc_s >= 0) & (lam_s > 0) & (wa + lam_s * da <= 0)
        lam = np.minimum(np.where(ok_c, lam_c, np.inf), np.where(ok_s, lam_s, np.inf))
        hit = np.isfinite(lam)
        lam_h = np.where(hit, lam, 0.0)
        qx, qy, qz = w[0] + lam_h * dx, w[1] + lam_h * dy, w[2] + lam_h * dz  # hit point minus tip
        qa = qx * a[0] + qy * a[1] + qz * a[2]
        on_cyl = qa > 0
        ca = np.where(on_cyl, qa, 0.0)  # remove the axial part on the cylinder only
        inv = 1.0 / self.radius_m
        normal = ((qx - ca * a[0]) * inv, (qy - ca * a[1]) * inv, (qz - ca * a[2]) * inv)
        metal = hit & (qa < self.METAL_LENGTH_M)
        return lam, normal, metal

    def occludes(self, origin: np.ndarray, points_w: np.ndarray, t_s: float) -> np.ndarray:
        """(N,) bool: the segment from `origin` to each (N, 3) world point enters the capsule first."""
        d = points_w - origin[None, :]
        lam, _, _ = self.intersect(origin, (d[:, 0], d[:, 1], d[:, 2]), t_s)
        return lam < 1.0
