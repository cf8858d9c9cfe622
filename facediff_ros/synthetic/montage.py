"""A documentation montage: random identities x the seven expression categories, colour and depth.

``facediff montage --out docs/montage.png`` (or :func:`make_montage`) renders several random
subjects of the ICT-FaceKit model -- identity N(0, 0.8) on the first 30 modes, a procedural
albedo whose skin tones are spread evenly from light to dark along the Monk scale -- in each of
the seven categories of :mod:`facediff_ros.core.face.expressions` at intensity 1, and lays the renders
out in a grid:

* a header strip (``MontageConfig.label_px`` high) with the category names;
* per identity two rows of ``size`` x ``size`` cells: the shaded colour render (sRGB, Lambert
  light, grey background) above the depth render;
* a legend strip (``MontageConfig.legend_px`` high) with the depth colour scale.

So the image is ``(label_px + 2 * identities * size + legend_px, 7 * size, 3)`` (rows, columns).

Depth cells map z-depth (metres, camera frame) linearly over ``MontageConfig.depth_range_m``
(default 0.56 .. 0.66 m; the face's centre is 0.6 m from the camera) with OpenCV's TURBO colour
map, near = blue, far = red as in the RealSense viewer; pixels without a surface are black,
depths outside the range are clamped to its ends.

The camera is a ``size`` x ``size`` crop with a 23 degree field of view (the head fills it); the
head is turned by ``yaw_rad`` (default 0.35, ~20 degrees) so that the depth relief reads.
Everything is seeded: one ``seed`` gives the same image. ROS-free; writes only ``out_path``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np

from facediff_ros.core import color
from facediff_ros.core.face import expressions
from facediff_ros.core.render import textures
from facediff_ros.synthetic.actor import ACTOR_REGIONS
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.morphable_model import MorphableModel, rotation_matrix, transform
from facediff_ros.core.render.renderer import Lighting, Renderer

_BACKGROUND = 0.16  # sRGB grey behind the colour renders (depth cells stay black where empty)


@dataclass(frozen=True)
class MontageConfig:
    """Parameters of :func:`make_montage` (distances in metres, angles in radians)."""

    identities: int = 4                   # rows of subjects (each one a colour and a depth row)
    size: int = 192                       # pixels per cell side
    seed: int = 0
    identity_modes: int = 30              # as the synthetic actor: N(0, sigma) on the first modes
    identity_sigma: float = 0.8
    distance_m: float = 0.6               # camera to the face centre (mean of the 68 landmarks)
    hfov_deg: float = 23.0                # the turned head (~24 cm) fills the crop at 0.6 m
    yaw_rad: float = 0.35                 # a turned head shows the depth relief
    pitch_rad: float = -0.05              # slightly from above
    depth_range_m: Tuple[float, float] = (0.56, 0.66)  # colour-map range: nose tip .. cheek/ear at 0.6 m
    texture_size: int = 512
    label_px: int = 24                    # header strip with the category names
    legend_px: int = 28                   # footer strip with the depth scale

    def __post_init__(self):
        for name in ("identities", "size", "identity_modes", "texture_size", "label_px", "legend_px"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                raise ValueError(f"MontageConfig.{name} must be a non-negative integer, got {v}")
        if self.identities < 1 or self.size < 32:
            raise ValueError(f"MontageConfig needs identities >= 1 and size >= 32, "
                             f"got {self.identities}, {self.size}")
        if not 1 <= self.identity_modes <= 100:
            raise ValueError(f"MontageConfig.identity_modes must be in [1, 100], got {self.identity_modes}")
        lo, hi = self.depth_range_m
        if not 0 < lo < hi:
            raise ValueError(f"MontageConfig.depth_range_m must be (near, far) with 0 < near < far, "
                             f"got {self.depth_range_m}")
        if not 0 < self.hfov_deg < 170 or not self.distance_m > 0:
            raise ValueError("MontageConfig needs 0 < hfov_deg < 170 and distance_m > 0")

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(rows, columns, 3) of the montage image."""
        return (self.label_px + 2 * self.identities * self.size + self.legend_px,
                len(expressions.CATEGORIES) * self.size, 3)


def depth_to_color(depth: np.ndarray, depth_range_m: Tuple[float, float]) -> np.ndarray:
    """(H, W) z-depth in metres (0 = empty) -> (H, W, 3) uint8 RGB: TURBO, near blue, far red, empty black."""
    lo, hi = depth_range_m
    x = np.clip((depth - lo) / (hi - lo), 0.0, 1.0)
    idx = np.rint(x * 255).astype(np.uint8)  # TURBO runs blue (0) .. red (255)
    rgb = cv2.applyColorMap(idx, cv2.COLORMAP_TURBO)[..., ::-1]  # (H, W, 3) BGR -> RGB
    return np.where((depth > 0)[..., None], rgb, 0).astype(np.uint8)


