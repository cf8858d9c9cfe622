"""fitting node: face landmarks (+ aligned depth) + CameraInfo -> the morphable model's state.

    ros2 run facediff_ros fitting

Subscribes (names relative to the node's namespace)::

    face/landmarks                                                     facediff_ros/FaceLandmarks
    <camera_namespace>/<camera_name>/aligned_depth_to_color/image_raw  16UC1 mm or 32FC1 m (use_depth)
    <camera_namespace>/<camera_name>/color/camera_info                 K of the colour image

Landmarks and depth are paired by stamp (:mod:`facediff_ros.core.sync`); the newest colour
CameraInfo gives the intrinsics (a driver publishes the same K with every frame). The callbacks
only pair; a worker thread fits the newest pair (:mod:`facediff_ros.nodes.latest_worker`): a pair
still waiting when a newer one arrives is dropped and counted ``drop_stale``, so a fit slower than
the camera works on the newest frame instead of a growing queue (the tracker tracks across the
skipped frames). Each frame goes through :class:`facediff_ros.core.fitting.tracker.FaceTracker`;
this node only pairs, converts (:mod:`facediff_ros.adapters`), counts and publishes:

- ``face/model`` (facediff_ros/FaceModel, header copied from the landmarks: the colour frame's
  stamp and optical frame id);
- ``face/mesh`` (visualization_msgs/Marker TRIANGLE_LIST of the fitted ``mesh_region``, every
  ``mesh_every_n``-th fit; rviz must subscribe Best Effort with the default QoS);
- ``/diagnostics``: rates, drops by reason, lost frames by reason, terms used, identity lock,
  quality and per-stage timings.

Bad input (a FaceLandmarks of the wrong length, NaN landmarks, no CameraInfo yet, an image size
that disagrees with the CameraInfo, an undecodable depth image) is a counted, rate-limited
logged drop, never a crash. A frame the tracker cannot fit (too few landmarks, degenerate, low
quality) publishes nothing and is counted as ``lost``. With ``use_depth`` true, landmarks whose
depth never arrives are dropped by the synchroniser (counted ``sync_*``); with
``colour_only_fallback`` true, a depth image that is unusable gives a colour-only fit instead of
a drop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import Marker

from facediff_ros.adapters import face_model as face_model_adapter
from facediff_ros.adapters import landmarks as landmarks_adapter
from facediff_ros.adapters import topics
from facediff_ros.adapters.images import from_camera_info_msg, from_image_msg
from facediff_ros.core.fitting.tracker import FaceTracker, FitResult, TrackerConfig
from facediff_ros.core.face.morphable_model import REGIONS
from facediff_ros.core.sync import StampSynchronizer, SyncConfig
from facediff_ros.msg import FaceLandmarks, FaceModel
from facediff_ros.nodes import diagnostics as diag
from facediff_ros.nodes.latest_worker import LatestWorker
from facediff_ros.nodes.parameters import QOS_CHOICES, QOS_HELP, NodeParameters, param, qos_profile
from facediff_ros.nodes.spin import run, stamp_ns

_SYNC_KEYS = ("landmarks", "depth")


@dataclass(frozen=True)
class FittingParams:
    """The fitting node's ROS parameters (tracker defaults come from TrackerConfig)."""

    camera_namespace: str = field(default="camera", metadata=param(
        "first part of the depth / camera_info topic names", read_only=True))
    camera_name: str = field(default="camera", metadata=param(
        "second part of the depth / camera_info topic names", read_only=True))
    input_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of the input subscriptions: " + QOS_HELP, choices=QOS_CHOICES, read_only=True))
    output_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of face/model and face/mesh: " + QOS_HELP, choices=QOS_CHOICES, read_only=True))
    use_depth: bool = field(default=True, metadata=param(
        "pair each landmarks message with the aligned depth image of the same stamp and use the dense "
        "depth term; false: fit the landmarks alone as they arrive", read_only=True))
    colour_only_fallback: bool = field(default=True, metadata=param(
        "an unusable depth image (bad encoding, wrong size) gives a fit without it instead of a drop"))
    num_identity: int = field(default=TrackerConfig.num_identity, metadata=param(
        "identity modes fitted", min=1, max=100, read_only=True))
    mesh_region: str = field(default="narrow_face", metadata=param(
        "mesh region drawn on face/mesh", choices=("narrow_face", "face")))
    mesh_every_n: int = field(default=3, metadata=param(
        "publish face/mesh for every n-th fit (0: never); building the Marker costs a few ms", min=0,
        max=1000))
    sync_tolerance_s: float = field(default=SyncConfig.tolerance_s, metadata=param(
        "0: pair landmarks and depth with equal stamps only; > 0: nearest stamps within it",
        min=0.0, max=1.0))
    sync_queue_size: int = field(default=10, metadata=param(
        "messages per input stream waiting for their partner: depth waits for its landmarks, which the "
        "landmark node delivers some frames later", min=1, max=100))
    diagnostics_period_s: float = field(default=1.0, metadata=param(
        "period of /diagnostics messages", min=0.05, max=60.0, read_only=True))

    def __post_init__(self):
        topics.camera_topics(self.camera_namespace, self.camera_name)  # raises ValueError with the reason
        if self.mesh_region not in REGIONS:
            raise ValueError(f"mesh_region: unknown region {self.mesh_region!r}")

    def sync(self) -> SyncConfig:
        return SyncConfig(self.sync_tolerance_s, self.sync_queue_size)


