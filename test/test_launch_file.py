"""launch/avatar.launch.py against the one description of the graph (facediff_ros/bringup/graph.py).

Without launch/launch_ros (not installable here): small recording stand-ins of the launch API the
file uses are put in sys.modules, the file's generate_launch_description() and its OpaqueFunction
run, and the recorded DeclareLaunchArgument/Node calls are compared with graph.py. With
launch/launch_ros importable, the real launch.LaunchService checks the file too.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from facediff_ros.bringup import graph

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "avatar.launch.py"


# ---- recording stand-ins of the launch / launch_ros API used by the file ---------------------------

class _Recorded:
    """Keeps the positional and keyword arguments of the call that built it."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context):
        return context.launch_configurations[self.args[0]]


class _ParameterValue(_Recorded):
    pass


class _Context:
    def __init__(self, configurations):
        self.launch_configurations = dict(configurations)


def _fake_modules():
    launch = types.ModuleType("launch")
    launch.LaunchDescription = type("LaunchDescription", (_Recorded,), {})
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = type("DeclareLaunchArgument", (_Recorded,), {})
    actions.OpaqueFunction = type("OpaqueFunction", (_Recorded,), {})
    substitutions = types.ModuleType("launch.substitutions")
    substitutions.LaunchConfiguration = _LaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Recorded,), {})
    descriptions = types.ModuleType("launch_ros.parameter_descriptions")
    descriptions.ParameterValue = _ParameterValue
    launch.actions, launch.substitutions = actions, substitutions
    launch_ros.actions, launch_ros.parameter_descriptions = ros_actions, descriptions
    return {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
            "launch_ros": launch_ros, "launch_ros.actions": ros_actions,
            "launch_ros.parameter_descriptions": descriptions}


