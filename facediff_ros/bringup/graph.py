"""The one description of the facediff_ros graph: arguments, nodes, parameters files, remaps.

``launch/avatar.launch.py`` (launch_ros ``Node`` actions) and ``facediff bringup`` (the nodes as
separate processes, :mod:`facediff_ros.bringup.processes`) are both built from :func:`node_specs`,
so the two cannot drift apart. This module imports neither rclpy nor launch.

Override order, per node parameter (later wins):

1. the node's own defaults (its parameter dataclass, ``facediff_ros/nodes/*.py``);
2. ``config/<node>.yaml`` (generated from those dataclasses; every parameter with its description);
3. the user's ``params_file`` (keys ``/**/<node>:`` for one node or ``/**:`` for all of them);
4. launch arguments. An argument left empty (``''``, the default of every argument that maps to a
   node parameter) sets nothing, so the params file or the default applies; ``source`` is always
   set, and ``source:=webcam`` also sets ``use_depth:=false`` on the landmark, fitting and editor
   nodes (a webcam has no depth).

On the command line of each node this is ``--params-file config/<node>.yaml --params-file
<params_file> -p name:=value ...`` in that order: rcl applies them in order, the last one wins.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from facediff_ros.adapters import topics
from facediff_ros.core.face.expressions import CATEGORIES

PACKAGE = "facediff_ros"
ROOT = Path(__file__).resolve().parents[2]  # the source tree (config/ lives beside the package)

SOURCES = ("realsense", "recording", "synthetic", "webcam")
COLOUR_ONLY_SOURCES = ("webcam",)  # no depth stream: the depth-using nodes run colour-only
# The editor's backend parameter's values (nodes/editor.py BACKEND_CHOICES; a test keeps them equal).
BACKENDS = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
BOOLS = ("true", "false")
# The package's nodes in start order (the sinks first: they are ready when frames come).
NODES = ("editor", "fitting", "landmarks", "capture")
RVIZ = "rviz2"
RVIZ_CONFIG = "avatar.rviz"


@dataclass(frozen=True)
class Argument:
    """One launch argument (``name:=value``; ``facediff bringup --name value``)."""

    name: str
    default: str
    description: str
    choices: Optional[Tuple[str, ...]] = None  # None: free text, checked by resolve()


def _unset_or(values: Sequence[str]) -> Tuple[str, ...]:
    return ("",) + tuple(values)


ARGUMENTS: Tuple[Argument, ...] = (
    Argument("source", "recording",
             "frame source of the capture node: 'recording' (a RealSense .db3/.bag, default the "
             "embedded sample), 'realsense' (a live camera), 'synthetic' (the synthetic actor rendered "
             "live), 'webcam' (colour only: OpenCV VideoCapture; the landmark, fitting and editor nodes "
             "then run without depth)", SOURCES),
    Argument("recording", "",
             "source:=recording: the recording to play (.db3 or .bag); '' = the embedded sample "
             "facediff_ros/data/sample.db3"),
    Argument("serial_number", "",
             "source:=realsense: serial number of the camera to open; '' = the first one found"),
    Argument("video_device", "0",
             "source:=webcam: a device index ('0' = /dev/video0), a device path (/dev/videoN) or a "
             "video file"),
    Argument("video_calibration", "",
             "source:=webcam: camera_info YAML (as camera_calibration_parsers writes it); '' = a default "
             "field of view (the capture node's video_hfov_deg)"),
    Argument("loop", "", "source:=recording/synthetic (and a webcam video file): start again at the end "
             "(true/false); '' = the params file's or the node's default (true)", _unset_or(BOOLS)),
    Argument("realtime", "", "source:=recording/synthetic: play at the recorded frame rate (true) or as "
             "fast as frames can be read (false); '' = the params file's or the node's default (true)",
             _unset_or(BOOLS)),
    Argument("stamp_source", "", "header stamps: 'ros' (clock when the frame is read) or 'device' (the "
             "camera's or recording's own timestamps); '' = the params file's or the node's default (ros)",
             _unset_or(("ros", "device"))),
    Argument("expression", "", "target expression category of the editor; '' = the params file's or the "
             "editor's default (happy)", _unset_or(CATEGORIES)),
    Argument("intensity", "", "target expression intensity, 0 (neutral) to 1 (full); '' = the params "
             "file's or the editor's default (1.0)"),
    Argument("backend", "", "editor inference backend (auto picks the fastest that runs here); '' = the "
             "params file's or the editor's default (auto)", _unset_or(BACKENDS)),
    Argument("namespace", "", "ROS namespace of every node (e.g. 'robot'); all topics move under it; "
             "'' = the root namespace"),
    Argument("use_rviz", "false", "also start rviz2 with rviz_config (and the landmark node's debug "
             "image)", BOOLS),
    Argument("rviz_config", "", "rviz2 configuration; '' = the package's config/avatar.rviz"),
    Argument("params_file", "", "a ROS 2 parameters YAML applied to every node after config/<node>.yaml "
             "(keys '/**/<node>:' for one node, '/**:' for all); launch arguments override it"),
    Argument("log_level", "", "log level of every node (debug, info, warn, error, fatal); '' = info",
             _unset_or(LOG_LEVELS)),
)
ARGUMENT_NAMES = tuple(a.name for a in ARGUMENTS)
DEFAULTS: Dict[str, str] = {a.name: a.default for a in ARGUMENTS}


@dataclass
class NodeSpec:
    """One process of the graph, as ``ros2 run <package> <executable> <arguments> --ros-args ...``.

    ``parameters`` come from launch arguments and win over ``params_files`` (applied in order).
    """

    name: str                          # node name (``__node:=``)
    executable: str                    # ``ros2 run facediff_ros <executable>`` / the launch Node's executable
    module: Optional[str]              # ``python -m <module>`` (None: not a Python node, e.g. rviz2)
    namespace: str                     # '' (root) or an absolute namespace such as '/robot'
    params_files: List[str]            # config/<node>.yaml, then the user's params_file
    parameters: Dict[str, Any]         # name -> bool/int/float/str from launch arguments
    remappings: List[Tuple[str, str]]  # (from, to) topic names
    package: str = PACKAGE
    arguments: List[str] = field(default_factory=list)  # non-ROS arguments before --ros-args
    log_level: str = ""                # '' = the node's default


# ---- files -------------------------------------------------------------------------------------

def package_file(relative: str) -> Path:
    """A file shipped in the package's share folder (``config/...``): the source tree's, else the
    colcon install's (``share/facediff_ros``).

    :raises ValueError: found in neither (the message lists where it looked).
    """
    candidates = [ROOT / relative]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory(PACKAGE)) / relative)
    except Exception:  # noqa: BLE001 - not installed with colcon: the source tree is enough
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"{relative} not found (looked in {', '.join(str(c) for c in candidates)})")


def params_file_for(node: str) -> Path:
    """The package's ``config/<node>.yaml``."""
    return package_file(f"config/{node}.yaml")


