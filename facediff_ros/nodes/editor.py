"""editor node: camera frame + fitted face model -> the frame with the face re-expressed, and its cloud.

    ros2 run facediff_ros editor --ros-args -p expression:=happy -p intensity:=0.8

Subscribes (names relative to the node's namespace)::

    <camera_namespace>/<camera_name>/color/image_raw                    rgb8 / bgr8 / rgba8 / bgra8 / mono8
    <camera_namespace>/<camera_name>/aligned_depth_to_color/image_raw   16UC1 mm or 32FC1 m (use_depth)
    <camera_namespace>/<camera_name>/color/camera_info                  K of the colour image
    face/model        facediff_ros/FaceModel (the fitting node's)
    avatar/target     facediff_ros/ExpressionTarget (reliable + transient local: the last target
                      published before this node started still reaches it)

Colour, depth and face model are paired by stamp (:mod:`facediff_ros.core.sync`; the model comes
from the fitting chain, so colour waits in the synchroniser until its fit arrives or a later one
shows it never will); the newest colour CameraInfo gives the intrinsics. A colour frame with no
FaceModel of its stamp (none came, or only older ones: no face found, the fitting chain is down
or behind) is passed through **unedited** -- its own colour, depth, CameraInfo and cloud -- once a
later model shows it will get none, or once ``sync_queue_size`` newer frames wait (no models at
all: the frames come out that many frames late); it is counted ``passthrough_no_face_model`` and
said in /diagnostics. Each set is edited by
:class:`facediff_ros.core.editor.avatar.AvatarEditor` on a worker thread that holds at most one
waiting set: a set that arrives while another is still waiting replaces it (counted
``drop_stale``), so an editor slower than the camera works on the newest frame instead of a
growing queue.

Publishes, every output with the colour image's header (the camera frame's stamp and optical
frame id):

- ``avatar/color`` (rgb8) and ``avatar/depth`` (16UC1 mm, 0 = none, or 32FC1 m, NaN = none, by
  ``depth_encoding``): the edited frame (``output:=frame``) or the edited head only (``head``);
- ``avatar/camera_info``: a copy of the colour CameraInfo (the avatar images share its geometry);
- ``avatar/points`` (sensor_msgs/PointCloud2): x, y, z float32 (m, optical frame) and rgb packed
  in a float32 (0x00RRGGBB), little-endian (:mod:`facediff_ros.core.cloud`), by ``cloud_layout``:
  depth_image_proc's point_cloud_xyzrgb layout (offsets 0, 4, 8, 16, point_step 32, the default)
  or the compact one (0, 4, 8, 12, point_step 16); organised H x W with NaN for pixels without depth
  (``cloud_organized:=true``) or 1 x N of the valid points only;
- ``/diagnostics``: backend, rates, drops by reason, per-stage timings.

The target expression is the ``expression`` / ``intensity`` parameters (``ros2 param set``,
validated; a rejected value keeps the old one); an ExpressionTarget message sets both parameters
(so ``ros2 param get`` shows what is applied), and its optional raw weights are added to the
category's on the target mesh. Bad input (undecodable images, sizes that disagree, no CameraInfo
yet, a FaceModel of another model, of the wrong length or with NaN, a face outside the image, a
malformed target) is a counted, rate-limited logged drop, never a crash.

Start-up: ``weights`` ('' = the shipped ``facediff_ros/data/editor``) must hold ``editor.pt`` +
``config.json``; if not, the node exits with status 2 and one line naming the folder and the
command that makes the weights. The backend (``auto`` picks the fastest that runs here) is logged.
``weights`` can be switched at run time (``ros2 param set /editor weights DIR``, e.g. a
``facediff personalize`` folder): the new weights are loaded into a new backend first and swapped in
only when that works; otherwise the change is rejected with the reason and the old weights stay.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from facediff_ros.adapters import face_model as face_model_adapter
from facediff_ros.adapters import topics
from facediff_ros.adapters.cloud import depth_cloud_msg, to_pointcloud2
from facediff_ros.adapters.images import from_camera_info_msg, from_image_msg, to_image_msg
from facediff_ros.core import images
from facediff_ros.core.cloud import LAYOUTS, depth_to_cloud, valid_points
from facediff_ros.core.editor.avatar import MAX_LIVE_STEPS, OUTPUTS, AvatarConfig, AvatarEditor
from facediff_ros.core.face.expressions import CATEGORIES
from facediff_ros.core.sync import StampSynchronizer, SyncConfig
from facediff_ros.msg import ExpressionTarget, FaceModel
from facediff_ros.nodes import diagnostics as diag
from facediff_ros.nodes.parameters import QOS_CHOICES, QOS_HELP, NodeParameters, param, qos_profile
from facediff_ros.nodes.spin import run, stamp_ns

# torch's OpenMP threads busy-wait between parallel regions by default: with the other nodes on a
# small machine, backend:=torch then took 0.7-0.9 s instead of 16-24 ms per network evaluation
# (2 threads, 2 cores, load 7). Read when torch loads, which happens later (the backend is lazy).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BACKEND_CHOICES = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch")  # backends.BACKENDS
DEPTH_ENCODINGS = ("16UC1", "32FC1")
CLOUD_LAYOUTS = tuple(LAYOUTS)  # ("depth_image_proc", "compact")
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "editor"
TRAIN_COMMAND = ("python -m facediff_ros.synthetic.editor_data --cache --pairs 6144 && python -m "
                 "facediff_ros.synthetic.train_editor --cache <pairs folder> --out DIR")


@dataclass(frozen=True)
class EditorParams:
    """The editor node's ROS parameters."""

    expression: str = field(default="happy", metadata=param(
        "target expression category", choices=CATEGORIES))
    intensity: float = field(default=1.0, metadata=param(
        "target intensity: 0 = the neutral face, 1 = the full expression", min=0.0, max=1.0))
    steps: int = field(default=AvatarConfig.steps, metadata=param(
        "network evaluations per edit (the few-step sampler; 2: the best held-out depth, 4 and 8 add CPU)",
        min=1, max=MAX_LIVE_STEPS))
    output: str = field(default=AvatarConfig.output, metadata=param(
        "'frame': the edited face composed into the unchanged camera frame; 'head': the edited "
        "region only (colour 0, no depth elsewhere)", choices=OUTPUTS))
    detail_paste: bool = field(default=AvatarConfig.detail_paste, metadata=param(
        "paste the person's own full-resolution warped pixels plus the network's 64 px colour correction "
        "(a sharp face; ~9 ms more per frame on a loaded 2-core CPU); false: the network's 64 px colour "
        "upsampled (a blurred face)", read_only=True))
    cloud_organized: bool = field(default=True, metadata=param(
        "avatar/points as an organised H x W cloud with NaN points (like depth_image_proc); false: "
        "1 x N, the valid points only"))
    cloud_layout: str = field(default="depth_image_proc", metadata=param(
        "avatar/points point layout: depth_image_proc (x y z at 0 4 8, rgb at 16, point_step 32, as "
        "point_cloud_xyzrgb / PCL's PointXYZRGB) or compact (rgb at 12, point_step 16: half the bytes; "
        "depth_image_proc is 2x the size)", choices=CLOUD_LAYOUTS))
    depth_encoding: str = field(default="16UC1", metadata=param(
        "avatar/depth encoding: 16UC1 (uint16 millimetres, 0 = no data) or 32FC1 (float metres, NaN = "
        "no data)", choices=DEPTH_ENCODINGS))
    backend: str = field(default="auto", metadata=param(
        "inference backend: auto (the fastest that runs here: tensorrt, onnxruntime-cuda, torch on "
        "CUDA, onnxruntime-cpu, torch on CPU), tensorrt, onnxruntime-cuda, onnxruntime-cpu, torch",
        choices=BACKEND_CHOICES, read_only=True))
    weights: str = field(default="", metadata=param(
        "editor weights folder (editor.pt + config.json, e.g. a facediff personalize folder); empty: the "
        "shipped facediff_ros/data/editor; switchable at run time (loaded first, rejected if unusable)"))
    use_depth: bool = field(default=True, metadata=param(
        "pair each frame with its aligned depth; false: colour-only (a webcam), the fitted model's "
        "rendered depth stands in for the face's", read_only=True))
    camera_namespace: str = field(default="camera", metadata=param(
        "first part of the input topic names (as the capture node's / realsense2_camera's)", read_only=True))
    camera_name: str = field(default="camera", metadata=param(
        "second part of the input topic names", read_only=True))
    input_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of the camera and face/model subscriptions: " + QOS_HELP, choices=QOS_CHOICES, read_only=True))
    color_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of avatar/color and avatar/camera_info: " + QOS_HELP, choices=QOS_CHOICES, read_only=True))
    depth_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of avatar/depth: " + QOS_HELP, choices=QOS_CHOICES, read_only=True))
    cloud_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of avatar/points: " + QOS_HELP, choices=QOS_CHOICES, read_only=True))
    sync_tolerance_s: float = field(default=SyncConfig.tolerance_s, metadata=param(
        "0: pair colour, depth and face model with equal stamps only; > 0: nearest stamps within it",
        min=0.0, max=1.0))
    sync_queue_size: int = field(default=10, metadata=param(
        "frames per input stream waiting for their partners: colour waits for its face model, which "
        "the landmark and fitting nodes deliver some frames later", min=1, max=100))
    diagnostics_period_s: float = field(default=1.0, metadata=param(
        "period of /diagnostics messages", min=0.05, max=60.0, read_only=True))

    def __post_init__(self):
        topics.camera_topics(self.camera_namespace, self.camera_name)  # raises ValueError with the reason

    def sync(self) -> SyncConfig:
        return SyncConfig(self.sync_tolerance_s, self.sync_queue_size)