def render_montage(config: Optional[MontageConfig] = None,
                   model: Optional[MorphableModel] = None) -> np.ndarray:
    """The montage as an image: ``config.image_shape`` uint8 RGB (see the module docstring)."""
    c = config if config is not None else MontageConfig()
    if not isinstance(c, MontageConfig):
        raise ValueError(f"config must be a MontageConfig, got {type(c).__name__}")
    model = model if model is not None else MorphableModel.load()
    s = c.size
    cats = expressions.CATEGORIES
    out = np.zeros(c.image_shape, np.uint8)
    intr = Intrinsics.from_fov(s, s, c.hfov_deg)
    renderer = Renderer(intr)
    tris, tri_uvs, _ = textures.atlas_triangles(model, ACTOR_REGIONS)
    R = rotation_matrix((0.0, c.yaw_rad, 0.0)) @ rotation_matrix((c.pitch_rad, 0.0, 0.0))
    centre = model.neutral[model.landmarks68].mean(axis=0)  # (3,) model frame
    t = np.array([0.0, 0.0, c.distance_m]) - R @ centre  # the face centre lands on the optical axis
    names = model.expression_names
    rng = np.random.default_rng([c.seed, 7])
    # Tones spread evenly over the scale, so even two rows show a light and a dark subject.
    tones = np.linspace(0.05, 0.95, c.identities) if c.identities > 1 else np.array([0.3])
    _put_labels(out[:c.label_px], cats, s)
    for row in range(c.identities):
        identity = (rng.standard_normal(c.identity_modes) * c.identity_sigma).astype(np.float32)
        params = dataclasses.replace(textures.TextureParams.sample(rng), tone=float(tones[row]))
        albedo = textures.procedural_texture(model, params=params, size=c.texture_size)
        # Shading multiplies linear albedo, as the actor does.
        albedo_lin = color.srgb_to_linear(albedo, np.float32)
        y0 = c.label_px + 2 * row * s
        for col, cat in enumerate(cats):
            expr = expressions.category_weights(names, cat, 1.0)
            v = transform(model.vertices(identity, expr), R, t)
            buf = renderer.render(v, tris, tri_uvs, albedo_lin, lighting=Lighting())
            rgb = np.where(buf.mask[..., None], color.linear_to_srgb(buf.color), _BACKGROUND)
            out[y0:y0 + s, col * s:(col + 1) * s] = np.rint(rgb * 255).astype(np.uint8)
            out[y0 + s:y0 + 2 * s, col * s:(col + 1) * s] = depth_to_color(buf.depth, c.depth_range_m)
        _put_text(out, f"skin tone {tones[row]:.2f}", (4, y0 + int(40 * _font_scale(s))), s)
    _put_legend(out[out.shape[0] - c.legend_px:], c.depth_range_m)
    return out


def make_montage(out_path: Union[str, Path], identities: int = 4, size: int = 192, seed: int = 0,
                 model: Optional[MorphableModel] = None) -> np.ndarray:
    """Render the montage (:func:`render_montage`) and write it as a PNG.

    Args:
        out_path: the .png to write (its folder is created).
        identities: number of random subjects (rows of colour + depth cells).
        size: pixels per cell side.
        seed: seeds identities and textures.
        model: the morphable model (loaded from the cache when None).

    Returns:
        the (rows, columns, 3) uint8 RGB image written.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise ValueError(f"out_path must name a .png file, got {out_path}")
    img = render_montage(MontageConfig(identities=identities, size=size, seed=seed), model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_path), img[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {out_path}")
    return img


# ---- drawing -------------------------------------------------------------------------------------
def _font_scale(cell: int) -> float:
    return float(np.clip(cell / 300.0, 0.3, 0.6))


def _put_text(img, text, org, cell, color=(235, 235, 235)):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, _font_scale(cell), color, 1, cv2.LINE_AA)


def _put_labels(strip: np.ndarray, cats, cell: int):
    """Category names centred over their columns."""
    h = strip.shape[0]
    if h < 8:
        return
    scale = _font_scale(cell)
    for col, cat in enumerate(cats):
        (tw, th), _ = cv2.getTextSize(cat, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        org = (col * cell + max(0, (cell - tw) // 2), (h + th) // 2)
        cv2.putText(strip, cat, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1, cv2.LINE_AA)


def _put_legend(strip: np.ndarray, depth_range_m):
    """A horizontal depth colour bar (near left) with its range in metres."""
    h, w = strip.shape[:2]
    if h < 8:
        return
    lo, hi = depth_range_m
    bar_w = w // 2
    x0 = (w - bar_w) // 2
    ramp = np.linspace(lo, hi, bar_w)[None, :].repeat(max(1, h // 2), axis=0)  # (h/2, bar_w) metres
    y0 = (h - ramp.shape[0]) // 2
    strip[y0:y0 + ramp.shape[0], x0:x0 + bar_w] = depth_to_color(ramp, depth_range_m)
    scale = float(np.clip(h / 60.0, 0.3, 0.5))
    for text, right in ((f"depth {lo:.2f} m (near)", True), (f"{hi:.2f} m (far), black: none", False)):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = x0 - tw - 6 if right else x0 + bar_w + 6
        cv2.putText(strip, text, (max(0, x), (h + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (235, 235, 235), 1, cv2.LINE_AA)
