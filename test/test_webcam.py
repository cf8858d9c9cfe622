"""The webcam source (OpenCV VideoCapture) on a video file made here from the synthetic actor, its
intrinsics (calibration YAML or default field of view), the capture node with source:=webcam, the
landmark node with use_depth:=false, and the colour-only chain capture -> landmarks -> fitting ->
editor as four processes over DDS."""

import math
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from facediff_ros.core.capture.sources import SourceEnded, SourceUnavailable  # noqa: E402
from facediff_ros.core.capture.webcam import WebcamConfig, WebcamSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FPS = 30.0
NUM_FRAMES = 20


def _write_video(path, frames_rgb, fps=FPS):
    """An MJPG .avi of RGB frames (OpenCV writes BGR)."""
    h, w = frames_rgb[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames_rgb:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _calibration_yaml(path, width, height, K, D=(0.0, 0.0, 0.0, 0.0, 0.0), model="plumb_bob", P=None):
    """A camera_info YAML laid out as ROS camera_calibration writes ost.yaml."""
    K = np.asarray(K, float).reshape(3, 3)
    P = np.hstack([K, np.zeros((3, 1))]) if P is None else np.asarray(P, float).reshape(3, 4)

    def block(rows, cols, data):
        return f"  rows: {rows}\n  cols: {cols}\n  data: [{', '.join(repr(float(v)) for v in data)}]\n"

    path.write_text(f"image_width: {width}\nimage_height: {height}\ncamera_name: webcam\n"
                    f"camera_matrix:\n{block(3, 3, K.ravel())}distortion_model: {model}\n"
                    f"distortion_coefficients:\n{block(1, len(D), D)}"
                    f"rectification_matrix:\n{block(3, 3, np.eye(3).ravel())}"
                    f"projection_matrix:\n{block(3, 4, P.ravel())}")
    return path


@pytest.fixture(scope="module")
def actor_video(tmp_path_factory):
    """NUM_FRAMES 640x480 frames of the synthetic actor as an MJPG .avi at 30 fps, with the actor's
    colour frames, intrinsics and head masks (depth nearer than the 1.4 m wall)."""
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
    actor = SyntheticActor(ActorConfig(seed=7, num_frames=NUM_FRAMES, fps=FPS))
    frames = [actor.frame(i) for i in range(NUM_FRAMES)]
    folder = tmp_path_factory.mktemp("webcam")
    path = _write_video(folder / "actor.avi", [f.color for f in frames])
    return dict(path=path, folder=folder, colors=[f.color for f in frames], intrinsics=frames[0].intrinsics,
                heads=[(f.depth > 0) & (f.depth < 1000) for f in frames], depth0=frames[0].depth)


def _blur(img):
    return cv2.GaussianBlur(np.asarray(img, np.float32), (0, 0), 2.0)


def _read_all(source, limit=1000):
    out = []
    try:
        while len(out) < limit:
            out.append(source.read())
    except SourceEnded:
        pass
    return out


# ---- the source --------------------------------------------------------------------------------
def test_video_file_frames_count_size_order_and_stamps(actor_video):
    src = WebcamSource(WebcamConfig(device=str(actor_video["path"]), loop=False, realtime=False))
    src.open()
    try:
        frames = _read_all(src)
    finally:
        src.close()
    assert len(frames) == NUM_FRAMES
    for i, (f, truth) in enumerate(zip(frames, actor_video["colors"])):
        assert f.color.shape == (480, 640, 3) and f.color.dtype == np.uint8 and f.depth is None
        assert f.frame_number == i and f.stamp == pytest.approx(i / FPS)
        # RGB, not OpenCV's BGR: the actor's frame up to JPEG loss of its sensor noise (compared
        # blurred: ~0.9 grey levels), far nearer than its channel-swapped self (~12.5).
        err = np.abs(_blur(f.color) - _blur(truth)).mean()
        swapped = np.abs(_blur(f.color[..., ::-1]) - _blur(truth)).mean()
        assert err < 2.0 and err < swapped / 4, (i, err, swapped)
    assert src.fps == FPS and src.kind == "file"


@pytest.mark.parametrize("hfov", [60.0, 75.0])
def test_default_intrinsics_from_the_horizontal_field_of_view(actor_video, hfov):
    cfg = WebcamConfig(device=str(actor_video["path"]), loop=False, realtime=False)
    if hfov != 60.0:
        cfg = WebcamConfig(device=cfg.device, hfov_deg=hfov, loop=False, realtime=False)
    src = WebcamSource(cfg)
    src.open()
    try:
        k = src.read().intrinsics
    finally:
        src.close()
    f = 640 / 2 / math.tan(math.radians(hfov) / 2)  # fx = w / 2 / tan(hfov / 2)
    assert k.fx == pytest.approx(f, rel=1e-12) and k.fy == pytest.approx(f, rel=1e-12)
    assert (k.cx, k.cy, k.width, k.height) == (319.5, 239.5, 640, 480)  # centre of pixels 0..639
    assert src.intrinsics_from == "default_hfov" and f"{hfov:g} deg" in src.describe()


def test_intrinsics_from_a_calibration_yaml(actor_video, tmp_path):
    K = [[512.25, 0, 321.75], [0, 515.5, 238.25], [0, 0, 1]]
    yml = _calibration_yaml(tmp_path / "ost.yaml", 640, 480, K)
    plain = WebcamSource(WebcamConfig(device=str(actor_video["path"]), loop=False, realtime=False))
    src = WebcamSource(WebcamConfig(device=str(actor_video["path"]), calibration=str(yml), loop=False,
                                    realtime=False))
    plain.open()
    src.open()
    try:
        a, b = plain.read(), src.read()
    finally:
        plain.close()
        src.close()
    k = b.intrinsics
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == (512.25, 515.5, 321.75, 238.25, 640, 480)
    assert src.intrinsics_from == "calibration" and str(yml) in src.describe()
    np.testing.assert_array_equal(a.color, b.color)  # no distortion: the frames are not resampled


def test_calibration_at_another_resolution_is_scaled_or_refused(actor_video, tmp_path):
    K2 = np.array([[931.0, 0, 641.0], [0, 933.0, 478.5], [0, 0, 1]])
    yml = _calibration_yaml(tmp_path / "hd.yaml", 1280, 960, K2)
    src = WebcamSource(WebcamConfig(device=str(actor_video["path"]), calibration=str(yml), realtime=False))
    src.open()
    k = src.read().intrinsics
    src.close()
    # Half the size: focal lengths halve; pixel centres: (c + 0.5) / 2 - 0.5.
    assert (k.fx, k.fy) == pytest.approx((465.5, 466.5))
    assert (k.cx, k.cy) == pytest.approx(((641.0 + 0.5) / 2 - 0.5, (478.5 + 0.5) / 2 - 0.5))
    wide = _calibration_yaml(tmp_path / "wide.yaml", 1280, 720, K2)
    with pytest.raises(SourceUnavailable, match="1280x720.*640x480.*aspect ratio"):
        WebcamSource(WebcamConfig(device=str(actor_video["path"]), calibration=str(wide))).open()


def _distort(K, D, xy):
    """plumb_bob (Brown-Conrady: k1, k2, p1, p2, k3) applied to normalised points -> pixels."""
    k1, k2, p1, p2, k3 = D
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([K[0, 0] * xd + K[0, 2], K[1, 1] * yd + K[1, 2]], -1)


def test_distorted_frames_are_rectified_to_the_calibrated_pinhole(tmp_path):
    """Dots drawn where a distorting lens puts known points land, after the source, where the
    pinhole K puts them (the distortion formula written out here, not OpenCV's)."""
    K = np.array([[420.0, 0, 318.0], [0, 420.0, 241.0], [0, 0, 1]])
    D = (-0.25, 0.08, 0.002, -0.0015, 0.0)
    gx, gy = np.meshgrid(np.linspace(-0.55, 0.55, 5), np.linspace(-0.4, 0.4, 4))
    xy = np.stack([gx.ravel(), gy.ravel()], -1)  # normalised image coordinates
    raw = np.zeros((480, 640, 3), np.uint8)
    for u, v in _distort(K, D, xy):
        cv2.circle(raw, (int(round(u * 16)), int(round(v * 16))), 4 * 16, (255, 255, 255), -1,
                   lineType=cv2.LINE_AA, shift=4)
    video = _write_video(tmp_path / "dots.avi", [raw] * 3)
    yml = _calibration_yaml(tmp_path / "lens.yaml", 640, 480, K, D)
    src = WebcamSource(WebcamConfig(device=str(video), calibration=str(yml), loop=False, realtime=False))
    src.open()
    frame = src.read()
    src.close()
    assert src.intrinsics_from == "calibration" and "rectified" in src.describe()
    k = frame.intrinsics
    assert (k.fx, k.fy, k.cx, k.cy) == (420.0, 420.0, 318.0, 241.0)  # P = [K | 0]: the same camera
    gray = frame.color[..., 0]
    n, _, stats, centroids = cv2.connectedComponentsWithStats((gray > 100).astype(np.uint8))
    expected = np.stack([K[0, 0] * xy[:, 0] + K[0, 2], K[1, 1] * xy[:, 1] + K[1, 2]], -1)
    found = centroids[1:]
    assert n - 1 == len(expected)
    nearest = np.linalg.norm(expected[:, None] - found[None], axis=-1).min(axis=1)
    assert nearest.max() < 0.5, nearest
    # ...and without the calibration the corners' dots stay where the lens put them (>> 0.5 px away).
    distorted = _distort(K, D, xy)
    assert np.linalg.norm(distorted - expected, axis=-1).max() > 10


def test_bad_calibration_files_are_named(actor_video, tmp_path):
    dev = str(actor_video["path"])
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SourceUnavailable,
                       match=f"video_calibration: cannot read the calibration file {missing}"):
        WebcamSource(WebcamConfig(device=dev, calibration=str(missing))).open()
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_width: 640\nimage_height: 480\n")
    with pytest.raises(SourceUnavailable, match=r"bad.yaml: camera_matrix.data is missing"):
        WebcamSource(WebcamConfig(device=dev, calibration=str(bad))).open()
    fish = _calibration_yaml(tmp_path / "fish.yaml", 640, 480, np.diag([400.0, 400.0, 1.0]) + [[0, 0, 320],
                             [0, 0, 240], [0, 0, 0]], D=(0.1, 0.01, 0.0, 0.0), model="equidistant")
    with pytest.raises(SourceUnavailable, match="distortion_model 'equidistant' is not supported"):
        WebcamSource(WebcamConfig(device=dev, calibration=str(fish))).open()
    flat = _calibration_yaml(tmp_path / "flat.yaml", 640, 480, [[0.001, 0, 320], [0, 0.001, 240], [0, 0, 1]])
    with pytest.raises(SourceUnavailable, match="flat.yaml: camera_matrix: k: focal lengths"):
        WebcamSource(WebcamConfig(device=dev, calibration=str(flat))).open()


