"""sensor_msgs/PointCloud2 <-> the structured arrays of :mod:`facediff_ros.core.cloud`.

Both directions go by the layout itself: :func:`to_pointcloud2` takes the PointField offsets and
``point_step`` from the array's dtype (so the compact 16-byte and depth_image_proc's 32-byte
layouts go through it alike) and :func:`from_pointcloud2` builds the dtype from the message's
fields.
"""

from __future__ import annotations

import array
from typing import List

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.cloud import depth_to_cloud, layout_dtype

XYZRGB_NAMES = ("x", "y", "z", "rgb")
_FLOAT32 = np.dtype("<f4")


def _check_xyzrgb(dtype: np.dtype) -> None:
    if dtype.names is None or tuple(dtype.names) != XYZRGB_NAMES:
        raise ValueError(f"cloud must be a structured array with fields {XYZRGB_NAMES}, got {dtype}")
    for name in XYZRGB_NAMES:
        if dtype.fields[name][0] != _FLOAT32:
            raise ValueError(f"cloud field {name!r} must be little-endian float32, "
                             f"got {dtype.fields[name][0]}")


def point_fields(dtype: np.dtype) -> List[PointField]:
    """The PointFields (name, offset, FLOAT32, count 1) of an XYZRGB structured dtype."""
    _check_xyzrgb(dtype)
    return [PointField(name=n, offset=int(dtype.fields[n][1]), datatype=PointField.FLOAT32, count=1)
            for n in XYZRGB_NAMES]


def to_pointcloud2(cloud: np.ndarray, header: Header) -> PointCloud2:
    """Build a PointCloud2 from an XYZRGB structured array of shape (H, W) or (N,).

    Field offsets and ``point_step`` are the dtype's (its itemsize; padding travels as it is in
    the array). ``data`` is assigned from the array's bytes: filling it element by element costs
    seconds for a 640x480 cloud.
    """
    fields = point_fields(cloud.dtype)
    if cloud.ndim not in (1, 2):
        raise ValueError(f"cloud must be (H, W) or (N,), got shape {cloud.shape}")
    height, width = (cloud.shape if cloud.ndim == 2 else (1, cloud.shape[0]))
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = int(height), int(width)
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = int(cloud.dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = bool(np.isfinite(cloud["z"]).all())
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(cloud).view(np.uint8).reshape(-1))  # one copy (bytes: two)
    msg.data = data
    return msg


def depth_cloud_msg(depth_m: np.ndarray, intrinsics: Intrinsics, colors: np.ndarray, layout: str,
                    header: Header) -> PointCloud2:
    """The organised PointCloud2 of a depth image (m) and its registered RGB colours.

    Equal to ``to_pointcloud2(depth_to_cloud(depth_m, intrinsics, colors, layout), header)``, but
    the points are written into the message's own (zeroed) ``data`` buffer: no copy of the cloud
    (9.8 MB at 640x480 in depth_image_proc's layout).
    """
    dtype = layout_dtype(layout)
    h, w = intrinsics.shape  # depth_to_cloud checks depth_m against it
    data = array.array("B", [0]) * (h * w * dtype.itemsize)
    cloud = np.frombuffer(data, dtype=dtype).reshape(h, w)  # a view: writes land in ``data``
    depth_to_cloud(depth_m, intrinsics, colors, layout, out=cloud)
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = int(h), int(w)
    msg.fields = point_fields(dtype)
    msg.is_bigendian = False
    msg.point_step = int(dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = bool(np.isfinite(cloud["z"]).all())
    msg.data = data
    return msg


def from_pointcloud2(msg: PointCloud2) -> np.ndarray:
    """Read a little-endian XYZRGB float32 PointCloud2 into a structured array, by its own fields.

    The dtype has the message's offsets and ``point_step`` as itemsize, so either layout of
    :mod:`facediff_ros.core.cloud` (or any other placement of these four fields) reads back.

    Raises:
        ValueError: other fields, types, endianness, or sizes that do not add up.
    """
    fields = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    names = tuple(f[0] for f in fields)
    offsets = sorted(o for _, o, _, _ in fields)
    ok = (names == XYZRGB_NAMES and not msg.is_bigendian
          and all(d == PointField.FLOAT32 and c == 1 and 0 <= o and o + 4 <= msg.point_step
                  for _, o, d, c in fields)
          and all(b - a >= 4 for a, b in zip(offsets, offsets[1:])))  # no two fields overlap
    if not ok:
        raise ValueError(f"not a little-endian XYZRGB float32 cloud: fields {fields}, "
                         f"point_step {msg.point_step}")
    if msg.row_step != msg.point_step * msg.width or len(msg.data) != msg.row_step * msg.height:
        raise ValueError(f"cloud size mismatch: {msg.height}x{msg.width} points, row_step "
                         f"{msg.row_step}, {len(msg.data)} bytes")
    dtype = np.dtype({"names": list(names), "formats": [_FLOAT32] * 4,
                      "offsets": [o for _, o, _, _ in fields], "itemsize": int(msg.point_step)})
    arr = np.frombuffer(msg.data, dtype=dtype)
    return arr.reshape(msg.height, msg.width) if msg.height > 1 else arr
