"""Albedo textures for the ICT-FaceKit mesh: a one-image atlas, procedural faces, captured ones.

**Why an atlas.** ICT-FaceKit lays its UVs out in UDIM tiles: the face (with the ears) fills
tile u in [0, 1], the head, neck, mouth socket and eye sockets tile 1, gums and tongue tile 2,
teeth tile 3, the lacrimal fluid tiles 4-5 and the eyelashes tile 6; the eyeballs (sclera shell
and iris) and the eye overlays reuse tile 0 on textures of their own. One (S, S, 3) image cannot
hold that as it is, so :func:`atlas_uvs` moves every tile into a cell of one square texture
(a 4 x 4 grid of cells, ``ATLAS_CELLS``):

    +-----------------+-----+     face  : 3 x 3 cells (75 % of the width: 0.64 mm per texel
    |                 |head |             at S = 512 around the eyes)
    |                 +-----+     head  : tile 1 (head, neck, mouth socket, eye sockets)
    |      face       |scler|     sclera: the eyeballs' outer shell (cornea included: an
    |    (tile 0)     +-----+             opaque render sees the iris painted on it)
    |                 |iris |     iris  : the iris discs behind the cornea
    +-----+-----+-----+-----+     ovl   : lacrimal fluid and eye overlays (skin-coloured)
    |gums |teeth| ovl |lash |     lash  : eyelashes (tile 6)
    +-----+-----+-----+-----+

Each cell keeps a margin of ``ATLAS_MARGIN`` of its width so bilinear lookups do not bleed
across cells. Texture images follow the renderer's convention: texture coordinate (u, v) (u right,
v up) lies at column u * S - 0.5 and row (1 - v) * S - 0.5. Colours are sRGB-encoded albedo in
[0, 1] (what an image of the skin under white light would show).

**Procedural textures** (:func:`procedural_texture`) are drawn from :class:`TextureParams`:
skin tone along the Monk Skin Tone scale's ten swatches (light to dark) with a warm/cool
undertone, mottling and pores, cheek and nose redness, lips, eyebrows (individual hairs), lash
lines, darker eyelids, a hairline and scalp hair, optional stubble, and eyes (sclera, iris colour,
pupil). Each texel of the atlas knows its point on the mean neutral face (rasterised once per
size and cached), so smooth features are functions of 3D position (no seams between cells) and
sharp ones (lips, brows) are drawn in the face cell from the UVs of the Multi-PIE 68 landmark
vertices.

**Captured textures** (:func:`project_to_uv`, :func:`accumulate`, :func:`finalize`) project a
colour image onto the fitted mesh's texels with visibility and a view-angle weight, and fuse
several frames.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.color import linear_to_srgb as _linear_to_srgb
from facediff_ros.core.color import srgb_to_linear as _srgb_to_linear
from facediff_ros.core.face.morphable_model import DEFAULT_REGIONS, REGIONS, MorphableModel, vertex_normals
from facediff_ros.core.render.renderer import Renderer

# ---- atlas layout --------------------------------------------------------------------------------
ATLAS_GRID = 4
# Fraction of a cell's width left empty on each side (1.3 texels of a 1-cell tile at S = 512).
ATLAS_MARGIN = 0.01
# cell name -> (column, row from the top, span in cells)
ATLAS_CELLS: Dict[str, Tuple[int, int, int]] = {
    "face": (0, 0, 3), "head": (3, 0, 1), "sclera": (3, 1, 1), "iris": (3, 2, 1),
    "gums_tongue": (0, 3, 1), "teeth": (1, 3, 1), "overlay": (2, 3, 1), "eyelashes": (3, 3, 1),
}
# base region -> (atlas cell, UDIM tile its UVs lie in)
_REGION_CELL: Dict[str, Tuple[str, int]] = {
    "face": ("face", 0), "head_neck": ("head", 1), "mouth_socket": ("head", 1),
    "eye_socket_left": ("head", 1), "eye_socket_right": ("head", 1), "gums_tongue": ("gums_tongue", 2),
    "teeth": ("teeth", 3), "eyeball_left": ("sclera", 0), "eyeball_right": ("sclera", 0),
    "lacrimal_fluid_left": ("overlay", 4), "lacrimal_fluid_right": ("overlay", 5),
    "eye_blend_left": ("overlay", 0), "eye_blend_right": ("overlay", 0),
    "eye_occlusion_left": ("overlay", 0), "eye_occlusion_right": ("overlay", 0),
    "eyelashes_left": ("eyelashes", 6), "eyelashes_right": ("eyelashes", 6),
}
BASE_REGIONS = tuple(_REGION_CELL)
_CELL_NAMES = tuple(ATLAS_CELLS)


def _polygon_table(num_polygons: int) -> Tuple[np.ndarray, np.ndarray]:
    """(P,) base-region index and (P,) atlas-cell index of every upstream polygon."""
    region = np.full(num_polygons, -1, np.int16)
    cell = np.full(num_polygons, -1, np.int16)
    for i, name in enumerate(BASE_REGIONS):
        a, b = REGIONS[name].polygons
        region[a:b] = i
        cell[a:b] = _CELL_NAMES.index(_REGION_CELL[name][0])
    for name in ("iris_left", "iris_right"):  # the iris polygons of the eyeballs
        a, b = REGIONS[name].polygons
        cell[a:b] = _CELL_NAMES.index("iris")
    return region, cell


def atlas_uvs(tri_uvs: np.ndarray, tri_polygon: np.ndarray) -> np.ndarray:
    """Map the model's UDIM texture coordinates into the one-image atlas.

    Args:
        tri_uvs: (F, 3, 2) texture coordinates from :meth:`MorphableModel.triangles`.
        tri_polygon: (F,) upstream polygon id of each triangle (from the same call).

    Returns:
        (F, 3, 2) float32 atlas coordinates in [0, 1] (u right, v up).
    """
    uv = np.asarray(tri_uvs, dtype=np.float64)
    poly = np.asarray(tri_polygon, dtype=np.int64)
    if uv.ndim != 3 or uv.shape[1:] != (3, 2) or poly.shape != uv.shape[:1]:
        raise ValueError(f"tri_uvs must be (F, 3, 2) and tri_polygon (F,), got {uv.shape} and {poly.shape}")
    n_poly = max(r.polygons[1] for r in REGIONS.values())
    if poly.size and (poly.min() < 0 or poly.max() >= n_poly):
        raise ValueError(f"tri_polygon holds ids outside [0, {n_poly - 1}]")
    region, cell = _polygon_table(n_poly)
    tile = np.array([_REGION_CELL[r][1] for r in BASE_REGIONS], np.float64)[region[poly]]  # (F,)
    geo = np.array([ATLAS_CELLS[c] for c in _CELL_NAMES], np.float64)[cell[poly]]  # (F, 3)
    col, row, span = geo[:, 0:1], geo[:, 1:2], geo[:, 2:3]
    lu = np.clip(uv[..., 0] - tile[:, None], 0.0, 1.0)  # (F, 3) position inside the tile
    lv = np.clip(uv[..., 1], 0.0, 1.0)
    inner = 1.0 - 2.0 * ATLAS_MARGIN
    au = (col + span * (ATLAS_MARGIN + inner * lu)) / ATLAS_GRID
    av = 1.0 - (row + span * (ATLAS_MARGIN + inner * (1.0 - lv))) / ATLAS_GRID
    return np.stack([au, av], axis=-1).astype(np.float32)


def atlas_triangles(model: MorphableModel, regions=DEFAULT_REGIONS
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`MorphableModel.triangles` with atlas texture coordinates: (tris, tri_uvs, tri_polygon)."""
    tris, uvs, poly = model.triangles(regions)
    return tris, atlas_uvs(uvs, poly), poly


