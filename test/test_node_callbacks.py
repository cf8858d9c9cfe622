"""Malformed input into both nodes, in-process: every bad message is a counted drop, never an exception."""

import contextlib

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from std_msgs.msg import Header  # noqa: E402

from facediff_ros.adapters.images import to_camera_info_msg, to_image_msg  # noqa: E402
from facediff_ros.core.capture import sources  # noqa: E402
from facediff_ros.core.camera import Intrinsics  # noqa: E402
from waiting import wait_for  # noqa: E402

INTR = Intrinsics.from_fov(160, 120, 69.0)


def _header(sec=1, frame="camera_color_optical_frame"):
    h = Header(frame_id=frame)
    h.stamp.sec = sec
    return h


def _good(sec=1, intr=INTR, depth_value=600):
    h = _header(sec)
    color = np.full(intr.shape + (3,), 120, np.uint8)
    depth = np.full(intr.shape, depth_value, np.uint16)
    return (to_image_msg(color, "rgb8", h), to_image_msg(depth, "16UC1", h), to_camera_info_msg(intr, h))


def _feed(node, color, depth, info):
    node.on_info(info)
    node.on_depth(depth)
    node.on_color(color)
    assert node.wait_idle(60.0)  # the set is processed on the node's worker thread


# ---- landmarks node -----------------------------------------------------------------------------

@pytest.fixture
def landmarks(context):
    from facediff_ros.nodes.landmarks import LandmarksNode
    node = LandmarksNode(context=context)
    yield node
    node.destroy_node()


def test_landmarks_bad_messages_are_counted_drops(landmarks):
    n = landmarks
    sec = iter(range(10, 100))

    def frame():
        return _good(next(sec))

    # 1. unsupported colour encoding
    c, d, i = frame()
    c.encoding = "yuv422"
    _feed(n, c, d, i)
    # 2. colour step/size mismatch (data one row short)
    c, d, i = frame()
    c.data = c.data[: len(c.data) - c.step]
    _feed(n, c, d, i)
    # 3. depth in an unsupported encoding
    c, d, i = frame()
    d.encoding = "16SC1"
    _feed(n, c, d, i)
    # 4. all-zero 16UC1 depth and 5. all-NaN 32FC1 depth
    c, d, i = frame()
    _feed(n, c, to_image_msg(np.zeros(INTR.shape, np.uint16), "16UC1", c.header), i)
    c, d, i = frame()
    _feed(n, c, to_image_msg(np.full(INTR.shape, np.nan, np.float32), "32FC1", c.header), i)
    # 6. depth of another size than colour
    c, d, i = frame()
    _feed(n, c, to_image_msg(np.full((60, 80), 600, np.uint16), "16UC1", c.header), i)
    # 7. CameraInfo of another size than the colour image
    c, d, i = frame()
    _feed(n, c, d, to_camera_info_msg(Intrinsics.from_fov(320, 240, 69.0), c.header))
    # 8. uncalibrated CameraInfo (K all zero)
    c, d, i = frame()
    i.k = [0.0] * 9
    _feed(n, c, d, i)
    # 9. a good frame without a face: counted, nothing published
    _feed(n, *frame())

    counts = n.counters.snapshot()
    assert counts["drop_bad_color"] == 2
    assert counts["drop_bad_depth"] == 1
    assert counts["drop_empty_depth"] == 2
    assert counts["drop_size_mismatch"] == 2
    assert counts["drop_bad_camera_info"] == 1
    assert counts["no_face"] == 1
    assert counts.get("faces_out", 0) == 0 and counts.get("drop_internal_error", 0) == 0
    assert n.sync.matched == 9
    status = n.diagnostic_status()
    assert status.level in (b"\x01", b"\x02")  # WARN / ERROR, never OK without output


def test_landmarks_missing_camera_info_is_a_counted_drop(landmarks, monkeypatch):
    from facediff_ros.nodes import landmarks as module
    # Colour waits for CameraInfo this long before it counts as missing (1 s in the node).
    monkeypatch.setattr(module, "_INFO_MISSING_S", 0.0)
    for sec in (5, 6, 7):
        c, d, _ = _good(sec)
        landmarks.on_depth(d)
        landmarks.on_color(c)
    assert landmarks.counters["drop_no_camera_info"] == 2  # the first one may still wait
    assert landmarks.sync.matched == 0
    assert landmarks.diagnostic_status().level == b"\x02"


