"""The landmark node's per-frame work against raw MediaPipe face mesh, same frames, same process.

    facediff bench landmarks [--json OUT] [--frames 30] [--loops 4]
    python -m facediff_ros.bench.landmarks_bench [--json OUT]

Makes a 640x480 recording of the synthetic actor (synthetic/recording.write_recording, in a
temporary folder, deleted afterwards), reads its frames back through pyrealsense2 and turns them
into the capture node's messages. Then, in alternating blocks of ``--block`` frames (the node
side, then the raw side on the same frames, then the next block):

- ``landmarks``: ``nodes.landmarks.landmarks_from_messages`` -- the landmark node's own
  per-frame function: messages -> landmark pipeline (decode + validate, face mesh, select,
  lifting) -> the serialized FaceLandmarks, everything but ``publish`` (which then costs
  ~0.004 ms for the bytes);
- ``raw_mediapipe``: ``mediapipe.solutions.face_mesh.FaceMesh(refine_landmarks=True)`` (same
  tracking mode and thresholds as the node) ``.process(rgb)`` on the same decoded images.

Each has its own MediaPipe graph (own tracking state). The frames are played ``--loops`` times;
the first frame of the first loop (graph start-up, detector) is not timed. Reports the medians
(ms) and their ratio; the goal (issue 13) is ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

WIDTH, HEIGHT = 640, 480
GOAL_RATIO = 1.3


def _frames_messages(folder: Path, frames: int, seed: int) -> list:
    """(colour, depth, CameraInfo) messages of a fresh 640x480 actor recording in ``folder``."""
    from facediff_ros.adapters.camera_frames import device_stamp, frame_messages
    from facediff_ros.core.capture.sources import CapturedFrame
    from facediff_ros.synthetic import recording
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor

    actor = SyntheticActor(ActorConfig(num_frames=frames, seed=seed, width=WIDTH, height=HEIGHT))
    path, _ = recording.write_recording(folder / "actor.db3", actor)
    out = []
    for i, fr in enumerate(recording.play_recording(path)):
        frame = CapturedFrame(color=fr.color, depth=fr.depth_mm, intrinsics=fr.intrinsics,
                              depth_scale=fr.depth_scale, stamp=fr.timestamp, frame_number=i)
        m = frame_messages(frame, device_stamp(frame), "camera_color_optical_frame", "16UC1")
        out.append((m.color, m.depth, m.info))
    return out


def run(frames: int = 30, loops: int = 4, seed: int = 1, block: int = 10) -> Dict[str, object]:
    """Measure; returns the JSON-able result (see :func:`main`)."""
    import mediapipe as mp

    from facediff_ros.adapters.images import image_fields
    from facediff_ros.core import images
    from facediff_ros.core.landmarks.face_mesh import FaceMeshConfig
    from facediff_ros.core.landmarks.pipeline import LandmarkPipeline
    from facediff_ros.nodes.landmarks import landmarks_from_messages

    with tempfile.TemporaryDirectory(prefix="facediff_bench_") as tmp:
        t0 = time.monotonic()
        msgs = _frames_messages(Path(tmp), frames, seed)
        make_s = time.monotonic() - t0
    if not msgs:
        raise RuntimeError("the recording gave no frames")
    cfg = FaceMeshConfig()
    raw = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=cfg.static_image_mode, max_num_faces=cfg.max_num_faces, refine_landmarks=True,
        min_detection_confidence=cfg.min_detection_confidence,
        min_tracking_confidence=cfg.min_tracking_confidence)
    pipeline = LandmarkPipeline()
    node_ms: List[float] = []
    raw_ms: List[float] = []
    stage_ms: Dict[str, List[float]] = {}
    faces = {"landmarks": 0, "raw_mediapipe": 0}
    # Blocks of `block` frames: each side processes a block in a row (its steady state: the face
    # mesh runs after that side's own per-frame work, as in a running node), then the other side
    # the same frames; blocks alternate, so load changes on the machine hit both alike.
    # (Alternating every frame charged one side's cache misses to the other: raw MediaPipe
    # measured 5.3 to 9.4 ms depending only on the order.)
    order = [(loop, i) for loop in range(loops) for i in range(len(msgs))]
    rgbs = [images.to_rgb8(images.fields_to_array(image_fields(c)), c.encoding) for c, _, _ in msgs]
    try:
        for b0 in range(0, len(order), block):
            chunk = order[b0:b0 + block]
            for loop, i in chunk:
                c, d, info = msgs[i]
                t = time.perf_counter()
                res, payload = landmarks_from_messages(pipeline, c, d, info)
                dt = time.perf_counter() - t
                if loop > 0 or i > 0:  # the first frame starts the graph and runs the detector
                    node_ms.append(dt * 1e3)
                    faces["landmarks"] += payload is not None
                    for k, v in res.timings_s.items():
                        stage_ms.setdefault(k, []).append(v * 1e3)
            for loop, i in chunk:
                t = time.perf_counter()
                out = raw.process(rgbs[i])
                dt = time.perf_counter() - t
                if loop > 0 or i > 0:
                    raw_ms.append(dt * 1e3)
                    faces["raw_mediapipe"] += bool(out.multi_face_landmarks)
    finally:
        pipeline.close()
        raw.close()
    lm, rw = float(np.median(node_ms)), float(np.median(raw_ms))
    return {"landmarks_ms": lm, "raw_mediapipe_ms": rw, "ratio": lm / rw, "goal_ratio": GOAL_RATIO,
            "width": WIDTH, "height": HEIGHT, "frames": len(msgs), "loops": loops, "block": block,
            "timed_per_side": len(node_ms),
            "landmarks_p90_ms": float(np.percentile(node_ms, 90)),
            "raw_mediapipe_p90_ms": float(np.percentile(raw_ms, 90)),
            "landmarks_stage_median_ms": {k: float(np.median(v)) for k, v in stage_ms.items()},
            "frames_with_face": faces, "recording_made_s": make_s}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="facediff bench landmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--frames", type=int, default=30, help="frames in the recording (default 30)")
    ap.add_argument("--loops", type=int, default=4, help="times the frames are played (default 4)")
    ap.add_argument("--seed", type=int, default=1, help="actor seed (default 1)")
    ap.add_argument("--block", type=int, default=10, help="frames per block of one side (default 10)")
    args = ap.parse_args(argv)
    if args.frames < 2 or args.loops < 1 or args.block < 1:
        ap.error("--frames must be >= 2, --loops and --block >= 1")
    res = run(args.frames, args.loops, args.seed, args.block)
    stages = ", ".join(f"{k} {v:.2f}" for k, v in res["landmarks_stage_median_ms"].items())
    print(f"landmarks: {res['width']}x{res['height']}, {res['frames']} frames x {res['loops']} loops, "
          f"faces {res['frames_with_face']}")
    print(f"landmark node per frame  {res['landmarks_ms']:.2f} ms median "
          f"(p90 {res['landmarks_p90_ms']:.2f}); stages: {stages}")
    print(f"raw MediaPipe face mesh  {res['raw_mediapipe_ms']:.2f} ms median "
          f"(p90 {res['raw_mediapipe_p90_ms']:.2f})")
    print(f"ratio {res['ratio']:.2f} (goal <= {GOAL_RATIO})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
