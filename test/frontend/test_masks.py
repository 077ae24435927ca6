"""Specular mask: saturated pixels and their dilated halo are excluded."""

import numpy as np
import pytest

from surg_invnerf_ros.config import MaskConfig
from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.frontend.masks import specular_mask


class TestSpecularMask:
    def test_smoke(self):
        img = np.full((48, 64, 3), 100, np.uint8)
        m = specular_mask(img, MaskConfig())
        assert m.shape == (48, 64) and m.dtype == bool and not m.any()
        stack = np.stack([img, img, img])
        ms = specular_mask(stack, MaskConfig())
        assert ms.shape == (3, 48, 64) and ms.dtype == bool

    def test_known_values(self):
        img = np.full((48, 64, 3), 100, np.uint8)
        img[20, 30] = 255                    # saturated in every channel: specular
        img[5, 5] = (255, 255, 200)          # one channel below the threshold: not specular
        m = specular_mask(img, MaskConfig(specular_min_value=245, dilate_px=0))
        assert m[20, 30] and not m[5, 5] and m.sum() == 1
        md = specular_mask(img, MaskConfig(specular_min_value=245, dilate_px=2))
        # Elliptic 5x5 structuring element: the 2-px neighbours along the axes are in, far corners out.
        assert md[20, 32] and md[22, 30] and md[18, 30] and not md[20, 33] and not md[5, 5]

    def test_dilation_stays_inside_its_frame(self):
        stack = np.full((2, 48, 64, 3), 100, np.uint8)
        stack[0, 47, 10] = 255               # bottom row of frame 0
        m = specular_mask(stack, MaskConfig(dilate_px=2))
        assert m[0, 47, 10] and not m[1].any()  # frame 1's top rows untouched

    def test_bad_input(self):
        with pytest.raises(InputError, match="rgb_u8"):
            specular_mask(np.zeros((48, 64), np.uint8), MaskConfig())
        with pytest.raises(InputError, match="rgb_u8"):
            specular_mask(np.zeros((48, 64, 3), np.float32), MaskConfig())
