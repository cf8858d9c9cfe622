"""Detail-preserving paste: the person's own full-resolution pixels plus the network's coarse correction.

The network works on a 64 px crop covering ~0.24 m, about a third of a 640x480 frame's resolution
at the face (3.75 mm per crop pixel at 0.6 m against ~1.3 mm per image pixel). Pasting its output
back upsamples it, so the whole face comes out blurred, and the blur, not the expression, moves
dlib's identity distance. Most of the network's job is at its own scale or coarser (shading, the
mouth interior, disocclusions); the finer detail of the warped skin is the person's own. So a
two-band (Laplacian) composition on the image's own pixels inside the crop's footprint:

    out = warp_img + up(G * (edit - down(warp_img)))    where the warp has the person's colour
    out = up(edit)                                      where it has not (mouth interior,
                                                        disocclusions, background)

- ``warp_img`` (:func:`image_warp`): the model-only warp
  (:func:`~facediff_ros.core.editor.warp.warp_source`) at the image's resolution. The warp's
  per-pixel source lookup (``WarpBuffers.source_xy``) is a smooth field (the mesh is piecewise
  planar, its triangles several crop pixels wide), so it is upsampled bilinearly to each image
  pixel and the camera image itself is sampled there -- one remap instead of rendering both meshes
  and re-running the visibility tests at ~200 px. An image pixel is valid where all four crop
  pixels it interpolates are (the warp's own visibility).
- ``down``: the crop's own sampling (:meth:`FaceCrop.sample_color`: the same anti-aliasing blur,
  then bilinear at the crop's pixel centres), normalised over the valid pixels, so for an
  unchanged expression ``down(warp_img)`` is the network's colour input itself;
- ``G``: an optional Gaussian low-pass of the correction (crop pixels, normalised over the crop
  pixels it is known at): the network's output is softer than its input at its own scale, and its
  full correction would cancel the person's detail near the 64 px Nyquist;
- ``up``: bilinear at each image pixel's crop coordinates (the plain paste's interpolation).

The two regions blend over one crop pixel inside the valid region (no seam at the mouth). Depth
keeps the network's 64 px path (the sensor's detail at the face is noise, not identity).
"""

from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

from facediff_ros.core.editor.crop import FaceCrop
from facediff_ros.core.editor.warp import WarpBuffers

Box = Tuple[int, int, int, int]  # image columns [x0, x1) and rows [y0, y1)


def footprint(crop: FaceCrop) -> Box:
    """The image pixels whose centres lie on the crop (``FaceCrop.paste``'s), may be empty."""
    return crop._footprint()


