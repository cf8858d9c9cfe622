"""MediaPipe face mesh (0.10.21, legacy solution graph): RGB image -> 478 landmarks per face.

Conventions (measured, see below):

- **Pixel coordinates.** MediaPipe normalises landmark x, y by the image width and height with
  0 and 1 at the image's outer *edges*. This package's pixel convention puts pixel centres at
  integers (OpenCV / ROS, :mod:`facediff_ros.core.camera`), so ``u = x * width - 0.5`` and
  ``v = y * height - 0.5``. Measured on rendered faces (15 head poses/positions, 28 midline
  landmarks, each image and its mirror image): the mean of ``(x + x_mirrored) * width`` was
  640.47 +- 0.15 for width 640 -- edge convention predicts 640, a centre convention 639.
- **Presence.** The legacy graph does not output its landmark model's per-face presence score;
  it only drops faces scoring below ``min_tracking_confidence``. What it does output is the face
  detector's detections, on the frames where the detector runs (the first frame, and whenever
  fewer than ``max_num_faces`` faces are being tracked). ``presence`` is the score of the
  detection that best overlaps the face (IoU of the boxes), carried over to later tracked frames
  while the face's box keeps overlapping; a face with no such detection gets
  ``min_detection_confidence`` (the lower bound it must have passed).
- **Several faces** (``max_num_faces > 1``): :func:`select_face` picks one by a rule --
  ``"largest"``: the largest landmark bounding box (area in px^2); ``"closest"``: the smallest
  median depth at the face's landmark pixels (faces without valid depth lose; ties and no-depth
  cases fall back to ``"largest"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from facediff_ros.core import images

NUM_LANDMARKS = 478  # refine_landmarks: 468 mesh points + 10 iris points
NUM_MESH_LANDMARKS = 468  # 0-467 on the skin
IRIS = np.arange(468, 478)  # the refined iris points: 468-472 one eye, 473-477 the other
SELECTION_RULES = ("largest", "closest")
_BOX_MATCH_IOU = 0.3  # a detection and a landmark box overlapping this much are the same face


@dataclass(frozen=True)
class FaceMeshConfig:
    """MediaPipe face mesh options (see the module docstring for what they mean here)."""

    # 1 face keeps the detector off once a face is tracked (it runs again when the face is lost):
    # the cheapest mode, ~3 ms per 640x480 frame on this CPU.
    max_num_faces: int = 1
    # Detector score a new face needs; MediaPipe's default.
    min_detection_confidence: float = 0.5
    # Landmark-model presence below which a tracked face is dropped and re-detected; default.
    min_tracking_confidence: float = 0.5
    # False: tracking mode, landmarks of frame t seed frame t+1 (faster, temporally steadier).
    static_image_mode: bool = False

    def __post_init__(self):
        if int(self.max_num_faces) != self.max_num_faces or self.max_num_faces < 1:
            raise ValueError(f"max_num_faces: expected an integer >= 1, got {self.max_num_faces}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {v}")


@dataclass
class DetectedFace:
    """One face found in an image."""

    uv: np.ndarray          # (478, 2) float32 px, pixel centres at integers; may lie off-image
    presence: float         # in [0, 1], see the module docstring
    bbox: Tuple[int, int, int, int] = field(default=(0, 0, 0, 0))  # x_offset, y_offset, width, height px

    @property
    def area(self) -> int:
        return int(self.bbox[2]) * int(self.bbox[3])


def landmarks_bbox(uv: np.ndarray, width: int, height: int) -> Tuple[int, int, int, int]:
    """Pixel box (x_offset, y_offset, width, height) holding every landmark's pixel, clipped to the image.

    A landmark at (u, v) lies in pixel (round(u), round(v)); the box spans those pixels
    inclusively, so a single landmark gives a 1x1 box. Returns (0, 0, 0, 0) when no landmark
    is finite.
    """
    uv = np.asarray(uv)
    # min/max are NaN when any landmark is: then only the finite ones count.
    (u0, v0), (u1, v1) = uv.min(axis=0).tolist(), uv.max(axis=0).tolist()
    if not all(math.isfinite(a) for a in (u0, v0, u1, v1)):
        uv = uv[np.isfinite(uv).all(axis=1)]
        if not uv.size:
            return (0, 0, 0, 0)
        (u0, v0), (u1, v1) = uv.min(axis=0).tolist(), uv.max(axis=0).tolist()
    # The extremes' pixels (round half to even, as np.rint), clipped to the image; in Python
    # floats: a handful of numpy calls on 2-element arrays cost more than the whole box.
    x0, x1 = (min(max(round(a), 0), width - 1) for a in (u0, u1))
    y0, y1 = (min(max(round(a), 0), height - 1) for a in (v0, v1))
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


# One NormalizedLandmark as MediaPipe serialises it (17 bytes): field 1 of the list, length 15
# (0x0A 0x0F), then fields 1, 2, 3 (x, y, z) as little-endian float32, wire type 5 (tags 0x0D,
# 0x15, 0x1D, each followed by 4 bytes).
_LANDMARK_RECORD = 17
_TAG_COLUMNS = np.array([0, 1, 2, 7, 12])
_TAG_VALUES = np.array([0x0A, 15, 0x0D, 0x15, 0x1D], np.uint8)
_XY_COLUMNS = np.r_[3:7, 8:12]  # the bytes of x, then of y


def normalized_xy(landmark_list) -> np.ndarray:
    """(N, 2) float32 normalised x, y of a ``NormalizedLandmarkList``: protobuf or its serialized bytes.

    Reads the serialised message with numpy when every landmark has exactly x, y, z set (what
    the face mesh graph outputs): 0.03 ms for 478 landmarks instead of 0.3-0.4 ms for reading
    ``p.x, p.y`` from 478 protobuf objects in Python. Any other layout (visibility or presence
    set, a field missing) is parsed by protobuf, so the result is the same either way.
    """
    if isinstance(landmark_list, (bytes, bytearray)):
        data = bytes(landmark_list)
    else:
        data = landmark_list.SerializeToString()
    n = len(data) // _LANDMARK_RECORD
    if n and len(data) == n * _LANDMARK_RECORD:
        rec = np.frombuffer(data, np.uint8).reshape(n, _LANDMARK_RECORD)
        if (rec[:, _TAG_COLUMNS] == _TAG_VALUES).all():
            return rec.take(_XY_COLUMNS, axis=1).view("<f4").astype(np.float32, copy=False)  # (N, 2)
    if isinstance(landmark_list, (bytes, bytearray)):
        from mediapipe.framework.formats import landmark_pb2
        landmark_list = landmark_pb2.NormalizedLandmarkList.FromString(data)
    return np.array([(p.x, p.y) for p in landmark_list.landmark], dtype=np.float32).reshape(-1, 2)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def select_face(faces: Sequence[DetectedFace], rule: str = "largest",
                depth_m: Optional[np.ndarray] = None) -> int:
    """Index of the face to use among ``faces`` (see the module docstring); -1 for no faces.

    :param rule: ``"largest"`` or ``"closest"``.
    :param depth_m: (H, W) depth aligned to the image, for "closest": float metres (NaN/0
        invalid) or uint16 millimetres (0 invalid); only the order of the faces' medians matters.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule: expected one of {SELECTION_RULES}, got {rule!r}")
    if not faces:
        return -1
    if len(faces) == 1:
        return 0
    areas = np.array([f.area for f in faces], dtype=np.float64)
    largest = int(np.argmax(areas))
    if rule == "largest" or len(faces) == 1 or depth_m is None:
        return largest
    depth_m = np.asarray(depth_m)
    h, w = depth_m.shape
    medians = []
    for f in faces:
        px = np.rint(f.uv).astype(np.int64)  # (478, 2) u, v
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        d = depth_m[px[inside, 1], px[inside, 0]].astype(np.float64)
        d = d[np.isfinite(d) & (d > 0)]
        medians.append(np.median(d) if d.size else np.inf)
    medians = np.array(medians)
    if not np.isfinite(medians).any():
        return largest
    return int(np.argmin(medians))