class FittingNode(Node):
    """Pairs landmarks with depth, runs the face tracker, publishes FaceModel and the mesh."""

    def __init__(self, node_name: str = "fitting", **kwargs):
        self._worker = None  # destroy_node copes with a constructor that raised
        super().__init__(node_name, **kwargs)
        self.params = NodeParameters(self, FittingParams, on_change=self._on_params_changed,
                                     check=self._check_topics)
        p = self.params.config
        self.counters = diag.Counters()
        self.rate_in = diag.RateMeter()
        self.rate_out = diag.RateMeter()
        self.rate_lost = diag.RateMeter()
        self.last_lost = ""
        self.last_result: Optional[FitResult] = None
        self.times = diag.StageTimes()
        self.log_limited = diag.RateLimitedLog(self.get_logger())
        self.drops = diag.FrameDrops(self.counters, self.log_limited, "fitting")
        self.tracker = FaceTracker(TrackerConfig(num_identity=p.num_identity))
        self._mesh_tris = self._mesh_triangles(p.mesh_region)
        self.sync = StampSynchronizer(_SYNC_KEYS, p.sync())
        self._intrinsics = None
        self._fits = 0

        cam = topics.camera_topics(p.camera_namespace, p.camera_name)
        qin = qos_profile(p.input_qos)
        # Raw: the CDR bytes are read with numpy (landmarks_adapter.deserialize), not into 478 Points.
        self.create_subscription(FaceLandmarks, topics.FACE_LANDMARKS, self.on_landmarks, qin, raw=True)
        if p.use_depth:
            self.create_subscription(Image, cam.depth, self.on_depth, qin)
        self.create_subscription(CameraInfo, cam.color_info, self.on_info, qin)
        qout = qos_profile(p.output_qos)
        self.pub = self.create_publisher(FaceModel, topics.FACE_MODEL, qout)
        self.mesh_pub = self.create_publisher(Marker, topics.FACE_MESH, qout)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.create_timer(p.diagnostics_period_s, self.publish_diagnostics)
        self._worker = LatestWorker("fitting_worker", lambda pair: self.process(*pair), self._on_stale,
                                    self._on_worker_error, self.context.ok)

    def _mesh_triangles(self, region: str) -> np.ndarray:
        tris, _, _ = self.tracker.model.triangles((region,))
        return tris

    def _check_topics(self, p: FittingParams) -> None:
        topics.check_topics_for_node(topics.camera_topics(p.camera_namespace, p.camera_name).all(),
                                     self.get_name(), self.get_namespace())

    def _on_params_changed(self, old: FittingParams, new: FittingParams) -> None:
        if old.mesh_region != new.mesh_region:
            self._mesh_tris = self._mesh_triangles(new.mesh_region)
        if old.sync() != new.sync():
            self.sync.reconfigure(new.sync())

    # ---- callbacks -----------------------------------------------------------------------------
    def on_info(self, msg: CameraInfo) -> None:
        try:
            self._intrinsics = from_camera_info_msg(msg)
        except Exception as exc:  # noqa: BLE001 - a malformed CameraInfo must not kill the node
            self.drops.add("bad_camera_info", str(exc))

    def on_landmarks(self, msg) -> None:
        """A FaceLandmarks: its serialized bytes (the subscription is raw) or a message object."""
        self.rate_in.tick()
        self.counters.add("frames_in")
        if isinstance(msg, (bytes, bytearray, memoryview)):
            try:
                msg = landmarks_adapter.deserialize(msg)
            except ValueError:
                try:  # anything the numpy reader does not take (e.g. big-endian CDR): rclpy's reader
                    msg = deserialize_message(bytes(msg), FaceLandmarks)
                except Exception as exc:  # noqa: BLE001 - undecodable bytes are a drop, not a crash
                    self.drops.add("bad_landmarks", f"undecodable FaceLandmarks: {exc}")
                    return
        if not self.params.config.use_depth:
            self.submit(msg, None)
            return
        self._add("landmarks", msg)

    def on_depth(self, msg: Image) -> None:
        self._add("depth", msg)

    def _add(self, key: str, msg) -> None:
        try:
            matched = self.sync.add(key, stamp_ns(msg), msg)
        except Exception as exc:  # noqa: BLE001
            self.drops.add("bad_header", f"{key}: {exc}")
            return
        for m in matched:
            self.submit(m["landmarks"], m["depth"])

    # ---- the worker ----------------------------------------------------------------------------
    def submit(self, lm_msg: FaceLandmarks, depth_msg: Optional[Image]) -> None:
        """Hand a pair to the worker; a pair still waiting is replaced (``drop_stale``)."""
        self._worker.submit((lm_msg, depth_msg))

    def _on_stale(self, pair) -> None:
        self.drops.add("stale", "the fitting was still busy; a newer frame replaced this one")

    def _on_worker_error(self, exc: Exception) -> None:
        self.drops.add("internal_error", f"{type(exc).__name__}: {exc}")

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no pair waits and none is being fitted, or ``timeout`` s passed (tests, benches)."""
        return self._worker.wait_idle(timeout)

    # ---- one frame -----------------------------------------------------------------------------
    def process(self, lm_msg: FaceLandmarks, depth_msg: Optional[Image]) -> Optional[FitResult]:
        """Fit one frame; publishes and returns the result (None: dropped or lost)."""
        try:
            return self._process(lm_msg, depth_msg)
        except Exception as exc:  # noqa: BLE001 - never let one frame take the node down
            if not self.context.ok():
                return None  # Ctrl-C invalidated the context under this fit: not the frame's fault
            self.drops.add("internal_error", f"{type(exc).__name__}: {exc}")
        return None

    def _process(self, lm_msg: FaceLandmarks, depth_msg: Optional[Image]) -> Optional[FitResult]:
        t0 = time.perf_counter()
        K = self._intrinsics
        if K is None:
            self.drops.add("no_camera_info", "no colour CameraInfo received yet")
            return None
        try:
            if isinstance(lm_msg, landmarks_adapter.ReceivedLandmarks):
                lm = lm_msg.landmarks
            else:
                lm = landmarks_adapter.from_msg(lm_msg)
        except ValueError as exc:
            self.drops.add("bad_landmarks", str(exc))
            return None
        if (lm.image_width, lm.image_height) != (K.width, K.height):
            self.drops.add("size_mismatch", f"landmarks of a {lm.image_width}x{lm.image_height} image, "
                           f"CameraInfo {K.width}x{K.height}")
            return None
        depth = None
        if depth_msg is not None:
            try:
                depth = from_image_msg(depth_msg)
                if depth.shape != K.shape:
                    raise ValueError(f"depth {depth.shape[1]}x{depth.shape[0]} vs CameraInfo "
                                     f"{K.width}x{K.height}")
            except ValueError as exc:
                if not self.params.config.colour_only_fallback:
                    self.drops.add("bad_depth", str(exc))
                    return None
                self.counters.add("depth_unusable")
                depth = None
        t1 = time.perf_counter()
        self.times.add("decode", t1 - t0)
        try:
            result = self.tracker.update(K, lm.uv, lm.points, lm.valid, depth)
        except ValueError as exc:
            self.drops.add("bad_landmarks", str(exc))
            return None
        for stage, ms in result.timings.items():
            self.times.add(f"fit_{stage}", ms / 1e3)
        if not result.ok:
            key = result.reason.split(" (")[0].split(":")[0].replace(" ", "_")
            self.counters.add("lost")
            self.counters.add(f"lost_{key}")
            self.rate_lost.tick()
            self.last_lost = result.reason
            return None
        t2 = time.perf_counter()
        msg = face_model_adapter.to_msg(result, lm_msg.header, self.tracker.model.expression_names)
        self.pub.publish(msg)
        self.times.add("message", time.perf_counter() - t2)
        self._fits += 1
        n = self.params.config.mesh_every_n
        # Only when someone listens: the Marker holds ~45k Points, and building + serialising it
        # took 400-600 ms per fit on a loaded 2-core machine, stalling the next fit.
        if n and self._fits % n == 0 and self.mesh_pub.get_subscription_count() > 0:
            t3 = time.perf_counter()
            v = result.vertices(self.tracker.model)
            self.mesh_pub.publish(face_model_adapter.mesh_marker(v, self._mesh_tris, lm_msg.header))
            self.times.add("mesh", time.perf_counter() - t3)
        self.times.add("total", time.perf_counter() - t0)
        self.counters.add("models_out")
        self.counters.add("terms_" + "+".join(result.terms_used))
        self.rate_out.tick()
        self.last_result = result
        return result

    # ---- diagnostics ---------------------------------------------------------------------------
    def diagnostic_status(self):
        """OK: models are being published; WARN: input but every frame lost, or no input; ERROR:
        input arrives and every frame is dropped as bad input."""
        rin, rout = self.rate_in.rate(), self.rate_out.rate()
        if rout > 0:
            level, msg = diag.OK, f"{rout:.1f} fits/s from {rin:.1f} landmark frames/s"
        elif rin == 0:
            level, msg = diag.WARN, "no face/landmarks received in the last 2 s"
        elif self.drops.rate.rate() > 0 and self.rate_lost.rate() == 0:
            level = diag.ERROR
            msg = f"input arrives ({rin:.1f} Hz) but every frame is dropped; last: {self.drops.last}"
        elif self.rate_lost.rate() > 0:
            level = diag.WARN
            msg = f"input arrives ({rin:.1f} Hz) but the face is lost; last: {self.last_lost}"
        else:
            level = diag.WARN
            msg = f"input arrives ({rin:.1f} Hz); no result yet (waiting for depth partners?)"
        values = {"rate_in_hz": rin, "rate_out_hz": rout, "identity_locked": self.tracker.identity_locked}
        r = self.last_result
        if r is not None:
            values.update({"quality": float(r.quality), "residual_rms_mm": 1e3 * float(r.residual_rms),
                           "terms_used": "+".join(r.terms_used), "scale_from_prior": r.scale_from_prior})
        values.update(self.counters.snapshot())
        values.update({f"sync_{k}": v for k, v in self.sync.dropped.items()})
        values.update({f"{k}_ms": v for k, v in self.times.items()})
        return diag.status(f"{self.get_name()}: fitting", face_model_adapter.MODEL_ID, level, msg, values)

    def publish_diagnostics(self) -> None:
        self._diag_pub.publish(diag.array(self.get_clock().now().to_msg(), [self.diagnostic_status()]))

    def destroy_node(self):
        # The worker first: it must not publish on publishers being destroyed.
        if getattr(self, "_worker", None) is not None:
            self._worker.stop()
        return super().destroy_node()


def main(args=None):
    run(FittingNode, args)


if __name__ == "__main__":
    main()
