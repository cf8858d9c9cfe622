"""FaceLandmarks <-> arrays (adapters/landmarks.py): round trips, the fast builders against rclpy's own."""

import math

import numpy as np
import pytest

pytest.importorskip("rclpy")

from geometry_msgs.msg import Point  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import RegionOfInterest  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from facediff_ros.adapters import landmarks as adapter  # noqa: E402
from facediff_ros.core.landmarks.pipeline import Landmarks  # noqa: E402
from facediff_ros.msg import FaceLandmarks  # noqa: E402

N = 478


def _landmarks(seed=0, invalid=40):
    rng = np.random.default_rng(seed)
    uv = rng.uniform(0, 640, (N, 2)).astype(np.float32)
    points = rng.uniform([-0.1, -0.1, 0.4], [0.1, 0.1, 0.8], (N, 3))
    valid = np.ones(N, bool)
    valid[rng.choice(N, invalid, replace=False)] = False
    points[~valid] = np.nan
    return Landmarks(uv=uv, points=points, valid=valid, presence=0.875, bbox=(12, 34, 200, 180),
                     image_width=640, image_height=480)


def _header(frame_id="camera_color_optical_frame", sec=1234, nanosec=567_000_000):
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


def _reference_msg(lm, header):
    """The message built field by field through the generated constructors (the slow, public way)."""
    return FaceLandmarks(header=header, image_width=lm.image_width, image_height=lm.image_height,
                         u=[float(x) for x in lm.uv[:, 0]], v=[float(x) for x in lm.uv[:, 1]],
                         points=[Point(x=float(x), y=float(y), z=float(z)) if ok
                                 else Point(x=math.nan, y=math.nan, z=math.nan)
                                 for (x, y, z), ok in zip(lm.points, lm.valid)],
                         valid=[bool(v) for v in lm.valid], presence=float(lm.presence),
                         bbox=RegionOfInterest(x_offset=12, y_offset=34, width=200, height=180))


def _assert_same_landmarks(a, b):
    np.testing.assert_array_equal(a.uv, b.uv)
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.points, b.points)  # NaN == NaN for assert_array_equal
    assert (a.presence, a.bbox, a.image_width, a.image_height) == \
        (b.presence, b.bbox, b.image_width, b.image_height)


def test_round_trip_keeps_arrays_nan_points_and_invalid_flags():
    lm = _landmarks()
    msg = adapter.to_msg(lm, _header())
    assert msg.header.frame_id == "camera_color_optical_frame" and msg.header.stamp.sec == 1234
    assert len(msg.u) == len(msg.v) == len(msg.points) == len(msg.valid) == N
    back = adapter.from_msg(msg)
    _assert_same_landmarks(back, lm)
    assert np.isnan(back.points[~lm.valid]).all() and np.isfinite(back.points[lm.valid]).all()


def test_fast_message_equals_the_one_built_through_the_constructors():
    lm = _landmarks(1)
    header = _header()
    fast, ref = adapter.to_msg(lm, header), _reference_msg(lm, header)
    assert all(type(p) is Point for p in fast.points)
    # Deserialising what rclpy serialises from each gives the same content.
    a = deserialize_message(serialize_message(fast), FaceLandmarks)
    b = deserialize_message(serialize_message(ref), FaceLandmarks)
    _assert_same_landmarks(adapter.from_msg(a), adapter.from_msg(b))
    assert a.header == b.header
    # Point fields read back as set; a valid Point compares equal to the constructor's.
    i = int(np.flatnonzero(lm.valid)[0])
    assert fast.points[i] == ref.points[i]
    assert (fast.points[i].x, fast.points[i].z) == tuple(lm.points[i, [0, 2]])


@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "abcd", "camera_color_optical_frame", "kamera_é"])
def test_serialized_bytes_read_back_as_the_message(frame_id):
    """serialize() writes CDR itself: every string length exercises another alignment of what follows."""
    lm = _landmarks(2, invalid=3)
    header = _header(frame_id)
    data = adapter.serialize(lm, header)
    ref = serialize_message(_reference_msg(lm, header))
    assert isinstance(data, bytes) and len(data) == len(ref)
    msg = deserialize_message(data, FaceLandmarks)
    assert msg.header.frame_id == frame_id
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1234, 567_000_000)
    assert msg.bbox.do_rectify is False
    assert (msg.bbox.x_offset, msg.bbox.y_offset, msg.bbox.width, msg.bbox.height) == (12, 34, 200, 180)
    _assert_same_landmarks(adapter.from_msg(msg), lm)
    # Byte for byte the same as rclpy's, except the alignment padding rclpy leaves uninitialised.
    differ = [i for i in range(len(data)) if data[i] != ref[i]]
    assert all(data[i] == 0 for i in differ), differ


