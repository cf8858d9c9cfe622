"""Identity judge: dlib's 128-D face embedding and the distance between two faces.

An evaluation judge independent of the pipeline under test: it uses dlib's own HOG face detector,
its 68-point shape predictor and its ResNet face recognition model (the ``dlib-bin`` and
``face-recognition-models`` wheels), nothing from ``facediff_ros.core``. dlib's model was trained
so that two photos of the same person lie less than 0.6 apart (Euclidean distance between
descriptors; 99.38 % on LFW at that threshold).

``face_recognition_models`` is not imported: its ``__init__`` needs ``pkg_resources``, which recent
setuptools no longer ships. The model files are found through the package's import spec instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# dlib's threshold for "same person" (face_recognition's default tolerance).
SAME_PERSON_DISTANCE = 0.6

_MODEL_FILES = {
    "shape68": "shape_predictor_68_face_landmarks.dat",
    "shape5": "shape_predictor_5_face_landmarks.dat",
    "recognition": "dlib_face_recognition_resnet_model_v1.dat",
}


def models_dir() -> Path:
    """Folder with the face-recognition-models ``.dat`` files, found without importing the package.

    Raises:
        RuntimeError: the wheel is not installed or lacks a model file.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the face-recognition-models package is not installed "
                           "(pip install face-recognition-models; see requirements.txt)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [f for f in _MODEL_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise RuntimeError(f"face-recognition-models at {folder} lacks {missing}")
    return folder


def _check_rgb(rgb) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {a.shape} dtype {a.dtype}")
    if a.shape[0] < 16 or a.shape[1] < 16:
        raise ValueError(f"image must be at least 16x16, got {a.shape[1]}x{a.shape[0]}")
    return np.ascontiguousarray(a)


class IdentityJudge:
    """dlib face embeddings of RGB images.

    Args:
        landmarks: 68 or 5, the shape predictor that aligns the face chip (the 5-point one is what
            dlib recommends for the recognition model; both align to the same 150x150 chip).
        upsample: how many times the HOG detector upsamples the image when it finds nothing at the
            original size (the HOG detector's smallest face is ~80 px; one upsample finds ~40 px).
        jitter: dlib's ``num_jitters`` (random re-crops averaged; 1 = none, deterministic).
        padding: dlib's chip padding around the aligned face (0.25 = dlib's default).
    """

    def __init__(self, landmarks: int = 68, upsample: int = 1, jitter: int = 1, padding: float = 0.25):
        import dlib  # local: only the judge needs dlib

        if landmarks not in (5, 68):
            raise ValueError(f"landmarks must be 5 or 68, got {landmarks}")
        if int(upsample) != upsample or not 0 <= upsample <= 3:
            raise ValueError(f"upsample must be an integer in [0, 3], got {upsample}")
        if int(jitter) != jitter or jitter < 1:
            raise ValueError(f"jitter must be an integer >= 1, got {jitter}")
        folder = models_dir()
        self._dlib = dlib
        self.upsample = int(upsample)
        self.jitter = int(jitter)
        self.padding = float(padding)
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(str(folder / _MODEL_FILES[f"shape{landmarks}"]))
        self.recognizer = dlib.face_recognition_model_v1(str(folder / _MODEL_FILES["recognition"]))

    def detect(self, rgb) -> Optional[Sequence[int]]:
        """The largest face found, as a box (left, top, right, bottom) in pixels, or None."""
        img = _check_rgb(rgb)
        for up in range(self.upsample + 1):
            dets = self.detector(img, up)
            if len(dets):
                d = max(dets, key=lambda r: r.width() * r.height())
                return (int(d.left()), int(d.top()), int(d.right()), int(d.bottom()))
        return None

    def embed(self, rgb, box: Optional[Sequence[float]] = None) -> Optional[np.ndarray]:
        """dlib's 128-D descriptor of the face in an image.

        Args:
            rgb: (H, W, 3) uint8 RGB.
            box: optional face box (left, top, right, bottom) in pixels; without it the largest face
                the HOG detector finds is used.

        Returns:
            (128,) float64 descriptor (unit-ish norm), or None when no face is found.
        """
        img = _check_rgb(rgb)
        if box is None:
            box = self.detect(img)
            if box is None:
                return None
        if len(box) != 4 or not np.all(np.isfinite(np.asarray(box, dtype=float))):
            raise ValueError(f"box must be 4 finite numbers (left, top, right, bottom), got {box}")
        l, t, r, b = (int(round(float(v))) for v in box)
        if r <= l or b <= t:
            raise ValueError(f"box must have right > left and bottom > top, got {box}")
        rect = self._dlib.rectangle(l, t, r, b)
        shape = self.shape_predictor(img, rect)
        desc = self.recognizer.compute_face_descriptor(img, shape, self.jitter, self.padding)
        return np.asarray(desc, dtype=np.float64)

    @staticmethod
    def distance(a, b) -> float:
        """Euclidean distance between two descriptors (< 0.6: dlib says the same person)."""
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.shape != (128,) or b.shape != (128,):
            raise ValueError(f"descriptors must be (128,), got {a.shape} and {b.shape}")
        return float(np.linalg.norm(a - b))

    def distance_images(self, a_rgb, b_rgb) -> Optional[float]:
        """Distance between the faces of two images, or None when either has no face found."""
        ea = self.embed(a_rgb)
        if ea is None:
            return None
        eb = self.embed(b_rgb)
        if eb is None:
            return None
        return self.distance(ea, eb)
