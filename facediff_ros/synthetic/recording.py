"""RealSense recordings of the synthetic actor, and a reader for any RealSense recording.

:func:`write_recording` feeds :class:`~facediff_ros.synthetic.actor.SyntheticActor` frames through
pyrealsense2's ``software_device`` (a "Stereo Module" with a z16 depth stream and an "RGB Camera"
with an rgb8 colour stream, their intrinsics, the depth-to-colour extrinsics and the depth units)
into ``rs.recorder``, which writes a rosbag2 SQLite file (``.db3``; librealsense 2.59 refuses
``.bag`` names). The depth stream is recorded already registered to the colour camera (same
intrinsics, identity extrinsics), as the actor renders it. The ground truth goes beside it as
``<name>.gt.npz`` (:func:`ground_truth_path`): per-frame arrays and the actor's config as JSON.

:func:`play_recording` reads any RealSense recording with depth and colour: the file's playback
device with optional real-time pacing (``set_real_time``), and depth aligned to colour with
``rs.align(rs.stream.color)`` -- skipped when the recording's depth is already registered to
colour (then rs.align could only add its rounding artefacts: it splats every depth pixel onto a
2x2 block and leaves scattered holes; ``force_rs_align`` shows them).

Faces are biometric data: nothing here writes unless the caller gives a path.

Command: ``python -m facediff_ros.synthetic.recording --out data/sample.db3 --frames 45 --seed 1``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional, Tuple, Union

import numpy as np

from facediff_ros.synthetic.actor import ActorConfig, SensorNoise, SyntheticActor
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.capture.sources import depth_registered_to_color

PathLike = Union[str, Path]


class RecordedFrame(NamedTuple):
    """One frame read back from a recording."""

    color: np.ndarray         # (H, W, 3) uint8 RGB
    depth_mm: np.ndarray      # (H, W) uint16 depth in depth_scale units, aligned to colour when asked
    intrinsics: Intrinsics    # of the colour stream (and of the depth when aligned)
    depth_scale: float        # metres per depth unit
    timestamp: float          # seconds, the frame's recorded timestamp (frame index / fps for the actor)


def ground_truth_path(path: PathLike) -> Path:
    """``dir/name.db3`` -> ``dir/name.gt.npz``."""
    p = Path(path)
    return p.with_name(p.stem + ".gt.npz")


def write_recording(path: PathLike, actor: SyntheticActor, num_frames: Optional[int] = None,
                    overwrite: bool = False) -> Tuple[Path, Path]:
    """Record ``num_frames`` (default: all) actor frames to a RealSense ``.db3`` plus its ground truth.

    Returns:
        (recording path, ground-truth path).

    Raises:
        ValueError: a path not ending in ``.db3``, a bad frame count.
        FileExistsError: the recording or its ground truth exists and ``overwrite`` is False.
    """
    import pyrealsense2 as rs

    path = Path(path)
    if path.suffix != ".db3":
        raise ValueError(f"path must end in .db3 (librealsense's rosbag2 recorder), got {path}")
    n = len(actor) if num_frames is None else int(num_frames)
    if not 1 <= n <= len(actor):
        raise ValueError(f"num_frames must be in [1, {len(actor)}], got {num_frames}")
    gt_path = ground_truth_path(path)
    for p in (path, gt_path):
        if p.exists():
            if not overwrite:
                raise FileExistsError(f"{p} exists (pass overwrite=True to replace it)")
            p.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)

    K, c = actor.intrinsics, actor.config
    device = rs.software_device()
    depth_sensor = device.add_sensor("Stereo Module")
    color_sensor = device.add_sensor("RGB Camera")
    depth_profile = depth_sensor.add_video_stream(
        _video_stream(rs, rs.stream.depth, rs.format.z16, 2, K, c.fps, uid=0)).as_video_stream_profile()
    color_profile = color_sensor.add_video_stream(
        _video_stream(rs, rs.stream.color, rs.format.rgb8, 3, K, c.fps, uid=1)).as_video_stream_profile()
    depth_sensor.add_read_only_option(rs.option.depth_units, float(c.noise.depth_unit_m))
    identity = rs.extrinsics()
    identity.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    identity.translation = [0.0, 0.0, 0.0]
    depth_profile.register_extrinsics_to(color_profile, identity)

    recorder = rs.recorder(str(path), device)
    gt = _GroundTruth(n)
    keep_alive = []  # librealsense reads the pixel buffers after on_video_frame returns
    depth_sensor.open(depth_profile)
    color_sensor.open(color_profile)
    depth_sensor.start(lambda f: None)
    color_sensor.start(lambda f: None)
    try:
        for i in range(n):
            fr = actor.frame(i)
            stamp_ms = 1000.0 * fr.timestamp
            for sensor, profile, pixels, bpp in ((depth_sensor, depth_profile, fr.depth, 2),
                                                 (color_sensor, color_profile, fr.color, 3)):
                pixels = np.ascontiguousarray(pixels)
                keep_alive.append(pixels)
                sw = rs.software_video_frame()  # a fresh one per frame: reusing them corrupts the heap
                sw.pixels = pixels
                sw.bpp = bpp
                sw.stride = K.width * bpp
                sw.timestamp = stamp_ms
                sw.domain = rs.timestamp_domain.hardware_clock
                sw.frame_number = i
                sw.profile = profile
                sensor.on_video_frame(sw)
            gt.add(i, fr)
    finally:
        for sensor in (depth_sensor, color_sensor):
            sensor.stop()
            sensor.close()
        recorder.pause()
        del recorder  # the file is complete only once the recorder is gone
    gt.save(gt_path, actor)
    return path, gt_path


def load_ground_truth(path: PathLike) -> Dict[str, np.ndarray]:
    """The ground truth of a recording (give the ``.db3`` or the ``.gt.npz``) as a dict of arrays.

    Keys: frame (N,), timestamp (N,) s, identity (K,), expression (N, E), expression_names (E,),
    category (N,), intensity (N,), R (N, 3, 3), t (N, 3), landmarks_3d (N, 68, 3) m camera frame,
    landmarks_2d (N, 68, 2) px, landmarks_visible (N, 68), intrinsics (6,) fx fy cx cy width
    height, depth_scale (), config_json (), texture_params_json ().
    """
    p = Path(path)
    p = p if p.name.endswith(".gt.npz") else ground_truth_path(p)
    with np.load(p, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def play_recording(path: PathLike, realtime: bool = False, align: bool = True,
                   force_rs_align: bool = False, timeout_s: float = 5.0) -> Iterator[RecordedFrame]:
    """Play a RealSense recording (``.db3``, or a ``.bag`` from older tools) frame by frame.

    The file's playback device (``rs.context().load_device``, what ``rs.config
    .enable_device_from_file`` opens) is paused until its depth and colour sensors both stream
    into one small bounded buffer (:class:`_FrameBuffer`: a reader slower than the file slows the
    playback down instead of filling a queue); depth and colour frames are paired by timestamp here. (An
    ``rs.pipeline`` over the same 45-frame file lost frame 0 in 3 of 20 runs -- its sensors
    start one after the other while the file already plays -- and, in a test file whose
    timestamps started at 1 s, its syncer paired depth i with colour i - 1.) Pairs become
    ``rs.align`` framesets through a processing block.

    Args:
        path: the recording.
        realtime: pace frames at their recorded rate (False: as fast as they are read; no frame
            is dropped either way).
        align: depth aligned to the colour camera with ``rs.align(rs.stream.color)``; with False
            the depth stays in the depth camera's frame. Recordings of this module hold depth
            already registered to colour, so alignment is skipped for them (rs.align would only
            add its 2x2 splatting and rounding holes) unless ``force_rs_align``.
        force_rs_align: run ``rs.align`` even when the depth is already registered to colour.
        timeout_s: give up when no frame arrives for this long before the end of the file.

    Yields:
        :class:`RecordedFrame` per depth + colour pair, in order. Lens distortion coefficients
        are ignored (:class:`Intrinsics` is a pinhole; D435 colour streams report none).

    Raises:
        ValueError: a missing file, a recording without depth and colour, or an unsupported
            colour format. TimeoutError: the file stalls.
    """
    import pyrealsense2 as rs

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no recording at {path}")
    try:
        device = rs.context().load_device(str(path))
    except RuntimeError as e:
        raise ValueError(f"path: {path} is not a RealSense recording ({e})") from None
    playback = device.as_playback()
    playback.set_real_time(bool(realtime))
    playback.pause()  # nothing plays before every sensor listens
    dprof, cprof, sensors = _depth_and_color(rs, device, path)
    depth_scale = float(next(s for s in sensors if s[1] is dprof)[0].as_depth_sensor().get_depth_scale())
    K = _to_intrinsics(cprof.get_intrinsics())
    fmt = cprof.format()
    if fmt not in _COLOR_FORMATS(rs):
        raise ValueError(f"path: colour format {fmt} is not supported (rgb8, bgr8, rgba8, bgra8)")
    needs_align = align and (force_rs_align or not depth_registered_to_color(dprof, cprof))
    aligner = rs.align(rs.stream.color) if needs_align else None
    tolerance_ms = 500.0 / max(cprof.fps(), 1)  # depth and colour of one frameset: within half a period
    buffer = _FrameBuffer(BUFFER_FRAMES)
    composer = _Composer(rs) if aligner is not None else None
    started = []
    try:
        for sensor, profile in sensors:
            sensor.open(profile)
            started.append(sensor)
            sensor.start(buffer.put)
        playback.resume()
        pending: Dict[str, object] = {}
        last_frame = time.monotonic()
        while True:
            frame = buffer.get(0.1)
            if frame is None:
                # The buffer is empty, so no callback waits on it: librealsense can be asked.
                if playback.current_status() == rs.playback_status.stopped and buffer.empty():
                    return
                if time.monotonic() - last_frame > timeout_s:
                    raise TimeoutError(f"no frame from {path} for {timeout_s} s")
                continue
            last_frame = time.monotonic()
            pending["depth" if frame.profile.stream_type() == rs.stream.depth else "color"] = frame
            del frame
            if len(pending) < 2:
                continue
            depth, color = pending["depth"], pending["color"]
            if abs(depth.get_timestamp() - color.get_timestamp()) > tolerance_ms:
                # Unpaired: keep the newer frame, drop the older one.
                older = "depth" if depth.get_timestamp() < color.get_timestamp() else "color"
                del pending[older]
                continue
            pending.clear()
            if aligner is not None:
                aligned = aligner.process(composer.compose(depth, color))
                depth = aligned.get_depth_frame()
            out = RecordedFrame(_rgb(rs, color, fmt), np.asanyarray(depth.get_data()).copy(), K,
                                depth_scale, color.get_timestamp() / 1000.0)
            del depth, color  # back to librealsense's frame pool before the caller takes its time
            yield out
    finally:
        buffer.close()  # a callback waiting for room returns now, so the sensors can stop
        for sensor in started:
            try:
                sensor.stop()
            except RuntimeError:
                pass  # opened but never started
            sensor.close()


# ---- helpers ---------------------------------------------------------------------------------------
BUFFER_FRAMES = 8  # frames (depth and colour counted apart) between the playback and the reader


class _FrameBuffer:
    """A bounded hand-over from librealsense's callback thread to the reader, with backpressure.

    ``put`` is the sensors' frame callback. When the buffer is full it waits on a condition
    variable, which releases the GIL, so the reader always gets to run and drain it; the playback
    (``set_real_time(False)``) then waits for the callback, so a slow reader slows the file down
    and no frame is dropped. (Before: an ``rs.frame_queue(64)`` passed to ``sensor.start``; a
    reader slower than the file filled it, and a librealsense thread then blocked while holding
    the GIL, so the reader never ran again: a deadlock, every run with a reader sleeping 50 ms
    per frame.) Only a few frames wait here, so librealsense's frame pool is never starved.
    ``close`` makes a waiting ``put`` return (dropping its frame) so that ``sensor.stop`` can
    finish.
    """

    def __init__(self, capacity: int):
        import collections
        import threading

        self._frames = collections.deque()
        self._capacity = int(capacity)
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame) -> None:
        with self._cond:
            while len(self._frames) >= self._capacity and not self._closed:
                self._cond.wait(0.1)
            if self._closed:
                return
            self._frames.append(frame)
            self._cond.notify_all()

    def get(self, timeout_s: float):
        """The oldest frame, or None after ``timeout_s`` without one."""
        with self._cond:
            if not self._frames:
                self._cond.wait(timeout_s)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def empty(self) -> bool:
        with self._cond:
            return not self._frames

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._frames.clear()
            self._cond.notify_all()


class _GroundTruth:
    def __init__(self, n: int):
        self.n = n
        self.arrays: Dict[str, list] = {}

    def add(self, i: int, fr):
        for key, value in (("frame", i), ("timestamp", fr.timestamp), ("expression", fr.expression),
                           ("category", fr.category), ("intensity", fr.intensity), ("R", fr.R), ("t", fr.t),
                           ("landmarks_3d", fr.landmarks_3d), ("landmarks_2d", fr.landmarks_2d),
                           ("landmarks_visible", fr.landmarks_visible)):
            self.arrays.setdefault(key, []).append(value)

    def save(self, path: Path, actor: SyntheticActor):
        K = actor.intrinsics
        out = {k: np.asarray(v) for k, v in self.arrays.items()}
        out.update(identity=actor.identity, expression_names=np.asarray(actor.model.expression_names),
                   intrinsics=np.array([K.fx, K.fy, K.cx, K.cy, K.width, K.height], np.float64),
                   depth_scale=np.float64(actor.config.noise.depth_unit_m),
                   config_json=np.asarray(actor.config.to_json()),
                   texture_params_json=np.asarray(json.dumps(asdict(actor.texture_params))))
        with open(path, "wb") as f:
            np.savez_compressed(f, **out)


def _video_stream(rs, kind, fmt, bpp: int, K: Intrinsics, fps: float, uid: int):
    vs = rs.video_stream()
    vs.type = kind
    vs.index = 0
    vs.uid = uid
    vs.width, vs.height = K.width, K.height
    vs.fps = int(round(fps))
    vs.bpp = bpp
    vs.fmt = fmt
    intr = rs.intrinsics()
    intr.width, intr.height = K.width, K.height
    intr.fx, intr.fy, intr.ppx, intr.ppy = K.fx, K.fy, K.cx, K.cy
    intr.model = rs.distortion.brown_conrady
    intr.coeffs = [0.0] * 5
    vs.intrinsics = intr
    return vs


def _to_intrinsics(i) -> Intrinsics:
    return Intrinsics(float(i.fx), float(i.fy), float(i.ppx), float(i.ppy), int(i.width), int(i.height))


class _Composer:
    """Depth + colour frames -> one composite frameset (what rs.align processes)."""

    def __init__(self, rs):
        self._parts = []
        self._out = rs.frame_queue(2, keep_frames=True)
        self._block = rs.processing_block(self._make)
        self._block.start(self._out)

    def _make(self, frame, source):
        self._parts.append(frame)
        if len(self._parts) == 2:
            source.frame_ready(source.allocate_composite_frame(self._parts))
            self._parts = []

    def compose(self, depth, color):
        self._block.invoke(depth)
        self._block.invoke(color)
        return self._out.wait_for_frame().as_frameset()


def _depth_and_color(rs, device, path):
    """The first depth and colour stream profiles of a device and (sensor, profile) to open."""
    dprof = cprof = None
    sensors = []
    for sensor in device.query_sensors():
        for prof in sensor.get_stream_profiles():
            if prof.stream_type() == rs.stream.depth and dprof is None:
                dprof = prof.as_video_stream_profile()
                sensors.append((sensor, dprof))
            elif prof.stream_type() == rs.stream.color and cprof is None:
                cprof = prof.as_video_stream_profile()
                sensors.append((sensor, cprof))
    if dprof is None or cprof is None:
        raise ValueError(f"path: {path} lacks a depth or a colour stream")
    if len({id(s) for s, _ in sensors}) != len(sensors):
        raise ValueError(f"path: {path} holds depth and colour on one sensor; not supported")
    return dprof, cprof, sensors


def _COLOR_FORMATS(rs):
    return (rs.format.rgb8, rs.format.bgr8, rs.format.rgba8, rs.format.bgra8)


def _rgb(rs, frame, fmt) -> np.ndarray:
    img = np.asanyarray(frame.get_data())
    if fmt in (rs.format.bgr8, rs.format.bgra8):
        img = img[..., 2::-1]
    return np.ascontiguousarray(img[..., :3])


# Sensor models for the command line: "low" keeps every depth effect but no colour noise, which
# LZ4-compressed frames cannot shrink (424x240: ~320 kB/frame with it, ~160 kB without).
NOISE_PRESETS = {
    "realsense": SensorNoise(),
    "low": SensorNoise(color_read_sigma=0.0, color_shot=0.0),
    "none": SensorNoise.none(),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic RealSense recording (.db3) and its "
                                                 "ground truth (.gt.npz).")
    parser.add_argument("--out", default="data/sample.db3", help="recording path (.db3)")
    parser.add_argument("--frames", type=int, default=45)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--width", type=int, default=424, help="424x240 is a D435 mode; 640x480 is 4x larger")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--noise", choices=sorted(NOISE_PRESETS), default="low",
                        help="sensor model: realsense (all effects), low (no colour noise), none")
    parser.add_argument("--hold", type=float, default=0.5,
                        help="seconds per expression segment (short: a short clip shows several)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing recording")
    args = parser.parse_args(argv)
    actor = SyntheticActor(ActorConfig(seed=args.seed, num_frames=args.frames, width=args.width,
                                       height=args.height, noise=NOISE_PRESETS[args.noise],
                                       expression_hold_s=args.hold,
                                       expression_transition_s=min(0.4, 0.5 * args.hold)))
    t0 = time.perf_counter()
    rec, gt = write_recording(args.out, actor, overwrite=args.overwrite)
    dt = time.perf_counter() - t0
    print(f"{rec}: {rec.stat().st_size / 1e6:.2f} MB, {args.frames} frames {args.width}x{args.height} "
          f"noise={args.noise} in {dt:.1f} s ({1e3 * dt / args.frames:.0f} ms/frame); ground truth {gt} "
          f"({gt.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
