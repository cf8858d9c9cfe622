"""Landmark accuracy against a recording's ground truth (the synthetic actor's), in plain numpy.

Inputs are the fields of a ``facediff_ros/FaceLandmarks`` message as arrays -- ``uv`` (478, 2) px,
``points`` (478, 3) m in the colour camera's optical frame (NaN where not valid), ``valid`` (478,)
-- and the dict of :func:`facediff_ros.synthetic.recording.load_ground_truth`. Two measures:

- **68-point subset** (:data:`MP_FOR_68`): MediaPipe landmarks with a Multi-PIE counterpart among
  the ground truth's 68 points. 2D error (px) against the projected ground-truth points where they
  are visible; 3D error (mm) of the lifted points against the ground-truth points where visible
  and the landmark has valid depth.
- **correspondence table** (optional, :class:`~facediff_ros.core.face.correspondence.Correspondence`
  with the :class:`~facediff_ros.core.face.morphable_model.MorphableModel`): the same errors over the
  table's *stable* mesh landmarks (iris points excluded: they lie on the eyeball, not the skin),
  against the table's points on the ground-truth mesh (identity, expression and pose of the frame).

Summary means are over all points of all frames (a frame with more visible points weighs more),
as the integration test has always reported them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.landmarks.face_mesh import NUM_LANDMARKS, NUM_MESH_LANDMARKS

# Multi-PIE 68 index (0-based) -> MediaPipe face mesh index, for points both define the same way:
# eye corners, nasion, nose tip, subnasale, mouth corners, lip midpoints, chin. Eyebrows and the
# jaw contour are left out: their definitions differ (contour points slide with the head's turn).
MP_FOR_68 = {36: 33, 39: 133, 42: 362, 45: 263, 27: 168, 30: 4, 33: 2, 48: 61, 54: 291, 51: 0,
             57: 17, 62: 13, 66: 14, 8: 152}
# Stamps are stored as float seconds (ms with 6 decimals in the recording): equal within 1 us.
STAMP_TOLERANCE_NS = 1_000


def ground_truth_intrinsics(gt: Dict[str, np.ndarray]) -> Intrinsics:
    """The colour camera of a ground truth dict (its ``intrinsics``: fx fy cx cy width height)."""
    fx, fy, cx, cy, width, height = np.asarray(gt["intrinsics"], np.float64)
    return Intrinsics(fx, fy, cx, cy, int(width), int(height))


class FrameLookup:
    """Ground-truth frame index of a message stamp: the frame recorded at that time, if any.

    :param gt: a :func:`~facediff_ros.synthetic.recording.load_ground_truth` dict (its ``timestamp`` (N,) s).
    :param tolerance_ns: largest stamp difference still taken as the same frame.
    """

    def __init__(self, gt: Dict[str, np.ndarray], tolerance_ns: int = STAMP_TOLERANCE_NS):
        t = np.asarray(gt["timestamp"], np.float64)
        if t.ndim != 1 or t.size == 0 or not np.isfinite(t).all():
            raise ValueError(f"gt['timestamp'] must be a non-empty finite (N,) array, got shape {t.shape}")
        self.stamps_ns = np.rint(t * 1e9).astype(np.int64)
        self.tolerance_ns = int(tolerance_ns)

    def __len__(self) -> int:
        return int(self.stamps_ns.size)

    def index_of(self, stamp_ns: int) -> Optional[int]:
        """The frame index whose stamp is within the tolerance of ``stamp_ns`` (ns), else None."""
        i = int(np.argmin(np.abs(self.stamps_ns - int(stamp_ns))))
        return i if abs(int(self.stamps_ns[i]) - int(stamp_ns)) < self.tolerance_ns else None


@dataclass(frozen=True)
class FrameErrors:
    """Errors of one frame's landmarks. Arrays hold one entry per compared point."""

    index: int                              # ground-truth frame index
    err_2d_px: np.ndarray                   # subset, visible points
    err_3d_mm: np.ndarray                   # subset, visible points with valid depth
    valid_fraction: float                   # of all 478 landmarks, valid depth
    table_err_2d_px: Optional[np.ndarray] = None   # stable table landmarks (None without a table)
    table_err_3d_mm: Optional[np.ndarray] = None   # stable table landmarks with valid depth


def _check_landmarks(uv, points, valid) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    uv = np.asarray(uv, np.float64)
    points = np.asarray(points, np.float64)
    valid = np.asarray(valid, bool)
    if uv.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"uv must have shape ({NUM_LANDMARKS}, 2) px, got {uv.shape}")
    if points.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"points must have shape ({NUM_LANDMARKS}, 3) m, got {points.shape}")
    if valid.shape != (NUM_LANDMARKS,):
        raise ValueError(f"valid must have shape ({NUM_LANDMARKS},), got {valid.shape}")
    return uv, points, valid


