"""facediff_ros/FaceModel <-> :class:`facediff_ros.core.fitting.tracker.FitResult`, and the fitted
mesh as a ``visualization_msgs/Marker`` TRIANGLE_LIST for rviz.

The message carries identity, expression (+ names), head pose, residual, quality and the lock
flag; the result's ``terms_used``, ``timings`` and ``stats`` do not travel (the fitting node
reports them on ``/diagnostics``). Pose: ``x_cam = R x_model + t`` becomes ``head_pose`` with
position ``t`` (m) and orientation the unit quaternion of R (x, y, z, w; w >= 0).
"""

from __future__ import annotations

import array
from typing import Optional, Sequence

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker

from facediff_ros.adapters.landmarks import _points  # the fast Point builder (see its docstring)
from facediff_ros.core.face.assets import ICT_COMMIT
from facediff_ros.core.fitting.tracker import FitResult
from facediff_ros.msg import FaceModel

MODEL_ID = "ict-facekit-light"
MODEL_VERSION = ICT_COMMIT
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> unit quaternion (x, y, z, w) with w >= 0 (Shepperd's method)."""
    R = np.asarray(R, np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-300))
        q = np.zeros(4)
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        q[3] = (R[k, j] - R[j, k]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q: Sequence[float]) -> np.ndarray:
    """Quaternion (x, y, z, w) (normalised here) -> (3, 3) rotation.

    :raises ValueError: a zero or non-finite quaternion.
    """
    x, y, z, w = np.asarray(q, np.float64)
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"head_pose.orientation must be a non-zero finite quaternion, got {tuple(q)}")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _float32_array(values) -> array.array:
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def to_msg(result: FitResult, header: Header, expression_names: Sequence[str]) -> FaceModel:
    """The FaceModel of a fit, with ``header`` (the camera frame's stamp and optical frame id).

    :raises ValueError: ``expression_names`` not as long as ``result.expression``.
    """
    if len(expression_names) != len(result.expression):
        raise ValueError(f"expression_names has {len(expression_names)} names for "
                         f"{len(result.expression)} weights")
    msg = FaceModel()
    msg.header = header
    msg.model_id, msg.model_version = MODEL_ID, MODEL_VERSION
    msg.identity = _float32_array(result.identity)
    msg.expression = _float32_array(result.expression)
    msg.expression_names = [str(n) for n in expression_names]
    qx, qy, qz, qw = quaternion_from_matrix(result.R).tolist()
    t = np.asarray(result.t, np.float64).tolist()
    msg.head_pose = Pose()
    msg.head_pose.position = Point(x=t[0], y=t[1], z=t[2])
    msg.head_pose.orientation = Quaternion(x=qx, y=qy, z=qz, w=qw)
    rms = float(result.residual_rms)
    # float32 field: NaN for anything it cannot hold (inf, or finite but beyond float32's range).
    msg.residual_rms = rms if abs(rms) <= _FLOAT32_MAX else float("nan")
    msg.quality = float(result.quality)
    msg.identity_locked = bool(result.identity_locked)
    return msg


def from_msg(msg: FaceModel) -> FitResult:
    """The FitResult a FaceModel describes (``ok`` True; ``terms_used``, timings and stats empty).

    :raises ValueError: another model, expression weights and names of different lengths, or an
        invalid orientation.
    """
    if msg.model_id != MODEL_ID:
        raise ValueError(f"FaceModel.model_id {msg.model_id!r} is not {MODEL_ID!r}")
    if len(msg.expression) != len(msg.expression_names):
        raise ValueError(f"FaceModel: {len(msg.expression)} expression weights but "
                         f"{len(msg.expression_names)} names")
    o, p = msg.head_pose.orientation, msg.head_pose.position
    R = matrix_from_quaternion((o.x, o.y, o.z, o.w))
    return FitResult(True, "tracking" if msg.identity_locked else "initialising", "",
                     np.array(msg.identity, np.float32), np.array(msg.expression, np.float32), R,
                     np.array([p.x, p.y, p.z], np.float64), float(msg.residual_rms), float(msg.quality),
                     bool(msg.identity_locked), ())


def mesh_marker(vertices: np.ndarray, triangles: np.ndarray, header: Header, namespace: str = "face",
                color: Optional[Sequence[float]] = (0.85, 0.7, 0.6, 1.0)) -> Marker:
    """A TRIANGLE_LIST Marker of a mesh given in the header's frame (camera optical frame, m).

    :param vertices: (V, 3) positions.
    :param triangles: (F, 3) vertex ids; rviz draws each consecutive triple of points.
    """
    v = np.asarray(vertices, np.float64)
    tris = np.asarray(triangles, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or tris.ndim != 2 or tris.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3) and triangles (F, 3), got {v.shape} and {tris.shape}")
    m = Marker()
    m.header = header
    m.ns = namespace
    m.id = 0
    m.type = Marker.TRIANGLE_LIST
    m.action = Marker.ADD
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = 1.0
    r, g, b, a = color
    m.color = ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a))
    m.points = _points(v[tris.reshape(-1)].tolist())  # (F * 3, 3) corners in order
    return m