def test_missing_device_or_file_is_a_clear_error(tmp_path):
    if Path("/dev/video7").exists():
        pytest.skip("this machine has a /dev/video7")
    with pytest.raises(SourceUnavailable,
                       match=r"no webcam: video_device '7' is /dev/video7, which does not exist"):
        WebcamSource(WebcamConfig(device="7")).open()
    with pytest.raises(SourceUnavailable, match=r"no webcam: video_device '/dev/video7' does not exist"):
        WebcamSource(WebcamConfig(device="/dev/video7")).open()
    gone = tmp_path / "gone.mp4"
    with pytest.raises(SourceUnavailable, match=f"no such video file: video_device '{gone}' does not exist"):
        WebcamSource(WebcamConfig(device=str(gone))).open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceUnavailable, match=f"cannot decode the video file {junk}"):
        WebcamSource(WebcamConfig(device=str(junk))).open()
    with pytest.raises(ValueError, match="video_device"):
        WebcamConfig(device=" ")
    with pytest.raises(ValueError, match="video_hfov_deg"):
        WebcamConfig(hfov_deg=180.0)


def test_video_file_loops_at_its_frame_rate(actor_video):
    """realtime + loop: NUM_FRAMES + 5 frames take at least (NUM_FRAMES + 4) / fps seconds (pacing
    only ever waits, so a loaded machine can only make it slower), frame NUM_FRAMES is frame 0
    again, and the stamps keep rising across the loop."""
    src = WebcamSource(WebcamConfig(device=str(actor_video["path"]), loop=True, realtime=True))
    src.open()
    try:
        t0 = time.monotonic()
        frames = [src.read() for _ in range(NUM_FRAMES + 5)]
        elapsed = time.monotonic() - t0
    finally:
        src.close()
    assert elapsed >= 0.98 * (NUM_FRAMES + 4) / FPS, elapsed
    np.testing.assert_array_equal(frames[NUM_FRAMES].color, frames[0].color)
    np.testing.assert_array_equal(frames[NUM_FRAMES + 3].color, frames[3].color)
    stamps = [f.stamp for f in frames]
    assert np.all(np.diff(stamps) > 0) and stamps[NUM_FRAMES] == pytest.approx(NUM_FRAMES / FPS)


