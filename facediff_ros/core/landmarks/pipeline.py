"""One frame set (colour + aligned depth + colour CameraInfo) -> the landmarks of one face, without ROS.

Colour-only (a webcam: ``depth`` None): the same without the depth checks and the lifting; every
landmark has its ``uv``, ``points`` NaN and ``valid`` false (FaceLandmarks' "no measurement").

The per-frame work of the landmark node, in one place so that the node, the benchmark and the
demo run the same code::

    decode + validate   sizes checked before any pixel is read (images.check_image_size), the
                        buffers viewed as arrays (no copy for rgb8 / 16UC1), CameraInfo's K
                        checked (camera.check_camera_matrix), colour/depth/CameraInfo sizes
                        compared, depth checked to hold a measurement
    face_mesh           MediaPipe face mesh (face_mesh.FaceMesh), then face_mesh.select_face
    lifting             lifting.lift_landmarks on the depth in its own units (uint16 mm or
                        float m): only the landmark windows are read, the image is not converted;
                        when no landmark gets depth and no pixel is in the lifting range (e.g. all
                        65535 mm), the frame is dropped as ``no_depth_in_range``

Anything unusable raises :class:`FrameDropped` with a ``reason`` (:data:`DROP_REASONS`) that
keys the node's drop counters; nothing here logs or counts. Inputs are plain values:
``images.ImageFields`` (a sensor_msgs/Image's fields, ``data`` any bytes-like object) and
``images.CameraInfoFields``; the adapters build them from messages without copying the pixels.

Frames: ``uv`` in the colour image (px, u right, v down, pixel centres at integers); ``points``
in the colour camera's REP-103 optical frame (m).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from facediff_ros.core import images
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.landmarks.face_mesh import (NUM_LANDMARKS, SELECTION_RULES, FaceMesh, FaceMeshConfig,
                                                   select_face)
from facediff_ros.core.landmarks.lifting import LiftingConfig, depth_unit_m, lift_landmarks

# Per-frame stages, in order, as reported in timings and diagnostics (``message`` and ``publish``
# belong to the node).
STAGES = ("decode", "face_mesh", "lifting")
# Why a frame set was dropped (the node counts ``drop_<reason>``).
DROP_REASONS = ("bad_color", "bad_depth", "bad_camera_info", "image_too_large", "size_mismatch",
                "empty_depth", "no_depth_in_range")


class FrameDropped(ValueError):
    """A frame set that cannot be processed; ``reason`` is one of :data:`DROP_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Landmarks:
    """The landmarks of one face: what facediff_ros/FaceLandmarks carries, as arrays.

    ``uv`` (N, 2) float32 px in the colour image; ``points`` (N, 3) float64 m in the colour
    optical frame, finite where ``valid`` (N,) bool is set (NaN elsewhere as published);
    ``presence`` in [0, 1]; ``bbox`` (x_offset, y_offset, width, height) px; the image size in
    px. N is :data:`~facediff_ros.core.landmarks.face_mesh.NUM_LANDMARKS` (478).

    :raises ValueError: shapes that disagree, N other than 478, a valid point that is not finite,
        presence outside [0, 1].
    """

    uv: np.ndarray
    points: np.ndarray
    valid: np.ndarray
    presence: float
    bbox: Tuple[int, int, int, int]
    image_width: int
    image_height: int

    def __post_init__(self):
        uv = np.asarray(self.uv, np.float32)
        points = np.asarray(self.points, np.float64)
        valid = np.asarray(self.valid, bool)
        if uv.shape != (NUM_LANDMARKS, 2) or points.shape != (NUM_LANDMARKS, 3) \
                or valid.shape != (NUM_LANDMARKS,):
            raise ValueError(f"landmarks: expected uv ({NUM_LANDMARKS}, 2), points ({NUM_LANDMARKS}, 3) "
                             f"and valid ({NUM_LANDMARKS},), got {uv.shape}, {points.shape}, {valid.shape}")
        if not np.isfinite(points[valid]).all():
            bad = np.flatnonzero(valid & ~np.isfinite(points).all(axis=1))
            raise ValueError(f"landmarks: points {bad[:10].tolist()} are marked valid but not finite")
        if not 0.0 <= float(self.presence) <= 1.0:
            raise ValueError(f"landmarks: presence must be in [0, 1], got {self.presence}")
        if len(self.bbox) != 4:
            raise ValueError(f"landmarks: bbox must be (x_offset, y_offset, width, height), got {self.bbox}")
        object.__setattr__(self, "uv", uv)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "valid", valid)
        object.__setattr__(self, "presence", float(self.presence))
        object.__setattr__(self, "bbox", tuple(int(b) for b in self.bbox))
        object.__setattr__(self, "image_width", int(self.image_width))
        object.__setattr__(self, "image_height", int(self.image_height))


@dataclass
class FrameResult:
    """What :meth:`LandmarkPipeline.process` made of one frame set."""

    landmarks: Optional[Landmarks]  # None: no face in the image
    rgb: np.ndarray                 # (H, W, 3) uint8 decoded colour image (may share the message's memory)
    intrinsics: Intrinsics          # of the colour image
    timings_s: Dict[str, float] = field(default_factory=dict)  # stage (STAGES) -> seconds; lifting
    #                                                            only when a face was found


@dataclass(frozen=True)
class PipelineConfig:
    """Options of :class:`LandmarkPipeline`: face mesh, lifting and which face to keep."""

    face_mesh: FaceMeshConfig = field(default_factory=FaceMeshConfig)
    lifting: LiftingConfig = field(default_factory=LiftingConfig)
    # 'largest' (landmark bounding-box area) or 'closest' (median depth), see select_face.
    face_selection: str = SELECTION_RULES[0]

    def __post_init__(self):
        if self.face_selection not in SELECTION_RULES:
            raise ValueError(f"face_selection: expected one of {SELECTION_RULES}, "
                             f"got {self.face_selection!r}")


def decode(color: images.ImageFields, depth: Optional[images.ImageFields], info: images.CameraInfoFields,
           depth_info_size: Optional[Tuple[int, int]] = None
           ) -> Tuple[np.ndarray, Optional[np.ndarray], Intrinsics]:
    """Check one frame set and view it as arrays; nothing reaches a library before it passes.

    :param color: colour image fields (any of images.COLOR_ENCODINGS).
    :param depth: aligned depth image fields (16UC1/mono16 mm or 32FC1 m); None: colour only.
    :param info: the colour CameraInfo.
    :param depth_info_size: (width, height) of the depth CameraInfo, when one has arrived.
    :returns: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) in its own units (uint16 mm, 0 = none,
        or float32 m, NaN = none; None when not given), the colour intrinsics.
    :raises FrameDropped: see :data:`DROP_REASONS`.
    """
    # Sizes first, from the declared fields: a 32767 px side would abort the process in OpenCV.
    inputs = [("colour image", color, "bad_color")]
    if depth is not None:
        inputs.append(("depth image", depth, "bad_depth"))
    for what, img, reason in inputs:
        try:
            images.check_image_size(img.height, img.width, what)
        except images.ImageTooLarge as exc:
            raise FrameDropped("image_too_large", str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise FrameDropped(reason, str(exc)) from None
    try:
        rgb = images.to_rgb8(images.fields_to_array(color), color.encoding)
    except (ValueError, TypeError) as exc:
        raise FrameDropped("bad_color", f"colour image: {exc}") from None
    if depth is None:
        return rgb, None, _intrinsics(info, rgb)
    try:
        d = images.fields_to_array(depth)
        if depth.encoding not in images.DEPTH_ENCODINGS:
            raise ValueError(f"encoding: {depth.encoding!r} is not a depth encoding; supported: "
                             f"{', '.join(images.DEPTH_ENCODINGS)}")
    except (ValueError, TypeError) as exc:
        raise FrameDropped("bad_depth", f"depth image: {exc}") from None
    intr = _intrinsics(info, rgb)
    if d.shape != rgb.shape[:2]:
        raise FrameDropped("size_mismatch", f"depth {d.shape[1]}x{d.shape[0]} is not aligned to colour "
                           f"{rgb.shape[1]}x{rgb.shape[0]} (subscribe to aligned_depth_to_color)")
    if depth_info_size is not None and tuple(depth_info_size) != (d.shape[1], d.shape[0]):
        raise FrameDropped("size_mismatch", f"depth CameraInfo {depth_info_size[0]}x{depth_info_size[1]} "
                           f"does not match the depth image {d.shape[1]}x{d.shape[0]}")
    if d.dtype == np.uint16:
        empty = not d.any()
    else:
        with np.errstate(invalid="ignore"):
            empty = not (np.isfinite(d) & (d > 0)).any()
    if empty:
        raise FrameDropped("empty_depth", "the depth image has no valid pixel (all 0 / NaN)")
    return rgb, d, intr


def _intrinsics(info: images.CameraInfoFields, rgb: np.ndarray) -> Intrinsics:
    """The colour CameraInfo's intrinsics, checked against the colour image's size."""
    try:
        intr = images.camera_info_to_intrinsics(info.height, info.width, info.k)
    except (ValueError, TypeError) as exc:
        raise FrameDropped("bad_camera_info", f"colour CameraInfo: {exc}") from None
    if rgb.shape[:2] != intr.shape:
        raise FrameDropped("size_mismatch", f"colour image {rgb.shape[1]}x{rgb.shape[0]} but its "
                           f"CameraInfo says {intr.width}x{intr.height}")
    return intr


def _no_depth_in_range(lifting: LiftingConfig) -> FrameDropped:
    return FrameDropped("no_depth_in_range", f"no depth sample within [{lifting.min_depth_m}, "
                        f"{lifting.max_depth_m}] m (lifting's range): every landmark would be invalid")


def depth_has_samples(depth: np.ndarray, lifting: LiftingConfig) -> Optional[bool]:
    """True: some pixel lies in lifting's depth range; False: measurements, none in range; None: none.

    For uint16 millimetres both tests are one pass each over the raw image (0.05 ms at 640x480),
    not a conversion to metres.
    """
    unit = depth_unit_m(depth)
    lo = max(lifting.min_depth_m / unit, np.nextafter(0.0, 1.0))
    hi = lifting.max_depth_m / unit
    if depth.dtype == np.uint16:
        if not depth.any():
            return None
        lo_i, hi_i = int(np.ceil(lo)), int(np.floor(min(hi, 65535)))
        if lo_i > hi_i:
            return False
        # d in [lo, hi] <=> (d - lo) mod 2^16 <= hi - lo (below lo wraps to a large value): one
        # subtraction and one min instead of two comparisons, an "and" and an "any".
        return bool(np.min(depth - np.uint16(lo_i)) <= hi_i - lo_i)
    with np.errstate(invalid="ignore"):
        if not (np.isfinite(depth) & (depth > 0)).any():
            return None
        return bool(((depth >= lo) & (depth <= hi)).any())


class LandmarkPipeline:
    """The landmark node's per-frame work: :meth:`process` one frame set at a time.

    Holds the MediaPipe graph (tracking state: one pipeline per camera stream; not thread-safe).
    ``lifting`` and ``face_selection`` may be changed between frames; the face mesh options are
    fixed at construction. Call :meth:`close` (or use ``with``) to free the graph.
    """

    def __init__(self, config: PipelineConfig = PipelineConfig()):
        self.config = config
        self.face_mesh = FaceMesh(config.face_mesh)

    @property
    def lifting(self) -> LiftingConfig:
        return self.config.lifting

    def reconfigure(self, lifting: Optional[LiftingConfig] = None,
                    face_selection: Optional[str] = None) -> None:
        """New lifting options and/or face selection rule from the next frame on."""
        self.config = PipelineConfig(self.config.face_mesh, lifting or self.config.lifting,
                                     face_selection or self.config.face_selection)

    def process(self, color: images.ImageFields, depth: Optional[images.ImageFields],
                info: images.CameraInfoFields, depth_info_size: Optional[Tuple[int, int]] = None
                ) -> FrameResult:
        """Landmarks of one frame set (``landmarks`` None when no face is found).

        ``depth`` None (colour only): no lifting; ``points`` NaN and ``valid`` false for every
        landmark, no ``lifting`` timing; face_selection 'closest' falls back to 'largest'.

        :raises FrameDropped: unusable input (see :func:`decode`); the graph never sees it.
        """
        cfg = self.config
        t0 = time.perf_counter()
        rgb, depth_img, intr = decode(color, depth, info, depth_info_size)
        t1 = time.perf_counter()
        faces = self.face_mesh.process(rgb)
        t2 = time.perf_counter()
        timings = {"decode": t1 - t0, "face_mesh": t2 - t1}
        if not faces:
            return FrameResult(None, rgb, intr, timings)
        face = faces[select_face(faces, cfg.face_selection, depth_img)]
        if depth_img is None:
            n = len(face.uv)
            lm = Landmarks(face.uv, np.full((n, 3), np.nan), np.zeros(n, bool), face.presence, face.bbox,
                           intr.width, intr.height)
            return FrameResult(lm, rgb, intr, timings)
        points, valid = lift_landmarks(face.uv, depth_img, intr, cfg.lifting)
        if not valid.any() and not depth_has_samples(depth_img, cfg.lifting):
            # Depth is there but none of it in range (e.g. all 65535 mm): 478 invalid landmarks
            # would say "face, no depth at it", which is not what happened. Checked here, only
            # when no landmark got depth, rather than on every frame before the face mesh.
            raise _no_depth_in_range(cfg.lifting)
        lm = Landmarks(face.uv, points, valid, face.presence, face.bbox, intr.width, intr.height)
        timings["lifting"] = time.perf_counter() - t2
        return FrameResult(lm, rgb, intr, timings)

    def close(self) -> None:
        self.face_mesh.close()

    def __enter__(self) -> "LandmarkPipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
