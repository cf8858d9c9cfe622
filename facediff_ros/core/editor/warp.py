"""The "model-only" edit: the person's own pixels moved onto the target-expression geometry.

Both meshes are the same fitted model (same topology, same head pose) with two expressions: the
SOURCE (what the camera saw) and the TARGET (the requested expression). Everything happens in the
crop's camera (:attr:`FaceCrop.intrinsics`, REP-103 optical frame, metres), without a UV texture:

1. render the target mesh: per crop pixel, the triangle id and its barycentrics;
2. the same triangle and barycentrics on the source mesh give the same surface point as the
   camera saw it; project it with the crop intrinsics;
3. bilinear lookup of the source crop's colour there, kept only where that point was visible in
   the source: inside the crop, on the source mesh's silhouette (all four neighbours covered,
   so no background is mixed in), their bilinear depth within ``tolerance_m`` of the point's and
   the nearest of them on the point's own surface (its depth on the plane of the point's source
   triangle) -- a surface point hidden behind the nose or inside the closed mouth fails it.

What the warp cannot give (disoccluded skin, the mouth interior, wrinkles and shading changes) is
left invalid for the network to paint. The target render also gives the target's depth, normals
and mask: together they are the 8 buffer channels of :mod:`facediff_ros.core.editor.network`
(:func:`buffers_tensor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.crop import FaceCrop
from facediff_ros.core.render.renderer import RenderBuffers, Renderer

# Depth agreement (m) for a source point to count as seen: each source pixel blended by its lookup
# must lie within this of the point's tangent plane along its ray. At 64 px over 0.24 m a crop
# pixel is 3.75 mm: a curved surface departs from its tangent plane by its sag over that distance
# (~0.2 mm on a cheek, ~1 mm on the nose), while a point hidden behind another surface is
# centimetres behind it.
WARP_DEPTH_TOLERANCE_M = 0.002


@dataclass
class WarpBuffers:
    """The target-expression buffers in crop space, all (S, S, ...) for the crop's S x S pixels."""

    color: np.ndarray      # (S, S, 3) float32 source colour on the target (its units), 0 where not valid
    valid: np.ndarray      # (S, S) bool: color holds source colour (the target surface seen in the source)
    depth: np.ndarray      # (S, S) float32 target z-depth (m), 0 off the target mesh
    normals: np.ndarray    # (S, S, 3) float32 target unit normals (camera frame, facing it), 0 off the mesh
    mask: np.ndarray       # (S, S) bool: the target mesh covers the pixel
    source_xy: np.ndarray  # (S, S, 2) float32 source crop (x, y) looked up (clipped to it), NaN off the mesh


