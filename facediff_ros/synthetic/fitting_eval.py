"""Fitting accuracy and speed on synthetic actor sequences (ground truth known), per input mode.

    python -m facediff_ros.synthetic.fitting_eval [--seeds 104 105 106] [--frames 60] [--json OUT]

Each sequence is a :class:`~facediff_ros.synthetic.actor.SyntheticActor` at 640x480 with the
default RealSense-like noise and an identity no test or default uses (seeds >= 100). Landmarks
come from the real per-frame path: MediaPipe face mesh (tracking mode) on the rendered colour
image, lifted to 3D by :func:`~facediff_ros.core.landmarks.lifting.lift_landmarks` on the noisy
depth (``--landmarks truth`` instead projects the ground-truth mesh through the correspondence
table: the fitter's own error without MediaPipe's).

Modes (a fresh :class:`~facediff_ros.core.fitting.tracker.FaceTracker` each, same frames):

- ``depth``: 2D + 3D landmarks + the dense depth term;
- ``landmarks_3d``: 2D + 3D landmarks, no depth image;
- ``colour``: 2D landmarks only (scale from the identity prior).

Reported per mode, over the frames after the identity lock (means over frames):
``vertex_error_mm`` (mean distance of the narrow-face vertices, forehead to chin, camera frame,
so pose error included), ``vertex_error_face_mm`` (the whole ``face`` region, ears included),
``vertex_error_aligned_mm`` (the same after a best similarity alignment: shape and expression
only, no pose or scale), ``expression_mae`` (mean |weight error| over all 53 weights), ``rotation_deg``,
``translation_mm`` (the model origin's position), ``ms_per_frame`` (median wall time of
``FaceTracker.update`` after the lock; ``ms_per_frame_p90`` too), the lock frame and lost frames.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from facediff_ros.core.face.correspondence import Correspondence
from facediff_ros.core.face.morphable_model import MorphableModel
from facediff_ros.core.fitting.solver import rotation_log
from facediff_ros.core.fitting.tracker import FaceTracker, TrackerConfig
from facediff_ros.core.landmarks.lifting import lift_landmarks
from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor

MODES = ("depth", "landmarks_3d", "colour")
TARGETS = {"vertex_error_mm": 1.5, "expression_mae": 0.08, "rotation_deg": 1.0, "translation_mm": 2.0,
           "ms_per_frame": 3.0}


def sequence_inputs(actor: SyntheticActor, correspondence: Correspondence, landmarks: str = "mediapipe",
                    seed: int = 0) -> List[Dict]:
    """Per frame: the fitter's inputs (uv, points, valid, depth m) and the ground truth."""
    frames = []
    mesh = None
    if landmarks == "mediapipe":
        from facediff_ros.core.landmarks.face_mesh import FaceMesh
        mesh = FaceMesh()
    rng = np.random.default_rng([seed, 7])
    try:
        for i in range(len(actor)):
            f = actor.frame(i)
            depth_m = f.depth.astype(np.float32) * np.float32(f.depth_scale)
            if mesh is not None:
                faces = mesh.process(f.color)
                if not faces:
                    uv = np.full((478, 2), np.nan)
                else:
                    uv = max(faces, key=lambda d: d.area).uv.astype(np.float64)
            else:
                lm = correspondence.points(f.vertices)
                uv = f.intrinsics.project(lm) + rng.normal(0, 0.7, (478, 2))
            if np.isfinite(uv).all():
                points, valid = lift_landmarks(uv, depth_m, f.intrinsics)
            else:
                points, valid = np.full((478, 3), np.nan), np.zeros(478, bool)
            frames.append(dict(intrinsics=f.intrinsics, uv=uv, points=points, valid=valid, depth=depth_m,
                               vertices=f.vertices, expression=f.expression, R=f.R, t=f.t))
    finally:
        if mesh is not None:
            mesh.close()
    return frames


def aligned_error(fit: np.ndarray, truth: np.ndarray) -> float:
    """Mean vertex distance (m) after the best similarity transform of ``fit`` onto ``truth``
    (Umeyama): the shape and expression error alone, without pose and overall scale -- what a
    colour-only fit can be judged on, since its scale comes from the prior."""
    mf, mt = fit.mean(0), truth.mean(0)
    a, b = fit - mf, truth - mt
    U, S, Vt = np.linalg.svd(b.T @ a)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    scale = float((S * np.diag(D)).sum() / (a * a).sum())
    return float(np.linalg.norm(scale * a @ R.T - b, axis=1).mean())


