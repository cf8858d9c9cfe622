"""core.cloud.depth_to_cloud (the editor node's one-pass cloud) against the pinhole model computed
here and against the two-step depth_to_points + xyzrgb_cloud, byte for byte; images.depth_mm_to_m's
table against the division it replaces."""

import numpy as np
import pytest

from facediff_ros.core import images
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.cloud import depth_to_cloud, depth_to_points, unpack_rgb, xyzrgb_cloud


@pytest.mark.parametrize("layout", ["depth_image_proc", "compact"])
def test_depth_to_cloud_is_the_back_projection_with_colours(layout):
    K = Intrinsics(fx=300.0, fy=310.0, cx=31.5, cy=20.25, width=64, height=40)
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.3, 2.0, (40, 64)).astype(np.float32)
    depth[3:6, 7:20] = 0.0
    depth[10, 10] = np.nan
    colors = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)
    cloud = depth_to_cloud(depth, K, colors, layout)
    assert cloud.shape == (40, 64)
    ok = depth > 0
    v, u = np.mgrid[0:40, 0:64].astype(np.float64)
    z = depth.astype(np.float64)
    assert np.allclose(cloud["x"][ok], ((u - K.cx) * z / K.fx)[ok], rtol=1e-6, atol=1e-7)
    assert np.allclose(cloud["y"][ok], ((v - K.cy) * z / K.fy)[ok], rtol=1e-6, atol=1e-7)
    assert np.array_equal(cloud["z"][ok], depth[ok])
    assert np.isnan(cloud["x"][~ok]).all() and np.isnan(cloud["z"][~ok]).all()
    assert np.array_equal(unpack_rgb(cloud["rgb"]), colors)
    assert cloud.tobytes() == xyzrgb_cloud(depth_to_points(depth, K), colors, layout).tobytes()
    if layout == "depth_image_proc":  # padding bytes zero
        raw = np.frombuffer(cloud.tobytes(), np.uint8).reshape(-1, 32)
        assert not raw[:, 12:16].any() and not raw[:, 20:32].any()
    with pytest.raises(ValueError, match="depth_m"):
        depth_to_cloud(depth.T, K, colors, layout)
    with pytest.raises(ValueError, match="colors"):
        depth_to_cloud(depth, K, colors[:, :, :2], layout)


def test_depth_mm_to_m_table_equals_the_division():
    mm = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    m = images.depth_mm_to_m(mm)
    expected = mm.astype(np.float32) / np.float32(1000.0)
    assert m.dtype == np.float32 and np.isnan(m[0, 0])
    assert np.array_equal(m.ravel()[1:], expected.ravel()[1:])
    m[5, 5] = 1.0  # the result is the caller's own array, not a view of the table
    assert images.depth_mm_to_m(mm)[5, 5] == expected[5, 5]


@pytest.mark.parametrize("layout", ["depth_image_proc", "compact"])
def test_depth_cloud_msg_equals_the_two_step_message(layout):
    pytest.importorskip("rclpy")
    from std_msgs.msg import Header

    from facediff_ros.adapters.cloud import depth_cloud_msg, from_pointcloud2, to_pointcloud2
    K = Intrinsics(fx=200.0, fy=200.0, cx=15.5, cy=11.5, width=32, height=24)
    rng = np.random.default_rng(2)
    depth = rng.uniform(0.5, 1.5, (24, 32)).astype(np.float32)
    colors = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    h = Header(frame_id="cam")
    h.stamp.sec = 7
    for holes in (False, True):
        if holes:
            depth[0, :5] = 0.0
        msg = depth_cloud_msg(depth, K, colors, layout, h)
        ref = to_pointcloud2(xyzrgb_cloud(depth_to_points(depth, K), colors, layout), h)
        assert bytes(msg.data) == bytes(ref.data)
        for f in ("height", "width", "point_step", "row_step", "is_dense", "is_bigendian", "fields",
                  "header"):
            assert getattr(msg, f) == getattr(ref, f), f
        assert msg.is_dense is (not holes)
        assert np.array_equal(from_pointcloud2(msg)["z"], depth_to_points(depth, K)[..., 2], equal_nan=True)
    with pytest.raises(ValueError, match="depth_m"):
        depth_cloud_msg(depth[:, :10], K, colors, layout, h)