def _cell_rect(name: str, size: int) -> Tuple[int, int, int, int]:
    """(row0, row1, col0, col1) texel range of an atlas cell."""
    col, row, span = ATLAS_CELLS[name]
    c = size / ATLAS_GRID
    r0, r1 = int(round(row * c)), int(round((row + span) * c))
    return r0, r1, int(round(col * c)), int(round((col + span) * c))


# ---- UV rasteriser -------------------------------------------------------------------------------
def rasterize_uv(tri_uvs: np.ndarray, size: int, chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre, and where.

    Texel (row, col) has its centre at texture coordinate ((col + 0.5) / S, 1 - (row + 0.5) / S).
    Where triangles overlap in UV, the later one wins.

    Args:
        tri_uvs: (F, 3, 2) texture coordinates (u right, v up); outside [0, 1] is ignored.
        size: S, the texture's width and height in texels.
        chunk: triangles per vectorised batch (bounds the memory of the candidate texels).

    Returns:
        tri_id: (S, S) int32 triangle index, -1 where no triangle covers the texel centre.
        bary: (S, S, 3) float32 barycentric weights of the triangle's corners (0 where empty).
    """
    size = int(size)
    if size < 2:
        raise ValueError(f"size must be >= 2 texels, got {size}")
    uv = np.asarray(tri_uvs, dtype=np.float64)
    if uv.ndim != 3 or uv.shape[1:] != (3, 2) or not np.all(np.isfinite(uv)):
        raise ValueError(f"tri_uvs must be a finite (F, 3, 2) array, got shape {uv.shape}")
    x = uv[..., 0] * size - 0.5  # (F, 3) texel-centre coordinates: column
    y = (1.0 - uv[..., 1]) * size - 0.5  # row
    tri_id = np.full(size * size, -1, np.int32)
    bary = np.zeros((size * size, 3), np.float32)
    for s in range(0, len(uv), chunk):
        xs, ys = x[s:s + chunk], y[s:s + chunk]
        x0 = np.maximum(np.ceil(xs.min(1)), 0).astype(np.int64)
        x1 = np.minimum(np.floor(xs.max(1)), size - 1).astype(np.int64)
        y0 = np.maximum(np.ceil(ys.min(1)), 0).astype(np.int64)
        y1 = np.minimum(np.floor(ys.max(1)), size - 1).astype(np.int64)
        area = (xs[:, 1] - xs[:, 0]) * (ys[:, 2] - ys[:, 0]) - (xs[:, 2] - xs[:, 0]) * (ys[:, 1] - ys[:, 0])
        nx, ny = x1 - x0 + 1, y1 - y0 + 1
        count = np.where((nx > 0) & (ny > 0) & (np.abs(area) > 1e-12), nx * ny, 0)
        if count.sum() == 0:
            continue
        k = np.repeat(np.arange(len(xs)), count)  # (N,) triangle of each candidate texel
        local = np.arange(len(k)) - np.repeat(np.cumsum(count) - count, count)
        py = local // nx[k] + y0[k]
        px = local % nx[k] + x0[k]
        dx, dy = px - xs[k, 0], py - ys[k, 0]
        inv = 1.0 / area[k]
        l1 = (dx * (ys[k, 2] - ys[k, 0]) - (xs[k, 2] - xs[k, 0]) * dy) * inv
        l2 = ((xs[k, 1] - xs[k, 0]) * dy - dx * (ys[k, 1] - ys[k, 0])) * inv
        ins = (l1 >= -1e-9) & (l2 >= -1e-9) & (l1 + l2 <= 1 + 1e-9)
        pix = py[ins] * size + px[ins]
        tri_id[pix] = (k[ins] + s).astype(np.int32)
        bary[pix] = np.stack([1.0 - l1[ins] - l2[ins], l1[ins], l2[ins]], axis=1)
    return tri_id.reshape(size, size), bary.reshape(size, size, 3)


def _nearest_fill_index(valid: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) flat index of the nearest valid pixel (itself where valid)."""
    h, w = valid.shape
    if valid.all():
        return np.arange(h * w).reshape(h, w)
    if not valid.any():
        raise ValueError("nothing to fill from")
    src = np.where(valid, 0, 255).astype(np.uint8)
    _, labels = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    # labels number the zero pixels 1..n in row-major order.
    zero_idx = np.flatnonzero(valid.reshape(-1))
    return zero_idx[labels.reshape(h, w) - 1]


# ---- per-texel geometry of the atlas on the mean face (cached) ------------------------------------
@dataclass
class AtlasGeometry:
    """What each texel of an S x S atlas is, on the mean neutral face (model frame, metres).

    Texels no triangle covers take the values of the nearest covered texel of the same cell, so
    every texel has a position (lookups at island borders then see continuous colour).
    """

    size: int
    covered: np.ndarray    # (S, S) bool: a triangle covers the texel centre
    cell: np.ndarray       # (S, S) int8 index into ATLAS_CELLS' order, -1 outside every cell
    region: np.ndarray     # (S, S) int16 index into BASE_REGIONS
    position: np.ndarray   # (S, S, 3) float32 metres, model frame, mean neutral shape
    normal: np.ndarray     # (S, S, 3) float32 unit outward normals
    landmarks_px: np.ndarray  # (68, 2) float64 (col, row) texel coordinates of the landmarks
    landmarks_3d: np.ndarray  # (68, 3) float64 model-frame positions on the mean face
    face_px_per_m: float   # texels per metre of skin in the face cell (around the eyes)
    eye_centres: np.ndarray  # (2, 3) eyeball centres, left (+x) then right


_GEOMETRY_CACHE: Dict[Tuple[int, int], Tuple[MorphableModel, AtlasGeometry]] = {}


def atlas_geometry(model: MorphableModel, size: int = 512) -> AtlasGeometry:
    """Per-texel geometry of the atlas (cached per model and size; it does not depend on any rng)."""
    key = (id(model), int(size))
    hit = _GEOMETRY_CACHE.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    geo = _build_geometry(model, int(size))
    if len(_GEOMETRY_CACHE) > 4:
        _GEOMETRY_CACHE.clear()
    _GEOMETRY_CACHE[key] = (model, geo)
    return geo


def _build_geometry(model: MorphableModel, size: int) -> AtlasGeometry:
    # The right eye's shells share the left's UVs; rasterising both would mix two positions.
    skip = {"eyeball_right", "eye_blend_right", "eye_occlusion_right", "lacrimal_fluid_right"}
    regions = [r for r in BASE_REGIONS if r not in skip]
    tris, uvs, poly = atlas_triangles(model, regions)
    tri_id, bary = rasterize_uv(uvs, size)
    covered = tri_id >= 0
    v = model.neutral.astype(np.float64)
    vn = vertex_normals(v, tris)
    region_of_poly, _ = _polygon_table(model.num_polygons)
    t = tris[np.maximum(tri_id, 0)]  # (S, S, 3)
    b = bary.astype(np.float64)[..., None]
    pos = (b * v[t]).sum(2)  # (S, S, 3)
    nrm = (b * vn[t]).sum(2)
    reg = region_of_poly[poly[np.maximum(tri_id, 0)]].astype(np.int16)
    cell = np.full((size, size), -1, np.int8)
    idx = np.arange(size * size).reshape(size, size)
    for ci, name in enumerate(_CELL_NAMES):
        r0, r1, c0, c1 = _cell_rect(name, size)
        cell[r0:r1, c0:c1] = ci
        cov = covered[r0:r1, c0:c1]
        if cov.any():
            near = _nearest_fill_index(cov)  # flat index inside the cell
            rr, cc = near // (c1 - c0) + r0, near % (c1 - c0) + c0
            idx[r0:r1, c0:c1] = rr * size + cc
    flat = idx.reshape(-1)
    pos = pos.reshape(-1, 3)[flat].reshape(size, size, 3)
    nrm = nrm.reshape(-1, 3)[flat].reshape(size, size, 3)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
    reg = reg.reshape(-1)[flat].reshape(size, size)
    # Landmark texel coordinates: any face triangle corner at the landmark vertex.
    face_tris = region_of_poly[poly] == BASE_REGIONS.index("face")
    lm = model.landmarks68
    lm_px = np.zeros((len(lm), 2))
    for i, vid in enumerate(lm):
        f, c = np.argwhere((tris == vid) & face_tris[:, None])[0]
        lm_px[i] = (uvs[f, c, 0] * size - 0.5, (1.0 - uvs[f, c, 1]) * size - 0.5)
    lm3 = v[lm]
    px_per_m = float(np.linalg.norm(lm_px[36] - lm_px[45]) / np.linalg.norm(lm3[36] - lm3[45]))
    centres = []
    for name in ("eyeball_left", "eyeball_right"):
        p = v[slice(*REGIONS[name].vertices)]
        # Least-squares sphere through the shell: |p|^2 = 2 c.p + (r^2 - |c|^2).
        A = np.c_[2 * p, np.ones(len(p))]
        sol = np.linalg.lstsq(A, (p ** 2).sum(1), rcond=None)[0]
        centres.append(sol[:3])
    return AtlasGeometry(size, covered, cell, reg, pos.astype(np.float32), nrm.astype(np.float32),
                         lm_px, lm3, px_per_m, np.array(centres))


# ---- noise ---------------------------------------------------------------------------------------
class _SolidNoise:
    """Value noise over 3D points (a hashed lattice with smoothstep interpolation), in [0, 1]."""

    def __init__(self, rng: np.random.Generator):
        self.table = rng.random(1 << 16).astype(np.float32)
        self.offset = rng.integers(0, 1 << 20, size=3)

    def __call__(self, p: np.ndarray, scale_m: float) -> np.ndarray:
        q = p / scale_m  # (N, 3) lattice units
        i = np.floor(q).astype(np.int64) + self.offset
        f = (q - np.floor(q)).astype(np.float32)
        w = f * f * (3.0 - 2.0 * f)
        out = np.zeros(len(p), np.float32)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    h = (((i[:, 0] + dx) * 73856093) ^ ((i[:, 1] + dy) * 19349663)
                         ^ ((i[:, 2] + dz) * 83492791))
                    val = self.table[h & 0xFFFF]
                    wx = w[:, 0] if dx else 1 - w[:, 0]
                    wy = w[:, 1] if dy else 1 - w[:, 1]
                    wz = w[:, 2] if dz else 1 - w[:, 2]
                    out += val * wx * wy * wz
        return out

    def fbm(self, p: np.ndarray, scale_m: float, octaves: int = 3) -> np.ndarray:
        """Fractal sum of octaves, zero-mean, roughly in [-1, 1]."""
        out = np.zeros(len(p), np.float32)
        amp, total = 1.0, 0.0
        for k in range(octaves):
            out += amp * (self(p, scale_m / 2 ** k) - 0.5)
            total += amp
            amp *= 0.5
        return out * (2.0 / total)


# Monk Skin Tone scale (Google, 2022): the ten published swatches, light to dark, sRGB.
MONK_SKIN_TONES = ("#f6ede4", "#f3e7db", "#f7ead0", "#eadaba", "#d7bd96",
                   "#a07e56", "#825c43", "#604134", "#3a312a", "#292420")
_MONK_LIN = _srgb_to_linear(np.array([[int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)]
                                      for h in MONK_SKIN_TONES]))
