"""capture node: RGB-D frames from a RealSense, a recording or the synthetic actor (or colour-only
frames from a webcam or video file) -> ROS images.

    ros2 run facediff_ros capture [--ros-args -p source:=realsense -p serial_number:=...]
    ros2 run facediff_ros capture --ros-args -p source:=webcam -p video_device:=0 \
        [-p video_calibration:=ost.yaml | -p video_hfov_deg:=60.0]

Publishes like realsense2_camera 4.x (topic names relative to the node's namespace):

    <camera_namespace>/<camera_name>/color/image_raw                      rgb8
    <camera_namespace>/<camera_name>/color/camera_info
    <camera_namespace>/<camera_name>/aligned_depth_to_color/image_raw     16UC1 mm (or 32FC1 m)
    <camera_namespace>/<camera_name>/aligned_depth_to_color/camera_info
    /diagnostics                                                          diagnostic_msgs/DiagnosticArray

All four carry the same stamp and the frame id ``<camera_name>_color_optical_frame`` (the
aligned depth is in the colour camera's geometry, as in realsense-ros). ``source:=webcam``
(:mod:`facediff_ros.core.capture.webcam`: a device index, a /dev/videoN path or a video file)
has no depth: colour and colour camera_info only, the depth topics are not advertised; its
CameraInfo K comes from ``video_calibration`` (a camera_info YAML; distorted frames are
rectified) or the default ``video_hfov_deg``; which one is logged and reported in
``/diagnostics`` (``intrinsics``). Frames are read on a
thread of their own; a failing source (camera unplugged, USB error, missing file) is logged
(rate-limited), counted and re-opened with exponential back-off while the node stays up; a
recording that ends without ``loop`` leaves the node up in state ``ended``. Opening a source runs
on a thread of its own under a ``timeout_s`` deadline: the state is ``opening`` meanwhile, and an
open that overruns is reported ``stalled`` (counted ``error_open_timeout``), abandoned (closed
when it returns) and retried. A parameter change re-opens the source only when the parameter
applies to the current kind of source (:func:`source_fields`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from facediff_ros.adapters import topics
from facediff_ros.adapters.camera_frames import device_stamp, frame_messages
from facediff_ros.core.capture import sources
from facediff_ros.core.capture.frames import DEPTH_ENCODINGS
from facediff_ros.core.capture.webcam import DEFAULT_HFOV_DEG, WebcamConfig, WebcamSource
from facediff_ros.nodes import diagnostics as diag
from facediff_ros.nodes.parameters import QOS_CHOICES, QOS_HELP, NodeParameters, param, qos_profile
from facediff_ros.nodes.spin import run

# The embedded sample recording (synthetic actor with ground truth beside it).
SAMPLE_RECORDING = Path(__file__).resolve().parents[1] / "data" / "sample.db3"
SOURCES = ("recording", "realsense", "synthetic", "webcam")
STATES = ("starting", "opening", "streaming", "stalled", "retrying", "ended")
# Opens abandoned after their deadline that may still be running; no new open starts while this
# many are (a source whose open blocks for ever must not pile up threads).
MAX_STUCK_OPENS = 2


@dataclass(frozen=True)
class CaptureParams:
    """The capture node's ROS parameters (one declaration feeds node, launch and README)."""

    source: str = field(default="recording", metadata=param(
        "frame source: 'recording' (a RealSense .db3/.bag, default the embedded sample), "
        "'realsense' (a live camera), 'synthetic' (the synthetic actor rendered live), 'webcam' (colour "
        "only: an OpenCV webcam or video file, see video_device)", choices=SOURCES))
    recording_path: str = field(default="", metadata=param(
        "recording to play (.db3 or .bag); empty: the embedded sample facediff_ros/data/sample.db3 "
        "(the synthetic actor is used, with a warning, when the sample is not installed)"))
    loop: bool = field(default=True, metadata=param(
        "recording/synthetic/webcam video file: start again at the end"))
    realtime: bool = field(default=True, metadata=param(
        "recording/synthetic/webcam video file: play at the recorded frame rate; false: as fast as "
        "frames can be read"))
    serial_number: str = field(default="", metadata=param(
        "realsense: serial number of the camera to open; empty: the first one found"))
    color_width: int = field(default=640, metadata=param("realsense: colour width (px)", min=1))
    color_height: int = field(default=480, metadata=param("realsense: colour height (px)", min=1))
    color_fps: int = field(default=30, metadata=param("realsense: colour frame rate (Hz)", min=1))
    depth_width: int = field(default=640, metadata=param("realsense: depth width (px)", min=1))
    depth_height: int = field(default=480, metadata=param("realsense: depth height (px)", min=1))
    depth_fps: int = field(default=30, metadata=param("realsense: depth frame rate (Hz)", min=1))
    video_device: str = field(default="0", metadata=param(
        "webcam: a device index ('0' = /dev/video0), a device path (/dev/videoN) or a video file"))
    video_calibration: str = field(default="", metadata=param(
        "webcam: camera_info YAML (as ROS camera_calibration writes it) giving K and distortion (frames "
        "are rectified); empty: the default field of view video_hfov_deg"))
    video_hfov_deg: float = field(default=DEFAULT_HFOV_DEG, metadata=param(
        "webcam: horizontal field of view (deg) used when video_calibration is empty (square pixels, "
        "principal point at the centre)", min=1.0, max=170.0))
    synthetic_frames: int = field(default=300, metadata=param(
        "synthetic: frames in the generated sequence before it loops or ends", min=1))
    synthetic_seed: int = field(default=0, metadata=param(
        "synthetic: seed of the actor (identity, texture, motion, expressions)", min=0))
    timeout_s: float = field(default=5.0, metadata=param(
        "seconds without a frame before the source is reported failed and re-opened", min=0.1, max=60.0))
    camera_namespace: str = field(default="camera", metadata=param(
        "first part of the topic names, as realsense2_camera's camera_namespace"))
    camera_name: str = field(default="camera", metadata=param(
        "second part of the topic names and the frame id prefix (<camera_name>_color_optical_frame)"))
    depth_encoding: str = field(default="16UC1", metadata=param(
        "aligned depth encoding: 16UC1 (uint16 millimetres, 0 = no data) or 32FC1 (float metres, "
        "NaN = no data)",
        choices=DEPTH_ENCODINGS))
    stamp_source: str = field(default="ros", metadata=param(
        "header stamps: 'ros' (node clock when the frame is read) or 'device' (the camera's or "
        "recording's own frame timestamp)", choices=("ros", "device")))
    color_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of the colour image: " + QOS_HELP, choices=QOS_CHOICES))
    depth_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of the aligned depth image: " + QOS_HELP, choices=QOS_CHOICES))
    info_qos: str = field(default="SENSOR_DATA", metadata=param(
        "QoS of both camera_info topics: " + QOS_HELP, choices=QOS_CHOICES))
    retry_initial_s: float = field(default=0.5, metadata=param(
        "first wait before re-opening a failed source; doubles after each failure", min=0.01, max=60.0))
    retry_max_s: float = field(default=8.0, metadata=param(
        "longest wait between attempts to re-open a failed source", min=0.01, max=600.0))
    diagnostics_period_s: float = field(default=1.0, metadata=param(
        "period of /diagnostics messages", min=0.05, max=60.0))

    def __post_init__(self):
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(f"retry_max_s ({self.retry_max_s}) must be >= retry_initial_s "
                             f"({self.retry_initial_s})")
        topics.camera_topics(self.camera_namespace, self.camera_name)  # raises ValueError with the reason
        if self.source == "webcam":
            WebcamConfig(device=self.video_device, hfov_deg=self.video_hfov_deg)  # ValueError: the reason


