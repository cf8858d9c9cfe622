"""RGB-D rendering of a triangle mesh: depth, mask, triangle id, barycentrics, normals, UV, colour.

All geometry is in the REP-103 optical camera frame (x right, y down, z forward, metres); the
caller applies the head pose first (``morphable_model.transform``). Pixels follow the OpenCV
convention of :mod:`facediff_ros.core.camera`: pixel (u, v) has its centre at integer
coordinates, so a pixel's ray is ((u - cx) / fx, (v - cy) / fy, 1) and any principal point works.

Two interchangeable backends produce the same buffers (``test_renderer`` compares them):

* ``"raster"`` -- a vectorised numpy z-buffer rasteriser: triangles are projected; a float32
  pre-cull drops those whose bounding box holds no pixel centre (off-screen or sub-pixel) before
  the exact float64 set-up; boxes of up to 4 x 4 pixels are tested on fixed stencils of pixel
  centres, larger ones are expanded pixel by pixel; screen-space edge functions keep the centres
  inside, and the nearest candidate per pixel wins (one ``np.minimum.at`` over packed
  ``depth | triangle`` keys). Only the winners get exact, perspective-correct barycentrics, and
  smooth normals are computed for the winners' vertices only. What depends on the triangles
  alone (vertex-to-triangle incidence) is kept by the Renderer while the same triangles come back.
* ``"raycast"`` -- open3d's ``RaycastingScene`` (Embree BVH, CPU). Rebuilding the BVH costs
  ~0.25 us per triangle on this machine, which dominates small images.

``"auto"`` (the default) picks ``"raster"``: it was faster for the face model at both 128x128 and
640x480 (``python -m facediff_ros.bench.renderer_bench`` prints the numbers).

Texture convention: an (Ht, Wt, 3) image in the model's UV layout, u to the right and v up as in
OBJ files, so texture coordinate (u, v) lies at column u * Wt - 0.5 and row (1 - v) * Ht - 0.5
(pixel centres); lookups are bilinear and clamp at the border.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics

_NO_HIT = np.iinfo(np.int64).max
# Triangles with a corner closer than this (m) are not rasterised (no near-plane clipping).
RASTER_NEAR_M = 1e-3
# Inclusive edge test: pixel centres exactly on a shared edge go to either triangle, never neither.
_EDGE_EPS = 1e-5
# Pixel candidates rasterised at once (memory: ~80 bytes each).
_MAX_CANDIDATES = 2_000_000
# Slack (px) of the float32 pre-cull of bounding boxes: far above float32 rounding of pixel
# coordinates (up to ~1e5 px), so it only lets a few extra triangles through to the exact test.
_CULL_SLACK_PX = 0.01
# Bounding boxes up to s x s pixels are tested on a fixed s x s stencil of pixel centres (no
# per-candidate expansion); larger ones are expanded pixel by pixel.
_STENCIL_SIZES = (1, 2, 4)
BACKENDS = ("auto", "raster", "raycast")


@dataclass(frozen=True)
class Lighting:
    """Shading of an albedo: Lambert + ambient, or second-order spherical harmonics.

    Lambert: shade = ambient + diffuse * max(0, n . l), with ``direction`` l pointing from the
    surface towards the light in the camera frame (the default light sits above and in front of
    the face, -y being up and -z towards the camera).

    Spherical harmonics (used when ``sh`` is given): shade_c(n) = sum_k sh[k, c] Y_k(n) with the
    real SH basis in the order Y00, Y1-1 (y), Y10 (z), Y11 (x), Y2-2 (xy), Y2-1 (yz), Y20
    (3z^2 - 1), Y21 (xz), Y22 (x^2 - y^2) and the usual constants (0.282095, 0.488603, 1.092548,
    0.315392, 0.546274); the coefficients are irradiance coefficients (cosine lobe already
    applied), as in 3DMM fitting work.
    """

    direction: Tuple[float, float, float] = (0.3, -0.5, -1.0)
    ambient: float = 0.35
    diffuse: float = 0.65
    sh: Optional[np.ndarray] = None  # (9, 3) or (9,) irradiance coefficients per channel

    def shade(self, normals: np.ndarray) -> np.ndarray:
        """(N, 3) unit normals (camera frame) -> (N, 3) float32 shading factors per channel."""
        n = np.asarray(normals, dtype=np.float32)
        if self.sh is not None:
            sh = np.asarray(self.sh, dtype=np.float32)
            if sh.shape == (9,):
                sh = np.repeat(sh[:, None], 3, axis=1)
            if sh.shape != (9, 3) or not np.all(np.isfinite(sh)):
                raise ValueError(f"Lighting.sh must be finite with shape (9,) or (9, 3), got {sh.shape}")
            return sh_basis(n) @ sh
        d = np.asarray(self.direction, dtype=np.float32)
        norm = float(np.linalg.norm(d))
        if d.shape != (3,) or not np.isfinite(norm) or norm == 0:
            raise ValueError(f"Lighting.direction must be a finite non-zero 3-vector, got {self.direction}")
        lam = np.maximum(n @ (d / norm), 0.0)
        s = self.ambient + self.diffuse * lam  # (N,)
        return np.repeat(s[:, None], 3, axis=1).astype(np.float32)


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals -> (N, 9) real spherical-harmonics basis values (order in :class:`Lighting`)."""
    x, y, z = normals[:, 0], normals[:, 1], normals[:, 2]
    one = np.ones_like(x)
    return np.stack([0.282095 * one, 0.488603 * y, 0.488603 * z, 0.488603 * x,
                     1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * z * z - 1),
                     1.092548 * x * z, 0.546274 * (x * x - y * y)], axis=1).astype(np.float32)


