"""A captured frame's arrays as the capture node publishes them (ROS-free; messages in adapters).

realsense2_camera publishes colour as rgb8 and the aligned depth as 16UC1 millimetres (0 = no
data), or as 32FC1 metres (NaN = no data) when asked; both images share the colour camera's
intrinsics. :func:`publish_arrays` checks that and converts the depth (none for a colour-only
source); :func:`split_stamp` turns a frame's own timestamp (seconds) into the (sec, nanosec) pair
of a ROS stamp.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from facediff_ros.core import images
from facediff_ros.core.capture.sources import CapturedFrame

DEPTH_ENCODINGS = ("16UC1", "32FC1")


def publish_arrays(frame: CapturedFrame, depth_encoding: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(colour (H, W, 3) uint8 RGB, depth in ``depth_encoding``) of ``frame``.

    :param depth_encoding: '16UC1' (uint16 mm, the frame's own array, not copied) or '32FC1'
        (float32 m, NaN where the frame has 0).
    :returns: depth None for a colour-only frame (``frame.depth`` None).
    :raises ValueError: colour or depth not of the intrinsics' size, or an unknown encoding.
    """
    shape = frame.intrinsics.shape
    if depth_encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"depth_encoding: expected one of {list(DEPTH_ENCODINGS)}, got {depth_encoding!r}")
    if frame.color.shape[:2] != shape or (frame.depth is not None and frame.depth.shape != shape):
        depth = "none" if frame.depth is None else frame.depth.shape
        raise ValueError(f"colour {frame.color.shape[:2]} / depth {depth} do not match the "
                         f"intrinsics' {shape}")
    if frame.depth is None:
        return frame.color, None
    if depth_encoding == "16UC1":
        return frame.color, frame.depth
    return frame.color, images.depth_mm_to_m(frame.depth)


def split_stamp(stamp_s: float) -> Tuple[int, int]:
    """(sec, nanosec) of a timestamp in seconds, nanosec in [0, 1e9) (a ROS stamp's fields).

    :raises ValueError: a negative or non-finite stamp (a ROS stamp cannot hold it).
    """
    if not math.isfinite(stamp_s) or stamp_s < 0:
        raise ValueError(f"stamp: expected a finite, non-negative time in seconds, got {stamp_s!r}")
    ns = int(round(stamp_s * 1e9))
    return ns // 1_000_000_000, ns % 1_000_000_000