def test_serialize_writes_nan_for_invalid_points_whatever_they_hold():
    lm = _landmarks(3)
    points = lm.points.copy()
    points[~lm.valid] = 7.0  # an invalid landmark with numbers in it
    lm2 = Landmarks(lm.uv, points, lm.valid, lm.presence, lm.bbox, 640, 480)
    for msg in (adapter.to_msg(lm2, _header()), deserialize_message(adapter.serialize(lm2, _header()),
                                                                    FaceLandmarks)):
        assert np.isnan(adapter.from_msg(msg).points[~lm.valid]).all()


def test_wrong_lengths_and_inconsistent_messages_are_clear_value_errors():
    msg = adapter.to_msg(_landmarks(), _header())
    short = adapter.to_msg(_landmarks(), _header())
    short.u = short.u[:-1]
    with pytest.raises(ValueError, match=r"478 entries.*'u': 477"):
        adapter.from_msg(short)
    for field in ("points", "valid"):
        bad = adapter.to_msg(_landmarks(), _header())
        setattr(bad, field, list(getattr(bad, field))[:10])
        with pytest.raises(ValueError, match=f"'{field}': 10"):
            adapter.from_msg(bad)
    empty = FaceLandmarks()
    with pytest.raises(ValueError, match="478 entries"):
        adapter.from_msg(empty)
    # A point marked valid must be finite.
    i = int(np.flatnonzero(np.asarray(msg.valid))[0])
    msg.points[i] = Point(x=math.nan, y=0.0, z=0.5)
    with pytest.raises(ValueError, match=rf"points \[{i}\] are marked valid but not finite"):
        adapter.from_msg(msg)
    msg.points[i] = Point(x=math.inf, y=0.0, z=0.5)
    with pytest.raises(ValueError, match="not finite"):
        adapter.from_msg(msg)


def test_landmarks_arrays_refuse_inconsistent_shapes_and_values():
    lm = _landmarks()
    with pytest.raises(ValueError, match="expected uv"):
        Landmarks(lm.uv[:-1], lm.points, lm.valid, 0.5, lm.bbox, 640, 480)
    with pytest.raises(ValueError, match="expected uv"):
        Landmarks(lm.uv, lm.points[:, :2], lm.valid, 0.5, lm.bbox, 640, 480)
    with pytest.raises(ValueError, match="presence"):
        Landmarks(lm.uv, lm.points, lm.valid, 1.5, lm.bbox, 640, 480)
    with pytest.raises(ValueError, match="bbox"):
        Landmarks(lm.uv, lm.points, lm.valid, 0.5, (1, 2, 3), 640, 480)


def test_the_message_and_the_core_agree_on_the_number_of_landmarks():
    from facediff_ros.core.landmarks.face_mesh import NUM_LANDMARKS
    assert FaceLandmarks.NUM_LANDMARKS == NUM_LANDMARKS == N


# ---- deserialize: the fitting node's numpy reader of the CDR bytes --------------------------------
@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "abcd", "camera_color_optical_frame", "kamera_é"])
def test_deserialize_reads_rclpys_bytes_as_from_msg_does(frame_id):
    """Bytes written by rclpy itself (not by serialize()): header and arrays as from_msg reads the
    message rclpy deserialises; every string length shifts the alignment of what follows."""
    lm = _landmarks(4, invalid=7)
    ref_msg = _reference_msg(lm, _header(frame_id, sec=-5, nanosec=999_999_999))
    got = adapter.deserialize(serialize_message(ref_msg))
    assert got.header.frame_id == frame_id
    assert (got.header.stamp.sec, got.header.stamp.nanosec) == (-5, 999_999_999)
    _assert_same_landmarks(got.landmarks, adapter.from_msg(deserialize_message(serialize_message(ref_msg),
                                                                               FaceLandmarks)))
    assert got.landmarks.bbox == (12, 34, 200, 180)  # (x, y, width, height) as from_msg
    got.landmarks.points[0] = 1.0  # arrays of its own, not views of the received bytes


def test_deserialize_refuses_truncated_foreign_and_wrong_length_bytes():
    data = adapter.serialize(_landmarks(5), _header())
    for cut in (0, 3, 4, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError, match="FaceLandmarks"):
            adapter.deserialize(data[:cut])
    with pytest.raises(ValueError, match="little-endian"):
        adapter.deserialize(b"\x00\x00\x00\x00" + data[4:])  # big-endian encapsulation
    short = adapter.to_msg(_landmarks(5), _header())
    short.valid = short.valid[:-2]
    with pytest.raises(ValueError, match=r"478 entries.*'valid': 476"):
        adapter.deserialize(serialize_message(short))
    huge = bytearray(data)
    at = 4 + 48  # u's count: stamp 8, frame id 4 + 27 (padded to 32), width and height 8
    assert int.from_bytes(huge[at:at + 4], "little") == N
    huge[at:at + 4] = (10 ** 9).to_bytes(4, "little")
    with pytest.raises(ValueError, match="FaceLandmarks"):
        adapter.deserialize(bytes(huge))
