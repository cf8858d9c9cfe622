"""A recording's frames and their face fits, computed once in the benchmark process.

The node benchmarks feed the editor what the capture, landmark and fitting nodes would send;
fitting every frame up front (MediaPipe landmarks + the tracker, as those nodes do it) keeps the
landmark and fitting work out of the editor's figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

from facediff_ros.core.capture.sources import CapturedFrame


@dataclass
class FittedFrame:
    frame: CapturedFrame
    fit: Optional[object]  # core.fitting.tracker.FitResult, None where no face was fitted
    fit_ms: float = float("nan")  # wall time of the tracker's update in the last pass


def recording_path(path: Optional[str]) -> str:
    """``path`` or the embedded sample recording."""
    from facediff_ros.nodes.capture import SAMPLE_RECORDING
    return path or str(SAMPLE_RECORDING)


def read_frames(path: Optional[str], max_frames: int = 300, force_align: bool = False) -> List[CapturedFrame]:
    """Every frame of the recording (one pass, at most ``max_frames``), as the capture node reads them."""
    from facediff_ros.core.capture import sources
    src = sources.RecordingSource(sources.RecordingConfig(path=recording_path(path), loop=False,
                                                          realtime=False, force_align=force_align))
    src.open()
    frames = []
    try:
        while len(frames) < max_frames:
            try:
                frames.append(src.read())
            except sources.SourceEnded:
                break
    finally:
        src.close()
    if not frames:
        raise ValueError(f"no frames in {recording_path(path)}")
    return frames


def fit_frames(frames: List[CapturedFrame], passes: int = 2) -> List[FittedFrame]:
    """Landmarks (the landmark node's pipeline) + the tracker (the fitting node's) for every frame.

    The frames are tracked ``passes`` times in a row (the identity locks during the first); the
    last pass's results are kept.
    """
    from facediff_ros.adapters.camera_frames import device_stamp, frame_messages
    from facediff_ros.adapters.images import camera_info_fields, image_fields
    from facediff_ros.core.fitting.tracker import FaceTracker, TrackerConfig
    from facediff_ros.core.landmarks.pipeline import LandmarkPipeline

    tracker = FaceTracker(TrackerConfig())
    fits: List[Optional[object]] = [None] * len(frames)
    fit_ms = [float("nan")] * len(frames)
    with LandmarkPipeline() as pipeline:
        for _ in range(passes):
            for i, f in enumerate(frames):
                m = frame_messages(f, device_stamp(f), "camera_color_optical_frame", "16UC1")
                res = pipeline.process(image_fields(m.color), image_fields(m.depth),
                                       camera_info_fields(m.info))
                lm = res.landmarks
                if lm is None:
                    fits[i] = None
                    continue
                t0 = time.perf_counter()
                r = tracker.update(f.intrinsics, lm.uv, lm.points, lm.valid, f.depth)
                fit_ms[i] = 1e3 * (time.perf_counter() - t0)
                fits[i] = r if r.ok else None
    return [FittedFrame(f, r, ms) for f, r, ms in zip(frames, fits, fit_ms)]
