"""`colcon build` of the package against the venv's ROS 2 wheels, then its install is usable."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_colcon_build_installs_messages_and_python_package(tmp_path):
    build = subprocess.run(["bash", str(ROOT / "tools" / "colcon_build.sh")], capture_output=True, text=True,
                           timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    install = ROOT / "build" / "colcon_ws" / "install" / "facediff_ros"
    site = install / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    env = dict(os.environ, PYTHONPATH=str(site),
               LD_LIBRARY_PATH=f"{install / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    code = ("import facediff_ros, facediff_ros.msg as m, facediff_ros.core.camera\n"
            "print(facediff_ros.__file__)\n"
            "print(m.ExpressionTarget.FEARFUL, len(m.FaceLandmarks.get_fields_and_field_types()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert lines[0].startswith(str(site))  # the installed copy, not the source tree
    assert lines[1:] == ["6", "9"]
    share = install / "share" / "facediff_ros"
    assert (share / "package.xml").is_file() and (share / "config" / "fastdds.xml").is_file()
    assert (share / "msg" / "FaceModel.msg").is_file()
