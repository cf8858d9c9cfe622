"""sensor_msgs/PointCloud2 <-> the structured arrays of :mod:`facediff_ros.core.cloud`."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from facediff_ros.core.cloud import XYZRGB_DTYPE, XYZRGB_FIELDS


def to_pointcloud2(cloud: np.ndarray, header: Header) -> PointCloud2:
    """Build a PointCloud2 from an XYZRGB structured array of shape (H, W) or (N,).

    ``data`` is assigned from the array's bytes: filling it element by element costs seconds
    for a 640x480 cloud.
    """
    if cloud.dtype != XYZRGB_DTYPE:
        raise ValueError(f"cloud must have dtype {XYZRGB_DTYPE}, got {cloud.dtype}")
    height, width = (cloud.shape if cloud.ndim == 2 else (1, cloud.shape[0]))
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = int(height), int(width)
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in XYZRGB_FIELDS]
    msg.is_bigendian = False
    msg.point_step = XYZRGB_DTYPE.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = bool(np.isfinite(cloud["z"]).all())
    msg.data = np.ascontiguousarray(cloud).tobytes()
    return msg


def from_pointcloud2(msg: PointCloud2) -> np.ndarray:
    """Read an XYZRGB PointCloud2 (as built by :func:`to_pointcloud2`) back into an array.

    Raises:
        ValueError: other field layouts, endianness or sizes that do not add up.
    """
    fields = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    if fields != XYZRGB_FIELDS or msg.is_bigendian or msg.point_step != XYZRGB_DTYPE.itemsize:
        raise ValueError(f"not a little-endian XYZRGB float32 cloud: fields {fields}, "
                         f"point_step {msg.point_step}")
    if msg.row_step != msg.point_step * msg.width or len(msg.data) != msg.row_step * msg.height:
        raise ValueError(f"cloud size mismatch: {msg.height}x{msg.width} points, row_step "
                         f"{msg.row_step}, {len(msg.data)} bytes")
    arr = np.frombuffer(msg.data, dtype=XYZRGB_DTYPE)
    return arr.reshape(msg.height, msg.width) if msg.height > 1 else arr
