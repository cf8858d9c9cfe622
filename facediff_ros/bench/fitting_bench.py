"""Face tracker timing: ``python -m facediff_ros.bench.fitting_bench [--frames 60] [--json OUT]``.

One synthetic actor sequence at 640x480 with the default sensor noise; landmarks are the ground
truth mesh through the correspondence table (1 px noise) lifted from the noisy depth, so that
MediaPipe's time is not in the figure (the landmark benchmark measures it). Reports, after the
identity lock, the median / p90 / min wall time of ``FaceTracker.update`` per frame for each
input mode, the per-stage timings, the lock frame and the one-off cost of the lock frame.
The machine's other load shows in the wall-time median; ``min`` is the closest to an idle core and
``cpu_ms_per_frame`` (process CPU time, median) the work itself -- run with OPENBLAS_NUM_THREADS=1
so that it is one core's.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict

import numpy as np

from facediff_ros.core.face.correspondence import Correspondence
from facediff_ros.core.face.morphable_model import MorphableModel
from facediff_ros.core.fitting.tracker import FaceTracker, TrackerConfig
from facediff_ros.core.landmarks.lifting import lift_landmarks
from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the tracked frames")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model, corr = MorphableModel.load(), Correspondence.load()
    actor = SyntheticActor(ActorConfig(seed=args.seed, num_frames=args.frames, keep_vertices=True), model)
    rng = np.random.default_rng(args.seed)
    frames = []
    for i in range(len(actor)):
        f = actor.frame(i)
        uv = f.intrinsics.project(corr.points(f.vertices)) + rng.normal(0, 1.0, (478, 2))
        depth = f.depth.astype(np.float32) * np.float32(f.depth_scale)
        pts, valid = lift_landmarks(uv, depth, f.intrinsics)
        frames.append((f.intrinsics, uv, pts, valid, depth))
    t0 = time.perf_counter()
    tracker = FaceTracker(TrackerConfig(), model, corr)
    out: Dict = {"setup_s": time.perf_counter() - t0, "frames": args.frames, "modes": {}}
    for mode in ("depth", "landmarks_3d", "colour"):
        tracker.reset()
        lock_ms, lock_frame, times, cpu_times, stages = None, None, [], [], {}
        for rep in range(args.repeats):
            for i, (K, uv, pts, valid, depth) in enumerate(frames):
                p = pts if mode != "colour" else None
                d = depth if mode == "depth" else None
                t, c = time.perf_counter(), time.process_time()
                r = tracker.update(K, uv, p, valid if p is not None else None, d)
                ms, cpu = 1e3 * (time.perf_counter() - t), 1e3 * (time.process_time() - c)
                if r.identity_locked and lock_frame is None:
                    lock_frame, lock_ms = i, ms
                elif r.identity_locked and r.ok:
                    times.append(ms)
                    cpu_times.append(cpu)
                    for k, v in r.timings.items():
                        stages.setdefault(k, []).append(v)
        t = np.array(times)
        out["modes"][mode] = {"ms_per_frame": float(np.median(t)), "ms_p90": float(np.percentile(t, 90)),
                              "ms_min": float(t.min()), "cpu_ms_per_frame": float(np.median(cpu_times)),
                              "frames_timed": int(t.size), "lock_frame": lock_frame,
                              "lock_frame_ms": lock_ms,
                              "stages_ms": {k: float(np.median(v)) for k, v in stages.items()}}
        m = out["modes"][mode]
        print(f"{mode:13s} median {m['ms_per_frame']:.2f} ms  p90 {m['ms_p90']:.2f}  min {m['ms_min']:.2f}  "
              f"CPU median {m['cpu_ms_per_frame']:.2f} ms  "
              f"lock at frame {lock_frame} ({lock_ms:.0f} ms)  stages {m['stages_ms']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