def test_landmarks_unpaired_stamps_are_counted_by_the_synchroniser(landmarks):
    c1, d1, i1 = _good(1)
    c2, d2, i2 = _good(2)
    landmarks.on_info(i1)
    landmarks.on_color(c1)  # its depth never comes
    landmarks.on_info(i2)
    landmarks.on_depth(d2)
    landmarks.on_color(c2)
    assert landmarks.sync.dropped["unpaired_color"] == 1
    assert landmarks.sync.matched == 1


def test_landmarks_depth_camera_info_must_match_depth_size(landmarks):
    c, d, i = _good(3)
    landmarks.on_depth_info(to_camera_info_msg(Intrinsics.from_fov(64, 48, 69.0), c.header))
    _feed(landmarks, c, d, i)
    assert landmarks.counters["drop_size_mismatch"] == 1


def test_landmarks_on_a_rendered_face_publishes_valid_landmarks(landmarks, model):
    from rclpy.serialization import deserialize_message

    from test_landmark_pipeline import render_face

    from facediff_ros.adapters.landmarks import from_msg
    from facediff_ros.msg import FaceLandmarks
    intr = Intrinsics.from_fov(640, 480, 69.0)
    color, depth, buf = render_face(model, intr)
    h = _header(7)
    landmarks.pub = _Recorder()
    out = landmarks.process(to_image_msg(color, "rgb8", h), to_image_msg(depth, "16UC1", h),
                            to_camera_info_msg(intr, h))
    assert out is not None, landmarks.counters.snapshot()
    # What was published (serialized FaceLandmarks) reads back as what process() returned.
    (payload,) = landmarks.pub.msgs
    msg = deserialize_message(payload, FaceLandmarks)
    assert msg.header.stamp.sec == 7 and msg.header.frame_id == "camera_color_optical_frame"
    assert (msg.image_width, msg.image_height) == (640, 480)
    pub = from_msg(msg)
    np.testing.assert_array_equal(pub.uv, out.uv)
    np.testing.assert_array_equal(pub.points, out.points)
    np.testing.assert_array_equal(pub.valid, out.valid)
    valid, pts = out.valid, out.points
    assert valid.mean() > 0.9
    assert np.isnan(pts[~valid]).all()
    # Depth of each valid landmark = the rendered depth at its pixel (the face is smooth at 5 px).
    px = np.rint(out.uv).astype(int)
    rendered = buf.depth[px[valid, 1], px[valid, 0]]
    assert np.median(np.abs(pts[valid, 2] - rendered)) < 0.002
    # The nose tip (MediaPipe 1) lies near the image centre, nearer than the head's origin.
    assert 0.4 < pts[1, 2] < 0.6 and abs(out.uv[1, 0] - 319.5) < 20
    assert 0 < out.presence <= 1 and out.bbox[2] > 50
    stages = dict(landmarks.times.items())
    assert {"decode", "face_mesh", "lifting", "message", "publish", "total"} <= set(stages)
    # The debug image (off by default) once switched on: colour with green dots, same header.
    from rclpy.parameter import Parameter
    landmarks.debug_pub = _Recorder()
    assert landmarks.set_parameters([Parameter("publish_debug_image", value=True)])[0].successful
    landmarks.process(to_image_msg(color, "rgb8", h), to_image_msg(depth, "16UC1", h),
                      to_camera_info_msg(intr, h))
    (dbg,) = landmarks.debug_pub.msgs
    assert dbg.header.stamp.sec == 7 and dbg.encoding == "rgb8" and (dbg.width, dbg.height) == (640, 480)
    img = np.frombuffer(bytes(dbg.data), np.uint8).reshape(480, 640, 3)
    green = (img == [0, 255, 0]).all(-1)
    assert not (color == [0, 255, 0]).all(-1).any() and green.sum() > 478
    x, y, w, hh = out.bbox
    assert green[y:y + hh, x:x + w].sum() > 0.9 * green.sum()


# ---- capture node ------------------------------------------------------------------------------

class _ScriptedSource:
    """A source that plays a script: frames and failures, then ends."""

    def __init__(self, script):
        self.script = list(script)
        self.opened = 0

    def describe(self):
        return "scripted"

    def open(self):
        self.opened += 1

    def read(self):
        item = self.script.pop(0) if self.script else sources.SourceEnded("script over")
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        pass


def _frame(color_shape=(120, 160), depth_shape=(120, 160)):
    return sources.CapturedFrame(color=np.zeros(color_shape + (3,), np.uint8),
                                 depth=np.full(depth_shape, 600, np.uint16), intrinsics=INTR,
                                 depth_scale=0.001, stamp=1.5, frame_number=0)


