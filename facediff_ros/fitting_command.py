"""``facediff fit``: fit the face model to a recording or one image, offline, files in and out.

    facediff fit INPUT [--depth DEPTH.png --intrinsics K.json] [--out DIR] [--json OUT] [--frames N]

INPUT is a RealSense recording (``.db3``/``.bag``, read frame by frame, none skipped, with
:func:`facediff_ros.synthetic.recording.play_recording`: depth aligned to colour, intrinsics from
the file) or an image (PNG/JPEG). For an image, ``--depth`` is a uint16 PNG of millimetres aligned
to it (0 = no data) and ``--intrinsics`` a JSON ``{"width", "height", "fx", "fy", "cx", "cy"}``
(pixels, pixel centres at integers as everywhere in this package). An image without depth is fitted
from its 2D landmarks alone (colour only: the head's size, and so its distance, come from the
identity prior; the output says so); without ``--intrinsics`` as well, a 60 deg horizontal field
of view centred on the image is assumed (a common webcam; stated in the output).

Per frame the work is the nodes' own: :class:`~facediff_ros.core.landmarks.pipeline.LandmarkPipeline`
(MediaPipe face mesh in tracking mode for a recording, detection for a single image, then
lifting onto the depth) and :class:`~facediff_ros.core.fitting.tracker.FaceTracker` (warm start,
identity lock, ...). Then, for the report only, the fitted ``face`` region is rendered with
:class:`~facediff_ros.core.render.renderer.Renderer` at the camera's intrinsics and compared
with the measured depth.

Faces are biometric data: nothing is written unless asked. ``--out DIR`` writes per frame
``frame_NNNN.npz`` (the fitted state), ``frame_NNNN.ply`` (binary PLY: the ``face`` region's
vertices in the camera optical frame, metres, and its triangles) and ``frame_NNNN.png`` (input |
fitted mesh and landmarks over it | depth residual heat map); ``--json OUT`` the report (per
frame and summary, see :func:`fit_input`). With ``<name>.gt.npz`` beside a recording (the
synthetic actor's ground truth, :func:`facediff_ros.synthetic.recording.load_ground_truth`) the
report adds the errors :mod:`facediff_ros.synthetic.fitting_eval` reports.

Bad input (an unreadable file, a K.json that is not a plausible camera for the image, a depth
image of another size or type, options that do not fit the input) raises :class:`InputError`;
the command prints its one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics, check_camera_matrix
from facediff_ros.core import images

RECORDING_SUFFIXES = (".db3", ".bag")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Without K.json: a webcam-like camera (most laptop cameras have a 55-78 deg horizontal view);
# only the 2D landmark term uses it, and the distance is uncertain anyway without depth.
DEFAULT_HFOV_DEG = 60.0
# The depth residual heat map spans +-this (mm): sensor noise at 0.6 m is ~1-2 mm, a fit that is
# off shows as saturated colour.
HEAT_RANGE_MM = 10.0
# Depth residual over the forehead-to-chin area only: the region the depth term fits, and the
# part of a real face that hair, ears and the neck's shadow do not hide.
RESIDUAL_REGION = "narrow_face"
MESH_REGION = "face"


class InputError(ValueError):
    """An input file or option that cannot be used; the message is the one line the command prints."""


# ---- reading inputs ------------------------------------------------------------------------------
def read_intrinsics(path: Path, image_size: Tuple[int, int]) -> Intrinsics:
    """K.json -> :class:`Intrinsics`, checked against the image (``image_size`` = (width, height) px).

    :raises InputError: unreadable / not JSON / missing or non-numeric keys, a size other than the
        image's, non-positive or implausible focal lengths, a principal point far off the image.
    """
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--intrinsics {path}: cannot read it as JSON ({exc})") from None
    keys = ("width", "height", "fx", "fy", "cx", "cy")
    if not isinstance(d, dict) or not all(k in d for k in keys):
        raise InputError(f"--intrinsics {path}: expected an object with keys {', '.join(keys)}")
    vals = {}
    for k in keys:
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"--intrinsics {path}: {k} must be a finite number, got {v!r}")
        vals[k] = v
    for k in ("width", "height"):
        if int(vals[k]) != vals[k] or vals[k] < 1:
            raise InputError(f"--intrinsics {path}: {k} must be a positive integer, got {vals[k]!r}")
    w, h = int(vals["width"]), int(vals["height"])
    if (w, h) != tuple(image_size):
        raise InputError(f"--intrinsics {path}: says {w}x{h} but the image is "
                         f"{image_size[0]}x{image_size[1]}")
    if vals["fx"] <= 0 or vals["fy"] <= 0:
        raise InputError(f"--intrinsics {path}: fx and fy must be > 0 px, "
                         f"got fx={vals['fx']}, fy={vals['fy']}")
    K = [[vals["fx"], 0.0, vals["cx"]], [0.0, vals["fy"], vals["cy"]], [0.0, 0.0, 1.0]]
    try:
        check_camera_matrix(K, w, h)  # the same plausibility rules as CameraInfo from the wire
    except ValueError as exc:
        raise InputError(f"--intrinsics {path}: {exc}") from None
    return Intrinsics(float(vals["fx"]), float(vals["fy"]), float(vals["cx"]), float(vals["cy"]), w, h)


def _imread(path: Path, flags: int, what: str) -> np.ndarray:
    import cv2
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    # imdecode of the bytes, not imread: imread prints its own warnings and returns None silently.
    buf = np.fromfile(str(path), np.uint8)
    img = cv2.imdecode(buf, flags) if buf.size else None
    if img is None:
        raise InputError(f"{what} {path}: not a readable PNG/JPEG image")
    try:
        images.check_image_size(img.shape[0], img.shape[1], f"{what} {path}")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return img


def read_color(path: Path) -> np.ndarray:
    """PNG/JPEG -> (H, W, 3) uint8 RGB (grey and alpha images converted; 16-bit scaled to 8)."""
    import cv2
    img = _imread(path, cv2.IMREAD_COLOR, "INPUT")  # any depth/channels -> 8-bit BGR
    return np.ascontiguousarray(img[..., ::-1])


def read_depth(path: Path, shape: Tuple[int, int]) -> np.ndarray:
    """uint16 PNG of millimetres (0 = no data) -> (H, W) uint16, checked to be ``shape`` (H, W).

    :raises InputError: unreadable, not single-channel 16-bit, another size, or no pixel with data.
    """
    import cv2
    d = _imread(path, cv2.IMREAD_UNCHANGED, "--depth")
    if d.dtype != np.uint16 or d.ndim != 2:
        raise InputError(f"--depth {path}: expected a single-channel 16-bit PNG (uint16 mm), "
                         f"got {d.dtype} with shape {d.shape}")
    if d.shape != tuple(shape):
        raise InputError(f"--depth {path}: {d.shape[1]}x{d.shape[0]} is not aligned to the "
                         f"{shape[1]}x{shape[0]} image")
    if not d.any():
        raise InputError(f"--depth {path}: no pixel has depth (all 0)")
    return d


def read_image_input(path: Path, depth: Optional[str], intrinsics: Optional[str]
                     ) -> Tuple[np.ndarray, Intrinsics, Optional[np.ndarray], List[str]]:
    """An image input as `facediff fit` and `facediff edit` take it: (RGB uint8, K, depth uint16 mm
    or None, notes saying what was assumed). Without K.json a DEFAULT_HFOV_DEG field of view.

    :raises InputError: --depth without --intrinsics, or an unreadable / inconsistent file.
    """
    rgb = read_color(path)
    size = (rgb.shape[1], rgb.shape[0])
    notes: List[str] = []
    if depth and not intrinsics:
        raise InputError("--depth needs --intrinsics K.json (the depth's pixels become metres through K)")
    if intrinsics:
        K = read_intrinsics(Path(intrinsics), size)
    else:
        K = Intrinsics.from_fov(size[0], size[1], DEFAULT_HFOV_DEG)
        notes.append(f"no --intrinsics: assumed a {DEFAULT_HFOV_DEG:g} deg horizontal field of view "
                     f"centred on the image (fx = fy = {K.fx:.1f} px)")
    d = read_depth(Path(depth), rgb.shape[:2]) if depth else None
    return rgb, K, d, notes


@dataclass
class Frame:
    """One input frame: colour, optional aligned depth, the colour camera."""

    index: int
    timestamp: float               # s (recorded timestamp; 0 for an image)
    rgb: np.ndarray                # (H, W, 3) uint8
    depth: Optional[np.ndarray]    # (H, W) uint16 in depth_scale m per unit, 0 = none; None: no depth
    intrinsics: Intrinsics
    depth_scale: float = 0.001     # m per depth unit


def input_kind(path: Path) -> str:
    """'recording' or 'image' by the file name's suffix.

    :raises InputError: another suffix.
    """
    s = path.suffix.lower()
    if s in RECORDING_SUFFIXES:
        return "recording"
    if s in IMAGE_SUFFIXES:
        return "image"
    raise InputError(f"INPUT {path}: expected a recording ({', '.join(RECORDING_SUFFIXES)}) or an image "
                     f"({', '.join(IMAGE_SUFFIXES)})")


def recording_frames(path: Path, limit: Optional[int] = None) -> Iterator[Frame]:
    """Every frame of a recording in order (the first ``limit``), depth aligned to colour."""
    from facediff_ros.synthetic.recording import play_recording
    try:
        for i, f in enumerate(play_recording(path)):
            if limit is not None and i >= limit:
                return
            yield Frame(i, float(f.timestamp), f.color, f.depth_mm, f.intrinsics, float(f.depth_scale))
    except (ValueError, TimeoutError, RuntimeError) as exc:
        raise InputError(f"INPUT {path}: {exc}") from None


# ---- outputs -------------------------------------------------------------------------------------
def write_ply(path: Path, vertices: np.ndarray, triangles: np.ndarray) -> None:
    """Binary little-endian PLY: float32 x y z (m, camera optical frame) and int32 triangles."""
    v = np.ascontiguousarray(vertices, "<f4")
    f = np.empty(len(triangles), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    f["n"] = 3
    f["idx"] = triangles
    header = ("ply\nformat binary_little_endian 1.0\n"
              "comment facediff fit: ICT-FaceKit 'face' region, camera optical frame (x right, y down, "
              "z forward), metres\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(v.tobytes())
        fh.write(f.tobytes())


def _diverging(x: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] -> RGB uint8: blue (-1) - white (0) - red (+1)."""
    x = np.clip(x, -1.0, 1.0)[..., None]
    blue, white, red = np.array([40, 90, 220.0]), np.array([245, 245, 245.0]), np.array([215, 40, 40.0])
    out = np.where(x < 0, white + (blue - white) * -x, white + (red - white) * x)
    return out.astype(np.uint8)


