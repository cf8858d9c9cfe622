"""facediff_ros/FaceLandmarks <-> :class:`facediff_ros.core.landmarks.pipeline.Landmarks` (arrays).

The landmark node publishes :func:`serialize` 's bytes (``Publisher.publish`` takes a serialized
message as ``bytes``). Measured here, per message of 478 landmarks: building the message object
(below, 0.17 ms) and ``publish(msg)`` (0.49 ms: rclpy converts the 478 Points to C one
attribute at a time) against writing the CDR bytes with numpy (~0.03 ms) and ``publish(bytes)``
(0.004 ms). The bytes are the same as ``rclpy.serialization.serialize_message(to_msg(...))``
(tested byte for byte), so subscribers cannot tell the difference.

:func:`to_msg` builds the message object for in-process users, the cheap way, measured (478
landmarks, this machine, per message):

- ``u``/``v``: an ``array.array('f')`` filled from the float32 bytes, which the generated setter
  takes as it is (a Python list is checked and converted element by element);
- ``points``: 478 ``geometry_msgs/Point``. ``Point(x=..., y=..., z=...)`` costs 0.85 ms for all
  of them (keyword parsing and three property setters each), setting the fields of ``Point()``
  the same; a bare instance with its slots written directly costs 0.07 ms. rosidl's Python
  classes store field ``x`` in the slot ``_x`` (plus ``_check_fields``), and rclpy serialises
  by reading the fields back, so the message is the same -- the round-trip and serialisation
  tests compare it with one built through the constructor. If a future rosidl changes the slots,
  :data:`_FAST_POINTS` turns false at import and the constructor is used.
- ``valid``: a list of Python bools (the setter needs ``bool`` objects; numpy's are not).
"""

from __future__ import annotations

import array
import math
import struct

import numpy as np
from geometry_msgs.msg import Point
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import Header

from facediff_ros.core.landmarks.pipeline import Landmarks
from facediff_ros.msg import FaceLandmarks

# The generated Point keeps its fields in these slots (rosidl_generator_py since Jazzy).
_FAST_POINTS = set(getattr(Point, "__slots__", ())) == {"_x", "_y", "_z", "_check_fields"}
# What the constructor would store (ROS_PYTHON_CHECK_FIELDS, read by the generated module).
_CHECK_FIELDS = Point()._check_fields if _FAST_POINTS else False


def _points(xyz: list) -> list:
    """``geometry_msgs/Point`` objects from a list of [x, y, z] Python floats."""
    if not _FAST_POINTS:
        return [Point(x=x, y=y, z=z) for x, y, z in xyz]
    new, check = Point.__new__, _CHECK_FIELDS
    out = []
    append = out.append
    for x, y, z in xyz:
        p = new(Point)
        p._x = x
        p._y = y
        p._z = z
        p._check_fields = check
        append(p)
    return out


