"""numpy <-> sensor_msgs/Image fields and CameraInfo <-> Intrinsics: round trips and bad input."""

import struct

import numpy as np
import pytest

from facediff_ros.core import images
from facediff_ros.core.camera import Intrinsics

RNG = np.random.default_rng(7)


def _random(encoding, h=5, w=7):
    enc = images.ENCODINGS[encoding]
    shape = (h, w) if enc.channels == 1 else (h, w, enc.channels)
    if enc.dtype == np.float32:
        return RNG.uniform(-3, 3, shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(enc.dtype).max + 1, shape, dtype=enc.dtype)


def _read(fields):
    return images.image_to_array(fields["height"], fields["width"], fields["encoding"],
                                 fields["is_bigendian"], fields["step"], fields["data"])


@pytest.mark.parametrize("encoding", list(images.ENCODINGS))
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
def test_round_trip_every_encoding_padding_and_byte_order(encoding, big, pad):
    arr = _random(encoding)
    enc = images.ENCODINGS[encoding]
    fields = images.array_to_image_fields(arr, encoding, is_bigendian=big,
                                          step=arr.shape[1] * enc.pixel_bytes + pad)
    assert fields["step"] == 7 * enc.pixel_bytes + pad
    assert len(bytes(fields["data"])) == fields["step"] * 5
    assert fields["is_bigendian"] == (big and enc.dtype.itemsize > 1)
    back = _read(fields)
    assert back.dtype == enc.dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


def test_hand_built_big_endian_padded_16uc1_is_read_as_the_bytes_say():
    # 2x3 image, 2 padding bytes per row, values written with struct (independent of the code).
    values = [[1, 256, 65535], [4660, 0, 43981]]
    data = b"".join(struct.pack(">3H", *row) + b"\xee\xee" for row in values)
    arr = images.image_to_array(2, 3, "16UC1", 1, 8, data)
    np.testing.assert_array_equal(arr, np.array(values, np.uint16))
    little = b"".join(struct.pack("<3H", *row) + b"\x00\x00" for row in values)
    np.testing.assert_array_equal(images.image_to_array(2, 3, "16UC1", 0, 8, little), values)


def test_hand_built_32fc1_with_nan_and_bgr8_channel_order():
    data = struct.pack("<4f", 0.5, float("nan"), 1.25, -2.0)
    arr = images.image_to_array(2, 2, "32FC1", 0, 8, data)
    assert arr[0, 0] == 0.5 and np.isnan(arr[0, 1]) and arr[1, 0] == 1.25 and arr[1, 1] == -2.0
    bgr = images.image_to_array(1, 2, "bgr8", 0, 6, bytes([1, 2, 3, 4, 5, 6]))
    np.testing.assert_array_equal(images.to_rgb8(bgr, "bgr8"), [[[3, 2, 1], [6, 5, 4]]])
    bgra = images.image_to_array(1, 1, "bgra8", 0, 4, bytes([10, 20, 30, 40]))
    np.testing.assert_array_equal(images.to_rgb8(bgra, "bgra8"), [[[30, 20, 10]]])
    rgba = images.image_to_array(1, 1, "rgba8", 0, 4, bytes([10, 20, 30, 40]))
    np.testing.assert_array_equal(images.to_rgb8(rgba, "rgba8"), [[[10, 20, 30]]])
    mono = images.image_to_array(1, 2, "mono8", 0, 2, bytes([9, 200]))
    np.testing.assert_array_equal(images.to_rgb8(mono, "mono8"), [[[9, 9, 9], [200, 200, 200]]])


def test_nan_survives_the_round_trip_bit_exactly():
    arr = np.array([[np.nan, 1.0], [np.inf, -0.0]], np.float32)
    back = _read(images.array_to_image_fields(arr, "32FC1", is_bigendian=True))
    assert back.tobytes() == arr.tobytes()


@pytest.mark.parametrize("kwargs, match", [
    (dict(encoding="yuv422"), "encoding"),
    (dict(encoding="16UC3"), "encoding"),
    (dict(step=10), "step"),  # 7 px * 2 B = 14 > 10
    (dict(data=b"\x00" * 69), "data"),
    (dict(data=b"\x00" * 71), "data"),
    (dict(height=-1), "height"),
])
def test_bad_fields_raise_value_error_naming_the_field(kwargs, match):
    fields = dict(height=5, width=7, encoding="16UC1", is_bigendian=0, step=14, data=b"\x00" * 70)
    fields.update(kwargs)
    with pytest.raises(ValueError, match=match):
        images.image_to_array(**fields)


