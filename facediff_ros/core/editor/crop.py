"""The editor's working space: a square, axis-aligned face crop that maps exactly to the image.

A :class:`FaceCrop` is fixed by the face centre in the camera frame (REP-103 optical: x right, y
down, z forward, metres; the editor uses the centroid of the fitted mesh's 68 landmark vertices,
between the eyes and the mouth) and the image's :class:`~facediff_ros.core.camera.Intrinsics`. Its
``size_px`` x ``size_px`` pixels cover a square of ``extent_m`` metres at the centre's depth, so a
face is the same size in the crop at any distance. Pixel centres follow the OpenCV convention of
:mod:`facediff_ros.core.camera` in both images (centres at integers), and crop pixel (x, y) sits
exactly at image coordinates::

    u = u0 + scale * x,    v = v0 + scale * y        (scale: image pixels per crop pixel)

Consequences used by the editor:

- :attr:`FaceCrop.intrinsics` are a pinhole camera of the crop itself (fx' = fx / scale,
  cx' = (cx - u0) / scale, ...), so meshes are rendered straight into crop space with the
  ordinary renderer, no image-sized buffers;
- :meth:`FaceCrop.sample_color` / :meth:`FaceCrop.sample_depth` take the crop from a camera image
  (colour anti-aliased, depth nearest so no depths are mixed across silhouettes);
- :meth:`FaceCrop.paste` / :meth:`FaceCrop.paste_depth` put an edited crop back by the inverse
  mapping, touching only the pixels its mask covers.

Depth in the network's channels is relative to the face centre: ``(z - z_centre) / depth_range_m``
clipped to [-1, 1] (:meth:`FaceCrop.normalise_depth`); pixels with no depth get
``CropConfig.hole_value`` and are reported in a validity mask beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from facediff_ros.core.camera import Intrinsics


@dataclass(frozen=True)
class CropConfig:
    """Geometry and depth normalisation of the face crop (metres, pixels)."""

    # The network's side (px). stack.md's calibration: a 0.85M-parameter UNet takes ~7 ms per
    # evaluation at 64x64 on 2 cores (40 ms at 96x96), so 4 evaluations fit the 60 ms edit at 64.
    size_px: int = 64
    # Side of the square at the face centre's depth (m). Around the ICT face's landmark centre
    # (between the eyes and the mouth) the face spans ~0.15 m cheek to cheek and ~0.11 m up to
    # the hairline / ~0.08 m down to the chin; 0.24 m keeps the whole face with a margin when the
    # head turns (+-35 deg yaw moves the far cheek ~3 cm sideways): 3.75 mm per pixel at 64.
    extent_m: float = 0.24
    # Half range of the normalised depth (m): the nose tip is ~4 cm in front of the landmark
    # centre and the far cheek and ears of a turned head ~8-10 cm behind it; 1 mm is then 0.0083.
    depth_range_m: float = 0.12
    # Normalised depth of pixels without depth (sensor holes, no surface): the far end of the
    # range, where the background (always > depth_range_m behind the face) is clipped to as well.
    # The validity mask returned beside it tells holes from background.
    hole_value: float = 1.0
    # Anti-aliasing before the bilinear resampling when the crop is coarser than the image: a
    # Gaussian of sigma aa_sigma * sqrt(scale^2 - 1) image pixels, i.e. a total footprint of
    # aa_sigma crop pixels on top of the camera's own ~aa_sigma-pixel blur (Gaussians add in
    # quadrature), continuous at scale = 1. 0.4 keeps edges sharp while averaging away most of
    # the aliasing of a 2-4x downscale.
    aa_sigma: float = 0.4

    def __post_init__(self):
        if int(self.size_px) != self.size_px or not 8 <= self.size_px <= 1024:
            raise ValueError(f"CropConfig.size_px must be an integer in [8, 1024], got {self.size_px}")
        for name in ("extent_m", "depth_range_m"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"CropConfig.{name} must be > 0 m, got {v}")
        if not np.isfinite(self.hole_value) or abs(self.hole_value) > 1:
            raise ValueError(f"CropConfig.hole_value must be in [-1, 1], got {self.hole_value}")
        if not np.isfinite(self.aa_sigma) or not 0 <= self.aa_sigma <= 2:
            raise ValueError(f"CropConfig.aa_sigma must be in [0, 2] crop pixels, got {self.aa_sigma}")


class FaceCrop:
    """A square crop of an image around a face; see the module docstring for the mapping.

    Attributes:
        config: the :class:`CropConfig`.
        image_intrinsics: the camera image's intrinsics.
        centre: (3,) float64 face centre in the camera frame (m).
        z_centre: its depth (m), the zero of the normalised depth.
        scale: image pixels per crop pixel.
        u0, v0: image coordinates of crop pixel (0, 0)'s centre.
    """

    def __init__(self, centre_cam, intrinsics: Intrinsics, config: Optional[CropConfig] = None):
        """A crop centred on the projection of ``centre_cam`` ((3,) metres, camera frame, z > 0).

        The scale uses the mean focal length, so a face spans ``extent_m`` across the crop at the
        centre's depth (with fx != fy the crop's own fx' and fy' differ the same way).
        """
        config = config if config is not None else CropConfig()
        if not isinstance(config, CropConfig):
            raise ValueError(f"config must be a CropConfig, got {type(config).__name__}")
        if not isinstance(intrinsics, Intrinsics):
            raise ValueError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        c = np.asarray(centre_cam, dtype=np.float64)
        if c.shape != (3,) or not np.all(np.isfinite(c)) or c[2] <= 0:
            raise ValueError(f"centre_cam must be a finite (3,) point with z > 0 m, got {centre_cam}")
        S = config.size_px
        scale = config.extent_m * 0.5 * (intrinsics.fx + intrinsics.fy) / c[2] / S
        uc, vc = intrinsics.project(c)
        half = 0.5 * (S - 1) * scale  # the crop's centre is between pixels (S - 1) / 2
        self._set(config, intrinsics, c, float(uc - half), float(vc - half), float(scale))

    @classmethod
    def from_mapping(cls, u0: float, v0: float, scale: float, z_centre: float, intrinsics: Intrinsics,
                     config: Optional[CropConfig] = None) -> "FaceCrop":
        """A crop given by its mapping directly (u = u0 + scale x, v = v0 + scale y); the face
        centre is taken on the ray through the crop's middle at depth ``z_centre`` (m)."""
        config = config if config is not None else CropConfig()
        vals = np.array([u0, v0, scale, z_centre], np.float64)
        if not np.all(np.isfinite(vals)) or scale <= 0 or z_centre <= 0:
            raise ValueError(f"need finite u0, v0 and scale > 0, z_centre > 0 m; got {vals.tolist()}")
        half = 0.5 * (config.size_px - 1) * scale
        centre = intrinsics.backproject(u0 + half, v0 + half, z_centre)
        crop = cls.__new__(cls)
        crop._set(config, intrinsics, centre, float(u0), float(v0), float(scale))
        return crop

    def _set(self, config, intrinsics, centre, u0, v0, scale):
        if not 0.02 < scale < 200:  # a crop 50x finer or 200x coarser than the image: a unit error
            raise ValueError(f"crop scale {scale:.4g} image px per crop px is out of range: is the face "
                             f"centre's depth ({centre[2]:.3f} m) in metres?")
        self.config = config
        self.image_intrinsics = intrinsics
        self.centre = np.asarray(centre, np.float64)
        self.z_centre = float(centre[2])
        self.u0, self.v0, self.scale = u0, v0, scale

    # ---- mapping ---------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.config.size_px)

    @property
    def shape(self) -> Tuple[int, int]:
        """(height, width) of the crop."""
        return (self.size, self.size)

    @property
    def intrinsics(self) -> Intrinsics:
        """The crop as a pinhole camera (same optical frame as the image): render meshes with it."""
        K, s = self.image_intrinsics, self.scale
        return Intrinsics(K.fx / s, K.fy / s, (K.cx - self.u0) / s, (K.cy - self.v0) / s,
                          self.size, self.size)

    @property
    def affine(self) -> np.ndarray:
        """(2, 3) float64 matrix taking crop (x, y, 1) to image (u, v)."""
        return np.array([[self.scale, 0.0, self.u0], [0.0, self.scale, self.v0]])

    def crop_to_image(self, x, y) -> Tuple[np.ndarray, np.ndarray]:
        """Crop pixel coordinates -> image pixel coordinates (u, v)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return self.u0 + self.scale * x, self.v0 + self.scale * y

    def image_to_crop(self, u, v) -> Tuple[np.ndarray, np.ndarray]:
        """Image pixel coordinates -> crop pixel coordinates (x, y)."""
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        return (u - self.u0) / self.scale, (v - self.v0) / self.scale

    def in_image(self) -> np.ndarray:
        """(S, S) bool: crop pixel centres that fall inside the image."""
        H, W = self.image_intrinsics.shape
        g = np.arange(self.size, dtype=np.float64)
        u, v = self.crop_to_image(g, g)
        inu = (u >= -0.5) & (u < W - 0.5)
        inv = (v >= -0.5) & (v < H - 0.5)
        return inv[:, None] & inu[None, :]

    # ---- taking the crop -------------------------------------------------------------------------
    @property
    def aa_sigma_px(self) -> float:
        """Gaussian pre-blur (image pixels) of :meth:`sample_color`; 0 when the crop is not coarser."""
        s = self.scale
        return self.config.aa_sigma * math.sqrt(s * s - 1.0) if s > 1.0 else 0.0

    def sample_color(self, image: np.ndarray) -> np.ndarray:
        """The crop of a colour (or any float/uint8 multi-channel) image, anti-aliased.

        Args:
            image: (H, W, C) or (H, W) uint8/uint16/float image of the intrinsics' size.

        Returns:
            (S, S, C) or (S, S) float32 in the image's own units (0..255 for uint8). Samples
            outside the image repeat its border (see :meth:`in_image`).
        """
        img = _check_image("image", image, self.image_intrinsics)
        sigma = self.aa_sigma_px
        # Only the region the samples (and their blur) reach is blurred and warped: a 186-px face
        # of a 640x480 frame costs ~10x less than the whole image.
        margin = int(math.ceil(4.0 * sigma)) + 2  # cv2's float Gaussian kernel reaches 4 sigma
        x0, x1, y0, y1 = self._roi(margin)
        roi = np.ascontiguousarray(img[y0:y1, x0:x1], dtype=np.float32)
        if sigma > 0:
            roi = cv2.GaussianBlur(roi, (0, 0), sigma)
        M = np.array([[self.scale, 0.0, self.u0 - x0], [0.0, self.scale, self.v0 - y0]])
        return cv2.warpAffine(roi, M, (self.size, self.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    def sample_depth(self, depth: np.ndarray, depth_scale: Optional[float] = None) -> np.ndarray:
        """The crop of a depth image by nearest-pixel lookup (no depth is mixed across an edge).

        Args:
            depth: (H, W) float metres (0 or NaN = no depth), or integer units with ``depth_scale``.
            depth_scale: metres per unit of an integer depth image (0.001 for RealSense z16).

        Returns:
            (S, S) float32 metres, 0 where there is no depth or the crop leaves the image.
        """
        d = np.asarray(depth)
        if d.shape != self.image_intrinsics.shape:
            raise ValueError(f"depth must be (H, W) = {self.image_intrinsics.shape} as the intrinsics, "
                             f"got {d.shape}")
        _depth_metres(d[:1, :1], depth_scale, None)  # validates dtype and scale
        H, W = d.shape
        g = np.arange(self.size, dtype=np.float64)
        u, v = self.crop_to_image(g, g)
        iu = np.floor(u + 0.5).astype(np.int64)  # nearest pixel centre
        iv = np.floor(v + 0.5).astype(np.int64)
        ok_u, ok_v = (iu >= 0) & (iu < W), (iv >= 0) & (iv < H)
        # Looked up first, converted after: the conversion is per pixel, so only S x S of them.
        out = d[np.clip(iv, 0, H - 1)[:, None], np.clip(iu, 0, W - 1)[None, :]]  # (S, S)
        z = _depth_metres(out, depth_scale, None)
        return np.where(ok_v[:, None] & ok_u[None, :], z, 0.0).astype(np.float32)

    def _roi(self, margin: int) -> Tuple[int, int, int, int]:
        """Image columns [x0, x1) and rows [y0, y1) holding the crop's samples plus a margin,
        clipped to the image (at least one pixel)."""
        H, W = self.image_intrinsics.shape
        span = self.scale * (self.size - 1)
        x0 = int(np.clip(math.floor(self.u0) - margin, 0, W - 1))
        x1 = int(np.clip(math.ceil(self.u0 + span) + margin + 1, x0 + 1, W))
        y0 = int(np.clip(math.floor(self.v0) - margin, 0, H - 1))
        y1 = int(np.clip(math.ceil(self.v0 + span) + margin + 1, y0 + 1, H))
        return x0, x1, y0, y1

    # ---- depth normalisation ---------------------------------------------------------------------
    def normalise_depth(self, depth_m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Crop depth (metres, 0/NaN = none) -> (normalised depth, validity).

        normalised = clip((z - z_centre) / depth_range_m, -1, 1); pixels without depth get
        ``hole_value``. Returns ((S, S) float32, (S, S) bool valid).
        """
        z = np.asarray(depth_m, dtype=np.float32)
        valid = np.isfinite(z) & (z > 0)
        rel = np.where(valid, z, self.z_centre) - self.z_centre  # (S, S) metres, 0 at holes
        n = np.clip(rel / self.config.depth_range_m, -1.0, 1.0)
        return np.where(valid, n, self.config.hole_value).astype(np.float32), valid

    def denormalise_depth(self, normalised: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
        """Normalised depth -> metres (float32), 0 where ``valid`` is False.

        Values at +-1 stand for "at or beyond" the range (the background is clipped there), so
        callers keep only the face (a mask) before using the depth as geometry.
        """
        n = np.clip(np.asarray(normalised, dtype=np.float32), -1.0, 1.0)
        z = self.z_centre + n * self.config.depth_range_m
        if valid is not None:
            z = np.where(np.asarray(valid, bool), z, 0.0)
        return z.astype(np.float32)

    def rgbd(self, color01: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
        """The network's 4-channel layout: (S, S, 3) colour in [0, 1] + (S, S) depth (m) ->
        (4, S, S) float32: RGB scaled to [-1, 1], then the normalised depth."""
        c = np.asarray(color01, dtype=np.float32)
        if c.shape != self.shape + (3,):
            raise ValueError(f"color01 must be {self.shape + (3,)}, got {c.shape}")
        d, _ = self.normalise_depth(depth_m)
        if d.shape != self.shape:
            raise ValueError(f"depth_m must be {self.shape}, got {d.shape}")
        out = np.empty((4,) + self.shape, np.float32)
        out[:3] = np.moveaxis(c, -1, 0) * 2.0 - 1.0  # (3, S, S)
        out[3] = d
        return out

    # ---- putting an edited crop back -------------------------------------------------------------
    def _footprint(self) -> Tuple[int, int, int, int]:
        """Image pixels [x0, x1) x [y0, y1) whose centres fall on the crop's pixel area
        (crop coordinates in [-0.5, S - 0.5)), clipped to the image; may be empty."""
        H, W = self.image_intrinsics.shape
        lo_u, lo_v = self.crop_to_image(-0.5, -0.5)
        hi_u, hi_v = self.crop_to_image(self.size - 0.5, self.size - 0.5)
        x0, y0 = max(int(math.ceil(lo_u)), 0), max(int(math.ceil(lo_v)), 0)
        x1 = min(int(math.ceil(hi_u)), W)  # exclusive: centres strictly below hi
        y1 = min(int(math.ceil(hi_v)), H)
        return x0, max(x1, x0), y0, max(y1, y0)

    def _inverse_affine(self, x0: int, y0: int) -> np.ndarray:
        """(2, 3) matrix taking footprint pixel (u - x0, v - y0) to crop coordinates."""
        s = self.scale
        return np.array([[1.0 / s, 0.0, (x0 - self.u0) / s], [0.0, 1.0 / s, (y0 - self.v0) / s]])

    def paste(self, image: np.ndarray, crop: np.ndarray, crop_mask: np.ndarray) -> np.ndarray:
        """Compose an edited crop into a copy of ``image`` by the inverse mapping.

        Each image pixel whose centre lies on the crop takes the crop bilinearly at (x, y) =
        ((u - u0) / scale, (v - v0) / scale) and blends it with alpha = the mask, also bilinear
        (a soft edge about one crop pixel wide). Pixels with alpha 0 keep their exact value.

        Args:
            image: (H, W, C) or (H, W) image (any dtype) of the intrinsics' size.
            crop: (S, S, C) or (S, S) values in the image's units (e.g. 0..255 for uint8).
            crop_mask: (S, S) bool or float alpha in [0, 1].

        Returns:
            A new image of ``image``'s shape and dtype (integers rounded and clipped).
        """
        img = _check_image("image", image, self.image_intrinsics)
        c = np.asarray(crop, dtype=np.float32)
        if c.shape != self.shape + img.shape[2:]:
            raise ValueError(f"crop must be {self.shape + img.shape[2:]} to paste into {img.shape}, "
                             f"got {c.shape}")
        a = self._alpha(crop_mask)
        out = img.copy()
        x0, x1, y0, y1 = self._footprint()
        if x1 <= x0 or y1 <= y0:
            return out
        up = self.to_footprint(c)
        alpha = self.to_footprint(a)
        if up.ndim < img.ndim:
            up = up[..., None]  # cv2 drops a single channel
        sel = alpha > 0  # (h, w): only these pixels change; the rest keep their exact values
        region = out[y0:y1, x0:x1]
        old = region[sel].astype(np.float32)  # (N, C) or (N,)
        a = alpha[sel] if img.ndim == 2 else alpha[sel][:, None]
        blended = old + a * (up[sel] - old)
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            blended = np.clip(np.rint(blended), info.min, info.max)
        region[sel] = blended.astype(img.dtype)
        return out

    def to_footprint(self, crop: np.ndarray) -> np.ndarray:
        """(S, S[, C]) float32 crop values -> (h, w[, C]) over the footprint (``paste``'s bilinear
        lookup: cv2's, border repeated); the footprint is ``FaceCrop._footprint``'s, maybe empty."""
        x0, x1, y0, y1 = self._footprint()
        if x1 <= x0 or y1 <= y0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)) + np.shape(crop)[2:], np.float32)
        return cv2.warpAffine(np.asarray(crop, np.float32), self._inverse_affine(x0, y0), (x1 - x0, y1 - y0),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def nearest_in_footprint(self) -> Tuple[np.ndarray, np.ndarray]:
        """((h,) crop rows, (w,) crop columns) nearest to each footprint pixel's centre: the lookup
        of :meth:`paste_depth` (``crop[iy[:, None], ix[None, :]]`` is the footprint's)."""
        x0, x1, y0, y1 = self._footprint()
        S = self.size
        xs, _ = self.image_to_crop(np.arange(x0, x1), 0)
        _, ys = self.image_to_crop(0, np.arange(y0, y1))
        ix = np.clip(np.floor(xs + 0.5).astype(np.int64), 0, S - 1)
        iy = np.clip(np.floor(ys + 0.5).astype(np.int64), 0, S - 1)
        return iy, ix

    def paste_depth(self, depth: np.ndarray, crop_depth_m: np.ndarray, crop_mask: np.ndarray,
                    depth_scale: Optional[float] = None) -> np.ndarray:
        """Write an edited crop depth into a copy of ``depth`` by nearest lookup (no mixing).

        Each image pixel whose centre lies on the crop takes the crop pixel nearest to
        ((u - u0) / scale, (v - v0) / scale) where that pixel's mask is set (0 m writes a hole);
        every other pixel keeps its value.

        Args:
            depth: (H, W) float metres, or integer units with ``depth_scale`` (m per unit).
            crop_depth_m: (S, S) metres, 0 = no depth.
            crop_mask: (S, S) bool (a float mask counts where >= 0.5).

        Returns:
            A new depth image of ``depth``'s dtype and units.
        """
        d = np.asarray(depth)
        if d.shape != self.image_intrinsics.shape:
            raise ValueError(f"depth must be (H, W) = {self.image_intrinsics.shape} as the intrinsics, "
                             f"got {d.shape}")
        _depth_metres(d[:1, :1], depth_scale, None)  # validates dtype and scale
        cz = np.asarray(crop_depth_m, dtype=np.float64)
        if cz.shape != self.shape:
            raise ValueError(f"crop_depth_m must be {self.shape}, got {cz.shape}")
        m = self._alpha(crop_mask) >= 0.5
        out = d.copy()
        x0, x1, y0, y1 = self._footprint()
        if x1 <= x0 or y1 <= y0:
            return out
        iy, ix = self.nearest_in_footprint()
        take = m[iy[:, None], ix[None, :]]  # (h, w) footprint
        val = cz[iy[:, None], ix[None, :]]
        if np.issubdtype(d.dtype, np.integer):
            info = np.iinfo(d.dtype)
            val = np.clip(np.rint(val / depth_scale), info.min, info.max)
        region = out[y0:y1, x0:x1]
        region[take] = val[take].astype(d.dtype)
        return out

    def _alpha(self, crop_mask) -> np.ndarray:
        a = np.asarray(crop_mask)
        if a.shape != self.shape:
            raise ValueError(f"crop_mask must be {self.shape}, got {a.shape}")
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise ValueError("crop_mask must be bool or floats in [0, 1]")
        return a

    def __repr__(self) -> str:
        return (f"FaceCrop(size={self.size}, u0={self.u0:.2f}, v0={self.v0:.2f}, scale={self.scale:.4f}, "
                f"z_centre={self.z_centre:.4f} m)")


def _check_image(name: str, image, K: Intrinsics) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.shape[:2] != K.shape:
        raise ValueError(f"{name} must be (H, W[, C]) = {K.shape} as the intrinsics, got {img.shape}")
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"{name} must hold integers or floats, got {img.dtype}")
    if img.ndim == 3 and not 1 <= img.shape[2] <= 4:
        raise ValueError(f"{name} must have 1 to 4 channels, got {img.shape[2]}")
    return img


def _depth_metres(depth, depth_scale: Optional[float], K: Optional[Intrinsics]) -> np.ndarray:
    """(H, W) depth of any supported dtype -> float32 metres with 0 for no depth (``K`` None: any
    shape, not checked)."""
    d = np.asarray(depth)
    if K is not None and d.shape != K.shape:
        raise ValueError(f"depth must be (H, W) = {K.shape} as the intrinsics, got {d.shape}")
    if np.issubdtype(d.dtype, np.integer):
        if depth_scale is None or not np.isfinite(depth_scale) or depth_scale <= 0:
            raise ValueError(f"an integer depth image ({d.dtype}) needs depth_scale > 0 (m per unit), "
                             f"got {depth_scale}")
        return d.astype(np.float32) * np.float32(depth_scale)
    if not np.issubdtype(d.dtype, np.floating):
        raise ValueError(f"depth must be float metres or integer units, got {d.dtype}")
    if depth_scale is not None and depth_scale != 1.0:
        raise ValueError("depth_scale applies to integer depth images; float depth is in metres")
    z = d.astype(np.float32)
    return np.where(np.isfinite(z) & (z > 0), z, 0.0).astype(np.float32)
