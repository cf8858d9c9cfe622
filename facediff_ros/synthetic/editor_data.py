"""Seeded training pairs for the expression editor: one synthetic person, two expressions.

A pair is what the editor sees at run time and what it should return, in its crop
(:class:`~facediff_ros.core.editor.crop.FaceCrop`, REP-103 optical frame, metres):

- ``source`` (4, S, S): the person as a RealSense-like camera sees them (RGB + normalised depth),
  with the sensor's depth noise, holes and colour noise (:mod:`facediff_ros.synthetic.actor`'s
  :class:`SensorNoise`, scaled to the crop's pixels);
- ``buffers`` (8, S, S): what the fitted model gives for the target expression
  (:func:`~facediff_ros.core.editor.warp.buffers_tensor`: the source colour warped by the
  model-only edit, depth, normals, the three-level mask). The "fitted" model is the true one with
  a small fitting error (pose, identity, expression), as a fitter would deliver;
- ``target`` (4, S, S): the truth, the same person, light and camera with the target expression,
  clean (no sensor noise);
- ``category`` (int, index into :data:`expressions.CATEGORIES`), ``intensity`` (float);
- ``mask`` (S, S): the share of each target pixel covered by the head (0..1), and
  ``source_valid`` (S, S): where the source has depth.

What is drawn per pair (seeded by ``(seed, index)``, any order): the camera's field of view, the
head pose (yaw +-35, pitch +-20, roll +-12 deg) at 0.45-0.9 m anywhere the crop fits in the image,
a textured wall 0.3-1.0 m behind the face, lighting and white balance, the source expression (a
category at a random intensity, a few random blendshapes, sometimes speech or a blink) and the
target (a category, intensity U(0.3, 1)). Identity (N(0, 0.8) on the first 30 modes, as the
actor) and the procedural texture are shared by ``pairs_per_identity`` consecutive indices: the
texture is the costliest part of a pair.

Both images are rendered straight into the crop at 2x (2x2 samples per pixel, averaged in linear
light; depth from the samples of the surface that covers most of the pixel). Appearance that
belongs to the person or the camera's colour response (lighting, white balance, exposure,
saturation, lens blur) is the same in source and target, so the network learns to pass skin it
has never seen through rather than paint a synthetic one; per-pixel sensor noise is the source's
alone.

Command line (``python -m facediff_ros.synthetic.editor_data``): ``--cache DIR --pairs N`` writes
npz shards for training (default ``$FACEDIFF_CACHE_DIR/editor_pairs`` or
``~/.cache/facediff_ros/editor_pairs``, outside git), ``--preview PNG`` a grid to look at,
``--bench`` the time per pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.color import srgb_to_linear
from facediff_ros.core.editor.crop import CropConfig
from facediff_ros.core.editor.inputs import EDITOR_REGIONS, face_crop, network_inputs
from facediff_ros.core.face import expressions
from facediff_ros.core.face.assets import default_cache_dir
from facediff_ros.core.face.morphable_model import MorphableModel, rotation_matrix
from facediff_ros.core.render import textures
from facediff_ros.core.render.renderer import Lighting, RenderBuffers, Renderer
from facediff_ros.synthetic.actor import SensorNoise, render_wall, sensor_color, sensor_depth

# Arrays of a pair, in shard order; shards store them as float16 (half the disk: 0.5 mm of
# normalised depth is 0.004, float16 resolves 0.0005 there) and load them back as float32.
ARRAY_KEYS = ("source", "target", "buffers", "mask", "source_valid")
SCALAR_KEYS = ("category", "intensity", "source_category", "source_intensity", "z_centre", "scale")


@dataclass(frozen=True)
class PairConfig:
    """What the pairs are drawn from. Angles in degrees, distances in metres."""

    seed: int = 0
    crop: CropConfig = field(default_factory=CropConfig)
    width: int = 640                                   # camera image, D435 colour at 640x480
    height: int = 480
    hfov_deg: Tuple[float, float] = (60.0, 78.0)       # D435 colour is 69 deg; webcams 60-78
    distance_m: Tuple[float, float] = (0.45, 0.9)      # face centre; D435 depth is good to ~1 m
    yaw_deg: float = 35.0                              # +-: both eyes stay visible
    pitch_deg: float = 20.0
    roll_deg: float = 12.0
    identity_modes: int = 30                           # as the actor: N(0, 0.8) on 30 modes
    identity_sigma: float = 0.8
    texture_size: int = 256                            # 256 texels: ~1.3 mm, finer than a 3.75 mm crop pixel
    pairs_per_identity: int = 8                        # a texture costs ~120 ms; a pair ~40 ms
    wall_behind_m: Tuple[float, float] = (0.3, 1.0)    # wall distance behind the face centre
    supersample: int = 2                               # samples per crop pixel and axis
    source_intensity: Tuple[float, float] = (0.0, 1.0)
    target_intensity: Tuple[float, float] = (0.3, 1.0)
    extra_shapes: int = 3                              # random blendshapes added to the source ...
    extra_weight: float = 0.3                          # ... each U(0, this)
    speech_prob: float = 0.3                           # source talking: jawOpen U(0, 0.35) + funnel
    blink_prob: float = 0.1                            # source blinking: eyeBlink U(0.3, 1)
    # Fitting error of the model that makes the buffers (1 sigma): a few pixels' worth at most.
    fit_rotation_deg: float = 1.0
    fit_translation_m: float = 0.002
    fit_identity_sigma: float = 0.1
    fit_expression_sigma: float = 0.03
    # Appearance shared by source and target (camera colour response and lens), ranges.
    exposure: Tuple[float, float] = (0.7, 1.4)         # gain in linear light
    white_balance: float = 0.08                        # per-channel gain 1 +- this
    saturation: Tuple[float, float] = (0.75, 1.25)
    blur_px: Tuple[float, float] = (0.0, 0.7)          # Gaussian sigma, crop pixels
    # The source's sensor. Colour noise is SensorNoise's at camera pixels times U(these): the
    # crop's anti-aliasing averages 2-4 camera pixels per axis (noise / 2-4), dim light raises it.
    noise: SensorNoise = field(default_factory=SensorNoise)
    color_noise_gain: Tuple[float, float] = (0.25, 1.5)

    def __post_init__(self):
        if not isinstance(self.crop, CropConfig):
            raise ValueError(f"PairConfig.crop must be a CropConfig, got {type(self.crop).__name__}")
        if not isinstance(self.noise, SensorNoise):
            raise ValueError(f"PairConfig.noise must be a SensorNoise, got {type(self.noise).__name__}")
        for name in ("seed", "width", "height", "identity_modes", "texture_size", "pairs_per_identity",
                     "supersample", "extra_shapes"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                raise ValueError(f"PairConfig.{name} must be a non-negative integer, got {v}")
        if self.pairs_per_identity < 1 or self.supersample < 1 or self.width < 64 or self.height < 64:
            raise ValueError("PairConfig: pairs_per_identity and supersample must be >= 1, "
                             "the image >= 64 px")
        for name in ("hfov_deg", "distance_m", "wall_behind_m", "source_intensity", "target_intensity",
                     "exposure", "saturation", "blur_px", "color_noise_gain"):
            lo, hi = getattr(self, name)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"PairConfig.{name} must be a range (lo, hi) with 0 <= lo <= hi, "
                                 f"got {(lo, hi)}")
        if self.source_intensity[1] > 1 or self.target_intensity[1] > 1:
            raise ValueError("PairConfig: intensities must lie in [0, 1]")
        if self.distance_m[0] <= 0.2 or self.hfov_deg[1] >= 170 or self.hfov_deg[0] <= 0:
            raise ValueError("PairConfig: distance_m must start beyond 0.2 m, hfov_deg in (0, 170)")
        for name in ("speech_prob", "blink_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"PairConfig.{name} must be a probability, got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _identity_rng(seed: int, group: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0, int(group)])


def _pair_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 1, int(index)])


class PairGenerator:
    """``pair(index)`` draws pair ``index`` of the seeded sequence (any order, same result)."""

    def __init__(self, config: Optional[PairConfig] = None, model: Optional[MorphableModel] = None):
        self.config = config = config if config is not None else PairConfig()
        if not isinstance(config, PairConfig):
            raise ValueError(f"config must be a PairConfig, got {type(config).__name__}")
        self.model = model if model is not None else MorphableModel.load()
        # The live editor renders the same regions (core.editor.inputs; the actor's ACTOR_REGIONS).
        self.triangles, self.tri_uvs, _ = textures.atlas_triangles(self.model, EDITOR_REGIONS)
        self._names = list(self.model.expression_names)
        self._expr_basis = self.model.expression_basis.reshape(self.model.num_expression, -1)  # (E, V*3)
        self._centre_ids = self.model.landmarks68
        self._people: Dict[int, tuple] = {}  # identity group -> (identity, albedo linear); the last few

    # ---- one person per group of indices -----------------------------------------------------------
    def person(self, group: int) -> Tuple[np.ndarray, np.ndarray]:
        """(identity (K,) float32, albedo (T, T, 3) float32 linear) of an identity group."""
        hit = self._people.get(group)
        if hit is None:
            c = self.config
            rng = _identity_rng(c.seed, group)
            identity = (rng.standard_normal(c.identity_modes) * c.identity_sigma).astype(np.float32)
            params = textures.TextureParams.sample(rng)
            albedo = textures.procedural_texture(self.model, params=params, size=c.texture_size)
            hit = (identity, srgb_to_linear(albedo, np.float32))
            if len(self._people) >= 4:
                self._people.pop(next(iter(self._people)))
            self._people[group] = hit
        return hit

    # ---- a pair --------------------------------------------------------------------------------------
    def pair(self, index: int) -> Dict[str, object]:
        """Pair ``index`` (>= 0): a dict of float32 arrays and scalars (module docstring)."""
        if int(index) != index or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index}")
        index = int(index)
        c, m = self.config, self.model
        identity, albedo = self.person(index // c.pairs_per_identity)
        rng = _pair_rng(c.seed, index)
        ss = c.supersample

        # Camera and true head pose: x_cam = R (x - centre) + c_cam, centre = landmark centroid.
        K = Intrinsics.from_fov(c.width, c.height, float(rng.uniform(*c.hfov_deg)))
        dist = float(rng.uniform(*c.distance_m))
        yaw, pitch, roll = np.radians([rng.uniform(-1, 1) * c.yaw_deg, rng.uniform(-1, 1) * c.pitch_deg,
                                       rng.uniform(-1, 1) * c.roll_deg])
        R = rotation_matrix((0, 0, roll)) @ rotation_matrix((0, yaw, 0)) @ rotation_matrix((pitch, 0, 0))
        # The face anywhere the crop (scale * S camera pixels) stays inside the image.
        half = 0.5 * c.crop.extent_m * 0.5 * (K.fx + K.fy) / dist
        u = rng.uniform(min(half, K.width / 2), max(K.width - half, K.width / 2))
        v = rng.uniform(min(half, K.height / 2), max(K.height - half, K.height / 2))
        c_cam = K.backproject(u, v, dist)

        # Expressions: source = a category + extras, target = a category's prototype.
        src_cat = int(rng.integers(len(expressions.CATEGORIES)))
        src_int = float(rng.uniform(*c.source_intensity))
        w_src = self._source_weights(rng, src_cat, src_int)
        tgt_cat = int(rng.integers(len(expressions.CATEGORIES)))
        tgt_int = float(rng.uniform(*c.target_intensity))
        w_tgt = expressions.category_weights(self._names, tgt_cat, tgt_int)

        # The fitted model: the truth plus a fitting error; it fixes the crop and the buffers.
        R_fit = rotation_matrix(np.radians(c.fit_rotation_deg) * rng.standard_normal(3)) @ R
        c_fit = c_cam + c.fit_translation_m * rng.standard_normal(3)
        id_fit = (identity + c.fit_identity_sigma * rng.standard_normal(identity.shape)).astype(np.float32)
        w_fit = np.clip(w_src + c.fit_expression_sigma * rng.standard_normal(w_src.shape), 0, 1
                        ).astype(np.float32)

        base = m.vertices(identity)  # (V, 3) identity-shaped neutral, model frame
        centre = base[self._centre_ids].mean(axis=0)
        base_fit = m.vertices(id_fit)
        centre_fit = base_fit[self._centre_ids].mean(axis=0)
        v_src = self._posed(base, w_src, R, centre, c_cam)
        v_tgt = self._posed(base, w_tgt, R, centre, c_cam)
        vf_src = self._posed(base_fit, w_fit, R_fit, centre_fit, c_fit)
        vf_tgt = self._posed(base_fit, w_tgt, R_fit, centre_fit, c_fit)
        crop = face_crop(vf_src, self._centre_ids, K, c.crop)

        # Scene: light, white balance, the wall; rendered at ss x ss samples per crop pixel.
        light_dir = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 0.3), -1.0])
        lighting = Lighting(direction=tuple(light_dir), ambient=float(rng.uniform(0.2, 0.5)),
                            diffuse=float(rng.uniform(0.4, 0.8)))
        K_ss = crop.intrinsics.scaled(ss, ss)
        r_ss = Renderer(K_ss)
        # (A 128-texel wall: the crop sees ~0.4 m of it, and it costs a third of a 256 one.)
        wall = render_wall(r_ss, float(crop.z_centre + rng.uniform(*c.wall_behind_m)), lighting, rng,
                           texture_size=128)
        src_lin, src_depth, src_normals, _ = self._render(r_ss, v_src, albedo, lighting, wall, ss)
        tgt_lin, tgt_depth, _, tgt_cover = self._render(r_ss, v_tgt, albedo, lighting, wall, ss)

        # Appearance of the camera and the person's light, the same for both.
        gain = (rng.uniform(*c.exposure) * (1 + rng.uniform(-c.white_balance, c.white_balance, 3))
                ).astype(np.float32)
        sat = np.float32(rng.uniform(*c.saturation))
        blur = float(rng.uniform(*c.blur_px))
        noise_gain = float(rng.uniform(*c.color_noise_gain))

        def look(lin):
            x = lin * gain
            grey = x @ np.array([0.2126, 0.7152, 0.0722], np.float32)  # (S, S) linear luminance
            return np.clip(grey[..., None] + sat * (x - grey[..., None]), 0.0, 1.0)

        clean = dataclasses.replace(c.noise, color_blur_px=blur, color_read_sigma=0.0, color_shot=0.0)
        noisy = dataclasses.replace(c.noise, color_blur_px=blur, color_read_sigma=c.noise.color_read_sigma
                                    * noise_gain, color_shot=c.noise.color_shot * noise_gain ** 2)
        tgt_rgb = sensor_color(look(tgt_lin), clean, rng).astype(np.float32) / 255.0
        src_rgb = sensor_color(look(src_lin), noisy, rng).astype(np.float32) / 255.0
        # Depth sensor in crop pixels: its pixel-sized effects shrink by the crop's scale.
        s = crop.scale
        lo, hi = c.noise.hole_radius_px
        depth_noise = dataclasses.replace(c.noise, depth_smooth_px=c.noise.depth_smooth_px / s,
                                          hole_radius_px=(lo / s, hi / s))
        src_mm = sensor_depth(src_depth, src_normals, crop.intrinsics, depth_noise, rng)
        src_z = src_mm.astype(np.float32) * np.float32(c.noise.depth_unit_m)

        # The buffers, from the fitted meshes and the noisy source, at the crop's own resolution:
        # built by the function the live editor calls (core.editor.inputs).
        inputs = network_inputs(crop, src_rgb, src_z, vf_src, vf_tgt, self.triangles)
        src_valid = src_z > 0
        return {
            "source": inputs.source,
            "target": crop.rgbd(tgt_rgb, tgt_depth),
            "buffers": inputs.buffers,
            "mask": tgt_cover.astype(np.float32),
            "source_valid": src_valid.astype(np.float32),
            "category": tgt_cat, "intensity": tgt_int,
            "source_category": src_cat, "source_intensity": src_int,
            "z_centre": float(crop.z_centre), "scale": float(crop.scale),
        }

    __call__ = pair

    # ---- pieces --------------------------------------------------------------------------------------
    def _source_weights(self, rng, category: int, intensity: float) -> np.ndarray:
        c = self.config
        w = expressions.category_weights(self._names, category, intensity).copy()
        if c.extra_shapes:
            idx = rng.choice(len(w), size=min(c.extra_shapes, len(w)), replace=False)
            w[idx] += rng.uniform(0, c.extra_weight, len(idx))
        if rng.random() < c.speech_prob:
            w[self._names.index("jawOpen")] += rng.uniform(0, 0.35)
            w[self._names.index("mouthFunnel")] += rng.uniform(0, 0.3)
        if rng.random() < c.blink_prob:
            blink = rng.uniform(0.3, 1.0)
            for side in ("eyeBlink_L", "eyeBlink_R"):
                w[self._names.index(side)] = max(w[self._names.index(side)], blink)
        return np.clip(w, 0.0, 1.0).astype(np.float32)

    def _posed(self, base, weights, R, centre, c_cam) -> np.ndarray:
        v = base + (weights @ self._expr_basis).reshape(-1, 3)  # (V, 3) model frame
        return ((v - centre) @ R.T + c_cam).astype(np.float32)

    def _render(self, renderer: Renderer, vertices, albedo, lighting, wall: RenderBuffers, ss: int):
        """Head over wall at ss x ss samples per pixel -> crop-resolution (linear colour (S, S, 3),
        depth (S, S) m, normals (S, S, 3), head coverage (S, S) in [0, 1])."""
        head = renderer.render(vertices, self.triangles, self.tri_uvs, albedo, lighting=lighting)
        front = head.mask & ((wall.depth == 0) | (head.depth < wall.depth))  # (S ss, S ss)
        color = np.where(front[..., None], head.color, wall.color)
        depth = np.where(front, head.depth, wall.depth)
        normals = np.where(front[..., None], head.normals, wall.normals)
        n = color.shape[0] // ss

        def blocks(a):
            return a.reshape((n, ss, n, ss) + a.shape[2:])  # (S, ss, S, ss, ...)

        cover = blocks(front.astype(np.float32)).mean(axis=(1, 3))  # (S, S)
        lin = blocks(color).mean(axis=(1, 3))  # area average in linear light
        # Depth and normals from the samples of whichever surface covers most of the pixel:
        # never a depth between the face and the wall.
        win = blocks(front) == (cover >= 0.5)[:, None, :, None]  # (S, ss, S, ss) samples of the winner
        wsum = win.sum(axis=(1, 3))
        z = (blocks(depth) * win).sum(axis=(1, 3)) / np.maximum(wsum, 1)
        nrm = (blocks(normals) * win[..., None]).sum(axis=(1, 3))
        nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-9)
        return lin.astype(np.float32), z.astype(np.float32), nrm.astype(np.float32), cover


# ---- the cache --------------------------------------------------------------------------------------
def default_pairs_dir() -> Path:
    """``$FACEDIFF_CACHE_DIR/editor_pairs`` or ``~/.cache/facediff_ros/editor_pairs`` (outside git)."""
    return default_cache_dir() / "editor_pairs"


def shard_name(seed: int, start: int) -> str:
    return f"pairs-s{int(seed)}-{int(start):08d}.npz"


def stack_pairs(pairs: Sequence[Dict[str, object]]) -> Dict[str, np.ndarray]:
    """Pairs -> a shard's arrays: float16 (N, ...) images, float32/int16 (N,) scalars."""
    out = {k: np.stack([p[k] for p in pairs]).astype(np.float16) for k in ARRAY_KEYS}
    for k in SCALAR_KEYS:
        dtype = np.int16 if k.endswith("category") else np.float32
        out[k] = np.array([p[k] for p in pairs], dtype)
    return out


