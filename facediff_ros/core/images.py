"""numpy arrays <-> the fields of sensor_msgs/Image and sensor_msgs/CameraInfo, without ROS.

The message classes themselves are built by :mod:`facediff_ros.adapters.images`; this module
only deals in plain values (ints, strings, bytes-like ``data``, numpy arrays), so it is tested
without a ROS graph and never imports rclpy.

Image layout (sensor_msgs/Image): ``height`` rows of ``step`` bytes each; a row holds ``width``
pixels of ``channels x itemsize`` bytes and may be followed by padding. Multi-byte samples are
big-endian when ``is_bigendian`` is set. Arrays here are indexed ``image[v, u]`` (row, column),
shape (height, width) for one channel and (height, width, channels) otherwise, in the host's
byte order.

Depth conventions (REP 118, realsense2_camera, depth_image_proc): ``16UC1`` in millimetres
with 0 = no measurement; ``32FC1`` in metres with NaN = no measurement (0, negative and
infinite values are read as invalid too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from facediff_ros.core.camera import Intrinsics, check_camera_matrix


@dataclass(frozen=True)
class Encoding:
    """Sample type and channel count of one sensor_msgs/Image encoding."""

    dtype: np.dtype
    channels: int

    @property
    def pixel_bytes(self) -> int:
        return self.dtype.itemsize * self.channels


# The encodings this package reads; all of them can be written too.
ENCODINGS = {
    "rgb8": Encoding(np.dtype(np.uint8), 3),
    "bgr8": Encoding(np.dtype(np.uint8), 3),
    "rgba8": Encoding(np.dtype(np.uint8), 4),
    "bgra8": Encoding(np.dtype(np.uint8), 4),
    "mono8": Encoding(np.dtype(np.uint8), 1),
    "8UC1": Encoding(np.dtype(np.uint8), 1),
    "mono16": Encoding(np.dtype(np.uint16), 1),
    "16UC1": Encoding(np.dtype(np.uint16), 1),
    "32FC1": Encoding(np.dtype(np.float32), 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
# Depth in millimetres per unit of a 16-bit depth image (REP 118).
MM_PER_M = 1000.0

# Largest image this package hands to a library. OpenCV aborts the whole process (SIGABRT, which
# no ``except`` catches) when an image side reaches 32767 px (SHRT_MAX, e.g. ``remap``'s
# ``dst.cols < SHRT_MAX``), and MediaPipe's face mesh graph reaches that code; half of it leaves
# room for any internal 2x upscaling. Pixels: 32 Mpx (8192 x 4096, 16x a 1920x1080 RealSense
# frame) -- beyond that one frame costs hundreds of MB and seconds, never a camera stream.
MAX_IMAGE_SIDE_PX = 16384
MAX_IMAGE_PIXELS = 1 << 25


class ImageTooLarge(ValueError):
    """An image over :data:`MAX_IMAGE_SIDE_PX` / :data:`MAX_IMAGE_PIXELS`."""


def check_image_size(height: int, width: int, what: str = "image") -> None:
    """Refuse a size that could crash a library before any pixel is read.

    Checked on the declared sizes (sensor_msgs/Image ``height``/``width``), so it costs nothing
    and runs before the data is even looked at.

    :raises ImageTooLarge: a side over :data:`MAX_IMAGE_SIDE_PX` or more than
        :data:`MAX_IMAGE_PIXELS` pixels.
    :raises ValueError: a side < 1 (an empty image).
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"{what}: empty image ({width}x{height})")
    if max(height, width) > MAX_IMAGE_SIDE_PX or height * width > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"{what}: {width}x{height} is over the limits of {MAX_IMAGE_SIDE_PX} px "
                            f"per side and {MAX_IMAGE_PIXELS} pixels (OpenCV aborts the process at "
                            f"32767 px)")


def encoding_info(encoding: str) -> Encoding:
    """The :class:`Encoding` of ``encoding``; ValueError naming the supported ones otherwise."""
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        raise ValueError(f"encoding: unsupported image encoding {encoding!r}; supported: "
                         f"{', '.join(ENCODINGS)}") from None


