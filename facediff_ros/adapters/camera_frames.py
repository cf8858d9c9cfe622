"""A captured RGB-D frame -> the capture node's messages: colour Image, aligned depth Image, CameraInfo.

The one function the capture node (``CaptureNode.publish_frame``) and the benchmark
(``facediff_ros.bench.nodes_bench``) both call, so what is timed is what is published. The
arrays come from :func:`facediff_ros.core.capture.frames.publish_arrays`; :mod:`.images` turns
them into messages (one copy of the pixels each) and reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from facediff_ros.adapters.images import to_camera_info_msg, to_image_msg
from facediff_ros.core.capture.frames import publish_arrays, split_stamp
from facediff_ros.core.capture.sources import CapturedFrame


@dataclass
class CameraMessages:
    """The messages of one frame; all share one header (stamp, colour optical frame id).

    ``info`` is published on both camera_info topics (the depth is aligned to colour, so it has
    the colour camera's intrinsics). ``depth`` is None for a colour-only frame (a webcam).
    """

    color: Image
    depth: Optional[Image]
    info: CameraInfo


def device_stamp(frame: CapturedFrame) -> Time:
    """The frame's own timestamp (camera or recording clock) as a ROS stamp.

    :raises ValueError: a negative or non-finite timestamp.
    """
    sec, nanosec = split_stamp(frame.stamp)
    return Time(sec=sec, nanosec=nanosec)


def frame_messages(frame: CapturedFrame, stamp: Time, frame_id: str, depth_encoding: str) -> CameraMessages:
    """colour (rgb8), aligned depth (``depth_encoding``: 16UC1 mm or 32FC1 m; None for a colour-only
    frame) and CameraInfo of ``frame``.

    :param stamp: header stamp of all three (node clock or :func:`device_stamp`).
    :param frame_id: the colour optical frame, e.g. ``camera_color_optical_frame``.
    :raises ValueError: see :func:`facediff_ros.core.capture.frames.publish_arrays`.
    """
    color, depth = publish_arrays(frame, depth_encoding)
    header = Header(stamp=stamp, frame_id=frame_id)
    return CameraMessages(color=to_image_msg(color, "rgb8", header),
                          depth=None if depth is None else to_image_msg(depth, depth_encoding, header),
                          info=to_camera_info_msg(frame.intrinsics, header))
