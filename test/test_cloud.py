"""XYZRGB cloud arrays against values computed by hand (the DDS test only compares the code with itself)."""

import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.cloud import (XYZRGB32_DTYPE, XYZRGB32_FIELDS, XYZRGB_DTYPE, depth_to_points,
                                     pack_rgb, unpack_rgb, valid_points, xyzrgb_cloud)

# depth_image_proc's point_cloud_xyzrgb: PointCloud2Modifier::setPointCloud2FieldsByString(2, "xyz",
# "rgb") gives x 0, y 4, z 8 (float32), 4 bytes padding, rgb 16 (float32, 0x00RRGGBB), 12 bytes
# padding, point_step 32 (PCL's PointXYZRGB). Written out here, not taken from the package.
DEPTH_IMAGE_PROC_FIELDS = [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 16, 7, 1)]
DEPTH_IMAGE_PROC_POINT_STEP = 32


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


def test_depth_image_proc_layout_is_pcl_point_xyzrgb_in_32_bytes():
    assert XYZRGB32_DTYPE.itemsize == DEPTH_IMAGE_PROC_POINT_STEP
    assert [(n, XYZRGB32_DTYPE.fields[n][1]) for n in XYZRGB32_DTYPE.names] == \
        [(n, o) for n, o, _, _ in DEPTH_IMAGE_PROC_FIELDS]
    assert XYZRGB32_FIELDS == DEPTH_IMAGE_PROC_FIELDS
    pts = np.array([[1.5, -2.0, 3.25], [np.nan, np.nan, np.nan]], np.float32)
    cloud = xyzrgb_cloud(pts, np.array([[10, 20, 30], [40, 50, 60]], np.uint8), layout="depth_image_proc")
    assert cloud.dtype == XYZRGB32_DTYPE
    raw = np.frombuffer(cloud.tobytes(), np.uint8).reshape(2, 32)
    f32 = raw.view("<f4")  # (2, 8) words
    np.testing.assert_array_equal(f32[0, :3], pts[0])
    assert np.isnan(f32[1, :3]).all()
    assert f32[:, 4].view("<u4").tolist() == [0x0A141E, 0x28323C]  # rgb at byte 16
    assert (raw[:, 12:16] == 0).all() and (raw[:, 20:32] == 0).all()  # padding is zero
    with pytest.raises(ValueError, match="layout"):
        xyzrgb_cloud(pts, np.zeros((2, 3), np.uint8), layout="pcl")


def _read_by_fields(msg):
    """An independent reader: each field's float32 at its offset within each point_step record."""
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height * msg.width, msg.point_step)
    return {f.name: raw[:, f.offset:f.offset + 4].copy().view("<f4")[:, 0] for f in msg.fields}


@pytest.mark.parametrize("layout,step,rgb_offset", [("depth_image_proc", 32, 16), ("compact", 16, 12)])
def test_pointcloud2_round_trip_for_both_layouts(layout, step, rgb_offset):
    pytest.importorskip("sensor_msgs")
    from std_msgs.msg import Header

    from facediff_ros.adapters.cloud import from_pointcloud2, to_pointcloud2
    pts = np.array([[[0.1, -0.2, 0.6], [np.nan, np.nan, np.nan], [0.3, 0.4, 1.25]],
                    [[-1.0, 2.0, 3.0], [0.0, 0.0, 0.5], [np.nan, np.nan, np.nan]]], np.float32)
    colors = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 13
    msg = to_pointcloud2(xyzrgb_cloud(pts, colors, layout=layout), Header(frame_id="f"))
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (2, 3, step, 3 * step)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == \
        [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", rgb_offset, 7, 1)]
    assert not msg.is_dense and not msg.is_bigendian and len(msg.data) == 6 * step
    by_fields = _read_by_fields(msg)
    for i, axis in enumerate("xyz"):
        np.testing.assert_array_equal(by_fields[axis], pts.reshape(-1, 3)[:, i])  # NaN rows equal too
    np.testing.assert_array_equal(unpack_rgb(by_fields["rgb"]), colors.reshape(-1, 3))
    back = from_pointcloud2(msg)
    assert back.shape == (2, 3) and back.dtype.itemsize == step
    for i, axis in enumerate("xyz"):
        np.testing.assert_array_equal(back[axis], pts[..., i])
    np.testing.assert_array_equal(unpack_rgb(back["rgb"]), colors)
    # The dense form (the valid points only) of the padded layout keeps its layout.
    cloud = xyzrgb_cloud(pts, colors, layout=layout)
    dense = to_pointcloud2(valid_points(cloud), Header())
    assert (dense.height, dense.width, dense.point_step) == (1, 4, step) and dense.is_dense
    np.testing.assert_array_equal(from_pointcloud2(dense)["z"], np.float32([0.6, 1.25, 3.0, 0.5]))
    if step == 32:
        raw = np.frombuffer(bytes(dense.data), np.uint8).reshape(4, 32)
        assert (raw[:, 12:16] == 0).all() and (raw[:, 20:] == 0).all()