def _face_box(mask: Optional[np.ndarray], uv: Optional[np.ndarray], width: int, height: int
              ) -> Tuple[int, int, int]:
    """Square (x0, y0, side) px around the fitted face (else the landmarks, else the whole image),
    30 % margin, inside the image where it fits."""
    pts = None
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        pts = np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float64)
    elif uv is not None and np.isfinite(uv).all(1).any():
        good = np.asarray(uv)[np.isfinite(uv).all(1)]
        pts = np.array([good.min(0), good.max(0)])
    if pts is None:
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side
    centre = pts.mean(0)
    side = int(min(max(1.3 * (pts[1] - pts[0]).max(), 32), min(width, height)))
    x0 = int(np.clip(round(centre[0] - side / 2), 0, width - side))
    y0 = int(np.clip(round(centre[1] - side / 2), 0, height - side))
    return x0, y0, side


def _label(img: np.ndarray, text: str, org: Tuple[int, int], scale: float = 0.55) -> None:
    import cv2
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)


def overlay_image(rgb: np.ndarray, render, residual_mm: Optional[np.ndarray], uv: Optional[np.ndarray],
                  lines: Sequence[str]) -> np.ndarray:
    """The per-frame figure (RGB uint8, H x (W + 2H)): the whole input frame, then two square
    crops around the face scaled to the frame's height: the fitted mesh (shaded, 60 % over the
    image) with the MediaPipe landmarks, and the signed depth residual measured - fitted (mm; red:
    the measured surface lies behind the fit, blue: in front) over the grey image, clipped at
    +-HEAT_RANGE_MM, with a colour bar. ``render``: the fitted face region's RenderBuffers at
    the frame's intrinsics (None: no fit); ``residual_mm``: (H, W), NaN where not measured or
    not on the fit (None: no depth); ``uv``: (478, 2) landmark pixels or None; ``lines``: text
    printed under the mesh panel."""
    import cv2
    H, W = rgb.shape[:2]
    base = rgb.astype(np.float32)
    mesh = base.copy()
    if render is not None:
        shade = 0.25 + 0.75 * np.clip(-render.normals[..., 2], 0, 1)  # facing the camera: bright
        clay = np.stack([shade * 180, shade * 215, shade * 255], -1)  # light blue
        mesh = np.where(render.mask[..., None], 0.4 * base + 0.6 * clay, base)
    heat = (base.mean(-1, keepdims=True).repeat(3, -1) * 0.6).astype(np.uint8)
    if residual_mm is not None:
        has = np.isfinite(residual_mm)
        heat[has] = _diverging(residual_mm[has] / HEAT_RANGE_MM)
    x0, y0, side = _face_box(None if render is None else render.mask, uv, W, H)
    zoom = H / side

    def crop(img):
        c = np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side])
        # nearest for the heat map: every measured pixel stays one colour, no blended halo
        interp = cv2.INTER_NEAREST if img is heat else cv2.INTER_LINEAR
        return cv2.resize(c.astype(np.uint8), (H, H), interpolation=interp)

    mesh_c, heat_c = crop(mesh), crop(heat)
    if uv is not None:
        for u, v in np.asarray(uv)[np.isfinite(uv).all(1)]:
            p = (int(round((u - x0 + 0.5) * zoom - 0.5)), int(round((v - y0 + 0.5) * zoom - 0.5)))
            cv2.circle(mesh_c, p, max(1, int(zoom)), (255, 210, 0), -1, cv2.LINE_AA)
    if residual_mm is not None:
        bar_h, bx = H // 2, H - 34
        by = (H - bar_h) // 2
        heat_c[by:by + bar_h, bx:bx + 14] = _diverging(np.linspace(1, -1, bar_h)[:, None].repeat(14, 1))
        for text, y in ((f"+{HEAT_RANGE_MM:g} mm", by - 8), ("0", by + bar_h // 2 + 5),
                        (f"-{HEAT_RANGE_MM:g} mm", by + bar_h + 18)):
            tw = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0]
            _label(heat_c, text, (bx - 6 - tw if text == "0" else bx + 14 - tw, y), 0.45)
    full = rgb.copy()
    cv2.rectangle(full, (x0, y0), (x0 + side - 1, y0 + side - 1), (255, 210, 0), 1)
    _label(full, "input", (8, 22))
    _label(mesh_c, "fitted mesh + landmarks", (8, 22))
    _label(heat_c, "depth: measured - fitted" if residual_mm is not None else "no depth: colour-only fit",
           (8, 22))
    for k, line in enumerate(lines):
        _label(mesh_c, line, (8, H - 10 - 20 * (len(lines) - 1 - k)), 0.45)
    return np.concatenate([full, mesh_c, heat_c], axis=1)