def frame_errors(uv, points, valid, gt: Dict[str, np.ndarray], index: int,
                 correspondence=None, model=None,
                 intrinsics: Optional[Intrinsics] = None) -> FrameErrors:
    """Errors of one frame's landmarks against ground-truth frame ``index``.

    :param uv: (478, 2) landmark pixel coordinates (FaceLandmarks ``u``, ``v``).
    :param points: (478, 3) lifted points, metres, colour optical frame; rows not ``valid`` are ignored.
    :param valid: (478,) bool, the landmark has a depth measurement.
    :param gt: a :func:`~facediff_ros.synthetic.recording.load_ground_truth` dict.
    :param index: the ground-truth frame (:meth:`FrameLookup.index_of` of the message stamp).
    :param correspondence: optional Correspondence table; needs ``model`` too.
    :param model: the MorphableModel the ground truth's identity/expression coefficients belong to.
    :param intrinsics: the colour camera (default: :func:`ground_truth_intrinsics`), for the table's 2D error.
    """
    uv, points, valid = _check_landmarks(uv, points, valid)
    n = len(gt["timestamp"])
    if not 0 <= int(index) < n:
        raise ValueError(f"index must be a ground-truth frame in [0, {n}), got {index}")
    if (correspondence is None) != (model is None):
        raise ValueError("correspondence and model: give both (table errors) or neither")
    i = int(index)
    k68 = np.array(list(MP_FOR_68))
    kmp = np.array(list(MP_FOR_68.values()))
    lm2 = np.asarray(gt["landmarks_2d"][i], np.float64)   # (68, 2) px
    lm3 = np.asarray(gt["landmarks_3d"][i], np.float64)   # (68, 3) m
    vis = np.asarray(gt["landmarks_visible"][i], bool)[k68]
    err2 = np.linalg.norm(uv[kmp] - lm2[k68], axis=1)[vis]
    ok = vis & valid[kmp]
    err3 = np.linalg.norm(points[kmp] - lm3[k68], axis=1)[ok] * 1000.0
    terr2 = terr3 = None
    if correspondence is not None:
        intr = intrinsics if intrinsics is not None else ground_truth_intrinsics(gt)
        R, t = np.asarray(gt["R"][i], np.float64), np.asarray(gt["t"][i], np.float64)
        v = model.vertices(gt["identity"], gt["expression"][i]) @ R.T + t  # (V, 3) camera frame
        ref = correspondence.points(v)  # (478, 3) camera frame
        stable = np.asarray(correspondence.stable, bool) & (np.arange(NUM_LANDMARKS) < NUM_MESH_LANDMARKS)
        terr2 = np.linalg.norm(uv - intr.project(ref), axis=1)[stable]
        terr3 = np.linalg.norm(points - ref, axis=1)[stable & valid] * 1000.0
    return FrameErrors(i, err2, err3, float(valid.mean()), terr2, terr3)


@dataclass(frozen=True)
class ErrorSummary:
    """Errors over a sequence: means over all compared points, 90th percentiles, per-frame means.

    Table fields are None without a correspondence table; a mean over no point is NaN.
    """

    frames: int
    mean_2d_px: float
    p90_2d_px: float
    mean_3d_mm: float
    p90_3d_mm: float
    valid_fraction: float                   # mean over frames of the fraction with valid depth
    per_frame_2d_px: np.ndarray             # (frames,) mean subset 2D error of each frame
    per_frame_3d_mm: np.ndarray             # (frames,)
    table_mean_2d_px: Optional[float] = None
    table_mean_3d_mm: Optional[float] = None
    table_per_frame_2d_px: Optional[np.ndarray] = None
    table_per_frame_3d_mm: Optional[np.ndarray] = None
    table_landmarks: Optional[int] = None   # stable mesh landmarks compared per frame

    def as_dict(self) -> Dict[str, object]:
        """Plain Python numbers and lists (JSON-ready)."""
        out = {}
        for k, v in self.__dict__.items():
            out[k] = v.tolist() if isinstance(v, np.ndarray) else v
        return out


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else float("nan")


def _p90(a: np.ndarray) -> float:
    return float(np.percentile(a, 90)) if a.size else float("nan")


def summarize(errors: Sequence[FrameErrors]) -> ErrorSummary:
    """Means and percentiles of a sequence of :func:`frame_errors` results (at least one frame)."""
    if len(errors) == 0:
        raise ValueError("errors: expected at least one FrameErrors, got none")
    e2 = np.concatenate([e.err_2d_px for e in errors])
    e3 = np.concatenate([e.err_3d_mm for e in errors])
    table = {}
    if all(e.table_err_2d_px is not None for e in errors):
        t2 = np.concatenate([e.table_err_2d_px for e in errors])
        t3 = np.concatenate([e.table_err_3d_mm for e in errors])
        table = dict(table_mean_2d_px=_mean(t2), table_mean_3d_mm=_mean(t3),
                     table_per_frame_2d_px=np.array([_mean(e.table_err_2d_px) for e in errors]),
                     table_per_frame_3d_mm=np.array([_mean(e.table_err_3d_mm) for e in errors]),
                     table_landmarks=int(errors[0].table_err_2d_px.size))
    return ErrorSummary(
        frames=len(errors), mean_2d_px=_mean(e2), p90_2d_px=_p90(e2), mean_3d_mm=_mean(e3),
        p90_3d_mm=_p90(e3), valid_fraction=float(np.mean([e.valid_fraction for e in errors])),
        per_frame_2d_px=np.array([_mean(e.err_2d_px) for e in errors]),
        per_frame_3d_mm=np.array([_mean(e.err_3d_mm) for e in errors]), **table)


def load_table():
    """(Correspondence, MorphableModel) when the table and the model cache are installed, else None."""
    try:
        from facediff_ros.core.face.correspondence import Correspondence
        corr = Correspondence.load()
    except (ImportError, ValueError):
        return None
    from facediff_ros.core.face.morphable_model import MorphableModel
    return corr, MorphableModel.load()
