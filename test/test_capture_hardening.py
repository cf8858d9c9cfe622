"""The capture node against what a hostile test found (issue 14, items 2, 3 and 6).

- Bad topic names set at run time through the parameter service of a real capture process are
  rejected with a reason; the process lives on, the parameter keeps its value and frames keep
  coming on the old topics (before: InvalidTopicNameException killed the process, no reply).
- A bad start-up parameter ends capture and landmarks with one line and exit status 2 (before:
  the ValueError's traceback, then an AttributeError traceback from the shutdown path, rc 1).
- Parameters that do not apply to the current kind of source do not re-open it; an open() that
  blocks is reported ``opening`` then ``stalled`` (counted ``error_open_timeout``), abandoned and
  retried (before: a blocked open left the node silent and 'streaming').
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from facediff_ros.adapters.dds import configure_environment  # noqa: E402
from facediff_ros.core.camera import Intrinsics  # noqa: E402
from facediff_ros.core.capture import sources  # noqa: E402
from facediff_ros.nodes.spin import EXIT_BAD_PARAMETERS, spin_until  # noqa: E402
from waiting import wait_for  # noqa: E402
from processes import stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INTR = Intrinsics.from_fov(160, 120, 69.0)
COLOR_TOPIC = "/camera/camera/color/image_raw"


def _start(module, tmp_path, *params, name=None):
    """A node process (``python -m facediff_ros.nodes.<module> --ros-args <params>``), output to a log."""
    log = open(tmp_path / f"{name or module}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", f"facediff_ros.nodes.{module}", "--ros-args", *params],
                            env=configure_environment(dict(os.environ)), stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(ROOT))
    proc.log_path = tmp_path / f"{name or module}.log"
    return proc


@pytest.fixture
def probe():
    """A test node and its executor in a context of its own."""
    configure_environment()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("hardening_probe", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    ctx.try_shutdown()


def _call(executor, future, timeout=10.0):
    executor.spin_until_future_complete(future, timeout_sec=timeout)
    assert future.done(), "no reply from the parameter service"
    return future.result()


# ---- item 2: bad names through the parameter service of a real process -------------------------

BAD_NAMES = ["9cam", "é", "32FC1", "c" * 300]


def test_bad_camera_names_set_at_run_time_are_rejected_and_the_process_keeps_publishing(tmp_path, probe):
    from rclpy.parameter_client import AsyncParameterClient
    node, executor = probe
    frames = []
    node.create_subscription(Image, COLOR_TOPIC, frames.append, qos_profile_sensor_data)
    proc = _start("capture", tmp_path, "-p", "loop:=true")
    try:
        deadline = time.monotonic() + 30.0
        assert spin_until(executor, lambda: len(frames) >= 3, deadline,
                          abort=lambda: proc.poll() is not None), proc.log_path.read_text()[-3000:]
        client = AsyncParameterClient(node, "capture")
        assert client.wait_for_services(timeout_sec=10.0)
        for bad in BAD_NAMES:
            res = _call(executor, client.set_parameters([Parameter("camera_name", value=bad)])).results[0]
            assert not res.successful, f"{bad!r} was accepted"
            assert "camera_name" in res.reason or "not valid for node" in res.reason, res.reason
            assert proc.poll() is None, f"capture died on {bad!r}:\n{proc.log_path.read_text()[-3000:]}"
        values = _call(executor, client.get_parameters(["camera_name"])).values
        assert values[0].string_value == "camera"
        # Frames still come on the old topics after the last rejection.
        seen = len(frames)
        assert spin_until(executor, lambda: len(frames) >= seen + 3, time.monotonic() + 10.0), \
            proc.log_path.read_text()[-3000:]
        assert frames[-1].header.frame_id == "camera_color_optical_frame"
        assert proc.poll() is None
        # A good name is still taken (the service was not left broken).
        res = _call(executor, client.set_parameters([Parameter("camera_name", value="cam2")])).results[0]
        assert res.successful, res.reason
        assert spin_until(executor, lambda: node.count_publishers("/camera/cam2/color/image_raw") == 1,
                          time.monotonic() + 10.0)
    finally:
        stop(proc)


# ---- item 3: one line for a bad start-up parameter -----------------------------------------------

@pytest.mark.parametrize("module, param, reason", [
    ("capture", "depth_encoding:=8UC1", "depth_encoding: expected one of ['16UC1', '32FC1'], got '8UC1'"),
    ("capture", "camera_name:=9cam", "camera_name: expected ASCII letters"),
    ("landmarks", "face_selection:=x", "face_selection: expected one of ['largest', 'closest'], got 'x'"),
])
def test_bad_start_up_parameter_prints_one_line_and_exits_non_zero(module, param, reason):
    env = configure_environment(dict(os.environ))
    res = subprocess.run([sys.executable, "-m", f"facediff_ros.nodes.{module}", "--ros-args", "-p", param],
                         env=env, capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert res.returncode == EXIT_BAD_PARAMETERS, res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert reason in lines[0] and "cannot start" in lines[0], lines[0]


# ---- item 6: in-process, with a fake source --------------------------------------------------------

def _frame():
    return sources.CapturedFrame(color=np.zeros(INTR.shape + (3,), np.uint8),
                                 depth=np.full(INTR.shape, 600, np.uint16), intrinsics=INTR,
                                 depth_scale=0.001, stamp=1.5, frame_number=0)


class _EndlessSource:
    """Frames every 5 ms for ever; counts opens and closes; ``block`` makes open() wait on an event."""

    def __init__(self, block_first=0):
        self.opened = 0
        self.open_calls = 0
        self.closed = 0
        self.block_first = block_first  # this many open() calls block until ``release`` is set
        self.release = threading.Event()
        self.lock = threading.Lock()

    def describe(self):
        return "endless"

    def open(self):
        with self.lock:
            self.open_calls += 1
            block = self.open_calls <= self.block_first
        if block:
            self.release.wait()
        with self.lock:
            self.opened += 1

    def read(self):
        time.sleep(0.005)
        return _frame()

    def close(self):
        with self.lock:
            self.closed += 1


def _capture(context, monkeypatch, src, *overrides):
    from facediff_ros.nodes import capture
    calls = []

    def make_source(p):
        calls.append(p)
        return src, ""
    monkeypatch.setattr(capture, "make_source", make_source)
    node = capture.CaptureNode(context=context, parameter_overrides=[
        Parameter("retry_initial_s", value=0.01), *overrides])
    node.make_source_calls = calls
    return node


@pytest.mark.parametrize("source, ignored, applies", [
    ("recording", [("color_width", 1280), ("depth_fps", 15), ("serial_number", "123"),
                   ("synthetic_seed", 4), ("synthetic_frames", 7)], ("loop", False)),
    ("synthetic", [("color_height", 720), ("recording_path", "/elsewhere.db3"), ("timeout_s", 2.0),
                   ("serial_number", "9")], ("synthetic_seed", 3)),
    ("realsense", [("recording_path", "/elsewhere.db3"), ("loop", False), ("realtime", False),
                   ("synthetic_seed", 5)], ("color_fps", 15)),
])
def test_parameters_of_another_source_kind_do_not_reopen_the_source(
        context, monkeypatch, source, ignored, applies):
    src = _EndlessSource()
    node = _capture(context, monkeypatch, src, Parameter("source", value=source))
    try:
        assert wait_for(lambda: node.counters["frames"] >= 3), node.counters.snapshot()
        for name, value in ignored:
            assert node.set_parameters([Parameter(name, value=value)])[0].successful, name
            assert getattr(node.params.config, name) == value
            # A re-open would happen before the next read: frames after the change prove there was none.
            seen = node.counters["frames"]
            assert wait_for(lambda: node.counters["frames"] >= seen + 2)
            assert src.opened == 1 and len(node.make_source_calls) == 1, f"{name} re-opened the {source}"
        name, value = applies
        assert node.set_parameters([Parameter(name, value=value)])[0].successful
        assert wait_for(lambda: src.opened == 2), f"{name} did not re-open the {source}"
        assert src.closed >= 1 and getattr(node.make_source_calls[-1], name) == value
    finally:
        node.destroy_node()


def test_needs_reopen_table():
    from facediff_ros.nodes.capture import CaptureParams, needs_reopen
    rec = CaptureParams(source="recording", recording_path="/x.db3")
    # Written out by kind: what each source is built from (see make_source).
    built_from = {
        "realsense": {"serial_number", "color_width", "color_height", "color_fps", "depth_width",
                      "depth_height", "depth_fps", "timeout_s"},
        "recording": {"recording_path", "loop", "realtime", "timeout_s"},
        "synthetic": {"synthetic_frames", "synthetic_seed", "loop", "realtime"},
    }
    changes = {"serial_number": "1", "color_width": 1, "color_height": 1, "color_fps": 1, "depth_width": 1,
               "depth_height": 1, "depth_fps": 1, "timeout_s": 1.0, "recording_path": "/y.db3",
               "loop": False, "realtime": False, "synthetic_frames": 1, "synthetic_seed": 1,
               "camera_name": "other", "depth_encoding": "32FC1", "stamp_source": "device",
               "color_qos": "DEFAULT", "diagnostics_period_s": 2.0}
    for kind, fields in built_from.items():
        old = CaptureParams(**{**rec.__dict__, "source": kind})
        for name, value in changes.items():
            new = CaptureParams(**{**old.__dict__, name: value})
            assert needs_reopen(old, new) == (name in fields), (kind, name)
        assert needs_reopen(old, CaptureParams(**{**old.__dict__, "source": "synthetic" if kind != "synthetic"
                                                  else "realsense"}))


def test_open_that_blocks_is_reported_stalled_abandoned_and_retried(context, monkeypatch):
    src = _EndlessSource(block_first=1)
    timeout_s = 0.3
    node = _capture(context, monkeypatch, src, Parameter("timeout_s", value=timeout_s))
    try:
        assert wait_for(lambda: node.state == "opening", 2.0), node.state
        status = node.diagnostic_status()
        assert status.level == b"\x01" and "opening" in status.message
        opened_at = node._open_started  # monotonic time the open began
        assert wait_for(lambda: node.counters["error_open_timeout"] == 1, 5.0), node.counters.snapshot()
        stalled_after = time.monotonic() - opened_at
        # Reported once the deadline passed, not long after (0.05 s polling + scheduling).
        assert timeout_s <= stalled_after < timeout_s + 0.5, stalled_after
        # The second open (not blocked) streams while the first is still stuck.
        assert wait_for(lambda: node.state == "streaming" and node.counters["frames"] >= 2), node.state
        values = {v.key: v.value for v in node.diagnostic_status().values}
        assert values["opens_stuck"] == "1" and values["error_open_timeout"] == "1"
        assert src.closed == 0
        # The abandoned open returns at last: its source is closed, since nobody reads it.
        src.release.set()
        assert wait_for(lambda: src.closed == 1 and node._stuck_opens == 0), (src.closed, node._stuck_opens)
        assert node.counters["error_open_timeout"] == 1
    finally:
        src.release.set()
        node.destroy_node()
    print(f"open watchdog: stalled {stalled_after:.3f} s after the open began, timeout_s={timeout_s}")


def test_opens_that_never_return_do_not_pile_up_threads(context, monkeypatch):
    from facediff_ros.nodes import capture
    src = _EndlessSource(block_first=10**6)
    node = _capture(context, monkeypatch, src, Parameter("timeout_s", value=0.1),
                    Parameter("retry_max_s", value=0.05))
    try:
        assert wait_for(lambda: node.counters["open_skipped_stuck"] >= 3), node.counters.snapshot()
        assert src.open_calls == capture.MAX_STUCK_OPENS
        assert node.counters["error_open_timeout"] == capture.MAX_STUCK_OPENS
        assert node.state == "stalled"
        status = node.diagnostic_status()
        assert status.level == b"\x02" and "stalled" in status.message
        stuck_threads = [t for t in threading.enumerate() if t.name == "capture-open"]
        assert len(stuck_threads) == capture.MAX_STUCK_OPENS
    finally:
        src.release.set()
        node.destroy_node()


def test_destroy_node_on_a_half_built_capture_node_raises_nothing(context):
    """rclpy.shutdown destroys a node whose constructor raised: nothing may be missing then."""
    from facediff_ros.nodes.capture import CaptureNode
    with pytest.raises(ValueError, match="depth_encoding"):
        CaptureNode(context=context, parameter_overrides=[Parameter("depth_encoding", value="8UC1")])
    context.try_shutdown()  # destroys the half-built node; an AttributeError would surface here


# ---- issue 13: one frame -> messages function for node and benchmark -------------------------------

@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_frame_messages_round_trip(encoding):
    from facediff_ros.adapters.camera_frames import device_stamp, frame_messages
    from facediff_ros.adapters.images import from_camera_info_msg, from_image_msg
    rng = np.random.default_rng(3)
    intr = Intrinsics(fx=300.5, fy=301.25, cx=80.5, cy=59.0, width=160, height=120)
    color = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    depth = rng.integers(0, 65536, (120, 160), dtype=np.uint16)
    depth[::7, ::5] = 0
    frame = sources.CapturedFrame(color=color, depth=depth, intrinsics=intr, depth_scale=0.001,
                                  stamp=12.25, frame_number=4)
    msgs = frame_messages(frame, device_stamp(frame), "cam_color_optical_frame", encoding)
    for m in (msgs.color, msgs.depth, msgs.info):
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (12, 250_000_000)
        assert m.header.frame_id == "cam_color_optical_frame"
    assert msgs.color.encoding == "rgb8" and msgs.depth.encoding == encoding
    np.testing.assert_array_equal(from_image_msg(msgs.color), color)
    got = from_image_msg(msgs.depth)
    if encoding == "16UC1":
        np.testing.assert_array_equal(got, depth)
    else:
        expected = np.where(depth == 0, np.nan, depth.astype(np.float32) / np.float32(1000.0))
        np.testing.assert_array_equal(got, expected.astype(np.float32))  # NaN == NaN here
    assert from_camera_info_msg(msgs.info) == intr
    assert msgs.info.k[0] == 300.5 and msgs.info.k[2] == 80.5 and msgs.info.k[5] == 59.0


def test_frame_messages_refuse_mismatched_sizes_and_bad_stamps():
    from facediff_ros.adapters.camera_frames import device_stamp, frame_messages
    from facediff_ros.core.capture.frames import split_stamp
    frame = _frame()
    frame.depth = frame.depth[:60]
    with pytest.raises(ValueError, match="do not match"):
        frame_messages(frame, device_stamp(frame), "f", "16UC1")
    with pytest.raises(ValueError, match="depth_encoding"):
        frame_messages(_frame(), device_stamp(_frame()), "f", "8UC1")
    assert split_stamp(1.9999999999) == (2, 0)  # rounds into the next second, never nanosec 1e9
    assert split_stamp(0.0) == (0, 0) and split_stamp(3.000000001) == (3, 1)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="stamp"):
            split_stamp(bad)


def test_bad_camera_names_leave_config_publishers_and_frame_id_unchanged_in_process(context, monkeypatch):
    node = _capture(context, monkeypatch, _EndlessSource())
    try:
        before = sorted(p.topic_name for p in node._pubs.values())
        for bad in BAD_NAMES + ["c" * 205]:  # 205: one past the longest name that fits (test_topics)
            res = node.set_parameters([Parameter("camera_name", value=bad)])[0]
            assert not res.successful and res.reason, bad
            assert node.params.config.camera_name == "camera" == node.get_parameter("camera_name").value
            assert node.frame_id == "camera_color_optical_frame"
            assert sorted(p.topic_name for p in node._pubs.values()) == before
        assert node.set_parameters([Parameter("camera_name", value="c" * 204)])[0].successful
        longest = f"/camera/{'c' * 204}/aligned_depth_to_color/camera_info"
        assert node._pubs["depth_info"].topic_name == longest and len(longest) == 255 - 8
    finally:
        node.destroy_node()
