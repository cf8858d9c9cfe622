"""XYZRGB cloud arrays against values computed by hand (the DDS test only compares the code with itself)."""

import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.cloud import XYZRGB_DTYPE, depth_to_points, pack_rgb, unpack_rgb, xyzrgb_cloud


def test_depth_to_points_is_the_pinhole_back_projection():
    intr = Intrinsics(fx=500.0, fy=400.0, cx=2.0, cy=1.0, width=4, height=3)
    depth = np.array([[1.0, 0, 2.0, 0.5], [0.8, 0.9, np.nan, 1.1], [1.0, 1.0, 1.0, 3.0]], np.float32)
    pts = depth_to_points(depth, intr)
    assert pts.shape == (3, 4, 3)
    # pixel (u=0, v=0) at 1 m: x = (0 - 2) / 500, y = (0 - 1) / 400 (x right, y down)
    np.testing.assert_allclose(pts[0, 0], [-0.004, -0.0025, 1.0], rtol=1e-6)
    # pixel (u=3, v=2) at 3 m
    np.testing.assert_allclose(pts[2, 3], [3.0 * 1 / 500, 3.0 * 1 / 400, 3.0], rtol=1e-6)
    assert np.isnan(pts[0, 1]).all() and np.isnan(pts[1, 2]).all()  # 0 and NaN depth: no point
    with pytest.raises(ValueError, match="depth_m"):
        depth_to_points(depth.T, intr)


def test_rgb_packing_follows_the_pcl_bit_layout():
    packed = pack_rgb(np.array([[1, 2, 3], [255, 0, 128]], np.uint8))
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0x010203, 0xFF0080]
    np.testing.assert_array_equal(unpack_rgb(packed), [[1, 2, 3], [255, 0, 128]])
    with pytest.raises(ValueError, match="uint8"):
        pack_rgb(np.zeros((2, 3), np.float32))


def test_cloud_layout_is_x_y_z_rgb_in_16_bytes():
    pts = np.arange(6, dtype=np.float32).reshape(2, 3)
    cloud = xyzrgb_cloud(pts, np.array([[10, 20, 30], [40, 50, 60]], np.uint8))
    assert cloud.dtype == XYZRGB_DTYPE and XYZRGB_DTYPE.itemsize == 16
    raw = np.frombuffer(cloud.tobytes(), np.float32).reshape(2, 4)
    np.testing.assert_array_equal(raw[:, :3], pts)
    assert raw[:, 3].view(np.uint32).tolist() == [0x0A141E, 0x28323C]
