"""facediff_ros/bringup/graph.py (the one description of the graph), config/<node>.yaml against the
nodes' parameter dataclasses, and config/avatar.rviz against the graph's topics."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from facediff_ros.bringup import graph, params_files
from facediff_ros.core.face.expressions import CATEGORIES

ROOT = Path(__file__).resolve().parents[1]
NODES = ("capture", "landmarks", "fitting", "editor")


# ---- arguments -----------------------------------------------------------------------------------

def test_defaults_resolve_to_the_embedded_sample_graph():
    values = graph.resolve({})
    assert values == graph.DEFAULTS and values["source"] == "recording"
    specs = graph.node_specs(values)
    assert [s.name for s in specs] == ["editor", "fitting", "landmarks", "capture"]
    for s in specs:
        assert s.module == f"facediff_ros.nodes.{s.name}" and s.executable == s.name
        assert s.namespace == "" and s.remappings == []
        assert s.params_files == [str(ROOT / "config" / f"{s.name}.yaml")]
    # Only the source is set by default: every other value comes from the files / node defaults.
    assert {s.name: s.parameters for s in specs} == {"editor": {}, "fitting": {}, "landmarks": {},
                                                     "capture": {"source": "recording"}}


@pytest.mark.parametrize("overrides, message", [
    ({"source": "kinect"}, "source: expected one of realsense, recording, synthetic, webcam; got 'kinect'"),
    ({"recording": "/no/such/rec.db3"}, "recording: no such file: /no/such/rec.db3"),
    ({"params_file": "/no/such/params.yaml"}, "params_file: no such file: /no/such/params.yaml"),
    ({"intensity": "1.5"}, "intensity: expected a number from 0 to 1, got '1.5'"),
    ({"intensity": "much"}, "intensity: expected a number from 0 to 1, got 'much'"),
    ({"intensity": "nan"}, "intensity: expected a number from 0 to 1"),
    ({"expression": "smug"}, "expression: expected one of '', neutral, happy"),
    ({"use_rviz": "yes"}, "use_rviz: expected one of true, false; got 'yes'"),
    ({"namespace": "9robot"}, "namespace: expected names of ASCII letters"),
    ({"colour": "red"}, "unknown argument colour; known: source,"),
    ({"source": "webcam", "video_device": "/no/such/video.mp4"}, "video_device: no such file"),
    ({"source": "webcam", "video_device": "97"}, "video_device: no webcam: /dev/video97 does not exist"),
])
def test_bad_arguments_give_one_clear_line(overrides, message):
    with pytest.raises(ValueError) as info:
        graph.resolve(overrides)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_params_file_must_be_a_parameters_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("editor:\n  expression: sad\n")  # no ros__parameters level
    with pytest.raises(ValueError, match="params_file: .* is not a ROS 2 parameters file"):
        graph.resolve({"params_file": str(bad)})
    bad.write_text("a: [unclosed\n")
    with pytest.raises(ValueError, match="params_file: cannot read .* as YAML"):
        graph.resolve({"params_file": str(bad)})


def test_every_category_and_the_unset_value_are_accepted():
    assert graph.resolve({"expression": ""})["expression"] == ""
    for c in CATEGORIES:
        assert graph.node_specs({"expression": c})[0].parameters == {"expression": c}
    assert graph.node_specs({"intensity": "0"})[0].parameters == {"intensity": 0.0}
    assert graph.node_specs({"intensity": 1})[0].parameters == {"intensity": 1.0}


def test_resolve_is_idempotent_and_makes_paths_absolute(tmp_path, monkeypatch):
    rec = tmp_path / "rec.db3"
    rec.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    values = graph.resolve({"recording": "rec.db3", "namespace": "/robot/head/", "intensity": ".5"})
    assert values["recording"] == str(rec) and values["namespace"] == "/robot/head"
    assert values["intensity"] == "0.5" and graph.resolve(values) == values


def test_source_wiring():
    """Which parameters each source sets; webcam: colour only downstream."""
    def params(**kw):
        return {s.name: s.parameters for s in graph.node_specs(kw)}

    rec = str(ROOT / "facediff_ros" / "data" / "sample.db3")
    assert params(source="recording", recording=rec, loop="false")["capture"] == {
        "source": "recording", "recording_path": rec, "loop": False}
    assert params(source="realsense", serial_number="0123", loop="false")["capture"] == {
        "source": "realsense", "serial_number": "0123"}  # loop means nothing to a camera
    assert params(source="synthetic", realtime="false", stamp_source="device")["capture"] == {
        "source": "synthetic", "realtime": False, "stamp_source": "device"}
    video = str(Path(__file__).resolve())
    p = params(source="webcam", video_device=video, video_calibration=video)
    assert p["capture"] == {"source": "webcam", "video_device": video, "video_calibration": video}
    assert p["landmarks"] == p["fitting"] == {"use_depth": False}
    assert p["editor"] == {"use_depth": False}
    # recording/serial arguments of another source are not passed on.
    assert params(source="synthetic", serial_number="1")["capture"] == {"source": "synthetic"}


def test_rviz_spec_and_namespace_remaps():
    specs = graph.node_specs({"use_rviz": "true", "namespace": "robot"})
    rviz = specs[-1]
    assert (rviz.name, rviz.package, rviz.executable, rviz.module) == ("rviz2", "rviz2", "rviz2", None)
    assert rviz.arguments == ["-d", str(ROOT / "config" / "avatar.rviz")] and rviz.namespace == ""
    assert ("/avatar/points", "/robot/avatar/points") in rviz.remappings
    assert all(s.namespace == "/robot" for s in specs[:-1])
    landmarks = next(s for s in specs if s.name == "landmarks")
    assert landmarks.parameters == {"publish_debug_image": True}
    assert graph.node_specs({"use_rviz": "true"})[-1].remappings == []


def test_ros_args_order_and_quoting(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("/**:\n  ros__parameters:\n    diagnostics_period_s: 0.5\n")
    spec = graph.node_specs({"source": "realsense", "serial_number": "012345", "params_file": str(user),
                             "namespace": "robot", "log_level": "warn"})[-1]
    args = graph.ros_args(spec)
    assert args == ["--ros-args", "-r", "__node:=capture", "-r", "__ns:=/robot",
                    "--params-file", str(ROOT / "config" / "capture.yaml"), "--params-file", str(user),
                    "-p", "source:='realsense'", "-p", "serial_number:='012345'", "--log-level", "warn"]
    assert graph.parameter_value("it's") == "'it''s'" and graph.parameter_value(True) == "true"
    assert graph.parameter_value(1.0) == "1.0" and graph.parameter_value(3) == "3"


def test_choices_match_the_nodes():
    pytest.importorskip("rclpy")
    from facediff_ros.nodes.capture import CaptureParams
    from facediff_ros.nodes.editor import BACKEND_CHOICES, EditorParams

    def choices(cls, name):
        return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["ros_param"]["choices"]

    assert graph.BACKENDS == tuple(BACKEND_CHOICES) == tuple(choices(EditorParams, "backend"))
    assert tuple(choices(EditorParams, "expression")) == CATEGORIES
    assert set(choices(CaptureParams, "source")) <= set(graph.SOURCES)


# ---- config/<node>.yaml --------------------------------------------------------------------------

@pytest.mark.parametrize("node", NODES)
def test_params_file_matches_the_dataclass(node):
    """config/<node>.yaml is what `facediff params --yaml config` writes from the node's dataclass."""
    pytest.importorskip("rclpy")
    path = ROOT / "config" / f"{node}.yaml"
    assert path.read_text() == params_files.render(node), (
        f"{path} differs from {params_files.NODE_PARAMS[node][1]}: run "
        f"`.venv/bin/facediff params --yaml config`")
    cls = params_files.params_class(node)
    data = yaml.safe_load(path.read_text())
    assert list(data) == [f"/**/{node}"]
    values = data[f"/**/{node}"]["ros__parameters"]
    assert values == {f.name: f.default for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        assert type(values[f.name]) is type(f.default), f.name
        assert f"# {f.metadata['ros_param']['description'][:40]}" in path.read_text()


def test_render_follows_a_changed_dataclass():
    """The drift check can fail: a field added to a dataclass shows in the rendered file."""
    from facediff_ros.nodes.parameters import param

    @dataclasses.dataclass(frozen=True)
    class Params:
        rate_hz: float = dataclasses.field(default=30.0, metadata=param("rate (Hz)", min=1.0, max=90.0))
        name: str = dataclasses.field(default="0", metadata=param("a name", choices=("0", "a")))

    text = params_files.render("capture", Params)
    assert text != params_files.render("capture")
    assert yaml.safe_load(text) == {"/**/capture": {"ros__parameters": {"rate_hz": 30.0, "name": "0"}}}
    assert "    # rate (Hz) [float; 1.0 <= value <= 90.0]\n    rate_hz: 30.0\n" in text


def test_override_order_through_rcl(tmp_path, context):
    """The editor's parameters from graph.ros_args as rcl applies them: launch argument > params_file >
    config/editor.yaml > default, in a namespace, with the node's own validation."""
    import rclpy
    from rclpy.node import Node

    from facediff_ros.nodes.editor import EditorParams
    from facediff_ros.nodes.parameters import NodeParameters

    user = tmp_path / "mine.yaml"
    user.write_text("/**/editor:\n  ros__parameters:\n    expression: sad\n    steps: 3\n"
                    "/**/fitting:\n  ros__parameters:\n    steps: 7\n")
    spec = graph.node_specs({"params_file": str(user), "expression": "angry", "intensity": "0.25",
                             "namespace": "robot"})[0]
    assert spec.name == "editor"
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["editor_test"] + graph.ros_args(spec))
    try:
        node = Node("editor", context=ctx)
        config = NodeParameters(node, EditorParams).config
        assert node.get_fully_qualified_name() == "/robot/editor"
        assert config.expression == "angry"      # launch argument over the params file's 'sad'
        assert config.intensity == 0.25
        assert config.steps == 3                 # params file over config/editor.yaml (2)
        assert config.cloud_layout == EditorParams.cloud_layout  # config/editor.yaml = the default
        node.destroy_node()
    finally:
        ctx.try_shutdown()