def _float32_array(values: np.ndarray) -> array.array:
    """An array('f') (native float32, what the generated setter stores) holding ``values``."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def to_msg(lm: Landmarks, header: Header) -> FaceLandmarks:
    """The FaceLandmarks of ``lm`` with ``header`` (the colour image's: stamp and optical frame id).

    Points not ``valid`` are written as NaN (the message's convention), whatever ``lm`` holds there.
    """
    msg = FaceLandmarks()
    msg.header = header
    msg.image_width, msg.image_height = lm.image_width, lm.image_height
    msg.u = _float32_array(lm.uv[:, 0])
    msg.v = _float32_array(lm.uv[:, 1])
    pts = np.where(lm.valid[:, None], lm.points, math.nan)
    msg.points = _points(pts.tolist())
    msg.valid = lm.valid.tolist()
    msg.presence = float(lm.presence)
    x, y, w, h = lm.bbox
    msg.bbox = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)
    return msg


def from_msg(msg: FaceLandmarks) -> Landmarks:
    """The arrays of a FaceLandmarks message.

    :raises ValueError: ``u``, ``v``, ``points`` and ``valid`` not all of length NUM_LANDMARKS
        (478), a point marked valid that is not finite, presence outside [0, 1].
    """
    n = FaceLandmarks.NUM_LANDMARKS
    lengths = {"u": len(msg.u), "v": len(msg.v), "points": len(msg.points), "valid": len(msg.valid)}
    if any(v != n for v in lengths.values()):
        raise ValueError(f"FaceLandmarks: expected {n} entries in u, v, points and valid, got {lengths}")
    uv = np.empty((n, 2), np.float32)
    uv[:, 0] = np.frombuffer(msg.u, np.float32) if isinstance(msg.u, array.array) else msg.u
    uv[:, 1] = np.frombuffer(msg.v, np.float32) if isinstance(msg.v, array.array) else msg.v
    points = np.array([(p.x, p.y, p.z) for p in msg.points], np.float64).reshape(n, 3)
    b = msg.bbox
    return Landmarks(uv=uv, points=points, valid=np.array(msg.valid, bool), presence=msg.presence,
                     bbox=(b.x_offset, b.y_offset, b.width, b.height), image_width=msg.image_width,
                     image_height=msg.image_height)


# CDR as rmw_fastrtps writes it (XCDR1, little-endian): a 4-byte encapsulation header, then each
# primitive aligned to its own size counted from the end of that header; sequences and strings
# are a uint32 count followed by the elements (strings: UTF-8 bytes plus a NUL, counted).
_CDR_LE_HEADER = b"\x00\x01\x00\x00"


class _CdrWriter:
    def __init__(self):
        self.parts = [_CDR_LE_HEADER]
        self.size = 0  # bytes after the encapsulation header

    def _align(self, n: int) -> None:
        pad = -self.size % n
        if pad:
            self.parts.append(b"\x00" * pad)
            self.size += pad

    def put(self, fmt: str, *values) -> None:
        """Primitives of one size (struct format without byte order, e.g. 'iI' or 'ff').

        :raises ValueError: a value the field's type cannot hold (e.g. a negative or > 2^32 size).
        """
        try:
            data = struct.pack("<" + fmt, *values)
        except struct.error as exc:
            raise ValueError(f"FaceLandmarks: {values} do not fit CDR {fmt!r}: {exc}") from None
        self._align(struct.calcsize("<" + fmt[0]))
        self.parts.append(data)
        self.size += len(data)

    def string(self, text: str) -> None:
        # rclpy hands strings to C as NUL-terminated: a string holding a NUL ends there (fuzzing found
        # the difference; received frame ids never hold one, as they arrive through C too).
        data = text.split("\x00", 1)[0].encode("utf-8") + b"\x00"
        self.put("I", len(data))
        self.parts.append(data)
        self.size += len(data)

    def sequence(self, arr: np.ndarray, count: int, align: int) -> None:
        """A sequence of ``count`` elements whose bytes are ``arr`` (little-endian, contiguous)."""
        self.put("I", count)
        if count:
            self._align(align)
            data = arr.tobytes()
            self.parts.append(data)
            self.size += len(data)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def serialize(lm: Landmarks, header: Header) -> bytes:
    """The FaceLandmarks of ``lm`` with ``header``, serialized (CDR) as ``serialize_message`` would.

    Points not ``valid`` are written as NaN. Publish with ``publisher.publish(serialize(...))``.

    :raises ValueError: image size or bbox values outside uint32.
    """
    n = lm.uv.shape[0]
    w = _CdrWriter()
    w.put("iI", int(header.stamp.sec), int(header.stamp.nanosec))
    w.string(header.frame_id)
    w.put("II", lm.image_width, lm.image_height)
    uv = np.ascontiguousarray(lm.uv.T, dtype="<f4")  # (2, N): u then v
    w.sequence(uv[0], n, 4)
    w.sequence(uv[1], n, 4)
    w.sequence(np.where(lm.valid[:, None], lm.points, math.nan).astype("<f8", copy=False), n, 8)
    w.sequence(lm.valid.view(np.uint8), n, 1)
    x, y, bw, bh = lm.bbox
    w.put("f", lm.presence)
    w.put("IIII", x, y, bh, bw)  # RegionOfInterest: x_offset, y_offset, height, width
    w.put("?", False)            # do_rectify
    return w.bytes()


class ReceivedLandmarks:
    """A FaceLandmarks read from its CDR bytes by :func:`deserialize`: its ``header`` and arrays.

    The fitting node subscribes raw and reads the bytes with numpy: rclpy's own deserialisation
    builds 478 ``geometry_msgs/Point`` objects (1.2 ms per message measured on the loaded 2-core
    machine, plus 0.26 ms in :func:`from_msg`; ~0.05 ms this way), 30 times a second.
    """

    __slots__ = ("header", "landmarks")

    def __init__(self, header: Header, landmarks: Landmarks):
        self.header = header
        self.landmarks = landmarks


class _CdrReader:
    def __init__(self, data: bytes):
        if len(data) < 4 or data[:4] != _CDR_LE_HEADER:
            raise ValueError("FaceLandmarks: not little-endian CDR (encapsulation "
                             f"{bytes(data[:4]).hex() or 'missing'})")
        self.buf = memoryview(data)[4:]
        self.pos = 0

    def _align(self, n: int) -> None:
        self.pos += -self.pos % n

    def _take(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.buf):
            raise ValueError(f"FaceLandmarks: truncated ({len(self.buf) + 4} bytes)")
        out = self.buf[self.pos:self.pos + size]
        self.pos += size
        return out

    def get(self, fmt: str):
        self._align(struct.calcsize("<" + fmt[0]))
        return struct.unpack("<" + fmt, self._take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.get("I")
        raw = bytes(self._take(n))
        if n == 0 or raw[-1:] != b"\x00":
            raise ValueError("FaceLandmarks: a string without its terminating NUL")
        return raw[:-1].decode("utf-8", errors="replace")

    def sequence(self, dtype: str, width: int, align: int) -> np.ndarray:
        (n,) = self.get("I")
        if n:
            self._align(align)
        size = np.dtype(dtype).itemsize * width
        if n > (len(self.buf) - self.pos) // max(size, 1):
            raise ValueError(f"FaceLandmarks: a sequence of {n} elements in {len(self.buf) + 4} bytes")
        return np.frombuffer(self._take(n * size), dtype).reshape(n, width) if width > 1 else \
            np.frombuffer(self._take(n * size), dtype)


def deserialize(data: bytes) -> ReceivedLandmarks:
    """A serialized FaceLandmarks (CDR, little-endian, as :func:`serialize` and rmw_fastrtps write it)
    as its header and arrays, the inverse of :func:`serialize`.

    :raises ValueError: bytes that are not such a message (big-endian, truncated, lengths other than
        NUM_LANDMARKS, like :func:`from_msg`); callers may fall back to rclpy's deserialisation.
    """
    r = _CdrReader(data)
    header = Header()
    header.stamp.sec, header.stamp.nanosec = r.get("iI")
    header.frame_id = r.string()
    width, height = r.get("II")
    u = r.sequence("<f4", 1, 4)
    v = r.sequence("<f4", 1, 4)
    points = r.sequence("<f8", 3, 8)
    valid = r.sequence("u1", 1, 1)
    (presence,) = r.get("f")
    x, y, bh, bw = r.get("IIII")  # RegionOfInterest: x_offset, y_offset, height, width
    r.get("B")                    # do_rectify: read so that a message cut short is refused
    n = FaceLandmarks.NUM_LANDMARKS
    lengths = {"u": len(u), "v": len(v), "points": len(points), "valid": len(valid)}
    if any(k != n for k in lengths.values()):
        raise ValueError(f"FaceLandmarks: expected {n} entries in u, v, points and valid, got {lengths}")
    uv = np.stack([u, v], axis=1).astype(np.float32)
    lm = Landmarks(uv=uv, points=points.astype(np.float64), valid=valid != 0, presence=presence,
                   bbox=(x, y, bw, bh), image_width=width, image_height=height)
    return ReceivedLandmarks(header, lm)
