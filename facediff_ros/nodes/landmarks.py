"""landmarks node: colour + aligned depth + CameraInfo -> MediaPipe face mesh lifted to 3D.

    ros2 run facediff_ros landmarks

Subscribes (names relative to the node's namespace, as published by the capture node or
realsense2_camera with ``align_depth.enable:=true``)::

    <camera_namespace>/<camera_name>/color/image_raw                    rgb8 / bgr8 / rgba8 / bgra8 / mono8
    <camera_namespace>/<camera_name>/color/camera_info
    <camera_namespace>/<camera_name>/aligned_depth_to_color/image_raw   16UC1 mm or 32FC1 m
    <camera_namespace>/<camera_name>/aligned_depth_to_color/camera_info

Colour, depth and colour CameraInfo are paired by stamp (:mod:`facediff_ros.core.sync`); the
depth CameraInfo only has its size checked against the depth image (aligned depth shares the
colour geometry, and lifting uses the colour CameraInfo's K). ``use_depth:=false`` (a webcam,
colour only): only colour and colour CameraInfo are subscribed and paired, and every published
landmark has its ``u``/``v`` with ``points`` NaN and ``valid`` false (no lifting).
The callbacks only pair; a worker thread processes the newest set
(:mod:`facediff_ros.nodes.latest_worker`): a set still waiting when a newer one is paired is
dropped and counted ``drop_stale``, so on a machine too slow for every frame the landmarks are of
the newest frame, not of a queue (MediaPipe tracks across the skipped frames).
Each set goes through the landmark pipeline (:mod:`facediff_ros.core.landmarks.pipeline`: decode
and validate, face mesh, lifting); this node only pairs, converts messages
(:mod:`facediff_ros.adapters`), counts and publishes.
Publishes ``face/landmarks`` (facediff_ros/FaceLandmarks, header copied from the colour image),
optionally ``face/landmarks/debug_image`` (rgb8, landmarks drawn: green with valid depth, red
without), and ``/diagnostics``. A frame without a face publishes nothing and is counted; bad
input (unsupported encoding, step/size mismatch, an image over the size limits, an implausible
CameraInfo K, colour/depth/CameraInfo sizes that disagree, depth without a single valid pixel or
without one in the lifting range, no CameraInfo) is logged once per 5 s per kind, counted as a
drop by reason (``drop_<reason>``, see ``pipeline.DROP_REASONS``), and never raises. Messages
discarded by the synchroniser are counted as ``sync_<reason>_<stream>``, a sync parameter
change included (``sync_reset_<stream>``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from facediff_ros.adapters import landmarks as landmarks_adapter
from facediff_ros.adapters import topics
from facediff_ros.adapters.images import camera_info_fields, image_fields, to_image_msg
from facediff_ros.core.landmarks.face_mesh import SELECTION_RULES, FaceMeshConfig
from facediff_ros.core.landmarks.lifting import LiftingConfig
from facediff_ros.core.landmarks.pipeline import (FrameDropped, FrameResult, LandmarkPipeline, Landmarks,
                                                  PipelineConfig)
from facediff_ros.core.sync import StampSynchronizer, SyncConfig
from facediff_ros.msg import FaceLandmarks
from facediff_ros.nodes import diagnostics as diag
from facediff_ros.nodes.latest_worker import LatestWorker
from facediff_ros.nodes.parameters import QOS_CHOICES, QOS_HELP, NodeParameters, param, qos_profile
from facediff_ros.nodes.spin import run, stamp_ns

# Seconds without any CameraInfo after which colour frames are dropped as "no_camera_info"
# rather than queued (a driver publishes CameraInfo with every frame).
_INFO_MISSING_S = 1.0
_SYNC_KEYS = ("color", "depth", "info")


@dataclass(frozen=True)
class LandmarksParams:
    """The landmark node's ROS parameters (defaults of the core options come from the core configs)."""

    camera_namespace: str = field(default="camera", metadata=param(
        "first part of the input topic names (as the capture node's / realsense2_camera's)", read_only=True))
    camera_name: str = field(default="camera", metadata=param(
        "second part of the input topic names", read_only=True))
    use_depth: bool = field(default=True, metadata=param(
        "subscribe the aligned depth (and its camera_info) and lift the landmarks to 3D; false: colour + "
        "colour camera_info only (a webcam), every landmark published with points NaN and valid false",
        read_only=True))
    input_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of the four input subscriptions: " + QOS_HELP + " (SENSOR_DATA also receives from "
        "reliable publishers)", choices=QOS_CHOICES, read_only=True))
    output_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of face/landmarks and the debug image: " + QOS_HELP, choices=QOS_CHOICES, read_only=True))
    max_num_faces: int = field(default=FaceMeshConfig.max_num_faces, metadata=param(
        "faces MediaPipe tracks; with more than one, face_selection picks the one published",
        min=1, max=10, read_only=True))
    face_selection: str = field(default=PipelineConfig.face_selection, metadata=param(
        "which face to publish when several are found: 'largest' (landmark bounding-box area) or "
        "'closest' (smallest median depth at the landmarks; without depth: 'largest')",
        choices=SELECTION_RULES))
    min_detection_confidence: float = field(
        default=FaceMeshConfig.min_detection_confidence, metadata=param(
            "MediaPipe face detector score a new face needs", min=0.0, max=1.0, read_only=True))
    min_tracking_confidence: float = field(default=FaceMeshConfig.min_tracking_confidence, metadata=param(
        "MediaPipe landmark presence below which a tracked face is re-detected", min=0.0, max=1.0,
        read_only=True))
    lift_window_radius_px: int = field(default=LiftingConfig.window_radius_px, metadata=param(
        "depth window around each landmark is (2r+1)^2 pixels", min=0, max=10))
    lift_cluster_gap_m: float = field(default=LiftingConfig.cluster_gap_m, metadata=param(
        "depth jump (m) separating surfaces (face / background) inside a window", min=0.001, max=1.0))
    lift_min_cluster_samples: int = field(default=LiftingConfig.min_cluster_samples, metadata=param(
        "samples a surface needs inside the window to give a landmark its depth", min=1))
    sync_tolerance_s: float = field(default=SyncConfig.tolerance_s, metadata=param(
        "0: pair colour, depth and CameraInfo with equal stamps only; > 0: nearest stamps within it",
        min=0.0, max=1.0))
    sync_queue_size: int = field(default=SyncConfig.queue_size, metadata=param(
        "messages per input stream waiting for their partners", min=1, max=100))
    publish_debug_image: bool = field(default=False, metadata=param(
        "publish face/landmarks/debug_image (colour with the landmarks drawn)"))
    diagnostics_period_s: float = field(default=1.0, metadata=param(
        "period of /diagnostics messages", min=0.05, max=60.0, read_only=True))

    def __post_init__(self):
        self.lifting()  # raises ValueError for inconsistent lifting values
        topics.camera_topics(self.camera_namespace, self.camera_name)  # raises ValueError with the reason

    def lifting(self) -> LiftingConfig:
        k = self.lift_min_cluster_samples
        return LiftingConfig(window_radius_px=self.lift_window_radius_px,
                             cluster_gap_m=self.lift_cluster_gap_m, min_cluster_samples=k,
                             max_speckle_samples=min(LiftingConfig.max_speckle_samples, k - 1))

    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(
            face_mesh=FaceMeshConfig(max_num_faces=self.max_num_faces,
                                     min_detection_confidence=self.min_detection_confidence,
                                     min_tracking_confidence=self.min_tracking_confidence),
            lifting=self.lifting(), face_selection=self.face_selection)

    def sync(self) -> SyncConfig:
        return SyncConfig(self.sync_tolerance_s, self.sync_queue_size)