@dataclass
class RenderBuffers:
    """Per-pixel outputs of :meth:`Renderer.render`, all of shape (height, width, ...)."""

    depth: np.ndarray      # (H, W) float32 z-depth in metres, 0 where no surface
    mask: np.ndarray       # (H, W) bool, True where a triangle was hit
    tri_id: np.ndarray     # (H, W) int32 index into the triangles passed, -1 where empty
    bary: np.ndarray       # (H, W, 3) float32 weights of the triangle's 3 corners (0 where empty)
    normals: np.ndarray    # (H, W, 3) float32 unit normals, camera frame, facing the camera
    uv: Optional[np.ndarray] = None     # (H, W, 2) float32 texture coordinates, with tri_uvs
    color: Optional[np.ndarray] = None  # (H, W, 3) float32 shaded colour in [0, 1], with an albedo


@dataclass
class _Hits:
    """Flat list of covered pixels: flat pixel index, triangle id, barycentrics, z-depth."""

    pix: np.ndarray    # (M,) int64 index into H * W
    tri: np.ndarray    # (M,) int64 index into the triangles passed
    bary: np.ndarray   # (3, M) float64 weights of corners 0, 1, 2
    depth: np.ndarray  # (M,) float64 metres
    corners: np.ndarray  # (3, M) int64 vertex ids of the triangle
    px: np.ndarray     # (M,) int64 pixel column
    py: np.ndarray     # (M,) int64 pixel row