# The parameters each kind of source is built from: changing one of these re-opens the source;
# the others apply to the next frame (or, for another kind of source, to nothing).
_SOURCE_FIELDS = {
    "realsense": ("serial_number", "color_width", "color_height", "color_fps", "depth_width",
                  "depth_height", "depth_fps", "timeout_s"),
    "recording": ("recording_path", "loop", "realtime", "timeout_s"),
    "synthetic": ("synthetic_frames", "synthetic_seed", "loop", "realtime"),
    "webcam": ("video_device", "video_calibration", "video_hfov_deg", "loop", "realtime"),
}
# Colour-only kinds of source: no depth topics.
_COLOUR_ONLY = ("webcam",)
_PUBLISHER_FIELDS = ("camera_namespace", "camera_name", "color_qos", "depth_qos", "info_qos")


def source_kind(p: CaptureParams) -> str:
    """The kind of source :func:`make_source` builds for ``p`` (the default recording falls back
    to 'synthetic' when the embedded sample is not installed)."""
    if p.source == "recording" and not p.recording_path and not SAMPLE_RECORDING.is_file():
        return "synthetic"
    return p.source


def source_fields(p: CaptureParams):
    """The parameters whose change re-opens the source ``p`` describes ('source' included)."""
    return ("source",) + _SOURCE_FIELDS[source_kind(p)]


def has_depth(p: CaptureParams) -> bool:
    """True when the source ``p`` describes delivers aligned depth (not a webcam)."""
    return source_kind(p) not in _COLOUR_ONLY