# ---- the capture node ------------------------------------------------------------------------------
def _capture_node(context, **params):
    from rclpy.parameter import Parameter

    from facediff_ros.nodes.capture import CaptureNode
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return CaptureNode(context=context, parameter_overrides=overrides)


def test_capture_node_webcam_publishes_colour_and_camera_info_only(context, actor_video, tmp_path):
    pytest.importorskip("rclpy")
    from facediff_ros.adapters.images import from_camera_info_msg, from_image_msg
    from waiting import wait_for

    K = [[466.0, 0, 319.5], [0, 466.0, 239.5], [0, 0, 1]]
    yml = _calibration_yaml(tmp_path / "ost.yaml", 640, 480, K)
    node = _capture_node(context, source="webcam", video_device=str(actor_video["path"]),
                         video_calibration=str(yml), realtime=False, stamp_source="device")
    got = {"color": [], "color_info": []}
    try:
        assert set(node._pubs) == {"color", "color_info"}
        for key in got:
            node._pubs[key].publish = got[key].append
        assert wait_for(lambda: len(got["color_info"]) >= 3, timeout=20.0), (node.state, node.last_error)
        assert node.count_publishers("/camera/camera/aligned_depth_to_color/image_raw") == 0
        assert node.count_publishers("/camera/camera/aligned_depth_to_color/camera_info") == 0
        assert node.count_publishers("/camera/camera/color/image_raw") == 1
        img, info = got["color"][-1], got["color_info"][-1]
        assert img.encoding == "rgb8" and img.header == info.header
        assert img.header.frame_id == "camera_color_optical_frame"
        assert from_image_msg(img).shape == (480, 640, 3)
        k = from_camera_info_msg(info)
        assert (k.fx, k.cx, k.width, k.height) == (466.0, 319.5, 640, 480)
        st = node.diagnostic_status()
        values = {kv.key: kv.value for kv in st.values}
        assert values["intrinsics"] == f"calibration {yml}" and "no depth" in values["source"]
    finally:
        node.destroy_node()