class Renderer:
    """Renders meshes given in the camera frame into :class:`RenderBuffers` for fixed intrinsics.

    The topology of the last few triangle arrays rendered is kept at module level (copies,
    compared on each call), so frames of one mesh pay for it once, whichever Renderer draws them.
    """

    def __init__(self, intrinsics: Intrinsics, threads: int = 2, backend: str = "auto"):
        if not isinstance(intrinsics, Intrinsics):
            raise ValueError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.intrinsics = intrinsics
        self.threads = int(threads)
        self.backend = "raster" if backend == "auto" else backend
        self._rays = None  # (H, W, 6) open3d tensor, built on the first raycast

    # ---- public --------------------------------------------------------------------------------
    def render(self, vertices, triangles, tri_uvs=None, texture=None, vertex_colors=None,
               lighting: Optional[Lighting] = None, smooth_normals: bool = True,
               cull_backfaces: bool = True) -> RenderBuffers:
        """Render a mesh.

        Args:
            vertices: (V, 3) float positions in metres, camera frame.
            triangles: (F, 3) integer vertex ids, F >= 1. A triangle's front side is the one its
                normal (b - a) x (c - a) points to; the model's faces point out of the head.
            tri_uvs: optional (F, 3, 2) texture coordinates of each corner (u right, v up).
            texture: optional (Ht, Wt, 3) albedo image, uint8 or float in [0, 1]; needs tri_uvs.
            vertex_colors: optional (V, 3) albedo in [0, 1] per vertex (instead of a texture).
            lighting: shading of the albedo; default :class:`Lighting`().
            smooth_normals: barycentric interpolation of area-weighted vertex normals (True) or
                flat face normals (False).
            cull_backfaces: skip triangles facing away from the camera (faster; the first hit of
                a closed surface is a front face anyway).

        Returns:
            :class:`RenderBuffers`; ``uv`` is set when tri_uvs is given, ``color`` when a texture
            or vertex colours are given.

        Raises:
            ValueError: naming the argument, for a wrong shape or dtype, NaN/inf, an empty mesh,
                triangle ids out of range, a texture without tri_uvs, or a texture together with
                vertex colours.
        """
        v, tris = _check_mesh(vertices, triangles)
        uvs, tex, vcol = _check_appearance(tri_uvs, texture, vertex_colors, len(v), len(tris))
        geo = _Geometry(v, _topology(tris))
        cand = np.flatnonzero(geo.front) if cull_backfaces else np.arange(len(tris))
        if self.backend == "raster":
            hits = self._raster(geo, cand)
        else:
            hits = self._raycast(geo, cand)
        return self._buffers(hits, geo, uvs, tex, vcol, lighting or Lighting(), smooth_normals)

    # ---- backends: both return the covered pixels with exact barycentrics and depth -------------
    def _raster(self, geo: "_Geometry", cand: np.ndarray) -> _Hits:
        K = self.intrinsics
        H, W = K.shape
        z = geo.vT[2].astype(np.float64)
        ok_z = z > RASTER_NEAR_M
        iz = 1.0 / np.where(ok_z, z, 1.0)
        pu = geo.vT[0] * iz * K.fx + K.cx  # (V,) float64 pixel coordinates
        pv = geo.vT[1] * iz * K.fy + K.cy
        # Pre-cull in float32 (half the memory traffic of the exact test below): triangles whose
        # bounding box holds no pixel centre (off-screen or between pixel centres) and those with
        # a corner too close to the camera (NaN coordinates fail every comparison) go first.
        pu32 = np.where(ok_z, pu, np.nan).astype(np.float32)
        pv32 = np.where(ok_z, pv, np.nan).astype(np.float32)
        t = np.take(geo.tT, cand, axis=1)  # (3, F')
        bu, bv = np.take(pu32, t), np.take(pv32, t)  # (3, F') each
        lo = np.maximum(np.ceil(bu.min(axis=0) - _CULL_SLACK_PX), 0)
        hi = np.minimum(np.floor(bu.max(axis=0) + _CULL_SLACK_PX), W - 1)
        ok = hi >= lo
        lo = np.maximum(np.ceil(bv.min(axis=0) - _CULL_SLACK_PX), 0)
        hi = np.minimum(np.floor(bv.max(axis=0) + _CULL_SLACK_PX), H - 1)
        sel = np.flatnonzero(ok & (hi >= lo))
        # The exact float64 test on what is left (a superset of the triangles it keeps).
        cand, t = cand[sel], np.take(t, sel, axis=1)
        u0, u1, u2 = np.take(pu, t)  # (F',) each
        w0, w1, w2 = np.take(pv, t)
        xlo = np.maximum(np.ceil(np.minimum(np.minimum(u0, u1), u2)), 0)
        xhi = np.minimum(np.floor(np.maximum(np.maximum(u0, u1), u2)), W - 1)
        ylo = np.maximum(np.ceil(np.minimum(np.minimum(w0, w1), w2)), 0)
        yhi = np.minimum(np.floor(np.maximum(np.maximum(w0, w1), w2)), H - 1)
        area = (u1 - u0) * (w2 - w0) - (u2 - u0) * (w1 - w0)
        keep = np.flatnonzero((xhi >= xlo) & (yhi >= ylo) & (area != 0))
        if keep.size == 0:
            return _empty_hits()
        if keep.size < len(cand):
            cand, t = cand[keep], np.take(t, keep, axis=1)
            u0, u1, u2, w0, w1, w2 = (np.take(x, keep) for x in (u0, u1, u2, w0, w1, w2))
            xlo, ylo, xhi, yhi, area = (np.take(x, keep) for x in (xlo, ylo, xhi, yhi, area))
        inv_area = 1.0 / area
        # Barycentrics l1, l2 and 1/z are affine in the offset (ox, oy) from the bounding box's
        # first pixel centre: coefficients per triangle in float64 (then float32), small offsets
        # per pixel.
        dx, dy = xlo - u0, ylo - w0
        iz0, iz1, iz2 = np.take(iz, t)
        coef = np.empty((9, len(cand)), np.float64)  # (9, F') l1, l2, 1/z: d/dox, d/doy, value
        coef[0] = (w2 - w0) * inv_area
        coef[1] = (u0 - u2) * inv_area
        coef[2] = coef[0] * dx + coef[1] * dy
        coef[3] = (w0 - w1) * inv_area
        coef[4] = (u1 - u0) * inv_area
        coef[5] = coef[3] * dx + coef[4] * dy
        d1, d2 = iz1 - iz0, iz2 - iz0
        for c in range(3):  # 1/z = iz0 + l1 (iz1 - iz0) + l2 (iz2 - iz0)
            coef[6 + c] = coef[c] * d1 + coef[3 + c] * d2
        coef[8] += iz0
        xlo, ylo = xlo.astype(np.int64), ylo.astype(np.int64)
        box = _Boxes(coef.astype(np.float32), xlo, ylo, xhi.astype(np.int64) - xlo + 1,
                     yhi.astype(np.int64) - ylo + 1, ylo * W + xlo)
        zbuf = np.full(H * W, _NO_HIT, dtype=np.int64)
        # Small boxes on fixed stencils, the rest pixel by pixel; at most _MAX_CANDIDATES pixel
        # candidates at a time (a few big triangles near the camera must not exhaust memory).
        # The z-buffer carries over, and the minimum does not depend on the order of the work.
        side = np.maximum(box.nx, box.ny)
        done = np.zeros(len(cand), bool)
        for size in _STENCIL_SIZES:
            tri = np.flatnonzero(~done & (side <= size))
            done[tri] = True
            step = max(1, _MAX_CANDIDATES // (size * size))
            for first in range(0, len(tri), step):
                _raster_stencil(zbuf, W, box, tri[first:first + step], size)
        tri = np.flatnonzero(~done)
        if tri.size:
            ends = np.cumsum(np.take(box.nx, tri) * np.take(box.ny, tri))
            first = 0
            while first < len(tri):
                budget = (ends[first - 1] if first else 0) + _MAX_CANDIDATES
                last = max(first + 1, int(np.searchsorted(ends, budget, side="right")))
                _raster_boxes(zbuf, W, box, tri[first:last])
                first = last
        hit_pix = np.flatnonzero(zbuf != _NO_HIT)
        win = np.take(zbuf, hit_pix) & 0xFFFFFFFF
        corners = np.take(t, win, axis=1)  # (3, M)
        py, px = np.divmod(hit_pix, W)
        bary, depth = _perspective_bary(pu, pv, z, corners, px, py)
        return _Hits(hit_pix, np.take(cand, win), bary, depth, corners, px, py)

    def _raycast(self, geo: "_Geometry", cand: np.ndarray) -> _Hits:
        import open3d as o3d  # imported here: the raster backend does not need it

        if self._rays is None:
            K = self.intrinsics
            u, vv = K.pixel_grid()
            rays = np.zeros(K.shape + (6,), dtype=np.float32)  # (H, W, 6) origin 0, direction z = 1
            rays[..., 3] = (u - K.cx) / K.fx
            rays[..., 4] = (vv - K.cy) / K.fy
            rays[..., 5] = 1.0
            self._rays = o3d.core.Tensor(rays)
        if cand.size == 0:
            return _empty_hits()
        scene = o3d.t.geometry.RaycastingScene(nthreads=self.threads)
        tris = np.ascontiguousarray(np.take(geo.tT, cand, axis=1).T, dtype=np.uint32)  # (F', 3)
        scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(geo.vT.T)), o3d.core.Tensor(tris))
        res = scene.cast_rays(self._rays, nthreads=self.threads)
        t_hit = res["t_hit"].numpy().reshape(-1)
        pix = np.flatnonzero(np.isfinite(t_hit))
        prim = np.take(res["primitive_ids"].numpy().reshape(-1), pix).astype(np.int64)
        puv = np.take(res["primitive_uvs"].numpy().reshape(-1, 2), pix, axis=0).astype(np.float64)
        # Embree's (u, v) are the weights of corners 1 and 2; with direction z = 1, t is z-depth.
        bary = np.stack([1.0 - puv[:, 0] - puv[:, 1], puv[:, 0], puv[:, 1]])  # (3, M)
        tri = np.take(cand, prim)
        py, px = np.divmod(pix, self.intrinsics.width)
        return _Hits(pix, tri, bary, np.take(t_hit, pix).astype(np.float64), np.take(geo.tT, tri, axis=1),
                     px, py)

    # ---- shading, shared by the backends ------------------------------------------------------------
    def _buffers(self, hits: _Hits, geo: "_Geometry", uvs, tex, vcol, lighting: Lighting,
                 smooth_normals: bool) -> RenderBuffers:
        # Per-pixel values are computed channel-major, (C, M): numpy's inner loops then run along
        # the M pixels instead of over 2 or 3 channels.
        K = self.intrinsics
        H, W = K.shape
        b = hits.bary.astype(np.float32)  # (3, M)
        corners = hits.corners  # (3, M)
        if smooth_normals:
            vn, local = geo.vertex_normals_at(corners)  # (3, Vn), (3, M)
            n = sum(b[k] * np.take(vn, local[k], axis=1) for k in range(3))  # (3, M)
        else:
            n = np.take(geo.face_normals, hits.tri, axis=1).astype(np.float32)  # (3, M)
        # Face the camera: the pixel's ray d = ((u - cx) / fx, (v - cy) / fy, 1) points away from it.
        dx = (hits.px - K.cx) / K.fx
        dy = (hits.py - K.cy) / K.fy
        facing = n[0] * dx + n[1] * dy + n[2]
        norm = np.sqrt(np.einsum("cm,cm->m", n, n))
        n *= (np.where(facing > 0, -1.0, 1.0) / np.maximum(norm, 1e-12)).astype(np.float32)
        n = np.ascontiguousarray(n.T)  # (M, 3): the layout of the image (and of BLAS in shade())

        uv_hit = albedo = None
        if uvs is not None:
            tuv = np.take(uvs, hits.tri, axis=0)  # (M, 3, 2)
            uv_hit = np.stack([b[0] * tuv[:, 0, c] + b[1] * tuv[:, 1, c] + b[2] * tuv[:, 2, c]
                               for c in range(2)])  # (2, M)
        if tex is not None:
            albedo = sample_texture(tex, uv_hit.T)  # (M, 3)
        elif vcol is not None:
            albedo = sum(b[k][:, None] * np.take(vcol, corners[k], axis=0) for k in range(3))  # (M, 3)

        def scatter(values, fill=0):
            """(M,) or (M, C) values of the hit pixels -> (H, W) or (H, W, C) image."""
            out = np.full((H * W,) + values.shape[1:], fill, dtype=values.dtype)
            # One C-channel pixel as one opaque item: a single copy per pixel (2x faster).
            item = np.dtype((np.void, values.itemsize * int(np.prod(values.shape[1:]))))
            out.view(item).reshape(-1)[hits.pix] = np.ascontiguousarray(values).view(item).reshape(-1)
            return out.reshape((H, W) + values.shape[1:])

        color = None
        if albedo is not None:
            shaded = albedo * lighting.shade(n)  # (M, 3)
            color = scatter(np.clip(shaded, 0.0, 1.0, out=shaded).astype(np.float32, copy=False))
        return RenderBuffers(
            depth=scatter(hits.depth.astype(np.float32)),
            mask=scatter(np.ones(len(hits.pix), bool), False),
            tri_id=scatter(hits.tri.astype(np.int32), -1),
            bary=scatter(b.T), normals=scatter(n),
            uv=None if uv_hit is None else scatter(uv_hit.T.astype(np.float32, copy=False)), color=color)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an (Ht, Wt, C) float32 texture at (N, 2) coordinates (u right, v up).

    Coordinate (u, v) sits at column u * Wt - 0.5 and row (1 - v) * Ht - 0.5 (texel centres);
    samples clamp at the border. OpenCV's remap does the work (8x faster than numpy gathers
    here); it places samples with 1/32-texel precision. Returns (N, C) float32.
    """
    import cv2

    n = len(uv)
    Ht, Wt = texture.shape[:2]
    cols = 1024  # remap maps must stay below 32767 pixels per side
    rows = max(1, -(-n // cols))
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n] = uv[:, 0] * Wt - 0.5
    my[:n] = (1.0 - uv[:, 1]) * Ht - 0.5
    out = cv2.remap(texture, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * cols, -1)[:n].astype(np.float32, copy=False)


# ---- helpers ---------------------------------------------------------------------------------------
class _Topology:
    """What depends on the triangles only, kept by a Renderer between frames of the same mesh.

    ``incident[j, i]`` is the j-th triangle around vertex i, in the order in which
    ``np.bincount`` over the corner list (all corners 0, then 1, then 2) meets them, so sums over
    it reproduce that order exactly; unused slots hold F, the id of an all-zero padding normal.
    """

    def __init__(self, tris: np.ndarray):
        self.tris = tris.copy()  # (F, 3) int64, for the equality test of later calls
        self.tT = np.ascontiguousarray(tris.T)  # (3, F) int64
        n_faces = len(tris)
        idx = self.tT.reshape(-1)  # (3F,) corner list
        n_v = int(idx.max()) + 1
        order = np.argsort(idx * len(idx) + np.arange(len(idx)))  # stable: the keys are distinct
        self.degree = np.bincount(idx, minlength=n_v)  # (Vt,) triangles per vertex
        vert = np.take(idx, order)
        rank = np.arange(len(idx)) - np.take(np.cumsum(self.degree) - self.degree, vert)
        self.incident = np.full((int(self.degree.max()), n_v), n_faces, np.int32)  # (D, Vt)
        self.incident[rank, vert] = order % n_faces
        # Slots below this hold a triangle for ~all vertices: summed densely, the rest sparsely.
        self.dense_slots = int(np.searchsorted(np.cumsum(np.bincount(self.degree)) / n_v, 0.99)) + 1

    def matches(self, tris: np.ndarray) -> bool:
        return self.tris.shape == tris.shape and bool(np.array_equal(self.tris, tris))


# Topologies of the meshes rendered last, most recent first (a few meshes; ~4 MB each for the face).
_TOPOLOGIES: list = []
_TOPOLOGY_CACHE_SIZE = 4
_TOPOLOGY_LOCK = threading.Lock()  # Renderers of several threads share the cache


def _topology(tris: np.ndarray) -> _Topology:
    """The cached topology of ``tris`` (F, 3) int64, built on first use."""
    with _TOPOLOGY_LOCK:
        for i, topo in enumerate(_TOPOLOGIES):
            if topo.matches(tris):
                _TOPOLOGIES.insert(0, _TOPOLOGIES.pop(i))
                return topo
    topo = _Topology(tris)  # outside the lock: a few ms
    with _TOPOLOGY_LOCK:
        _TOPOLOGIES.insert(0, topo)
        del _TOPOLOGIES[_TOPOLOGY_CACHE_SIZE:]
    return topo


class _Geometry:
    """Per-render triangle data shared by the backends and the shading (computed once)."""

    def __init__(self, v: np.ndarray, topo: _Topology):
        self.topo = topo
        self.vT = np.ascontiguousarray(v.T)  # (3, V) float32
        self.tT = topo.tT  # (3, F) int64
        n_faces = self.tT.shape[1]
        p = np.take(self.vT, self.tT, axis=1)  # (3 coords, 3 corners, F)
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]  # (3, F)
        # (b - a) x (c - a), length twice the area; np.cross is slower on these layouts. One
        # zero column after the F normals pads the incidence table of the topology.
        fn = np.empty((3, n_faces + 1), p.dtype)
        fn[:, n_faces] = 0
        np.subtract(e1[1] * e2[2], e1[2] * e2[1], out=fn[0, :n_faces])
        np.subtract(e1[2] * e2[0], e1[0] * e2[2], out=fn[1, :n_faces])
        np.subtract(e1[0] * e2[1], e1[1] * e2[0], out=fn[2, :n_faces])
        self._fn_padded = fn
        self.face_normals = fn[:, :n_faces]  # (3, F)
        # Front-facing: the normal points towards the camera at the origin.
        self.front = np.einsum("cf,cf->f", self.face_normals, p[:, 0]) < 0

    def vertex_normals_at(self, corners: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Area-weighted unit normals (as morphable_model.vertex_normals) of the vertices used.

        Only the vertices listed in ``corners`` (3, M) are computed: (3, Vn) float32 normals and
        (3, M) indices into them. The sums run in float64 in np.bincount's order.
        """
        topo = self.topo
        used = np.zeros(len(topo.degree), bool)
        used[corners.reshape(-1)] = True
        need = np.flatnonzero(used)  # (Vn,)
        pos = np.empty(len(used), np.int64)
        pos[need] = np.arange(len(need))
        # Slots in order, each added in float64 (a reduction over a leading axis runs in order).
        dense = np.take(topo.incident[:topo.dense_slots], need, axis=1)  # (D, Vn) triangle ids
        n = np.add.reduce(np.take(self._fn_padded, dense, axis=1), axis=1, dtype=np.float64)  # (3, Vn)
        deg = np.take(topo.degree, need)
        for j in range(topo.dense_slots, int(deg.max()) if len(need) else 0):
            sub = np.flatnonzero(deg > j)  # the few vertices with more triangles
            n[:, sub] += np.take(self._fn_padded, np.take(topo.incident[j], need[sub]), axis=1)
        nv = np.ascontiguousarray(n.T)  # (Vn, 3): einsum's summation order as for all vertices
        n /= np.maximum(np.sqrt(np.einsum("vc,vc->v", nv, nv)), 1e-12)
        return n.astype(np.float32), np.take(pos, corners)


