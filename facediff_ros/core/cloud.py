"""Point clouds as numpy arrays for an XYZRGB PointCloud2.

Each point holds x, y, z as float32 metres in the camera optical frame (REP-103: x right, y down,
z forward) and rgb as the float32 whose bit pattern is 0x00RRGGBB (the PCL/rviz convention), in
one of two layouts (:data:`LAYOUTS`):

- ``"depth_image_proc"``: depth_image_proc's point_cloud_xyzrgb
  (``PointCloud2Modifier::setPointCloud2FieldsByString(2, "xyz", "rgb")``, PCL's PointXYZRGB):
  x, y, z at 0, 4, 8, 4 bytes of padding, rgb at 16, 12 bytes of padding; 32 bytes a point.
- ``"compact"``: x, y, z, rgb at 0, 4, 8, 12; 16 bytes a point (half the bytes on the wire).

Padding bytes are zero. Readers that go by the field offsets (rviz, ``read_points``) take both.
Invalid pixels
keep their slot with NaN coordinates, so an organised cloud has height x width points and
``is_dense`` false (like depth_image_proc's point_cloud_xyzrgb).
"""

from __future__ import annotations

import sys
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from facediff_ros.core.camera import Intrinsics

XYZRGB_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4")])
# (name, byte offset, datatype, count) with datatype 7 = sensor_msgs/PointField.FLOAT32.
XYZRGB_FIELDS: List[Tuple[str, int, int, int]] = [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1),
                                                  ("rgb", 12, 7, 1)]
# depth_image_proc's / PCL's PointXYZRGB: explicit offsets, itemsize 32 (the gaps are padding).
XYZRGB32_DTYPE = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4"] * 4,
                           "offsets": [0, 4, 8, 16], "itemsize": 32})
XYZRGB32_FIELDS: List[Tuple[str, int, int, int]] = [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1),
                                                    ("rgb", 16, 7, 1)]
# layout name -> (structured dtype, PointField list)
LAYOUTS: Dict[str, Tuple[np.dtype, List[Tuple[str, int, int, int]]]] = {
    "depth_image_proc": (XYZRGB32_DTYPE, XYZRGB32_FIELDS),
    "compact": (XYZRGB_DTYPE, XYZRGB_FIELDS),
}


def layout_dtype(layout: str) -> np.dtype:
    """The structured dtype of ``layout`` (ValueError: unknown name)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout][0]


def depth_to_points(depth_m: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Back-project a z-depth image (metres; 0 or NaN = no measurement) to (H, W, 3) points.

    Pixels without depth get NaN coordinates.
    """
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.shape != intrinsics.shape:
        raise ValueError(f"depth_m has shape {depth.shape}, the intrinsics expect {intrinsics.shape}")
    return cv2.merge(list(_xyz(depth, intrinsics)))  # (H, W, 3)


def _xyz(depth: np.ndarray, intrinsics: Intrinsics):
    """(x, y, z) float32 (H, W) arrays of the back-projection of float32 ``depth`` (m; NaN where none).

    A pixel row / column of coordinates broadcasts over the image (no (H, W) pixel grid per
    frame); the arithmetic is (u - cx) * z / fx in float32.
    """
    u = np.arange(intrinsics.width, dtype=np.float32) - np.float32(intrinsics.cx)   # (W,)
    v = (np.arange(intrinsics.height, dtype=np.float32) - np.float32(intrinsics.cy))[:, None]  # (H, 1)
    with np.errstate(invalid="ignore"):
        z = np.where(depth > 0, depth, np.float32(np.nan))  # NaN > 0 is False: NaN stays NaN
    x = u * z
    x /= np.float32(intrinsics.fx)
    y = v * z
    y /= np.float32(intrinsics.fy)
    return x, y, z