# ---- fitting -------------------------------------------------------------------------------------
class Fitter:
    """Landmarks + tracker + report renderer for one input stream (one camera)."""

    def __init__(self, single_image: bool, max_faces: int = 1):
        from facediff_ros.core.face.morphable_model import REGIONS
        from facediff_ros.core.fitting.tracker import FaceTracker
        from facediff_ros.core.landmarks.face_mesh import FaceMeshConfig
        from facediff_ros.core.landmarks.pipeline import LandmarkPipeline, PipelineConfig
        # One image: run the face detector on it (tracking mode would too, on a first frame, but
        # static mode says what is meant); a recording: tracking mode, as the landmark node.
        self.pipeline = LandmarkPipeline(PipelineConfig(
            face_mesh=FaceMeshConfig(static_image_mode=single_image, max_num_faces=max_faces)))
        self.last_face_count = 0  # faces MediaPipe found in the last frame (up to max_faces)
        self.tracker = FaceTracker()
        self.model = self.tracker.model
        tris, _, poly = self.model.triangles((MESH_REGION,))
        self.mesh_ids = self.model.vertex_ids((MESH_REGION,))
        # 'face' vertices are 0..9408, so the triangles index the PLY's vertex list directly.
        assert self.mesh_ids[0] == 0 and self.mesh_ids[-1] == len(self.mesh_ids) - 1
        self.triangles = tris
        lo, hi = REGIONS[RESIDUAL_REGION].polygons
        self.residual_tri = (poly >= lo) & (poly < hi)  # triangles of the residual region
        self._renderer = None

    def close(self) -> None:
        self.pipeline.close()

    def landmarks(self, frame: Frame):
        """(uv (478, 2) px, points (478, 3) m or None, valid or None) or (None, reason) when not found."""
        from facediff_ros.core.landmarks.face_mesh import select_face
        from facediff_ros.core.landmarks.lifting import lift_landmarks
        faces = self.pipeline.face_mesh.process(frame.rgb)
        self.last_face_count = len(faces)
        if not faces:
            return None
        cfg = self.pipeline.config
        face = faces[select_face(faces, cfg.face_selection, frame.depth)]
        if frame.depth is None:
            return face.uv, None, None
        # lifting reads uint16 as millimetres; other depth units are converted first.
        depth = frame.depth if frame.depth_scale == 0.001 else frame.depth * np.float32(frame.depth_scale)
        points, valid = lift_landmarks(face.uv, depth, frame.intrinsics, cfg.lifting)
        return face.uv, points, valid

    def render(self, vertices: np.ndarray, intr: Intrinsics):
        from facediff_ros.core.render.renderer import Renderer
        if self._renderer is None or self._renderer.intrinsics != intr:
            self._renderer = Renderer(intr)
        return self._renderer.render(vertices, self.triangles)

    def depth_residual(self, render, frame: Frame) -> Tuple[Optional[np.ndarray], float, int]:
        """Signed measured - fitted depth (mm) where the fitted face covers a pixel with depth (NaN
        elsewhere), the median |.| over the residual region's pixels, and their count."""
        if frame.depth is None:
            return None, float("nan"), 0
        measured = frame.depth.astype(np.float32) * np.float32(frame.depth_scale * 1e3)
        has = render.mask & (frame.depth > 0)
        res = np.full(measured.shape, np.nan, np.float32)
        res[has] = measured[has] - render.depth[has] * np.float32(1e3)
        region = has & self.residual_tri[np.maximum(render.tri_id, 0)]
        n = int(region.sum())
        return res, (float(np.median(np.abs(res[region]))) if n else float("nan")), n