@dataclass
class _Boxes:
    """Triangles that passed the raster's culling: interpolation coefficients and bounding boxes."""

    coef: np.ndarray  # (9, T) float32 l1, l2, 1/z as c0 * ox + c1 * oy + c2 of the offset from (xlo, ylo)
    xlo: np.ndarray   # (T,) int64 first pixel column of the box
    ylo: np.ndarray   # (T,) int64 first pixel row
    nx: np.ndarray    # (T,) int64 box width in pixels (>= 1)
    ny: np.ndarray    # (T,) int64 box height in pixels (>= 1)
    first: np.ndarray  # (T,) int64 flat index of the box's first pixel, ylo * width + xlo


def _depth_test(zbuf, k, ox, oy, cf, pix):
    """Write covered candidates into ``zbuf``: triangles ``k``, offsets ``ox``, ``oy`` (float32) from
    their boxes' first pixel, 1/z coefficients ``cf`` (3, N), flat pixel indices ``pix``."""
    depth = 1.0 / (cf[0] * ox + cf[1] * oy + cf[2])
    # Nearest per pixel: positive float32 bits order like the floats, and the low bits hold
    # the triangle, so one integer minimum picks depth first and breaks ties by order.
    np.minimum.at(zbuf, pix, (depth.view(np.int32).astype(np.int64) << 32) | k)


