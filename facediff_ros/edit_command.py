"""``facediff edit``: re-express the face in one image with the expression editor, files in and out.

    facediff edit IMAGE [--depth DEPTH.png --intrinsics K.json] --expression NAME [--intensity X]
                  [--steps N] [--weights DIR] [--backend NAME] --out DIR [--json OUT]

Inputs follow ``facediff fit`` (:mod:`facediff_ros.fitting_command`): IMAGE is a PNG/JPEG,
``--depth`` a uint16 PNG of millimetres aligned to it (0 = no data) and ``--intrinsics`` a JSON
``{"width", "height", "fx", "fy", "cx", "cy"}`` in pixels; without ``--intrinsics`` a 60 deg
horizontal field of view centred on the image is assumed (stated in ``edit.json``). Without depth
the edit runs colour-only: the fitted model's rendered depth stands in for the sensor's (the
head's size and distance then come from the identity prior).

The work is the editor node's: the single-image fit of ``facediff fit`` (MediaPipe face mesh,
landmarks lifted onto the depth, one :class:`~facediff_ros.core.fitting.tracker.FaceTracker` fit),
then :meth:`~facediff_ros.core.editor.avatar.AvatarEditor.edit_frame` with the target category
at the intensity (few-step DDIM over the weights, fixed noise).

``--out DIR`` receives:

- ``color.png``: the edited image (8-bit RGB, the input's size; pixels outside the edit unchanged);
- ``depth.png``: the edited depth, uint16 millimetres aligned to ``color.png`` (0 = no data; with an
  input depth, its values outside the edit are kept; colour-only, depth on the edited face only);
- ``avatar.ply``: the edited RGB-D face as coloured points (binary PLY, float32 x y z in metres in
  the camera's REP-103 optical frame: x right, y down, z forward; uchar red green blue): every
  pixel the edit changed that has depth, back-projected through the intrinsics;
- ``edit.json``: the input, camera, notes, the fit (identity, expression weights, R, t, quality),
  the target, steps, backend, the number of points, and timings in milliseconds.

Bad input (a missing or unreadable file, no face found, an unknown expression, an intensity
outside [0, 1], steps outside 1..8, weights that do not load or were trained for another crop)
prints one line on stderr and exits with status 2; nothing is written then (outputs are
written to temporary names and renamed only once all of them exist).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.avatar import AvatarConfig
from facediff_ros.fitting_command import IMAGE_SUFFIXES, Fitter, Frame, InputError, read_image_input

OUTPUT_FILES = ("color.png", "depth.png", "avatar.ply", "edit.json")
BACKEND_CHOICES = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch")  # backends.BACKENDS


def shipped_weights() -> Path:
    """The weights folder installed with the package (``facediff_ros/data/editor``)."""
    return Path(__file__).resolve().parent / "data" / "editor"


# ---- outputs -------------------------------------------------------------------------------------
def depth_png(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) float metres (NaN / <= 0 = none) -> uint16 millimetres (0 = none), rounded, clipped
    at 65.535 m."""
    d = np.asarray(depth_m, np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(d) & (d > 0)
    mm = np.zeros(d.shape, np.uint16)
    mm[ok] = np.clip(np.round(d[ok] * 1e3), 1, 65535).astype(np.uint16)
    return mm


def avatar_points(color: np.ndarray, depth_m: np.ndarray, mask: np.ndarray, K: Intrinsics):
    """Coloured points of the edited face: ((N, 3) float32 x y z m in the optical frame, (N, 3)
    uint8 RGB), one per pixel in ``mask`` with finite positive depth, row-major order."""
    d = np.asarray(depth_m, np.float64)
    with np.errstate(invalid="ignore"):
        keep = np.asarray(mask, bool) & np.isfinite(d) & (d > 0)
    v, u = np.nonzero(keep)  # pixel rows and columns (pixel centres at integers)
    z = d[v, u]
    xyz = np.stack([(u - K.cx) * z / K.fx, (v - K.cy) * z / K.fy, z], axis=1).astype(np.float32)  # (N, 3)
    return xyz, np.ascontiguousarray(color[v, u], np.uint8)


def write_points_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray,
                     comment: str = "facediff edit: the edited RGB-D face") -> None:
    """Binary little-endian PLY of coloured points: float32 x y z (m), uchar red green blue."""
    rows = np.empty(len(xyz), dtype=[("xyz", "<f4", (3,)), ("rgb", "u1", (3,))])
    rows["xyz"] = xyz
    rows["rgb"] = rgb
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"comment {comment}, camera optical frame (x right, y down, z forward), metres\n"
              f"element vertex {len(rows)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(rows.tobytes())


