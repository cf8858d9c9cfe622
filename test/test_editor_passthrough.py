"""Editor node, issue 17 bad input: a colour frame whose FaceModel is missing or older than the image
comes out unedited (its own colour, depth, CameraInfo and cloud) and is said in diagnostics.

A real rclpy EditorNode in this process (its publishers captured), fed through its subscription
callbacks; expectations are computed here from the raw frame and K."""

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from facediff_ros.adapters import face_model as fm  # noqa: E402
from facediff_ros.adapters.cloud import from_pointcloud2  # noqa: E402
from facediff_ros.adapters.images import from_image_msg, to_camera_info_msg, to_image_msg  # noqa: E402
from facediff_ros.core.camera import Intrinsics  # noqa: E402
from facediff_ros.core.cloud import unpack_rgb  # noqa: E402
from facediff_ros.core.face.morphable_model import rotation_matrix  # noqa: E402
from facediff_ros.core.fitting.tracker import FitResult  # noqa: E402

K = Intrinsics.from_fov(160, 120, 69.0)
FRAME = "camera_color_optical_frame"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny random editor saved as the trainer saves one (edits change the face region)."""
    import torch

    from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
    from facediff_ros.core.editor.train import TrainConfig, save_weights
    torch.manual_seed(0)
    cfg = EditorNetConfig(crop_size=16, channels=(8, 16), emb_dim=32)
    folder = tmp_path_factory.mktemp("editor_weights")
    save_weights(folder, EditorUNet(cfg).state_dict(), TrainConfig(net=cfg))
    return folder


@pytest.fixture(scope="module")
def scene(model):
    """A 160x120 frame: textured colour, depth ~0.6 m with a hole, and a fit of a face there."""
    rng = np.random.default_rng(5)
    color = rng.integers(0, 256, (K.height, K.width, 3), dtype=np.uint8)
    v, u = np.mgrid[0:K.height, 0:K.width]
    depth_mm = np.rint(600 + 0.8 * (u - 80) - 0.5 * (v - 60)).astype(np.uint16)
    depth_mm[5:15, 5:25] = 0  # no measurement: NaN points
    identity = rng.normal(0, 0.5, 20).astype(np.float32)
    expression = np.zeros(model.num_expression, np.float32)
    R = rotation_matrix((0.05, 0.2, 0.0))
    c_model = model.vertices(identity, expression)[model.landmarks68].mean(axis=0)
    t = np.array([0.0, 0.0, 0.6]) - R @ c_model
    fit = FitResult(True, "tracking", "", identity, expression, R, t, 0.001, 0.9, True, ("depth",))
    return dict(color=color, depth_mm=depth_mm, fit=fit, names=list(model.expression_names))


def _header(sec):
    h = Header(frame_id=FRAME)
    h.stamp.sec, h.stamp.nanosec = int(sec), 250
    return h


def _msgs(scene, sec):
    h = _header(sec)
    return dict(color=to_image_msg(scene["color"], "rgb8", h),
                depth=to_image_msg(scene["depth_mm"], "16UC1", h), info=to_camera_info_msg(K, h),
                model=fm.to_msg(scene["fit"], h, scene["names"]))


@pytest.fixture
def node(context, weights):
    from facediff_ros.nodes.editor import EditorNode
    n = EditorNode(context=context, parameter_overrides=[
        Parameter("weights", value=str(weights)), Parameter("backend", value="torch"),
        Parameter("steps", value=1), Parameter("sync_queue_size", value=3)])
    out = {"color": [], "depth": [], "info": [], "points": []}
    n.color_pub.publish = out["color"].append
    n.depth_pub.publish = out["depth"].append
    n.info_pub.publish = out["info"].append
    n.cloud_pub.publish = out["points"].append
    yield n, out
    n.destroy_node()


def _frame(n, msgs, model=True):
    n.on_info(msgs["info"])
    n.on_color(msgs["color"])
    n.on_depth(msgs["depth"])
    if model:
        n.on_model(msgs["model"])
    assert n.wait_idle(30.0)


def _assert_raw(out, i, scene, sec):
    """Output ``i`` is the raw frame of stamp ``sec``: same pixels, depth, K, and its cloud."""
    for key in ("color", "depth", "info", "points"):
        h = out[key][i].header
        assert (h.frame_id, h.stamp.sec, h.stamp.nanosec) == (FRAME, sec, 250), key
    assert np.array_equal(from_image_msg(out["color"][i]), scene["color"])
    assert out["depth"][i].encoding == "16UC1"
    assert np.array_equal(from_image_msg(out["depth"][i]), scene["depth_mm"])
    assert list(out["info"][i].k) == [K.fx, 0, K.cx, 0, K.fy, K.cy, 0, 0, 1]
    pts = from_pointcloud2(out["points"][i])
    z = scene["depth_mm"].astype(np.float64) / 1000.0
    ok = z > 0
    v, u = np.mgrid[0:K.height, 0:K.width]
    assert np.array_equal(np.isfinite(pts["z"]), ok)
    assert np.allclose(pts["z"][ok], z[ok], atol=1e-6)
    assert np.allclose(pts["x"][ok], (u[ok] - K.cx) * z[ok] / K.fx, atol=1e-6)
    assert np.allclose(pts["y"][ok], (v[ok] - K.cy) * z[ok] / K.fy, atol=1e-6)
    assert np.array_equal(unpack_rgb(pts["rgb"]), scene["color"])


def _diag(n):
    st = n.diagnostic_status()
    return st, {kv.key: kv.value for kv in st.values}


def test_a_frame_whose_model_never_comes_passes_through_unedited(node, scene):
    n, out = node
    _frame(n, _msgs(scene, 50), model=False)
    assert out["points"] == []  # still waiting: its model may yet come
    n.on_model(_msgs(scene, 51)["model"])  # the fitting chain moved past frame 50
    assert n.wait_idle(30.0)
    assert len(out["points"]) == 1 and n.counters["passthrough_no_face_model"] == 1, n.counters.snapshot()
    _assert_raw(out, 0, scene, 50)
    st, kv = _diag(n)
    assert "no face model for this frame" in st.message and kv["passthrough_no_face_model"] == "1"
    # Frame 51 (its model already there) is edited: the face region differs from the raw frame.
    _frame(n, _msgs(scene, 51), model=False)
    assert len(out["points"]) == 2 and n.counters["category_happy"] == 1
    assert not np.array_equal(from_image_msg(out["color"][1]), scene["color"])
    assert n.counters["passthrough_no_face_model"] == 1


def test_models_older_than_the_image_or_none_at_all_pass_frames_through(node, scene):
    """Only a model of an older frame (the chain is behind, or lost the face): the frames come out
    unedited once sync_queue_size (3) newer ones wait, each with its own depth; none is dropped."""
    n, out = node
    n.on_model(_msgs(scene, 59)["model"])  # older than every image below
    for sec in range(60, 66):
        _frame(n, _msgs(scene, sec), model=False)
    assert n.counters["passthrough_no_face_model"] == 3 and len(out["points"]) == 3, n.counters.snapshot()
    for i, sec in enumerate((60, 61, 62)):
        _assert_raw(out, i, scene, sec)
    assert not any(k.startswith("drop_") for k in n.counters.snapshot()), n.counters.snapshot()
    st, kv = _diag(n)
    assert "no face model for this frame" in st.message and "passed through unedited" in st.message
    assert kv["passthrough_no_face_model"] == "3"


def test_a_frame_to_pass_through_never_displaces_a_waiting_edit(node, scene):
    """Worker busy with edit A, edit B waiting: a newer frame without a model is dropped
    (stale_passthrough), B is edited; a newer edit C still replaces a waiting pass-through."""
    import threading
    n, out = node
    gate = threading.Event()
    real = n.avatar.edit_frame

    def gated(*a, **kw):
        gate.wait(30.0)
        return real(*a, **kw)

    n.avatar.edit_frame = gated
    n.on_info(_msgs(scene, 70)["info"])

    def full(sec):
        m = _msgs(scene, sec)
        return {"color": m["color"], "depth": m["depth"], "model": m["model"]}

    def bare(sec):
        m = _msgs(scene, sec)
        return {"color": m["color"], "depth": m["depth"]}

    n.submit(full(70))
    from waiting import wait_for
    assert wait_for(lambda: n.busy, 10.0)  # A taken by the worker, blocked in the edit
    n.submit(full(71))       # B waits
    n.submit(bare(72))       # would replace B: dropped instead
    assert n.counters["drop_stale_passthrough"] == 1 and n.counters["drop_stale"] == 0
    gate.set()
    assert n.wait_idle(30.0)
    assert [m.header.stamp.sec for m in out["points"]] == [70, 71]
    assert n.counters["category_happy"] == 2 and n.counters["passthrough_no_face_model"] == 0
    # The other way round: a pass-through waiting is replaced by a newer edit (counted stale).
    gate.clear()
    n.submit(full(73))
    assert wait_for(lambda: n.busy, 10.0)
    n.submit(bare(74))
    n.submit(full(75))
    gate.set()
    assert n.wait_idle(30.0)
    assert [m.header.stamp.sec for m in out["points"]][2:] == [73, 75] and n.counters["drop_stale"] == 1