@functools.lru_cache(maxsize=16)
def _stencil(size: int, width: int) -> Tuple[np.ndarray, ...]:
    """Offsets of a size x size block of pixel centres, as (n, 1) columns: ox, oy (float32 and
    int64) and the flat pixel offset oy * width + ox."""
    oy, ox = np.divmod(np.arange(size * size), size)
    out = (ox.astype(np.float32)[:, None], oy.astype(np.float32)[:, None], ox[:, None], oy[:, None],
           oy * width + ox)
    for a in out:
        a.flags.writeable = False  # shared by every call (lru_cache)
    return out


def _raster_stencil(zbuf, width, box: _Boxes, tri, size: int):
    """Rasterise triangles ``tri`` whose boxes fit in size x size pixels into ``zbuf``."""
    # (n, 1) stencil offsets against (T,) triangles: the long axis last keeps numpy's inner loops long.
    ox, oy, oxi, oyi, off = _stencil(size, width)
    cf = np.take(box.coef, tri, axis=1)  # (9, T)
    l1 = cf[0] * ox + cf[1] * oy + cf[2]  # (n, T)
    l2 = cf[3] * ox + cf[4] * oy + cf[5]
    inside = (l1 >= -_EDGE_EPS) & (l2 >= -_EDGE_EPS) & (l1 + l2 <= 1 + _EDGE_EPS)
    s, j = np.divmod(np.flatnonzero(inside), len(tri))
    k = np.take(tri, j)
    if size > 1:  # stencil pixels past the box (maybe off the image) belong to other boxes
        ok = np.flatnonzero((np.take(oxi, s) < np.take(box.nx, k)) & (np.take(oyi, s) < np.take(box.ny, k)))
        s, j, k = np.take(s, ok), np.take(j, ok), np.take(k, ok)
    if k.size == 0:
        return
    _depth_test(zbuf, k, np.take(ox, s), np.take(oy, s), np.take(cf[6:], j, axis=1),
                np.take(box.first, k) + np.take(off, s))