def warp_source(source_color: np.ndarray, source_render: RenderBuffers, target_render: RenderBuffers,
                source_vertices: np.ndarray, triangles: np.ndarray, intrinsics: Intrinsics,
                tolerance_m: float = WARP_DEPTH_TOLERANCE_M) -> WarpBuffers:
    """Move source colour onto the target geometry, given both meshes' renders.

    Args:
        source_color: (S, S, 3) colour of the source crop (any float units; sampled bilinearly).
        source_render: the source mesh rendered with ``intrinsics`` (depth and mask are used).
        target_render: the target mesh rendered with ``intrinsics`` and the same ``triangles``.
        source_vertices: (V, 3) source mesh vertices, camera frame (m).
        triangles: (F, 3) the vertex ids both renders used (tri_id indexes them).
        intrinsics: the crop camera (:attr:`FaceCrop.intrinsics`), S x S.
        tolerance_m: depth agreement for visibility (m).

    Returns:
        :class:`WarpBuffers`.
    """
    S = intrinsics.shape
    col = np.asarray(source_color, dtype=np.float32)
    if col.shape != S + (3,):
        raise ValueError(f"source_color must be {S + (3,)} as the intrinsics, got {col.shape}")
    for name, r in (("source_render", source_render), ("target_render", target_render)):
        if not isinstance(r, RenderBuffers) or r.depth.shape != S:
            raise ValueError(f"{name} must be RenderBuffers of shape {S} (render with the crop intrinsics)")
    vs = np.asarray(source_vertices, dtype=np.float64)
    tris = np.asarray(triangles)
    if vs.ndim != 2 or vs.shape[1] != 3 or not np.all(np.isfinite(vs)):
        raise ValueError(f"source_vertices must be a finite (V, 3) array, got {vs.shape}")
    if tris.ndim != 2 or tris.shape[1] != 3:
        raise ValueError(f"triangles must be (F, 3), got {tris.shape}")
    if not np.isfinite(tolerance_m) or tolerance_m <= 0:
        raise ValueError(f"tolerance_m must be > 0, got {tolerance_m}")
    H, W = S

    pix = np.flatnonzero(target_render.mask)  # (N,) target pixels on the mesh
    tri = target_render.tri_id.reshape(-1)[pix]
    if pix.size and (tri.min() < 0 or tri.max() >= len(tris)):
        raise ValueError("target_render.tri_id does not index these triangles")
    corners = tris[tri]  # (N, 3) vertex ids
    bary = target_render.bary.reshape(-1, 3)[pix].astype(np.float64)  # (N, 3)
    p = np.einsum("nk,nkc->nc", bary, vs[corners])  # (N, 3) the same surface points on the source
    z = p[:, 2]
    zs = np.where(z > 1e-6, z, 1.0)
    x = intrinsics.fx * p[:, 0] / zs + intrinsics.cx
    y = intrinsics.fy * p[:, 1] / zs + intrinsics.cy
    eps = 1e-4  # px: a point on the outermost pixel centres is inside despite rounding
    inside = (z > 1e-6) & (x >= -eps) & (x <= W - 1 + eps) & (y >= -eps) & (y <= H - 1 + eps)
    x, y = np.clip(x, 0, W - 1), np.clip(y, 0, H - 1)

    # Bilinear weights of the four source pixels around (x, y).
    x0 = np.clip(np.floor(x), 0, W - 2).astype(np.int64)
    y0 = np.clip(np.floor(y), 0, H - 2).astype(np.int64)
    fx = np.where(inside, x - x0, 0.0)[:, None]  # (N, 1)
    fy = np.where(inside, y - y0, 0.0)[:, None]
    flat00 = y0 * W + x0
    taps = (flat00, flat00 + 1, flat00 + W, flat00 + W + 1)  # (x0, y0), (x0+1, y0), (x0, y0+1), (x0+1, y0+1)
    weights = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)  # (N, 1) each
    smask = source_render.mask.reshape(-1)
    sdepth = source_render.depth.reshape(-1).astype(np.float64)
    # Visibility, two tests. (1) Every source pixel the lookup blends is on the mesh, and their
    # bilinear depth is within tolerance_m of the point's. (2) Across a depth edge that blend
    # mixes two surfaces and can match a third, hidden one between them (the side of the nose
    # between its ridge and the cheek), so the nearest of those pixels must show the point's own
    # surface: its depth within 2 tolerance_m of where its ray meets the plane of the point's
    # source triangle (exact for a plane at any slope; a pixel showing something else is
    # centimetres off).
    z_src = sum(w[:, 0] * sdepth[t] for w, t in zip(weights, taps))  # (N,)
    seen = inside & (np.abs(z - z_src) < tolerance_m)
    for w, t in zip(weights, taps):
        seen &= smask[t] | (w[:, 0] <= 1e-6)  # a point exactly on a pixel centre needs only that pixel
    near = np.choose(np.argmax(np.concatenate(weights, axis=1), axis=1), taps)  # (N,) flat index
    a, b, c = (vs[corners[:, k]] for k in range(3))  # (N, 3) each
    n = np.cross(b - a, c - a)  # (N, 3) unnormalised source triangle normals
    ray = np.stack([(near % W - intrinsics.cx) / intrinsics.fx, (near // W - intrinsics.cy) / intrinsics.fy,
                    np.ones(len(near))], 1)  # (N, 3) the nearest pixel's ray, z = 1
    n_dot_r = np.einsum("nc,nc->n", n, ray)
    # Grazing (plane and ray within ~6 deg of parallel): the plane's depth there is meaningless.
    grazing = np.abs(n_dot_r) < 0.1 * np.linalg.norm(n, axis=1) * np.linalg.norm(ray, axis=1)
    z_plane = np.einsum("nc,nc->n", n, p) / np.where(grazing, 1.0, n_dot_r)
    seen &= ~grazing & (np.abs(sdepth[near] - z_plane) < 2 * tolerance_m)
    flat_col = col.reshape(-1, 3)
    warped = sum(w * flat_col[t] for w, t in zip(weights, taps))  # (N, 3)
    color = np.zeros((H * W, 3), np.float32)
    color[pix[seen]] = warped[seen]
    valid = np.zeros(H * W, bool)
    valid[pix[seen]] = True
    xy = np.full((H * W, 2), np.nan, np.float32)
    xy[pix] = np.stack([x, y], 1)  # (N, 2), clipped to the crop
    mask = target_render.mask.copy()
    return WarpBuffers(color=color.reshape(H, W, 3), valid=valid.reshape(H, W),
                       depth=np.where(mask, target_render.depth, 0.0).astype(np.float32),
                       normals=np.where(mask[..., None], target_render.normals, 0.0).astype(np.float32),
                       mask=mask, source_xy=xy.reshape(H, W, 2))


def model_only_edit(source_color: np.ndarray, source_vertices: np.ndarray, target_vertices: np.ndarray,
                    triangles: np.ndarray, intrinsics: Intrinsics, renderer: Optional[Renderer] = None,
                    tolerance_m: float = WARP_DEPTH_TOLERANCE_M) -> WarpBuffers:
    """Render both meshes in the crop camera and :func:`warp_source` the source colour.

    Args:
        source_color: (S, S, 3) the source crop's colour (e.g. :meth:`FaceCrop.sample_color`).
        source_vertices, target_vertices: (V, 3) the fitted mesh with the source and the target
            expression, camera frame (m), same topology and pose.
        triangles: (F, 3) vertex ids to render (e.g. ``atlas_triangles(model)[0]``).
        intrinsics: the crop camera (:attr:`FaceCrop.intrinsics`).
        renderer: a :class:`Renderer` for ``intrinsics`` to reuse (made when None).
    """
    if renderer is None:
        renderer = Renderer(intrinsics)
    elif renderer.intrinsics != intrinsics:
        raise ValueError("renderer must be made for the crop intrinsics given")
    src = renderer.render(source_vertices, triangles)  # geometry only: no texture, no shading
    tgt = renderer.render(target_vertices, triangles)
    return warp_source(source_color, src, tgt, source_vertices, triangles, intrinsics, tolerance_m)


# The mask channel's three levels: why a face pixel has or lacks the person's own colour.
MASK_WARPED = 1.0      # target face pixel carrying warped source colour
MASK_TO_PAINT = 0.0    # target face pixel the source did not show (disocclusion, mouth interior)
MASK_BACKGROUND = -1.0  # not on the target face


def buffers_tensor(buffers: WarpBuffers, crop: FaceCrop, color_scale: float = 1.0) -> np.ndarray:
    """The network's 8 buffer channels, (8, S, S) float32, each in [-1, 1].

    - 0-2: warped colour, ``2 * color / color_scale - 1`` where valid, 0 (mid-grey) elsewhere;
    - 3: target depth, :meth:`FaceCrop.normalise_depth` (off the face: ``hole_value``);
    - 4-6: target normals (camera frame, unit; 0 off the face);
    - 7: mask, three levels: :data:`MASK_WARPED` (+1) face with the person's colour,
      :data:`MASK_TO_PAINT` (0) face without it, :data:`MASK_BACKGROUND` (-1) elsewhere, so the
      network knows which colour to keep and which to make up.

    ``color_scale`` is the colour's full scale (1 for [0, 1], 255 for 8-bit values).
    """
    if not isinstance(buffers, WarpBuffers):
        raise ValueError(f"buffers must be WarpBuffers, got {type(buffers).__name__}")
    if buffers.mask.shape != crop.shape:
        raise ValueError(f"buffers are {buffers.mask.shape}, the crop is {crop.shape}")
    if not np.isfinite(color_scale) or color_scale <= 0:
        raise ValueError(f"color_scale must be > 0, got {color_scale}")
    out = np.empty((8,) + crop.shape, np.float32)
    c = np.clip(buffers.color / np.float32(color_scale), 0.0, 1.0) * 2.0 - 1.0
    out[0:3] = np.moveaxis(np.where(buffers.valid[..., None], c, 0.0), -1, 0)  # (3, S, S)
    out[3], _ = crop.normalise_depth(np.where(buffers.mask, buffers.depth, 0.0))
    out[4:7] = np.moveaxis(buffers.normals, -1, 0)  # (3, S, S)
    out[7] = np.where(buffers.valid, MASK_WARPED, np.where(buffers.mask, MASK_TO_PAINT, MASK_BACKGROUND))
    return out
