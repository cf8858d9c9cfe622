"""sensor_msgs/Image and CameraInfo <-> numpy / Intrinsics, on top of :mod:`facediff_ros.core.images`.

``data`` is filled from the array's buffer in one copy (``array.array.frombytes``): assigning a
Python list of a 640x480 image's bytes costs about a second in rclpy.
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from facediff_ros.core import images
from facediff_ros.core.camera import Intrinsics


def to_image_msg(arr: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image holding ``arr`` (see :func:`facediff_ros.core.images.array_to_image_fields`)."""
    fields = images.array_to_image_fields(arr, encoding)
    msg = Image()
    msg.header = header
    msg.height, msg.width = fields["height"], fields["width"]
    msg.encoding = fields["encoding"]
    msg.is_bigendian = int(fields["is_bigendian"])
    msg.step = fields["step"]
    data = array.array("B")
    data.frombytes(fields["data"])
    msg.data = data
    return msg


def from_image_msg(msg: Image) -> np.ndarray:
    """The pixels of ``msg`` as an array in host byte order (may share memory with ``msg.data``).

    :raises ValueError: unsupported encoding, step/size mismatch (see
        :func:`facediff_ros.core.images.image_to_array`).
    """
    return images.image_to_array(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step,
                                 msg.data)


def image_fields(msg: Image) -> images.ImageFields:
    """The plain fields of ``msg`` for the core (``data`` is the message's own buffer, not a copy)."""
    return images.ImageFields(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)


def camera_info_fields(msg: CameraInfo) -> images.CameraInfoFields:
    """Size and K of ``msg`` for the core."""
    return images.CameraInfoFields(msg.height, msg.width, msg.k)


def to_camera_info_msg(intr: Intrinsics, header: Header) -> CameraInfo:
    """A plumb_bob CameraInfo with zero distortion, K, R = I and P = [K | 0] for ``intr``."""
    fields = images.intrinsics_to_camera_info_fields(intr)
    msg = CameraInfo()
    msg.header = header
    msg.height, msg.width = fields["height"], fields["width"]
    msg.distortion_model = fields["distortion_model"]
    msg.d = fields["d"]
    msg.k = fields["k"]
    msg.r = fields["r"]
    msg.p = fields["p"]
    return msg


def from_camera_info_msg(msg: CameraInfo) -> Intrinsics:
    """Intrinsics from a CameraInfo's size and K (distortion not applied; see core.images).

    :raises ValueError: zero size, non-finite or zero K.
    """
    return images.camera_info_to_intrinsics(msg.height, msg.width, msg.k)
