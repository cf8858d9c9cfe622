"""MediaPipe face mesh landmark -> ICT-FaceKit surface point: the table, and how it is built.

Each of MediaPipe's 478 landmarks (0.10.21, refined: 468 mesh points + 10 iris points) maps to a
fixed point on the model's surface, stored topology-only -- three vertex ids and barycentric
weights -- so the point follows any identity, expression and pose:

    point_l(vertices) = sum_k bary[l, k] * vertices[vertex_ids[l, k]]

Mesh landmarks 0-467 lie on the ``face`` region's skin; iris landmarks 468-477 on the ``iris_left``
/ ``iris_right`` discs (the 4 rim points and the centre of each iris; the disc sits ~1.5 mm
behind the cornea that the camera sees).

**How the table is built** (``python -m facediff_ros.core.correspondence --out PATH``):
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

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.morphable_model import MorphableModel, rotation_matrix, transform

NUM_LANDMARKS = 478
IRIS = np.arange(468, 478)  # MediaPipe's refined iris points: 468-472 one eye, 473-477 the other
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "data" / "mediapipe_correspondence.npz"
WEIGHT_R0_MM = 2.0  # residual at which a landmark's weight halves
STABLE_MM = 2.5     # median held-out residual below which a landmark counts as stable
STABLE_HIT_RATE = 0.95  # ... and the fraction of held-out renders where it landed on the mesh
SKIN_REGIONS = ("face",)
IRIS_REGIONS = ("iris_left", "iris_right")
FORMAT = 1


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


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
                             f"`python -m facediff_ros.core.correspondence --out {path}`")
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
        if _is_torch(vertices):
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


# ---- building the table ------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildConfig:
    """How many and which renders build the table (defaults: ~1 min on 2 CPU cores)."""

    renders: int = 90          # renders whose landmarks build the table
    held_out: int = 30         # further renders that only measure residuals
    seed: int = 0
    size: int = 480            # square image, px
    hfov_deg: float = 30.0     # a face 0.55-0.7 m away fills ~2/3 of the frame
    texture_size: int = 512
    identity_scale: float = 0.8
    max_yaw_deg: float = 35.0
    max_pitch_deg: float = 20.0
    max_roll_deg: float = 12.0


@dataclass
class View:
    """One rendered subject: the image, the posed mesh and the renderer's buffers."""

    image: np.ndarray        # (H, W, 3) uint8 RGB
    vertices: np.ndarray     # (V, 3) float32 camera frame, metres
    triangles: np.ndarray    # (F, 3) the rendered triangulation (DEFAULT_REGIONS)
    tri_id: np.ndarray       # (H, W) int32
    intrinsics: Intrinsics


def _near_neutral_expression(model: MorphableModel, rng: np.random.Generator) -> np.ndarray:
    """Mostly small random weights; sometimes a category at low intensity."""
    from facediff_ros.core import expressions
    w = np.zeros(model.num_expression, np.float32)
    k = rng.integers(0, 6)
    w[rng.choice(model.num_expression, size=k, replace=False)] = rng.uniform(0.0, 0.3, k)
    if rng.random() < 0.3:
        cat = expressions.CATEGORIES[rng.integers(1, len(expressions.CATEGORIES))]
        w += expressions.category_weights(model.expression_names, cat, rng.uniform(0.1, 0.6))
    return np.clip(w, 0.0, 1.0)