# The swatches are pale compared with skin albedo seen under room light; a mild darkening and
# saturation keep rendered faces from washing out under the renderer's Lambert + ambient light.
_SKIN_GAIN = 0.82


def skin_color(tone: float, undertone: float) -> np.ndarray:
    """Linear-RGB base skin albedo.

    Args:
        tone: 0 (lightest Monk swatch) .. 1 (darkest), interpolated in linear RGB.
        undertone: -1 (cool, pink) .. +1 (warm, golden/olive).
    """
    x = float(np.clip(tone, 0.0, 1.0)) * (len(_MONK_LIN) - 1)
    i = min(int(x), len(_MONK_LIN) - 2)
    c = (1 - (x - i)) * _MONK_LIN[i] + (x - i) * _MONK_LIN[i + 1]
    # Saturate a little towards the skin's own hue (the swatches are greyish), then shift the hue.
    grey = c.mean()
    c = grey + 1.25 * (c - grey)
    u = float(np.clip(undertone, -1.0, 1.0))
    c = c * (np.array([1.0, 1.0, 0.86]) ** max(u, 0) * np.array([1.03, 0.93, 1.02]) ** max(-u, 0))
    return np.clip(c * _SKIN_GAIN, 1e-4, 1.0)


# Hair colours (sRGB): black, dark brown, brown, light brown, dark blond, blond, auburn, red, grey.
_HAIR_COLOURS = np.array([[0.05, 0.04, 0.04], [0.14, 0.09, 0.06], [0.26, 0.16, 0.10], [0.42, 0.29, 0.18],
                          [0.55, 0.42, 0.26], [0.76, 0.62, 0.40], [0.40, 0.16, 0.08], [0.62, 0.27, 0.12],
                          [0.55, 0.53, 0.50]])