# ---- config/avatar.rviz --------------------------------------------------------------------------

def test_rviz_config_shows_the_graph_topics_best_effort():
    from facediff_ros.adapters import topics
    text = (ROOT / "config" / "avatar.rviz").read_text()
    cfg = yaml.safe_load(text)
    vm = cfg["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == topics.camera_topics("camera", "camera").frame_id
    displays = {d["Class"].split("/")[-1]: d for d in vm["Displays"]}
    shown = {}
    for kind in ("PointCloud2", "Marker", "Image"):
        topic = displays[kind]["Topic"]
        assert topic["Reliability Policy"] == "Best Effort", kind  # the nodes publish sensor-data QoS
        shown[kind] = topic["Value"]
    cam = topics.camera_topics("camera", "camera")
    assert shown == {"PointCloud2": "/" + topics.AVATAR_POINTS, "Marker": "/" + topics.FACE_MESH,
                     "Image": "/" + topics.FACE_LANDMARKS_DEBUG}
    depth = displays["DepthCloud"]
    assert (depth["Depth Map Topic"], depth["Color Image Topic"]) == ("/" + cam.depth, "/" + cam.color)
    assert depth["Reliability Policy"] == "Best effort"  # that display's own spelling
    # Every topic rviz shows is remapped with a namespace (graph.RVIZ_TOPICS), and only those.
    named = set(shown.values()) | {"/" + cam.depth, "/" + cam.color, "/" + cam.depth_info}
    assert {"/" + t for t in graph.RVIZ_TOPICS} == named
