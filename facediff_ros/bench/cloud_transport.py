"""DDS transport of one 640x480 XYZRGB cloud between two processes (the package's Fast DDS profile).

    python -m facediff_ros.bench.cloud_transport [--count 30] [--rate 10] [--json OUT]

A child process (``--publish``) publishes ``--count`` organised clouds in depth_image_proc's
layout (32 bytes a point: 9.8 MB) on /avatar/points with sensor-data QoS, stamped just before
``publish``; this process receives them and reports arrival - stamp (publish + transport +
rclpy's deserialisation here) and how many arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np


def _publish(count: int, rate: float, width: int, height: int) -> int:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header

    from facediff_ros.adapters import topics
    from facediff_ros.adapters.cloud import depth_cloud_msg
    from facediff_ros.adapters.dds import configure_environment
    from facediff_ros.core.camera import Intrinsics
    configure_environment()
    rclpy.init()
    node = rclpy.create_node("facediff_bench_cloud_publisher")
    pub = node.create_publisher(PointCloud2, "/" + topics.AVATAR_POINTS, qos_profile_sensor_data)
    K = Intrinsics.from_fov(width, height, 69.0)
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.4, 1.5, (height, width)).astype(np.float32)
    colors = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    msg = depth_cloud_msg(depth, K, colors, "depth_image_proc", Header(frame_id="camera_color_optical_frame"))
    end = time.monotonic() + 30.0
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.5)  # discovery both ways
    for _ in range(count):
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        pub.publish(msg)
        time.sleep(1.0 / rate)
    time.sleep(0.5)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def run(count: int = 30, rate: float = 10.0, width: int = 640, height: int = 480) -> Dict[str, object]:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2

    from facediff_ros.adapters import topics
    from facediff_ros.adapters.dds import configure_environment
    from facediff_ros.bench.process_stats import latency_stats
    env = configure_environment(dict(os.environ))
    env.setdefault("ROS_DOMAIN_ID", str(np.random.default_rng().integers(150, 231)))
    os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
    configure_environment()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("facediff_bench_cloud_receiver", context=ctx)
    arrivals = []
    sizes = []

    def on_cloud(msg):
        arrivals.append((time.time_ns(), msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec))
        sizes.append(len(msg.data))

    node.create_subscription(PointCloud2, "/" + topics.AVATAR_POINTS, on_cloud, qos_profile_sensor_data)
    child = subprocess.Popen([sys.executable, "-m", "facediff_ros.bench.cloud_transport", "--publish",
                              "--count", str(count), "--rate", str(rate), "--width", str(width),
                              "--height", str(height)], env=env)
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    end = time.monotonic() + 60.0 + count / rate
    try:
        while child.poll() is None and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        for _ in range(20):
            ex.spin_once(timeout_sec=0.05)
    finally:
        if child.poll() is None:
            child.terminate()
        child.wait(timeout=10)
        node.destroy_node()
        ctx.try_shutdown()
    lat = latency_stats([(a - s) / 1e6 for a, s in arrivals])
    return {"cloud": f"{width}x{height} depth_image_proc layout", "bytes": sizes[0] if sizes else None,
            "sent": count, "received": len(arrivals), "latency_ms": lat}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.publish:
        return _publish(args.count, args.rate, args.width, args.height)
    res = run(args.count, args.rate, args.width, args.height)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