@dataclass(frozen=True)
class ImageFields:
    """The fields of a sensor_msgs/Image but its header, as plain values (``data`` not copied)."""

    height: int
    width: int
    encoding: str
    is_bigendian: bool
    step: int
    data: Any  # bytes-like: bytes, array.array('B'), memoryview, uint8 array

    @classmethod
    def from_array(cls, arr: np.ndarray, encoding: str) -> "ImageFields":
        """The fields holding ``arr`` (see :func:`array_to_image_fields`)."""
        return cls(**array_to_image_fields(arr, encoding))


@dataclass(frozen=True)
class CameraInfoFields:
    """What is read of a sensor_msgs/CameraInfo: image size (px) and ``k`` (row-major 3x3)."""

    height: int
    width: int
    k: Sequence[float]


def fields_to_array(f: ImageFields) -> np.ndarray:
    """:func:`image_to_array` of an :class:`ImageFields`."""
    return image_to_array(f.height, f.width, f.encoding, f.is_bigendian, f.step, f.data)


def image_to_array(height: int, width: int, encoding: str, is_bigendian, step: int,
                   data) -> np.ndarray:
    """Read the fields of a sensor_msgs/Image into an array (no copy when nothing needs one).

    :param height: number of rows.
    :param width: number of pixels per row.
    :param encoding: one of :data:`ENCODINGS`.
    :param is_bigendian: byte order of multi-byte samples (ignored for 8-bit encodings).
    :param step: bytes per row, ``>= width * pixel_bytes``; the excess is row padding.
    :param data: bytes-like object (bytes, array.array('B'), memoryview, uint8 array) of exactly
        ``step * height`` bytes.
    :returns: (height, width) or (height, width, channels) array of the encoding's dtype in host
        byte order. It may share memory with ``data``: copy it before changing it in place if
        ``data`` must stay intact.
    :raises ValueError: unsupported encoding, negative sizes, ``step`` too small, ``data`` of the
        wrong size.
    """
    enc = encoding_info(encoding)
    height, width, step = int(height), int(width), int(step)
    if height < 0 or width < 0:
        raise ValueError(f"height/width: must be >= 0, got {height}x{width}")
    row_bytes = width * enc.pixel_bytes
    if step < row_bytes:
        raise ValueError(f"step: {step} bytes per row is less than width {width} x "
                         f"{enc.pixel_bytes} bytes per {encoding} pixel = {row_bytes}")
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data: expected a contiguous bytes-like object, got {type(data).__name__}: "
                         f"{exc}") from None
    if buf.size != step * height:
        raise ValueError(f"data: {buf.size} bytes, expected step {step} x height {height} = "
                         f"{step * height} for a {width}x{height} {encoding} image")
    rows = buf.reshape(height, step)[:, :row_bytes]  # (H, W * pixel_bytes), padding dropped
    big = bool(is_bigendian) and enc.dtype.itemsize > 1
    wire = enc.dtype.newbyteorder(">" if big else "<")
    if rows.size == 0:
        arr = np.zeros((height, width * enc.channels), dtype=enc.dtype)
    else:
        arr = rows.view(wire)  # (H, W * C): the last axis stays contiguous, so the view is allowed
        if not arr.dtype.isnative:
            arr = arr.astype(enc.dtype)  # to host byte order (a copy)
    shape = (height, width) if enc.channels == 1 else (height, width, enc.channels)
    return arr.reshape(shape)


