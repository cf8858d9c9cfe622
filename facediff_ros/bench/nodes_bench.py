"""Per-frame latency of the capture and landmark nodes' work, on this machine, without a ROS graph.

    python -m facediff_ros.bench.nodes_bench [--recording PATH] [--frames 60] [--json OUT]

capture  = source read (playback + ``rs.align`` + colour/depth conversion; the synthetic recordings'
           depth is registered to colour already, ``--force-align`` aligns anyway as a camera's
           frames need) + building the messages (colour, depth, CameraInfo) with
           ``adapters.camera_frames.frame_messages``, the function the capture node publishes
           from -- what the capture node does per frame before ``publish``;
landmarks = ``nodes.landmarks.landmarks_from_messages``, the landmark node's per-frame function:
           the landmark pipeline (core.landmarks.pipeline: decode + validate, MediaPipe face mesh
           in tracking mode, depth lifting) + building the FaceLandmarks message. Its ratio to
           raw MediaPipe is ``facediff bench landmarks`` (bench/landmarks_bench.py).

The source is ``--recording`` or the embedded sample (facediff_ros/data/sample.db3), played as
fast as possible; without either, the synthetic actor renders frames live (then ``read`` is the
actor's rendering time, not a camera's). Reports median and 90th percentile in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


def _stats(ms: List[float]) -> Dict[str, float]:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p95_ms": float(np.percentile(a, 95)), "p99_ms": float(np.percentile(a, 99)), "n": int(a.size)}


def run(recording: Optional[str], frames: int, force_align: bool = False) -> Dict[str, object]:
    from facediff_ros.adapters.camera_frames import device_stamp, frame_messages
    from facediff_ros.core.capture import sources
    from facediff_ros.synthetic import actor_source
    from facediff_ros.core.landmarks.pipeline import LandmarkPipeline
    from facediff_ros.nodes.capture import SAMPLE_RECORDING
    from facediff_ros.nodes.landmarks import landmarks_from_messages

    path = recording or (str(SAMPLE_RECORDING) if SAMPLE_RECORDING.is_file() else None)
    if path:
        source = sources.RecordingSource(sources.RecordingConfig(path=path, loop=True, realtime=False,
                                                                 force_align=force_align))
        what = f"recording {path}" + (" (rs.align forced)" if force_align else "")
    else:
        source = actor_source.SyntheticSource(num_frames=frames, loop=True, realtime=False)
        what = "synthetic actor rendered live (no recording found)"
    source.open()
    pipeline = LandmarkPipeline()  # the node's defaults
    t: Dict[str, List[float]] = {k: [] for k in (
        "capture_read_align", "capture_build_msgs", "capture_total", "landmarks_decode",
        "landmarks_face_mesh", "landmarks_lifting", "landmarks_build_msg", "landmarks_total")}
    faces_found = 0
    size = None
    try:
        for i in range(frames + 1):  # +1: the first frame (graph start-up, detector) is not timed
            t0 = time.perf_counter()
            frame = source.read()
            t1 = time.perf_counter()
            msgs = frame_messages(frame, device_stamp(frame), "camera_color_optical_frame", "16UC1")
            t2 = time.perf_counter()
            cmsg, dmsg, info = msgs.color, msgs.depth, msgs.info
            if i > 0:
                for k, dt in (("capture_read_align", t1 - t0), ("capture_build_msgs", t2 - t1),
                              ("capture_total", t2 - t0)):
                    t[k].append(dt * 1000.0)
            # The landmark node's own per-frame function (pipeline + message), as the node calls it.
            res, payload = landmarks_from_messages(pipeline, cmsg, dmsg, info)
            t3 = time.perf_counter()
            if payload is None or i == 0:
                continue
            faces_found += 1
            size = res.rgb.shape[:2]
            st = res.timings_s
            for k, dt in (("landmarks_decode", st["decode"]), ("landmarks_face_mesh", st["face_mesh"]),
                          ("landmarks_lifting", st["lifting"]), ("landmarks_build_msg", st["message"]),
                          ("landmarks_total", t3 - t2)):
                t[k].append(dt * 1000.0)
    finally:
        source.close()
        pipeline.close()
    return {"source": what, "image_size_hw": list(size) if size else None, "frames_with_face": faces_found,
            "frames": frames, "stages": {k: _stats(v) for k, v in t.items() if v}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recording", help="a RealSense .db3/.bag (default: the embedded sample)")
    ap.add_argument("--frames", type=int, default=60, help="frames to time (default 60)")
    ap.add_argument("--force-align", action="store_true",
                    help="run rs.align even on a recording whose depth is registered to colour (a real "
                         "camera always needs it)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    res = run(args.recording, args.frames, args.force_align)
    print(f"source: {res['source']}, image {res['image_size_hw']}, "
          f"{res['frames_with_face']}/{res['frames']} frames with a face")
    print(f"{'stage':<24}{'median ms':>11}{'p90 ms':>9}")
    for k, s in res["stages"].items():
        print(f"{k:<24}{s['median_ms']:>11.2f}{s['p90_ms']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