def test_capture_node_without_the_webcam_retries_and_names_the_device(context):
    pytest.importorskip("rclpy")
    from waiting import wait_for
    if Path("/dev/video9").exists():
        pytest.skip("this machine has a /dev/video9")
    node = _capture_node(context, source="webcam", video_device="9", retry_initial_s=0.05, retry_max_s=0.1)
    try:
        assert wait_for(lambda: node.counters.snapshot().get("error_unavailable", 0) >= 2, timeout=10.0)
        assert node.state in ("retrying", "opening") and "/dev/video9" in node.last_error
        st = node.diagnostic_status()
        assert "/dev/video9" in st.message or node.state == "opening"
    finally:
        node.destroy_node()


def test_webcam_parameters_reopen_only_a_webcam():
    from facediff_ros.nodes.capture import CaptureParams, has_depth, needs_reopen
    webcam = CaptureParams(source="webcam", video_device="/v.avi")
    built_from = {"video_device": "/w.avi", "video_calibration": "/c.yaml", "video_hfov_deg": 70.0,
                  "loop": False, "realtime": False}
    others = {"recording_path": "/y.db3", "serial_number": "1", "synthetic_seed": 3, "timeout_s": 1.0,
              "camera_name": "other", "depth_encoding": "32FC1", "stamp_source": "device"}
    for name, value in {**built_from, **others}.items():
        new = CaptureParams(**{**webcam.__dict__, name: value})
        assert needs_reopen(webcam, new) == (name in built_from), name
    for kind in ("recording", "realsense", "synthetic"):
        old = CaptureParams(**{**webcam.__dict__, "source": kind, "recording_path": "/x.db3"})
        for name in ("video_device", "video_calibration", "video_hfov_deg"):
            new = CaptureParams(**{**old.__dict__, name: built_from[name]})
            assert not needs_reopen(old, new), (kind, name)
        assert has_depth(old) and needs_reopen(old, CaptureParams(**{**old.__dict__, "source": "webcam"}))
    assert not has_depth(webcam)
    with pytest.raises(ValueError, match="video_device"):
        CaptureParams(source="webcam", video_device="")
    CaptureParams(source="recording", video_device="")  # not used there: not checked