@contextlib.contextmanager
def _scripted_capture(context, monkeypatch, src):
    """A capture node reading from ``src`` with a 10 ms first retry; destroyed on exit."""
    from facediff_ros.nodes import capture
    monkeypatch.setattr(capture, "make_source", lambda p: (src, ""))
    node = capture.CaptureNode(context=context,
                               parameter_overrides=[rclpy.parameter.Parameter("retry_initial_s", value=0.01)])
    try:
        yield node
    finally:
        node.destroy_node()


def test_capture_survives_bad_frames_timeouts_and_end_of_recording(context, monkeypatch):
    src = _ScriptedSource([_frame(), _frame(depth_shape=(60, 80)), sources.SourceTimeout("unplugged"),
                           _frame(), RuntimeError("librealsense: USB error")])
    with _scripted_capture(context, monkeypatch, src) as node:
        assert wait_for(lambda: node.state == "ended"), node.counters.snapshot()
        counts = node.counters.snapshot()
        assert counts["frames"] == 2
        assert counts["drop_bad_frame"] == 1
        assert counts["error_timeout"] == 1 and counts["error_internal"] == 1
        assert counts["error_ended"] == 1
        assert src.opened == 3  # first open + one re-open after each failure
        status = node.diagnostic_status()
        assert status.level == b"\x01" and "ended" in status.message


def test_capture_missing_recording_retries_with_error_status(context):
    from facediff_ros.nodes.capture import CaptureNode
    node = CaptureNode(context=context, parameter_overrides=[
        rclpy.parameter.Parameter("recording_path", value="/nonexistent/x.db3"),
        rclpy.parameter.Parameter("retry_initial_s", value=0.01),
        rclpy.parameter.Parameter("retry_max_s", value=0.02)])
    try:
        assert wait_for(lambda: node.counters["error_unavailable"] >= 3)
        assert node.state == "retrying"
        status = node.diagnostic_status()
        assert status.level == b"\x02" and "not found" in status.message
    finally:
        node.destroy_node()


def test_capture_open_failing_with_a_plain_runtime_error_is_counted_and_retried(context, monkeypatch):
    """librealsense raises RuntimeError (e.g. from query_devices): the reader thread must survive it."""

    class _BrokenOpen(_ScriptedSource):
        def open(self):
            self.opened += 1
            if self.opened <= 2:
                raise RuntimeError("librealsense: failed to set power state")

    src = _BrokenOpen([_frame()])
    with _scripted_capture(context, monkeypatch, src) as node:
        assert wait_for(lambda: node.state == "ended"), node.counters.snapshot()
        counts = node.counters.snapshot()
        assert counts["error_internal"] == 2 and counts["frames"] == 1 and src.opened == 3
        assert node._thread.is_alive()


@pytest.fixture
def idle_capture(context):
    """A capture node whose recording does not exist: it retries in the background, publishes nothing."""
    from rclpy.parameter import Parameter

    from facediff_ros.nodes.capture import CaptureNode
    node = CaptureNode(context=context, parameter_overrides=[
        Parameter("recording_path", value="/nonexistent/x.db3")])
    yield node
    node.destroy_node()


def test_capture_topic_names_change_safely(idle_capture):
    node = idle_capture
    for bad in ("bad name", "cam//era", "9cam"):
        res = node.set_parameters([rclpy.parameter.Parameter("camera_namespace", value=bad)])[0]
        assert not res.successful and "camera_namespace" in res.reason
    assert node.params.config.camera_namespace == "camera"
    res = node.set_parameters([rclpy.parameter.Parameter("camera_namespace", value="robot/head"),
                               rclpy.parameter.Parameter("camera_name", value="rgbd")])
    assert all(r.successful for r in res)
    topics = sorted(pub.topic_name for pub in node._pubs.values())
    assert topics == ["/robot/head/rgbd/aligned_depth_to_color/camera_info",
                      "/robot/head/rgbd/aligned_depth_to_color/image_raw",
                      "/robot/head/rgbd/color/camera_info", "/robot/head/rgbd/color/image_raw"]
    assert node.frame_id == "rgbd_color_optical_frame"