def read_points_ply(path) -> Dict[str, np.ndarray]:
    """The points of :func:`write_points_ply` back: {'xyz': (N, 3) float32, 'rgb': (N, 3) uint8}."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    n = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    rows = np.frombuffer(data[end:], dtype=[("xyz", "<f4", (3,)), ("rgb", "u1", (3,))], count=n)
    if len(data) - end != n * rows.dtype.itemsize:
        raise ValueError(f"{path}: {len(data) - end} bytes after the header, expected {n} points")
    return {"xyz": rows["xyz"].copy(), "rgb": rows["rgb"].copy()}


# ---- the edit ------------------------------------------------------------------------------------
def check_request(expression: str, intensity, steps) -> tuple:
    """(category name, intensity, steps) or InputError naming the valid values."""
    from facediff_ros.core.editor.avatar import MAX_LIVE_STEPS
    from facediff_ros.core.face.expressions import CATEGORIES, category_index
    try:
        cat = CATEGORIES[category_index(str(expression).strip())]
    except ValueError:
        raise InputError(f"--expression {expression!r}: unknown; expected one of {', '.join(CATEGORIES)}") \
            from None
    x = float(intensity)
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise InputError(f"--intensity must be in [0, 1] (0 = neutral face, 1 = the full expression), "
                         f"got {intensity}")
    if int(steps) != steps or not 1 <= steps <= MAX_LIVE_STEPS:
        raise InputError(f"--steps must be an integer in [1, {MAX_LIVE_STEPS}], got {steps}")
    return cat, x, int(steps)


def load_editor(weights: Optional[str], backend: str, steps: int):
    """The :class:`AvatarEditor` over ``weights`` (default: the shipped ones), or InputError."""
    from facediff_ros.core.editor.avatar import AvatarEditor
    from facediff_ros.core.editor.export import BackendUnavailable
    folder = Path(weights) if weights else shipped_weights()
    if not folder.is_dir():
        raise InputError(f"--weights {folder}: no such folder")
    try:
        return AvatarEditor.from_weights(folder, backend, config=AvatarConfig(steps=steps)), folder
    except BackendUnavailable as exc:
        raise InputError(f"--backend {backend}: {exc}") from None
    except Exception as exc:  # torch.load / load_state_dict raise many types for a foreign file
        raise InputError(f"--weights {folder}: cannot use these editor weights "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def edit_image(image, expression: str, intensity: float = 1.0, depth: Optional[str] = None,
               intrinsics: Optional[str] = None, steps: Optional[int] = None, weights: Optional[str] = None,
               backend: str = "torch") -> Dict:
    """Fit and edit one image in memory (see the module docstring); nothing is written.

    Returns {'color': (H, W, 3) uint8, 'depth_mm': (H, W) uint16, 'xyz': (N, 3) float32 m,
    'rgb': (N, 3) uint8, 'report': the ``edit.json`` dict}.

    :raises InputError: unusable input (see the module docstring).
    """
    t_start = time.perf_counter()
    path = Path(image)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"IMAGE {path}: expected an image ({', '.join(IMAGE_SUFFIXES)})")
    if steps is None:
        steps = AvatarConfig.steps  # the live editor's default
    category, intensity, steps = check_request(expression, intensity, steps)
    rgb, K, d_mm, notes = read_image_input(path, depth, intrinsics)
    if d_mm is None:
        notes.append("no depth: colour-only edit; the fitted model's depth stands in for the sensor's "
                     "(the head's size and distance come from the identity prior)")
    avatar, folder = load_editor(weights, backend, steps)
    t_loaded = time.perf_counter()

    fitter = Fitter(single_image=True)
    try:
        frame = Frame(0, 0.0, rgb, d_mm, K)
        t0 = time.perf_counter()
        lm = fitter.landmarks(frame)
        t1 = time.perf_counter()
        if lm is None:
            raise InputError(f"IMAGE {path}: no face found")
        uv, points, valid = lm
        fit = fitter.tracker.update(K, uv, points, valid, d_mm, 0.001)
        t2 = time.perf_counter()
    finally:
        fitter.close()
    if not fit.ok:
        raise InputError(f"IMAGE {path}: the face model could not be fitted ({fit.reason})")
    depth_m = None if d_mm is None else d_mm.astype(np.float32) * np.float32(0.001)
    try:
        out = avatar.edit_frame(rgb, depth_m, K, fit, category, intensity, steps=steps)
    except ValueError as exc:  # e.g. a face whose centre is outside the image
        raise InputError(f"IMAGE {path}: cannot edit this face ({exc})") from None
    t3 = time.perf_counter()
    mm = depth_png(out.depth_m)
    xyz, prgb = avatar_points(out.color, out.depth_m, out.mask, K)
    report = {
        "input": str(path), "depth": str(depth) if depth else None,
        "intrinsics_file": str(intrinsics) if intrinsics else None,
        "width": K.width, "height": K.height,
        "intrinsics": {"fx": K.fx, "fy": K.fy, "cx": K.cx, "cy": K.cy},
        "colour_only": d_mm is None, "notes": notes,
        "target": {"category": category, "intensity": intensity},
        "steps": steps, "weights": str(folder),
        "backend": f"{avatar.backend.describe()}: {avatar.backend.why}",
        "fit": {"status": fit.status, "quality": float(fit.quality), "residual_rms_mm": 1e3 * fit.residual_rms
                if math.isfinite(fit.residual_rms) else None,
                "terms_used": list(fit.terms_used), "scale_from_prior": bool(fit.scale_from_prior),
                "identity": [float(x) for x in fit.identity],
                "expression": {n: float(w) for n, w in zip(avatar.names, fit.expression)},
                "R": np.asarray(fit.R).tolist(), "t_m": np.asarray(fit.t).tolist()},
        "crop": {"size_px": int(out.crop.size), "scale": float(out.crop.scale),
                 "z_centre_m": float(out.crop.z_centre)},
        "edited_pixels": int(out.mask.sum()), "points": int(len(xyz)),
        "ms": {"load_weights": 1e3 * (t_loaded - t_start), "landmarks": 1e3 * (t1 - t0),
               "fit": 1e3 * (t2 - t1), "edit": 1e3 * (t3 - t2),
               "edit_stages": {k: float(v) for k, v in out.timings.items()},
               "total": 1e3 * (time.perf_counter() - t_start)},
    }
    return {"color": out.color, "depth_mm": mm, "xyz": xyz, "rgb": prgb, "report": report}


def write_outputs(result: Dict, out_dir, json_out: Optional[str] = None) -> None:
    """Write the four files (and the report to ``json_out``) all or nothing: temporary names first,
    renamed once every file is complete.

    :raises InputError: a folder or file that cannot be written (nothing left behind).
    """
    import cv2
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create it ({exc})") from None
    text = json.dumps(result["report"], indent=1) + "\n"
    targets = [out / name for name in OUTPUT_FILES]
    if json_out and Path(json_out).resolve() != (out / "edit.json").resolve():
        targets.append(Path(json_out))
    tmps = [t.with_name(f".{t.name}.{os.getpid()}.tmp") for t in targets]
    try:
        for target, tmp in zip(targets, tmps):
            name = target.name
            if target.parent == out and name == "color.png":
                ok, buf = cv2.imencode(".png", result["color"][..., ::-1])
                if not ok:
                    raise OSError("PNG encoding failed")
                tmp.write_bytes(buf.tobytes())
            elif target.parent == out and name == "depth.png":
                ok, buf = cv2.imencode(".png", result["depth_mm"])
                if not ok:
                    raise OSError("PNG encoding failed")
                tmp.write_bytes(buf.tobytes())
            elif target.parent == out and name == "avatar.ply":
                write_points_ply(tmp, result["xyz"], result["rgb"])
            else:
                tmp.write_text(text)
        for target, tmp in zip(targets, tmps):
            tmp.replace(target)
    except OSError as exc:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write the outputs ({exc})") from None


# ---- command -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``facediff edit`` options (cli.py builds its subcommand from these)."""
    p.add_argument("image", help="an image (PNG/JPEG) with a face")
    p.add_argument("--depth", help="uint16 PNG, millimetres aligned to the image, 0 = no data")
    p.add_argument("--intrinsics", help='JSON {"width", "height", "fx", "fy", "cx", "cy"} (px)')
    p.add_argument("--expression", required=True,
                   help="target category: neutral, happy, sad, surprised, angry, disgusted, fearful")
    p.add_argument("--intensity", type=float, default=1.0, help="in [0, 1] (1 = the full expression)")
    p.add_argument("--steps", type=int, default=AvatarConfig.steps,
                   help=f"network evaluations (1..8; default {AvatarConfig.steps}, the live editor's)")
    p.add_argument("--weights", help="editor weights folder (default: the shipped facediff_ros/data/editor)")
    p.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                   help="inference backend (default torch; auto picks the fastest that runs here)")
    p.add_argument("--out", required=True, help="folder for color.png, depth.png, avatar.ply, edit.json")
    p.add_argument("--json", help="also write edit.json's report to this file")


def run(args: argparse.Namespace) -> int:
    """Run ``facediff edit``: 0 done, 2 bad input (one line on stderr, nothing written)."""
    try:
        result = edit_image(args.image, args.expression, args.intensity, args.depth, args.intrinsics,
                            args.steps, args.weights, args.backend)
        write_outputs(result, args.out, args.json)
    except InputError as exc:
        print(f"facediff edit: {exc}", file=sys.stderr)
        return 2
    r = result["report"]
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"{r['target']['category']} at {r['target']['intensity']:g}, {r['steps']} steps: "
          f"{r['edited_pixels']} pixels edited, {r['points']} points; fit {r['fit']['status']} "
          f"(quality {r['fit']['quality']:.2f}); {r['ms']['landmarks']:.0f} ms landmarks, "
          f"{r['ms']['fit']:.0f} ms fit, {r['ms']['edit']:.0f} ms edit; wrote {', '.join(OUTPUT_FILES)} "
          f"to {args.out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="facediff edit", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