def test_capture_node_switching_to_and_from_a_webcam_adds_and_removes_the_depth_topics(context, actor_video):
    pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from waiting import wait_for
    depth_topic = "/camera/camera/aligned_depth_to_color/image_raw"
    # timeout_s: opening the depth source (the embedded sample, or the actor without it) may take
    # seconds on a loaded machine.
    node = _capture_node(context, source="webcam", video_device=str(actor_video["path"]), realtime=False,
                         synthetic_frames=2, timeout_s=30.0)
    try:
        assert wait_for(lambda: node.counters["frames"] >= 2, timeout=20.0), node.last_error
        assert node.count_publishers(depth_topic) == 0
        assert node.set_parameters([Parameter("source", value="recording")])[0].successful
        assert "depth" in node._pubs
        assert wait_for(lambda: node.count_publishers(depth_topic) == 1, timeout=5.0)
        # Streaming RGB-D, and the webcam's intrinsics note gone from the diagnostics.
        assert wait_for(lambda: "video file" not in node.source_description and node.state == "streaming"
                        and "intrinsics" not in {kv.key for kv in node.diagnostic_status().values},
                        timeout=60.0), (node.state, node.last_error)
        assert node.set_parameters([Parameter("source", value="webcam")])[0].successful
        assert "depth" not in node._pubs and wait_for(lambda: node.count_publishers(depth_topic) == 0,
                                                      timeout=5.0)
        seen = node.counters["frames"]
        assert wait_for(lambda: node.counters["frames"] >= seen + 2
                        and "video file" in node.source_description,
                        timeout=20.0), (node.state, node.last_error)
        assert node.counters.snapshot().get("drop_bad_frame", 0) == 0
    finally:
        node.destroy_node()


# ---- the landmark node, colour only --------------------------------------------------------------
def _decoded_frames(actor_video, n):
    src = WebcamSource(WebcamConfig(device=str(actor_video["path"]), loop=False, realtime=False))
    src.open()
    try:
        return [src.read() for _ in range(n)]
    finally:
        src.close()


