"""MediaPipe face mesh landmark -> ICT-FaceKit surface point: the table, and how it is built.

Each of MediaPipe's 478 landmarks (0.10.21, refined: 468 mesh points + 10 iris points) maps to a
fixed point on the model's surface, stored topology-only -- three vertex ids and barycentric
weights -- so the point follows any identity, expression and pose:

    point_l(vertices) = sum_k bary[l, k] * vertices[vertex_ids[l, k]]

Mesh landmarks 0-467 lie on the ``face`` region's skin; iris landmarks 468-477 on the ``iris_left``
/ ``iris_right`` discs (the 4 rim points and the centre of each iris; the disc sits ~1.5 mm
behind the cornea that the camera sees).

**How the table is built** (offline, ``python -m facediff_ros.synthetic.correspondence_builder
--out PATH``):
random subjects (identity ~ 0.8 N(0, 1), procedural textures, mostly near-neutral expressions,
head yaw +-35 deg, pitch +-20 deg, roll +-12 deg, 0.55-0.7 m away, random light and background)
are rendered at 480x480 (30 deg field of view) with the face filling ~2/3 of the frame;
MediaPipe (static image mode) finds the 478 landmarks;
each landmark's pixel ray is intersected with the rendered triangle under it, and the hit
(triangle + barycentrics) is carried to the same surface point of the *mean neutral face*
(topology makes that exact). Per landmark, the geometric median of those canonical points is
snapped back to the nearest point of the target surface (face skin or iris) of the mean face.

Held-out renders measure each landmark's **residual**: the distance (mm) between MediaPipe's
landmark lifted to 3D (its ray hitting the true mesh) and the table's point on the true mesh.
Landmarks on the face contour slide with the pose (the silhouette moves over the skin) and have
larger residuals. ``weight = 1 / (1 + (r / r0)^2)`` with r the median residual and r0 =
``WEIGHT_R0_MM``; ``stable`` marks landmarks whose median residual is below ``STABLE_MM`` and
which MediaPipe placed on the mesh in nearly all held-out renders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from facediff_ros.core.landmarks.face_mesh import IRIS, NUM_LANDMARKS  # noqa: F401 (IRIS: the table's API)
from facediff_ros.core.tensors import is_torch

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "data" / "mediapipe_correspondence.npz"
WEIGHT_R0_MM = 2.0  # residual at which a landmark's weight halves
STABLE_MM = 2.5     # median held-out residual below which a landmark counts as stable
STABLE_HIT_RATE = 0.95  # ... and the fraction of held-out renders where it landed on the mesh
SKIN_REGIONS = ("face",)
IRIS_REGIONS = ("iris_left", "iris_right")
FORMAT = 1


@dataclass(frozen=True)
class Correspondence:
    """The landmark -> surface table (see the module docstring).

    Attributes:
        vertex_ids: (478, 3) int64 vertex ids of the triangle each landmark lies on.
        bary: (478, 3) float32 barycentric weights (>= 0, summing to 1).
        weight: (478,) float32 fitting weight in (0, 1] from the held-out residual.
        stable: (478,) bool, see the module docstring.
        residual_mm: (478,) float32 median held-out residual in millimetres.
        metadata: how the table was built (renders, detection rate, residual summaries, versions).
    """

    vertex_ids: np.ndarray
    bary: np.ndarray
    weight: np.ndarray
    stable: np.ndarray
    residual_mm: np.ndarray
    metadata: Dict = field(default_factory=dict)

    def __post_init__(self):
        n = NUM_LANDMARKS
        checks = (("vertex_ids", (n, 3)), ("bary", (n, 3)), ("weight", (n,)), ("stable", (n,)),
                  ("residual_mm", (n,)))
        for name, shape in checks:
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {np.shape(getattr(self, name))}")
        b = np.asarray(self.bary, dtype=np.float64)
        if not np.all(np.isfinite(b)) or b.min() < -1e-6 or np.abs(b.sum(1) - 1).max() > 1e-4:
            raise ValueError("bary must be finite, >= 0 and sum to 1 per landmark")

    @classmethod
    def load(cls, path: Optional[Path] = None) -> "Correspondence":
        """Read a table written by :meth:`save` (default: the one shipped with the package)."""
        path = Path(path) if path is not None else DEFAULT_PATH
        if not path.is_file():
            raise ValueError(f"no correspondence table at {path}; build one with "
                             f"`python -m facediff_ros.synthetic.correspondence_builder --out {path}`")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["metadata_json"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: format {meta.get('format')}, expected {FORMAT}")
            return cls(z["vertex_ids"].astype(np.int64), z["bary"].astype(np.float32),
                       z["weight"].astype(np.float32), z["stable"].astype(bool),
                       z["residual_mm"].astype(np.float32), meta)

    def save(self, path: Path, extra: Optional[Dict[str, np.ndarray]] = None) -> None:
        """Write the table (and optional extra per-landmark arrays) as a compressed npz."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(vertex_ids=self.vertex_ids.astype(np.int32), bary=self.bary.astype(np.float32),
                      weight=self.weight.astype(np.float32), stable=self.stable.astype(bool),
                      residual_mm=self.residual_mm.astype(np.float32),
                      metadata_json=np.array(json.dumps(self.metadata, sort_keys=True)))
        arrays.update(extra or {})
        np.savez_compressed(path, **arrays)

    def points(self, vertices):
        """(..., V, 3) vertices (numpy or torch, any frame) -> (..., 478, 3) landmark points."""
        if is_torch(vertices):
            import torch
            ids = torch.as_tensor(self.vertex_ids, device=vertices.device)
            b = torch.as_tensor(self.bary, dtype=vertices.dtype, device=vertices.device)
            corners = vertices[..., ids.reshape(-1), :].reshape(*vertices.shape[:-2], NUM_LANDMARKS, 3, 3)
            return (corners * b[..., None]).sum(-2)
        v = np.asarray(vertices)
        if v.ndim < 2 or v.shape[-1] != 3:
            raise ValueError(f"vertices must have shape (..., V, 3), got {v.shape}")
        corners = v[..., self.vertex_ids, :]  # (..., 478, 3, 3)
        return np.einsum("...lkc,lk->...lc", corners, self.bary.astype(v.dtype))
