"""The core must stay ROS-free: no rclpy, no message packages, no nodes."""

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


def test_importing_every_core_module_loads_no_ros_module():
    modules = sorted("facediff_ros.core." + p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
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