def array_to_image_fields(arr: np.ndarray, encoding: str, is_bigendian: bool = False,
                          step: Optional[int] = None) -> dict:
    """The sensor_msgs/Image fields (all but header) holding ``arr``.

    :param arr: (H, W) or (H, W, C) array of the encoding's dtype and channel count (a float
        depth image must already be float32 metres, a 16-bit one uint16 millimetres).
    :param encoding: one of :data:`ENCODINGS`.
    :param is_bigendian: write multi-byte samples big-endian (default: little-endian, as every
        ROS 2 driver does).
    :param step: bytes per row; default ``width * pixel_bytes`` (no padding). A larger value pads
        each row with zero bytes.
    :returns: dict(height, width, encoding, is_bigendian, step, data) with ``data`` a bytes-like
        object (memoryview) over a contiguous copy-or-view of ``arr``.
    :raises ValueError: unsupported encoding, dtype or shape not matching it, ``step`` too small.
    """
    enc = encoding_info(encoding)
    arr = np.asarray(arr)
    if arr.dtype != enc.dtype:
        raise ValueError(f"arr: {encoding} needs dtype {enc.dtype}, got {arr.dtype}")
    if enc.channels == 1:
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim != 2:
            raise ValueError(f"arr: {encoding} needs shape (H, W), got {arr.shape}")
    elif arr.ndim != 3 or arr.shape[2] != enc.channels:
        raise ValueError(f"arr: {encoding} needs shape (H, W, {enc.channels}), got {arr.shape}")
    height, width = arr.shape[:2]
    row_bytes = width * enc.pixel_bytes
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ValueError(f"step: {step} is less than the {row_bytes} bytes of a {width}-pixel "
                         f"{encoding} row")
    big = bool(is_bigendian) and enc.dtype.itemsize > 1
    arr = np.ascontiguousarray(arr, dtype=enc.dtype.newbyteorder(">" if big else "<"))
    raw = arr.view(np.uint8).reshape(height, row_bytes)  # (H, W * pixel_bytes)
    if step > row_bytes:
        padded = np.zeros((height, step), np.uint8)
        padded[:, :row_bytes] = raw
        raw = padded
    return {"height": int(height), "width": int(width), "encoding": encoding,
            # 1-D uint8 is format "B" already; .cast("B") refused an empty (0-row/0-column) image.
            "is_bigendian": big, "step": int(step), "data": memoryview(raw.reshape(-1))}


def to_rgb8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """A colour image of any of :data:`COLOR_ENCODINGS` as (H, W, 3) uint8 RGB.

    :raises ValueError: a depth or unknown encoding, or an array not shaped like ``encoding``.
    """
    if encoding not in COLOR_ENCODINGS:
        raise ValueError(f"encoding: {encoding!r} is not a colour encoding; supported: "
                         f"{', '.join(COLOR_ENCODINGS)}")
    arr = np.asarray(arr)
    enc = ENCODINGS[encoding]
    expected = 2 if enc.channels == 1 else 3
    if arr.dtype != np.uint8 or arr.ndim != expected or (expected == 3 and arr.shape[2] != enc.channels):
        raise ValueError(f"arr: a {encoding} image must be uint8 with {enc.channels} channel(s), "
                         f"got {arr.dtype} {arr.shape}")
    if encoding == "rgb8":
        return arr
    if encoding in ("mono8", "8UC1"):
        return np.repeat(arr[:, :, None], 3, axis=2)
    if encoding == "rgba8":
        return arr[:, :, :3]
    return arr[:, :, 2::-1]  # bgr8 / bgra8: channels 2, 1, 0


def depth_to_meters(arr: np.ndarray, encoding: str) -> np.ndarray:
    """A depth image as float32 metres with NaN where there is no measurement.

    ``16UC1``/``mono16``: millimetres, 0 = invalid. ``32FC1``: metres; NaN, +-inf, 0 and
    negative values are invalid (all become NaN).
    """
    arr = np.asarray(arr)
    if encoding in ("16UC1", "mono16"):
        if arr.dtype != np.uint16:
            raise ValueError(f"arr: {encoding} depth must be uint16, got {arr.dtype}")
        return depth_mm_to_m(arr)
    if encoding == "32FC1":
        if arr.dtype != np.float32:
            raise ValueError(f"arr: 32FC1 depth must be float32, got {arr.dtype}")
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(arr) & (arr > 0), arr, np.float32(np.nan)).astype(np.float32)
    raise ValueError(f"encoding: {encoding!r} is not a depth encoding; supported: "
                     f"{', '.join(DEPTH_ENCODINGS)}")