def test_writing_wrong_dtype_or_shape_raises():
    with pytest.raises(ValueError, match="dtype"):
        images.array_to_image_fields(np.zeros((4, 4), np.float64), "32FC1")
    with pytest.raises(ValueError, match="shape"):
        images.array_to_image_fields(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="step"):
        images.array_to_image_fields(np.zeros((4, 4, 3), np.uint8), "rgb8", step=11)
    with pytest.raises(ValueError, match="encoding"):
        images.array_to_image_fields(np.zeros((4, 4), np.uint8), "jpeg")
    with pytest.raises(ValueError, match="colour"):
        images.to_rgb8(np.zeros((4, 4), np.uint16), "16UC1")


def test_depth_conversions_mm_and_metres_mark_invalid_consistently():
    mm = np.array([[0, 1, 600], [65535, 1234, 0]], np.uint16)
    m = images.depth_mm_to_m(mm)
    assert np.isnan(m[0, 0]) and np.isnan(m[1, 2])
    np.testing.assert_allclose(m[~np.isnan(m)], [0.001, 0.6, 65.535, 1.234], rtol=1e-6)
    np.testing.assert_array_equal(images.depth_m_to_mm(m), mm)
    odd = np.array([np.nan, np.inf, -0.5, 0.0, 0.0004, 0.0006, 70.0, 0.6004], np.float32)
    np.testing.assert_array_equal(images.depth_m_to_mm(odd), [0, 0, 0, 0, 0, 1, 0, 600])
    f = images.depth_to_meters(np.array([[0.0, -1.0, np.inf, 0.7]], np.float32), "32FC1")
    assert np.isnan(f[0, :3]).all() and f[0, 3] == np.float32(0.7)
    np.testing.assert_array_equal(images.depth_to_meters(mm, "16UC1"), m)
    with pytest.raises(ValueError, match="encoding"):
        images.depth_to_meters(mm, "rgb8")
    with pytest.raises(ValueError, match="uint16"):
        images.depth_to_meters(m, "16UC1")


def test_depth_units_to_mm_rescales_other_depth_units():
    raw = np.array([0, 4, 2400, 10], np.uint16)
    assert images.depth_units_to_mm(raw, 0.001) is raw
    np.testing.assert_array_equal(images.depth_units_to_mm(raw, 0.00025), [0, 1, 600, 2])
    with pytest.raises(ValueError, match="depth_scale"):
        images.depth_units_to_mm(raw, 0.0)