def test_landmark_pipeline_colour_only_keeps_uv_and_marks_every_point_invalid(actor_video):
    """Without depth: the same uv as the depth path finds on the same frame, points NaN, valid false."""
    pytest.importorskip("mediapipe")
    from facediff_ros.core import images
    from facediff_ros.core.landmarks.pipeline import LandmarkPipeline

    frame = _decoded_frames(actor_video, 1)[0]
    k = actor_video["intrinsics"]
    color = images.ImageFields(480, 640, "rgb8", False, 640 * 3, frame.color.tobytes())
    depth = images.ImageFields(480, 640, "16UC1", False, 640 * 2, actor_video["depth0"].tobytes())
    info = images.CameraInfoFields(480, 640, k.K.ravel().tolist())
    with LandmarkPipeline() as a, LandmarkPipeline() as b:
        colour_only = a.process(color, None, info)
        with_depth = b.process(color, depth, info)
    lm, ref = colour_only.landmarks, with_depth.landmarks
    assert lm is not None and ref is not None
    assert np.isfinite(lm.uv).all() and not lm.valid.any() and np.isnan(lm.points).all()
    assert ref.valid.sum() > 400  # the depth path lifts most of them: the comparison means something
    np.testing.assert_allclose(lm.uv, ref.uv, atol=1e-3)
    assert "lifting" not in colour_only.timings_s and "lifting" in with_depth.timings_s
    assert (lm.image_width, lm.image_height, lm.bbox) == (640, 480, ref.bbox)


