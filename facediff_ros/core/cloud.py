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

from typing import Dict, List, Tuple

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
    u, v = intrinsics.pixel_grid()
    z = np.where(depth > 0, depth, np.nan).astype(np.float32)  # NaN > 0 is False: NaN stays NaN
    x = (u - np.float32(intrinsics.cx)) * z / np.float32(intrinsics.fx)
    y = (v - np.float32(intrinsics.cy)) * z / np.float32(intrinsics.fy)
    return np.stack([x, y, z], axis=-1)  # (H, W, 3)


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...,) float32 carrying 0x00RRGGBB in its bits."""
    c = np.asarray(colors)
    if c.shape[-1:] != (3,) or c.dtype != np.uint8:
        raise ValueError(f"colors must be (..., 3) uint8, got {c.shape} {c.dtype}")
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
