"""The landmark node against what a hostile test found (issue 14, items 1, 5 and 7).

- Item 1, a real process: an rgb8 frame 32767x1 (with matching 16UC1 depth and CameraInfo) made
  OpenCV inside MediaPipe abort the node (SIGABRT). Now the size is refused before any library
  sees it: the node stays alive, counts ``drop_image_too_large`` in /diagnostics, and then still
  turns a normal frame into landmarks.
- Item 5: a CameraInfo with fx = 1e-310 / 5e-324 (x = inf, "valid"), fx = 1e-300 (x ~ 1e300 m),
  cx = 1e12 (x ~ -2e9 m) or a skewed K published landmarks; now each is a counted
  ``drop_bad_camera_info`` and nothing is published.
- Item 7: a sync parameter change dropped the queued messages uncounted and reset the sync drop
  counts; depth with no sample in range (all 65535 mm) published 478 invalid landmarks. Now:
  ``sync_reset_<stream>`` counts, earlier counts kept; a ``drop_no_depth_in_range``.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from facediff_ros.adapters import topics  # noqa: E402
from facediff_ros.adapters.dds import configure_environment  # noqa: E402
from facediff_ros.adapters.images import to_camera_info_msg, to_image_msg  # noqa: E402
from facediff_ros.core.camera import Intrinsics  # noqa: E402
from facediff_ros.msg import FaceLandmarks  # noqa: E402
from facediff_ros.nodes.spin import spin_until  # noqa: E402
from processes import stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACE_INTR = Intrinsics.from_fov(320, 240, 69.0)  # small frames: well inside DDS's best-effort sizes


@pytest.fixture(scope="module")
def face(model):
    """Colour and depth (uint16 mm) of the neutral model 0.45 m away, 320x240."""
    from test_landmark_pipeline import render_face
    return render_face(model, FACE_INTR, distance_m=0.45)[:2]


def _header(sec, frame_id="camera_color_optical_frame"):
    h = Header(frame_id=frame_id)
    h.stamp.sec = sec
    return h


def _messages(color, depth, k, sec, width, height):
    """colour rgb8, depth 16UC1 and a CameraInfo with the row-major ``k`` for a width x height image."""
    h = _header(sec)
    info = to_camera_info_msg(Intrinsics(600.0, 600.0, 100.0, 100.0, width, height), h)
    info.k = [float(x) for x in k]
    return to_image_msg(color, "rgb8", h), to_image_msg(depth, "16UC1", h), info


# ---- item 1: a real landmark process and a 32767-pixel-wide frame --------------------------------

def test_a_32767_pixel_frame_is_a_counted_drop_and_the_process_lives_on(tmp_path, face):
    env = configure_environment(dict(os.environ))
    log = open(tmp_path / "landmarks.log", "w")
    exe = Path(sys.executable).with_name("facediff-landmarks")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "facediff_ros.nodes.landmarks"]
    proc = subprocess.Popen(cmd + ["--ros-args", "-p", "diagnostics_period_s:=0.2"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(ROOT))

    def tail():
        log.flush()
        return (tmp_path / "landmarks.log").read_text()[-3000:]

    configure_environment()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("landmarks_hardening_probe", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    cam = topics.camera_topics("camera", "camera")
    pubs = {"color": node.create_publisher(Image, "/" + cam.color, 10),
            "depth": node.create_publisher(Image, "/" + cam.depth, 10),
            "info": node.create_publisher(CameraInfo, "/" + cam.color_info, 10)}
    landmarks, drops = [], {}

    def on_diag(msg):
        for s in msg.status:
            if s.name.endswith(": landmarks"):
                drops.update({kv.key: kv.value for kv in s.values})

    node.create_subscription(FaceLandmarks, "/" + topics.FACE_LANDMARKS, landmarks.append,
                             qos_profile_sensor_data)
    node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diag, 10)

    def dead():
        return proc.poll() is not None

    def publish(msgs):
        color, depth, info = msgs
        pubs["info"].publish(info)  # CameraInfo first: colour without it for 1 s is "no_camera_info"
        pubs["depth"].publish(depth)
        pubs["color"].publish(color)

    def publish_until(msgs_for, cond, timeout_s):
        """Publish a fresh set (new stamp) every 0.3 s until ``cond`` (best effort may lose a set)."""
        deadline = time.monotonic() + timeout_s
        sec = 100
        while time.monotonic() < deadline and not dead():
            sec += 1
            publish(msgs_for(sec))
            if spin_until(executor, cond, min(deadline, time.monotonic() + 0.3), dead):
                return True
        return cond()

    try:
        # Ready: the node subscribes to the three topics and publishes landmarks.
        assert spin_until(executor, lambda: all(p.get_subscription_count() > 0 for p in pubs.values())
                          and node.count_publishers("/" + topics.FACE_LANDMARKS) > 0,
                          time.monotonic() + 60.0, dead), tail()
        w, h = 32767, 1
        wide = (np.full((h, w, 3), 128, np.uint8), np.full((h, w), 600, np.uint16))
        # A K that passes every CameraInfo check for this size: only the size is wrong.
        k_wide = [600.0, 0.0, (w - 1) / 2, 0.0, 600.0, 0.0, 0.0, 0.0, 1.0]
        assert publish_until(lambda sec: _messages(*wide, k_wide, sec, w, h),
                             lambda: int(drops.get("drop_image_too_large", 0)) >= 1, 30.0), \
            f"alive={not dead()} rc={proc.returncode} diagnostics={drops}\n{tail()}"
        # Alive a moment later (SIGABRT came within 0.05 s of the frame), then a normal frame.
        spin_until(executor, dead, time.monotonic() + 0.5)
        assert not dead(), f"the node exited with {proc.returncode}\n{tail()}"
        color, depth = face
        k = [float(x) for x in FACE_INTR.K.reshape(-1)]
        assert publish_until(lambda sec: _messages(color, depth, k, sec, *FACE_INTR.shape[::-1]),
                             lambda: len(landmarks) > 0, 30.0), f"diagnostics={drops}\n{tail()}"
        assert landmarks[0].image_width == FACE_INTR.width and sum(landmarks[0].valid) > 400
        assert not dead()
    finally:
        stop(proc)
        executor.shutdown()
        node.destroy_node()
        ctx.try_shutdown()
        log.close()


# ---- items 5 and 7 in-process ----------------------------------------------------------------------

@pytest.fixture
def landmarks_node():
    from facediff_ros.nodes.landmarks import LandmarksNode
    configure_environment()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = LandmarksNode(context=ctx)
    node.pub = _Recorder()
    yield node
    node.destroy_node()
    ctx.try_shutdown()


class _Recorder:
    def __init__(self):
        self.msgs = []

    def publish(self, msg):
        self.msgs.append(msg)


def _k(fx=None, cx=None, skew=0.0):
    K = FACE_INTR.K.copy()
    if fx is not None:
        K[0, 0] = fx
    if cx is not None:
        K[0, 2] = cx
    K[0, 1] = skew
    return K.reshape(-1).tolist()


@pytest.mark.parametrize("k", [_k(fx=1e-310), _k(fx=5e-324), _k(fx=1e-300), _k(cx=1e12), _k(skew=1.5)],
                         ids=["fx=1e-310", "fx=5e-324", "fx=1e-300", "cx=1e12", "skew=1.5"])
def test_absurd_intrinsics_with_a_real_face_are_counted_drops_never_published_points(landmarks_node, face, k):
    node = landmarks_node
    color, depth = face
    # The same face with a plausible K is published (so the drop below is the K's doing).
    good = [float(x) for x in FACE_INTR.K.reshape(-1)]
    assert node.process(*_messages(color, depth, good, 1, *FACE_INTR.shape[::-1])) is not None
    assert len(node.pub.msgs) == 1
    out = node.process(*_messages(color, depth, k, 2, *FACE_INTR.shape[::-1]))
    assert out is None and len(node.pub.msgs) == 1
    assert node.counters["drop_bad_camera_info"] == 1
    assert "k:" in node.drops.last


def test_depth_with_no_sample_in_range_is_a_counted_drop_not_invalid_landmarks(landmarks_node, face):
    node = landmarks_node
    color, _ = face
    k = [float(x) for x in FACE_INTR.K.reshape(-1)]
    far = np.full(FACE_INTR.shape, 65535, np.uint16)  # 65.5 m everywhere: beyond lifting's 5 m
    assert node.process(*_messages(color, far, k, 3, *FACE_INTR.shape[::-1])) is None
    assert node.counters["drop_no_depth_in_range"] == 1
    assert node.pub.msgs == [] and node.counters["faces_out"] == 0


def _values(node):
    return {kv.key: kv.value for kv in node.diagnostic_status().values}


def test_a_sync_parameter_change_counts_what_it_discards_and_keeps_earlier_counts(landmarks_node):
    node = landmarks_node
    blank = (np.zeros(FACE_INTR.shape + (3,), np.uint8), np.full(FACE_INTR.shape, 600, np.uint16))
    k = [float(x) for x in FACE_INTR.K.reshape(-1)]
    c1, _, i1 = _messages(*blank, k, 1, *FACE_INTR.shape[::-1])
    c2, d2, i2 = _messages(*blank, k, 2, *FACE_INTR.shape[::-1])
    c3, _, i3 = _messages(*blank, k, 3, *FACE_INTR.shape[::-1])
    node.on_info(i1)
    node.on_color(c1)   # its depth never comes
    node.on_info(i2)
    node.on_depth(d2)
    node.on_color(c2)   # matched; c1 and i1 are left behind: unpaired
    node.on_info(i3)
    node.on_color(c3)   # waits for depth 3, with i3
    before = _values(node)
    assert before["sync_unpaired_color"] == "1" and before["sync_unpaired_info"] == "1"
    assert node.sync.matched == 1

    res = node.set_parameters([Parameter("sync_queue_size", value=7)])[0]
    assert res.successful, res.reason
    after = _values(node)
    assert after["sync_reset_color"] == "1" and after["sync_reset_info"] == "1"
    assert "sync_reset_depth" not in after  # nothing of depth was queued
    assert after["sync_unpaired_color"] == "1" and after["sync_unpaired_info"] == "1"
    assert node.sync.config.queue_size == 7 and node.sync.matched == 1
    # A change that leaves the sync options alone discards nothing.
    node.on_color(_messages(*blank, k, 4, *FACE_INTR.shape[::-1])[0])
    assert node.set_parameters([Parameter("lift_cluster_gap_m", value=0.02)])[0].successful
    assert node.sync.pending("color") == 1 and "sync_reset_color" in _values(node)
    assert _values(node)["sync_reset_color"] == "1"
