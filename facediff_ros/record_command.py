"""``facediff record``: record RGB-D frames of the user into a RealSense ``.db3``
(input for ``facediff personalize``).

    facediff record --out FILE.db3 --seconds S [--source topics|realsense|synthetic|webcam]
                    [--video-device 0] [--camera-namespace camera --camera-name camera]

Sources: ``topics`` (default) subscribes to a running capture node's colour, aligned depth and
colour CameraInfo topics (rclpy; the same topic names as the capture node / realsense2_camera);
``realsense``, ``webcam`` and ``synthetic`` open the source directly with the capture node's own
source classes (no ROS graph needed). Frames are written the way
:mod:`facediff_ros.synthetic.recording` writes the actor: pyrealsense2's ``software_device`` (a
z16 depth stream registered to an rgb8 colour stream, their intrinsics, the depth unit) into
``rs.recorder`` -- a rosbag2 SQLite file that :func:`~facediff_ros.synthetic.recording.play_recording`,
``facediff fit``/``personalize`` and the capture node (``source:=recording``) play back. A
colour-only source (webcam) gets an all-zero depth stream (no measurement), which the readers
treat as colour only.

While it records, a short list of prompts (look left, look right, smile, frown, open your mouth,
raise your eyebrows, ...) is printed, spread over the recording, so that the frames cover the
expressions and head poses personalisation learns from.

Faces are biometric data: only ``--out`` is written (owner-only, 0600).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from facediff_ros.core.camera import Intrinsics

SOURCES = ("topics", "realsense", "synthetic", "webcam")
PROMPTS = ("look straight at the camera, neutral face", "turn your head slowly to the left",
           "turn your head slowly to the right", "look up, then down", "smile", "frown",
           "open your mouth wide", "raise your eyebrows", "look surprised", "look angry",
           "talk, as if telling someone about your day")


class RecordError(ValueError):
    """Bad options or a source that cannot be recorded; the one line the command prints."""


def prompt_schedule(seconds: float, prompts: Sequence[str] = PROMPTS) -> List[tuple]:
    """[(start s, prompt)]: the prompts spread evenly over the recording (at least 1.5 s each: fewer
    prompts in a short recording)."""
    if seconds <= 0:
        raise RecordError(f"--seconds must be > 0, got {seconds}")
    n = max(1, min(len(prompts), int(seconds // 1.5)))
    return [(k * seconds / n, prompts[k]) for k in range(n)]


class RecordingWriter:
    """Colour + aligned depth frames -> a RealSense rosbag2 ``.db3`` through ``rs.recorder``.

    :param path: the ``.db3`` to write (must not exist).
    :param intrinsics: the colour camera's (the depth is aligned to it).
    :param fps: nominal frame rate written into the stream profiles.
    :param depth_unit_m: metres per depth unit (the frames' depth is uint16 in these units).
    """

    def __init__(self, path, intrinsics: Intrinsics, fps: float = 30.0, depth_unit_m: float = 0.001):
        import pyrealsense2 as rs

        from facediff_ros.synthetic.recording import _video_stream
        self.path = Path(path)
        if self.path.suffix != ".db3":
            raise RecordError(f"--out must end in .db3 (librealsense's rosbag2 recorder), got {self.path}")
        if self.path.exists():
            raise RecordError(f"--out {self.path}: exists; choose a new file")
        if not self.path.parent.is_dir():
            raise RecordError(f"--out {self.path}: folder {self.path.parent} does not exist")
        self.rs, self.K = rs, intrinsics
        # Created owner-only before the recorder opens it (the recorder keeps the mode).
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(self.path)
        self._old_umask = os.umask(0o077)
        self.device = rs.software_device()
        self.depth_sensor = self.device.add_sensor("Stereo Module")
        self.color_sensor = self.device.add_sensor("RGB Camera")
        self.depth_profile = self.depth_sensor.add_video_stream(
            _video_stream(rs, rs.stream.depth, rs.format.z16, 2, intrinsics, fps, uid=0)
        ).as_video_stream_profile()
        self.color_profile = self.color_sensor.add_video_stream(
            _video_stream(rs, rs.stream.color, rs.format.rgb8, 3, intrinsics, fps, uid=1)
        ).as_video_stream_profile()
        self.depth_sensor.add_read_only_option(rs.option.depth_units, float(depth_unit_m))
        ident = rs.extrinsics()
        ident.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        ident.translation = [0.0, 0.0, 0.0]
        self.depth_profile.register_extrinsics_to(self.color_profile, ident)
        self.recorder = rs.recorder(str(self.path), self.device)
        self._keep = []  # librealsense reads the pixel buffers after on_video_frame returns
        self.depth_sensor.open(self.depth_profile)
        self.color_sensor.open(self.color_profile)
        self.depth_sensor.start(lambda f: None)
        self.color_sensor.start(lambda f: None)
        self.frames = 0

    def add(self, color: np.ndarray, depth: Optional[np.ndarray], stamp_s: float) -> None:
        """One frame: (H, W, 3) uint8 RGB, (H, W) uint16 depth in the writer's unit (None: no depth)."""
        rs, K = self.rs, self.K
        if color.shape != K.shape + (3,) or color.dtype != np.uint8:
            raise RecordError(f"frame of {color.shape} {color.dtype}, "
                              f"the stream is {K.width}x{K.height} rgb8")
        if depth is None:
            depth = np.zeros(K.shape, np.uint16)
        for sensor, profile, pixels, bpp in ((self.depth_sensor, self.depth_profile, depth, 2),
                                             (self.color_sensor, self.color_profile, color, 3)):
            pixels = np.ascontiguousarray(pixels)
            self._keep.append(pixels)
            sw = rs.software_video_frame()  # a fresh one per frame: reusing them corrupts the heap
            sw.pixels = pixels
            sw.bpp = bpp
            sw.stride = K.width * bpp
            sw.timestamp = 1000.0 * stamp_s
            sw.domain = rs.timestamp_domain.hardware_clock
            sw.frame_number = self.frames
            sw.profile = profile
            sensor.on_video_frame(sw)
        self.frames += 1
        if len(self._keep) > 64:
            self._keep = self._keep[-32:]

    def close(self) -> None:
        for sensor in (self.depth_sensor, self.color_sensor):
            sensor.stop()
            sensor.close()
        self.recorder.pause()
        del self.recorder  # the file is complete only once the recorder is gone
        os.umask(self._old_umask)
        if self.path.exists():
            os.chmod(self.path, 0o600)


# ---- sources -------------------------------------------------------------------------------------
def _direct_source(name: str, video_device: str):
    if name == "synthetic":
        from facediff_ros.synthetic.actor_source import SyntheticSource
        return SyntheticSource(num_frames=100000, loop=True, realtime=True)
    if name == "realsense":
        from facediff_ros.core.capture.sources import RealSenseConfig, RealSenseSource
        return RealSenseSource(RealSenseConfig())
    from facediff_ros.core.capture.webcam import WebcamConfig, WebcamSource
    return WebcamSource(WebcamConfig(device=video_device))


def record_direct(out, seconds: float, source: str, video_device: str = "0", say: Callable = print) -> int:
    """Record from a source opened here; returns the frame count."""
    from facediff_ros.core.capture.sources import SourceError
    src = _direct_source(source, video_device)
    try:
        src.open()
    except SourceError as exc:
        raise RecordError(f"--source {source}: {exc}") from None
    writer = None
    try:
        prompts = prompt_schedule(seconds)
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            el = time.monotonic() - t0
            while k < len(prompts) and el >= prompts[k][0]:
                say(f"[{prompts[k][0]:5.1f} s] {prompts[k][1]}")
                k += 1
            f = src.read()
            if writer is None:
                writer = RecordingWriter(out, f.intrinsics)
            depth = None if f.depth is None else np.asarray(f.depth, np.uint16)  # mm
            writer.add(f.color, depth, el)
    except SourceError as exc:
        raise RecordError(f"--source {source}: {exc}") from None
    finally:
        src.close()
        if writer is not None:
            writer.close()
    return 0 if writer is None else writer.frames


def record_topics(out, seconds: float, namespace: str, camera: str, say: Callable = print,
                  wait_s: float = 10.0) -> int:
    """Record the capture node's colour + aligned depth + CameraInfo topics; returns the frame count."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image

    from facediff_ros.adapters import topics
    from facediff_ros.adapters.images import from_camera_info_msg, from_image_msg
    from facediff_ros.core import images
    from facediff_ros.nodes.parameters import qos_profile

    cam = topics.camera_topics(namespace, camera)
    rclpy.init(args=None)
    node = Node("facediff_record")
    state = {"info": None, "depth": {}, "frames": []}

    def stamp(msg) -> float:
        return msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec

    def on_info(msg):
        state["info"] = msg

    def on_depth(msg):
        d = state["depth"]
        d[stamp(msg)] = msg
        while len(d) > 30:
            d.pop(next(iter(d)))

    def on_color(msg):
        state["frames"].append(msg)

    qos = qos_profile("SENSOR_DATA")
    node.create_subscription(CameraInfo, cam.color_info, on_info, qos)
    node.create_subscription(Image, cam.depth, on_depth, qos)
    node.create_subscription(Image, cam.color, on_color, qos)
    writer = None
    n = 0
    try:
        t_wait = time.monotonic()
        while state["info"] is None or not state["frames"]:
            rclpy.spin_once(node, timeout_sec=0.1)
            if time.monotonic() - t_wait > wait_s:
                raise RecordError(f"no frames on {cam.color} and {cam.color_info} within {wait_s:g} s; "
                                  "is the capture node running "
                                  "(facediff-capture / ros2 run facediff_ros capture)?")
        K = from_camera_info_msg(state["info"])
        prompts = prompt_schedule(seconds)
        t0 = time.monotonic()
        k, first_stamp = 0, None
        writer = RecordingWriter(out, K)
        while time.monotonic() - t0 < seconds:
            el = time.monotonic() - t0
            while k < len(prompts) and el >= prompts[k][0]:
                say(f"[{prompts[k][0]:5.1f} s] {prompts[k][1]}")
                k += 1
            rclpy.spin_once(node, timeout_sec=0.05)
            pending, state["frames"] = state["frames"], []
            for msg in pending:
                s = stamp(msg)
                dm = state["depth"].get(s)
                try:
                    color = images.to_rgb8(from_image_msg(msg), msg.encoding)
                    depth = None
                    if dm is not None:
                        z = images.depth_to_meters(from_image_msg(dm), dm.encoding)  # (H, W) m, NaN = none
                        mm = np.where(np.isfinite(z) & (z > 0), np.round(z * 1000.0), 0)
                        depth = mm.clip(0, 65535).astype(np.uint16)
                except ValueError:
                    continue  # an undecodable frame is skipped (the capture node's own drop)
                if color.shape[:2] != K.shape:
                    continue
                first_stamp = s if first_stamp is None else first_stamp
                writer.add(color, depth, s - first_stamp)
                n += 1
    finally:
        if writer is not None:
            writer.close()
        node.destroy_node()
        rclpy.shutdown()
    return n


# ---- command -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the recording to write (.db3, must not exist)")
    p.add_argument("--seconds", type=float, required=True, help="how long to record")
    p.add_argument("--source", choices=SOURCES, default="topics",
                   help="topics: a running capture node's; realsense/webcam/synthetic: open it directly")
    p.add_argument("--video-device", default="0", help="webcam: device index, /dev/videoN or a video file")
    p.add_argument("--camera-namespace", default="camera", help="topics: as the capture node's")
    p.add_argument("--camera-name", default="camera", help="topics: as the capture node's")


def run(args: argparse.Namespace) -> int:
    """0 written, 2 bad option or source (one line on stderr, nothing written)."""
    out = Path(args.out)
    started = False
    try:
        if not (args.seconds > 0) or not np.isfinite(args.seconds):
            raise RecordError(f"--seconds must be > 0, got {args.seconds}")
        if out.suffix != ".db3":
            raise RecordError(f"--out must end in .db3 (librealsense's rosbag2 recorder), got {out}")
        if out.exists():
            raise RecordError(f"--out {out}: exists; choose a new file")
        print(f"recording {args.seconds:g} s from {args.source} into {out}; follow the prompts:", flush=True)
        say = lambda s: print(s, flush=True)  # noqa: E731
        started = True
        if args.source == "topics":
            n = record_topics(out, args.seconds, args.camera_namespace, args.camera_name, say)
        else:
            n = record_direct(out, args.seconds, args.source, args.video_device, say)
        if n == 0:
            raise RecordError(f"no frame arrived from {args.source} in {args.seconds:g} s")
    except RecordError as exc:
        if started and out.exists():  # only a file this run created
            out.unlink()
        print(f"facediff record: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfacediff record: interrupted; {out} holds what was recorded so far", file=sys.stderr)
        return 130
    print(f"wrote {out}: {n} frames ({out.stat().st_size / 1e6:.1f} MB); next: facediff personalize {out} "
          f"--minutes 10 --out DIR")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="facediff record", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