def test_capture_rejects_invalid_parameters_with_a_reason(idle_capture):
    node = idle_capture
    res = node.set_parameters([rclpy.parameter.Parameter("depth_encoding", value="8UC1")])[0]
    assert not res.successful and "depth_encoding" in res.reason
    res = node.set_parameters([rclpy.parameter.Parameter("retry_max_s", value=0.1)])[0]
    assert not res.successful and "retry_max_s" in res.reason
    assert node.get_parameter("depth_encoding").value == "16UC1"
    res = node.set_parameters([rclpy.parameter.Parameter("depth_encoding", value="32FC1")])[0]
    assert res.successful and node.params.config.depth_encoding == "32FC1"


class _Recorder:
    def __init__(self):
        self.msgs = []

    def publish(self, msg):
        self.msgs.append(msg)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_capture_publish_frame_one_stamp_frame_id_and_depth_encoding(context, monkeypatch, encoding):
    from rclpy.parameter import Parameter

    from facediff_ros.adapters.images import from_camera_info_msg, from_image_msg
    from facediff_ros.nodes import capture
    src = _ScriptedSource([])
    monkeypatch.setattr(capture, "make_source", lambda p: (src, ""))
    node = capture.CaptureNode(context=context, parameter_overrides=[
        Parameter("depth_encoding", value=encoding), Parameter("camera_name", value="cam1"),
        Parameter("stamp_source", value="device")])
    try:
        assert wait_for(lambda: node.state == "ended")
        pubs = {k: _Recorder() for k in ("color", "color_info", "depth", "depth_info")}
        node._pubs = pubs
        frame = _frame()
        frame.depth[0, 0] = 0
        frame.depth[1, 1] = 1234
        node.publish_frame(frame)
        msgs = {k: p.msgs[0] for k, p in pubs.items()}
        for m in msgs.values():
            assert m.header.frame_id == "cam1_color_optical_frame"
            assert (m.header.stamp.sec, m.header.stamp.nanosec) == (1, 500_000_000)  # stamp 1.5 s
        assert msgs["color"].encoding == "rgb8" and msgs["depth"].encoding == encoding
        depth = from_image_msg(msgs["depth"])
        if encoding == "16UC1":
            assert depth[0, 0] == 0 and depth[1, 1] == 1234 and depth[2, 2] == 600
        else:
            assert np.isnan(depth[0, 0])
            assert depth[1, 1] == np.float32(1.234) and depth[2, 2] == np.float32(0.6)
        assert from_camera_info_msg(msgs["color_info"]) == INTR == from_camera_info_msg(msgs["depth_info"])
    finally:
        node.destroy_node()


def test_capture_default_source_falls_back_to_synthetic_when_the_sample_is_missing(monkeypatch, tmp_path):
    from facediff_ros.nodes import capture
    from facediff_ros.synthetic import actor_source
    monkeypatch.setattr(capture, "SAMPLE_RECORDING", tmp_path / "missing.db3")
    source, note = capture.make_source(capture.CaptureParams())
    assert isinstance(source, actor_source.SyntheticSource) and "not installed" in note
    (tmp_path / "missing.db3").write_bytes(b"")
    source, note = capture.make_source(capture.CaptureParams())
    assert isinstance(source, sources.RecordingSource) and note == ""
    source, _ = capture.make_source(capture.CaptureParams(source="realsense", serial_number="123"))
    assert isinstance(source, sources.RealSenseSource) and source.config.serial_number == "123"


def test_landmarks_diagnostics_tell_no_input_from_waiting_from_no_face(landmarks):
    n = landmarks
    assert n.diagnostic_status().message == "no colour images received in the last 2 s"
    c, d, i = _good(40)
    n.on_color(c)  # colour arrives, its partners do not: nothing processed yet
    status = n.diagnostic_status()
    assert status.level == b"\x01" and "no result yet" in status.message
    _feed(n, *_good(41))  # a full, faceless frame
    status = n.diagnostic_status()
    assert status.level == b"\x01" and "no face is found" in status.message


def test_an_integer_written_for_a_float_parameter_is_taken_at_start_up(context):
    """`-p sync_tolerance_s:=0` parses as an int; the node starts with 0.0 instead of refusing."""
    from rclpy.parameter import Parameter

    from facediff_ros.nodes.landmarks import LandmarksNode
    node = LandmarksNode(context=context, parameter_overrides=[Parameter("sync_tolerance_s", value=0),
                                                               Parameter("lift_cluster_gap_m", value=1)])
    try:
        assert node.params.config.sync_tolerance_s == 0.0
        assert node.get_parameter("lift_cluster_gap_m").value == 1.0
    finally:
        node.destroy_node()
