"""The core must stay ROS-free (no rclpy, no message packages, no nodes) and keep its stage order.

Stage order (README, "Package layout"): the basics (``core/*.py``) import no stage; a stage
(``core/<stage>/``) imports the basics, its own stage and earlier stages, never later ones; nothing
in the core imports the offline tools (``facediff_ros.synthetic``), the nodes or the adapters.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "facediff_ros" / "core"
FORBIDDEN = ("rclpy", "facediff_ros.msg", "facediff_ros.nodes", "facediff_ros.adapters", "launch",
             "launch_ros", "rosidl", "ament_index_python")
FORBIDDEN_SUFFIX = "_msgs"


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def _is_forbidden(name: str) -> bool:
    top = name.split(".")[0]
    return (any(name == f or name.startswith(f + ".") for f in FORBIDDEN) or top.endswith(FORBIDDEN_SUFFIX))


def test_no_ros_imports_in_core_sources():
    offenders = {str(p.relative_to(CORE)): [n for n in _imports(p) if _is_forbidden(n)]
                 for p in sorted(CORE.rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) >= 3  # the scan saw the core modules


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE.parent.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_importing_every_core_module_loads_no_ros_module():
    modules = sorted(_module_name(p) for p in CORE.rglob("*.py"))
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] == 'rclpy' "
            "or k.split('.')[0].endswith('_msgs') or k.startswith('facediff_ros.msg'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_checker_catches_a_ros_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from sensor_msgs.msg import Image\nimport rclpy.node\n")
    assert [n for n in _imports(bad) if _is_forbidden(n)] == ["sensor_msgs.msg", "rclpy.node"]


# Data-flow order of the core's stages; a new stage folder must be added here (and to README).
STAGES = ("capture", "landmarks", "face", "render", "fitting", "editor")
OUTSIDE_CORE = ("facediff_ros.synthetic", "facediff_ros.bench", "facediff_ros.demo", "facediff_ros.cli",
                "facediff_ros.bringup")


def _stage_of(module: str):
    """None for a basic (core/*.py), the stage name for core/<stage>/..., '' for outside the core."""
    parts = module.split(".")
    if parts[:2] != ["facediff_ros", "core"]:
        return ""
    if len(parts) == 3 and parts[2] not in STAGES:
        return None
    return parts[2] if len(parts) >= 3 else None


def _order_violations(path: Path, own_module: str):
    own = _stage_of(own_module)
    rank = {s: i for i, s in enumerate(STAGES)}
    bad = []
    for name in _imports(path):
        if any(name == o or name.startswith(o + ".") for o in OUTSIDE_CORE):
            bad.append(name)
            continue
        target = _stage_of(name)
        if target in ("", None):
            continue
        if own is None or rank[target] > rank[own]:
            bad.append(name)
    return bad


def test_every_core_folder_is_a_known_stage():
    folders = sorted(p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert set(folders) <= set(STAGES), folders
    assert len(folders) >= 4


def test_core_stages_import_only_earlier_stages():
    found = {}
    for p in sorted(CORE.rglob("*.py")):
        bad = _order_violations(p, _module_name(p))
        if bad:
            found[str(p.relative_to(CORE))] = bad
    assert found == {}


def test_the_order_checker_catches_a_later_stage_and_the_offline_tools(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from facediff_ros.core.render.renderer import Renderer\n"
                   "from facediff_ros.core.camera import Intrinsics\n"
                   "from facediff_ros.core.capture import sources\n"
                   "def f():\n    from facediff_ros.synthetic.actor import SyntheticActor\n")
    assert _order_violations(bad, "facediff_ros.core.landmarks.lifting") == [
        "facediff_ros.core.render.renderer", "facediff_ros.synthetic.actor"]
    assert _order_violations(bad, "facediff_ros.core.camera") == [
        "facediff_ros.core.render.renderer", "facediff_ros.core.capture", "facediff_ros.synthetic.actor"]
