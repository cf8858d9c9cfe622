"""One side of the two-process DDS test (run by test_dds_two_process.py, not by pytest).

    python dds_peer.py pub      publish each custom message and a 640x480 XYZRGB cloud until killed
    python dds_peer.py sub      receive one of each, compare with the expected content, print JSON

Both sides build the expected content from the same seed, so the subscriber checks the bytes it
received against values it computed itself.
"""

import json
import math
import sys
import time

import numpy as np
import rclpy
from geometry_msgs.msg import Point, Pose
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2, RegionOfInterest
from std_msgs.msg import Header

from facediff_ros.adapters.cloud import from_pointcloud2, to_pointcloud2
from facediff_ros.adapters.dds import configure_environment
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.cloud import depth_to_points, xyzrgb_cloud
from facediff_ros.msg import ExpressionTarget, FaceLandmarks, FaceModel

SEED = 20261125
FRAME = "camera_color_optical_frame"
TOPICS = {"landmarks": FaceLandmarks, "model": FaceModel, "target": ExpressionTarget, "points": PointCloud2}


def expected_arrays():
    rng = np.random.default_rng(SEED)
    intr = Intrinsics.from_fov(640, 480, 69.0)
    depth = rng.uniform(0.4, 1.5, size=intr.shape).astype(np.float32)
    depth[100:140, 200:260] = 0.0  # a hole: NaN points in the cloud
    colors = rng.integers(0, 256, size=intr.shape + (3,), dtype=np.uint8)
    return {
        "u": rng.uniform(0, 640, 478).astype(np.float32),
        "v": rng.uniform(0, 480, 478).astype(np.float32),
        "p": rng.normal(0, 0.1, (478, 3)) + [0, 0, 0.6],
        "valid": rng.random(478) > 0.1,
        "identity": rng.normal(size=100).astype(np.float32),
        "expression": rng.random(53).astype(np.float32),
        "cloud": xyzrgb_cloud(depth_to_points(depth, intr), colors),
    }


def build_messages(stamp):
    a = expected_arrays()
    header = Header(frame_id=FRAME, stamp=stamp)
    lm = FaceLandmarks(header=header, image_width=640, image_height=480, presence=0.93,
                       bbox=RegionOfInterest(x_offset=120, y_offset=80, width=200, height=240))
    lm.u, lm.v, lm.valid = a["u"].tolist(), a["v"].tolist(), a["valid"].tolist()
    nan = Point(x=math.nan, y=math.nan, z=math.nan)
    lm.points = [Point(x=float(x), y=float(y), z=float(z)) if ok else nan
                 for (x, y, z), ok in zip(a["p"], a["valid"])]
    model = FaceModel(header=header, model_id="ict-facekit-light", model_version="da5f95a6",
                      residual_rms=0.0021, quality=0.8, identity_locked=True)
    model.identity, model.expression = a["identity"].tolist(), a["expression"].tolist()
    model.expression_names = [f"shape{i}" for i in range(53)]
    model.head_pose = Pose()
    model.head_pose.position.z = 0.6
    target = ExpressionTarget(category=ExpressionTarget.HAPPY, intensity=0.7,
                              weights=[0.5], weight_names=["jawOpen"])
    return {"landmarks": lm, "model": model, "target": target,
            "points": to_pointcloud2(a["cloud"], header)}


def check(received):
    """Compare received messages with the expected content; return a list of differences."""
    a = expected_arrays()
    errors = []

    def expect(cond, what):
        if not cond:
            errors.append(what)

    lm = received["landmarks"]
    expect(np.array_equal(np.asarray(lm.u, np.float32), a["u"]), "landmarks.u")
    expect(np.array_equal(np.asarray(lm.valid), a["valid"]), "landmarks.valid")
    pts = np.array([[p.x, p.y, p.z] for p in lm.points])
    exp = np.where(a["valid"][:, None], a["p"], np.nan)
    expect(np.array_equal(pts, exp, equal_nan=True), "landmarks.points")
    expect(lm.header.frame_id == FRAME and lm.bbox.width == 200, "landmarks header/bbox")
    m = received["model"]
    expect(np.array_equal(np.asarray(m.identity, np.float32), a["identity"]), "model.identity")
    expect(np.array_equal(np.asarray(m.expression, np.float32), a["expression"]), "model.expression")
    expect(m.expression_names[52] == "shape52" and m.identity_locked, "model names/locked")
    t = received["target"]
    expect(t.category == ExpressionTarget.HAPPY and abs(t.intensity - 0.7) < 1e-6, "target")
    c = received["points"]
    expect((c.height, c.width, c.point_step) == (480, 640, 16), "cloud geometry")
    cloud = from_pointcloud2(c)
    expect(cloud.tobytes() == a["cloud"].tobytes(), "cloud bytes")
    expect(c.header.frame_id == FRAME and not c.is_dense, "cloud header / is_dense")
    return errors


def main(role: str, deadline_s: float = 40.0):
    configure_environment()
    rclpy.init()
    node = rclpy.create_node(f"facediff_dds_test_{role}")
    end = time.monotonic() + deadline_s
    if role == "pub":
        pubs = {k: node.create_publisher(t, f"/dds_test/{k}", qos_profile_sensor_data)
                for k, t in TOPICS.items()}
        try:
            while time.monotonic() < end and not all(p.get_subscription_count() > 0 for p in pubs.values()):
                rclpy.spin_once(node, timeout_sec=0.05)
            msgs = build_messages(node.get_clock().now().to_msg())
            # Best effort: a sample published before the reader is fully matched may be lost, so
            # keep publishing (5 Hz) until the subscriber has what it needs and the test stops us.
            while time.monotonic() < end:
                for k, p in pubs.items():
                    p.publish(msgs[k])
                rclpy.spin_once(node, timeout_sec=0.2)
        except Exception:  # noqa: BLE001
            # SIGTERM from the test shuts the context down (a clean exit frees the SHM segment):
            # spin_once then raises ExternalShutdownException, and a publish() caught between two
            # spins raises RCLError on the invalid context. Only those are the expected end.
            if rclpy.ok():
                raise
        return 0
    received = {}
    subs = [node.create_subscription(t, f"/dds_test/{k}", lambda m, k=k: received.setdefault(k, m),
                                     qos_profile_sensor_data) for k, t in TOPICS.items()]
    while time.monotonic() < end and len(received) < len(TOPICS):
        rclpy.spin_once(node, timeout_sec=0.1)
    missing = sorted(set(TOPICS) - set(received))
    result = {"missing": missing, "errors": check(received) if not missing else []}
    print(json.dumps(result), flush=True)
    node.destroy_node()
    del subs
    rclpy.shutdown()
    return 0 if not missing and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
