"""Supervision masks: pixels the front end and the fit must not trust (DESIGN §3.1).

Specular highlights are saturated, view-dependent and move with the light, not with the tissue, so
flow, stereo and photometric terms there are wrong. A pixel is specular when every channel is at or
above `specular_min_value`; the mask is dilated by `dilate_px` because the halo around a highlight
is unreliable too. True means excluded.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..config import MaskConfig
from ..errors import InputError


def specular_mask(rgb_u8: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """Saturated-pixel mask of one image (H, W, 3) or a stack (T, H, W, 3); True = excluded.

    Returns:
        bool (H, W) or (T, H, W), matching the input's leading axes.
    """
    rgb_u8 = np.asarray(rgb_u8)
    if rgb_u8.ndim not in (3, 4) or rgb_u8.shape[-1] != 3 or rgb_u8.dtype != np.uint8:
        raise InputError(f"specular_mask: rgb_u8: expected uint8 (H, W, 3) or (T, H, W, 3), "
                         f"got {rgb_u8.dtype} {rgb_u8.shape}", reason="bad_image")
    mask = np.all(rgb_u8 >= cfg.specular_min_value, axis=-1)  # (..., H, W)
    if cfg.dilate_px > 0 and mask.any():
        side = 2 * cfg.dilate_px + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
        # Dilate frame by frame: stacking frames into one image would bleed across frame borders.
        frames = mask.reshape((-1,) + mask.shape[-2:]).astype(np.uint8)
        mask = np.stack([cv2.dilate(f, kernel) for f in frames]).reshape(mask.shape).astype(bool)
    return mask
