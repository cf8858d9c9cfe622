"""capture and landmarks as real processes over DDS connect for every way of writing camera_namespace.

Before issue 13/14 the landmark node built ``robot//camera/...`` for ``/robot/`` and died on it,
while capture accepted the value. Here three pairs run at once (``.venv/bin/facediff-capture`` and
``facediff-landmarks``, the console scripts), each pair in a node namespace of its own so that
they cannot feed each other, with ``camera_namespace`` ``robot``, ``/robot/`` and empty. For each
pair the test waits until landmarks arrive on ``/<ns>/face/landmarks`` and checks that the colour
topic both nodes use is the one realsense2_camera would have (written out here by hand).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402

from facediff_ros.adapters.dds import configure_environment  # noqa: E402
from facediff_ros.msg import FaceLandmarks  # noqa: E402
from facediff_ros.nodes.spin import spin_until  # noqa: E402
from processes import stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 90.0  # six processes start at once on a small machine

# node namespace, camera_namespace as typed on the command line, the colour topic it must give
CASES = [("/ns_robot", "robot", "/ns_robot/robot/camera/color/image_raw"),
         ("/ns_slashes", "/robot/", "/ns_slashes/robot/camera/color/image_raw"),
         ("/ns_empty", "''", "/ns_empty/camera/color/image_raw")]


def _script(name):
    exe = Path(sys.executable).with_name(name)
    module = {"facediff-capture": "capture", "facediff-landmarks": "landmarks"}[name]
    return [str(exe)] if exe.exists() else [sys.executable, "-m", f"facediff_ros.nodes.{module}"]


def test_capture_and_landmarks_connect_for_robot_slashes_and_empty_camera_namespace(tmp_path):
    env = configure_environment(dict(os.environ))
    procs, logs = {}, {}

    def start(key, script, *args):
        logs[key] = open(tmp_path / f"{key}.log", "w")
        procs[key] = subprocess.Popen(_script(script) + ["--ros-args", *args], env=env, stdout=logs[key],
                                      stderr=subprocess.STDOUT, cwd=str(ROOT))

    def tail():
        out = []
        for key, f in logs.items():
            f.flush()
            text = (tmp_path / f"{key}.log").read_text()[-1500:]
            out.append(f"--- {key} (rc {procs[key].poll()}):\n{text}")
        return "\n".join(out)

    configure_environment()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("namespaces_probe", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    got = {ns: [] for ns, _, _ in CASES}
    for ns, _, _ in CASES:
        node.create_subscription(FaceLandmarks, f"{ns}/face/landmarks", got[ns].append,
                                 qos_profile_sensor_data)
    try:
        for ns, camera_namespace, _ in CASES:
            tag = ns.strip("/")
            start(f"landmarks_{tag}", "facediff-landmarks", "-r", f"__ns:={ns}",
                  "-p", f"camera_namespace:={camera_namespace}")
            start(f"capture_{tag}", "facediff-capture", "-r", f"__ns:={ns}",
                  "-p", f"camera_namespace:={camera_namespace}", "-p", "loop:=true")

        def died():
            return any(p.poll() is not None for p in procs.values())

        assert spin_until(executor, lambda: all(got.values()), time.monotonic() + DEADLINE_S, died), \
            f"landmarks per namespace: { {ns: len(v) for ns, v in got.items()} }\n{tail()}"
        for ns, camera_namespace, color_topic in CASES:
            # One publisher (that pair's capture) and one subscriber (its landmark node) on the topic
            # realsense2_camera's naming gives; the landmarks carry the sample's frame id.
            assert node.count_publishers(color_topic) == 1, (camera_namespace, tail())
            assert node.count_subscribers(color_topic) == 1, (camera_namespace, tail())
            assert got[ns][0].header.frame_id == "camera_color_optical_frame"
        assert not died(), tail()
    finally:
        stop(*procs.values())
        for f in logs.values():
            f.close()
        executor.shutdown()
        node.destroy_node()
        ctx.try_shutdown()