def render_view(model: MorphableModel, rng: np.random.Generator,
                config: BuildConfig = BuildConfig()) -> View:
    """Render a random subject as the table is built from (see :class:`BuildConfig`)."""
    from facediff_ros.core import textures
    from facediff_ros.core.renderer import Lighting, Renderer

    K = Intrinsics.from_fov(config.size, config.size, config.hfov_deg)
    tris, uvs, _ = textures.atlas_triangles(model)
    ident = (rng.standard_normal(model.num_identity) * config.identity_scale).astype(np.float32)
    expr = _near_neutral_expression(model, rng)
    tex = textures.procedural_texture(model, rng, config.texture_size)
    ang = np.radians([rng.uniform(-1, 1) * config.max_pitch_deg, rng.uniform(-1, 1) * config.max_yaw_deg,
                      rng.uniform(-1, 1) * config.max_roll_deg])
    R = rotation_matrix(ang)
    # Aim at the face's centre (mean of the 68 landmark vertices), then jitter the framing.
    centre = model.neutral[model.landmarks68].mean(0)
    t = -R @ centre + [rng.uniform(-0.015, 0.015), rng.uniform(-0.015, 0.015), rng.uniform(0.55, 0.7)]
    v = transform(model.vertices(ident, expr), R.astype(np.float32), t.astype(np.float32))
    d = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.3), -rng.uniform(0.5, 1.5)])
    amb = rng.uniform(0.25, 0.55)
    light = Lighting(direction=tuple(d), ambient=amb, diffuse=rng.uniform(0.9, 1.2) - amb)
    buf = Renderer(K).render(v, tris, uvs, tex, lighting=light)
    bg = rng.uniform(0.1, 0.9, 3) * np.linspace(0.85, 1.15, K.height)[:, None, None]  # (H, 1, 3) gradient
    img = np.where(buf.mask[..., None], buf.color, bg)
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)  # a little sensor noise
    return View((img * 255 + 0.5).astype(np.uint8), v, tris, buf.tri_id, K)


def backproject(view: View, uv: np.ndarray, search: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the rays through pixel coordinates hit the rendered mesh.

    Args:
        view: the render.
        uv: (N, 2) pixel coordinates (centres at integers).
        search: triangles under the (2 search + 1)^2 pixels around each point are candidates; the
            ray's exact intersection with one of them (inside it) is taken, nearest first.

    Returns:
        tri: (N,) int64 index into ``view.triangles`` (-1 where the ray misses the mesh),
        bary: (N, 3) float64 barycentric weights of the hit,
        point: (N, 3) float64 camera-frame hit points (NaN where missed).
    """
    K, H, W = view.intrinsics, view.intrinsics.height, view.intrinsics.width
    uv = np.asarray(uv, dtype=np.float64)
    n = len(uv)
    tri = np.full(n, -1, np.int64)
    bary = np.zeros((n, 3))
    point = np.full((n, 3), np.nan)
    v = view.vertices.astype(np.float64)
    for i, (u, w) in enumerate(uv):
        if not (np.isfinite(u) and np.isfinite(w)):
            continue
        d = np.array([(u - K.cx) / K.fx, (w - K.cy) / K.fy, 1.0])
        iu, iw = int(round(u)), int(round(w))
        cand = view.tri_id[max(iw - search, 0):iw + search + 1, max(iu - search, 0):iu + search + 1]
        cand = np.unique(cand[cand >= 0])
        best, best_t, fallback = None, np.inf, None
        for f in cand:
            a, b, c = v[view.triangles[f]]
            # Moller-Trumbore: origin 0, direction d.
            e1, e2 = b - a, c - a
            pv = np.cross(d, e2)
            det = e1 @ pv
            if abs(det) < 1e-15:
                continue
            tv = -a
            l1 = (tv @ pv) / det
            qv = np.cross(tv, e1)
            l2 = (d @ qv) / det
            t = (e2 @ qv) / det
            lam = np.array([1 - l1 - l2, l1, l2])
            if lam.min() >= -1e-9 and t < best_t:
                best, best_t = (f, lam), t
            elif fallback is None and 0 <= iw < H and 0 <= iu < W and f == view.tri_id[iw, iu]:
                fallback = (f, np.clip(lam, 0, None) / np.clip(lam, 0, None).sum())
        best = best or fallback
        if best is not None:
            tri[i], bary[i] = best
            point[i] = bary[i] @ v[view.triangles[best[0]]]
    return tri, bary, point


def _geometric_median(x: np.ndarray, iters: int = 50) -> np.ndarray:
    """Weiszfeld's algorithm: the point minimising the sum of distances to the rows of x."""
    m = np.median(x, axis=0)
    for _ in range(iters):
        d = np.maximum(np.linalg.norm(x - m, axis=1), 1e-9)
        m_new = (x / d[:, None]).sum(0) / (1 / d).sum()
        if np.linalg.norm(m_new - m) < 1e-8:
            return m_new
        m = m_new
    return m


def _closest_on_surface(model: MorphableModel, regions, points: np.ndarray):
    """Nearest points of the mean neutral face's named regions: (vertex ids (N, 3), bary (N, 3))."""
    import open3d as o3d
    tris, _, _ = model.triangles(regions)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(model.neutral.astype(np.float32)),
                        o3d.core.Tensor(tris.astype(np.uint32)))
    res = scene.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
    prim = res["primitive_ids"].numpy().astype(np.int64)
    puv = res["primitive_uvs"].numpy().astype(np.float64)
    # Embree's (u, v) weigh corners 1 and 2.
    bary = np.clip(np.stack([1 - puv[:, 0] - puv[:, 1], puv[:, 0], puv[:, 1]], 1), 0, None)
    return tris[prim], bary / bary.sum(1, keepdims=True)