def resolve_weights(weights: str) -> Path:
    """The weights folder for the ``weights`` parameter.

    :raises ValueError: no ``editor.pt`` there (one line: the folder and how to make it).
    """
    folder = Path(weights).expanduser() if weights else SHIPPED_WEIGHTS
    if not (folder / "editor.pt").is_file():
        what = "the shipped editor weights are not installed" if not weights else "no editor weights"
        raise ValueError(f"{what}: {folder / 'editor.pt'} does not exist; make them with `{TRAIN_COMMAND}` "
                         f"and pass -p weights:=DIR")
    return folder


class EditorNode(Node):
    """Pairs camera frames with face models, edits them on a worker thread, publishes the avatar."""

    def __init__(self, node_name: str = "editor", **kwargs):
        self._worker = None  # destroy_node copes with a constructor that raised
        super().__init__(node_name, **kwargs)
        self.avatar = None  # set below; _check_params loads new weights only once there is one
        self._next_avatar = None  # (weights parameter, AvatarEditor) validated, waiting to be swapped in
        self.params = NodeParameters(self, EditorParams, on_change=self._on_params_changed,
                                     check=self._check_params)
        p = self.params.config
        folder = resolve_weights(p.weights)
        self.avatar = self._load_avatar(p, folder)
        backend = self.avatar.backend
        self.backend_text = f"{backend.describe()}: {backend.why}"
        self.get_logger().info(f"editor backend: {self.backend_text}; weights {folder}")
        self.names = list(self.avatar.names)

        self.counters = diag.Counters()
        self.rate_in = diag.RateMeter()
        self.rate_out = diag.RateMeter()
        self.rate_passthrough = diag.RateMeter()  # frames published unedited: no face model
        self.times = diag.StageTimes()
        self.log_limited = diag.RateLimitedLog(self.get_logger())
        self.drops = diag.FrameDrops(self.counters, self.log_limited, "editor")
        self._keys = ("color", "depth", "model") if p.use_depth else ("color", "model")
        # Colour frames the synchroniser gives up on come back without a model: passed through.
        self.sync = StampSynchronizer(self._keys, p.sync(), report_unmatched=True)
        self._sync_lock = threading.Lock()
        self._info: Optional[CameraInfo] = None
        self._extra_weights: Optional[np.ndarray] = None  # (E,) from the last ExpressionTarget

        cam = topics.camera_topics(p.camera_namespace, p.camera_name)
        qin = qos_profile(p.input_qos)
        self.create_subscription(Image, cam.color, self.on_color, qin)
        if p.use_depth:
            self.create_subscription(Image, cam.depth, self.on_depth, qin)
        self.create_subscription(CameraInfo, cam.color_info, self.on_info, qin)
        self.create_subscription(FaceModel, topics.FACE_MODEL, self.on_model, qin)
        # The target is state, not a stream: reliable, and transient local so that a target published
        # before this node started still arrives (publishers should use the same profile).
        target_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(ExpressionTarget, topics.AVATAR_TARGET, self.on_target, target_qos)
        self.color_pub = self.create_publisher(Image, topics.AVATAR_COLOR, qos_profile(p.color_qos))
        self.info_pub = self.create_publisher(CameraInfo, topics.AVATAR_CAMERA_INFO, qos_profile(p.color_qos))
        self.depth_pub = self.create_publisher(Image, topics.AVATAR_DEPTH, qos_profile(p.depth_qos))
        self.cloud_pub = self.create_publisher(PointCloud2, topics.AVATAR_POINTS, qos_profile(p.cloud_qos))
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.create_timer(p.diagnostics_period_s, self.publish_diagnostics)

        # One waiting set at most (see the module docstring); the worker edits it.
        self._cond = threading.Condition()
        self._waiting: Optional[Dict] = None
        self._stop = False
        self.busy = False
        self._worker = threading.Thread(target=self._work, name="editor_worker", daemon=True)
        self._worker.start()

    # ---- parameters ----------------------------------------------------------------------------
    def _check_topics(self, p: EditorParams) -> None:
        topics.check_topics_for_node(topics.camera_topics(p.camera_namespace, p.camera_name).all(),
                                     self.get_name(), self.get_namespace())

    def _load_avatar(self, p: EditorParams, folder: Path) -> AvatarEditor:
        """An AvatarEditor over the weights in ``folder`` (ValueError with the reason otherwise)."""
        from facediff_ros.core.editor.export import BackendUnavailable  # torch: after the cheap checks
        try:
            config = AvatarConfig(p.steps, p.output, detail_paste=p.detail_paste)
            return AvatarEditor.from_weights(folder, p.backend, config=config)
        except BackendUnavailable as exc:
            raise ValueError(f"backend {p.backend!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable file (torch raises pickle errors too)
            raise ValueError(f"cannot load the editor weights in {folder}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _check_params(self, p: EditorParams) -> None:
        self._check_topics(p)
        # New weights at run time: load them into a new backend now, so a bad folder is rejected
        # (the parameter keeps its value) and a good one is swapped in by _on_params_changed.
        if self.avatar is not None and p.weights != self.params.config.weights:
            self._next_avatar = (p.weights, self._load_avatar(p, resolve_weights(p.weights)))

    def _on_params_changed(self, old: EditorParams, new: EditorParams) -> None:
        if (old.weights != new.weights and self._next_avatar is not None
                and self._next_avatar[0] == new.weights):
            self.avatar = self._next_avatar[1]  # one assignment: the worker's next frame uses it
            self._next_avatar = None
            self.backend_text = f"{self.avatar.backend.describe()}: {self.avatar.backend.why}"
            self.get_logger().info(f"editor weights switched to {resolve_weights(new.weights)} "
                                   f"({self.backend_text})")
        if old.sync() != new.sync():
            with self._sync_lock:
                self.sync.reconfigure(new.sync())

    # ---- callbacks -----------------------------------------------------------------------------
    def on_info(self, msg: CameraInfo) -> None:
        try:
            from_camera_info_msg(msg)  # checked here (K plausible too) so a bad one never replaces a good one
        except Exception as exc:  # noqa: BLE001 - a malformed CameraInfo must not kill the node
            self.drops.add("bad_camera_info", str(exc))
            return
        self._info = msg

    def on_color(self, msg: Image) -> None:
        self.rate_in.tick()
        self.counters.add("frames_in")
        self._add("color", msg)

    def on_depth(self, msg: Image) -> None:
        self._add("depth", msg)

    def on_model(self, msg: FaceModel) -> None:
        self._add("model", msg)

    def _add(self, key: str, msg) -> None:
        try:
            with self._sync_lock:
                matched = self.sync.add(key, stamp_ns(msg), msg)
        except Exception as exc:  # noqa: BLE001
            self.drops.add("bad_header", f"{key}: {exc}")
            return
        for m in matched:
            self.submit(m)

    def on_target(self, msg: ExpressionTarget) -> None:
        """Apply an ExpressionTarget: category + intensity through the parameters, raw weights kept."""
        try:
            if msg.category >= len(CATEGORIES):
                raise ValueError(f"category {msg.category} is not one of 0..{len(CATEGORIES) - 1}")
            intensity = float(msg.intensity)
            if not np.isfinite(intensity) or not 0.0 <= intensity <= 1.0:
                raise ValueError(f"intensity {intensity} is not in [0, 1]")
            extra = None
            if len(msg.weights) or len(msg.weight_names):
                if len(msg.weights) != len(msg.weight_names):
                    raise ValueError(f"{len(msg.weights)} weights for {len(msg.weight_names)} names")
                extra = np.zeros(len(self.names), np.float32)
                for name, w in zip(msg.weight_names, msg.weights):
                    if name not in self.names:
                        raise ValueError(f"unknown blendshape {name!r}")
                    if not np.isfinite(w) or not 0.0 <= w <= 1.0:
                        raise ValueError(f"weight of {name} is {w}, not in [0, 1]")
                    extra[self.names.index(name)] = w
        except ValueError as exc:
            self.counters.add("targets_rejected")
            self.log_limited("bad_target", f"editor: ExpressionTarget rejected: {exc}")
            return
        result = self.set_parameters([Parameter("expression", value=CATEGORIES[msg.category]),
                                      Parameter("intensity", value=intensity)])
        if not all(r.successful for r in result):
            self.counters.add("targets_rejected")
            self.log_limited("bad_target", f"editor: ExpressionTarget rejected: "
                                           f"{'; '.join(r.reason for r in result if not r.successful)}")
            return
        self._extra_weights = extra
        self.counters.add("targets_applied")

    # ---- the worker ----------------------------------------------------------------------------
    def submit(self, matched: Dict) -> None:
        """Hand a matched set to the worker; a set still waiting is replaced and counted stale --
        except that a frame to pass through (no face model) never replaces a waiting edit: when the
        fitting chain lags by more than the sync queue, every new colour frame gives up an old one,
        and those would otherwise displace the edits (it is dropped instead, ``stale_passthrough``)."""
        with self._cond:
            if self._waiting is not None:
                if "model" in self._waiting and "model" not in matched:
                    self.drops.add("stale_passthrough", "an edit is waiting; this frame without a face "
                                   "model is not passed through")
                    return
                self.drops.add("stale", "the editor was still busy; a newer frame replaced this one")
            self._waiting = matched
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job, self._waiting = self._waiting, None
                self.busy = True
            try:
                self.process(job)
            finally:
                with self._cond:
                    self.busy = False
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing waits and nothing is being edited, or ``timeout`` s passed (tests, benches)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._waiting is not None or self.busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ---- one frame -----------------------------------------------------------------------------
    def process(self, matched: Dict) -> bool:
        """Edit one matched set and publish it; False when it was dropped."""
        try:
            return self._process(matched)
        except Exception as exc:  # noqa: BLE001 - never let one frame take the node down
            if not self.context.ok():
                return False  # Ctrl-C invalidated the context under this edit: not the frame's fault
            self.drops.add("internal_error", f"{type(exc).__name__}: {exc}")
        return False

    def _model_state(self, msg: FaceModel):
        """The FitResult of a FaceModel in this model's expression order (ValueError: unusable)."""
        fit = face_model_adapter.from_msg(msg)
        names = list(msg.expression_names)
        if names != self.names:
            if sorted(names) != sorted(self.names):
                raise ValueError(f"{len(names)} expression weights whose names are not the model's "
                                 f"{len(self.names)}")
            order = [names.index(n) for n in self.names]
            fit.expression = fit.expression[order]
        self.avatar.check_fit(fit)
        return fit

    def _process(self, m: Dict) -> bool:
        t0 = time.perf_counter()
        p = self.params.config
        info = self._info
        if info is None:
            self.drops.add("no_camera_info", "no colour CameraInfo received yet")
            return False
        color_msg = m["color"]
        K = from_camera_info_msg(info)
        try:
            color = images.to_rgb8(from_image_msg(color_msg), color_msg.encoding)
        except ValueError as exc:
            self.drops.add("bad_color", str(exc))
            return False
        if color.shape[:2] != K.shape:
            self.drops.add("size_mismatch", f"colour {color.shape[1]}x{color.shape[0]}, CameraInfo "
                           f"{K.width}x{K.height}")
            return False
        depth = None
        if "depth" in m:
            try:
                depth = images.depth_to_meters(from_image_msg(m["depth"]), m["depth"].encoding)
            except ValueError as exc:
                self.drops.add("bad_depth", str(exc))
                return False
            if depth.shape != K.shape:
                self.drops.add("size_mismatch", f"depth {depth.shape[1]}x{depth.shape[0]}, CameraInfo "
                               f"{K.width}x{K.height}")
                return False
        elif p.use_depth:
            # Given up on without its depth either: nothing to pass through as a cloud.
            self.drops.add("no_depth", "no aligned depth with this colour frame's stamp")
            return False
        if "model" not in m:
            # No FaceModel for this frame (none came, or only older ones): the raw frame, unedited.
            if depth is None:
                self.drops.add("no_face_model", "no face model for this colour-only frame")
                return False
            t1 = time.perf_counter()
            self.times.add("decode", t1 - t0)
            self._publish(p, color_msg.header, info, K, color, depth, t0, t1)
            self.counters.add("passthrough_no_face_model")
            self.rate_passthrough.tick()
            self.log_limited("passthrough", "editor: no face model for this frame: passed through unedited",
                             "info")
            return True
        try:
            fit = self._model_state(m["model"])
        except ValueError as exc:
            self.drops.add("bad_model", str(exc))
            return False
        t1 = time.perf_counter()
        self.times.add("decode", t1 - t0)
        try:
            frame = self.avatar.edit_frame(color, depth, K, fit, p.expression, p.intensity,
                                           extra_weights=self._extra_weights, steps=p.steps, output=p.output)
        except ValueError as exc:
            self.drops.add("edit_refused", str(exc))
            return False
        for stage, ms in frame.timings.items():
            self.times.add(f"edit_{stage}", ms / 1e3)
        self._publish(p, color_msg.header, info, K, frame.color, frame.depth_m, t0, time.perf_counter())
        self.counters.add(f"category_{frame.category}")
        if frame.colour_only:
            self.counters.add("colour_only")
        return True

    def _publish(self, p: EditorParams, header, info: CameraInfo, K, color: np.ndarray,
                 depth_m: np.ndarray, t0: float, t2: float) -> None:
        """Publish colour (rgb8), depth, CameraInfo and the cloud of one frame with ``header``."""
        if p.depth_encoding == "16UC1":
            depth_img = images.depth_m_to_mm(depth_m)
        else:
            depth_img = depth_m
        color_out = to_image_msg(color, "rgb8", header)
        depth_out = to_image_msg(depth_img, p.depth_encoding, header)
        info_out = copy.deepcopy(info)
        info_out.header = header
        t3 = time.perf_counter()
        self.times.add("images", t3 - t2)
        if p.cloud_organized:  # (H, W), written straight into the message's buffer
            cloud_out = depth_cloud_msg(depth_m, K, color, p.cloud_layout, header)
        else:  # (N,) valid points, row-major order
            cloud = valid_points(depth_to_cloud(depth_m, K, color, p.cloud_layout))
            cloud_out = to_pointcloud2(cloud, header)
        t4 = time.perf_counter()
        self.times.add("cloud", t4 - t3)
        self.color_pub.publish(color_out)
        self.depth_pub.publish(depth_out)
        self.info_pub.publish(info_out)
        self.cloud_pub.publish(cloud_out)
        t5 = time.perf_counter()
        self.times.add("publish", t5 - t4)
        self.times.add("total", t5 - t0)
        self.counters.add("frames_out")
        self.rate_out.tick()

    # ---- diagnostics ---------------------------------------------------------------------------
    def diagnostic_status(self):
        """OK: edited frames are published; WARN: no input, or input but nothing paired yet;
        ERROR: input arrives and every frame is dropped."""
        rin, rout, rpass = self.rate_in.rate(), self.rate_out.rate(), self.rate_passthrough.rate()
        if rout > 0 and rpass >= rout:
            level = diag.WARN
            msg = (f"no face model for this frame: {rpass:.1f} frames/s passed through unedited from "
                   f"{rin:.1f} colour frames/s")
        elif rpass > 0:
            level, msg = diag.OK, (f"{rout - rpass:.1f} edited frames/s and {rpass:.1f}/s passed through "
                                   f"unedited (no face model for this frame) from {rin:.1f} colour frames/s")
        elif rout > 0:
            level, msg = diag.OK, f"{rout:.1f} edited frames/s from {rin:.1f} colour frames/s"
        elif rin == 0:
            level, msg = diag.WARN, "no colour image received in the last 2 s"
        elif self.drops.rate.rate() > 0:
            level = diag.ERROR
            msg = f"input arrives ({rin:.1f} Hz) but every frame is dropped; last: {self.drops.last}"
        else:
            level = diag.WARN
            msg = f"input arrives ({rin:.1f} Hz); no edit yet (waiting for face/model partners?)"
        p = self.params.config
        values = {"rate_in_hz": rin, "rate_out_hz": rout, "rate_passthrough_hz": rpass,
                  "backend": self.backend_text,
                  "expression": p.expression, "intensity": float(p.intensity), "steps": p.steps,
                  "output": p.output}
        values.update(self.counters.snapshot())
        values.update({f"sync_{k}": v for k, v in self.sync.dropped.items()})
        values.update({f"{k}_ms": v for k, v in self.times.items()})
        return diag.status(f"{self.get_name()}: editor", face_model_adapter.MODEL_ID, level, msg, values)

    def publish_diagnostics(self) -> None:
        self._diag_pub.publish(diag.array(self.get_clock().now().to_msg(), [self.diagnostic_status()]))

    def destroy_node(self):
        worker = getattr(self, "_worker", None)
        if worker is not None:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            worker.join(timeout=10.0)
        return super().destroy_node()


def main(args=None):
    run(EditorNode, args)


if __name__ == "__main__":
    main()
