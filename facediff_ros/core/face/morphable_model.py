"""ICT-FaceKit Light as a linear morphable model in metres, in numpy and torch.

    vertices = neutral + identity @ identity_basis + expression @ expression_basis

Model frame: ICT-FaceKit's axes turned 180 degrees about x and scaled from centimetres to metres,
so that x points to the image's right, y down and the face looks along -z. Placed with the rigid
pose ``x_cam = R x + t`` (R = I, t = (0, 0, 0.6)) in a REP-103 optical camera frame (x right,
y down, z forward), the face looks at the camera from 0.6 m.

Identity coefficients are N(0, 1)-scaled (upstream samples them from a standard normal; the
identity OBJs are the neutral mesh plus one unit of each mode). Expression weights are the
ARKit-named blendshape weights in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import json

import numpy as np

from facediff_ros.core.face import assets
from facediff_ros.core.tensors import is_torch

CM_TO_M = 0.01
# ICT (y up, face towards +z) -> model frame (y down, face towards -z): rotation of pi about x.
AXES = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


@dataclass(frozen=True)
class Region:
    """A named part of the ICT topology: half-open vertex and polygon index ranges."""

    name: str
    vertices: Tuple[int, int]
    polygons: Tuple[int, int]


# From the upstream README's topology table (its inclusive ranges made half-open).
REGIONS: Dict[str, Region] = {r.name: r for r in [
    Region("face", (0, 9409), (0, 9230)),
    Region("head_neck", (9409, 11248), (9230, 11144)),
    Region("mouth_socket", (11248, 13294), (11144, 13226)),
    Region("eye_socket_left", (13294, 13678), (13226, 13630)),
    Region("eye_socket_right", (13678, 14062), (13630, 14034)),
    Region("gums_tongue", (14062, 17039), (14034, 17006)),
    Region("teeth", (17039, 21451), (17006, 21496)),
    Region("eyeball_left", (21451, 23021), (21496, 23094)),
    Region("eyeball_right", (23021, 24591), (23094, 24692)),
    Region("lacrimal_fluid_left", (24591, 24795), (24692, 24855)),
    Region("lacrimal_fluid_right", (24795, 24999), (24855, 25018)),
    Region("eye_blend_left", (24999, 25023), (25018, 25033)),
    Region("eye_blend_right", (25023, 25047), (25033, 25048)),
    Region("eye_occlusion_left", (25047, 25199), (25048, 25176)),
    Region("eye_occlusion_right", (25199, 25351), (25176, 25304)),
    Region("eyelashes_left", (25351, 26035), (25304, 25844)),
    Region("eyelashes_right", (26035, 26719), (25844, 26384)),
    # Face area details: the narrow face area (forehead to chin, no ears/neck).
    Region("narrow_face", (0, 6706), (0, 6560)),
    # Eyeball details.
    Region("sclera_left", (21451, 22221), (21496, 22296)),
    Region("iris_left", (22221, 23021), (22296, 23094)),
    Region("sclera_right", (23021, 23791), (23094, 23894)),
    Region("iris_right", (23791, 24591), (23894, 24692)),
]}

# What a camera sees of a head: skin, the inside of the mouth, the eyes.
DEFAULT_REGIONS = ("face", "head_neck", "mouth_socket", "eyeball_left", "eyeball_right")


def _check_coeffs(name: str, x, width_max: int, lo: Optional[float], hi: Optional[float]):
    """Validate a coefficient array (numpy or torch): shape (..., K) with K <= width_max, finite."""
    shape = tuple(x.shape)
    if len(shape) == 0 or shape[-1] > width_max or shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., K) with 1 <= K <= {width_max}, got {shape}")
    if is_torch(x):
        import torch
        if not torch.is_floating_point(x):
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        bad = ~torch.isfinite(x.detach())
        if bool(bad.any()):
            raise ValueError(f"{name} holds NaN or infinite values")
        if lo is not None and not x.requires_grad:
            if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
                raise ValueError(f"{name} must lie in [{lo}, {hi}], got [{float(x.min())}, {float(x.max())}]")
        return
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or infinite values")
    if lo is not None and x.size and (x.min() < lo - 1e-6 or x.max() > hi + 1e-6):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got [{x.min()}, {x.max()}]")


class MorphableModel:
    """The ICT-FaceKit Light model (26,719 vertices, 100 identity modes, 53 expressions).

    Attributes:
        neutral: (V, 3) float32 neutral mesh, metres, model frame.
        identity_basis: (100, V, 3) float32 metres per unit coefficient.
        expression_basis: (E, V, 3) float32 metres per unit weight.
        expression_names: the E ARKit-style names, in basis order.
        uvs: (T, 2) float32 texture coordinates (u right, v up), shared by all shapes.
        polygons: list of (vertex ids, uv ids) per upstream polygon, see :meth:`triangles`.
    """

    def __init__(self, data: Dict[str, np.ndarray]):
        to_model = AXES * CM_TO_M  # (3, 3)
        self.neutral = (data["neutral"].astype(np.float32) @ to_model.T).astype(np.float32)
        self.identity_basis = (data["identity_deltas"] @ to_model.T).astype(np.float32)
        self.expression_basis = (data["expression_deltas"] @ to_model.T).astype(np.float32)
        self.expression_names = [str(n) for n in data["expression_names"]]
        self.uvs = data["uvs"].astype(np.float32)
        self._face_vertices = data["face_vertices"].astype(np.int64)
        self._face_uvs = data["face_uvs"].astype(np.int64)
        self._face_offsets = data["face_offsets"].astype(np.int64)
        self.metadata = json.loads(str(data["vertex_indices_json"]))
        self._torch_cache: Dict[Tuple[str, str], object] = {}

    @classmethod
    def load(cls, cache_dir: Optional[Path] = None) -> "MorphableModel":
        """Load from the verified asset cache (``make setup`` builds it)."""
        return cls(assets.load_cache(cache_dir))

    # ---- sizes and names ---------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return int(self.neutral.shape[0])

    @property
    def num_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def num_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def num_polygons(self) -> int:
        return int(self._face_offsets.shape[0] - 1)

    def expression_index(self, name: str) -> int:
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise ValueError(f"unknown expression {name!r}; known: {self.expression_names}") from None

    def expression_vector(self, weights: Dict[str, float]) -> np.ndarray:
        """(E,) float32 weight vector from a name -> weight mapping (others 0)."""
        out = np.zeros(self.num_expression, dtype=np.float32)
        for name, w in weights.items():
            out[self.expression_index(name)] = w
        return out

    @property
    def landmarks68(self) -> np.ndarray:
        """Vertex ids of the Multi-PIE 68 landmarks (upstream README / vertex_indices.json)."""
        return np.asarray(self.metadata["idx_to_landmark_verts"], dtype=np.int64)

    # ---- topology ----------------------------------------------------------------------------
    def polygon_ids(self, regions: Iterable[str] = DEFAULT_REGIONS) -> np.ndarray:
        """Sorted upstream polygon ids of the named regions."""
        ids = []
        for name in regions:
            if name not in REGIONS:
                raise ValueError(f"unknown region {name!r}; known: {sorted(REGIONS)}")
            a, b = REGIONS[name].polygons
            ids.append(np.arange(a, b))
        return np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)

    def vertex_ids(self, regions: Iterable[str] = DEFAULT_REGIONS) -> np.ndarray:
        ids = [np.arange(*REGIONS[n].vertices) for n in regions]
        return np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)

    def triangles(self, regions: Iterable[str] = DEFAULT_REGIONS
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fan-triangulate the polygons of the named regions.

        Returns:
            tris: (F, 3) int64 vertex ids (into the full vertex array).
            tri_uvs: (F, 3, 2) float32 texture coordinates of each corner.
            tri_polygon: (F,) int64 upstream polygon id of each triangle.
        """
        tris, uv_ids, poly = [], [], []
        offs = self._face_offsets
        pids = self.polygon_ids(regions)
        sizes = offs[pids + 1] - offs[pids]
        for n in np.unique(sizes):
            sel = pids[sizes == n]
            corner = offs[sel][:, None] + np.arange(n)[None, :]  # (P, n)
            fv, fu = self._face_vertices[corner], self._face_uvs[corner]
            for k in range(1, n - 1):  # fan (0, k, k+1)
                tris.append(fv[:, [0, k, k + 1]])
                uv_ids.append(fu[:, [0, k, k + 1]])
                poly.append(sel)
        tris = np.concatenate(tris)
        order = np.lexsort((np.concatenate([np.full(len(p), i) for i, p in enumerate(poly)]),
                            np.concatenate(poly)))
        tris, uv_ids, poly = tris[order], np.concatenate(uv_ids)[order], np.concatenate(poly)[order]
        return tris, self.uvs[uv_ids], poly

    # ---- geometry ----------------------------------------------------------------------------
    def vertices(self, identity=None, expression=None, vertex_ids: Optional[np.ndarray] = None,
                 check_range: bool = True):
        """Vertex positions (metres, model frame) for identity/expression coefficients.

        Args:
            identity: (..., K) N(0, 1) coefficients for the first K <= 100 modes, or None (mean face).
            expression: (..., E') weights in [0, 1] for the first E' <= 53 expressions, or None.
            vertex_ids: optional (M,) subset of vertices to evaluate (fitting uses a few thousand).
            check_range: reject expression weights outside [0, 1] (fitters pass False and clamp).

        Returns:
            (..., V, 3) float32 -- a torch tensor (differentiable) if a torch input was given,
            else a numpy array. Batch dimensions of identity and expression broadcast.

        Raises:
            ValueError: wrong shape, non-float dtype, NaN/inf, or out-of-range weights.
        """
        use_torch = is_torch(identity) or is_torch(expression)
        if identity is not None:
            _check_coeffs("identity", identity, self.num_identity, None, None)
        if expression is not None:
            _check_coeffs("expression", expression, self.num_expression,
                          0.0 if check_range else None, 1.0 if check_range else None)
        if use_torch:
            return self._vertices_torch(identity, expression, vertex_ids)
        sel = slice(None) if vertex_ids is None else np.asarray(vertex_ids)
        out = self.neutral[sel]  # (M, 3)
        for coeff, basis in ((identity, self.identity_basis), (expression, self.expression_basis)):
            if coeff is None:
                continue
            coeff = np.asarray(coeff, dtype=np.float32)
            k = coeff.shape[-1]
            b = basis[:k, sel].reshape(k, -1)  # (K, M*3)
            out = out + (coeff @ b).reshape(coeff.shape[:-1] + out.shape[-2:])  # (..., M, 3)
        return np.asarray(out, dtype=np.float32)

    def _tensor(self, name: str, device, vertex_ids) -> "object":
        import torch
        # Keyed by the subset's contents (an id() could be reused by a later array), so a fitter
        # that passes the same subset every frame pays the gather once.
        subset = None if vertex_ids is None else np.asarray(vertex_ids, dtype=np.int64).tobytes()
        key = (name, str(device), subset)
        t = self._torch_cache.get(key)
        if t is None:
            arr = getattr(self, name)
            if vertex_ids is not None:
                arr = arr[:, vertex_ids] if arr.ndim == 3 else arr[vertex_ids]
            t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
            # Keep the full bases and the newest subset only.
            self._torch_cache = {k: v for k, v in self._torch_cache.items() if k[2] is None or k[2] == key[2]}
            self._torch_cache[key] = t
        return t

    def _vertices_torch(self, identity, expression, vertex_ids):
        import torch
        ref = identity if is_torch(identity) else expression
        dev = ref.device
        out = self._tensor("neutral", dev, vertex_ids)  # (M, 3)
        for coeff, name in ((identity, "identity_basis"), (expression, "expression_basis")):
            if coeff is None:
                continue
            coeff = torch.as_tensor(coeff, dtype=torch.float32, device=dev)
            basis = self._tensor(name, dev, vertex_ids)  # (B, M, 3)
            k = coeff.shape[-1]
            flat = basis[:k].reshape(k, -1)  # (K, M*3)
            out = out + (coeff @ flat).reshape(*coeff.shape[:-1], *out.shape[-2:])  # (..., M, 3)
        return out


