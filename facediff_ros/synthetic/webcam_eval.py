"""Colour-only fitting through the webcam path, against the depth mode, on synthetic actor sequences.

    python -m facediff_ros.synthetic.webcam_eval [--seeds 104 105 106] [--frames 60] [--quality 85]
        [--hfov 60] [--json OUT]

Each sequence (:class:`~facediff_ros.synthetic.actor.SyntheticActor`, 640x480, the D435-like 69
deg horizontal field of view, default noise, identities no test uses) is fitted by a fresh
:class:`~facediff_ros.core.fitting.tracker.FaceTracker` per mode, with
:func:`facediff_ros.synthetic.fitting_eval.run_mode` (its metrics, after the identity lock):

- ``depth``: the RealSense path on the rendered frames: MediaPipe landmarks, lifted, + dense depth;
- ``colour``: 2D landmarks only, same rendered frames and true K (fitting_eval's colour mode);
- ``webcam_calibrated``: what ``source:=webcam`` with a calibration delivers: the frames written
  to an MJPG .avi (JPEG ``--quality``) in a temporary folder (deleted after; synthetic faces
  only), read back by :class:`~facediff_ros.core.capture.webcam.WebcamSource` with a camera_info
  YAML of the true K, landmarks by :class:`~facediff_ros.core.landmarks.pipeline.LandmarkPipeline`
  with no depth, fitted colour-only;
- ``webcam_default_fov``: the same video without a calibration: K from the default ``--hfov``
  (60 deg, vs the true 69): the fitted head comes out nearer/farther, which the camera-frame
  errors show and ``vertex_error_aligned_mm`` (shape and expression only) does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from facediff_ros.core import images
from facediff_ros.core.capture.webcam import DEFAULT_HFOV_DEG, WebcamConfig, WebcamSource
from facediff_ros.core.face.correspondence import Correspondence
from facediff_ros.core.face.morphable_model import MorphableModel
from facediff_ros.core.fitting.tracker import FaceTracker, TrackerConfig
from facediff_ros.core.landmarks.pipeline import LandmarkPipeline
from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
from facediff_ros.synthetic.fitting_eval import run_mode, sequence_inputs

MODES = ("depth", "colour", "webcam_calibrated", "webcam_default_fov")
KEYS = ("vertex_error_mm", "vertex_error_aligned_mm", "vertex_error_face_mm", "expression_mae",
        "rotation_deg", "translation_mm", "ms_per_frame")


def write_video(path: Path, frames_rgb: Sequence[np.ndarray], fps: float, quality: int) -> None:
    """An MJPG .avi of RGB frames at JPEG ``quality`` (0-100)."""
    import cv2
    h, w = frames_rgb[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG to {path}")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, float(quality))
    for f in frames_rgb:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def calibration_yaml(path: Path, K: np.ndarray, width: int, height: int) -> None:
    """A camera_info YAML (camera_calibration's layout) of an undistorted camera with matrix ``K``."""
    def data(values):
        return "[" + ", ".join(repr(float(v)) for v in values) + "]"
    P = np.hstack([K, np.zeros((3, 1))])
    path.write_text(f"image_width: {width}\nimage_height: {height}\ncamera_name: actor\n"
                    f"camera_matrix:\n  rows: 3\n  cols: 3\n  data: {data(K.ravel())}\n"
                    f"distortion_model: plumb_bob\ndistortion_coefficients:\n  rows: 1\n  cols: 5\n"
                    f"  data: {data([0] * 5)}\nprojection_matrix:\n  rows: 3\n  cols: 4\n"
                    f"  data: {data(P.ravel())}\n")


def webcam_inputs(video: Path, config: WebcamConfig, truth: Sequence[Dict]) -> List[Dict]:
    """Per frame: the webcam source's frame -> colour-only landmarks, with ``truth``'s ground truth."""
    src = WebcamSource(config)
    src.open()
    out = []
    try:
        with LandmarkPipeline() as pipeline:
            for fr in truth:
                f = src.read()
                k = f.intrinsics
                color = images.ImageFields(k.height, k.width, "rgb8", False, 3 * k.width, f.color.tobytes())
                info = images.CameraInfoFields(k.height, k.width, k.K.ravel().tolist())
                lm = pipeline.process(color, None, info).landmarks
                uv = np.full((478, 2), np.nan) if lm is None else lm.uv.astype(np.float64)
                out.append(dict(fr, intrinsics=k, uv=uv))
    finally:
        src.close()
    return out


def evaluate(seeds: Sequence[int] = (104, 105, 106), frames: int = 60, quality: int = 85,
             hfov_deg: float = DEFAULT_HFOV_DEG) -> Dict:
    model = MorphableModel.load()
    corr = Correspondence.load()
    tracker = FaceTracker(TrackerConfig(), model, corr)
    face_ids = model.vertex_ids(("face",))
    narrow_ids = model.vertex_ids(("narrow_face",))
    per_seq: Dict[str, List[Dict]] = {m: [] for m in MODES}
    for seed in seeds:
        cfg = ActorConfig(seed=int(seed), num_frames=int(frames), keep_vertices=True)
        actor = SyntheticActor(cfg, model)
        rendered = sequence_inputs(actor, corr, "mediapipe", int(seed))
        colours = [actor.frame(i).color for i in range(len(actor))]
        k = rendered[0]["intrinsics"]
        with tempfile.TemporaryDirectory(prefix="webcam_eval_") as tmp:
            video, yml = Path(tmp) / "actor.avi", Path(tmp) / "actor.yaml"
            write_video(video, colours, cfg.fps, quality)
            calibration_yaml(yml, k.K, k.width, k.height)
            inputs = {
                "depth": rendered, "colour": rendered,
                "webcam_calibrated": webcam_inputs(video, WebcamConfig(str(video), str(yml), loop=False,
                                                                       realtime=False), rendered),
                "webcam_default_fov": webcam_inputs(video, WebcamConfig(str(video), "", hfov_deg, loop=False,
                                                                        realtime=False), rendered),
            }
        for mode in MODES:
            fit_mode = "depth" if mode == "depth" else "colour"
            res = run_mode(tracker, inputs[mode], fit_mode, model, face_ids, narrow_ids)
            res["seed"] = int(seed)
            per_seq[mode].append(res)
            print(f"seed {seed} {mode:18s} " + " ".join(
                f"{key}={v:.3f}" if isinstance(v, float) else f"{key}={v}"
                for key, v in res.items() if key != "seed"), file=sys.stderr, flush=True)
    summary: Dict = {"seeds": list(map(int, seeds)), "frames": int(frames), "jpeg_quality": int(quality),
                     "default_hfov_deg": float(hfov_deg), "true_hfov_deg": ActorConfig.hfov_deg,
                     "resolution": "640x480", "modes": {}}
    for mode in MODES:
        scored = [r for r in per_seq[mode] if r["frames_scored"]]
        m: Dict = {"sequences": per_seq[mode]}
        for key in KEYS:
            m[key] = float(np.mean([r[key] for r in scored])) if scored else None
        summary["modes"][mode] = m
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[104, 105, 106])
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--quality", type=int, default=85, help="JPEG quality of the MJPG video (0-100)")
    p.add_argument("--hfov", type=float, default=DEFAULT_HFOV_DEG,
                   help="the default horizontal field of view (deg) of webcam_default_fov")
    p.add_argument("--json", default=None, help="write the summary here")
    a = p.parse_args(argv)
    s = evaluate(a.seeds, a.frames, a.quality, a.hfov)
    print(f"{'mode':19s} {'vertex mm':>9s} {'aligned':>8s} {'face mm':>8s} {'expr MAE':>8s} {'rot deg':>8s} "
          f"{'trans mm':>8s} {'ms/frame':>8s}")
    for mode, m in s["modes"].items():
        print(f"{mode:19s} " + " ".join("    n/a " if m[k] is None else f"{m[k]:8.3f}" for k in KEYS))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(s, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
