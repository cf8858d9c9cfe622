"""Synthetic actor timing: ``python -m facediff_ros.bench.actor_bench [--width 640 --height 480]``.

Prints the set-up time (model, texture, wall) and the median seconds per generated frame (render,
sensor model, ground truth) for one seeded sequence.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    actor = SyntheticActor(ActorConfig(seed=args.seed, num_frames=args.frames, width=args.width,
                                       height=args.height))
    setup = time.perf_counter() - t0
    times = []
    for i in range(len(actor)):
        t0 = time.perf_counter()
        actor.frame(i)
        times.append(time.perf_counter() - t0)
    per_frame = float(np.median(times))
    print(f"{args.width}x{args.height}: set-up {setup:.2f} s, {per_frame:.3f} s per frame "
          f"(median of {len(times)})")
    return per_frame


if __name__ == "__main__":
    main()