def _taps(lo: int, hi: int, origin: float, scale: float, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of image pixels lo..hi-1 from crop pixels at crop coordinate
    (p - origin) / scale, the crop's border repeated: (first tap (n,) int, weight of the second
    tap (n,) float64)."""
    c = np.clip((np.arange(lo, hi, dtype=np.float64) - origin) / scale, 0.0, size - 1.0)
    i0 = np.clip(np.floor(c).astype(np.int64), 0, max(size - 2, 0))
    return i0, c - i0


def upsample_to_image(crop: FaceCrop, values: np.ndarray) -> np.ndarray:
    """(S, S[, C]) crop values -> (h, w[, C]) float32 over the :func:`footprint`, bilinear at each
    image pixel's crop coordinates (u - u0) / scale (border repeated), as ``FaceCrop.paste`` but
    with exact weights: cv2's warpAffine rounds the position to 1/32 of a crop pixel (~0.1-0.2
    image pixel), which the lookups of :func:`image_warp` cannot afford. Separable, two taps per
    axis (gathers, no BLAS: its threads cost more than these small products)."""
    x0, x1, y0, y1 = footprint(crop)
    v = np.asarray(values, dtype=np.float32)
    S = crop.size
    iy, fy = _taps(y0, y1, crop.v0, crop.scale, S)
    ix, fx = _taps(x0, x1, crop.u0, crop.scale, S)
    tail = (1,) * (v.ndim - 2)
    iy1, ix1 = np.minimum(iy + 1, S - 1), np.minimum(ix + 1, S - 1)
    fy = fy.astype(np.float32).reshape((-1, 1) + tail)
    fx = fx.astype(np.float32).reshape((1, -1) + tail)
    rows = v[iy] + fy * (v[iy1] - v[iy])  # (h, S[, C])
    # a + fx * (b - a), in place on np.take's gathers (1.7x faster than fancy indexing along axis 1
    # and fresh temporaries; the same float32 operations).
    out = np.take(rows, ix, axis=1)  # (h, w[, C])
    diff = np.take(rows, ix1, axis=1)
    diff -= out
    diff *= fx
    out += diff
    return out


def downsample_to_crop(crop: FaceCrop, values: np.ndarray,
                       weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The crop's sampling (:meth:`FaceCrop.sample_color`: anti-aliasing blur, bilinear at the
    crop's pixel centres) of footprint values, normalised by ``weights``.

    Args:
        values: (h, w, C) over the :func:`footprint`.
        weights: (h, w) in [0, 1] (0: the value is not to be used).

    Returns:
        ((S, S, C) float32 weighted mean, 0 where no weight reaches; (S, S) float32 the weight
        reaching each crop pixel, in [0, 1]).
    """
    x0, x1, y0, y1 = footprint(crop)
    S = crop.size
    val = np.asarray(values, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    C = val.shape[2]
    num = val * w[..., None]
    sigma = crop.aa_sigma_px
    if sigma > 0:
        # Outside the footprint nothing is known (weight 0): zero padding, not a repeated border.
        num = cv2.GaussianBlur(num, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        w = cv2.GaussianBlur(w, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    M = np.array([[crop.scale, 0.0, crop.u0 - x0], [0.0, crop.scale, crop.v0 - y0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    num_c = cv2.warpAffine(np.ascontiguousarray(num), M, (S, S), flags=flags,
                           borderMode=cv2.BORDER_CONSTANT).reshape(S, S, C)
    den_c = cv2.warpAffine(np.ascontiguousarray(w), M, (S, S), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    mean = np.where(den_c[..., None] > 1e-6, num_c / np.maximum(den_c, 1e-6)[..., None], 0.0)
    return mean.astype(np.float32), np.clip(den_c, 0.0, 1.0).astype(np.float32)


def image_warp(image: np.ndarray, crop: FaceCrop, warp: WarpBuffers) -> Tuple[np.ndarray, np.ndarray]:
    """The model-only warp at the image's resolution over the crop's :func:`footprint`.

    Args:
        image: (H, W, C) the camera image (uint8 or float) the crop was taken from.
        crop: the network's crop.
        warp: its :class:`WarpBuffers` (``source_xy``: the source crop coordinates each target
            pixel looks up; ``valid``: where that lookup shows the target surface).

    Returns:
        ((h, w, C) float32 image colour at the upsampled lookups, in the image's units (0 where
        not valid), (h, w) bool valid).
    """
    img = np.asarray(image)
    if warp.valid.shape != crop.shape or warp.source_xy.shape != crop.shape + (2,):
        raise ValueError(f"warp buffers must be of the crop's shape {crop.shape}, got {warp.valid.shape}")
    if img.ndim != 3 or img.shape[:2] != crop.image_intrinsics.shape:
        raise ValueError(f"image must be (H, W, C) = {crop.image_intrinsics.shape} as the crop's camera, "
                         f"got {img.shape}")
    ok = warp.valid & np.all(np.isfinite(warp.source_xy), axis=-1)
    # (S, S, 3): the lookups (crop px, 0 where not valid) and the 0/1 validity, upsampled at once
    # (the same arithmetic per channel as one call each).
    stacked = np.concatenate([np.where(ok[..., None], warp.source_xy, 0.0), ok[..., None]], -1)
    up = upsample_to_image(crop, stacked.astype(np.float32))  # (h, w, 3)
    # Valid where every crop pixel the bilinear upsampling reads is (up() of the 0/1 mask is 1).
    valid = up[..., 2] > 1.0 - 1e-4  # (h, w)
    map_u = (crop.u0 + crop.scale * up[..., 0]).astype(np.float32)  # image px
    map_v = (crop.v0 + crop.scale * up[..., 1]).astype(np.float32)
    if valid.size == 0:
        return np.zeros(valid.shape + (img.shape[2],), np.float32), valid
    # Only the image rows and columns the lookups reach (and their bilinear neighbours) are
    # converted to float. Shifting the maps by whole pixels is exact in float32, and the window
    # reaches the image's border wherever a lookup does, so its repeated border is the image's.
    H, W = img.shape[:2]
    lx = int(np.clip(np.floor(map_u.min()) - 1, 0, W - 1))
    hx = int(np.clip(np.ceil(map_u.max()) + 2, lx + 1, W))
    ly = int(np.clip(np.floor(map_v.min()) - 1, 0, H - 1))
    hy = int(np.clip(np.ceil(map_v.max()) + 2, ly + 1, H))
    window = np.ascontiguousarray(img[ly:hy, lx:hx], dtype=np.float32)
    colour = cv2.remap(window, map_u - np.float32(lx), map_v - np.float32(ly), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE).reshape(valid.shape + (img.shape[2],))
    return np.where(valid[..., None], colour, 0.0).astype(np.float32), valid


def detail_compose(crop: FaceCrop, warp_img: np.ndarray, valid_img: np.ndarray, edit: np.ndarray,
                   sigma: float = 0.0) -> np.ndarray:
    """The two-band composition of the module docstring over the crop's :func:`footprint`.

    Args:
        crop: the network's crop.
        warp_img: (h, w, C) float warped source colour (:func:`image_warp`; unread where not valid).
        valid_img: (h, w) bool: warp_img holds the person's colour there.
        edit: (S, S, C) float the network's output, same units as warp_img.
        sigma: Gaussian low-pass of the correction (crop pixels; 0: none).

    Returns:
        (h, w, C) float32: ``warp_img + up(G * (edit - down(warp_img)))`` on the valid pixels at
        least one crop pixel (``scale`` image pixels) inside the valid region, ``up(edit)`` off
        it, blended linearly over the crop pixel between (by the distance to the nearest invalid
        pixel).
    """
    x0, x1, y0, y1 = footprint(crop)
    h, w = y1 - y0, x1 - x0
    S = crop.size
    e = np.asarray(edit, dtype=np.float32)
    if e.ndim != 3 or e.shape[:2] != crop.shape:
        raise ValueError(f"edit must be {crop.shape + ('C',)}, got {e.shape}")
    C = e.shape[2]
    wi = np.asarray(warp_img, dtype=np.float32)
    v = np.asarray(valid_img)
    if wi.shape != (h, w, C) or v.shape != (h, w):
        raise ValueError(f"warp_img must be {(h, w, C)} and valid_img {(h, w)} (the crop's footprint), "
                         f"got {wi.shape} and {v.shape}")
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be >= 0 crop pixels, got {sigma!r}")
    v = v.astype(bool)
    if not v.any():
        return upsample_to_image(crop, e).reshape(h, w, C)
    wv = np.where(v[..., None], wi, 0.0).astype(np.float32)
    down, cover = downsample_to_crop(crop, wv, v.astype(np.float32))
    # Crop pixels the valid pixels reach by at least half their weight: there down() is theirs.
    known = (cover > 0.5).astype(np.float32)  # (S, S)
    corr = (e - down) * known[..., None]
    if sigma > 0:
        num = cv2.GaussianBlur(corr, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE).reshape(S, S, C)
        den = cv2.GaussianBlur(known, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        corr = np.where(den[..., None] > 1e-3, num / np.maximum(den, 1e-3)[..., None], 0.0)
    else:
        # up() reads a crop pixel's neighbours: give the unknown ones next to known ones their mean
        # (normalised 3x3 box), so no zero correction leaks into the valid region.
        box = np.ones((3, 3), np.float32)
        num = cv2.filter2D(corr, -1, box, borderType=cv2.BORDER_REPLICATE).reshape(S, S, C)
        den = cv2.filter2D(known, -1, box, borderType=cv2.BORDER_REPLICATE)
        fill = (known == 0) & (den > 0)
        corr[fill] = num[fill] / den[fill][:, None]
    # One upsampling for both bands (edit and correction stacked along the channels).
    up = upsample_to_image(crop, np.concatenate([e, corr.astype(np.float32)], -1)).reshape(h, w, 2 * C)
    up_edit = up[..., :C]
    detail = wi + up[..., C:]  # (h, w, C) float32
    # Weight of the detailed band: 0 at invalid pixels, 1 from one crop pixel inside on.
    padded = np.pad(v, 1, constant_values=True).astype(np.uint8)  # the footprint's edge is not a hole
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    a = np.clip(dist / max(crop.scale, 1.0), 0.0, 1.0)[..., None]  # (h, w, 1); 0 where not valid
    # up_edit + a * (detail - up_edit), in place (the same float32 operations).
    detail -= up_edit
    detail *= a
    detail += up_edit
    return detail
