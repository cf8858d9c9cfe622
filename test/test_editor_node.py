"""The editor node: in-process callbacks with a tiny random network (cloud layout, headers, the
target message, run-time parameters, bad input, stale frames), and as a real process over DDS."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from facediff_ros.adapters import face_model as fm  # noqa: E402
from facediff_ros.adapters.cloud import from_pointcloud2  # noqa: E402
from facediff_ros.adapters.images import from_image_msg, to_camera_info_msg, to_image_msg  # noqa: E402
from facediff_ros.core.camera import Intrinsics  # noqa: E402
from facediff_ros.core.cloud import unpack_rgb  # noqa: E402
from facediff_ros.core.face.expressions import CATEGORIES  # noqa: E402
from facediff_ros.core.face.morphable_model import rotation_matrix  # noqa: E402
from facediff_ros.core.fitting.tracker import FitResult  # noqa: E402
from facediff_ros.msg import ExpressionTarget  # noqa: E402
from waiting import wait_for  # noqa: E402
from processes import stop as stop_processes  # noqa: E402

K = Intrinsics.from_fov(320, 240, 69.0)
FRAME = "camera_color_optical_frame"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny random editor saved as the trainer saves one."""
    import torch

    from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
    from facediff_ros.core.editor.train import TrainConfig, save_weights
    torch.manual_seed(0)
    cfg = EditorNetConfig(crop_size=16, channels=(8, 16), emb_dim=32)
    folder = tmp_path_factory.mktemp("editor_weights")
    save_weights(folder, EditorUNet(cfg).state_dict(), TrainConfig(net=cfg))
    return folder


def _header(sec, frame=FRAME):
    h = Header(frame_id=frame)
    h.stamp.sec = int(sec)
    h.stamp.nanosec = 5000
    return h


@pytest.fixture(scope="module")
def scene(model):
    return make_scene(model)


def make_scene(model):
    """A smooth 320x240 frame (colour ramp, a tilted depth plane at ~0.6 m) and a neutral fit there."""
    v, u = np.mgrid[0:K.height, 0:K.width].astype(np.float64)
    color = np.clip(np.stack([40 + 0.6 * u, 30 + 0.7 * v, 128 + 50 * np.sin(u / 30.0)], -1), 0, 255)
    depth_m = 0.6 + 0.0004 * (u - 160) + 0.0002 * (v - 120)
    rng = np.random.default_rng(3)
    identity = rng.normal(0, 0.5, 20).astype(np.float32)
    expression = np.zeros(model.num_expression, np.float32)
    R = rotation_matrix((0.05, 0.2, 0.0))
    c_model = model.vertices(identity, expression)[model.landmarks68].mean(axis=0)
    t = np.array([0.01, -0.01, 0.6]) - R @ c_model
    fit = FitResult(True, "tracking", "", identity, expression, R, t, 0.001, 0.9, True, ("depth",))
    return dict(color=color.astype(np.uint8), depth_mm=np.rint(depth_m * 1000).astype(np.uint16), fit=fit,
                names=list(model.expression_names))


def _messages(scene, sec, **changes):
    h = _header(sec)
    msgs = dict(color=to_image_msg(scene["color"], "rgb8", h),
                depth=to_image_msg(scene["depth_mm"], "16UC1", h),
                info=to_camera_info_msg(K, h), model=fm.to_msg(scene["fit"], h, scene["names"]))
    msgs.update(changes)
    return msgs


def _node(context, weights, **params):
    from facediff_ros.nodes.editor import EditorNode
    overrides = [Parameter("weights", value=str(weights)), Parameter("backend", value="torch"),
                 Parameter("steps", value=1)] + [Parameter(k, value=v) for k, v in params.items()]
    node = EditorNode(context=context, parameter_overrides=overrides)
    out = {"color": [], "depth": [], "info": [], "points": []}
    node.color_pub.publish = out["color"].append  # captured in-process (DDS has its own test)
    node.depth_pub.publish = out["depth"].append
    node.info_pub.publish = out["info"].append
    node.cloud_pub.publish = out["points"].append
    return node, out