@pytest.fixture
def launch_module(monkeypatch):
    for name, module in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("avatar_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(module, **arguments):
    """generate_launch_description(), then its OpaqueFunction with ``arguments`` over the defaults."""
    description = module.generate_launch_description()
    (entities,) = description.args
    declared = [e for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert len(declared) + len(opaque) == len(entities) and len(opaque) == 1
    configurations = {d.args[0]: d.kwargs["default_value"] for d in declared}
    configurations.update(arguments)
    nodes = opaque[0].kwargs["function"](_Context(configurations))
    return declared, nodes


def test_declared_arguments_are_the_graph_table(launch_module):
    declared, _ = _run(launch_module)
    got = [(d.args[0], d.kwargs["default_value"], d.kwargs["description"], d.kwargs.get("choices"))
           for d in declared]
    want = [(a.name, a.default, a.description, list(a.choices) if a.choices else None)
            for a in graph.ARGUMENTS]
    assert got == want
    names = [g[0] for g in got]
    for required in ("source", "recording", "serial_number", "video_device", "expression", "intensity",
                     "backend", "namespace", "use_rviz", "rviz_config", "params_file"):
        assert required in names
    assert all(desc for _, _, desc, _ in got)


def _node_view(node):
    """What a launch_ros Node was built with, in graph.NodeSpec's terms."""
    kw = node.kwargs
    params = list(kw.get("parameters") or [])
    files = [p for p in params if isinstance(p, str)]
    dicts = [p for p in params if isinstance(p, dict)]
    assert len(files) + len(dicts) == len(params) and len(dicts) <= 1
    values = {}
    for k, v in (dicts[0] if dicts else {}).items():
        assert isinstance(v, _ParameterValue) and v.kwargs["value_type"] is type(v.args[0])
        values[k] = v.args[0]
    if dicts:
        assert params[-1] is dicts[0], "the launch arguments' parameters must come after the files"
    ros_arguments = kw.get("ros_arguments") or []
    return dict(package=kw["package"], executable=kw["executable"], name=kw["name"],
                namespace=kw.get("namespace") or "", params_files=files, parameters=values,
                remappings=list(kw.get("remappings") or []), arguments=list(kw.get("arguments") or []),
                log_level=ros_arguments[1] if ros_arguments else "")


def _spec_view(spec):
    return dict(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                params_files=spec.params_files, parameters=spec.parameters, remappings=spec.remappings,
                arguments=spec.arguments, log_level=spec.log_level)


@pytest.mark.parametrize("arguments", [
    {},
    {"source": "synthetic", "expression": "sad", "intensity": "0.25", "backend": "torch", "loop": "false",
     "namespace": "robot", "log_level": "debug"},
    {"source": "webcam", "video_device": str(LAUNCH_FILE), "use_rviz": "true", "namespace": "/a/b/"},
    {"source": "realsense", "serial_number": "012345678901", "use_rviz": "true"},
], ids=["defaults", "synthetic-namespace", "webcam-rviz", "realsense-serial"])
def test_nodes_are_the_graph_specs(launch_module, arguments, tmp_path):
    params_file = tmp_path / "mine.yaml"
    params_file.write_text("/**/editor:\n  ros__parameters:\n    steps: 2\n")
    arguments = dict(arguments, params_file=str(params_file))
    _, nodes = _run(launch_module, **arguments)
    specs = graph.node_specs(arguments)
    assert [_node_view(n) for n in nodes] == [_spec_view(s) for s in specs]
    assert all(n.kwargs.get("output") == "screen" for n in nodes)
    names = [n.kwargs["name"] for n in nodes]
    assert names[:4] == ["editor", "fitting", "landmarks", "capture"]
    assert ("rviz2" in names) == (arguments.get("use_rviz") == "true")
    for n in nodes[:4]:
        view = _node_view(n)
        assert view["params_files"] == [str(ROOT / "config" / f"{view['name']}.yaml"), str(params_file)]


def test_webcam_wiring_reaches_the_nodes(launch_module):
    _, nodes = _run(launch_module, source="webcam", video_device=str(LAUNCH_FILE), expression="angry")
    by_name = {n.kwargs["name"]: _node_view(n) for n in nodes}
    for name in ("landmarks", "fitting", "editor"):
        assert by_name[name]["parameters"]["use_depth"] is False
    assert by_name["capture"]["parameters"]["source"] == "webcam"
    assert by_name["capture"]["parameters"]["video_device"] == str(LAUNCH_FILE)
    assert by_name["editor"]["parameters"]["expression"] == "angry"


def test_bad_argument_fails_in_the_opaque_function(launch_module):
    with pytest.raises(ValueError, match="source: expected one of"):
        _run(launch_module, source="kinect")
    with pytest.raises(ValueError, match="recording: no such file"):
        _run(launch_module, recording="/no/such/file.db3")


# ---- the real launch API, when it is installed (a ROS 2 Jazzy/Kilted install) ----------------------

def _real_launch():
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"launch/launch_ros not importable here ({exc}); they come with a ROS 2 install "
                    f"(ros-<distro>-launch-ros), not from PyPI")


def test_launch_service_declares_and_rejects():
    """The file through launch.LaunchService: it loads, declares every argument, and a bad argument
    ends the service non-zero before any process starts."""
    _real_launch()
    import launch
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    source = PythonLaunchDescriptionSource(str(LAUNCH_FILE))
    description = source.try_get_launch_description_without_context()
    declared = [a.name for a in description.get_launch_arguments()]
    assert declared == list(graph.ARGUMENT_NAMES)

    service = launch.LaunchService(argv=["source:=kinect"])
    service.include_launch_description(launch.LaunchDescription([
        IncludeLaunchDescription(source, launch_arguments={"source": "kinect"}.items())]))
    assert service.run() != 0


def test_launch_service_builds_the_node_commands():
    """The OpaqueFunction run in a real LaunchContext gives launch_ros Nodes whose command lines
    carry the graph's params files, parameters and namespace (the processes are not started)."""
    _real_launch()
    import launch
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location("avatar_launch_real", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = launch.LaunchContext()
    for a in graph.ARGUMENTS:
        context.launch_configurations[a.name] = a.default
    context.launch_configurations.update(source="synthetic", expression="sad", namespace="robot")
    opaque = module.generate_launch_description().entities[-1]
    nodes = opaque.execute(context)
    assert [type(n) for n in nodes] == [Node] * 4
    specs = graph.node_specs({"source": "synthetic", "expression": "sad", "namespace": "robot"})
    for node, s in zip(nodes, specs):
        assert node.node_package == s.package and node.node_executable == s.executable
        node._perform_substitutions(context)  # what execute() does before it starts the process
        assert node.expanded_node_namespace == "/robot" and node.node_name == f"/robot/{s.name}"
        cmd = []
        for part in node.cmd:  # the namespace/name rules are filled in only at execute()
            try:
                cmd.append(launch.utilities.perform_substitutions(context, part))
            except Exception:  # noqa: BLE001 - LocalSubstitution of ros_specific_arguments
                cmd.append("<local>")
        files = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--params-file"]
        assert files[:len(s.params_files)] == s.params_files
        assert len(files) == len(s.params_files) + bool(s.parameters)
        if s.parameters:  # the launch arguments' dict, written by launch_ros to a file of its own, last
            import yaml
            generated = yaml.safe_load(Path(files[-1]).read_text())
            assert generated == {f"/robot/{s.name}": {"ros__parameters": s.parameters}}
    assert specs[0].parameters == {"expression": "sad"} and specs[-1].parameters == {"source": "synthetic"}
