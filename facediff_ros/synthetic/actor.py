"""A synthetic RealSense-like RGB-D actor: a seeded talking, emoting, moving head with ground truth.

:class:`SyntheticActor` renders the ICT-FaceKit model with a random identity (N(0, 0.8) on the first
30 modes) and a procedural albedo (:func:`textures.procedural_texture`) in front of a textured
wall, as a D435-like camera would see it: colour (uint8 RGB) and depth already aligned to the
colour camera (uint16 millimetres, depth units 0.001 m, same intrinsics), 30 frames per second.

Frame: the camera's REP-103 optical frame (x right, y down, z forward, metres). The head pose is
ground truth in the model's convention ``x_cam = R x + t`` (:func:`morphable_model.transform`).

What moves (all smooth, seeded): head yaw/pitch/roll about a pivot near the neck plus a small
sway; an expression schedule over the seven categories of :mod:`expressions` with smoothstep
transitions; speech (syllable-rate jaw opening with vowel-like lip rounding, in bursts); blinks.

What the sensor adds (:class:`SensorNoise`, RealSense D4xx-like):
- depth noise with sigma growing as z^2 (~1.5 mm at 0.6 m), half white and half spatially smooth;
- quantisation to the 1 mm depth unit (z16) and a valid range;
- holes: random dropout blobs, no depth where the surface is seen at a grazing angle, and the
  stereo occlusion shadow left of foreground edges (the right imager cannot see there);
- flying pixels along depth edges (depths between the foreground and the background);
- colour: lens blur, read + shot noise, 8-bit quantisation.

Every frame is a pure function of (config, index): ``actor.frame(i)`` can be called in any order.
Nothing is written to disk here (see :mod:`recording`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np

from facediff_ros.core.face import expressions
from facediff_ros.core.render import textures
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.color import linear_to_srgb_fast, srgb_to_linear
from facediff_ros.core.face.morphable_model import DEFAULT_REGIONS, MorphableModel, rotation_matrix
from facediff_ros.core.render.renderer import Lighting, RenderBuffers, Renderer

# Regions rendered: the default ones plus teeth and tongue, which show when the actor speaks.
ACTOR_REGIONS = tuple(DEFAULT_REGIONS) + ("teeth", "gums_tongue")
# Head pivot in the model frame (m): near the top of the neck, below the head's origin.
PIVOT_MODEL = (0.0, 0.05, 0.0)


@dataclass(frozen=True)
class SensorNoise:
    """RealSense-D4xx-like sensor effects (defaults: a D435 at arm's length, indoors)."""

    depth_sigma_at_1m: float = 0.004     # m; sigma(z) = this * z^2 -> 1.4 mm at 0.6 m (D435 ~<2% at 2 m)
    depth_smooth_fraction: float = 0.5   # share of the noise variance that is spatially smooth
    depth_smooth_px: float = 3.0         # its correlation length (Gaussian sigma, px)
    depth_unit_m: float = 0.001          # z16 depth units (RealSense default)
    min_depth_m: float = 0.2             # D435 minimum range at 640x480 is ~0.2 m
    max_depth_m: float = 4.0
    holes_per_frame: float = 3.0         # mean number of dropout blobs (Poisson)
    hole_radius_px: Tuple[float, float] = (2.0, 9.0)
    grazing_cos: float = 0.2             # no depth where |cos(incidence)| < this (> 78 deg)
    ir_baseline_m: float = 0.05          # stereo baseline for the occlusion shadow; 0 disables it
    flying_prob: float = 0.5             # chance that an edge pixel mixes foreground and background
    edge_jump_m: float = 0.03            # a 3x3 depth range above this marks a depth edge
    color_read_sigma: float = 1.5        # 8-bit units
    color_shot: float = 0.25             # shot noise: sigma^2 += color_shot * value (8-bit units)
    color_blur_px: float = 0.5           # lens/demosaicing blur (Gaussian sigma, px); 0 disables it

    def __post_init__(self):
        for f in ("depth_sigma_at_1m", "depth_smooth_fraction", "depth_smooth_px", "min_depth_m",
                  "holes_per_frame", "grazing_cos", "ir_baseline_m", "flying_prob", "edge_jump_m",
                  "color_read_sigma", "color_shot", "color_blur_px"):
            v = float(getattr(self, f))
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"SensorNoise.{f} must be finite and >= 0, got {v}")
        if not 0 < self.depth_unit_m <= 0.01 or not self.min_depth_m < self.max_depth_m:
            raise ValueError(f"SensorNoise: need 0 < depth_unit_m <= 0.01 and min_depth_m < max_depth_m, got "
                             f"{self.depth_unit_m}, {self.min_depth_m}, {self.max_depth_m}")
        if self.max_depth_m / self.depth_unit_m > 65535:
            raise ValueError("SensorNoise.max_depth_m does not fit z16 at this depth_unit_m")
        lo, hi = self.hole_radius_px
        if not 0 < lo <= hi:
            raise ValueError(f"SensorNoise.hole_radius_px must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        if self.depth_smooth_fraction > 1 or self.flying_prob > 1 or self.grazing_cos >= 1:
            raise ValueError("SensorNoise: depth_smooth_fraction and flying_prob must be <= 1, "
                             "grazing_cos < 1")

    @classmethod
    def none(cls) -> "SensorNoise":
        """A perfect sensor: quantisation and the valid range only."""
        return cls(depth_sigma_at_1m=0.0, holes_per_frame=0.0, grazing_cos=0.0, ir_baseline_m=0.0,
                   flying_prob=0.0, color_read_sigma=0.0, color_shot=0.0, color_blur_px=0.0)


@dataclass(frozen=True)
class ActorConfig:
    """A synthetic sequence. Angles in radians, distances in metres, times in seconds."""

    seed: int = 0
    num_frames: int = 90
    fps: float = 30.0
    width: int = 640
    height: int = 480
    hfov_deg: float = 69.0               # D435 colour camera: 69 x 42 deg
    intrinsics: Optional[Intrinsics] = None  # overrides width/height/hfov_deg when given
    distance_m: float = 0.62             # camera to face centre; the face stays ~0.55-0.7 m away
    identity_modes: int = 30
    identity_sigma: float = 0.8
    yaw_amp: float = 0.35                # ~20 deg
    pitch_amp: float = 0.15
    roll_amp: float = 0.08
    sway_m: float = 0.02                 # head translation amplitude
    motion_hz: float = 0.2               # base frequency of the head motion
    speech_jaw: float = 0.3              # peak jawOpen while speaking; 0 = silent
    syllable_hz: float = 4.0             # syllables per second (~ conversational speech)
    speech_duty: float = 0.6             # fraction of the time spent speaking
    # (category, intensity) segments in order; None draws a random schedule from the seed.
    expression_schedule: Optional[Tuple[Tuple[str, float], ...]] = None
    expression_hold_s: float = 1.5       # one segment, its transition included
    expression_transition_s: float = 0.4
    blink_rate_hz: float = 0.3
    background_distance_m: float = 1.4   # the wall behind the actor
    texture_size: int = 512
    keep_vertices: bool = False          # ActorFrame.vertices holds all vertices in the camera frame
    noise: SensorNoise = field(default_factory=SensorNoise)

    def __post_init__(self):
        for name in ("seed", "num_frames", "width", "height", "identity_modes", "texture_size"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                raise ValueError(f"ActorConfig.{name} must be a non-negative integer, got {v}")
        if self.num_frames < 1 or self.width < 16 or self.height < 16:
            raise ValueError("ActorConfig: need num_frames >= 1 and an image of at least 16x16")
        if not 1 <= self.identity_modes <= 100:
            raise ValueError(f"ActorConfig.identity_modes must be in [1, 100], got {self.identity_modes}")
        for name in ("fps", "hfov_deg", "distance_m", "background_distance_m", "expression_hold_s"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"ActorConfig.{name} must be > 0, got {v}")
        if not self.hfov_deg < 170:
            raise ValueError(f"ActorConfig.hfov_deg must be < 170, got {self.hfov_deg}")
        for name in ("identity_sigma", "yaw_amp", "pitch_amp", "roll_amp", "sway_m", "motion_hz",
                     "speech_jaw", "syllable_hz", "speech_duty", "expression_transition_s", "blink_rate_hz"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"ActorConfig.{name} must be finite and >= 0, got {v}")
        if self.speech_jaw > 1 or self.speech_duty > 1:
            raise ValueError("ActorConfig.speech_jaw and speech_duty must be <= 1")
        if self.expression_transition_s > self.expression_hold_s:
            raise ValueError("ActorConfig.expression_transition_s must not exceed expression_hold_s")
        if self.background_distance_m <= self.distance_m + 0.2:
            raise ValueError("ActorConfig.background_distance_m must be > distance_m + 0.2 "
                             "(the head's depth)")
        if self.intrinsics is not None and not isinstance(self.intrinsics, Intrinsics):
            raise ValueError(f"ActorConfig.intrinsics must be an Intrinsics, "
                             f"got {type(self.intrinsics).__name__}")
        if self.expression_schedule is not None:
            if len(self.expression_schedule) == 0:
                raise ValueError("ActorConfig.expression_schedule must not be empty (None draws one)")
            for seg in self.expression_schedule:
                if len(seg) != 2:
                    raise ValueError(f"expression_schedule entries are (category, intensity), got {seg}")
                expressions.category_index(seg[0])
                if not 0 <= float(seg[1]) <= 1:
                    raise ValueError(f"expression_schedule intensity must be in [0, 1], got {seg[1]}")
        if not isinstance(self.noise, SensorNoise):
            raise ValueError(f"ActorConfig.noise must be a SensorNoise, got {type(self.noise).__name__}")

    @property
    def camera(self) -> Intrinsics:
        """The colour camera (depth is aligned to it)."""
        if self.intrinsics is not None:
            return self.intrinsics
        return Intrinsics.from_fov(self.width, self.height, self.hfov_deg)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ActorConfig":
        d = json.loads(text)
        if d.get("intrinsics") is not None:
            d["intrinsics"] = Intrinsics(**d["intrinsics"])
        d["noise"] = SensorNoise(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["noise"].items()})
        if d.get("expression_schedule") is not None:
            d["expression_schedule"] = tuple((str(c), float(s)) for c, s in d["expression_schedule"])
        return cls(**d)


@dataclass
class ActorFrame:
    """One RGB-D frame with its ground truth (camera frame, metres)."""

    index: int
    timestamp: float                 # seconds since the first frame (index / fps)
    color: np.ndarray                # (H, W, 3) uint8 RGB
    depth: np.ndarray                # (H, W) uint16 depth in depth_scale units (mm), 0 = no depth
    depth_scale: float               # metres per depth unit (0.001)
    intrinsics: Intrinsics           # of colour and depth alike (depth is aligned to colour)
    identity: np.ndarray             # (K,) float32 identity coefficients
    expression: np.ndarray           # (E,) float32 expression weights, MorphableModel order
    category: str                    # expression category of the schedule at this frame
    intensity: float                 # its intensity
    R: np.ndarray                    # (3, 3) head rotation, x_cam = R x + t
    t: np.ndarray                    # (3,) head translation (m)
    landmarks_3d: np.ndarray         # (68, 3) float32 the model.landmarks68 vertices, camera frame
    landmarks_2d: np.ndarray         # (68, 2) float32 their pixel coordinates (u, v)
    landmarks_visible: np.ndarray    # (68,) bool: in the image and not occluded (clean depth test)
    depth_clean: np.ndarray          # (H, W) float32 noiseless depth (m) of head and wall, 0 = none
    head_mask: np.ndarray            # (H, W) bool pixels showing the head
    vertices: Optional[np.ndarray] = None  # (V, 3) float32 camera frame, with keep_vertices


# Landmarks count as visible where the clean depth within one pixel is this close to them (m).
VISIBILITY_TOLERANCE_M = 0.01


class SyntheticActor:
    """A seeded synthetic RGB-D sequence; ``frame(i)`` renders frame i, iteration gives them all."""

    def __init__(self, config: Optional[ActorConfig] = None, model: Optional[MorphableModel] = None):
        self.config = config = config if config is not None else ActorConfig()
        if not isinstance(config, ActorConfig):
            raise ValueError(f"config must be an ActorConfig, got {type(config).__name__}")
        self.model = model if model is not None else MorphableModel.load()
        self.intrinsics = config.camera
        rng = np.random.default_rng([config.seed, 0])
        self.identity = (rng.standard_normal(config.identity_modes)
                         * config.identity_sigma).astype(np.float32)
        self.texture_params = textures.TextureParams.sample(rng)
        albedo = textures.procedural_texture(self.model, params=self.texture_params, size=config.texture_size)
        self._albedo_linear = srgb_to_linear(albedo, np.float32)
        self.triangles, self.tri_uvs, _ = textures.atlas_triangles(self.model, ACTOR_REGIONS)
        self._used = np.unique(self.triangles)
        # Identity is fixed: keep the identity-shaped neutral and the flattened expression basis.
        self._base = self.model.vertices(self.identity)  # (V, 3)
        self._expr_basis = self.model.expression_basis.reshape(self.model.num_expression, -1)  # (E, V*3)
        self._names = list(self.model.expression_names)
        self._motion = _Motion(config, rng)
        self._schedule = self._make_schedule(rng)
        self._blinks = self._make_blinks(rng)
        self._speech_phase = rng.uniform(0, 2 * np.pi, 4)
        # The burst threshold: the wave exceeds it for speech_duty of a long stretch of time.
        self._speech_level = float(np.quantile(self._speech_wave(np.linspace(0, 600, 20000)),
                                               1 - min(config.speech_duty, 1.0)))
        self.lighting = Lighting(direction=tuple(np.array([0.3, -0.5, -1.0]) + rng.uniform(-0.4, 0.4, 3)),
                                 ambient=float(rng.uniform(0.3, 0.45)),
                                 diffuse=float(rng.uniform(0.55, 0.75)))
        self._tint = (1.0 + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)  # white balance
        self.renderer = Renderer(self.intrinsics)
        self._wall = self._render_wall(rng)
        centre = self.model.neutral[self.model.landmarks68].mean(axis=0)
        self._pivot = np.asarray(PIVOT_MODEL, np.float64)
        # The pivot sits where the neutral face's centre ends up at (0, 0, distance) for R = I.
        self._pivot_cam = np.array([0.0, 0.0, config.distance_m]) + (self._pivot - centre)
        self._unit_rays = unit_rays(self.intrinsics)

    # ---- the sequence ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.config.num_frames)

    def __iter__(self) -> Iterator[ActorFrame]:
        for i in range(len(self)):
            yield self.frame(i)

    def pose(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Head pose of a frame: (R (3, 3), t (3,)) with x_cam = R x + t."""
        yaw, pitch, roll, sway = self._motion.at(index / self.config.fps)
        R = rotation_matrix((0, 0, roll)) @ rotation_matrix((0, yaw, 0)) @ rotation_matrix((pitch, 0, 0))
        t = self._pivot_cam + sway - R @ self._pivot
        return R, t

    def expression(self, index: int) -> Tuple[np.ndarray, str, float]:
        """(E,) float32 weights of a frame, with the schedule's category and intensity there."""
        c = self.config
        time_s = index / c.fps
        seg = min(int(time_s // c.expression_hold_s), len(self._schedule) - 1)
        into = time_s - seg * c.expression_hold_s
        cat, inten = self._schedule[seg]
        w = expressions.category_weights(self._names, cat, inten)
        if seg > 0 and c.expression_transition_s > 0 and into < c.expression_transition_s:
            prev = expressions.category_weights(self._names, *self._schedule[seg - 1])
            a = _smoothstep(into / c.expression_transition_s)
            w = (1 - a) * prev + a * w
            if a < 0.5:
                cat, inten = self._schedule[seg - 1]
        w = w.copy()
        jaw, funnel = self._speech(time_s)
        w[self._names.index("jawOpen")] += jaw
        w[self._names.index("mouthFunnel")] += funnel
        blink = self._blink(time_s)
        for side in ("eyeBlink_L", "eyeBlink_R"):
            i = self._names.index(side)
            w[i] = max(w[i], blink)
        return np.clip(w, 0.0, 1.0).astype(np.float32), cat, float(inten)

    def vertices(self, index: int) -> np.ndarray:
        """(V, 3) float32 vertices of a frame in the camera frame."""
        expr, _, _ = self.expression(index)
        R, t = self.pose(index)
        v = self._base + (expr @ self._expr_basis).reshape(-1, 3)  # (V, 3)
        return (v @ R.T.astype(np.float32) + t.astype(np.float32)).astype(np.float32)

    def frame(self, index: int) -> ActorFrame:
        """Render frame ``index`` (0 <= index < num_frames)."""
        if int(index) != index or not 0 <= index < len(self):
            raise ValueError(f"index must be an integer in [0, {len(self) - 1}], got {index}")
        index = int(index)
        c, K = self.config, self.intrinsics
        rng = np.random.default_rng([c.seed, 1, index])  # per-frame noise, independent of call order
        expr, cat, inten = self.expression(index)
        R, t = self.pose(index)
        v = self._base + (expr @ self._expr_basis).reshape(-1, 3)  # (V, 3) model frame
        v_cam = (v @ R.T.astype(np.float32) + t.astype(np.float32)).astype(np.float32)
        head = self.renderer.render(v_cam, self.triangles, self.tri_uvs, self._albedo_linear,
                                    lighting=self.lighting)
        wall = self._wall
        front = head.mask & ((wall.depth == 0) | (head.depth < wall.depth))
        depth = np.where(front, head.depth, wall.depth).astype(np.float32)
        normals = np.where(front[..., None], head.normals, wall.normals)
        linear = np.where(front[..., None], head.color, wall.color) * self._tint
        color = self._sensor_color(linear, rng)
        depth_mm = self._sensor_depth(depth, normals, rng)
        lm3 = v_cam[self.model.landmarks68]  # (68, 3)
        lm2 = K.project(lm3).astype(np.float32)
        return ActorFrame(
            index=index, timestamp=index / c.fps, color=color, depth=depth_mm,
            depth_scale=c.noise.depth_unit_m, intrinsics=K, identity=self.identity.copy(), expression=expr,
            category=cat, intensity=inten, R=R, t=t, landmarks_3d=lm3.astype(np.float32), landmarks_2d=lm2,
            landmarks_visible=_visible(lm3, lm2, depth, VISIBILITY_TOLERANCE_M), depth_clean=depth,
            head_mask=front, vertices=v_cam if c.keep_vertices else None)

    # ---- schedule pieces -------------------------------------------------------------------------
    def _make_schedule(self, rng) -> list:
        c = self.config
        n_seg = int(np.ceil(c.num_frames / c.fps / c.expression_hold_s)) + 1
        if c.expression_schedule is not None:
            sched = [(expressions.CATEGORIES[expressions.category_index(cat)], float(s))
                     for cat, s in c.expression_schedule]
            return [sched[i % len(sched)] for i in range(n_seg)]
        out = [("neutral", 0.0)]
        for _ in range(n_seg - 1):
            choices = [x for x in expressions.CATEGORIES if x != out[-1][0]]
            cat = choices[int(rng.integers(len(choices)))]
            out.append((cat, 0.0 if cat == "neutral" else float(rng.uniform(0.6, 1.0))))
        return out

    def _make_blinks(self, rng) -> np.ndarray:
        c = self.config
        duration = c.num_frames / c.fps
        n = rng.poisson(c.blink_rate_hz * duration) if c.blink_rate_hz > 0 else 0
        return np.sort(rng.uniform(0, duration, n))

    def _blink(self, time_s: float) -> float:
        """Eyelid closure: a 0.2 s triangular pulse per blink."""
        if self._blinks.size == 0:
            return 0.0
        return float(np.clip(1.0 - np.abs(time_s - self._blinks).min() / 0.1, 0.0, 1.0))

    def _speech(self, time_s: float) -> Tuple[float, float]:
        """(jawOpen, mouthFunnel) added by speech: syllables in bursts, vowels rounding the lips."""
        c = self.config
        if c.speech_jaw == 0 or c.speech_duty == 0:
            return 0.0, 0.0
        p = self._speech_phase
        # Bursts: speaking while a slow wave stays above the level that gives the duty cycle.
        envelope = _smoothstep((self._speech_wave(time_s) - self._speech_level) / 0.15 + 0.5)
        jitter = 0.8 * np.sin(2 * np.pi * 0.7 * time_s + p[2])  # uneven syllable timing
        syll = 0.5 - 0.5 * np.cos(2 * np.pi * c.syllable_hz * time_s + jitter)
        vowel = 0.5 + 0.5 * np.sin(2 * np.pi * 1.1 * time_s + p[3])
        return float(c.speech_jaw * envelope * syll), float(0.3 * envelope * vowel * syll)

    def _speech_wave(self, time_s):
        p = self._speech_phase
        return 0.6 * np.sin(2 * np.pi * 0.13 * time_s + p[0]) + 0.4 * np.sin(2 * np.pi * 0.31 * time_s + p[1])

    # ---- background and sensor -------------------------------------------------------------------
    def _render_wall(self, rng):
        """The wall: a slightly turned textured plane, rendered once (the camera does not move)."""
        return render_wall(self.renderer, self.config.background_distance_m, self.lighting, rng)

    def _sensor_color(self, linear: np.ndarray, rng) -> np.ndarray:
        return sensor_color(linear, self.config.noise, rng)

    def _sensor_depth(self, depth: np.ndarray, normals: np.ndarray, rng) -> np.ndarray:
        return sensor_depth(depth, normals, self.intrinsics, self.config.noise, rng, self._unit_rays)


# ---- the scene and the sensor as functions (the editor's training pairs use them too) ---------------
def render_wall(renderer: Renderer, distance_m: float, lighting: Lighting, rng,
                texture_size: int = 256) -> RenderBuffers:
    """A slightly turned textured wall ``distance_m`` in front of the camera, filling 1.5x its view.

    Draws from ``rng``: the wall's tilt (2 uniforms), then :func:`wall_texture`. Returns the
    renderer's buffers (camera frame of ``renderer.intrinsics``, metres).
    """
    K = renderer.intrinsics
    z = distance_m
    half_w = 1.5 * z * max(abs(K.cx + 0.5), abs(K.width - K.cx - 0.5)) / K.fx
    half_h = 1.5 * z * max(abs(K.cy + 0.5), abs(K.height - K.cy - 0.5)) / K.fy
    Rw = rotation_matrix((rng.uniform(-0.1, 0.1), rng.uniform(-0.2, 0.2), 0.0))
    corners = np.array([[-half_w, -half_h, 0], [half_w, -half_h, 0], [half_w, half_h, 0],
                        [-half_w, half_h, 0]])
    verts = (corners @ Rw.T + [0, 0, z]).astype(np.float32)
    tris = np.array([[0, 2, 1], [0, 3, 2]])  # front side towards the camera
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)[tris]  # (2, 3, 2)
    tex = srgb_to_linear(wall_texture(rng, texture_size), np.float32)
    return renderer.render(verts, tris, uv, tex, lighting=lighting, cull_backfaces=False)


def unit_rays(K: Intrinsics) -> np.ndarray:
    """(H, W, 3) float32 unit viewing rays of each pixel centre (camera frame)."""
    u, v = K.pixel_grid()
    rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], -1)  # (H, W, 3)
    return (rays / np.linalg.norm(rays, axis=-1, keepdims=True)).astype(np.float32)


def sensor_color(linear: np.ndarray, noise: SensorNoise, rng) -> np.ndarray:
    """What the colour camera makes of linear light: (H, W, 3) in [0, 1] -> (H, W, 3) uint8 sRGB.

    Lens blur (``noise.color_blur_px``, in this image's pixels), read + shot noise, 8-bit
    quantisation; draws one (H, W, 3) normal field from ``rng`` when noise is on.
    """
    n = noise
    img = linear_to_srgb_fast(np.clip(linear, 0, 1)) * 255.0  # (H, W, 3) float
    if n.color_blur_px > 0:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), n.color_blur_px)
    if n.color_read_sigma > 0 or n.color_shot > 0:
        sigma = np.sqrt(n.color_read_sigma ** 2 + n.color_shot * img)
        img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sensor_depth(depth: np.ndarray, normals: np.ndarray, K: Intrinsics, noise: SensorNoise, rng,
                 rays: Optional[np.ndarray] = None) -> np.ndarray:
    """What the depth camera makes of a clean z-depth image (metres, 0 = nothing): uint16 units.

    Flying pixels, z^2 noise, range, grazing-angle dropout, the stereo shadow and dropout blobs of
    :class:`SensorNoise` (its pixel sizes in pixels of ``K``); ``normals`` (H, W, 3) camera frame;
    ``rays`` the :func:`unit_rays` of ``K`` when the caller keeps them. Returns (H, W) uint16 in
    ``noise.depth_unit_m``, 0 = no depth.
    """
    n = noise
    valid = depth > 0
    z = depth.astype(np.float32).copy()
    if n.flying_prob > 0:
        zmax = cv2.dilate(np.where(valid, z, 0), np.ones((3, 3), np.uint8))
        zmin = -cv2.dilate(np.where(valid, -z, -zmax), np.ones((3, 3), np.uint8))
        edge = valid & (zmax - zmin > n.edge_jump_m) & (rng.random(z.shape) < n.flying_prob)
        mix = rng.random(z.shape, dtype=np.float32)
        z = np.where(edge, zmin + mix * (zmax - zmin), z)
    if n.depth_sigma_at_1m > 0:
        white = rng.standard_normal(z.shape, dtype=np.float32)
        smooth = cv2.GaussianBlur(rng.standard_normal(z.shape, dtype=np.float32), (0, 0),
                                  n.depth_smooth_px)
        smooth /= max(float(smooth.std()), 1e-6)
        f = n.depth_smooth_fraction
        z = z + n.depth_sigma_at_1m * z * z * (np.sqrt(1 - f) * white + np.sqrt(f) * smooth)
    drop = ~valid | (z < n.min_depth_m) | (z > n.max_depth_m)
    if n.grazing_cos > 0:
        if rays is None:
            rays = unit_rays(K)
        drop |= np.abs(np.einsum("hwc,hwc->hw", normals, rays)) < n.grazing_cos
    if n.ir_baseline_m > 0:
        drop |= _stereo_shadow(depth, K.fx * n.ir_baseline_m)
    if n.holes_per_frame > 0:
        holes = np.zeros(z.shape, np.uint8)
        for _ in range(rng.poisson(n.holes_per_frame)):
            centre = (int(rng.integers(K.width)), int(rng.integers(K.height)))
            axes = tuple(int(round(rng.uniform(*n.hole_radius_px))) for _ in range(2))
            cv2.ellipse(holes, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        drop |= holes > 0
    mm = np.rint(np.where(drop, 0.0, z) / n.depth_unit_m)
    return np.clip(mm, 0, 65535).astype(np.uint16)


# ---- helpers ---------------------------------------------------------------------------------------
class _Motion:
    """Smooth head motion: two sinusoids per angle with seeded frequencies and phases."""

    def __init__(self, c: ActorConfig, rng):
        self.amp = np.array([c.yaw_amp, c.pitch_amp, c.roll_amp])
        self.freq = c.motion_hz * rng.uniform(0.7, 1.3, (3, 2)) * [1.0, 2.3]  # (3 angles, 2 waves)
        self.phase = rng.uniform(0, 2 * np.pi, (3, 2))
        self.sway = c.sway_m
        self.sway_freq = c.motion_hz * rng.uniform(0.5, 1.0, 3)
        self.sway_phase = rng.uniform(0, 2 * np.pi, 3)

    def at(self, time_s: float):
        w = np.sin(2 * np.pi * self.freq * time_s + self.phase)  # (3, 2)
        yaw, pitch, roll = self.amp * (0.75 * w[:, 0] + 0.25 * w[:, 1])
        sway = self.sway * np.sin(2 * np.pi * self.sway_freq * time_s + self.sway_phase) * [1.0, 0.5, 1.0]
        return yaw, pitch, roll, sway


def _visible(lm3: np.ndarray, lm2: np.ndarray, depth: np.ndarray, tol: float) -> np.ndarray:
    """Landmarks inside the image whose clean depth within one pixel matches their own z."""
    H, W = depth.shape
    u = np.rint(lm2[:, 0]).astype(np.int64)
    v = np.rint(lm2[:, 1]).astype(np.int64)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (lm3[:, 2] > 0)
    best = np.full(len(u), np.inf)
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            uu, vv = np.clip(u + du, 0, W - 1), np.clip(v + dv, 0, H - 1)
            d = depth[vv, uu]
            best = np.minimum(best, np.where(d > 0, np.abs(d - lm3[:, 2]), np.inf))
    return inside & (best < tol)


def _stereo_shadow(depth: np.ndarray, f_baseline: float) -> np.ndarray:
    """Pixels the right imager (baseline along +x) cannot see: a nearer pixel at u + s lands on or
    left of this pixel's match, (u + s) - d(u + s) <= u - d(u), with disparity d = f b / z."""
    disp = np.where(depth > 0, f_baseline / np.maximum(depth, 1e-6), 0.0).astype(np.float32)
    W = depth.shape[1]
    max_shift = int(np.ceil(disp.max() - disp[depth > 0].min())) if (depth > 0).any() else 0
    shadow = np.zeros(depth.shape, bool)
    for s in range(1, min(max_shift, W - 1) + 1):
        shadow[:, :-s] |= disp[:, s:] - disp[:, :-s] >= s
    return shadow & (depth > 0)


def wall_texture(rng, size: int) -> np.ndarray:
    """A plain painted wall with a few framed posters and some shading: (S, S, 3) sRGB in [0, 1]."""
    base = rng.uniform(0.45, 0.85) * (1 + rng.uniform(-0.08, 0.08, 3))
    low = cv2.resize(rng.standard_normal((6, 6)).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_CUBIC)
    tex = np.clip(base[None, None, :] * (1 + 0.05 * low[..., None]), 0, 1).astype(np.float32)
    for _ in range(int(rng.integers(2, 5))):
        w, h = (int(rng.uniform(0.08, 0.25) * size) for _ in range(2))
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        colour = rng.uniform(0.05, 0.95, 3)
        tex[y:y + h, x:x + w] = colour
        stripes = (np.arange(w) // max(2, w // 6)) % 2
        tex[y + h // 3:y + 2 * h // 3, x:x + w] *= (0.6 + 0.4 * stripes)[None, :, None]
    return tex


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)