def load_shard(path) -> Dict[str, np.ndarray]:
    """A shard's arrays as float32 (scalars: category int64, the rest float32), with ``index``."""
    with np.load(path) as z:
        out = {k: z[k].astype(np.int64 if k.endswith("category") or k == "index" else np.float32)
               for k in z.files}
    return out


def write_cache(out_dir, num_pairs: int, config: Optional[PairConfig] = None, shard_size: int = 512,
                start: int = 0, model: Optional[MorphableModel] = None, log=None) -> Path:
    """Write pairs [start, start + num_pairs) as shards of ``shard_size`` under ``out_dir/<config hash>``.

    Shards already there are kept (an interrupted run resumes); each is written to a temporary
    name and renamed, so a shard on disk is complete. A ``config.json`` beside them records the
    config. Returns the folder. ``log`` receives a progress line now and then.
    """
    import hashlib

    config = config if config is not None else PairConfig()
    if num_pairs < 1 or shard_size < 1 or start < 0 or start % shard_size:
        raise ValueError("need num_pairs >= 1, shard_size >= 1 and start a multiple of shard_size")
    text = config.to_json()
    folder = Path(out_dir) / hashlib.sha1(text.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n")
    gen = None
    t0, done, made = time.perf_counter(), 0, 0
    end = start + num_pairs
    for first in range(start, end, shard_size):
        last = min(first + shard_size, end)
        path = folder / shard_name(config.seed, first)
        if path.exists():
            done += last - first
            continue
        gen = gen or PairGenerator(config, model)
        pairs = []
        for i in range(first, last):
            pairs.append(gen.pair(i))
            done += 1
            made += 1
            if log is not None and (made % 16 == 0 or i == end - 1):
                el = time.perf_counter() - t0
                rate = el / made
                log(f"\rpairs {done}/{num_pairs} ({100 * done / num_pairs:.0f}%)  {1000 * rate:.0f} ms/pair  "
                    f"ETA {_hms(rate * (num_pairs - done))}  -> {folder}")
        arrays = stack_pairs(pairs)
        arrays["index"] = np.arange(first, last, dtype=np.int64)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)  # ~57 KB a pair instead of 144: a 10k-pair cache is 0.6 GB
        os.replace(tmp, path)
    if log is not None:
        log(f"\n{num_pairs} pairs in {folder} ({made} made now, {_hms(time.perf_counter() - t0)})\n")
    return folder