def run_mode(tracker: FaceTracker, frames: Sequence[Dict], mode: str, model: MorphableModel,
             face_ids: np.ndarray, narrow_ids: np.ndarray) -> Dict:
    """Track one sequence in one mode; per-frame errors after the lock."""
    tracker.reset()
    rows, lock_frame, lost = [], None, 0
    for i, fr in enumerate(frames):
        points = fr["points"] if mode in ("depth", "landmarks_3d") else None
        depth = fr["depth"] if mode == "depth" else None
        t0 = time.perf_counter()
        valid = fr["valid"] if points is not None else None
        r = tracker.update(fr["intrinsics"], fr["uv"], points, valid, depth)
        ms = 1e3 * (time.perf_counter() - t0)
        if not r.ok:
            lost += 1
            continue
        if r.identity_locked and lock_frame is None:
            lock_frame = i
            continue  # the lock frame itself pays for the batched identity solve
        if not r.identity_locked:
            continue
        v = r.vertices(model, face_ids)
        err = np.linalg.norm(v - fr["vertices"][face_ids], axis=1)  # (Vf,) m
        narrow = np.isin(face_ids, narrow_ids)
        truth_narrow = fr["vertices"][face_ids][narrow]  # (Vn, 3)
        rows.append(dict(vertex_error_mm=1e3 * float(err[narrow].mean()),
                         vertex_error_aligned_mm=1e3 * aligned_error(v[narrow], truth_narrow),
                         vertex_error_face_mm=1e3 * float(err.mean()),
                         expression_mae=float(np.abs(r.expression - fr["expression"]).mean()),
                         rotation_deg=float(np.degrees(np.linalg.norm(rotation_log(r.R @ fr["R"].T)))),
                         translation_mm=1e3 * float(np.linalg.norm(r.t - fr["t"])),
                         ms=ms, terms=",".join(r.terms_used)))
    out: Dict = {"frames": len(frames), "frames_scored": len(rows), "lock_frame": lock_frame,
                 "lost_frames": lost}
    if rows:
        for key in ("vertex_error_mm", "vertex_error_aligned_mm", "vertex_error_face_mm", "expression_mae",
                    "rotation_deg", "translation_mm"):
            out[key] = float(np.mean([r[key] for r in rows]))
        ms = np.array([r["ms"] for r in rows])
        out["ms_per_frame"] = float(np.median(ms))
        out["ms_per_frame_p90"] = float(np.percentile(ms, 90))
        out["terms_used"] = sorted({r["terms"] for r in rows})
    return out


def evaluate(seeds: Sequence[int] = (104, 105, 106), frames: int = 60, modes: Sequence[str] = MODES,
             landmarks: str = "mediapipe", config: Optional[TrackerConfig] = None) -> Dict:
    """Run every mode on every seed's sequence; returns per-mode means over sequences + per sequence."""
    model = MorphableModel.load()
    corr = Correspondence.load()
    tracker = FaceTracker(config or TrackerConfig(), model, corr)
    face_ids = model.vertex_ids(("face",))
    narrow_ids = model.vertex_ids(("narrow_face",))
    per_seq: Dict[str, List[Dict]] = {m: [] for m in modes}
    for seed in seeds:
        actor = SyntheticActor(ActorConfig(seed=int(seed), num_frames=int(frames), keep_vertices=True), model)
        inputs = sequence_inputs(actor, corr, landmarks, int(seed))
        for mode in modes:
            res = run_mode(tracker, inputs, mode, model, face_ids, narrow_ids)
            res["seed"] = int(seed)
            per_seq[mode].append(res)
            print(f"seed {seed} {mode:13s} " + " ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in res.items() if k != "seed"),
                file=sys.stderr, flush=True)
    summary: Dict = {"seeds": list(map(int, seeds)), "frames": int(frames), "landmarks": landmarks,
                     "resolution": "640x480", "noise": "SensorNoise() defaults", "targets": TARGETS,
                     "modes": {}}
    for mode in modes:
        scored = [r for r in per_seq[mode] if r["frames_scored"]]
        m: Dict = {"sequences": per_seq[mode]}
        for key in ("vertex_error_mm", "vertex_error_aligned_mm", "vertex_error_face_mm", "expression_mae",
                    "rotation_deg", "translation_mm", "ms_per_frame", "ms_per_frame_p90"):
            m[key] = float(np.mean([r[key] for r in scored])) if scored else None
        summary["modes"][mode] = m
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[104, 105, 106])
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--landmarks", default="mediapipe", choices=("mediapipe", "truth"))
    p.add_argument("--json", default=None, help="write the summary here")
    a = p.parse_args(argv)
    s = evaluate(a.seeds, a.frames, a.modes, a.landmarks)
    print(f"{'mode':14s} {'vertex mm':>9s} {'aligned':>8s} {'face mm':>8s} {'expr MAE':>8s} {'rot deg':>8s} "
          f"{'trans mm':>8s} {'ms/frame':>8s} {'p90 ms':>7s}")
    for mode, m in s["modes"].items():
        vals = [m[k] for k in ("vertex_error_mm", "vertex_error_aligned_mm", "vertex_error_face_mm",
                               "expression_mae", "rotation_deg", "translation_mm", "ms_per_frame",
                               "ms_per_frame_p90")]
        print(f"{mode:14s} " + " ".join("    n/a " if v is None else f"{v:8.3f}" for v in vals))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(s, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
