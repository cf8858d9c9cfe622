"""adapters/topics.py: camera topic names built and validated in one place, checked in-process.

Expected names are written out by hand from realsense2_camera 4.x's scheme
(``<camera_namespace>/<camera_name>/color/image_raw`` ...); the length limit is computed here
from rcl's rule (a full topic name of at most 255 - 8 = 247 characters).
"""

import pytest

from facediff_ros.adapters import topics

RCL_TOPIC_MAX = 255 - 8  # rmw's limit minus the DDS "rt/" prefix and suffix room, as rcl states it


@pytest.mark.parametrize("namespace, prefix", [
    ("camera", "camera/camera"),
    ("/robot/", "robot/camera"),
    ("robot/", "robot/camera"),
    ("/robot", "robot/camera"),
    ("robot/head", "robot/head/camera"),
    ("/robot/head/", "robot/head/camera"),
    ("", "camera"),
    ("/", "camera"),
])
def test_camera_prefix_normalises_slashes(namespace, prefix):
    assert topics.camera_prefix(namespace, "camera") == prefix


def test_camera_topics_are_realsense2_camera_names():
    t = topics.camera_topics("/robot/", "d435_1")
    assert t.color == "robot/d435_1/color/image_raw"
    assert t.color_info == "robot/d435_1/color/camera_info"
    assert t.depth == "robot/d435_1/aligned_depth_to_color/image_raw"
    assert t.depth_info == "robot/d435_1/aligned_depth_to_color/camera_info"
    assert t.frame_id == "d435_1_color_optical_frame"
    assert t.all() == (t.color, t.color_info, t.depth, t.depth_info)
    empty = topics.camera_topics("", "cam")
    assert empty.color == "cam/color/image_raw" and empty.frame_id == "cam_color_optical_frame"


@pytest.mark.parametrize("name", ["9cam", "é", "32FC1", "", "cam era", "cam/era", "cam-1", "~cam", "{cam}",
                                  "cam\n", 7])
def test_bad_camera_names_are_refused_naming_the_parameter(name):
    with pytest.raises(ValueError, match="camera_name"):
        topics.camera_topics("camera", name)


@pytest.mark.parametrize("namespace", ["9robot", "robot//head", "rob ot", "ünï", "robot/9", "a/-b", None])
def test_bad_camera_namespaces_are_refused_naming_the_parameter(namespace):
    with pytest.raises(ValueError, match="camera_namespace"):
        topics.camera_topics(namespace, "camera")


@pytest.mark.parametrize("name", ["_cam", "Cam_2", "c" * 300])
def test_token_rule_alone_accepts_letters_digits_underscore(name):
    # The token rule has no length limit: that is the full-name check's job (next test).
    assert topics.camera_prefix("", name).endswith(name)


def test_full_name_length_limit_is_checked_against_the_node():
    # Longest topic: /camera/<name>/aligned_depth_to_color/camera_info for node /capture.
    fixed = len("/camera/") + len("/aligned_depth_to_color/camera_info")
    longest_ok = RCL_TOPIC_MAX - fixed
    ok = topics.camera_topics("camera", "n" * longest_ok)
    topics.check_topics_for_node(ok.all(), "capture", "/")
    too_long = topics.camera_topics("camera", "n" * (longest_ok + 1))
    with pytest.raises(ValueError, match="aligned_depth_to_color/camera_info.*not valid for node /capture"):
        topics.check_topics_for_node(too_long.all(), "capture", "/")
    # The node's namespace counts too: what fits at / no longer fits under /robot.
    with pytest.raises(ValueError, match="/robot/capture"):
        topics.check_topics_for_node(ok.all(), "capture", "/robot")
    with pytest.raises(ValueError, match="not valid"):
        topics.check_topics_for_node(topics.camera_topics("camera", "c" * 300).all(), "capture", "/")


def test_valid_names_expand_under_the_node_namespace():
    from rclpy.expand_topic_name import expand_topic_name
    t = topics.camera_topics("robot/", "cam")
    topics.check_topics_for_node(t.all(), "capture", "/ns")
    assert expand_topic_name(t.color, "capture", "/ns") == "/ns/robot/cam/color/image_raw"
    t = topics.camera_topics("", "cam")
    assert expand_topic_name(t.depth, "capture", "/") == "/cam/aligned_depth_to_color/image_raw"