def _raster_boxes(zbuf, width, box: _Boxes, tri):
    """Rasterise triangles ``tri`` into ``zbuf``, expanding each box into its pixel centres."""
    nx = np.take(box.nx, tri)
    cnt = nx * np.take(box.ny, tri)
    j = np.repeat(np.arange(len(tri)), cnt)  # (N,) sequential repeats, no gathers
    local = np.arange(len(j)) - np.repeat(np.cumsum(cnt) - cnt, cnt)  # (N,) index inside the box
    w = np.repeat(nx, cnt)
    oy = local // w
    ox = (local - oy * w).astype(np.float32)
    oy = oy.astype(np.float32)
    cf = np.repeat(np.take(box.coef, tri, axis=1), cnt, axis=1)  # (9, N)
    l1 = cf[0] * ox + cf[1] * oy + cf[2]
    l2 = cf[3] * ox + cf[4] * oy + cf[5]
    inside = np.flatnonzero((l1 >= -_EDGE_EPS) & (l2 >= -_EDGE_EPS) & (l1 + l2 <= 1 + _EDGE_EPS))
    if inside.size == 0:
        return
    k = np.take(tri, np.take(j, inside))
    ox, oy = np.take(ox, inside), np.take(oy, inside)
    pix = np.take(box.first, k) + oy.astype(np.int64) * width + ox.astype(np.int64)
    _depth_test(zbuf, k, ox, oy, np.take(cf[6:], inside, axis=1), pix)