# ---- validation --------------------------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def normalize_namespace(ns: str) -> str:
    """'' -> '', 'robot' / '/robot/' -> '/robot', 'a/b' -> '/a/b'.

    :raises ValueError: a part is not a ROS name token.
    """
    parts = [p for p in ns.strip("/").split("/")] if ns.strip("/") else []
    if not all(_TOKEN.match(p) for p in parts):
        raise ValueError(f"namespace: expected names of ASCII letters, digits and '_' (not starting with a "
                         f"digit) separated by '/', got {ns!r}")
    return "/" + "/".join(parts) if parts else ""


def _existing_file(name: str, value: str, what: str) -> str:
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{name}: no such file: {value} ({what})")
    if not path.is_file():
        raise ValueError(f"{name}: not a file: {value} ({what})")
    return str(path.resolve())


def _check_params_file(path: str) -> None:
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"params_file: cannot read {path} as YAML: {exc}".replace("\n", " ")) from None
    ok = isinstance(data, dict) and data and all(
        isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("ros__parameters"), dict)
        for k, v in data.items())
    if not ok:
        raise ValueError(f"params_file: {path} is not a ROS 2 parameters file: expected node-name keys "
                         f"('/**/editor:' or '/**:'), each with a 'ros__parameters:' mapping")


def _check_video_device(value: str) -> str:
    if not value:
        raise ValueError("video_device: empty; expected a device index ('0'), a device path or a video file")
    if value.isdigit():
        device = Path(f"/dev/video{int(value)}")
        if sys.platform.startswith("linux") and not device.exists():
            raise ValueError(f"video_device: no webcam: {device} does not exist (video_device:={value}); "
                             f"give another index, a /dev/videoN path or a video file")
        return value
    return _existing_file("video_device", value, "a webcam device such as /dev/video0 or a video file")


