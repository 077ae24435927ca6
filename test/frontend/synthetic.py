"""Synthetic textures and exactly translated videos for the front-end tests (numpy + OpenCV only)."""

from __future__ import annotations

import cv2
import numpy as np

W, H = 64, 48


def texture(height: int, width: int, seed: int = 0, sigma_px: float = 1.5) -> np.ndarray:
    """(H, W, 3) float32 blurred noise stretched to 0..255: corners everywhere, no repeats."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), sigma_px)
    return 255 * (img - img.min()) / (img.max() - img.min())


def view(tex: np.ndarray, du_px: float, dv_px: float, width: int = W, height: int = H, off_px: int = 60) -> np.ndarray:
    """(H, W, 3) uint8 window of `tex` whose content moved by (du, dv): view(x) = tex(x + off − d)."""
    M = np.float32([[1, 0, -(off_px - du_px)], [0, 1, -(off_px - dv_px)]])
    out = cv2.warpAffine(tex, M, (width, height), flags=cv2.INTER_CUBIC)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def translated_video(num_frames: int, vel_px: tuple[float, float], seed: int = 0,
                     width: int = W, height: int = H) -> np.ndarray:
    """(T, H, W, 3) uint8 frames whose content moves by `vel_px` per frame: x_t = x_0 + t·vel."""
    tex = texture(height + 200, width + 200, seed)
    return np.stack([view(tex, t * vel_px[0], t * vel_px[1], width, height) for t in range(num_frames)])


def translated_truth(query_tuv: np.ndarray, num_frames: int, vel_px: tuple[float, float]) -> np.ndarray:
    """(T, N, 2) true positions of queries (frame, u, v) in `translated_video`."""
    t = np.arange(num_frames)[:, None] - query_tuv[None, :, 0]  # (T, N)
    return query_tuv[None, :, 1:3] + t[..., None] * np.asarray(vel_px)


def remapped_view(tex: np.ndarray, shift_px: np.ndarray, off_px: int = 60) -> np.ndarray:
    """(H, W, 3) uint8 image(x) = tex(x + off + shift(x)) for a per-pixel (H, W, 2) shift field.

    With `view(tex, 0, 0)` as the other image, `shift` is the exact flow from this image to it
    (a disparity d is the shift (−d, 0)): the ground truth of non-rigid motion and curved surfaces.
    """
    height, width = shift_px.shape[:2]
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    out = cv2.remap(tex, u + off_px + shift_px[..., 0], v + off_px + shift_px[..., 1], cv2.INTER_CUBIC)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def wavy_field(width: int, height: int, amp_u_px: float, amp_v_px: float) -> np.ndarray:
    """(H, W, 2) float32 smooth shift field, a few px over tens of px (tissue-like deformation)."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return np.stack([amp_u_px * np.sin(2 * np.pi * v / 32), amp_v_px * np.cos(2 * np.pi * u / 36)], -1)


def curved_disparity_px() -> np.ndarray:
    """(96, 128) disparity 15.5-20.5 px varying over tens of px: a curved surface."""
    u, v = np.meshgrid(np.arange(128, dtype=np.float32), np.arange(96, dtype=np.float32))
    return 18 + 2.5 * np.sin(2 * np.pi * u / 48) + 1.5 * np.cos(2 * np.pi * v / 40)


def curved_surface_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left and right 128×96 views of a smooth texture (`seed`) at `curved_disparity_px`."""
    tex = texture(296, 328, seed=seed, sigma_px=3.0)
    d_px = curved_disparity_px()
    return remapped_view(tex, np.stack([-d_px, np.zeros_like(d_px)], -1)), view(tex, 0, 0, 128, 96)
