"""Every topic name of the graph, built and validated in one place.

Camera topics follow realsense2_camera 4.x: ``<camera_namespace>/<camera_name>/color/image_raw``
etc., relative to the node's namespace (so ``__ns:=/robot`` moves the whole graph). The other
topics are relative names too, except ``/diagnostics`` (absolute, as diagnostic_aggregator expects).

``camera_namespace`` may be empty, may have leading/trailing slashes (``/robot/``, ``robot/``) and
may have several parts (``robot/head``); each part and ``camera_name`` must be a ROS name token:
ASCII letters, digits and ``_``, not starting with a digit. The full names are then checked with
rclpy's own validator against the node's name and namespace (length limit included), so a value
that passes here cannot make ``create_publisher`` raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

DIAGNOSTICS = "/diagnostics"
FACE_LANDMARKS = "face/landmarks"
FACE_LANDMARKS_DEBUG = "face/landmarks/debug_image"
FACE_MODEL = "face/model"
FACE_MESH = "face/mesh"
AVATAR_TARGET = "avatar/target"
AVATAR_COLOR = "avatar/color"
AVATAR_DEPTH = "avatar/depth"
AVATAR_CAMERA_INFO = "avatar/camera_info"
AVATAR_POINTS = "avatar/points"


@dataclass(frozen=True)
class CameraTopics:
    """The four camera topics (relative names) and the colour optical frame id."""

    color: str
    color_info: str
    depth: str
    depth_info: str
    frame_id: str

    def all(self) -> Tuple[str, str, str, str]:
        return (self.color, self.color_info, self.depth, self.depth_info)


def camera_prefix(camera_namespace: str, camera_name: str) -> str:
    """``<camera_namespace>/<camera_name>`` normalised (no leading, trailing or doubled '/').

    :raises ValueError: a part is not a ROS name token (the message names the parameter).
    """
    if not isinstance(camera_name, str) or not _TOKEN.match(camera_name):
        raise ValueError(f"camera_name: expected ASCII letters, digits and '_', not starting with a digit, "
                         f"got {camera_name!r}")
    if not isinstance(camera_namespace, str):
        raise ValueError(f"camera_namespace: expected a string, got {camera_namespace!r}")
    parts = camera_namespace.strip("/").split("/") if camera_namespace.strip("/") else []
    if not all(_TOKEN.match(p) for p in parts):
        raise ValueError(f"camera_namespace: expected names of ASCII letters, digits and '_' (not starting "
                         f"with a digit) separated by '/', got {camera_namespace!r}")
    return "/".join(parts + [camera_name])


def camera_topics(camera_namespace: str, camera_name: str) -> CameraTopics:
    """The camera topics realsense2_camera publishes for this namespace and name.

    :raises ValueError: see :func:`camera_prefix`.
    """
    base = camera_prefix(camera_namespace, camera_name)
    return CameraTopics(color=f"{base}/color/image_raw", color_info=f"{base}/color/camera_info",
                        depth=f"{base}/aligned_depth_to_color/image_raw",
                        depth_info=f"{base}/aligned_depth_to_color/camera_info",
                        frame_id=f"{camera_name}_color_optical_frame")


def check_topics_for_node(topics, node_name: str, node_namespace: str) -> None:
    """Check that each relative name in ``topics`` expands to a valid full topic for the node.

    :raises ValueError: with the topic and rclpy's reason (e.g. too long).
    """
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.validate_full_topic_name import validate_full_topic_name
    for topic in topics:
        try:
            validate_full_topic_name(expand_topic_name(topic, node_name, node_namespace))
        except (InvalidTopicNameException, ValueError, TypeError) as exc:
            node = f"{node_namespace.rstrip('/')}/{node_name}"
            raise ValueError(f"topic {topic!r} is not valid for node {node}: {exc}") from None