def vertex_normals(vertices, triangles: np.ndarray):
    """Area-weighted unit vertex normals; numpy or torch (differentiable).

    Args:
        vertices: (..., V, 3) positions.
        triangles: (F, 3) vertex ids.
    Returns:
        (..., V, 3) unit normals (zero for vertices no triangle uses). With the model's winding
        and frame, normals of the face point out of the head.
    """
    if is_torch(vertices):
        import torch
        tri = torch.as_tensor(triangles, device=vertices.device, dtype=torch.long)
        a, b, c = (vertices[..., tri[:, i], :] for i in range(3))  # (..., F, 3)
        fn = torch.cross(b - a, c - a, dim=-1)
        n = torch.zeros_like(vertices)
        for i in range(3):
            n = n.index_add(-2, tri[:, i], fn)
        return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    v = np.asarray(vertices)
    tri = np.asarray(triangles)
    flat = v.reshape(-1, v.shape[-2], 3)  # (B, V, 3)
    n = np.zeros_like(flat)
    for b in range(flat.shape[0]):
        a, bb, c = flat[b, tri[:, 0]], flat[b, tri[:, 1]], flat[b, tri[:, 2]]
        fn = np.cross(bb - a, c - a)  # (F, 3), length = 2 * area
        for i in range(3):
            np.add.at(n[b], tri[:, i], fn)
    n = n.reshape(v.shape)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def rotation_matrix(rvec) -> np.ndarray:
    """Rodrigues: axis-angle (3,) in radians -> (3, 3) rotation matrix."""
    rvec = np.asarray(rvec, dtype=np.float64).reshape(3)
    theta = np.linalg.norm(rvec)
    if theta < 1e-12:
        return np.eye(3)
    k = rvec / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * (kx @ kx)


def transform(vertices: np.ndarray, R: np.ndarray, t: Sequence[float]) -> np.ndarray:
    """Rigid pose: x_cam = R x + t for (..., V, 3) vertices (metres)."""
    R = np.asarray(R, dtype=np.float32)
    t = np.asarray(t, dtype=np.float32)
    if R.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"R must be (3, 3) and t (3,), got {R.shape} and {t.shape}")
    return vertices @ R.T + t