def _feed(node, msgs):
    node.on_info(msgs["info"])
    node.on_depth(msgs["depth"])
    node.on_model(msgs["model"])
    node.on_color(msgs["color"])


# cloud_layout -> (point_step, rgb offset): depth_image_proc's point_cloud_xyzrgb (PCL's PointXYZRGB,
# x y z at 0 4 8, rgb at 16, 32 bytes; the default) and the compact layout (rgb at 12, 16 bytes).
LAYOUTS = {None: (32, 16), "depth_image_proc": (32, 16), "compact": (16, 12)}


@pytest.mark.parametrize("layout", [None, "compact"], ids=["default-depth_image_proc", "compact"])
def test_node_publishes_the_avatar_and_its_cloud(context, weights, scene, layout):
    extra = {} if layout is None else {"cloud_layout": layout}
    node, out = _node(context, weights, depth_encoding="32FC1", **extra)
    step, rgb_offset = LAYOUTS[layout]
    try:
        assert node.params.config.cloud_layout == (layout or "depth_image_proc")
        _feed(node, _messages(scene, 10))
        assert node.wait_idle(30.0) and node.counters["frames_out"] == 1, node.counters.snapshot()
        cloud = out["points"][0]
        assert cloud.point_step == step and not cloud.is_bigendian
        assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == \
            [("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1),
             ("z", 8, PointField.FLOAT32, 1), ("rgb", rgb_offset, PointField.FLOAT32, 1)]
        assert (cloud.height, cloud.width) == (K.height, K.width) and cloud.row_step == step * K.width
        assert len(cloud.data) == step * K.width * K.height
        for msg in (cloud, out["color"][0], out["depth"][0], out["info"][0]):
            assert msg.header.frame_id == FRAME
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (10, 5000)
        assert out["color"][0].encoding == "rgb8" and out["depth"][0].encoding == "32FC1"
        assert list(out["info"][0].k) == list(to_camera_info_msg(K, _header(0)).k)
        # The cloud is the published images back-projected (computed here from K).
        color = from_image_msg(out["color"][0])
        depth = from_image_msg(out["depth"][0])
        pts = from_pointcloud2(cloud)  # (H, W) structured
        v, u = np.mgrid[0:K.height, 0:K.width]
        ok = np.isfinite(depth)
        assert 0.5 * ok.size < ok.sum() < ok.size  # the scene's depth, holes where a face part left
        assert np.allclose(pts["z"][ok], depth[ok])
        assert np.allclose(pts["x"][ok], (u[ok] - K.cx) * depth[ok] / K.fx, atol=1e-6)
        assert np.allclose(pts["y"][ok], (v[ok] - K.cy) * depth[ok] / K.fy, atol=1e-6)
        assert np.isnan(pts["x"][~ok]).all() and np.isnan(pts["z"][~ok]).all() and not cloud.is_dense
        assert np.array_equal(unpack_rgb(pts["rgb"]), color)
        # Outside the edited region the frame passes through unchanged.
        far = np.ones(ok.shape, bool)
        far[40:200, 60:260] = False
        assert np.array_equal(color[far], scene["color"][far])
        # Dense: the valid points only, 1 x N.
        assert node.set_parameters([Parameter("cloud_organized", value=False)])[0].successful
        _feed(node, _messages(scene, 11))
        assert node.wait_idle(30.0) and node.counters["frames_out"] == 2
        dense = out["points"][1]
        assert dense.height == 1 and dense.width == ok.sum() and dense.is_dense and dense.point_step == step
        assert np.isfinite(from_pointcloud2(dense)["z"]).all()
        st = node.diagnostic_status()
        keys = {kv.key: kv.value for kv in st.values}
        assert "torch" in keys["backend"]
        assert {"edit_network_ms", "edit_inputs_ms", "cloud_ms", "total_ms", "rate_out_hz"} <= set(keys)
    finally:
        node.destroy_node()


def test_expression_target_and_parameters_at_run_time(context, weights, scene):
    node, out = _node(context, weights)
    try:
        assert node.params.config.expression == "happy"
        node.on_target(ExpressionTarget(category=ExpressionTarget.SURPRISED, intensity=0.5))
        assert node.params.config.expression == "surprised" and node.params.config.intensity == 0.5
        assert node.get_parameter("expression").value == "surprised"
        _feed(node, _messages(scene, 20))
        assert node.wait_idle(30.0) and node.counters["category_surprised"] == 1, node.counters.snapshot()
        # Raw weights on top of the category.
        node.on_target(ExpressionTarget(category=ExpressionTarget.SAD, intensity=1.0, weights=[0.7],
                                        weight_names=["jawOpen"]))
        assert node.params.config.expression == "sad"
        assert node._extra_weights[scene["names"].index("jawOpen")] == pytest.approx(0.7)
        # Malformed targets: rejected, counted, nothing changes.
        for bad in (ExpressionTarget(category=9, intensity=0.5), ExpressionTarget(category=1, intensity=1.5),
                    ExpressionTarget(category=1, intensity=float("nan")),
                    ExpressionTarget(category=1, intensity=0.5, weights=[0.2], weight_names=[]),
                    ExpressionTarget(category=1, intensity=0.5, weights=[0.2], weight_names=["smile"])):
            node.on_target(bad)
        assert node.counters["targets_rejected"] == 5 and node.params.config.expression == "sad"
        # Parameters: validated, a bad value rejected with a reason and the old one kept.
        for name, value in (("expression", "joy"), ("intensity", 1.5), ("steps", 9), ("steps", 0),
                            ("output", "face"), ("backend", "torch"), ("weights", "/tmp"),
                            ("cloud_layout", "pcl")):
            r = node.set_parameters([Parameter(name, value=value)])[0]
            assert not r.successful and r.reason, (name, value)
        assert node.params.config.steps == 1 and node.params.config.intensity == 1.0
        for name, value in (("expression", "angry"), ("intensity", 0.0), ("steps", 2), ("output", "head"),
                            ("cloud_organized", False)):
            assert node.set_parameters([Parameter(name, value=value)])[0].successful, (name, value)
        _feed(node, _messages(scene, 21))
        assert node.wait_idle(30.0) and node.counters["category_angry"] == 1
        color = from_image_msg(out["color"][-1])
        assert (color[:5] == 0).all()  # head output: nothing but the edited region
        assert set(CATEGORIES) >= {"angry", "sad", "surprised"}
    finally:
        node.destroy_node()


def test_bad_input_is_counted_never_raised(context, weights, scene, model):
    node, out = _node(context, weights)
    try:
        good = _messages(scene, 30)
        assert node.process({"color": good["color"], "depth": good["depth"], "model": good["model"]}) is False
        assert node.counters["drop_no_camera_info"] == 1
        node.on_info(good["info"])
        bad_info = to_camera_info_msg(K, _header(30))
        bad_info.k = [0.0] * 9
        node.on_info(bad_info)
        assert node.counters["drop_bad_camera_info"] == 1 and node._info is good["info"]  # the good one kept

        def run(**changes):
            m = _messages(scene, 31, **changes)
            return node.process({"color": m["color"], "depth": m["depth"], "model": m["model"]})

        small = to_image_msg(np.zeros((10, 10, 3), np.uint8), "rgb8", _header(31))
        assert run(color=small) is False and node.counters["drop_size_mismatch"] == 1
        odd = to_image_msg(np.zeros((K.height, K.width), np.uint16), "16UC1", _header(31))
        assert run(color=odd) is False and node.counters["drop_bad_color"] == 1
        truncated = to_image_msg(scene["depth_mm"], "16UC1", _header(31))
        truncated.data = truncated.data[:100]
        assert run(depth=truncated) is False and node.counters["drop_bad_depth"] == 1
        short = fm.to_msg(scene["fit"], _header(31), scene["names"])
        short.expression, short.expression_names = short.expression[:40], short.expression_names[:40]
        assert run(model=short) is False
        nan = fm.to_msg(scene["fit"], _header(31), scene["names"])
        nan.head_pose.position.z = float("nan")
        assert run(model=nan) is False
        nan_q = fm.to_msg(scene["fit"], _header(31), scene["names"])
        nan_q.head_pose.orientation.w = float("nan")
        assert run(model=nan_q) is False
        other = fm.to_msg(scene["fit"], _header(31), scene["names"])
        other.model_id = "flame"
        assert run(model=other) is False
        assert node.counters["drop_bad_model"] == 4
        away = fm.to_msg(scene["fit"], _header(31), scene["names"])
        away.head_pose.position.x += 3.0
        assert run(model=away) is False and node.counters["drop_edit_refused"] == 1
        # Reordered expression names are put back in the model's order, not refused.
        shuffled = fm.to_msg(scene["fit"], _header(32), scene["names"])
        order = np.random.default_rng(0).permutation(len(scene["names"]))
        shuffled.expression = [shuffled.expression[i] for i in order]
        shuffled.expression_names = [scene["names"][i] for i in order]
        assert run(model=shuffled) is True
        assert out["points"] and node.counters["frames_out"] == 1
        st = node.diagnostic_status()
        keys = {kv.key for kv in st.values}
        assert {"drop_bad_model", "drop_size_mismatch", "drop_no_camera_info"} <= keys
    finally:
        node.destroy_node()


def test_a_slow_editor_drops_stale_frames_instead_of_queueing(context, weights, scene):
    node, out = _node(context, weights)
    try:
        real = node.avatar.edit_frame

        def slow(*a, **kw):
            time.sleep(0.3)
            return real(*a, **kw)

        node.avatar.edit_frame = slow
        for sec in range(40, 45):  # five frames while the first is still being edited
            _feed(node, _messages(scene, sec))
            time.sleep(0.02)
        assert node.wait_idle(30.0)
        c = node.counters.snapshot()
        assert c["frames_out"] == 2 and c["drop_stale"] == 3, c
        assert out["points"][-1].header.stamp.sec == 44  # the newest frame was the one edited
    finally:
        node.destroy_node()


def test_missing_weights_is_one_clear_line(context, tmp_path):
    from facediff_ros.nodes.editor import EditorNode
    with pytest.raises(ValueError, match=r"editor\.pt does not exist.*weights:="):
        EditorNode(context=context, parameter_overrides=[Parameter("weights", value=str(tmp_path))])
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "facediff_ros.nodes.editor", "--ros-args", "-p",
                           f"weights:={tmp_path / 'nothing'}"], capture_output=True, text=True, timeout=60,
                          env=env, cwd=str(ROOT))
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "editor.pt does not exist" in lines[0] and "Traceback" not in proc.stderr


