"""Renderer timing for the face model: ``python -m facediff_ros.bench.renderer_bench``.

Renders MorphableModel.triangles() (default regions, ~32.7k triangles) with the full buffer set
(depth, mask, triangle id, barycentrics, smooth normals, UV, textured Lambert colour) at

* 128x128, a face crop: focal length chosen so the head fills the crop, face 0.6 m away;
* 640x480, a RealSense-like colour camera (69 deg horizontal field of view), face 0.6 m away;

for both backends, and prints the median milliseconds per render (everything a per-frame call
pays: back-face test, BVH build or rasterisation, shading). The head turns a little between
calls so that no backend can reuse work between frames.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.morphable_model import MorphableModel, rotation_matrix, transform
from facediff_ros.core.render.renderer import Renderer


def _time(fn, reps: int) -> float:
    fn()  # warm-up (imports, ray cache)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="renders per configuration")
    parser.add_argument("--threads", type=int, default=2, help="open3d threads for the raycast backend")
    args = parser.parse_args(argv)

    model = MorphableModel.load()
    tris, tri_uvs, _ = model.triangles()
    rng = np.random.default_rng(0)
    # A smooth random albedo (the texture's content does not change the cost).
    texture = np.clip(0.6 + 0.1 * rng.standard_normal((64, 64, 3)), 0, 1).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8, 1), np.float32))  # (512, 512, 3)
    neutral = model.vertices()
    cameras = {
        "128x128 crop": Intrinsics(295.0, 295.0, 63.5, 63.5, 128, 128),
        "640x480": Intrinsics.from_fov(640, 480, 69.0),
    }
    # The per-triangle work dominates small images: the face alone (no back of the head, no mouth
    # socket) shows what a smaller mesh buys at crop size.
    face_tris, face_uvs, _ = model.triangles(("face", "eyeball_left", "eyeball_right"))
    configs = [(name, intr, tris, tri_uvs) for name, intr in cameras.items()]
    configs.insert(1, ("128x128 face", cameras["128x128 crop"], face_tris, face_uvs))
    results = {}
    for name, intr, tris, tri_uvs in configs:
        frames = [transform(neutral, rotation_matrix((0.0, 0.02 * np.sin(i), 0.0)), (0.0, 0.0, 0.6))
                  for i in range(8)]
        for backend in ("raster", "raycast"):
            r = Renderer(intr, threads=args.threads, backend=backend)
            full = _time(lambda i=0: r.render(frames[i % 8], tris, tri_uvs, texture), args.reps)
            geom = _time(lambda i=0: r.render(frames[i % 8], tris), args.reps)
            cover = r.render(frames[0], tris).mask.mean()
            results[(name, backend)] = full
            print(f"{name:13s} {len(tris):6d} triangles {backend:8s} full buffers + texture {full:6.2f} ms | "
                  f"without uv/colour {geom:6.2f} ms | face covers {100 * cover:4.1f}% of the image")
    return results


if __name__ == "__main__":
    main()