def _empty_hits() -> _Hits:
    empty = np.zeros(0, np.int64)
    return _Hits(empty, empty, np.zeros((3, 0)), np.zeros(0), np.zeros((3, 0), np.int64), empty, empty)


def _perspective_bary(pu, pv, z, corners, px, py):
    """Exact barycentrics and z-depth of pixel centres (float64).

    Screen-space barycentrics l_i of the pixel centre in the projected triangle relate to the
    3D ones by b_i = (l_i / z_i) / s and z = 1 / s with s = sum_j l_j / z_j (the point
    sum_i b_i p_i then projects exactly onto the pixel centre).

    Args:
        pu, pv, z: (V,) projected pixel coordinates and z of all vertices.
        corners: (3, M) vertex ids of each pixel's triangle.
        px, py: (M,) pixel centre coordinates.
    """
    u0, u1, u2 = np.take(pu, corners)
    v0, v1, v2 = np.take(pv, corners)
    z0, z1, z2 = np.take(z, corners)
    dx, dy = px - u0, py - v0
    inv_area = 1.0 / ((u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0))
    l1 = (dx * (v2 - v0) - (u2 - u0) * dy) * inv_area
    l2 = ((u1 - u0) * dy - dx * (v1 - v0)) * inv_area
    lz = ((1.0 - l1 - l2) / z0, l1 / z1, l2 / z2)
    inv_s = 1.0 / (lz[0] + lz[1] + lz[2])
    bary = np.empty((3, len(inv_s)))  # (3, M)
    for k in range(3):
        np.multiply(lz[k], inv_s, out=bary[k])
    return bary, inv_s


