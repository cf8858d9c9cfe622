"""Per-subject UV texture: colour frames projected onto the fitted mesh and fused over time.

Each accepted frame goes through :func:`facediff_ros.core.render.textures.project_to_uv` (every
texel's point on the posed fitted mesh, its pixel, a bilinear colour sample, a weight
``max(0, n . view)^p`` where visible) and the weighted running sum of
:func:`~facediff_ros.core.render.textures.accumulate`; :meth:`SubjectTexture.texture` finalises it.
A texel seen frontally in many frames dominates one seen at a grazing angle once. The atlas
layout is :func:`~facediff_ros.core.render.textures.atlas_uvs`' (the editor's). Colours are what
the camera saw: albedo times the scene's shading (no relighting is attempted here).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.morphable_model import DEFAULT_REGIONS, MorphableModel
from facediff_ros.core.fitting.tracker import FitResult
from facediff_ros.core.render import textures


class SubjectTexture:
    """Accumulates one subject's texture over fitted frames.

    Args:
        model: the morphable model the fits refer to.
        size: texels per side of the atlas (512: ~0.64 mm of skin per texel around the eyes).
        regions: mesh regions textured (default: what a camera sees of a head).
        min_quality: frames whose fit quality is below this are not added (a misfit smears colour
            over the wrong texels, and the sum never forgets it).
        config: projection tolerances and view weighting.
    """

    def __init__(self, model: MorphableModel, size: int = 512, regions: Sequence[str] = DEFAULT_REGIONS,
                 min_quality: float = 0.5, config: textures.ProjectionConfig = textures.ProjectionConfig()):
        if int(size) != size or size < 16:
            raise ValueError(f"size must be an integer >= 16, got {size}")
        if not 0 <= min_quality <= 1:
            raise ValueError(f"min_quality must be in [0, 1], got {min_quality}")
        self.model = model
        self.size = int(size)
        self.min_quality = float(min_quality)
        self.config = config
        self.triangles, self.tri_uvs, _ = textures.atlas_triangles(model, tuple(regions))
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated colour (a new subject)."""
        self._sum: Optional[np.ndarray] = None
        self._weight: Optional[np.ndarray] = None
        self.frames = 0

    def add(self, image: np.ndarray, fit: FitResult, intrinsics: Intrinsics,
            depth_m: Optional[np.ndarray] = None) -> bool:
        """Project one colour frame onto the fitted mesh and add it; False when the fit is not used.

        Args:
            image: (H, W, 3) uint8 or float [0, 1] colour image the fit was made on.
            fit: the frame's :class:`FitResult` (camera optical frame).
            intrinsics: the image's camera.
            depth_m: optional aligned depth (m, 0 = none) for the visibility test; by default the
                fitted mesh itself is rendered for it.
        """
        if not fit.ok or fit.quality < self.min_quality:
            return False
        vertices = fit.vertices(self.model)  # (V, 3) camera frame
        tex, w = textures.project_to_uv(image, vertices, self.triangles, self.tri_uvs, intrinsics, self.size,
                                        depth_m, self.config)
        self._sum, self._weight = textures.accumulate(self._sum, self._weight, tex, w)
        self.frames += 1
        return True

    @property
    def weight(self) -> Optional[np.ndarray]:
        """(S, S) accumulated visibility weight, None before the first frame."""
        return None if self._weight is None else self._weight.astype(np.float32)

    def texture(self, fallback: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(S, S, 3) float32 fused colour in [0, 1] and (S, S) bool observed texels.

        Unobserved texels take ``fallback`` (e.g. a procedural texture) or the nearest observed
        colour. Raises ValueError before any frame was added.
        """
        if self._sum is None:
            raise ValueError("no frame has been added yet")
        return textures.finalize(self._sum, self._weight, fallback)