def _ground_truth_errors(result, gt: Dict[str, np.ndarray], model, narrow_ids: np.ndarray, i: int) -> Dict:
    """fitting_eval's errors for one fitted frame against ground-truth frame ``i``."""
    from facediff_ros.core.fitting.solver import rotation_log
    from facediff_ros.synthetic.fitting_eval import aligned_error
    R, t = gt["R"][i], gt["t"][i]
    truth = model.vertices(gt["identity"], gt["expression"][i], vertex_ids=narrow_ids)
    truth = truth @ R.T.astype(np.float32) + t.astype(np.float32)
    fit = result.vertices(model, narrow_ids)
    return {"vertex_error_mm": 1e3 * float(np.linalg.norm(fit - truth, axis=1).mean()),
            "vertex_error_aligned_mm": 1e3 * aligned_error(fit, truth),
            "expression_mae": float(np.abs(result.expression - gt["expression"][i]).mean()),
            "rotation_deg": float(np.degrees(np.linalg.norm(rotation_log(result.R @ R.T)))),
            "translation_mm": 1e3 * float(np.linalg.norm(result.t - t))}


def _finite(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def fit_input(path, depth: Optional[str] = None, intrinsics: Optional[str] = None, out: Optional[str] = None,
              frames: Optional[int] = None, log=None) -> Dict:
    """Fit every frame of ``path`` (see the module docstring); write outputs when ``out`` is given.

    Returns the report: ``input``, ``kind``, ``width``/``height``, ``intrinsics`` (fx fy cx cy px),
    ``colour_only`` (no depth: the scale comes from the identity prior), ``notes``, ``ground_truth``
    (its path or None), ``frames`` (per frame: ``index``, ``timestamp`` s, ``ok``, ``status``,
    ``reason``, ``residual_rms_mm`` (the fit's RMS over its metric terms), ``depth_residual_mm``
    (median |measured - fitted| over the narrow-face pixels with depth, from rendering the fit;
    None without depth), ``depth_pixels``, ``quality``, ``identity_locked``, ``terms_used``,
    ``scale_from_prior``, ``ms`` {``landmarks``, ``fit``, ``total``} (wall time; ``total`` is
    the two together, rendering and writing excluded), with ground truth also ``vertex_error_mm``
    (narrow face, camera frame), ``vertex_error_aligned_mm``, ``expression_mae``, ``rotation_deg``,
    ``translation_mm``), and ``summary`` (frames fitted / lost, lock frame, medians of the
    per-frame numbers; ground-truth means over frames after the lock, as fitting_eval).

    :raises InputError: unusable input (see the module docstring).
    """
    path = Path(path)
    kind = input_kind(path)
    if not path.is_file():
        raise InputError(f"INPUT {path}: no such file")
    if frames is not None and frames < 1:
        raise InputError(f"--frames must be >= 1, got {frames}")
    notes: List[str] = []
    gt = None
    gt_path = None
    if kind == "recording":
        if depth or intrinsics:
            raise InputError("--depth and --intrinsics are for an image; a recording holds its own "
                             "depth and intrinsics")
        from facediff_ros.synthetic.recording import ground_truth_path, load_ground_truth
        gt_file = ground_truth_path(path)
        if gt_file.is_file():
            try:
                gt = load_ground_truth(gt_file)
            except (OSError, ValueError, KeyError) as exc:
                raise InputError(f"ground truth {gt_file}: cannot read it ({exc})") from None
            gt_path = str(gt_file)
        source: Iterator[Frame] = recording_frames(path, frames)
    else:
        rgb, K, d, image_notes = read_image_input(path, depth, intrinsics)
        notes.extend(image_notes)
        if d is None:
            notes.append("no depth: colour-only fit (2D landmarks + priors); the head's size and "
                         "distance come from the identity prior (uncertain by centimetres)")
        source = iter([Frame(0, 0.0, rgb, d, K)])
    out_dir = Path(out) if out else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--out {out_dir}: cannot create it ({exc})") from None

    fitter = Fitter(single_image=(kind == "image"))
    model = fitter.model
    narrow_ids = model.vertex_ids(("narrow_face",))
    gt_index = None
    if gt is not None:
        from facediff_ros.synthetic.landmark_eval import FrameLookup
        gt_index = FrameLookup(gt).index_of
    rows: List[Dict] = []
    first: Optional[Frame] = None
    try:
        for frame in source:
            first = first or frame
            row = _fit_frame(fitter, frame, out_dir, gt, gt_index, narrow_ids)
            rows.append(row)
            if log is not None:
                log(_row_line(row))
    finally:
        fitter.close()
    if first is None:
        raise InputError(f"INPUT {path}: no frame with both depth and colour")
    K = first.intrinsics
    report = {"input": str(path), "kind": kind, "width": K.width, "height": K.height,
              "intrinsics": {"fx": K.fx, "fy": K.fy, "cx": K.cx, "cy": K.cy},
              "colour_only": first.depth is None, "notes": notes, "ground_truth": gt_path,
              "written_to": str(out_dir) if out_dir else None, "frames": rows, "summary": _summary(rows)}
    return report


def _fit_frame(fitter: Fitter, frame: Frame, out_dir: Optional[Path], gt, gt_index, narrow_ids) -> Dict:
    t0 = time.perf_counter()
    lm = fitter.landmarks(frame)
    t1 = time.perf_counter()
    row: Dict = {"index": frame.index, "timestamp": frame.timestamp}
    if lm is None:
        result = None
        row.update(ok=False, status="lost", reason="no face found")
        t2 = t1
    else:
        uv, points, valid = lm
        # A depth with no landmark on it is still passed: the tracker falls back to what it has.
        result = fitter.tracker.update(frame.intrinsics, uv, points, valid, frame.depth, frame.depth_scale)
        t2 = time.perf_counter()
        row.update(ok=bool(result.ok), status=result.status, reason=result.reason)
    row["ms"] = {"landmarks": 1e3 * (t1 - t0), "fit": 1e3 * (t2 - t1), "total": 1e3 * (t2 - t0)}
    render = residual = None
    if result is not None and result.ok:
        vertices = result.vertices(fitter.model, fitter.mesh_ids)
        render = fitter.render(vertices, frame.intrinsics)
        residual, med, n = fitter.depth_residual(render, frame)
        row.update(residual_rms_mm=_finite(1e3 * result.residual_rms), depth_residual_mm=_finite(med),
                   depth_pixels=n, quality=float(result.quality),
                   identity_locked=bool(result.identity_locked),
                   terms_used=list(result.terms_used), scale_from_prior=bool(result.scale_from_prior))
        if gt is not None:
            i = gt_index(int(round(frame.timestamp * 1e9)))
            row["ground_truth_frame"] = i
            if i is not None:
                row.update(_ground_truth_errors(result, gt, fitter.model, narrow_ids, i))
    else:
        row.update(residual_rms_mm=None, depth_residual_mm=None, depth_pixels=0, quality=0.0,
                   identity_locked=bool(fitter.tracker.identity_locked), terms_used=[],
                   scale_from_prior=False)
    if out_dir is not None:
        stem = out_dir / f"frame_{frame.index:04d}"
        if result is not None and result.ok:
            K = frame.intrinsics
            # The state in the units of FitResult: identity N(0, 1)-scaled, expression weights in
            # [0, 1] (names alongside), x_cam = R x_model + t (m), residual in metres.
            np.savez(f"{stem}.npz", identity=result.identity, expression=result.expression,
                     expression_names=np.asarray(fitter.model.expression_names), R=result.R, t=result.t,
                     quality=result.quality, residual_rms_m=result.residual_rms,
                     identity_locked=result.identity_locked,
                     terms_used=np.asarray(result.terms_used, dtype=str),
                     intrinsics=np.array([K.fx, K.fy, K.cx, K.cy, K.width, K.height]),
                     timestamp=frame.timestamp)
            write_ply(Path(f"{stem}.ply"), vertices, fitter.triangles)
        png = overlay_image(frame.rgb, render, residual, None if lm is None else lm[0], _row_lines(row))
        import cv2
        cv2.imwrite(f"{stem}.png", png[..., ::-1])
    return row


def _row_lines(row: Dict) -> List[str]:
    """The figure's caption: frame, status and quality, then the residuals, then the truth."""
    if not row["ok"]:
        return [_row_line(row)]
    out = [f"frame {row['index']}: {row['status']}, quality {row['quality']:.2f}"]
    res = []
    if row.get("depth_residual_mm") is not None:
        res.append(f"depth residual {row['depth_residual_mm']:.2f} mm")
    if row.get("residual_rms_mm") is not None:
        res.append(f"fit rms {row['residual_rms_mm']:.2f} mm")
    out.append(", ".join(res))
    if "vertex_error_mm" in row:
        out.append(f"vs truth: vertices {row['vertex_error_mm']:.2f} mm, {row['rotation_deg']:.2f} deg")
    out.append("terms: " + "+".join(row["terms_used"]))
    return out


def _row_line(row: Dict) -> str:
    if not row["ok"]:
        return f"frame {row['index']}: lost ({row['reason']})"
    parts = [f"frame {row['index']}: {row['status']}", f"q {row['quality']:.2f}"]
    if row.get("depth_residual_mm") is not None:
        parts.append(f"depth residual {row['depth_residual_mm']:.2f} mm")
    if row.get("residual_rms_mm") is not None:
        parts.append(f"rms {row['residual_rms_mm']:.2f} mm")
    if "vertex_error_mm" in row:
        parts.append(f"vertex err {row['vertex_error_mm']:.2f} mm")
    parts.append("+".join(row["terms_used"]))
    return ", ".join(parts)


def _summary(rows: List[Dict]) -> Dict:
    ok = [r for r in rows if r["ok"]]
    lock = next((r["index"] for r in ok if r["identity_locked"]), None)
    s: Dict = {"frames": len(rows), "frames_fitted": len(ok), "frames_lost": len(rows) - len(ok),
               "lock_frame": lock}

    def med(key, sel=ok):
        vals = [r[key] for r in sel if r.get(key) is not None]
        return float(np.median(vals)) if vals else None

    for key in ("residual_rms_mm", "depth_residual_mm", "quality"):
        s[f"{key}_median"] = med(key)
    s["ms_median"] = {k: (float(np.median([r["ms"][k] for r in rows])) if rows else None)
                      for k in ("landmarks", "fit", "total")}
    # As fitting_eval: after the lock frame (which pays for the batched identity solve).
    after = [r for r in ok if lock is not None and r["index"] > lock and "vertex_error_mm" in r]
    if after:
        s["after_lock"] = {k: float(np.mean([r[k] for r in after]))
                           for k in ("vertex_error_mm", "vertex_error_aligned_mm", "expression_mae",
                                     "rotation_deg", "translation_mm")}
        s["after_lock"]["frames"] = len(after)
    return s


# ---- command -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``facediff fit`` options (cli.py builds its subcommand from these)."""
    p.add_argument("input", help="a RealSense recording (.db3/.bag) or an image (PNG/JPEG)")
    p.add_argument("--depth", help="image only: uint16 PNG, millimetres aligned to the image, 0 = no data")
    p.add_argument("--intrinsics", help='image only: JSON {"width", "height", "fx", "fy", "cx", "cy"} (px)')
    p.add_argument("--out", help="write per frame the fitted state (.npz), mesh (.ply) and overlay (.png) "
                                 "into this folder (nothing is written without it: faces are biometric data)")
    p.add_argument("--json", help="write the report (per frame and summary) to this JSON file")
    p.add_argument("--frames", type=int, help="recording: fit its first N frames only")
    p.add_argument("--quiet", action="store_true", help="no per-frame lines on stdout")


def run(args: argparse.Namespace) -> int:
    """Run ``facediff fit``: 0 done, 2 bad input (one line on stderr)."""
    try:
        report = fit_input(args.input, args.depth, args.intrinsics, args.out, args.frames,
                           log=None if args.quiet else print)
        if args.json:
            try:
                Path(args.json).write_text(json.dumps(report, indent=1))
            except OSError as exc:
                raise InputError(f"--json {args.json}: cannot write it ({exc})") from None
    except InputError as exc:
        print(f"facediff fit: {exc}", file=sys.stderr)
        return 2
    s = report["summary"]
    for note in report["notes"]:
        print(f"note: {note}")
    line = (f"{s['frames_fitted']}/{s['frames']} frames fitted, identity locked at frame {s['lock_frame']}, "
            f"median depth residual {_fmt(s['depth_residual_mm_median'])} mm, "
            f"median quality {_fmt(s['quality_median'])}, "
            f"{_fmt(s['ms_median']['total'])} ms per frame (landmarks {_fmt(s['ms_median']['landmarks'])}, "
            f"fit {_fmt(s['ms_median']['fit'])})")
    print(line)
    if "after_lock" in s:
        a = s["after_lock"]
        print(f"vs ground truth after the lock ({a['frames']} frames): vertex {a['vertex_error_mm']:.2f} mm, "
              f"expression MAE {a['expression_mae']:.3f}, rotation {a['rotation_deg']:.2f} deg, "
              f"translation {a['translation_mm']:.2f} mm")
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="facediff fit", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