class FaceMesh:
    """MediaPipe face mesh with refined (iris) landmarks, in tracking mode by default.

    Not thread-safe; one instance per image stream (tracking state is per instance). Call
    :meth:`close` (or use ``with``) to free the graph.
    """

    def __init__(self, config: FaceMeshConfig = FaceMeshConfig()):
        # Imported here: `import mediapipe` takes ~1 s and pulls TensorFlow Lite.
        from mediapipe.python.solution_base import SolutionBase
        from mediapipe.python.solutions import face_mesh as mp_face_mesh

        self.config = config
        # FaceMesh's own graph and options (mediapipe/python/solutions/face_mesh.py), with the
        # detector's detections as an extra output for the presence score.
        self._graph = SolutionBase(
            binary_graph_path=mp_face_mesh._BINARYPB_FILE_PATH,
            side_inputs={"num_faces": int(config.max_num_faces), "with_attention": True,
                         "use_prev_landmarks": not config.static_image_mode},
            calculator_params={
                "facedetectionshortrangecpu__facedetectionshortrange__facedetection__"
                "TensorsToDetectionsCalculator.min_score_thresh": float(config.min_detection_confidence),
                "facelandmarkcpu__ThresholdingCalculator.threshold": float(config.min_tracking_confidence),
            },
            outputs=["multi_face_landmarks", "face_detections"])
        self._tracks: List[Tuple[Tuple[int, int, int, int], float]] = []  # (bbox, presence)

    def process(self, rgb: np.ndarray) -> List[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image, in MediaPipe's order (possibly empty).

        :raises ValueError: not an (H, W, 3) uint8 array, or an empty one.
        :raises facediff_ros.core.images.ImageTooLarge: a size that would abort the process inside
            MediaPipe's OpenCV (see :func:`facediff_ros.core.images.check_image_size`).
        """
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"rgb: expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        images.check_image_size(h, w, "rgb")  # an abort is not an exception: refuse it here
        landmarks, face_detections = self._run(np.ascontiguousarray(rgb))
        detections = []
        for det in face_detections:
            box = det.location_data.relative_bounding_box
            detections.append(((box.xmin * w, box.ymin * h, box.width * w, box.height * h),
                               float(det.score[0]) if det.score else float("nan")))
        faces = []
        scale = np.array([w, h], np.float32)
        for lms in landmarks:
            xy = normalized_xy(lms)  # (478, 2) normalised
            uv = xy * scale - 0.5  # edge-normalised -> pixel centres
            bbox = landmarks_bbox(uv, w, h)
            faces.append(DetectedFace(uv=uv, presence=self._presence(bbox, detections), bbox=bbox))
        self._tracks = [(f.bbox, f.presence) for f in faces]
        return faces

    def _run(self, rgb: np.ndarray) -> Tuple[list, list]:
        """One graph run: the faces' landmark lists (serialized bytes) and the detections (protos).

        What ``SolutionBase.process`` does (timestamp, packet, wait), without converting the
        landmark lists into protobuf objects that :func:`normalized_xy` would serialize again
        (and without the namedtuple class it builds on every call). Uses SolutionBase's private
        members, as they are in the pinned MediaPipe 0.10.21; without them, the public path.
        """
        sb = self._graph
        try:
            graph, outputs, make_packet = sb._graph, sb._graph_outputs, sb._make_packet
            image_type = sb._input_stream_type_info["image"]
            from mediapipe.python import packet_getter
            from mediapipe.python._framework_bindings import _packet_getter as raw_getter
            serialized_list = raw_getter._get_serialized_proto_list
        except (AttributeError, ImportError, KeyError, TypeError):
            result = sb.process({"image": rgb})
            return list(result.multi_face_landmarks or []), list(result.face_detections or [])
        outputs.clear()
        sb._simulated_timestamp += 33333  # as SolutionBase: a 30 Hz video
        graph.add_packet_to_input_stream(stream="image",
                                         packet=make_packet(image_type, rgb).at(sb._simulated_timestamp))
        graph.wait_until_idle()
        lm_packet, det_packet = outputs.get("multi_face_landmarks"), outputs.get("face_detections")
        landmarks = [] if lm_packet is None or lm_packet.is_empty() else serialized_list(lm_packet)
        detections = ([] if det_packet is None or det_packet.is_empty()
                      else packet_getter.get_proto_list(det_packet))
        return landmarks, detections

    def _presence(self, bbox, detections) -> float:
        best, best_iou = None, _BOX_MATCH_IOU
        for box, score in detections:
            iou = _iou(bbox, box)
            if iou >= best_iou and math.isfinite(score):
                best, best_iou = score, iou
        if best is None:
            for box, score in self._tracks:
                iou = _iou(bbox, box)
                if iou >= best_iou:
                    best, best_iou = score, iou
        if best is None:
            best = self.config.min_detection_confidence
        return min(max(float(best), 0.0), 1.0)

    def reset(self) -> None:
        """Forget the tracking state (the next frame runs the detector)."""
        self.close()
        self.__init__(self.config)

    def close(self) -> None:
        self._graph.close()

    def __enter__(self) -> "FaceMesh":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