_HAIR_P = np.array([0.30, 0.22, 0.15, 0.09, 0.07, 0.05, 0.04, 0.03, 0.05])
# Iris colours (sRGB): dark brown, brown, hazel, green, blue, grey-blue, grey, amber.
_IRIS_COLOURS = np.array([[0.18, 0.10, 0.05], [0.33, 0.20, 0.10], [0.45, 0.36, 0.17], [0.30, 0.42, 0.24],
                          [0.28, 0.45, 0.62], [0.42, 0.52, 0.60], [0.48, 0.50, 0.50], [0.58, 0.40, 0.15]])
_IRIS_P = np.array([0.40, 0.20, 0.10, 0.06, 0.12, 0.05, 0.04, 0.03])


@dataclass
class TextureParams:
    """Appearance of one procedural subject (all colours sRGB in [0, 1])."""

    tone: float = 0.3                 # 0 lightest .. 1 darkest Monk swatch
    undertone: float = 0.0            # -1 cool/pink .. +1 warm/golden
    mottle: float = 0.06              # relative amplitude of blotchy low-frequency variation
    pores: float = 0.04               # relative amplitude of texel-scale pore noise
    redness: float = 0.15             # cheek and nose flush, 0 .. ~0.35
    lip_tint: float = 0.5             # 0 pale/brown lips .. 1 red lips
    hair_color: Tuple[float, float, float] = (0.14, 0.09, 0.06)
    brow_color: Tuple[float, float, float] = (0.12, 0.08, 0.05)
    brow_density: float = 0.7         # 0.2 sparse .. 1 dense
    brow_width_mm: float = 9.0        # height of the brow at its inner end
    forehead_mm: float = 55.0         # brow to hairline along the forehead at the centre
    recession_mm: float = 0.0         # temple recession / baldness (0 none .. ~60 bald crown)
    hair: bool = True                 # False: shaved/bald scalp
    stubble: float = 0.0              # 0 none .. 1 dense beard shadow
    eyelid_dark: float = 0.12         # darkening of the skin around the eyes
    iris_color: Tuple[float, float, float] = (0.33, 0.20, 0.10)
    pupil_mm: float = 2.0             # pupil radius
    seed: int = 0                     # seeds the noise fields (so params alone fix the texture)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "TextureParams":
        """Random subject: skin tones across the whole scale, hair/eye colours by rough frequency."""
        tone = float(rng.uniform(0.0, 1.0))
        hair_i = int(rng.choice(len(_HAIR_COLOURS), p=_HAIR_P))
        if tone > 0.55 and hair_i in (4, 5, 7):  # blond/red hair is rare with dark skin
            hair_i = int(rng.integers(0, 3))
        # One brightness factor and a slight hue jitter (per-channel factors would give green hair).
        hair = np.clip(_HAIR_COLOURS[hair_i] * rng.uniform(0.8, 1.2) * rng.uniform(0.97, 1.03, 3), 0, 1)
        iris_p = _IRIS_P.copy()
        if tone > 0.5:
            iris_p[3:] *= 0.15
        iris_i = int(rng.choice(len(_IRIS_COLOURS), p=iris_p / iris_p.sum()))
        bald = rng.random() < 0.12
        return cls(
            tone=tone, undertone=float(rng.uniform(-1, 1)), mottle=float(rng.uniform(0.03, 0.10)),
            pores=float(rng.uniform(0.02, 0.07)), redness=float(rng.uniform(0.0, 0.35) * (1.2 - tone)),
            lip_tint=float(rng.uniform(0.1, 1.0)), hair_color=tuple(map(float, hair)),
            brow_color=tuple(map(float, np.clip(hair * rng.uniform(0.7, 1.0), 0, 1))),
            brow_density=float(rng.uniform(0.35, 1.0)), brow_width_mm=float(rng.uniform(6.0, 12.0)),
            forehead_mm=float(rng.uniform(42.0, 64.0)),
            recession_mm=float(rng.uniform(40.0, 70.0) if bald else rng.exponential(8.0)),
            hair=bool(rng.random() > 0.06),
            stubble=float(rng.uniform(0.2, 1.0) if rng.random() < 0.3 else 0.0),
            eyelid_dark=float(rng.uniform(0.04, 0.22)),
            iris_color=tuple(map(float, np.clip(_IRIS_COLOURS[iris_i] * rng.uniform(0.8, 1.2)
                                                * rng.uniform(0.95, 1.05, 3), 0, 1))),
            pupil_mm=float(rng.uniform(1.5, 2.8)), seed=int(rng.integers(0, 2 ** 31 - 1)))

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            arr = np.asarray(v, dtype=np.float64)
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"TextureParams.{f.name} must be finite, got {v}")
        for name in ("hair_color", "brow_color", "iris_color"):
            c = np.asarray(getattr(self, name), dtype=np.float64)
            if c.shape != (3,) or c.min() < 0 or c.max() > 1:
                raise ValueError(f"TextureParams.{name} must be 3 values in [0, 1], "
                                 f"got {getattr(self, name)}")
        if not 0 <= self.tone <= 1 or not -1 <= self.undertone <= 1:
            raise ValueError(f"tone must be in [0, 1] and undertone in [-1, 1], "
                             f"got {self.tone}, {self.undertone}")


# ---- procedural texture --------------------------------------------------------------------------
def procedural_texture(model: MorphableModel, rng: Optional[np.random.Generator] = None, size: int = 512,
                       params: Optional[TextureParams] = None) -> np.ndarray:
    """A random (or given) subject's albedo in the atlas layout.

    Args:
        model: the morphable model (its mean face places the features).
        rng: draws :class:`TextureParams` when ``params`` is None (required then).
        size: S, texels per side (512: 0.64 mm of skin per texel around the eyes).
        params: the subject's appearance; with it the texture is deterministic (its ``seed``
            seeds the noise).

    Returns:
        (S, S, 3) float32 sRGB albedo in [0, 1], for :func:`atlas_uvs` coordinates.
    """
    if params is None:
        if rng is None:
            raise ValueError("give rng or params")
        params = TextureParams.sample(rng)
    if not isinstance(params, TextureParams):
        raise ValueError(f"params must be a TextureParams, got {type(params).__name__}")
    size = int(size)
    if size < 64:
        raise ValueError(f"size must be >= 64 texels, got {size}")
    geo = atlas_geometry(model, size)
    return _Painter(geo, params).paint()


