"""Receive a topic for a while and report what came: a process-level probe (e.g. in another network
namespace or on another host).

    python -m facediff_ros.reliability.listen --topic /avatar/points --count 3 --timeout 120 --json OUT

Prints one JSON line (and writes it to --json): messages received, their sizes (bytes of ``data``),
the first arrival (s after start), latency (wall clock now - header stamp, s; meaningful when the
sender's clock is this host's) and the header frame ids. Exit status 0 when ``--count`` messages
came within ``--timeout`` s, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="/avatar/points")
    ap.add_argument("--type", default="sensor_msgs.msg:PointCloud2", help="module:Class of the message")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json", default=None, help="write the report here too")
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.qos import qos_profile_sensor_data

    from facediff_ros.adapters.dds import configure_environment
    configure_environment()
    module, cls = args.type.split(":")
    msg_type = getattr(importlib.import_module(module), cls)
    rclpy.init()
    node = rclpy.create_node("facediff_listen")
    t0 = time.monotonic()
    got = []

    def on_msg(m):
        now = time.time()
        data = getattr(m, "data", b"")
        got.append({"arrival_s": time.monotonic() - t0, "bytes": len(data),
                    "latency_s": now - (m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec),
                    "frame_id": m.header.frame_id})

    node.create_subscription(msg_type, args.topic, on_msg, qos_profile_sensor_data)
    try:
        while len(got) < args.count and time.monotonic() - t0 < args.timeout:
            rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    report = {"topic": args.topic, "received": len(got), "wanted": args.count,
              "first_arrival_s": got[0]["arrival_s"] if got else None,
              "bytes": [g["bytes"] for g in got], "latency_s": [round(g["latency_s"], 4) for g in got],
              "frame_ids": sorted({g["frame_id"] for g in got}), "elapsed_s": time.monotonic() - t0}
    line = json.dumps(report)
    print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    node.destroy_node()
    rclpy.try_shutdown()
    return 0 if len(got) >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
