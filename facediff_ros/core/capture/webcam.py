"""Colour-only frames from OpenCV ``VideoCapture``: a webcam (index or /dev/videoN) or a video file.

The capture node's ``source:=webcam``. What ``device`` names (:func:`resolve_device`):

- digits (``'0'``): the V4L2 device of that index, ``/dev/video0`` (OpenCV's own numbering);
- a path under ``/dev/`` or any character device: that device;
- any other path: a video file (whatever OpenCV's FFmpeg reads: .avi, .mp4, .mkv, ...), played at
  its own frame rate (``realtime``) and started again at its end (``loop``), else
  :class:`~facediff_ros.core.capture.sources.SourceEnded`.

Frames are RGB (OpenCV's BGR converted) with **no depth** (``CapturedFrame.depth`` None): the
landmark, fitting and editor nodes run colour-only (``use_depth:=false``).

Intrinsics (the published CameraInfo's K; :attr:`WebcamSource.intrinsics_from` and
:attr:`WebcamSource.intrinsics_note` say which was used, and the capture node reports them in
its log line and ``/diagnostics``, since CameraInfo has no field for it):

1. ``calibration``: a camera_info YAML as ROS ``camera_calibration`` writes it and
   ``camera_calibration_parsers`` reads it (:func:`load_calibration`). Frames of another size
   with the same aspect ratio (within 1 %) get K scaled (a camera streaming a lower resolution of
   the calibrated mode); another aspect ratio is refused. With distortion (or a rectification /
   projection matrix that changes the image), each frame is rectified by ``cv2.remap`` (maps built
   once at open) to the projection matrix's camera, as image_proc's rectify does, and the
   CameraInfo is that camera with zero distortion: the rest of the package ignores distortion.
2. otherwise the default **horizontal field of view** ``hfov_deg`` (60 deg): square pixels,
   principal point at the image centre, fx = fy = W / 2 / tan(hfov / 2). A wrong value mostly
   moves the fitted head nearer or farther (its size in the image is what is measured).

Stamps (``CapturedFrame.stamp``, used with ``stamp_source:=device``): a video file's frame index
/ fps, counting on across loops (so they never go back); a live device's wall-clock time at read.

Failures raise the capture sources' errors, which the node logs, counts and retries with
back-off: :class:`SourceUnavailable` (no such device or file, no permission, not decodable, a bad
calibration file, the frame size changed), :class:`SourceTimeout` (a live device delivered no
frame: unplugged; OpenCV's V4L2 backend itself waits up to 10 s per read), :class:`SourceEnded`.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from facediff_ros.core import images
from facediff_ros.core.camera import Intrinsics, check_camera_matrix
from facediff_ros.core.capture.sources import CapturedFrame, SourceEnded, SourceTimeout, SourceUnavailable

# A typical laptop webcam sees ~55-65 deg horizontally (USB ones up to ~70); 60 deg is the middle.
DEFAULT_HFOV_DEG = 60.0
# A video file whose container states no usable frame rate plays at this (Hz).
FALLBACK_FPS = 30.0
# Distortion models cv2.initUndistortRectifyMap applies as they are, with their coefficient counts.
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}
# Calibrated and streamed aspect ratios may differ this much (relative) and K still be scaled.
ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class WebcamConfig:
    """An OpenCV VideoCapture source (the capture node's ``video_*`` parameters)."""

    device: str = "0"                  # '0' = /dev/video0; a device path; or a video file
    calibration: str = ""              # camera_info YAML; '' = the default field of view
    hfov_deg: float = DEFAULT_HFOV_DEG  # horizontal field of view (deg) without a calibration
    loop: bool = True                  # video file: start again at the end
    realtime: bool = True              # video file: its own frame rate; False: as fast as read

    def __post_init__(self):
        if not isinstance(self.device, str) or not self.device.strip():
            raise ValueError(f"video_device: expected a device index ('0'), a device path or a video "
                             f"file, got {self.device!r}")
        if not (math.isfinite(self.hfov_deg) and 0.0 < self.hfov_deg < 180.0):
            raise ValueError(f"video_hfov_deg: expected a horizontal field of view in (0, 180) deg, "
                             f"got {self.hfov_deg!r}")


@dataclass(frozen=True)
class Calibration:
    """A camera_info YAML's contents (px, at the calibrated size)."""

    path: str
    width: int
    height: int
    K: np.ndarray                 # (3, 3)
    distortion_model: str
    D: np.ndarray                 # (n,) coefficients, n = 0 (none) or DISTORTION_MODELS[model]
    R: np.ndarray                 # (3, 3) rectification, identity when absent
    P: Optional[np.ndarray]       # (3, 4) projection, None when absent

    def rectifies(self) -> bool:
        """True when frames must be remapped: distortion, a rotation, or a new camera in P."""
        if np.any(self.D != 0) or not np.allclose(self.R, np.eye(3), atol=1e-9):
            return True
        return self.P is not None and not np.allclose(self.P[:, :3], self.K, rtol=1e-9, atol=1e-9)


def _matrix(doc: dict, key: str, size: Optional[int], path: str, required: bool) -> Optional[np.ndarray]:
    """``doc[key]['data']`` as ``size`` (None: any number of) finite floats; None when absent and
    not required."""
    entry = doc.get(key)
    if entry is None:
        if required:
            raise ValueError(f"{path}: {key}.data is missing")
        return None
    data = entry.get("data") if isinstance(entry, dict) else None
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{path}: {key} must be a mapping with a 'data' list, got {entry!r}")
    try:
        values = np.array([float(v) for v in data], np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {key}.data must hold numbers, got {data!r}") from None
    if size is not None and values.size != size:
        raise ValueError(f"{path}: {key}.data must hold {size} numbers, got {values.size}")
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: {key}.data must be finite, got {data!r}")
    return values


def load_calibration(path: str) -> Calibration:
    """Read a camera_info YAML as written by ROS ``camera_calibration`` (``ost.yaml``) /
    ``camera_calibration_parsers``: ``image_width``, ``image_height``, ``camera_matrix.data`` (9,
    row-major), ``distortion_model`` (plumb_bob or rational_polynomial; default plumb_bob),
    ``distortion_coefficients.data`` (5 or 8; absent or empty = none), optional
    ``rectification_matrix.data`` (9) and ``projection_matrix.data`` (12). ``camera_name`` is
    ignored. (The .ini format of camera_calibration_parsers is not read.)

    :raises ValueError: unreadable file, not YAML, a missing or malformed field (named), an
        implausible K (:func:`facediff_ros.core.camera.check_camera_matrix`), an unsupported
        distortion model.
    """
    import yaml  # PyYAML: installed with rclpy's wheels

    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the calibration file {p}: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{p}: expected a camera_info YAML mapping (image_width, camera_matrix, ...)")
    size = []
    for key in ("image_width", "image_height"):
        v = doc.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{p}: {key} must be a positive integer, got {v!r}")
        size.append(v)
    w, h = size
    K = _matrix(doc, "camera_matrix", 9, str(p), True).reshape(3, 3)
    try:
        check_camera_matrix(K, w, h)
    except ValueError as exc:
        raise ValueError(f"{p}: camera_matrix: {exc}") from None
    model = doc.get("distortion_model", "plumb_bob")
    D = _matrix(doc, "distortion_coefficients", None, str(p), False)
    D = np.zeros(0) if D is None else D
    if D.size and model not in DISTORTION_MODELS:
        raise ValueError(f"{p}: distortion_model {model!r} is not supported (supported: "
                         f"{', '.join(DISTORTION_MODELS)}); rectify the images first")
    if D.size and D.size != DISTORTION_MODELS[model]:
        raise ValueError(f"{p}: distortion_model {model} takes {DISTORTION_MODELS[model]} "
                         f"distortion_coefficients, got {D.size}")
    R = _matrix(doc, "rectification_matrix", 9, str(p), False)
    R = np.eye(3) if R is None else R.reshape(3, 3)
    P = _matrix(doc, "projection_matrix", 12, str(p), False)
    if P is not None:
        P = P.reshape(3, 4)
        try:
            check_camera_matrix(P[:, :3], w, h)
        except ValueError as exc:
            raise ValueError(f"{p}: projection_matrix: {exc}") from None
    return Calibration(str(p), w, h, K, str(model), D, R, P)


def _scaled_matrix(M: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """A 3x3 camera matrix for the image resized by (sx, sy), pixel-centre convention kept
    (as :meth:`Intrinsics.scaled`)."""
    out = M.astype(np.float64).copy()
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (M[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (M[1, 2] + 0.5) * sy - 0.5
    return out


def rectification(cal: Calibration, width: int, height: int
                  ) -> Tuple[Intrinsics, Optional[Tuple[np.ndarray, np.ndarray]]]:
    """The intrinsics of frames of ``width`` x ``height`` from a camera calibrated as ``cal``, and
    the ``cv2.remap`` maps that rectify them (None: the frames are used as they are).

    :raises ValueError: another aspect ratio than the calibrated one.
    """
    sx, sy = width / cal.width, height / cal.height
    if abs(sx / sy - 1.0) > ASPECT_TOLERANCE:
        raise ValueError(f"{cal.path} is a calibration for {cal.width}x{cal.height} but the frames are "
                         f"{width}x{height} (another aspect ratio): calibrate at this size")
    K = _scaled_matrix(cal.K, sx, sy)
    if not cal.rectifies():
        return Intrinsics.from_K(K, width, height), None
    import cv2
    new_K = K if cal.P is None else _scaled_matrix(cal.P[:, :3], sx, sy)
    maps = cv2.initUndistortRectifyMap(K, cal.D, cal.R, new_K, (int(width), int(height)), cv2.CV_16SC2)
    return Intrinsics.from_K(new_K, width, height), maps


def resolve_device(device: str) -> Tuple[str, object]:
    """(kind, what VideoCapture opens) for ``device``: ('device', index) for digits, ('device',
    path) for a /dev path or a character device, ('file', path) otherwise.

    :raises SourceUnavailable: no such device or file (the message names it).
    """
    d = device.strip()
    if re.fullmatch(r"\d+", d):
        path = f"/dev/video{int(d)}"
        # Checked on Linux only, where index N is /dev/videoN; elsewhere OpenCV decides.
        if sys.platform.startswith("linux") and not os.path.exists(path):
            raise SourceUnavailable(f"no webcam: video_device '{d}' is {path}, which does not exist "
                                    f"(no camera connected, or another index)")
        return "device", int(d)
    p = Path(d).expanduser()
    if not p.exists():
        what = "no webcam" if d.startswith("/dev/") else "no such video file"
        raise SourceUnavailable(f"{what}: video_device {d!r} does not exist")
    if d.startswith("/dev/") or stat.S_ISCHR(p.stat().st_mode):
        return "device", str(p)
    if not p.is_file():
        raise SourceUnavailable(f"video_device {d!r} is neither a device nor a video file")
    return "file", str(p)


def to_rgb(img: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or grey, uint8) as (H, W, 3) uint8 RGB.

    :raises SourceUnavailable: another layout or type.
    """
    import cv2
    if img.dtype == np.uint8:
        if img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        if img.ndim == 3 and img.shape[2] == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if img.ndim == 3 and img.shape[2] == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise SourceUnavailable(f"unsupported frame from OpenCV: {img.dtype} {img.shape}")


class WebcamSource:
    """Colour frames from a webcam or a video file (see the module docstring); no depth."""

    def __init__(self, config: WebcamConfig = WebcamConfig()):
        self.config = config
        self.kind = ""               # 'device' or 'file' once opened
        self.intrinsics: Optional[Intrinsics] = None
        self.intrinsics_from = ""    # 'calibration' or 'default_hfov' once opened
        self.intrinsics_note = ""    # the same in words, with the file or the angle
        self.fps = 0.0               # a file's frame rate (Hz); 0 for a live device
        self._target = None
        self._cap = None
        self._maps = None
        self._pending: Optional[np.ndarray] = None  # the frame read at open, delivered first
        self._index = 0              # frames delivered since open (a file: across loops)
        self._next_due = 0.0

    def describe(self) -> str:
        c = self.config
        what = f"video file {c.device}" if self.kind == "file" else f"webcam {c.device}"
        if self.intrinsics is None:
            return what
        i = self.intrinsics
        rate = f"@{self.fps:g} Hz" if self.kind == "file" else ""
        return f"{what}: colour {i.width}x{i.height}{rate}, no depth; intrinsics from {self.intrinsics_note}"

    def _capture(self):
        import cv2
        cap = cv2.VideoCapture(self._target)
        if not cap.isOpened():
            cap.release()
            if self.kind == "file":
                raise SourceUnavailable(f"cannot decode the video file {self._target} (not a video OpenCV "
                                        f"reads?)")
            where = self._target if isinstance(self._target, str) else f"/dev/video{self._target}"
            hint = ""
            if isinstance(where, str) and os.path.exists(where) and not os.access(where, os.R_OK | os.W_OK):
                hint = ": no permission (add the user to the 'video' group)"
            hint = hint or " (busy, or not a capture device)"
            raise SourceUnavailable(f"cannot open the webcam {where}{hint}")
        return cap

    def open(self) -> None:
        import cv2
        self.close()
        c = self.config
        self.kind, self._target = resolve_device(c.device)
        calibration = None
        if c.calibration:
            try:
                calibration = load_calibration(c.calibration)
            except ValueError as exc:
                raise SourceUnavailable(f"video_calibration: {exc}") from None
        cap = self._capture()
        try:
            ok, img = cap.read()
            if not ok or img is None:
                what = "the video file" if self.kind == "file" else "the webcam"
                raise SourceUnavailable(f"{what} {c.device} opened but delivered no frame")
            h, w = img.shape[:2]
            try:
                images.check_image_size(h, w, f"frames of {c.device}")
            except ValueError as exc:
                raise SourceUnavailable(str(exc)) from None
            if calibration is not None:
                try:
                    self.intrinsics, self._maps = rectification(calibration, w, h)
                except ValueError as exc:
                    raise SourceUnavailable(f"video_calibration: {exc}") from None
                self.intrinsics_from = "calibration"
                self.intrinsics_note = f"calibration {calibration.path}" + (
                    f" (frames rectified, {calibration.distortion_model})" if self._maps is not None else "")
            else:
                self.intrinsics = Intrinsics.from_fov(w, h, c.hfov_deg)
                self._maps = None
                self.intrinsics_from = "default_hfov"
                self.intrinsics_note = (f"the default horizontal field of view {c.hfov_deg:g} deg "
                                        f"(no calibration)")
            fps = float(cap.get(cv2.CAP_PROP_FPS)) if self.kind == "file" else 0.0
            usable = math.isfinite(fps) and 0 < fps <= 1000
            self.fps = fps if self.kind != "file" or usable else FALLBACK_FPS
        except BaseException:
            cap.release()
            raise
        self._cap = cap
        self._pending = img
        self._index = 0
        self._next_due = time.monotonic()

    def _rewind(self) -> np.ndarray:
        """The first frame of the file again (a fresh capture: seeking is unreliable in some containers)."""
        self._cap.release()
        self._cap = self._capture()
        ok, img = self._cap.read()
        if not ok or img is None:
            raise SourceUnavailable(f"the video file {self.config.device} delivered no frame after rewinding")
        return img

    def read(self) -> CapturedFrame:
        if self._cap is None:
            raise SourceUnavailable("read() before open()")
        if self._pending is not None:
            img, self._pending = self._pending, None
        else:
            ok, img = self._cap.read()
            if not ok or img is None:
                if self.kind != "file":
                    raise SourceTimeout(f"the webcam {self.config.device} delivered no frame (unplugged?)")
                if not self.config.loop:
                    raise SourceEnded(f"the video file {self.config.device} has ended")
                img = self._rewind()
        if self.kind == "file" and self.config.realtime:
            delay = self._next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # Late frames do not pile up: the schedule restarts from now when it falls behind.
            period = 1.0 / self.fps
            self._next_due = max(self._next_due + period, time.monotonic() - period)
        intr = self.intrinsics
        if img.shape[:2] != intr.shape:
            raise SourceUnavailable(f"the frame size changed from {intr.width}x{intr.height} to "
                                    f"{img.shape[1]}x{img.shape[0]}")
        rgb = to_rgb(img)
        if self._maps is not None:
            import cv2
            rgb = cv2.remap(rgb, self._maps[0], self._maps[1], cv2.INTER_LINEAR)
        stamp = self._index / self.fps if self.kind == "file" else time.time()
        number = self._index
        self._index += 1
        return CapturedFrame(color=rgb, depth=None, intrinsics=intr, depth_scale=0.0, stamp=stamp,
                             frame_number=number)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None