def resolve(overrides: Mapping[str, Any]) -> Dict[str, str]:
    """The arguments' values: defaults updated with ``overrides``, checked and normalised.

    Paths (recording, video files, video_calibration, rviz_config, params_file) become absolute;
    namespace becomes '' or '/a/b'. Idempotent: ``resolve(resolve(x)) == resolve(x)``.

    :raises ValueError: one line naming the argument and the problem (an unknown argument or
        source, a file that does not exist, an intensity outside [0, 1], no webcam ...).
    """
    unknown = sorted(set(overrides) - set(ARGUMENT_NAMES))
    if unknown:
        raise ValueError(f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"known: {', '.join(ARGUMENT_NAMES)}")
    values = dict(DEFAULTS)
    for k, v in overrides.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = str(v)
        if not isinstance(v, str):
            raise ValueError(f"{k}: expected a string, got {type(v).__name__} {v!r}")
        values[k] = v.strip()
    for a in ARGUMENTS:
        if a.choices is not None and values[a.name] not in a.choices:
            shown = ", ".join(repr(c) if c == "" else c for c in a.choices)
            raise ValueError(f"{a.name}: expected one of {shown}; got {values[a.name]!r}")
    if values["intensity"]:
        try:
            x = float(values["intensity"])
        except ValueError:
            x = float("nan")
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"intensity: expected a number from 0 to 1, got {values['intensity']!r}")
        values["intensity"] = repr(x)
    source = values["source"]
    if values["recording"] and source == "recording":
        values["recording"] = _existing_file("recording", values["recording"], "a RealSense .db3 or .bag")
    if source == "webcam":
        values["video_device"] = _check_video_device(values["video_device"])
        if values["video_calibration"]:
            values["video_calibration"] = _existing_file("video_calibration", values["video_calibration"],
                                                         "a camera_info YAML")
    if values["params_file"]:
        values["params_file"] = _existing_file("params_file", values["params_file"],
                                               "a ROS 2 parameters YAML")
        _check_params_file(values["params_file"])
    if values["use_rviz"] == "true" and values["rviz_config"]:
        values["rviz_config"] = _existing_file("rviz_config", values["rviz_config"], "an rviz2 .rviz file")
    values["namespace"] = normalize_namespace(values["namespace"])
    return values


# ---- the graph ---------------------------------------------------------------------------------

def _bool(s: str) -> bool:
    return s == "true"


def node_parameters(values: Mapping[str, str]) -> Dict[str, Dict[str, Any]]:
    """Node name -> the parameters the (resolved) arguments set on it, typed as the node declares them."""
    source = values["source"]
    colour_only = source in COLOUR_ONLY_SOURCES
    capture: Dict[str, Any] = {"source": source}
    if source == "recording" and values["recording"]:
        capture["recording_path"] = values["recording"]
    if source == "realsense" and values["serial_number"]:
        capture["serial_number"] = values["serial_number"]
    if source == "webcam":
        capture["video_device"] = values["video_device"]
        if values["video_calibration"]:
            capture["video_calibration"] = values["video_calibration"]
    for name in ("loop", "realtime"):
        if values[name] and source != "realsense":
            capture[name] = _bool(values[name])
    if values["stamp_source"]:
        capture["stamp_source"] = values["stamp_source"]
    landmarks: Dict[str, Any] = {}
    fitting: Dict[str, Any] = {}
    editor: Dict[str, Any] = {}
    if colour_only:
        landmarks["use_depth"] = fitting["use_depth"] = editor["use_depth"] = False
    if values["use_rviz"] == "true":
        landmarks["publish_debug_image"] = True  # rviz shows it
    if values["expression"]:
        editor["expression"] = values["expression"]
    if values["intensity"]:
        editor["intensity"] = float(values["intensity"])
    if values["backend"]:
        editor["backend"] = values["backend"]
    return {"capture": capture, "landmarks": landmarks, "fitting": fitting, "editor": editor}


