"""The editor network's inputs from a fitted mesh: one definition for training pairs and the live edit.

The network only works on inputs built the way its training pairs were
(:mod:`facediff_ros.synthetic.editor_data`), so both build them here:

- the mesh regions rendered into the buffers (:data:`EDITOR_REGIONS`: the actor's head with the
  mouth interior, so an opened mouth shows teeth and tongue geometry);
- the crop, centred on the centroid of the *fitted source* mesh's 68 landmark vertices
  (:func:`face_crop`);
- the source RGB-D crop (:meth:`FaceCrop.rgbd`: colour in [0, 1] -> [-1, 1], depth normalised
  around the crop centre) and the target buffers (:func:`~facediff_ros.core.editor.warp.model_only_edit`
  of the source colour from the source mesh onto the target mesh, then
  :func:`~facediff_ros.core.editor.warp.buffers_tensor` with colour in [0, 1])
  (:func:`network_inputs`).

Frames: every mesh is in the camera optical frame (REP-103: x right, y down, z forward), metres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.crop import CropConfig, FaceCrop
from facediff_ros.core.editor.warp import WARP_DEPTH_TOLERANCE_M, WarpBuffers, buffers_tensor, warp_source
from facediff_ros.core.face.morphable_model import DEFAULT_REGIONS, MorphableModel
from facediff_ros.core.render.renderer import RenderBuffers, Renderer

# The regions the training pairs rendered (synthetic.actor.ACTOR_REGIONS, which the core may not
# import): the default head plus teeth and gums/tongue, whose geometry the mouth buffers carry.
EDITOR_REGIONS = tuple(DEFAULT_REGIONS) + ("teeth", "gums_tongue")


def editor_triangles(model: MorphableModel) -> np.ndarray:
    """(F, 3) vertex ids of :data:`EDITOR_REGIONS`, the triangles both meshes are rendered with."""
    tris, _, _ = model.triangles(EDITOR_REGIONS)
    return tris


def face_crop(vertices: np.ndarray, centre_ids: Sequence[int], intrinsics: Intrinsics,
              config: Optional[CropConfig] = None) -> FaceCrop:
    """The editor's crop of a fitted mesh: centred on the mean of ``vertices[centre_ids]``.

    :param vertices: (V, 3) the fitted source mesh, camera frame (m).
    :param centre_ids: the model's 68 landmark vertex ids (``MorphableModel.landmarks68``).
    :param intrinsics: the camera image's intrinsics.
    :param config: crop geometry; it must be the one the network was trained with.
    """
    v = np.asarray(vertices)
    # The mean in the vertices' own dtype (float32 for a fitted mesh), as the training pairs took it.
    return FaceCrop(v[np.asarray(centre_ids)].mean(axis=0), intrinsics, config)


@dataclass
class NetworkInputs:
    """What one edit feeds the network, in crop space (S x S pixels)."""

    source: np.ndarray   # (4, S, S) float32 source RGB-D, RGB in [-1, 1], depth normalised
    buffers: np.ndarray  # (8, S, S) float32 target buffers (warp.buffers_tensor)
    warp: WarpBuffers    # the model-only edit they came from (its mask: the target mesh covers the pixel)
    source_render: RenderBuffers  # the source mesh in the crop (its mask: where the face was; flat normals)


def network_inputs(crop: FaceCrop, source_rgb01: np.ndarray, source_depth_m: Optional[np.ndarray],
                   source_vertices: np.ndarray, target_vertices: np.ndarray, triangles: np.ndarray,
                   renderer: Optional[Renderer] = None) -> NetworkInputs:
    """Source RGB-D and target buffers of one edit.

    The two renders and the warp are :func:`~facediff_ros.core.editor.warp.model_only_edit`'s,
    done here so the source render is kept (its mask and, without measured depth, its depth).

    :param crop: the :func:`face_crop` of the source mesh.
    :param source_rgb01: (S, S, 3) source colour in [0, 1] (e.g. ``crop.sample_color(img) / 255``).
    :param source_depth_m: (S, S) source depth in metres, 0 (or NaN) = none; None: colour-only
        (a webcam): the fitted source mesh's rendered depth stands in for the sensor's, with no
        depth off the mesh.
    :param source_vertices: (V, 3) fitted mesh with the expression seen, camera frame (m).
    :param target_vertices: (V, 3) the same mesh (identity, pose) with the target expression.
    :param triangles: (F, 3) :func:`editor_triangles`.
    :param renderer: a :class:`Renderer` for ``crop.intrinsics`` to reuse (made when None).
    """
    if renderer is None:
        renderer = Renderer(crop.intrinsics)
    elif renderer.intrinsics != crop.intrinsics:
        raise ValueError("renderer must be made for the crop's intrinsics")
    # Geometry only (no texture, no shading). Of the source render only the mask and depth are
    # read: flat normals skip the per-vertex normal sums (the target's smooth normals are inputs).
    src = renderer.render(source_vertices, triangles, smooth_normals=False)
    tgt = renderer.render(target_vertices, triangles)
    warp = warp_source(source_rgb01, src, tgt, source_vertices, triangles, crop.intrinsics,
                       WARP_DEPTH_TOLERANCE_M)
    if source_depth_m is None:
        source_depth_m = np.where(src.mask, src.depth, 0.0).astype(np.float32)  # (S, S) m
    return NetworkInputs(source=crop.rgbd(source_rgb01, source_depth_m), buffers=buffers_tensor(warp, crop),
                         warp=warp, source_render=src)