def needs_reopen(old: CaptureParams, new: CaptureParams) -> bool:
    """True when going from ``old`` to ``new`` changes what the current source is built from."""
    if source_kind(old) != source_kind(new):
        return True
    return any(getattr(old, k) != getattr(new, k) for k in source_fields(new))


def make_source(p: CaptureParams):
    """The frame source ``p`` asks for, and a note when the default sample had to be replaced."""
    if p.source == "realsense":
        return sources.RealSenseSource(sources.RealSenseConfig(
            serial_number=p.serial_number, color_width=p.color_width, color_height=p.color_height,
            color_fps=p.color_fps, depth_width=p.depth_width, depth_height=p.depth_height,
            depth_fps=p.depth_fps, timeout_ms=int(p.timeout_s * 1000))), ""
    if p.source == "webcam":
        return WebcamSource(WebcamConfig(device=p.video_device, calibration=p.video_calibration,
                                         hfov_deg=p.video_hfov_deg, loop=p.loop, realtime=p.realtime)), ""
    if p.source == "recording":
        path = p.recording_path or str(SAMPLE_RECORDING)
        if p.recording_path or SAMPLE_RECORDING.is_file():
            return sources.RecordingSource(sources.RecordingConfig(
                path=path, loop=p.loop, realtime=p.realtime, timeout_ms=int(p.timeout_s * 1000))), ""
        note = (f"the embedded sample recording {SAMPLE_RECORDING} is not installed: using the "
                f"synthetic actor instead")
    else:
        note = ""
    from facediff_ros.synthetic import actor_source  # imported here: it loads the renderer
    from facediff_ros.synthetic.actor import ActorConfig
    actor = ActorConfig(num_frames=p.synthetic_frames, seed=p.synthetic_seed)
    return actor_source.SyntheticSource(actor, loop=p.loop, realtime=p.realtime), note


