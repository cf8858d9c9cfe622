"""The editor on real photos: colour-only edits to the seven categories, judged by dlib.

The photos are the few public-domain faces shipped in ``facediff_ros/data/photos`` (provenance in
its README). Each is fitted once from its 2D landmarks (``facediff fit``'s single-image fit,
60 deg horizontal field of view assumed, no depth: colour-only mode, the fitted model's depth
stands in for the sensor's) and edited to every category at ``intensity`` with
:meth:`~facediff_ros.core.editor.avatar.AvatarEditor.edit_frame`. Per category: dlib's embedding
distance source <-> edit (< 0.6: the same person for dlib; a real person's smile moves it by
~0.2) and the expression the re-fit reads (colour-only, so weaker than with depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from facediff_ros.core.face.expressions import CATEGORIES

PHOTOS_DIR = Path(__file__).resolve().parents[1] / "data" / "photos"


def shipped_photos() -> List[Path]:
    """The real photos shipped with the package (JPEG/PNG in data/photos), sorted."""
    return sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def evaluate_photos(weights: str, photos: Optional[Sequence[Path]] = None, intensity: float = 1.0,
                    steps: int = 4, keep_images: bool = False, detail_paste: Optional[bool] = None) -> Dict:
    """Edit every photo to every category; returns {'photos': {name: {'fit', 'categories':
    {category: {'dlib_source', 'read_as'}}}}, 'dlib_source_mean'} (plus '_images' with
    ``keep_images``: per photo the source and the edits, uint8 RGB). ``detail_paste``: the
    colour paste (:class:`AvatarConfig`; None: its default)."""
    from facediff_ros.core.camera import Intrinsics
    from facediff_ros.core.editor.avatar import AvatarConfig, AvatarEditor
    from facediff_ros.fitting_command import DEFAULT_HFOV_DEG, Fitter, Frame, read_color
    from facediff_ros.judges.expression import ExpressionJudge
    from facediff_ros.judges.identity import IdentityJudge

    photos = list(photos) if photos is not None else shipped_photos()
    paste = AvatarConfig().detail_paste if detail_paste is None else bool(detail_paste)
    avatar = AvatarEditor.from_weights(weights, "torch", config=AvatarConfig(steps=steps, detail_paste=paste))
    idj = IdentityJudge()
    exj = ExpressionJudge()
    fitter = Fitter(single_image=True)
    out: Dict = {"intensity": intensity, "steps": steps, "detail_paste": paste, "photos": {}}
    images = {}
    dists = []
    try:
        for path in photos:
            rgb = read_color(Path(path))
            K = Intrinsics.from_fov(rgb.shape[1], rgb.shape[0], DEFAULT_HFOV_DEG)
            fitter.tracker.reset()
            lm = fitter.landmarks(Frame(0, 0.0, rgb, None, K))
            if lm is None:
                out["photos"][Path(path).name] = {"error": "no face found"}
                continue
            fit = fitter.tracker.update(K, lm[0], None, None, None, 0.001)
            if not fit.ok:
                out["photos"][Path(path).name] = {"error": f"fit failed: {fit.reason}"}
                continue
            src_emb = idj.embed(rgb)
            src_read = exj.read(rgb, K, None)
            row = {"fit_quality": float(fit.quality),
                   "source_read_as": src_read.category if src_read.ok else None,
                   "dlib_detected": src_emb is not None, "categories": {}}
            edits = []
            for cat in CATEGORIES:
                res = avatar.edit_frame(rgb, None, K, fit, cat, 0.0 if cat == "neutral" else intensity)
                emb = idj.embed(res.color)
                d = None if emb is None or src_emb is None else idj.distance(src_emb, emb)
                r = exj.read(res.color, K, None)
                row["categories"][cat] = {"dlib_source": d, "read_as": r.category if r.ok else None,
                                          "network_ms": res.timings.get("network")}
                if d is not None:
                    dists.append(d)
                edits.append(res.color)
            out["photos"][Path(path).name] = row
            images[Path(path).name] = (rgb, edits)
    finally:
        fitter.close()
        exj.close()
    out["dlib_source_mean"] = float(np.mean(dists)) if dists else None
    out["dlib_source_max"] = float(np.max(dists)) if dists else None
    if keep_images:
        out["_images"] = images
    return out


def figure(result: Dict, path: Path, tile: int = 192) -> None:
    """PNG: per photo one row, the source then the seven edits, each labelled with the category
    and dlib's distance to the source."""
    import cv2

    rows = []
    for name, (src, edits) in result["_images"].items():
        cats = result["photos"][name]["categories"]
        tiles = []
        for label, img, d in [("source", src, None)] + [(c, e, cats[c]["dlib_source"])
                                                        for c, e in zip(CATEGORIES, edits)]:
            t = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA).copy()
            text = [label]
            if label != "source":
                text.append(f"dlib {d:.2f}" if d is not None else "dlib: no face")
            for k, line in enumerate(text):
                y = 18 + 18 * k
                cv2.putText(t, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 3, cv2.LINE_AA)
                cv2.putText(t, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
            tiles.append(t)
        rows.append(np.concatenate(tiles, 1))
    img = np.concatenate(rows, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])
