"""RGB-D frame sources for the capture node: a live RealSense, a RealSense recording, the synthetic actor.

(The colour-only webcam / video-file source is :mod:`facediff_ros.core.capture.webcam`.)

All sources share one interface -- ``open()``, ``read() -> CapturedFrame``, ``close()`` -- and
deliver the same thing: an RGB colour image and a depth image **aligned to the colour camera**
(same size, same intrinsics), depth in uint16 millimetres (0 = no measurement).

The live camera and recordings go through the same pyrealsense2 pipeline code
(:class:`_PipelineSource`): a recording (.db3 rosbag2 as written by pyrealsense2's recorder, or
a legacy .bag) is opened with ``rs.config.enable_device_from_file`` and then read, aligned
(``rs.align(rs.stream.color)``) and converted exactly like camera frames; the depth units come
from the device (``get_depth_scale()``) and are converted to millimetres. Alignment is skipped
when the depth stream is already registered to colour (equal intrinsics, no distortion,
identity extrinsics -- the synthetic actor's recordings): ``rs.align`` would then only add its
resampling artefacts (it splats each depth pixel onto a 2x2 block and leaves scattered holes).

Failures raise a :class:`SourceError` subclass the node handles (log, count, retry with
back-off): :class:`SourceUnavailable` (no camera, file missing or unreadable, USB error at
start), :class:`SourceTimeout` (no frame in time: camera unplugged, USB trouble) and
:class:`SourceEnded` (a recording played to its end without ``loop``).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from facediff_ros.core import images
from facediff_ros.core.camera import Intrinsics


class SourceError(RuntimeError):
    """A frame source failed; ``reason`` is a short key for diagnostics counters."""

    reason = "error"


class SourceUnavailable(SourceError):
    """The source cannot be opened (no device, missing file, USB error at start)."""

    reason = "unavailable"


class SourceTimeout(SourceError):
    """No frame arrived in time (camera unplugged, USB error, stalled playback)."""

    reason = "timeout"


class SourceEnded(SourceError):
    """A recording reached its end and ``loop`` is off."""

    reason = "ended"


@dataclass
class CapturedFrame:
    """One RGB-D frame, depth aligned to colour; or a colour-only frame (``depth`` None: a webcam)."""

    color: np.ndarray        # (H, W, 3) uint8 RGB
    depth: Optional[np.ndarray]  # (H, W) uint16 millimetres, 0 = no measurement, colour geometry;
    #                              None: the source has no depth (core.capture.webcam)
    intrinsics: Intrinsics   # the colour camera's (and so the aligned depth's)
    depth_scale: float       # metres per unit of the device's raw depth (before conversion to mm);
    #                          0 for a colour-only frame
    stamp: float             # device / recording timestamp in seconds
    frame_number: int        # device / recording frame counter (-1 when unknown)


# Colour formats pyrealsense2 may deliver -> sensor_msgs encodings (core.images).
_RS_COLOR_ENCODINGS = {"rgb8": "rgb8", "bgr8": "bgr8", "rgba8": "rgba8", "bgra8": "bgra8", "y8": "mono8"}


@dataclass(frozen=True)
class RealSenseConfig:
    """A live Intel RealSense camera (realsense2_camera's profile parameters)."""

    serial_number: str = ""     # empty: the first camera found
    color_width: int = 640      # 640x480@30: every D400 supports it for colour and depth
    color_height: int = 480
    color_fps: int = 30
    depth_width: int = 640
    depth_height: int = 480
    depth_fps: int = 30
    timeout_ms: int = 5000      # a camera's first frames can take seconds after start


@dataclass(frozen=True)
class RecordingConfig:
    """A RealSense recording (.db3 or .bag) played through pyrealsense2."""

    path: str = ""
    loop: bool = True           # start again at the end instead of raising SourceEnded
    realtime: bool = True       # recorded frame rate; False: as fast as read() is called
    timeout_ms: int = 2000      # longer than any gap between frames of a sane recording
    force_align: bool = False   # run rs.align even when the depth is already registered to colour


class _PipelineSource:
    """pyrealsense2 pipeline + colour alignment, shared by the camera and recording sources."""

    def __init__(self, timeout_ms: int, force_align: bool = False):
        import pyrealsense2 as rs  # imported here: the core must import without librealsense

        self._rs = rs
        self._timeout_ms = int(timeout_ms)
        self._force_align = bool(force_align)
        self._pipeline = None
        self._align = None
        self._depth_scale = 0.001
        self._intrinsics: Optional[Intrinsics] = None
        self._last_ids = (None, None)  # (colour, depth) (frame number, timestamp) last delivered

    # Subclasses fill the rs.config (device, streams) and may adjust the started device.
    def _configure(self, config) -> None:
        raise NotImplementedError

    def _started(self, profile) -> None:
        pass

    def _ended(self) -> bool:
        return False

    def describe(self) -> str:
        return type(self).__name__

    def open(self) -> None:
        rs = self._rs
        self.close()
        config = rs.config()
        self._configure(config)
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(config)
        except RuntimeError as exc:
            raise SourceUnavailable(f"cannot start {self.describe()}: {exc}") from None
        try:
            device = profile.get_device()
            self._depth_scale = float(device.first_depth_sensor().get_depth_scale())
            self._started(profile)
        except RuntimeError as exc:
            pipeline.stop()
            raise SourceUnavailable(f"the device has no usable depth sensor: {exc}") from None
        self._pipeline = pipeline
        skip = _registered(profile) and not self._force_align
        self._align = None if skip else rs.align(rs.stream.color)
        self._intrinsics = None
        self._last_ids = (None, None)

    def read(self) -> CapturedFrame:
        if self._pipeline is None:
            raise SourceUnavailable("read() before open()")
        # One deadline for the whole read: sets with one stream only, or repeats, must not
        # restart it (a stream that stopped would otherwise block read() forever).
        deadline = time.monotonic() + self._timeout_ms / 1000.0
        while True:
            frames = self._wait(deadline)
            try:
                c, d = frames.get_color_frame(), frames.get_depth_frame()
            except RuntimeError as exc:
                raise SourceTimeout(f"a broken frame set: {exc}") from None
            if not c or not d:
                continue  # a set with one stream only (start-up): wait for a full one
            ids = ((c.get_frame_number(), c.get_timestamp()), (d.get_frame_number(), d.get_timestamp()))
            # The pipeline's syncer emits a set whenever either stream delivers, so in playback each
            # frame shows up twice, once next to the other stream's previous or next frame. A set
            # whose colour or depth was already delivered is such a repeat.
            if ids[0] == self._last_ids[0] or ids[1] == self._last_ids[1]:
                continue
            self._last_ids = ids
            break
        try:
            aligned = self._align.process(frames) if self._align is not None else frames
            color = aligned.get_color_frame()
            depth = aligned.get_depth_frame()
        except RuntimeError as exc:
            raise SourceTimeout(f"alignment failed: {exc}") from None
        if not color or not depth:
            raise SourceTimeout("a frame set without colour or depth")
        if self._intrinsics is None:
            ri = color.get_profile().as_video_stream_profile().get_intrinsics()
            # librealsense's pixel convention matches ROS: ppx/ppy are the principal point in
            # pixel-centre coordinates (realsense-ros copies them into K unchanged).
            self._intrinsics = Intrinsics(ri.fx, ri.fy, ri.ppx, ri.ppy, ri.width, ri.height)
        fmt = str(color.get_profile().format()).split(".")[-1]
        c = np.asanyarray(color.get_data())
        if fmt == "yuyv":
            import cv2
            rgb = cv2.cvtColor(c.reshape(c.shape[0], -1, 2), cv2.COLOR_YUV2RGB_YUYV)
        elif fmt in _RS_COLOR_ENCODINGS:
            rgb = images.to_rgb8(c, _RS_COLOR_ENCODINGS[fmt])
        else:
            raise SourceUnavailable(f"unsupported colour format {fmt!r}")
        raw = np.asanyarray(depth.get_data())
        scale = float(depth.get_units()) or self._depth_scale
        depth_mm = images.depth_units_to_mm(raw, scale)
        # The frame buffers belong to librealsense and are recycled: copy out.
        return CapturedFrame(color=np.array(rgb, copy=True), depth=np.array(depth_mm, copy=True),
                             intrinsics=self._intrinsics, depth_scale=scale,
                             stamp=float(color.get_timestamp()) / 1000.0,
                             frame_number=int(color.get_frame_number()))

    def _wait(self, deadline: float):
        # Poll in short slices so that the end of a recording is noticed at once.
        while True:
            if time.monotonic() > deadline:
                raise SourceTimeout(f"no complete new frame set within {self._timeout_ms} ms")
            try:
                ok, frames = self._pipeline.try_wait_for_frames(100)
            except RuntimeError as exc:
                raise SourceTimeout(f"waiting for frames failed: {exc}") from None
            if ok:
                return frames
            if self._ended():
                raise SourceEnded("the recording has ended")
            if time.monotonic() > deadline:
                raise SourceTimeout(f"no frame within {self._timeout_ms} ms")

    def close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass  # already stopped (device gone)
            self._pipeline = None


def depth_registered_to_color(dprof, cprof) -> bool:
    """True when depth is already in the colour camera's geometry: equal intrinsics, no
    distortion and identity extrinsics (``rs.align`` would only add holes then).

    :param dprof: the depth ``rs.video_stream_profile``.
    :param cprof: the colour ``rs.video_stream_profile``.
    """
    try:
        a, b = dprof.get_intrinsics(), cprof.get_intrinsics()
        ex = dprof.get_extrinsics_to(cprof)
    except RuntimeError:
        return False
    same = ((a.width, a.height) == (b.width, b.height)
            and np.allclose([a.fx, a.fy, a.ppx, a.ppy], [b.fx, b.fy, b.ppx, b.ppy], atol=1e-4)
            and not any(a.coeffs) and not any(b.coeffs))
    return bool(same and np.allclose(ex.rotation, np.eye(3).ravel(), atol=1e-6)
                and np.allclose(ex.translation, 0.0, atol=1e-6))


def _registered(profile) -> bool:
    """:func:`depth_registered_to_color` for a started pipeline's profile."""
    import pyrealsense2 as rs
    try:
        d = profile.get_stream(rs.stream.depth).as_video_stream_profile()
        c = profile.get_stream(rs.stream.color).as_video_stream_profile()
    except RuntimeError:
        return False
    return depth_registered_to_color(d, c)


class RealSenseSource(_PipelineSource):
    """A live RealSense camera: colour rgb8 + depth z16, depth aligned to colour."""

    def __init__(self, config: RealSenseConfig = RealSenseConfig()):
        super().__init__(config.timeout_ms)
        self.config = config

    def _configure(self, config) -> None:
        rs, c = self._rs, self.config
        if len(rs.context().query_devices()) == 0:
            raise SourceUnavailable("no RealSense camera connected")
        if c.serial_number:
            config.enable_device(c.serial_number)
        config.enable_stream(rs.stream.color, c.color_width, c.color_height, rs.format.rgb8, c.color_fps)
        config.enable_stream(rs.stream.depth, c.depth_width, c.depth_height, rs.format.z16, c.depth_fps)

    def describe(self) -> str:
        c = self.config
        return (f"RealSense {c.serial_number or '(first found)'}: colour {c.color_width}x{c.color_height}"
                f"@{c.color_fps} rgb8, depth {c.depth_width}x{c.depth_height}@{c.depth_fps} z16")


class RecordingSource(_PipelineSource):
    """A RealSense recording played through the same pipeline code as the camera."""

    def __init__(self, config: RecordingConfig):
        super().__init__(config.timeout_ms, config.force_align)
        self.config = config
        self._playback = None
        self._pace_origin = None  # (monotonic s, frame stamp s) the pacing counts from
        self._last_stamp = 0.0
        self._last_due = 0.0  # monotonic time the last frame was due
        self._interval = 1.0 / 30  # s between frames, measured from the stamps once two arrive

    def _configure(self, config) -> None:
        path = Path(self.config.path).expanduser()
        if not path.is_file():
            raise SourceUnavailable(f"recording not found: {path}")
        config.enable_device_from_file(str(path), repeat_playback=bool(self.config.loop))

    def describe(self) -> str:
        return f"recording {self.config.path}"

    def _started(self, profile) -> None:
        self._playback = profile.get_device().as_playback()
        # librealsense's real-time playback follows the wall clock of the *writer* (a synthetic
        # recording written at 37 fps plays at 37 fps), so playback runs as fast as read() asks
        # and read() paces by the frames' own timestamps instead.
        self._playback.set_real_time(False)
        # The pipeline starts its sensors one after the other while the file already plays, so
        # frame 0 was lost in about 1 start out of 3; rewinding once both listen makes that rare
        # (sample: 12/12 starts delivered all 30 frames, 8/12 without; a 6-frame file: 12/14),
        # not impossible: recording.play_recording is the exact reader for evaluation.
        self._playback.pause()
        self._playback.seek(datetime.timedelta(0))
        self._playback.resume()
        self._pace_origin = None

    def read(self) -> CapturedFrame:
        frame = super().read()
        if self.config.realtime:
            now = time.monotonic()
            if self._pace_origin is None:
                self._pace_origin = (now, frame.stamp)
            elif frame.stamp < self._last_stamp:
                # The recording looped: its first frame comes one frame interval after its last.
                self._pace_origin = (self._last_due + self._interval, frame.stamp)
            else:
                self._interval = frame.stamp - self._last_stamp or self._interval
            due = self._pace_origin[0] + (frame.stamp - self._pace_origin[1])
            if due > now:
                time.sleep(due - now)
            self._last_due = due
            self._last_stamp = frame.stamp
        return frame

    def _ended(self) -> bool:
        return (not self.config.loop and self._playback is not None
                and self._playback.current_status() == self._rs.playback_status.stopped)

    def close(self) -> None:
        super().close()
        self._playback = None