def _check_mesh(vertices, triangles) -> Tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices)
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0:
        raise ValueError(f"vertices must have shape (V, 3) with V >= 1, got {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        raise ValueError(f"vertices must be floating point, got dtype {v.dtype}")
    if not np.all(np.isfinite(v)):
        raise ValueError("vertices hold NaN or infinite values")
    t = np.asarray(triangles)
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"triangles must have shape (F, 3), got {t.shape}")
    if t.shape[0] == 0:
        raise ValueError("triangles is empty: nothing to render")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"triangles must hold integer vertex ids, got dtype {t.dtype}")
    if t.min() < 0 or t.max() >= len(v):
        raise ValueError(f"triangles hold vertex ids outside [0, {len(v) - 1}]: "
                         f"min {t.min()}, max {t.max()}")
    return v.astype(np.float32, copy=False), t.astype(np.int64, copy=False)


def _check_appearance(tri_uvs, texture, vertex_colors, n_vertices: int, n_triangles: int):
    uvs = tex = vcol = None
    if tri_uvs is not None:
        uvs = np.asarray(tri_uvs, dtype=np.float32)
        if uvs.shape != (n_triangles, 3, 2):
            raise ValueError(f"tri_uvs must have shape ({n_triangles}, 3, 2), got {uvs.shape}")
        if not np.all(np.isfinite(uvs)):
            raise ValueError("tri_uvs hold NaN or infinite values")
    if texture is not None:
        if uvs is None:
            raise ValueError("texture needs tri_uvs (the texture coordinates of each corner)")
        if vertex_colors is not None:
            raise ValueError("give either texture or vertex_colors, not both")
        tex = np.asarray(texture)
        if tex.ndim != 3 or tex.shape[2] != 3 or tex.shape[0] < 1 or tex.shape[1] < 1:
            raise ValueError(f"texture must have shape (Ht, Wt, 3), got {tex.shape}")
        if tex.dtype == np.uint8:
            tex = tex.astype(np.float32) / 255.0
        elif np.issubdtype(tex.dtype, np.floating):
            tex = tex.astype(np.float32, copy=False)
            if not np.all(np.isfinite(tex)):
                raise ValueError("texture holds NaN or infinite values")
        else:
            raise ValueError(f"texture must be uint8 or float in [0, 1], got dtype {tex.dtype}")
    if vertex_colors is not None:
        vcol = np.asarray(vertex_colors, dtype=np.float32)
        if vcol.shape != (n_vertices, 3):
            raise ValueError(f"vertex_colors must have shape ({n_vertices}, 3), got {vcol.shape}")
        if not np.all(np.isfinite(vcol)):
            raise ValueError("vertex_colors hold NaN or infinite values")
    return uvs, tex, vcol