# Topics rviz2 shows (config/avatar.rviz names them absolute, in the root namespace, with the
# nodes' default camera_namespace/camera_name); with a namespace they are remapped to it. The
# DepthCloud display also reads the camera_info beside its depth topic.
_CAMERA = topics.camera_topics("camera", "camera")
RVIZ_TOPICS: Tuple[str, ...] = (topics.AVATAR_POINTS, topics.FACE_MESH, topics.FACE_LANDMARKS_DEBUG,
                                _CAMERA.color, _CAMERA.depth, _CAMERA.depth_info)


def node_specs(values: Mapping[str, str]) -> List[NodeSpec]:
    """The graph's processes for resolved argument values (:func:`resolve`), in start order:
    editor, fitting, landmarks, capture (+ rviz2 when use_rviz).

    :raises ValueError: a config file is missing (the message says where it looked).
    """
    values = resolve(values)
    ns = values["namespace"]
    user = [values["params_file"]] if values["params_file"] else []
    params = node_parameters(values)
    specs = [NodeSpec(name=n, executable=n, module=f"{PACKAGE}.nodes.{n}", namespace=ns,
                      params_files=[str(params_file_for(n))] + user, parameters=params[n], remappings=[],
                      log_level=values["log_level"])
             for n in NODES]
    if values["use_rviz"] == "true":
        config = values["rviz_config"] or str(package_file(f"config/{RVIZ_CONFIG}"))
        remaps = [(f"/{t}", f"{ns}/{t}") for t in RVIZ_TOPICS] if ns else []
        specs.append(NodeSpec(name=RVIZ, executable=RVIZ, module=None, namespace="", params_files=[],
                              parameters={}, remappings=remaps, package=RVIZ, arguments=["-d", config],
                              log_level=values["log_level"]))
    return specs


def parameter_value(value: Any) -> str:
    """A value as rcl parses it after ``-p name:=`` (YAML): strings single-quoted, so '0' or 'true'
    stay strings; floats always with a decimal point (a float parameter refuses an integer)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"parameter values are bool/int/float/str, got {type(value).__name__} {value!r}")


def ros_args(spec: NodeSpec) -> List[str]:
    """``--ros-args`` for ``spec``: node name, namespace, params files in order, then ``-p`` (the
    launch arguments: last, so they win), remaps, log level."""
    out = ["--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        out += ["-r", f"__ns:={spec.namespace}"]
    for f in spec.params_files:
        out += ["--params-file", f]
    for k, v in spec.parameters.items():
        out += ["-p", f"{k}:={parameter_value(v)}"]
    for src, dst in spec.remappings:
        out += ["-r", f"{src}:={dst}"]
    if spec.log_level:
        out += ["--log-level", spec.log_level]
    return out


def command(spec: NodeSpec, python: str = sys.executable) -> List[str]:
    """The command line that starts ``spec`` without ``ros2 run``: ``python -m <module> --ros-args ...``
    for the package's nodes, the executable from PATH otherwise (rviz2)."""
    head = [python, "-m", spec.module] if spec.module else [spec.executable]
    return head + list(spec.arguments) + ros_args(spec)


def arguments_markdown() -> str:
    """The launch arguments as a Markdown table (README)."""
    rows = ["| argument | default | description |", "|---|---|---|"]
    for a in ARGUMENTS:
        desc = a.description
        if a.choices:
            desc += " (one of " + ", ".join("''" if c == "" else f"`{c}`" for c in a.choices) + ")"
        rows.append(f"| `{a.name}` | `{a.default!r}` | {desc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