def test_landmarks_node_use_depth_false_subscribes_colour_only_and_publishes_uv(context, actor_video):
    pytest.importorskip("mediapipe")
    from rclpy.parameter import Parameter
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Header

    from facediff_ros.adapters import landmarks as landmarks_adapter
    from facediff_ros.adapters.images import to_camera_info_msg, to_image_msg
    from facediff_ros.msg import FaceLandmarks
    from facediff_ros.nodes.landmarks import LandmarksNode

    node = LandmarksNode(context=context, parameter_overrides=[Parameter("use_depth", value=False)])
    published = []
    node.pub.publish = published.append  # serialized FaceLandmarks (DDS: the chain test)
    try:
        assert node.count_subscribers("/camera/camera/aligned_depth_to_color/image_raw") == 0
        assert node.count_subscribers("/camera/camera/aligned_depth_to_color/camera_info") == 0
        assert node.count_subscribers("/camera/camera/color/image_raw") == 1
        for i, f in enumerate(_decoded_frames(actor_video, 3)):
            h = Header(frame_id="camera_color_optical_frame")
            h.stamp.sec = 10 + i
            node.on_info(to_camera_info_msg(f.intrinsics, h))
            node.on_color(to_image_msg(f.color, "rgb8", h))
            assert node.wait_idle(60.0)  # one frame at a time: none replaced as stale
        assert len(published) == 3, node.counters.snapshot()
        msg = deserialize_message(published[-1], FaceLandmarks)
        assert msg.header.stamp.sec == 12 and msg.header.frame_id == "camera_color_optical_frame"
        lm = landmarks_adapter.from_msg(msg)
        assert np.isfinite(lm.uv).all() and not lm.valid.any() and np.isnan(lm.points).all()
        # The landmarks lie on the actor's head in that frame (grown by 4 px: the face contour's
        # landmarks sit on the silhouette).
        u, v = np.rint(lm.uv).astype(int).T
        head = cv2.dilate(actor_video["heads"][2].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert head[v, u].mean() > 0.99
        values = {kv.key: kv.value for kv in node.diagnostic_status().values}
        assert values["use_depth"] == "False" and values["faces_out"] == "3"
    finally:
        node.destroy_node()


# ---- the colour-only chain as processes ---------------------------------------------------------
def _node_command(script, module):
    """The installed console script (what `ros2 run` starts), else the module."""
    import sys
    exe = Path(sys.executable).with_name(script)
    return [str(exe)] if exe.exists() else [sys.executable, "-m", f"facediff_ros.nodes.{module}"]


def test_colour_only_chain_processes_publish_avatar_points_on_the_face(context, actor_video):
    """capture (source:=webcam on the actor video, with a calibration YAML of the actor's camera)
    -> landmarks -> fitting -> editor, the last three with use_depth:=false, as four processes over
    DDS with the shipped editor weights: /avatar/points arrives, organised 640x480 in the colour
    optical frame, each finite point projecting onto its own pixel through the CameraInfo K, and
    those points lie on the actor's head (its pixels in the video, grown a little for the edited
    expression) at the head's distance."""
    import os
    import subprocess
    import threading

    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2

    from facediff_ros.adapters import topics
    from facediff_ros.adapters.cloud import from_pointcloud2
    from facediff_ros.adapters.dds import configure_environment
    from processes import stop
    from waiting import wait_for

    pytest.importorskip("mediapipe")
    if not (ROOT / "facediff_ros" / "data" / "editor" / "editor.pt").is_file():
        pytest.skip("the shipped editor weights are not installed")
    k = actor_video["intrinsics"]
    folder = actor_video["folder"]
    yml = _calibration_yaml(folder / "actor_camera.yaml", k.width, k.height, k.K)
    env = configure_environment(dict(os.environ))
    procs, logs = {}, {}

    def start(name, script, module, *args):
        logs[name] = open(folder / f"{name}.log", "w")
        procs[name] = subprocess.Popen(_node_command(script, module) + ["--ros-args", *args], env=env,
                                       stdout=logs[name], stderr=subprocess.STDOUT, cwd=str(ROOT))

    def tail():
        for f in logs.values():
            f.flush()
        return "\n".join(f"--- {n} (rc {procs[n].poll()}):\n" + (folder / f"{n}.log").read_text()[-1500:]
                         for n in logs)

    import rclpy
    probe = rclpy.create_node("webcam_chain_probe", context=context)
    clouds = []
    probe.create_subscription(PointCloud2, "/" + topics.AVATAR_POINTS, clouds.append, qos_profile_sensor_data)
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(probe)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()
    try:
        # All at once: the video loops, so frames sent before the chain is matched are only a delay.
        start("landmarks", "facediff-landmarks", "landmarks", "-p", "use_depth:=false")
        start("fitting", "facediff-fitting", "fitting", "-p", "use_depth:=false")
        start("editor", "facediff-editor", "editor", "-p", "use_depth:=false")
        start("capture", "facediff-capture", "capture", "-p", "source:=webcam",
              "-p", f"video_device:={actor_video['path']}", "-p", f"video_calibration:={yml}")
        assert wait_for(lambda: len(clouds) >= 3 or any(p.poll() is not None for p in procs.values()),
                        timeout=120.0), f"{len(clouds)} avatar/points messages\n{tail()}"
        assert len(clouds) >= 3 and all(p.poll() is None for p in procs.values()), tail()
        c = clouds[-1]
        assert c.header.frame_id == "camera_color_optical_frame" and (c.height, c.width) == (480, 640)
        pts = from_pointcloud2(c)
        xyz = np.stack([pts["x"], pts["y"], pts["z"]], -1).reshape(480, 640, 3).astype(np.float64)
        finite = np.isfinite(xyz).all(-1)
        v, u = np.nonzero(finite)
        p = xyz[finite]
        # Each point sits on its own pixel's ray (the organised layout, the optical frame, K).
        np.testing.assert_allclose(k.project(p), np.stack([u, v], -1), atol=0.01)
        # On the head: its pixels in any frame of the video, grown by 10 px (head motion between
        # frames is in the union; the edited expression moves mouth and cheeks a little).
        heads = np.any(actor_video["heads"], axis=0).astype(np.uint8)
        heads = cv2.dilate(heads, np.ones((21, 21), np.uint8)) > 0
        on_head = heads[v, u].mean()
        z = np.median(p[:, 2])
        # Measured: ~18k finite points, all on the head, median z 0.626 m.
        assert finite.sum() > 5000, finite.sum()   # the face is ~15-20k pixels at 640x480
        assert on_head > 0.97, on_head
        assert 0.5 < z < 0.8, z  # the actor's face is ~0.6-0.67 m away; colour-only scale is ~5 % off
    finally:
        stop(*procs.values())
        for f in logs.values():
            f.close()
        ex.shutdown()
        spinner.join(timeout=5)
        probe.destroy_node()