def _detect(face_mesh, view: View) -> Optional[np.ndarray]:
    faces = face_mesh.process(view.image)
    return faces[0].uv.astype(np.float64) if faces else None


def build(model: MorphableModel, config: BuildConfig = BuildConfig(),
          log=print) -> Tuple[Correspondence, Dict]:
    """Build the table from renders and measure it on held-out renders (see the module docstring).

    Returns:
        the table, and extra per-landmark arrays (held-out p90 residual, hit rates, px residuals).
    """
    from facediff_ros.core.face_mesh import FaceMesh, FaceMeshConfig

    rng = np.random.default_rng(config.seed)
    hits: List[List[np.ndarray]] = [[] for _ in range(NUM_LANDMARKS)]
    mesh = FaceMesh(FaceMeshConfig(static_image_mode=True, max_num_faces=1))
    t0 = time.time()
    detected = train_detected = 0
    timing = {"render_s": 0.0, "detect_s": 0.0}
    held_views = []
    for i in range(config.renders + config.held_out):
        ta = time.time()
        view = render_view(model, rng, config)
        tb = time.time()
        uv = _detect(mesh, view)
        timing["render_s"] += tb - ta
        timing["detect_s"] += time.time() - tb
        if uv is None:
            continue
        detected += 1
        if i >= config.renders:
            held_views.append((view, uv))
            continue
        train_detected += 1
        tri, bary, _ = backproject(view, uv)
        ok = tri >= 0
        canon = np.einsum("nk,nkc->nc", bary[ok], model.neutral[view.triangles[tri[ok]]].astype(np.float64))
        for lm, p in zip(np.flatnonzero(ok), canon):
            hits[lm].append(p)
        if (i + 1) % 10 == 0:
            log(f"  {i + 1} renders, {detected} detected, {time.time() - t0:.0f} s")
    mesh.close()
    if min(len(h) for h in hits) < 3:
        raise RuntimeError("too few detections to build the table; check MediaPipe and the renders")
    centre = np.array([_geometric_median(np.asarray(h)) for h in hits])  # (478, 3) mean-face space
    vids = np.zeros((NUM_LANDMARKS, 3), np.int64)
    bary = np.zeros((NUM_LANDMARKS, 3))
    skin = np.setdiff1d(np.arange(NUM_LANDMARKS), IRIS)
    vids[skin], bary[skin] = _closest_on_surface(model, SKIN_REGIONS, centre[skin])
    vids[IRIS], bary[IRIS] = _closest_on_surface(model, IRIS_REGIONS, centre[IRIS])
    spread = np.array([np.median(np.linalg.norm(np.asarray(h) - c, axis=1)) for h, c in zip(hits, centre)])
    # Held-out residuals: lifted MediaPipe landmark vs the table's point, both on the true mesh.
    res_mm, px_err = [], []
    for view, uv in held_views:
        tri, _, point = backproject(view, uv)
        table = np.einsum("lk,lkc->lc", bary, view.vertices[vids].astype(np.float64))
        r = np.linalg.norm(point - table, axis=1) * 1e3
        r[tri < 0] = np.nan
        res_mm.append(r)
        px_err.append(np.linalg.norm(view.intrinsics.project(table) - uv, axis=1))
    res_mm, px_err = np.array(res_mm), np.array(px_err)  # (R, 478)
    hit_rate = np.isfinite(res_mm).mean(0)
    med = np.nanmedian(res_mm, axis=0)
    p90 = np.nanpercentile(res_mm, 90, axis=0)
    weight = 1.0 / (1.0 + (med / WEIGHT_R0_MM) ** 2)
    stable = (med < STABLE_MM) & (hit_rate >= STABLE_HIT_RATE)
    import mediapipe
    finite = res_mm[np.isfinite(res_mm)]

    def summary(sel):
        r = res_mm[:, sel]
        r = r[np.isfinite(r)]
        p = px_err[:, sel].ravel()
        return {"median_mm": float(np.median(r)), "mean_mm": float(np.mean(r)),
                "p90_mm": float(np.percentile(r, 90)), "median_px": float(np.median(p)),
                "p90_px": float(np.percentile(p, 90))}

    meta = {
        "format": FORMAT, "mediapipe": mediapipe.__version__, "config": dataclasses.asdict(config),
        "renders_detected": int(detected), "renders_total": int(config.renders + config.held_out),
        "detection_rate": detected / (config.renders + config.held_out),
        "held_out_detected": len(held_views), "train_detected": train_detected,
        "skin_regions": list(SKIN_REGIONS), "iris_regions": list(IRIS_REGIONS),
        "weight": f"1 / (1 + (residual_mm / {WEIGHT_R0_MM})^2)", "weight_r0_mm": WEIGHT_R0_MM,
        "stable_mm": STABLE_MM, "stable_hit_rate": STABLE_HIT_RATE, "num_stable": int(stable.sum()),
        "residual_all": summary(np.arange(NUM_LANDMARKS)), "residual_stable": summary(stable),
        "residual_unstable": summary(~stable) if (~stable).any() else None,
        "residual_iris": summary(IRIS), "samples": int(finite.size),
        "timing_s": {k: round(v, 1) for k, v in timing.items()},
        "pixel_convention": "MediaPipe x * width - 0.5 (pixel centres at integers), via core.face_mesh",
    }
    table = Correspondence(vids, bary.astype(np.float32), weight.astype(np.float32), stable,
                           med.astype(np.float32), meta)
    extra = {"residual_p90_mm": p90.astype(np.float32), "hit_rate": hit_rate.astype(np.float32),
             "train_spread_mm": (spread * 1e3).astype(np.float32),
             "px_residual_median": np.median(px_err, axis=0).astype(np.float32)}
    return table, extra


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH, help="npz to write (default: %(default)s)")
    ap.add_argument("--renders", type=int, default=BuildConfig.renders)
    ap.add_argument("--held-out", type=int, default=BuildConfig.held_out)
    ap.add_argument("--seed", type=int, default=BuildConfig.seed)
    args = ap.parse_args(argv)
    config = BuildConfig(renders=args.renders, held_out=args.held_out, seed=args.seed)
    t0 = time.time()
    table, extra = build(MorphableModel.load(), config)
    table.save(args.out, extra)
    m = table.metadata
    print(f"wrote {args.out} in {time.time() - t0:.0f} s; detection rate {m['detection_rate']:.3f}; "
          f"{m['num_stable']} stable landmarks")
    for key in ("residual_all", "residual_stable", "residual_unstable", "residual_iris"):
        print(f"  {key}: {m[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
