"""Builds the MediaPipe -> ICT-FaceKit correspondence table (:mod:`facediff_ros.core.face.correspondence`).

``python -m facediff_ros.synthetic.correspondence_builder --out PATH`` renders random subjects,
runs MediaPipe on them and writes the table (~1 min on 2 CPU cores). Offline: the live path only
loads the shipped table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.correspondence import (DEFAULT_PATH, FORMAT, IRIS_REGIONS, SKIN_REGIONS,
                                                   STABLE_HIT_RATE, STABLE_MM, WEIGHT_R0_MM, Correspondence)
from facediff_ros.core.face.morphable_model import MorphableModel, rotation_matrix, transform
from facediff_ros.core.landmarks.face_mesh import IRIS, NUM_LANDMARKS


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
    from facediff_ros.core.face import expressions
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
    from facediff_ros.core.render import textures
    from facediff_ros.core.render.renderer import Lighting, Renderer

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
    from facediff_ros.core.landmarks.face_mesh import FaceMesh, FaceMeshConfig

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