def depth_mm_to_m(depth_mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres (0 = invalid) -> float32 metres (NaN = invalid)."""
    depth_mm = np.asarray(depth_mm)
    if depth_mm.dtype != np.uint16:
        raise ValueError(f"depth_mm: expected uint16 millimetres, got {depth_mm.dtype}")
    return _MM_TO_M[depth_mm]  # one table look-up per pixel instead of convert + divide + mask


# uint16 mm -> float32 m for every value (0 -> NaN): 256 KiB, the same float32 division as before.
_MM_TO_M = np.arange(65536, dtype=np.float32) / np.float32(MM_PER_M)
_MM_TO_M[0] = np.nan


def depth_m_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """float metres (NaN/inf/<= 0 = invalid) -> uint16 millimetres, rounded (0 = invalid).

    Depths beyond the 16-bit range (65.535 m) are not representable and become 0 (invalid).
    """
    depth_m = np.asarray(depth_m)
    if not np.issubdtype(depth_m.dtype, np.floating):
        raise ValueError(f"depth_m: expected floating-point metres, got {depth_m.dtype}")
    with np.errstate(invalid="ignore", over="ignore"):
        mm = np.rint(depth_m.astype(np.float64) * MM_PER_M)
        ok = np.isfinite(mm) & (mm > 0) & (mm <= np.iinfo(np.uint16).max)
    return np.where(ok, mm, 0).astype(np.uint16)


def depth_units_to_mm(raw: np.ndarray, depth_scale: float) -> np.ndarray:
    """A sensor's raw uint16 depth in units of ``depth_scale`` metres -> uint16 millimetres.

    RealSense D400 cameras default to 1 mm units (returned unchanged, no copy); others (the L515:
    0.25 mm) are rescaled and rounded. 0 stays 0 (invalid).
    """
    raw = np.asarray(raw)
    if raw.dtype != np.uint16:
        raise ValueError(f"raw: expected uint16 depth, got {raw.dtype}")
    if not (np.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale: expected > 0 metres per unit, got {depth_scale}")
    if abs(depth_scale * MM_PER_M - 1.0) < 1e-6:  # librealsense stores the units as float32
        return raw
    return depth_m_to_mm(np.where(raw == 0, np.nan, raw * float(depth_scale)))


# --- CameraInfo ----------------------------------------------------------------------------------

def intrinsics_to_camera_info_fields(intr: Intrinsics) -> dict:
    """CameraInfo fields (all but header) of an undistorted pinhole camera.

    ``distortion_model`` plumb_bob with five zero coefficients (the images are undistorted, or
    their distortion is not modelled), ``k`` the camera matrix, ``r`` identity (monocular),
    ``p`` = [K | 0] (no stereo baseline); binning 0 and an empty ROI mean "full resolution".
    """
    if not isinstance(intr, Intrinsics):
        raise ValueError(f"intr: expected an Intrinsics, got {type(intr).__name__}")
    K = intr.K
    P = np.zeros((3, 4))
    P[:, :3] = K
    return {"height": int(intr.height), "width": int(intr.width), "distortion_model": "plumb_bob",
            "d": [0.0] * 5, "k": K.reshape(-1).tolist(), "r": np.eye(3).reshape(-1).tolist(),
            "p": P.reshape(-1).tolist()}


def camera_info_to_intrinsics(height: int, width: int, k: Sequence[float]) -> Intrinsics:
    """Intrinsics from CameraInfo's ``height``, ``width`` and ``k`` (row-major 3x3).

    Distortion (``d``) is not applied: the images this package handles are undistorted or
    rectified (realsense2_camera's aligned depth is in the colour camera's geometry); a caller
    that receives non-zero ``d`` should say so (see :func:`has_distortion`).

    :raises ValueError: zero-sized image, K not 9 finite values, zero/negative focal length
        (an uncalibrated CameraInfo has K all zero), or a K that
        :func:`facediff_ros.core.camera.check_camera_matrix` refuses (implausible focal lengths
        or principal point, skew, a last row other than [0, 0, 1]).
    """
    try:
        k = [float(v) for v in k]  # Python floats: per frame, cheaper than numpy on nine numbers
    except (TypeError, ValueError):
        raise ValueError(f"k: expected 9 numbers (row-major 3x3), got {k!r}") from None
    if len(k) != 9 or not all(math.isfinite(v) for v in k):
        raise ValueError(f"k: expected 9 finite values (row-major 3x3), got {k}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"height/width: the CameraInfo image size must be positive, got "
                         f"{width}x{height}")
    if k[0] <= 0 or k[4] <= 0:
        raise ValueError(f"k: focal lengths must be > 0 (an all-zero K means uncalibrated), got "
                         f"fx={k[0]}, fy={k[4]}")
    check_camera_matrix(k, int(width), int(height))
    return Intrinsics(k[0], k[4], k[2], k[5], int(width), int(height))


def has_distortion(d: Sequence[float]) -> bool:
    """True when CameraInfo's ``d`` holds any non-zero coefficient."""
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    return bool(d.size) and bool(np.any(d != 0))