def depth_to_cloud(depth_m: np.ndarray, intrinsics: Intrinsics, colors: np.ndarray,
                   layout: str = "compact", out: Optional[np.ndarray] = None) -> np.ndarray:
    """``xyzrgb_cloud(depth_to_points(depth_m, intrinsics), colors, layout)`` in one pass.

    (H, W) structured cloud of a depth image (m; 0 or NaN = none: NaN points) and its registered
    (H, W, 3) uint8 RGB colours, written straight into the point slots (no (H, W, 3) points array
    in between: the per-frame cost of the editor node's cloud); equal byte for byte.

    :param out: an (H, W) C-contiguous array of the layout's dtype to fill instead of a new one
        (e.g. a view of a message's own buffer, which saves copying the cloud); its padding bytes
        are left as they are, so pass it zeroed.
    """
    dtype = layout_dtype(layout)
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.shape != intrinsics.shape:
        raise ValueError(f"depth_m has shape {depth.shape}, the intrinsics expect {intrinsics.shape}")
    c = np.asarray(colors)
    if c.shape != depth.shape + (3,):
        raise ValueError(f"colors must be {depth.shape + (3,)} uint8, got {c.shape}")
    if out is None:
        out = np.empty(depth.shape, dtype=dtype)  # every byte is written below, padding too
    elif out.dtype != dtype or out.shape != depth.shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {depth.shape} array of the {layout} dtype, got "
                         f"{out.shape} {out.dtype}")
    # Each point as float32 words: x y z rgb at their offsets, zero planes for the padding; one
    # interleaving pass (cv2.merge) instead of one strided pass per field.
    zero = np.zeros(depth.shape, np.float32)
    planes = [zero] * (dtype.itemsize // 4)
    for name, plane in zip(("x", "y", "z", "rgb"), _xyz(depth, intrinsics) + (pack_rgb(c),)):
        planes[dtype.fields[name][1] // 4] = plane
    words = out.view(np.float32).reshape(depth.shape + (len(planes),))
    merged = cv2.merge(planes, words)
    if not np.shares_memory(merged, words):  # OpenCV made its own array: copy it in
        words[...] = merged
    return out


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...,) float32 carrying 0x00RRGGBB in its bits."""
    c = np.asarray(colors)
    if c.shape[-1:] != (3,) or c.dtype != np.uint8:
        raise ValueError(f"colors must be (..., 3) uint8, got {c.shape} {c.dtype}")
    if c.ndim == 3 and c.size and sys.byteorder == "little":
        # B G R A bytes read as a little-endian uint32 are 0xAARRGGBB; clear A (10x the numpy way).
        bgra = cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2BGRA).view(np.uint32)[..., 0]
        bgra &= np.uint32(0x00FFFFFF)
        return bgra.view(np.float32)
    packed = (c[..., 0].astype(np.uint32) << 16) | (c[..., 1].astype(np.uint32) << 8) | c[..., 2]
    return packed.view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb`: (...,) float32 -> (..., 3) uint8."""
    bits = np.ascontiguousarray(rgb, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1).astype(np.uint8)


def xyzrgb_cloud(points: np.ndarray, colors: np.ndarray, layout: str = "compact") -> np.ndarray:
    """Structured XYZRGB array from (..., 3) float points (m) and (..., 3) uint8 colours.

    The leading shape is kept: (H, W) for an organised cloud, (N,) for an unorganised one.
    ``layout``: ``"compact"`` (16 bytes a point) or ``"depth_image_proc"`` (32 bytes, zero padding).
    """
    dtype = layout_dtype(layout)
    p = np.asarray(points)
    if p.shape[-1:] != (3,):
        raise ValueError(f"points must be (..., 3), got {p.shape}")
    if np.asarray(colors).shape != p.shape:
        raise ValueError(f"colors must have the shape of points {p.shape}, got {np.asarray(colors).shape}")
    out = np.zeros(p.shape[:-1], dtype=dtype)  # zeros: the padding bytes too
    out["x"], out["y"], out["z"] = p[..., 0], p[..., 1], p[..., 2]
    out["rgb"] = pack_rgb(colors)
    return out


def valid_points(cloud: np.ndarray) -> np.ndarray:
    """(N,) the points of ``cloud`` with a finite z, row-major order, padding bytes zero.

    (Boolean indexing of a padded structured array leaves its padding bytes undefined, so the
    fields are copied one by one into a zeroed array.)
    """
    mask = np.isfinite(cloud["z"])
    out = np.zeros(int(mask.sum()), dtype=cloud.dtype)
    for name in cloud.dtype.names:
        out[name] = cloud[name][mask]
    return out