# ---- a real process over DDS ---------------------------------------------------------------------
def test_editor_process_publishes_points_over_dds(context, weights, scene, tmp_path):
    """The editor as its own process (`python -m facediff_ros.nodes.editor`, the weights folder by
    -p weights:=) gets colour, depth, CameraInfo and FaceModel published here with sensor-data QoS
    and publishes avatar/points that decode to the published depth's points; an ExpressionTarget
    (reliable, transient local) changes the category it edits with."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from facediff_ros.adapters import topics
    from facediff_ros.adapters.dds import configure_environment
    from facediff_ros.msg import FaceModel

    exe = Path(sys.executable).with_name("facediff-editor")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "facediff_ros.nodes.editor"]
    log_path = tmp_path / "editor.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd + ["--ros-args", "-p", f"weights:={weights}", "-p", "backend:=torch",
                                   "-p", "steps:=1", "-p", "diagnostics_period_s:=0.2"],
                            env=configure_environment(dict(os.environ)), stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(ROOT))
    peer = rclpy.create_node("editor_dds_peer", context=context)
    clouds, statuses = [], []
    cam = topics.camera_topics("camera", "camera")
    qos = qos_profile_sensor_data
    pubs = {"color": peer.create_publisher(Image, cam.color, qos),
            "depth": peer.create_publisher(Image, cam.depth, qos),
            "info": peer.create_publisher(CameraInfo, cam.color_info, qos),
            "model": peer.create_publisher(FaceModel, topics.FACE_MODEL, qos)}
    target_pub = peer.create_publisher(ExpressionTarget, topics.AVATAR_TARGET, QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    peer.create_subscription(PointCloud2, "/" + topics.AVATAR_POINTS, clouds.append, qos)
    peer.create_subscription(DiagnosticArray, topics.DIAGNOSTICS,
                             lambda m: statuses.extend(s for s in m.status if "editor" in s.name), 10)
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(peer)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()
    stop = threading.Event()

    def stream():  # 10 Hz until told to stop: frames sent before the node is up are only a delay
        sec = 100
        while not stop.is_set():
            for key in ("info", "depth", "model", "color"):
                pubs[key].publish(_messages(scene, sec)[key])
            sec += 1
            stop.wait(0.1)

    sender = threading.Thread(target=stream, daemon=True)

    def tail():
        log.flush()
        return f"rc {proc.poll()}:\n" + log_path.read_text()[-3000:]

    def edited(category):
        for s in statuses[::-1]:
            kv = {k.key: k.value for k in s.values}
            if kv.get("expression") == category and int(kv.get(f"category_{category}", 0)) > 0:
                return True
        return False

    try:
        sender.start()
        assert wait_for(lambda: clouds or proc.poll() is not None, timeout=40.0), \
            f"no avatar/points\n{tail()}"
        assert clouds, tail()
        c = clouds[-1]
        assert c.point_step == 32 and [(f.name, f.offset) for f in c.fields] == \
            [("x", 0), ("y", 4), ("z", 8), ("rgb", 16)]  # the default cloud_layout: depth_image_proc's
        assert c.header.frame_id == FRAME and c.header.stamp.sec >= 100 and c.header.stamp.nanosec == 5000
        pts = from_pointcloud2(c)
        assert pts.shape == (K.height, K.width)
        ok = np.isfinite(pts["z"])
        z_in = scene["depth_mm"].astype(np.float64) / 1000
        v, u = np.mgrid[0:K.height, 0:K.width]
        far = (np.abs(u - 160) > 110) | (np.abs(v - 120) > 100)  # beyond the face crop: the input's points
        assert ok[far].all() and np.allclose(pts["z"][far], z_in[far], atol=1e-6)
        assert np.allclose(pts["x"][far], (u[far] - K.cx) * z_in[far] / K.fx, atol=1e-6)
        # Points on the face (the crop) exist and lie within the depth range around the face centre.
        face = ~far & ok
        assert face.sum() > 1000 and np.all(np.abs(pts["z"][face] - 0.6) < 0.2)
        # The target changes what the node edits with.
        target_pub.publish(ExpressionTarget(category=ExpressionTarget.SAD, intensity=0.4))
        assert wait_for(lambda: edited("sad") or proc.poll() is not None, timeout=15.0), \
            f"no edit with 'sad' reported\n{tail()}"
        assert proc.poll() is None, tail()
    finally:
        stop.set()
        sender.join(timeout=5)
        stop_processes(proc)
        log.close()
        ex.shutdown()
        spinner.join(timeout=5)
        peer.destroy_node()