class CaptureNode(Node):
    """Reads RGB-D frames on a thread and publishes them as realsense2_camera does."""

    def __init__(self, node_name: str = "capture", **kwargs):
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        self._reopen = threading.Event()
        self._stop = threading.Event()
        self._open_lock = threading.Lock()
        self._stuck_opens = 0  # abandoned opens still running (see _open)
        self._open_started = 0.0  # monotonic time the current open began
        self.params = NodeParameters(self, CaptureParams, on_change=self._on_params_changed,
                                     check=self._check_topics)
        self.counters = diag.Counters()
        self.rate = diag.RateMeter()
        self.times = diag.StageTimes()
        self.log_limited = diag.RateLimitedLog(self.get_logger())
        self.state = "starting"
        self.last_error = ""
        self.source_note = ""
        self.source_description = ""
        self.intrinsics_note = ""  # where a webcam's K came from (calibration file or default FOV)
        self._make_publishers(self.params.config)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self._diag_timer = self.create_timer(self.params.config.diagnostics_period_s,
                                             self.publish_diagnostics)
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    # ---- wiring -------------------------------------------------------------------------------
    def _check_topics(self, p: CaptureParams) -> None:
        """Reject names whose full topics would be invalid for this node (e.g. too long)."""
        topics.check_topics_for_node(topics.camera_topics(p.camera_namespace, p.camera_name).all(),
                                     self.get_name(), self.get_namespace())

    def _make_publishers(self, p: CaptureParams) -> None:
        t = topics.camera_topics(p.camera_namespace, p.camera_name)
        # The new publishers exist before the old ones go: a failure leaves the old set working.
        pubs = {
            "color": self.create_publisher(Image, t.color, qos_profile(p.color_qos)),
            "color_info": self.create_publisher(CameraInfo, t.color_info, qos_profile(p.info_qos)),
        }
        if has_depth(p):  # a colour-only source (webcam) advertises no depth topics
            pubs["depth"] = self.create_publisher(Image, t.depth, qos_profile(p.depth_qos))
            pubs["depth_info"] = self.create_publisher(CameraInfo, t.depth_info, qos_profile(p.info_qos))
        with self._lock:
            old, self._pubs = getattr(self, "_pubs", {}), pubs
            self.frame_id = t.frame_id
        for pub in old.values():
            self.destroy_publisher(pub)

    def _on_params_changed(self, old: CaptureParams, new: CaptureParams) -> None:
        if any(getattr(old, k) != getattr(new, k) for k in _PUBLISHER_FIELDS) \
                or has_depth(old) != has_depth(new):
            self._make_publishers(new)
        if needs_reopen(old, new):
            self._reopen.set()
        if old.diagnostics_period_s != new.diagnostics_period_s:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(new.diagnostics_period_s, self.publish_diagnostics)

    # ---- frame loop (own thread) ---------------------------------------------------------------
    def _fail(self, reason: str, message: str) -> None:
        self.counters.add(f"error_{reason}")
        self.last_error = message
        self.log_limited(reason, f"capture: {message}", "error" if reason != "ended" else "warning")

    def _open(self, source, timeout_s: float) -> bool:
        """Open ``source`` on a thread of its own; True once it opened within ``timeout_s``.

        State ``opening`` meanwhile. An open still running at the deadline (or at shutdown) is
        abandoned and False returned: its thread closes the source when open() returns, since
        nobody will read it, and counts as stuck until then.

        :raises Exception: what ``open()`` raised within the deadline.
        """
        done = threading.Event()
        outcome = {}  # "error": what open raised (None: opened); "abandoned": the caller gave up

        def target():
            error = None
            try:
                source.open()
            except BaseException as exc:  # noqa: BLE001 - handed over to the reader thread
                error = exc
            with self._open_lock:
                outcome["error"] = error
                abandoned = outcome.get("abandoned", False)
                if abandoned:
                    self._stuck_opens -= 1
            done.set()
            if abandoned and error is None:
                try:
                    source.close()
                except Exception:  # noqa: BLE001 - a source nobody reads; nothing else to do
                    pass

        self.state = "opening"
        self._open_started = time.monotonic()
        threading.Thread(target=target, name="capture-open", daemon=True).start()
        deadline = self._open_started + timeout_s
        # Short slices: shutdown must not wait for a blocked open.
        while not done.wait(min(0.05, max(deadline - time.monotonic(), 0.0))):
            if time.monotonic() >= deadline or self._stop.is_set():
                with self._open_lock:
                    if "error" not in outcome:
                        outcome["abandoned"] = True
                        self._stuck_opens += 1
                        return False
                break  # it finished meanwhile
        if outcome["error"] is not None:
            raise outcome["error"]
        return True

    def _run(self) -> None:
        source = None
        backoff = self.params.config.retry_initial_s
        while not self._stop.is_set():
            p = self.params.config
            if self._reopen.is_set():
                self._reopen.clear()
                if source is not None:
                    source.close()
                source, backoff = None, p.retry_initial_s
            if source is None:
                with self._open_lock:
                    stuck = self._stuck_opens
                if stuck >= MAX_STUCK_OPENS:
                    # Earlier opens are still blocked: another one would only add a thread.
                    self.counters.add("open_skipped_stuck")
                    self.state = "stalled"
                    self._reopen.wait(backoff)
                    backoff = min(2 * backoff, p.retry_max_s)
                    continue
                try:
                    source, note = make_source(p)
                    self.source_note = note
                    if note:
                        self.log_limited("source_note", f"capture: {note}")
                    self.source_description = getattr(source, "describe", lambda: type(source).__name__)()
                    opened = self._open(source, p.timeout_s)
                except Exception as exc:  # noqa: BLE001 - librealsense raises plain RuntimeErrors too
                    reason = exc.reason if isinstance(exc, sources.SourceError) else "internal"
                    self._fail(reason, f"{exc}" if reason != "internal"
                               else f"unexpected {type(exc).__name__} opening the source: {exc}")
                    source = None
                    self.state = "retrying"
                    self._reopen.wait(backoff)
                    backoff = min(2 * backoff, p.retry_max_s)
                    continue
                if not opened:
                    source = None
                    if self._stop.is_set():
                        break
                    self._fail("open_timeout", f"opening {self.source_description} did not finish within "
                                               f"{p.timeout_s:.1f} s: abandoned, retrying in {backoff:.1f} s")
                    self.state = "stalled"
                    self._reopen.wait(backoff)
                    backoff = min(2 * backoff, p.retry_max_s)
                    continue
                # Described again now that it is open (a webcam knows its size and intrinsics then).
                self.source_description = getattr(source, "describe", lambda: type(source).__name__)()
                self.intrinsics_note = getattr(source, "intrinsics_note", "")
                self.get_logger().info(f"capture: streaming from {self.source_description}")
                self.state = "streaming"
            try:
                t0 = time.perf_counter()
                frame = source.read()
                t1 = time.perf_counter()
            except sources.SourceEnded as exc:
                self._fail("ended", str(exc))
                self.state = "ended"
                source.close()
                self._reopen.wait()  # until a parameter change asks for a new source (or shutdown)
                continue
            except sources.SourceError as exc:
                self._fail(exc.reason, f"{exc}; re-opening in {backoff:.1f} s")
            except Exception as exc:  # noqa: BLE001 - librealsense raises plain RuntimeErrors too
                self._fail("internal", f"unexpected {type(exc).__name__}: {exc}; "
                                       f"re-opening in {backoff:.1f} s")
            else:
                self.times.add("read", t1 - t0)
                try:
                    self.publish_frame(frame)
                    backoff = p.retry_initial_s
                except (ValueError, TypeError) as exc:
                    self.counters.add("drop_bad_frame")
                    self.log_limited("bad_frame", f"capture: dropped a frame: {exc}")
                except Exception:  # noqa: BLE001 - the context was shut down under us (Ctrl-C)
                    if self._stop.is_set() or not self.context.ok():
                        break
                    raise
                continue
            source.close()
            source = None
            self.state = "retrying"
            self._reopen.wait(backoff)
            backoff = min(2 * backoff, p.retry_max_s)
        if source is not None:
            source.close()

    def publish_frame(self, frame: sources.CapturedFrame) -> None:
        """Publish one frame on the four image topics (colour-only frames: the two colour ones) with one
        stamp and frame id.

        :raises ValueError: a frame whose sizes disagree or whose device stamp is unusable.
        """
        p = self.params.config
        t0 = time.perf_counter()
        stamp = device_stamp(frame) if p.stamp_source == "device" else self.get_clock().now().to_msg()
        # Under the lock from the frame id to the last publish: a camera_name change between them
        # would put the old frame id on the new topics.
        with self._lock:
            msgs = frame_messages(frame, stamp, self.frame_id, p.depth_encoding)
            t1 = time.perf_counter()
            self._pubs["color"].publish(msgs.color)
            # The depth publishers and the frame's depth differ only for a frame read just before
            # the source changed between a depth camera and a webcam: its depth is left out.
            if msgs.depth is not None and "depth" in self._pubs:
                self._pubs["depth"].publish(msgs.depth)
            self._pubs["color_info"].publish(msgs.info)
            if msgs.depth is not None and "depth_info" in self._pubs:
                self._pubs["depth_info"].publish(msgs.info)
        self.times.add("build", t1 - t0)
        self.times.add("publish", time.perf_counter() - t1)
        self.counters.add("frames")
        self.rate.tick()

    # ---- diagnostics ---------------------------------------------------------------------------
    def diagnostic_status(self):
        """Level and message from the state: streaming (OK, or WARN with no frame lately),
        opening (WARN), stalled (ERROR: an open overran timeout_s), retrying (ERROR), ended
        (WARN), starting (WARN)."""
        rate = self.rate.rate()
        if self.state == "streaming":
            level, msg = (diag.OK, f"streaming at {rate:.1f} Hz") if rate > 0 else \
                (diag.WARN, "streaming, but no frame in the last 2 s")
        elif self.state == "opening":
            elapsed = time.monotonic() - self._open_started
            level, msg = diag.WARN, f"opening the source ({elapsed:.1f} s so far)"
        elif self.state == "stalled":
            level, msg = diag.ERROR, f"opening the source stalled: {self.last_error}"
        elif self.state == "retrying":
            level, msg = diag.ERROR, f"source failed, retrying: {self.last_error}"
        elif self.state == "ended":
            level, msg = diag.WARN, "recording ended (loop is off)"
        else:
            level, msg = diag.WARN, "starting"
        values = {"state": self.state, "source": self.source_description, "rate_hz": rate,
                  "opens_stuck": self._stuck_opens}
        if self.source_note:
            values["note"] = self.source_note
        if self.intrinsics_note:
            values["intrinsics"] = self.intrinsics_note
        values.update(self.counters.snapshot())
        values.update({f"{k}_ms": v for k, v in self.times.items()})
        return diag.status(f"{self.get_name()}: capture", self.source_description or "none", level, msg,
                           values)

    def publish_diagnostics(self) -> None:
        self._diag_pub.publish(diag.array(self.get_clock().now().to_msg(), [self.diagnostic_status()]))

    def destroy_node(self):
        # Also called on a node whose constructor raised (rclpy.shutdown destroys every node the
        # context tracks): stop only what was started.
        thread = getattr(self, "_thread", None)
        if thread is not None:
            self._stop.set()
            self._reopen.set()
            # A read blocks at most timeout_s (then the loop sees _stop), an open is abandoned
            # within 0.05 s: wait a little longer than a read.
            thread.join(timeout=self.params.config.timeout_s + 2.0)
        return super().destroy_node()


def main(args=None):
    run(CaptureNode, args)


if __name__ == "__main__":
    main()