def _gauss(p: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    d2 = ((p - centre) ** 2).sum(-1)
    return np.exp(-0.5 * d2 / sigma ** 2).astype(np.float32)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


class _Painter:
    """Paints one texture: linear-RGB layers over the atlas, then sRGB."""

    def __init__(self, geo: AtlasGeometry, params: TextureParams):
        self.g, self.p = geo, params
        self.rng = np.random.default_rng(params.seed)
        self.noise = _SolidNoise(self.rng)
        self.S = geo.size
        self.P = geo.position.reshape(-1, 3).astype(np.float64)  # (S*S, 3)
        cells = {n: geo.cell.reshape(-1) == i for i, n in enumerate(_CELL_NAMES)}
        self.cells = cells
        reg = geo.region.reshape(-1)
        self.is_region = {n: reg == i for i, n in enumerate(BASE_REGIONS)}
        self.skin = cells["face"] | (cells["head"] & self.is_region["head_neck"]) | cells["overlay"]

    def paint(self) -> np.ndarray:
        p, S = self.p, self.S
        lin = np.zeros((S * S, 3), np.float64)
        base = skin_color(p.tone, p.undertone)
        lin[:] = base
        self._skin_variation(lin, base)
        self._face_features(lin, base)
        self._hair(lin)
        self._inner_parts(lin, base)
        self._eyes(lin)
        return _linear_to_srgb(lin).reshape(S, S, 3).astype(np.float32)

    # -- skin ------------------------------------------------------------------------------------
    def _skin_variation(self, lin, base):
        p, P, sk = self.p, self.P, self.skin
        Ps = P[sk]
        mott = self.noise.fbm(Ps, 0.025, 3)
        hue = self.noise.fbm(Ps + 1.7, 0.04, 2)
        # Blotches vary brightness and a little the red/brown balance.
        tint = 1.0 + 0.5 * p.mottle * hue[:, None] * np.array([1.0, -0.3, -0.6])
        lin[sk] *= (1.0 + p.mottle * mott)[:, None] * tint
        pores = self.rng.standard_normal((self.S, self.S)).astype(np.float32)
        pores = cv2.GaussianBlur(pores, (0, 0), 0.7).reshape(-1)
        lin[sk] *= (1.0 + p.pores * 1.6 * pores[sk])[:, None]
        L = self.g.landmarks_3d
        # Flush: cheeks, nose tip and ears redden (the less melanin, the more it shows).
        cheek_l = (L[36] + L[48] + L[2]) / 3.0
        cheek_r = (L[45] + L[54] + L[14]) / 3.0
        flush = (_gauss(Ps, cheek_l, 0.018) + _gauss(Ps, cheek_r, 0.018) + 0.7 * _gauss(Ps, L[30], 0.010))
        ears = _smoothstep(0.068, 0.080, np.abs(Ps[:, 0])) * _smoothstep(-0.06, -0.03, -Ps[:, 1] - 0.0)
        flush = np.clip(flush + 0.5 * ears * (Ps[:, 2] > -0.05), 0, 1)
        lin[sk] *= 1.0 + p.redness * flush[:, None] * np.array([0.35, -0.25, -0.2])
        # Darker, slightly violet skin around the eyes (thin skin over the orbicularis).
        eyes = np.maximum(_gauss(Ps, (L[36] + L[39]) / 2 + [0, -0.004, 0], 0.011),
                          _gauss(Ps, (L[42] + L[45]) / 2 + [0, -0.004, 0], 0.011))
        lin[sk] *= 1.0 - p.eyelid_dark * eyes[:, None] * np.array([1.0, 1.15, 0.8])

    def _face_features(self, lin, base):
        """Lips, brows and lash lines, drawn in the face cell from the landmark texels."""
        p, g, S = self.p, self.g, self.S
        ppm = g.face_px_per_m
        lm = g.landmarks_px
        shift = 4  # cv2 sub-pixel bits
        face = self.cells["face"].reshape(S, S)
        # Lips: the outer lip polygon, softened over ~0.7 mm.
        lips = np.zeros((S, S), np.uint8)
        cv2.fillPoly(lips, [np.round(lm[48:60] * (1 << shift)).astype(np.int32)], 255, cv2.LINE_AA, shift)
        lips = cv2.GaussianBlur(lips.astype(np.float32) / 255, (0, 0), max(0.7e-3 * ppm, 0.5))
        lips = (lips * face).reshape(-1)
        red = np.array([1.0, 0.42, 0.45])
        brown = np.array([0.75, 0.55, 0.55])
        lip = base * (p.lip_tint * red + (1 - p.lip_tint) * brown) * (1.0 - 0.25 * p.tone)
        on = np.flatnonzero(lips > 0)
        lip = lip * (1.0 + 0.08 * self.noise.fbm(self.P[on], 0.003, 2))[:, None]  # (N_lips, 3)
        lin[on] = lin[on] * (1 - lips[on, None]) + lip * lips[on, None]
        # Lash lines: dark upper lid margin, lighter lower one.
        lash = np.zeros((S, S), np.uint8)
        for idx, w_mm in (([36, 37, 38, 39], 1.3), ([42, 43, 44, 45], 1.3),
                          ([39, 40, 41, 36], 0.5), ([45, 46, 47, 42], 0.5)):
            pts = np.round(lm[idx] * (1 << shift)).astype(np.int32)
            cv2.polylines(lash, [pts], False, 255, max(1, int(round(w_mm * 1e-3 * ppm))), cv2.LINE_AA, shift)
        lash = cv2.GaussianBlur(lash.astype(np.float32) / 255, (0, 0), 0.6).reshape(-1) * face.reshape(-1)
        dark = _srgb_to_linear(np.asarray(p.brow_color)) * 0.4
        lin[:] = lin * (1 - 0.85 * lash[:, None]) + dark * 0.85 * lash[:, None]
        # Eyebrows: individual hairs along each brow, pointing outwards and up at the inner end.
        brows = np.zeros((S, S), np.float32)
        for idx in ([21, 20, 19, 18, 17], [22, 23, 24, 25, 26]):  # inner -> outer
            brows = np.maximum(brows, self._brow_hairs(lm[idx], ppm))
        brows = (brows * face.reshape(S, S)).reshape(-1)
        bc = _srgb_to_linear(np.asarray(p.brow_color))
        lin[:] = lin * (1 - brows[:, None]) + bc * brows[:, None]
        # Stubble: dark dots over the beard area, densest on chin and upper lip.
        if p.stubble > 0:
            self._stubble(lin, lips)

    def _brow_hairs(self, curve: np.ndarray, ppm: float) -> np.ndarray:
        p, S, rng = self.p, self.S, self.rng
        seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
        s_cum = np.r_[0, np.cumsum(seg)]
        n = int(350 * p.brow_density)
        t = rng.beta(1.3, 1.0, n)  # more hairs at the inner end
        s = t * s_cum[-1]
        pos = np.stack([np.interp(s, s_cum, curve[:, 0]), np.interp(s, s_cum, curve[:, 1])], 1)
        k = np.clip(np.searchsorted(s_cum, s) - 1, 0, len(seg) - 1)
        tang = (curve[k + 1] - curve[k]) / seg[k][:, None]
        up = np.stack([tang[:, 1], -tang[:, 0]], 1)
        up *= np.where(up[:, 1:2] > 0, -1.0, 1.0)  # rows grow downwards: "up" has a negative row
        width = p.brow_width_mm * 1e-3 * ppm * (1.0 - 0.6 * t)  # brow height in texels
        # Landmarks sit near the brow's upper edge: centre the band a little below them.
        off = (rng.uniform(-0.5, 0.5, n) * width - 0.25 * width)[:, None]
        root = pos + up * off
        ang = np.radians(70.0 * (1 - t) ** 2 + rng.normal(0, 8, n))  # inner hairs stand up
        direction = np.cos(ang)[:, None] * tang + np.sin(ang)[:, None] * up
        length = rng.uniform(4.0, 8.0, n) * 1e-3 * ppm * (1.0 - 0.3 * t)
        tip = root + direction * length[:, None]
        img = np.zeros((S, S), np.uint8)
        shift = 4
        lw = max(1, int(round(0.15e-3 * ppm)))
        for a, b, alpha in zip(np.round(root * 16).astype(np.int64), np.round(tip * 16).astype(np.int64),
                               rng.uniform(170, 255, n).astype(int)):
            cv2.line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), int(alpha), lw, cv2.LINE_AA, shift)
        return np.clip(img.astype(np.float32) / 255 * (0.7 + 0.3 * p.brow_density), 0, 1)

    def _stubble(self, lin, lips):
        p, P, L = self.p, self.P, self.g.landmarks_3d
        face = self.cells["face"]
        # Beard area: below the cheek line (nose base at the centre, dipping towards the mouth
        # corners, rising to the sideburns), down the neck to under the jaw, in front of the ears.
        line = np.interp(np.abs(P[:, 0]), [0.0, 0.018, 0.032, 0.05, 0.07, 0.09],
                         [L[33, 1] + 0.003, L[33, 1] + 0.006, L[48, 1] - 0.004, L[3, 1] - 0.006,
                          L[1, 1], L[0, 1]])
        area = (_smoothstep(0.0, 0.006, P[:, 1] - line) * _smoothstep(0.0, 0.01, -P[:, 2])
                * (1 - _smoothstep(L[8, 1] + 0.01, L[8, 1] + 0.04, P[:, 1])))
        area = area * (face | self.is_region["head_neck"]) * (1 - np.clip(lips * 1.5, 0, 1))
        # A shadow (hairs under the skin) plus short hairs, one texel each (~0.64 mm at S = 512).
        dots = (self.rng.random(len(P)) < 0.25 * p.stubble).astype(np.float32)
        amt = np.clip(area * (0.3 * p.stubble + 0.35 * dots), 0, 0.7)
        hc = _srgb_to_linear(np.asarray(p.hair_color))
        lin[:] = lin * (1 - amt[:, None]) + hc * amt[:, None]

    # -- scalp hair --------------------------------------------------------------------------------
    def _hair(self, lin):
        p, P = self.p, self.P
        if not p.hair:
            return
        L = self.g.landmarks_3d
        idx = np.flatnonzero(self.cells["face"] | (self.cells["head"] & self.is_region["head_neck"]))
        Ps = P[idx]
        # Directions from a centre inside the head at brow height: azimuth phi (0 ahead, 90 at the
        # ears, 180 behind) and elevation theta (0 at the brows, 90 on top). Along the forehead,
        # 1 degree of theta is ~1.75 mm of skin (radius ~0.1 m), so the hairline is a curve
        # theta_h(phi) that follows the skull's curvature where a height in y would not.
        d = Ps - np.array([0.0, L[17:27, 1].mean(), 0.0])
        phi = np.degrees(np.arctan2(np.abs(d[:, 0]), -d[:, 2]))
        theta = np.degrees(np.arctan2(-d[:, 1], np.hypot(d[:, 0], d[:, 2])))
        F = np.degrees(p.forehead_mm / 100.0)
        r = np.degrees(p.recession_mm / 100.0)
        knots = [0, 30, 50, 65, 75, 85, 95, 110, 125, 150, 180]
        th = [F + 0.6 * r, F + 0.8 * r, F - 2 + r, 12 + 0.5 * r, -22, -22, -3, -3, -30, -52, -55]
        line = np.interp(phi, knots, th) + 2.0 * self.noise.fbm(Ps, 0.01, 2)
        # Hair above the hairline, with a soft, sparse fringe ~3.5 mm wide.
        edge = 2.0  # degrees
        amt = _smoothstep(-edge, edge, theta - line)
        band = np.flatnonzero((amt > 0) & (amt < 0.999))
        amt[band] *= np.clip(self.noise(Ps[band], 0.0015) * 1.6 - 0.3, 0, 1)
        keep = amt > 0
        idx, Ps, amt = idx[keep], Ps[keep], amt[keep]
        strands = self.noise.fbm(Ps * [1.0, 0.25, 1.0], 0.004, 2)  # streaks along the head's y
        hair = _srgb_to_linear(np.asarray(p.hair_color)) * (1.0 + 0.35 * strands[:, None])
        lin[idx] = lin[idx] * (1 - amt[:, None]) + hair * amt[:, None]

    # -- inside the mouth, sockets, teeth, lashes ------------------------------------------------------
    def _inner_parts(self, lin, base):
        c, r, P = self.cells, self.is_region, self.P
        inner = c["gums_tongue"] | c["teeth"] | (c["head"] & ~r["head_neck"])
        n = np.ones((len(P), 1), np.float32)
        n[inner, 0] += 0.06 * self.noise.fbm(P[inner], 0.004, 2)
        mouth = c["head"] & r["mouth_socket"]
        # Mouth socket darkens towards the throat (the deeper, the less light reaches it).
        depth = _smoothstep(-0.11, -0.06, P[:, 2])[mouth, None]
        lin[mouth] = (_srgb_to_linear([0.55, 0.22, 0.22]) * (1 - 0.8 * depth)) * n[mouth]
        for name in ("eye_socket_left", "eye_socket_right"):
            m = c["head"] & r[name]
            lin[m] = _srgb_to_linear([0.80, 0.50, 0.48]) * n[m]
        lin[c["gums_tongue"]] = _srgb_to_linear([0.78, 0.38, 0.40]) * n[c["gums_tongue"]]
        lin[c["teeth"]] = _srgb_to_linear([0.90, 0.86, 0.76]) * n[c["teeth"]]
        lin[c["eyelashes"]] = _srgb_to_linear(np.asarray(self.p.brow_color)) * 0.4
        lin[c["overlay"]] = base

    # -- eyes ----------------------------------------------------------------------------------------------
    def _eyes(self, lin):
        p, g, P = self.p, self.g, self.P
        eye = self.cells["sclera"] | self.cells["iris"]
        Pe = P[eye]
        # Each texel's eyeball: the nearer sphere centre (the cells hold the left eye's shells).
        cen = g.eye_centres[np.argmin(((Pe[:, None] - g.eye_centres[None]) ** 2).sum(-1), axis=1)]
        d = Pe - cen
        axis = np.array([0.0, 0.0, -1.0])  # the eyes look straight ahead, along -z
        along = d @ axis
        perp = d - along[:, None] * axis
        r = np.linalg.norm(perp, axis=1) * 1e3  # mm from the optical axis
        ang = np.arctan2(perp[:, 1], perp[:, 0])
        front = along > 0
        sclera = _srgb_to_linear([0.90, 0.88, 0.84]) * (1 + 0.03 * self.noise.fbm(Pe, 0.003, 2))[:, None]
        # Vessels: a pink tint growing towards the eye corners.
        pink = np.clip((r - 7.0) / 6.0, 0, 1) * (0.5 + 0.5 * self.noise.fbm(Pe, 0.0015, 2))
        sclera = sclera * (1 - 0.25 * pink[:, None] * np.array([0.0, 1.0, 0.9]))
        iris_r = 5.9
        ic = _srgb_to_linear(np.asarray(p.iris_color))
        fib = self.noise(np.stack([np.cos(ang) * 3, np.sin(ang) * 3, r * 0.05], 1), 0.08)  # radial fibres
        iris = ic * (0.75 + 0.5 * fib[:, None])
        iris *= (1 - 0.6 * _smoothstep(iris_r - 1.2, iris_r, r))[:, None]  # dark limbal ring
        iris *= (1 + 0.35 * (1 - _smoothstep(p.pupil_mm, p.pupil_mm + 1.2, r)))[:, None]  # collarette
        col = np.where(((r < iris_r) & front)[:, None], iris, sclera)
        limbus = _smoothstep(iris_r - 0.2, iris_r + 0.3, r)[:, None]
        col = np.where(front[:, None], limbus * sclera + (1 - limbus) * col, col)
        pupil = ((r < p.pupil_mm) & front)[:, None]
        col = np.where(pupil, _srgb_to_linear([0.02, 0.02, 0.02]), col)
        lin[eye] = col