def landmarks_from_messages(pipeline: LandmarkPipeline, color_msg: Image, depth_msg: Optional[Image],
                            info_msg: CameraInfo, depth_info_size: Optional[Tuple[int, int]] = None
                            ) -> Tuple[FrameResult, Optional[bytes]]:
    """The landmark node's per-frame work up to ``publish`` (the benchmark times this function).

    ``depth_msg`` None: colour only (landmarks without 3D points).

    :returns: the pipeline's result and the serialized FaceLandmarks to publish (None: no face),
        with the colour image's header; ``result.timings_s`` gains ``message`` (seconds to build
        it). Serialized, because ``publish(bytes)`` skips rclpy's per-Point conversion
        (:mod:`facediff_ros.adapters.landmarks`).
    :raises FrameDropped: unusable input, with the reason.
    """
    depth = None if depth_msg is None else image_fields(depth_msg)
    res = pipeline.process(image_fields(color_msg), depth, camera_info_fields(info_msg), depth_info_size)
    if res.landmarks is None:
        return res, None
    t0 = time.perf_counter()
    payload = landmarks_adapter.serialize(res.landmarks, color_msg.header)
    res.timings_s["message"] = time.perf_counter() - t0
    return res, payload


class LandmarksNode(Node):
    """Pairs colour/depth/CameraInfo, runs the landmark pipeline on each set, publishes the face."""

    def __init__(self, node_name: str = "landmarks", **kwargs):
        self._worker = None  # destroy_node copes with a constructor that raised
        super().__init__(node_name, **kwargs)
        self.params = NodeParameters(self, LandmarksParams, on_change=self._on_params_changed,
                                     check=self._check_topics)
        p = self.params.config
        self.counters = diag.Counters()
        self.rate_in = diag.RateMeter()
        self.rate_out = diag.RateMeter()
        self.rate_no_face = diag.RateMeter()
        self.times = diag.StageTimes()
        self.log_limited = diag.RateLimitedLog(self.get_logger())
        self.drops = diag.FrameDrops(self.counters, self.log_limited, "landmarks")
        self.pipeline = LandmarkPipeline(p.pipeline())
        self._keys = _SYNC_KEYS if p.use_depth else ("color", "info")
        self.sync = StampSynchronizer(self._keys, p.sync())
        self._last_info_time: Optional[float] = None
        self._first_color_time: Optional[float] = None
        self._depth_info: Optional[CameraInfo] = None

        cam = topics.camera_topics(p.camera_namespace, p.camera_name)
        qin = qos_profile(p.input_qos)
        self.create_subscription(Image, cam.color, self.on_color, qin)
        self.create_subscription(CameraInfo, cam.color_info, self.on_info, qin)
        if p.use_depth:
            self.create_subscription(Image, cam.depth, self.on_depth, qin)
            self.create_subscription(CameraInfo, cam.depth_info, self.on_depth_info, qin)
        qout = qos_profile(p.output_qos)
        self.pub = self.create_publisher(FaceLandmarks, topics.FACE_LANDMARKS, qout)
        self.debug_pub = self.create_publisher(Image, topics.FACE_LANDMARKS_DEBUG, qout)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.create_timer(p.diagnostics_period_s, self.publish_diagnostics)
        self._worker = LatestWorker("landmarks_worker", lambda m: self.process(m["color"], m.get("depth"),
                                                                               m["info"]),
                                    self._on_stale, self._on_worker_error, self.context.ok)

    def _check_topics(self, p: LandmarksParams) -> None:
        """Reject names whose full topics would be invalid for this node (e.g. too long)."""
        topics.check_topics_for_node(topics.camera_topics(p.camera_namespace, p.camera_name).all(),
                                     self.get_name(), self.get_namespace())

    def _on_params_changed(self, old: LandmarksParams, new: LandmarksParams) -> None:
        self.pipeline.reconfigure(lifting=new.lifting(), face_selection=new.face_selection)
        if old.sync() != new.sync():
            # Queued messages were waiting under the old rules: dropped, counted as sync_reset_<key>.
            self.sync.reconfigure(new.sync())

    # ---- callbacks -----------------------------------------------------------------------------
    def on_color(self, msg: Image) -> None:
        self.rate_in.tick()
        self.counters.add("frames_in")
        now = time.monotonic()
        if self._first_color_time is None:
            self._first_color_time = now
        # CameraInfo normally arrives with every frame; colour keeps waiting for it in the
        # synchroniser for a moment (start-up order), then is dropped as "no_camera_info".
        since = self._last_info_time if self._last_info_time is not None else self._first_color_time
        info_age = now - since
        if info_age > _INFO_MISSING_S:
            self.drops.add("no_camera_info", f"no CameraInfo on the colour camera_info topic for "
                           f"{info_age:.1f} s; is the driver publishing it?")
            return
        self._add("color", msg)

    def on_depth(self, msg: Image) -> None:
        self._add("depth", msg)

    def on_info(self, msg: CameraInfo) -> None:
        self._last_info_time = time.monotonic()
        self._add("info", msg)

    def on_depth_info(self, msg: CameraInfo) -> None:
        self._depth_info = msg

    def _add(self, key: str, msg) -> None:
        try:
            matched = self.sync.add(key, stamp_ns(msg), msg)
        except Exception as exc:  # noqa: BLE001 - a malformed header must not kill the node
            self.drops.add("bad_header", f"{key}: {exc}")
            return
        for m in matched:
            self._worker.submit(m)

    def _on_stale(self, matched) -> None:
        self.drops.add("stale", "the landmark pipeline was still busy; a newer frame replaced this one")

    def _on_worker_error(self, exc: Exception) -> None:
        self.drops.add("internal_error", f"{type(exc).__name__}: {exc}")

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no set waits and none is being processed, or ``timeout`` s passed (tests, benches)."""
        return self._worker.wait_idle(timeout)

    # ---- one frame -----------------------------------------------------------------------------
    def process(self, color_msg: Image, depth_msg: Optional[Image], info_msg: CameraInfo
                ) -> Optional[Landmarks]:
        """Landmarks of one frame set, published and returned as arrays (None: dropped or no face);
        ``depth_msg`` None: colour only."""
        try:
            return self._process(color_msg, depth_msg, info_msg)
        except FrameDropped as exc:
            self.drops.add(exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - never let one frame take the node down
            if not self.context.ok():
                return None  # Ctrl-C invalidated the context under this frame: not the frame's fault
            self.drops.add("internal_error", f"{type(exc).__name__}: {exc}")
        return None

    def _process(self, color_msg, depth_msg, info_msg):
        t0 = time.perf_counter()
        di = self._depth_info if depth_msg is not None else None
        res, payload = landmarks_from_messages(self.pipeline, color_msg, depth_msg, info_msg,
                                               None if di is None else (di.width, di.height))
        if payload is not None:
            t1 = time.perf_counter()
            self.pub.publish(payload)
            res.timings_s["publish"] = time.perf_counter() - t1
        for stage, seconds in res.timings_s.items():
            self.times.add(stage, seconds)
        lm = res.landmarks
        if lm is None:
            self.counters.add("no_face")
            self.rate_no_face.tick()
            return None
        self.times.add("total", time.perf_counter() - t0)
        self.counters.add("faces_out")
        self.counters.add("landmarks_valid", int(lm.valid.sum()))
        self.rate_out.tick()
        if self.params.config.publish_debug_image:
            debug = draw_landmarks(res.rgb, lm.uv, lm.valid)
            self.debug_pub.publish(to_image_msg(debug, "rgb8", color_msg.header))
        return lm

    # ---- diagnostics ---------------------------------------------------------------------------
    def diagnostic_status(self):
        """OK: faces are being published; WARN: input arrives but no face / all dropped, or no
        input at all; ERROR: input arrives and every frame is dropped as bad input."""
        c = self.counters.snapshot()
        rin, rout = self.rate_in.rate(), self.rate_out.rate()
        if rout > 0:
            level, msg = diag.OK, f"{rout:.1f} faces/s from {rin:.1f} frames/s"
        elif rin == 0:
            level, msg = diag.WARN, "no colour images received in the last 2 s"
        elif self.drops.rate.rate() > 0 and self.rate_no_face.rate() == 0:
            level = diag.ERROR
            msg = f"input arrives ({rin:.1f} Hz) but every frame is dropped; last: {self.drops.last}"
        elif self.rate_no_face.rate() > 0:
            level, msg = diag.WARN, f"input arrives ({rin:.1f} Hz) but no face is found"
        else:
            # Neither faces nor misses yet: the first frames are still being processed (MediaPipe
            # starts in ~1 s) or wait for their depth/CameraInfo partners.
            level, msg = diag.WARN, f"input arrives ({rin:.1f} Hz); no result yet"
        values = {"rate_in_hz": rin, "rate_out_hz": rout, "use_depth": self.params.config.use_depth}
        values.update(c)
        values.update({f"sync_{k}": v for k, v in self.sync.dropped.items()})
        values.update({f"{k}_ms": v for k, v in self.times.items()})
        return diag.status(f"{self.get_name()}: landmarks", "mediapipe-face-mesh-0.10.21", level, msg, values)

    def publish_diagnostics(self) -> None:
        self._diag_pub.publish(diag.array(self.get_clock().now().to_msg(), [self.diagnostic_status()]))

    def destroy_node(self):
        # Also called on a node whose constructor raised (rclpy.shutdown destroys every node
        # the context tracks): the pipeline may not exist yet. The worker first: it uses the
        # pipeline and the publishers.
        if getattr(self, "_worker", None) is not None:
            self._worker.stop()
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.close()
        return super().destroy_node()


def draw_landmarks(rgb: np.ndarray, uv: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A copy of ``rgb`` with each landmark as a dot: green with valid depth, red without."""
    import cv2
    out = np.ascontiguousarray(rgb).copy()
    for (u, v), ok in zip(np.rint(uv).astype(int).tolist(), valid.tolist()):
        cv2.circle(out, (u, v), 1, (0, 255, 0) if ok else (255, 0, 0), -1)
    return out


def main(args=None):
    run(LandmarksNode, args)


if __name__ == "__main__":
    main()
