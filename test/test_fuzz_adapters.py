"""Property-based fuzzing of every message converter in facediff_ros/adapters.

Each converter either returns a value that agrees with its input (checked against values
computed here: the bytes, the shape, the round trip) or raises ValueError with a message --
never another exception, never a crash. Cases per property: FACEDIFF_FUZZ_EXAMPLES (a few dozen
in `make test`, 10,000 in `make soak`).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("rclpy")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from geometry_msgs.msg import Point, Pose, Quaternion  # noqa: E402

from facediff_ros.adapters import camera_frames, cloud, face_model, images, landmarks  # noqa: E402
from facediff_ros.core import images as core_images  # noqa: E402
from facediff_ros.core.camera import Intrinsics  # noqa: E402
from facediff_ros.core.capture.sources import CapturedFrame  # noqa: E402
from facediff_ros.core.fitting.tracker import FitResult  # noqa: E402
from facediff_ros.core.landmarks.pipeline import Landmarks  # noqa: E402
from facediff_ros.msg import FaceLandmarks, FaceModel  # noqa: E402
from fuzz_messages import (F32, FLOATS, FUZZ, UINT32, camera_info_fields, camera_info_msg,  # noqa: E402
                           header, image_fields, image_msg, stamp, stamps)

N = FaceLandmarks.NUM_LANDMARKS

# Overflow/invalid-value warnings are what NaN/inf/huge inputs cause; the properties judge the outcome.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _expected_pixels(f):
    """The pixels an Image's fields describe, computed here independently of core.images, or None
    when the fields are inconsistent (the converter must refuse them)."""
    enc = {"rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
           "8UC3": ("u1", 3), "16UC1": ("u2", 1), "mono16": ("u2", 1), "32FC1": ("f4", 1)}
    if f["encoding"] not in enc:
        return None
    kind, ch = enc[f["encoding"]]
    dt = np.dtype((">" if f["is_bigendian"] and kind != "u1" else "<") + kind)
    h, w, step = f["height"], f["width"], f["step"]
    row = w * ch * dt.itemsize
    if step < row or len(f["data"]) != step * h:
        return None
    rows = [np.frombuffer(f["data"][r * step: r * step + row], dt) for r in range(h)]
    arr = np.array(rows, dtype=dt).astype(dt.newbyteorder("=")) if h else np.zeros((0, w * ch), dt)
    return arr.reshape((h, w) if ch == 1 else (h, w, ch))


@FUZZ
@given(image_fields(encodings=("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "mono16", "32FC1", "8UC3",
                               "16SC1", "yuv422", "")), stamps())
def test_image_message_to_array(f, t):
    msg = image_msg(f, header(t))
    expected = _expected_pixels(f)
    try:
        arr = images.from_image_msg(msg)
    except ValueError as exc:
        assert str(exc)
        assert expected is None or f["encoding"] not in core_images.ENCODINGS, (f["encoding"], exc)
        return
    assert expected is not None, f"accepted inconsistent fields {dict(f, data=len(f['data']))}"
    assert arr.shape == expected.shape and arr.tobytes() == np.ascontiguousarray(expected).tobytes()


@FUZZ
@given(st.integers(0, 20), st.integers(0, 20), st.sampled_from(["rgb8", "bgr8", "mono8", "16UC1", "32FC1",
                                                                "rgba8"]),
       st.integers(0, 2 ** 32 - 1), st.sampled_from([None, 0, 1, 7]))
def test_array_to_image_message_round_trip(h, w, enc, seed, pad):
    rng = np.random.default_rng(seed)
    info = core_images.encoding_info(enc)
    shape = (h, w) if info.channels == 1 else (h, w, info.channels)
    if info.dtype == np.float32:
        arr = rng.normal(0.6, 10, shape).astype(np.float32)
        arr.flat[:: 7] = np.nan
        arr.flat[3:: 11] = np.inf
    else:
        arr = rng.integers(0, np.iinfo(info.dtype).max, shape, dtype=info.dtype, endpoint=True)
    hdr = header(stamp(seed % 2 ** 31))
    msg = images.to_image_msg(arr, enc, hdr)
    back = images.from_image_msg(deserialize_message(serialize_message(msg), type(msg)))
    assert back.shape == arr.shape and back.tobytes() == arr.tobytes()
    # a wrong dtype is refused with ValueError
    with pytest.raises(ValueError):
        images.to_image_msg(arr.astype(np.float64), enc, hdr)


@FUZZ
@given(camera_info_fields(), stamps())
def test_camera_info_to_intrinsics(f, t):
    msg = camera_info_msg(f, header(t))
    try:
        K = images.from_camera_info_msg(msg)
    except ValueError as exc:
        assert str(exc)
        return
    k = f["k"]
    assert all(math.isfinite(v) for v in k) and k[0] > 0 and k[4] > 0 and k[1] == 0 and k[3] == 0
    assert (K.fx, K.fy, K.cx, K.cy, K.width, K.height) == (k[0], k[4], k[2], k[5], f["width"], f["height"])
    back = images.from_camera_info_msg(images.to_camera_info_msg(K, msg.header))
    assert back == K


@st.composite
def captured_frames(draw):
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    ih, iw = draw(st.sampled_from([(h, w)] * 4 + [(h + 1, w), (h, w + 2)]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    color = rng.integers(0, 256, (h, w, 3), np.uint8)
    depth = draw(st.sampled_from(["ok", "ok", "none", "other"]))
    d = {"ok": rng.integers(0, 65536, (h, w), np.uint16), "none": None,
         "other": rng.integers(0, 65536, (h + 1, w), np.uint16)}[depth]
    intr = Intrinsics(draw(st.floats(1, 1e4)), draw(st.floats(1, 1e4)), draw(st.floats(-1e3, 1e3)),
                      draw(st.floats(-1e3, 1e3)), iw, ih)
    st_s = draw(st.one_of(st.floats(0, 2e9), st.sampled_from([-1.0, math.nan, math.inf, 0.0])))
    return CapturedFrame(color, d, intr, 0.001, st_s, draw(st.integers(-1, 10 ** 6)))


@FUZZ
@given(captured_frames(), st.sampled_from(["16UC1", "32FC1", "8UC1", ""]))
def test_frame_messages(frame, enc):
    shape_ok = frame.color.shape[:2] == frame.intrinsics.shape and (
        frame.depth is None or frame.depth.shape == frame.intrinsics.shape)
    try:
        stamp_ = camera_frames.device_stamp(frame)
    except ValueError:
        assert not (math.isfinite(frame.stamp) and frame.stamp >= 0)
        stamp_ = stamp(0)
    try:
        msgs = camera_frames.frame_messages(frame, stamp_, "camera_color_optical_frame", enc)
    except ValueError as exc:
        assert str(exc) and (not shape_ok or enc not in ("16UC1", "32FC1")), exc
        return
    assert shape_ok and enc in ("16UC1", "32FC1")
    assert np.array_equal(images.from_image_msg(msgs.color), frame.color)
    assert msgs.color.header.stamp == stamp_ == msgs.info.header.stamp
    if frame.depth is None:  # a colour-only source (webcam): no depth message
        assert msgs.depth is None
        return
    depth = images.from_image_msg(msgs.depth)
    if enc == "16UC1":
        assert np.array_equal(depth, frame.depth)
    else:
        expected = np.where(frame.depth > 0, frame.depth / 1000.0, np.nan).astype(np.float32)
        assert np.allclose(depth, expected, equal_nan=True)
    assert msgs.color.header.stamp == stamp_ == msgs.depth.header.stamp == msgs.info.header.stamp


# ---- landmarks ------------------------------------------------------------------------------------
@st.composite
def landmark_arrays(draw):
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    uv = rng.uniform(-50, 700, (N, 2)).astype(np.float32)
    pts = rng.normal(0, 0.2, (N, 3)) + [0, 0, 0.6]
    valid = rng.random(N) < draw(st.floats(0, 1))
    odd = draw(st.sampled_from(["none", "nan_uv", "nan_invalid", "inf_invalid", "huge"]))
    if odd == "nan_uv":
        uv[rng.random(N) < 0.3] = np.nan
    elif odd == "nan_invalid":
        pts[~valid] = np.nan
    elif odd == "inf_invalid":
        pts[~valid] = np.inf
    elif odd == "huge":
        uv *= np.float32(1e30)
        pts *= 1e200
        pts[~np.isfinite(pts)] = 0.0
    bbox = tuple(draw(UINT32) if draw(st.booleans()) else draw(st.integers(0, 640)) for _ in range(4))
    return dict(uv=uv, points=pts, valid=valid, presence=draw(st.floats(0, 1)), bbox=bbox,
                image_width=draw(st.one_of(st.integers(0, 2000), UINT32)),
                image_height=draw(st.one_of(st.integers(0, 2000), UINT32)))


@FUZZ
@given(landmark_arrays(), stamps(), st.text(max_size=40))
def test_landmarks_numpy_cdr_equals_rclpy_and_round_trips(a, t, frame_id):
    lm = Landmarks(**a)
    hdr = header(t, frame_id)
    payload = landmarks.serialize(lm, hdr)
    reference = serialize_message(landmarks.to_msg(lm, hdr))
    # Same length and fields; the bytes may differ in alignment padding only (Fast CDR leaves its
    # padding bytes uninitialised, ours are zero), so the decoded fields are compared.
    assert len(payload) == len(reference)
    mine, theirs = (deserialize_message(b, FaceLandmarks) for b in (payload, reference))
    for name in ("header", "image_width", "image_height", "valid", "presence", "bbox"):
        assert getattr(mine, name) == getattr(theirs, name), name
    for name in ("u", "v"):
        assert np.array_equal(np.asarray(getattr(mine, name)), np.asarray(getattr(theirs, name)),
                              equal_nan=True)
    p_mine = np.array([(p.x, p.y, p.z) for p in mine.points])
    assert np.array_equal(p_mine, np.array([(p.x, p.y, p.z) for p in theirs.points]), equal_nan=True)
    back = landmarks.from_msg(deserialize_message(payload, FaceLandmarks))
    assert np.array_equal(back.uv, lm.uv, equal_nan=True) and np.array_equal(back.valid, lm.valid)
    assert np.array_equal(back.points[lm.valid], lm.points[lm.valid])
    assert np.isnan(back.points[~lm.valid]).all()
    assert back.bbox == lm.bbox and back.presence == np.float32(lm.presence)
    assert (back.image_width, back.image_height) == (lm.image_width, lm.image_height)


@FUZZ
@given(st.data())
def test_landmarks_arrays_out_of_range_are_value_errors(data):
    """Values a FaceLandmarks cannot carry (negative or > uint32 sizes, NaN presence) are refused
    with ValueError by the numpy serializer, as by the message itself."""
    a = data.draw(landmark_arrays())
    field = data.draw(st.sampled_from(["bbox", "image_width", "image_height", "presence"]))
    bad = data.draw(st.sampled_from([-1, 2 ** 32, 2 ** 40]))
    if field == "bbox":
        b = list(a["bbox"])
        b[data.draw(st.integers(0, 3))] = bad
        a["bbox"] = tuple(b)
    elif field == "presence":
        a["presence"] = math.nan
    else:
        a[field] = bad
    try:
        lm = Landmarks(**a)
    except ValueError:
        return  # refused when built
    with pytest.raises(ValueError):
        landmarks.serialize(lm, header(stamp(1)))


@st.composite
def face_landmarks_msgs(draw):
    n = draw(st.sampled_from([N, N, N, 0, 1, N - 1, N + 1, 600]))
    lengths = {k: (n if draw(st.integers(0, 5)) else draw(st.integers(0, 600))) for k in ("u", "v", "p",
                                                                                          "valid")}
    msg = FaceLandmarks(header=header(draw(stamps())), image_width=draw(UINT32), image_height=draw(UINT32))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    msg.u = rng.uniform(-1e3, 1e3, lengths["u"]).astype(np.float32).tolist()
    head = [draw(F32) for _ in range(min(lengths["v"], 3))]
    msg.v = head + rng.normal(0, 100, max(0, lengths["v"] - 3)).tolist()
    pts = rng.normal(0, 1, (lengths["p"], 3))
    if lengths["p"]:
        pts[rng.random(lengths["p"]) < 0.2] = draw(FLOATS)
    msg.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in pts]
    msg.valid = (rng.random(lengths["valid"]) < 0.8).tolist()
    msg.presence = draw(F32)
    return msg


@FUZZ
@given(face_landmarks_msgs())
def test_face_landmarks_message_to_arrays(msg):
    try:
        lm = landmarks.from_msg(msg)
    except ValueError as exc:
        assert str(exc)
        pts = np.array([(p.x, p.y, p.z) for p in msg.points]).reshape(-1, 3)
        lengths_ok = len(msg.u) == len(msg.v) == len(msg.points) == len(msg.valid) == N
        assert (not lengths_ok or not 0 <= msg.presence <= 1
                or not np.isfinite(pts[np.array(msg.valid, bool)]).all()), exc
        return
    assert lm.uv.shape == (N, 2) and np.array_equal(lm.uv[:, 0], np.array(msg.u, np.float32), equal_nan=True)
    assert np.isfinite(lm.points[lm.valid]).all() and 0 <= lm.presence <= 1


# ---- face model -----------------------------------------------------------------------------------
def _rotation(q):
    q = np.asarray(q, float)
    return face_model.matrix_from_quaternion(q / np.linalg.norm(q))


@FUZZ
@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 120), st.integers(0, 60), stamps(),
       st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf, 1e300])))
def test_face_model_round_trip(seed, k, e, t, rms):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    R = _rotation(q)
    fit = FitResult(True, "tracking", "", rng.normal(size=k).astype(np.float32),
                    rng.random(e).astype(np.float32),
                    R, rng.normal(0, 1, 3), rms, float(rng.random()), bool(rng.random() < 0.5), ("depth",))
    names = [f"bs{i}" for i in range(e)]
    msg = face_model.to_msg(fit, header(t), names)
    back = face_model.from_msg(deserialize_message(serialize_message(msg), FaceModel))
    assert np.array_equal(back.identity, fit.identity) and np.array_equal(back.expression, fit.expression)
    assert np.allclose(back.R, R, atol=1e-9) and np.allclose(back.t, fit.t)
    if math.isfinite(np.float32(rms)):
        assert back.residual_rms == np.float32(rms)
    else:
        assert math.isnan(back.residual_rms)
    with pytest.raises(ValueError):
        face_model.to_msg(fit, header(t), names + ["extra"])


@st.composite
def face_model_msgs(draw):
    e = draw(st.integers(0, 60))
    names_n = draw(st.sampled_from([e, e, e, e + 1, max(0, e - 1), 0]))
    msg = FaceModel(header=header(draw(stamps())), model_id=draw(st.sampled_from(
        [face_model.MODEL_ID] * 4 + ["", "other", face_model.MODEL_ID + " "])))
    msg.identity = [draw(F32) for _ in range(draw(st.integers(0, 5)))] + [0.1] * draw(st.integers(0, 110))
    msg.expression = [draw(F32) for _ in range(e)]
    msg.expression_names = [f"n{i}" for i in range(names_n)]
    q = [draw(FLOATS) for _ in range(4)]
    msg.head_pose = Pose(position=Point(x=draw(FLOATS), y=draw(FLOATS), z=draw(FLOATS)),
                         orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))
    msg.residual_rms, msg.quality = draw(F32), draw(F32)
    return msg


@FUZZ
@given(face_model_msgs())
def test_face_model_message_to_fit(msg):
    try:
        fit = face_model.from_msg(msg)
    except ValueError as exc:
        assert str(exc)
        o = msg.head_pose.orientation
        n = math.sqrt(sum(v * v for v in (o.x, o.y, o.z, o.w))) if all(
            math.isfinite(v) for v in (o.x, o.y, o.z, o.w)) else math.nan
        assert (msg.model_id != face_model.MODEL_ID or len(msg.expression) != len(msg.expression_names)
                or not math.isfinite(n) or n < 1e-12), exc
        return
    assert np.allclose(fit.R @ fit.R.T, np.eye(3), atol=1e-6)
    assert len(fit.expression) == len(msg.expression_names)


# ---- cloud ----------------------------------------------------------------------------------------
@FUZZ
@given(st.integers(0, 12), st.integers(0, 12), st.sampled_from(["compact", "depth_image_proc"]),
       st.integers(0, 2 ** 32 - 1), st.booleans(), stamps())
def test_cloud_round_trip(h, w, layout, seed, organised, t):
    from facediff_ros.core.cloud import valid_points, xyzrgb_cloud
    rng = np.random.default_rng(seed)
    pts = rng.normal(0, 1, (h, w, 3)).astype(np.float32)
    pts[rng.random((h, w)) < 0.3] = np.nan
    c = xyzrgb_cloud(pts, rng.integers(0, 256, (h, w, 3), np.uint8), layout)
    if not organised:
        c = valid_points(c)
    msg = cloud.to_pointcloud2(c, header(t))
    back = cloud.from_pointcloud2(deserialize_message(serialize_message(msg), PointCloud2))
    assert back.size == c.size
    for name in ("x", "y", "z", "rgb"):
        assert back[name].reshape(-1).tobytes() == c[name].reshape(-1).tobytes()
    assert msg.is_dense == bool(np.isfinite(c["z"]).all())


@st.composite
def pointcloud2_msgs(draw):
    h, w = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    step = draw(st.sampled_from([16, 32, 12, 0, 3, 2 ** 32 - 1]))
    offsets = draw(st.sampled_from([(0, 4, 8, 12), (0, 4, 8, 16), (0, 0, 8, 12), (0, 4, 8, 30),
                                    (0, 4, 8, 2 ** 32 - 4)]))
    names = draw(st.sampled_from([("x", "y", "z", "rgb"), ("x", "y", "z", "rgba"), ("x", "y", "z"),
                                  ("x", "y", "z", "rgb", "i")]))
    dtype = draw(st.sampled_from([PointField.FLOAT32] * 4 + [PointField.FLOAT64, PointField.UINT8, 0, 255]))
    fields = [PointField(name=n, offset=o, datatype=dtype, count=draw(st.sampled_from([1, 1, 1, 0, 3])))
              for n, o in zip(names, offsets + (20,))]
    row_step = draw(st.sampled_from([step * w, step * w, 0, step * w + 1]))
    row_step = min(row_step, 2 ** 32 - 1)
    n = draw(st.sampled_from([row_step * h] * 3 + [0, max(0, row_step * h - 1), row_step * h + 4]))
    n = min(n, 4096)
    msg = PointCloud2(header=header(draw(stamps())), height=h, width=w, fields=fields,
                      is_bigendian=draw(st.booleans()), point_step=step, row_step=row_step,
                      is_dense=draw(st.booleans()))
    msg.data = bytes(np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).integers(0, 256, n, np.uint8))
    return msg


@FUZZ
@given(pointcloud2_msgs())
def test_pointcloud2_message_to_array(msg):
    try:
        arr = cloud.from_pointcloud2(msg)
    except ValueError as exc:
        assert str(exc)
        return
    assert not msg.is_bigendian and [f.name for f in msg.fields] == ["x", "y", "z", "rgb"]
    assert arr.size == msg.height * msg.width and arr.dtype.itemsize == msg.point_step
    for i, f in enumerate(msg.fields):
        raw = np.frombuffer(msg.data, np.uint8).reshape(-1, msg.point_step)[:, f.offset:f.offset + 4]
        assert arr[f.name].reshape(-1).tobytes() == np.ascontiguousarray(raw).tobytes()