def iter_cache(folder) -> Iterator[Dict[str, np.ndarray]]:
    """The shards of a cache folder in index order, as :func:`load_shard` dicts."""
    for path in sorted(Path(folder).glob("pairs-s*-*.npz")):
        if not path.name.endswith(".tmp.npz"):
            yield load_shard(path)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ---- looking at it ------------------------------------------------------------------------------------
def preview_image(pairs: Sequence[Dict[str, object]], zoom: int = 3) -> np.ndarray:
    """A grid, one row per pair: source RGB, source depth, warped colour (grey: to paint, black:
    background), target depth buffer, target RGB, target depth. Returns (H, W, 3) uint8 RGB."""

    def rgb(t):
        return np.clip((np.moveaxis(t[:3], 0, -1) + 1) * 127.5, 0, 255).astype(np.uint8)

    def depth(d):
        g = np.clip((1 - d) * 127.5, 0, 255).astype(np.uint8)  # near bright, far (and holes) dark
        return cv2.applyColorMap(g, cv2.COLORMAP_VIRIDIS)[..., ::-1]

    rows = []
    for p in pairs:
        b = p["buffers"]
        warped = rgb(b)
        warped[b[7] == 0] = 128
        warped[b[7] < 0] = 0
        cells = [rgb(p["source"]), depth(p["source"][3]), warped, depth(b[3]), rgb(p["target"]),
                 depth(p["target"][3])]
        row = np.concatenate([np.pad(c, ((1, 1), (1, 1), (0, 0)), constant_values=255) for c in cells], 1)
        label = (f"{expressions.CATEGORIES[p['source_category']]} {p['source_intensity']:.2f} -> "
                 f"{expressions.CATEGORIES[p['category']]} {p['intensity']:.2f}  z {p['z_centre']:.2f} m")
        row = cv2.resize(row, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        head = np.full((18, row.shape[1], 3), 255, np.uint8)
        cv2.putText(head, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([head, row], 0))
    titles = np.full((18, rows[0].shape[1], 3), 255, np.uint8)
    w = rows[0].shape[1] // 6
    for k, t in enumerate(("source", "source depth", "warped (buffers)", "target depth buffer", "target",
                           "target depth")):
        cv2.putText(titles, t, (k * w + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([titles] + rows, 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facediff_ros.synthetic.editor_data",
                                 description="Seeded source/target pairs for the expression editor.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=8, help="number of pairs (cache) or rows (preview)")
    ap.add_argument("--start", type=int, default=0, help="first pair index (a multiple of --shard-size)")
    ap.add_argument("--cache", nargs="?", const="", default=None, metavar="DIR",
                    help=f"write npz shards under DIR (default {default_pairs_dir()})")
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--preview", metavar="PNG", help="write a grid of --pairs pairs, one per identity")
    ap.add_argument("--bench", action="store_true", help="time --pairs pairs and print ms per pair")
    args = ap.parse_args(argv)
    if args.cache is None and args.preview is None and not args.bench:
        ap.error("give --cache, --preview or --bench")
    config = PairConfig(seed=args.seed)
    model = MorphableModel.load()
    if args.preview:
        gen = PairGenerator(config, model)
        step = config.pairs_per_identity  # one row per person
        img = preview_image([gen.pair(args.start + k * step) for k in range(args.pairs)])
        cv2.imwrite(args.preview, img[..., ::-1])
        print(f"wrote {args.preview} ({img.shape[1]}x{img.shape[0]})")
    if args.bench:
        gen = PairGenerator(config, model)
        gen.pair(args.start)  # warm-up: atlas geometry, topology caches
        t0 = time.perf_counter()
        for i in range(args.start + 1, args.start + 1 + args.pairs):
            gen.pair(i)
        dt = (time.perf_counter() - t0) / args.pairs
        print(f"{1000 * dt:.1f} ms per pair ({args.pairs} pairs, {config.pairs_per_identity} per identity)")
    if args.cache is not None:
        out = Path(args.cache) if args.cache else default_pairs_dir()
        write_cache(out, args.pairs, config, args.shard_size, args.start, model,
                    log=lambda s: (sys.stderr.write(s), sys.stderr.flush()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