def test_camera_info_round_trip_and_matrices():
    intr = Intrinsics(615.2, 614.8, 321.4, 238.9, 640, 480)
    f = images.intrinsics_to_camera_info_fields(intr)
    assert f["distortion_model"] == "plumb_bob" and f["d"] == [0.0] * 5
    assert f["k"] == [615.2, 0.0, 321.4, 0.0, 614.8, 238.9, 0.0, 0.0, 1.0]
    assert f["r"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert f["p"] == [615.2, 0.0, 321.4, 0.0, 0.0, 614.8, 238.9, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert (f["width"], f["height"]) == (640, 480)
    assert images.camera_info_to_intrinsics(f["height"], f["width"], f["k"]) == intr
    assert not images.has_distortion(f["d"]) and images.has_distortion([0, 0.1, 0, 0, 0])


@pytest.mark.parametrize("h, w, k, match", [
    (480, 640, [0.0] * 9, "focal"),
    (480, 640, [600, 0, 320, 0, 600, 240, 0, 0], "k"),
    (480, 640, [600, 0, np.nan, 0, 600, 240, 0, 0, 1], "k"),
    (0, 640, [600, 0, 320, 0, 600, 240, 0, 0, 1], "height"),
])
def test_bad_camera_info_raises(h, w, k, match):
    with pytest.raises(ValueError, match=match):
        images.camera_info_to_intrinsics(h, w, k)


def test_ros_adapter_round_trip_and_size():
    from std_msgs.msg import Header

    from facediff_ros.adapters.images import (from_camera_info_msg, from_image_msg, to_camera_info_msg,
                                              to_image_msg)
    rgb = _random("rgb8", 48, 64)
    msg = to_image_msg(rgb, "rgb8", Header(frame_id="cam"))
    assert (msg.height, msg.width, msg.step, msg.encoding) == (48, 64, 192, "rgb8")
    assert len(msg.data) == 48 * 192 and msg.header.frame_id == "cam"
    np.testing.assert_array_equal(from_image_msg(msg), rgb)
    depth = _random("16UC1", 48, 64)
    np.testing.assert_array_equal(from_image_msg(to_image_msg(depth, "16UC1", Header())), depth)
    intr = Intrinsics(50.0, 51.0, 31.5, 23.5, 64, 48)
    info = to_camera_info_msg(intr, Header())
    assert list(info.k) == [50.0, 0.0, 31.5, 0.0, 51.0, 23.5, 0.0, 0.0, 1.0]
    assert from_camera_info_msg(info) == intr


# ---- limits checked before any library sees an image (issue 14) ------------------------------

@pytest.mark.parametrize("h, w, too_large", [
    (1, 32767, True),    # OpenCV aborts the process at a 32767 px side (SHRT_MAX)
    (32767, 1, True),
    (1, images.MAX_IMAGE_SIDE_PX + 1, True),
    (1, images.MAX_IMAGE_SIDE_PX, False),
    (images.MAX_IMAGE_SIDE_PX, images.MAX_IMAGE_PIXELS // images.MAX_IMAGE_SIDE_PX, False),
    (images.MAX_IMAGE_SIDE_PX, images.MAX_IMAGE_PIXELS // images.MAX_IMAGE_SIDE_PX + 1, True),
    (480, 640, False),
])
def test_image_size_limits(h, w, too_large):
    if too_large:
        with pytest.raises(images.ImageTooLarge, match=f"{w}x{h}"):
            images.check_image_size(h, w)
    else:
        images.check_image_size(h, w)


def test_empty_image_is_a_plain_value_error():
    for h, w in ((0, 640), (480, 0), (-1, 5)):
        with pytest.raises(ValueError, match="empty") as info:
            images.check_image_size(h, w, "colour image")
        assert not isinstance(info.value, images.ImageTooLarge)


def _k(fx=600.0, fy=600.0, cx=319.5, cy=239.5, skew=0.0, k10=0.0, last=(0.0, 0.0, 1.0)):
    return [fx, skew, cx, k10, fy, cy, *last]


@pytest.mark.parametrize("k, match", [
    (_k(fx=1e-310), "focal"),     # x ~ inf m before this check
    (_k(fx=5e-324), "focal"),     # the smallest positive double
    (_k(fx=1e-300), "focal"),     # x ~ 1e300 m
    (_k(fy=6.39), "focal"),       # just below 0.01 x 640
    (_k(fx=64001.0), "focal"),    # just above 100 x 640
    (_k(cx=1e12), "principal"),   # x ~ -2e9 m
    (_k(cx=-640.5), "principal"),
    (_k(cy=960.5), "principal"),  # 2 x 480 + 0.5
    (_k(skew=0.5), "skew"),
    (_k(k10=1.0), "last row"),
    (_k(last=(0.0, 0.0, 2.0)), "last row"),
    (_k(last=(1e-3, 0.0, 1.0)), "last row"),
])
def test_implausible_camera_matrices_are_refused(k, match):
    with pytest.raises(ValueError, match=match):
        images.camera_info_to_intrinsics(480, 640, k)


@pytest.mark.parametrize("k", [
    _k(),
    _k(fx=6.4, fy=64000.0),        # both ends of [0.01, 100] x the 640 px side
    _k(cx=-640.0, cy=960.0),       # the principal point one image size outside
    _k(cx=1280.0, cy=-480.0),
])
def test_plausible_camera_matrices_at_the_limits_pass(k):
    intr = images.camera_info_to_intrinsics(480, 640, k)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (k[0], k[4], k[2], k[5])


def test_image_fields_view_the_data_without_copying():
    rgb = _random("rgb8", 4, 6)
    f = images.ImageFields.from_array(rgb, "rgb8")
    assert (f.height, f.width, f.encoding, f.step) == (4, 6, "rgb8", 18)
    out = images.fields_to_array(f)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(f.data, np.uint8))