# ---- per-subject texture from captured images ------------------------------------------------------
@dataclass(frozen=True)
class ProjectionConfig:
    """How a colour image is projected onto the mesh's texels."""

    depth_tolerance_m: float = 0.005  # |depth map - texel's tangent plane| (sensor noise ~ mm)
    # The same for the exact depth rendered from the mesh (depth=None): tight enough to hide the
    # iris 0.5 mm inside the eyeball's shell at the limbus.
    rendered_tolerance_m: float = 0.0002
    normal_power: float = 2.0         # weight = max(0, n . view) ** p: grazing views count less
    min_cos: float = 0.1              # texels seen more obliquely than this get weight 0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"ProjectionConfig.{f.name} must be finite and >= 0, got {v}")


_UV_RASTER_CACHE: Dict[Tuple[int, int, bytes], Tuple[np.ndarray, np.ndarray]] = {}


def _cached_uv_raster(tri_uvs: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    digest = hashlib.sha1(np.ascontiguousarray(tri_uvs, np.float32).tobytes()).digest()
    key = (int(size), len(tri_uvs), digest)
    hit = _UV_RASTER_CACHE.get(key)
    if hit is None:
        if len(_UV_RASTER_CACHE) > 4:
            _UV_RASTER_CACHE.clear()
        hit = _UV_RASTER_CACHE[key] = rasterize_uv(tri_uvs, size)
    return hit


def surface_components(triangles: np.ndarray, num_vertices: int) -> np.ndarray:
    """(F,) int64 label of each triangle's connected surface (triangles joined by shared vertices).

    ICT's layers are separate surfaces: skin, each eyeball's shell, each iris, the mouth socket.
    """
    tris = np.asarray(triangles, dtype=np.int64)
    lab = np.arange(int(num_vertices))
    while True:
        m = lab[tris].min(1)  # (F,) smallest label at each triangle
        new = lab.copy()
        for k in range(3):
            np.minimum.at(new, tris[:, k], m)
        while True:  # pointer jumping: follow labels to their roots
            nxt = new[new]
            if np.array_equal(nxt, new):
                break
            new = nxt
        if np.array_equal(new, lab):
            return lab[tris[:, 0]]
        lab = new


def project_to_uv(image: np.ndarray, vertices_cam: np.ndarray, triangles: np.ndarray, tri_uvs: np.ndarray,
                  intrinsics: Intrinsics, size: int = 512, depth: Optional[np.ndarray] = None,
                  config: ProjectionConfig = ProjectionConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """Project a colour image onto the texels of a posed mesh.

    For each texel: its point on the mesh (UV rasterisation -> triangle + barycentrics ->
    camera-frame position), its pixel, a bilinear colour sample, and a weight
    ``max(0, n . view) ** p`` where the texel is visible and 0 elsewhere. Visible means inside the
    image, in front of the camera, and all four pixels of its bilinear footprint see the texel's
    tangent plane (depth within a tolerance): nothing occludes it and no depth edge mixes colours.

    Args:
        image: (H, W, 3) uint8 or float [0, 1] colour image (any channel order; kept as given).
        vertices_cam: (V, 3) mesh vertices in the camera frame, metres (the fitted face, posed).
        triangles: (F, 3) vertex ids.
        tri_uvs: (F, 3, 2) texture coordinates (e.g. :func:`atlas_uvs`).
        intrinsics: the image's pinhole intrinsics.
        size: S, texels per side of the output.
        depth: optional (H, W) z-depth in metres aligned with ``image`` (0 = no data), e.g. the
            sensor's aligned depth; by default the mesh itself is rendered (exact z-buffer), and
            the footprint must also see the texel's own connected surface.
        config: tolerances and the view weight.

    Returns:
        texture: (S, S, 3) float32 colour in [0, 1] (0 where the weight is 0).
        weight: (S, S) float32 in [0, 1].
    """
    if not isinstance(intrinsics, Intrinsics):
        raise ValueError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
    img = np.asarray(image)
    if img.shape != intrinsics.shape + (3,):
        raise ValueError(f"image must have shape {intrinsics.shape + (3,)}, got {img.shape}")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    v = np.asarray(vertices_cam, dtype=np.float64)
    tris = np.asarray(triangles, dtype=np.int64)
    uvs = np.asarray(tri_uvs, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != 3 or not np.all(np.isfinite(v)):
        raise ValueError(f"vertices_cam must be a finite (V, 3) array, got {v.shape}")
    if tris.ndim != 2 or tris.shape[1] != 3 or tris.min() < 0 or tris.max() >= len(v):
        raise ValueError(f"triangles must be (F, 3) ids into vertices_cam, got {tris.shape}")
    if uvs.shape != (len(tris), 3, 2):
        raise ValueError(f"tri_uvs must have shape ({len(tris)}, 3, 2), got {uvs.shape}")
    tol = config.depth_tolerance_m
    pix_comp = None
    if depth is None:
        buf = Renderer(intrinsics).render(v.astype(np.float32), tris)
        depth, tol = buf.depth, config.rendered_tolerance_m
        # Which surface each pixel sees: thin layers (the iris 0.5-1.2 mm inside the eyeball's
        # shell) are told apart by surface, not by depth.
        comp = surface_components(tris, len(v))
        pix_comp = np.where(buf.tri_id >= 0, comp[np.maximum(buf.tri_id, 0)], -1)
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != intrinsics.shape:
        raise ValueError(f"depth must have shape {intrinsics.shape}, got {depth.shape}")
    S = int(size)
    tri_id, bary = _cached_uv_raster(uvs, S)
    tex = np.zeros((S * S, 3), np.float32)
    weight = np.zeros(S * S, np.float32)
    cov = np.flatnonzero(tri_id.reshape(-1) >= 0)
    t = tris[tri_id.reshape(-1)[cov]]  # (N, 3) corner vertex ids
    b = bary.reshape(-1, 3)[cov].astype(np.float64)[..., None]
    p = (b * v[t]).sum(1)  # (N, 3) camera-frame texel points
    vn = vertex_normals(v, tris)
    n = (b * vn[t]).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    z = p[:, 2]
    ok = z > 1e-3
    zs = np.where(ok, z, 1.0)
    view = -p / np.linalg.norm(p, axis=1, keepdims=True)
    cos = (n * view).sum(1)
    u = intrinsics.fx * p[:, 0] / zs + intrinsics.cx
    w = intrinsics.fy * p[:, 1] / zs + intrinsics.cy
    H, W = intrinsics.shape
    ok &= (u >= 0) & (u <= W - 1) & (w >= 0) & (w <= H - 1) & (cos > config.min_cos)
    # Visible and clean: all four pixels of the bilinear footprint see the texel's own tangent
    # plane (depth within tol of the plane's depth along their rays). A nearer surface (occluder)
    # fails the test, and so does a footprint straddling an edge, where colours of two surfaces
    # would mix (the eyelid over the eyeball, the nose over the cheek, the silhouette).
    u0 = np.clip(np.floor(u), 0, W - 2).astype(np.int64)
    w0 = np.clip(np.floor(w), 0, H - 2).astype(np.int64)
    # The triangle's own plane (not the smoothed normal): exact for footprints on the same facet.
    pa, pb, pc = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    fn = np.cross(pb - pa, pc - pa)
    fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-15)
    n_dot_p = (fn * p).sum(1)
    # Seen obliquely, a pixel's footprint stretches (1 / cos) and so does a depth step (1 / cos):
    # the tolerance grows with both, so curved skin at grazing angles is not rejected in streaks.
    cos_f = np.maximum(np.abs((fn * view).sum(1)), config.min_cos)
    tol = tol * np.minimum(1.0 / cos_f ** 2, 10.0)
    for du in (0, 1):
        for dw in (0, 1):
            ray_x = (u0 + du - intrinsics.cx) / intrinsics.fx
            ray_y = (w0 + dw - intrinsics.cy) / intrinsics.fy
            denom = fn[:, 0] * ray_x + fn[:, 1] * ray_y + fn[:, 2]
            z_plane = n_dot_p / np.where(np.abs(denom) > 1e-9, denom, 1e-9)
            dn = depth[w0 + dw, u0 + du]
            ok &= (dn > 0) & (np.abs(dn - z_plane) < tol)
            if pix_comp is not None:
                ok &= pix_comp[w0 + dw, u0 + du] == comp[tri_id.reshape(-1)[cov]]
    sel = np.flatnonzero(ok)
    if sel.size:
        tex[cov[sel]] = _bilinear(img, u[sel], w[sel])
        weight[cov[sel]] = np.maximum(cos[sel], 0.0) ** config.normal_power
    return tex.reshape(S, S, 3), weight.reshape(S, S)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(H, W, C) image at (N,) pixel coordinates (centres at integers), clamped: (N, C) float32."""
    H, W = img.shape[:2]
    x = np.clip(x, 0, W - 1)
    y = np.clip(y, 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2)
    fx = (x - x0).astype(np.float32)[:, None]
    fy = (y - y0).astype(np.float32)[:, None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def accumulate(tex_sum: Optional[np.ndarray], w_sum: Optional[np.ndarray], texture: np.ndarray,
               weight: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Add one projected frame to a weighted running sum (pass None, None for the first frame).

    Returns the updated ``(tex_sum (S, S, 3), w_sum (S, S))`` float64 arrays; the fused texture is
    ``tex_sum / w_sum`` where ``w_sum > 0`` (see :func:`finalize`).
    """
    texture = np.asarray(texture, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if texture.ndim != 3 or texture.shape[2] != 3 or weight.shape != texture.shape[:2]:
        raise ValueError(f"texture must be (S, S, 3) and weight (S, S), "
                         f"got {texture.shape} and {weight.shape}")
    if tex_sum is None or w_sum is None:
        tex_sum, w_sum = np.zeros_like(texture), np.zeros_like(weight)
    if tex_sum.shape != texture.shape or w_sum.shape != weight.shape:
        raise ValueError(f"tex_sum/w_sum shapes {tex_sum.shape}/{w_sum.shape} do not match the frame's")
    tex_sum = tex_sum + texture * weight[..., None]
    w_sum = w_sum + weight
    return tex_sum, w_sum


def finalize(tex_sum: np.ndarray, w_sum: np.ndarray, fallback: Optional[np.ndarray] = None,
             min_weight: float = 1e-3) -> Tuple[np.ndarray, np.ndarray]:
    """Fused texture from :func:`accumulate` sums.

    Texels with ``w_sum < min_weight`` take ``fallback`` (an (S, S, 3) texture, e.g. a procedural
    one) if given, else the colour of the nearest observed texel.

    Returns:
        texture (S, S, 3) float32 in [0, 1], observed (S, S) bool.
    """
    w = np.asarray(w_sum, dtype=np.float64)
    observed = w >= min_weight
    tex = np.zeros(np.shape(tex_sum), np.float64)
    tex[observed] = np.asarray(tex_sum)[observed] / w[observed, None]
    if not observed.all():
        if fallback is not None:
            fb = np.asarray(fallback, dtype=np.float64)
            if fb.shape != tex.shape:
                raise ValueError(f"fallback must have shape {tex.shape}, got {fb.shape}")
            tex[~observed] = fb[~observed]
        elif observed.any():
            near = _nearest_fill_index(observed).reshape(-1)
            tex = tex.reshape(-1, 3)[near].reshape(tex.shape)
    return np.clip(tex, 0, 1).astype(np.float32), observed


__all__ = ["ATLAS_CELLS", "ATLAS_GRID", "ATLAS_MARGIN", "AtlasGeometry", "MONK_SKIN_TONES",
           "ProjectionConfig", "TextureParams", "accumulate", "atlas_geometry", "atlas_triangles",
           "atlas_uvs", "finalize", "procedural_texture", "project_to_uv", "rasterize_uv", "skin_color",
           "surface_components"]
