"""The demo's result folder: montage, avatar clouds as PLY, the summary JSON and the latency plot.

Everything here works on what :class:`facediff_ros.demo.Listener` received; no ROS calls. Units:
metres in the camera optical frame (REP-103: x right, y down, z forward), milliseconds for times.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from facediff_ros.core.cloud import unpack_rgb

NODES = ("capture", "landmarks", "fitting", "editor")
CELL_PX = 144           # montage cell side
COLUMNS = ("input", "landmarks", "fitted model", "edited colour", "edited depth")
DEPTH_NEAR_M, DEPTH_FAR_M = 0.08, 0.17  # edited depth colours: face median depth - near .. + far


# ---- small pieces --------------------------------------------------------------------------------
def _stats_ms(values_s: Sequence[float]) -> Dict[str, Optional[float]]:
    v = np.asarray(list(values_s), np.float64) * 1e3
    if not v.size:
        return {"n": 0, "median_ms": None, "p90_ms": None, "max_ms": None}
    return {"n": int(v.size), "median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)),
            "max_ms": float(v.max())}


def _rate_hz(times: Sequence[float]) -> Optional[float]:
    """1 / the median interval between arrivals (the streaming rate, blind to start-up gaps)."""
    dt = np.diff(np.sort(np.asarray(list(times), np.float64)))
    dt = dt[dt > 0]
    return float(1.0 / np.median(dt)) if dt.size else None


def _count_rate_hz(times: Sequence[float], t0: float, t1: float) -> Optional[float]:
    """Messages per second that arrived in [t0, t1] (the whole window, stalls included)."""
    n = sum(t0 <= t <= t1 for t in times)
    return float(n / (t1 - t0)) if t1 > t0 else None


def stage_ms(status: Optional[dict]) -> Dict[str, float]:
    """Stage -> ms from a /diagnostics status's ``<stage>_ms`` values (moving averages of the node)."""
    if status is None:
        return {}
    out = {}
    for k, v in status["values"].items():
        if k.endswith("_ms"):
            try:
                out[k[:-3]] = float(v)
            except ValueError:
                pass
    return out


def drops(status: Optional[dict]) -> Dict[str, int]:
    """Non-zero dropped-frame counters (``drop_*``, ``sync_*``) of a status."""
    if status is None:
        return {}
    return {k: int(v) for k, v in status["values"].items()
            if k.startswith(("drop_", "sync_")) and v.isdigit() and int(v)}


def write_ply(path: Path, cloud: np.ndarray) -> int:
    """The finite points of an XYZRGB structured array (fields x y z rgb) as a binary
    little-endian PLY: float32 x y z (m, camera optical frame), uchar red green blue. Returns the
    number of points written."""
    cloud = np.asarray(cloud).reshape(-1)
    ok = np.isfinite(cloud["x"]) & np.isfinite(cloud["y"]) & np.isfinite(cloud["z"])
    pts = cloud[ok]
    # The same file as `facediff edit`'s avatar.ply (one writer for both).
    from facediff_ros.edit_command import write_points_ply
    xyz = np.stack([pts["x"], pts["y"], pts["z"]], axis=1)
    write_points_ply(path, xyz, unpack_rgb(pts["rgb"]), comment="facediff demo: /avatar/points")
    return int(len(pts))


def read_ply(path: Path) -> np.ndarray:
    """A PLY written by :func:`write_ply` back as its structured array (tests, readers)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    n = int(next(line.split()[2] for line in data[:end].decode("ascii").splitlines()
                 if line.startswith("element vertex")))
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    return np.frombuffer(data, dt, count=n, offset=end)


def face_box(uv: Optional[np.ndarray], width: int, height: int) -> Tuple[int, int, int]:
    """Square (x0, y0, side) px around the landmarks with a 60 % margin, inside the image (the
    central square when there are none)."""
    good = None if uv is None else np.asarray(uv)[np.isfinite(uv).all(1)]
    if good is None or not len(good):
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side
    lo, hi = good.min(0), good.max(0)
    centre = (lo + hi) / 2
    side = int(min(max(1.6 * (hi - lo).max(), 32), min(width, height)))
    x0 = int(np.clip(round(centre[0] - side / 2), 0, width - side))
    y0 = int(np.clip(round(centre[1] - side / 2), 0, height - side))
    return x0, y0, side


def depth_range(depth_m: np.ndarray, uv: Optional[np.ndarray]) -> Tuple[float, float]:
    """(near, far) m for the depth colours: around the median depth at the landmark pixels (the
    face), else of the whole image."""
    H, W = depth_m.shape
    face = depth_m
    if uv is not None:
        px = np.rint(np.asarray(uv)[np.isfinite(uv).all(1)]).astype(int)
        px = px[(px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)]
        if len(px):
            face = depth_m[px[:, 1], px[:, 0]]
    face = face[face > 0]
    mid = float(np.median(face)) if face.size else 1.0
    return mid - DEPTH_NEAR_M, mid + DEPTH_FAR_M


def _label(img: np.ndarray, text: str, org: Tuple[int, int], scale: float = 0.45) -> None:
    import cv2
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)


class ModelRenderer:
    """Renders a FaceModel message's 'face' region, shaded, over an image (the fitted-model column)."""

    def __init__(self, model=None):
        from facediff_ros.core.face.morphable_model import MorphableModel
        self.model = model if model is not None else MorphableModel.load()
        self.triangles = self.model.triangles(("face",))[0]
        self.vertex_ids = self.model.vertex_ids(("face",))
        self._renderers: Dict[tuple, object] = {}

    def overlay(self, rgb: np.ndarray, model_msg, intrinsics) -> np.ndarray:
        from facediff_ros.adapters import face_model as face_model_adapter
        from facediff_ros.core.render.renderer import Renderer
        fit = face_model_adapter.from_msg(model_msg)
        names = list(model_msg.expression_names)
        own = list(self.model.expression_names) if hasattr(self.model, "expression_names") else names
        if names != own and sorted(names) == sorted(own):
            fit.expression = fit.expression[[names.index(n) for n in own]]
        key = (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy, intrinsics.width,
               intrinsics.height)
        if key not in self._renderers:
            self._renderers[key] = Renderer(intrinsics)
        v = fit.vertices(self.model)  # (V, 3) camera frame, all vertices: the triangles index them
        buf = self._renderers[key].render(v, self.triangles)
        base = rgb.astype(np.float32)
        shade = 0.25 + 0.75 * np.clip(-buf.normals[..., 2], 0, 1)  # facing the camera: bright
        clay = np.stack([shade * 180, shade * 215, shade * 255], -1)  # light blue
        return np.where(buf.mask[..., None], 0.3 * base + 0.7 * clay, base).astype(np.uint8)


# ---- the montage -------------------------------------------------------------------------------
def montage(rows: List[Tuple[str, object]], intrinsics, renderer: Optional[ModelRenderer]) -> np.ndarray:
    """(rows, columns) of CELL_PX cells as one RGB uint8 image: one row per (category, CategoryFrame)."""
    import cv2

    from facediff_ros.adapters.images import from_image_msg
    from facediff_ros.core import images
    from facediff_ros.synthetic.montage import depth_to_color

    label_px, left_px = 24, 84
    img = np.full((label_px + CELL_PX * len(rows), left_px + CELL_PX * len(COLUMNS), 3), 32, np.uint8)
    for j, name in enumerate(COLUMNS):
        _label(img, name, (left_px + j * CELL_PX + 6, 17))
    for i, (cat, fr) in enumerate(rows):
        rgb = fr.input_rgb
        H, W = rgb.shape[:2]
        x0, y0, side = face_box(fr.landmarks_uv, W, H)
        zoom = CELL_PX / side

        def crop(a, interp=cv2.INTER_AREA):
            return cv2.resize(np.ascontiguousarray(a[y0:y0 + side, x0:x0 + side]), (CELL_PX, CELL_PX),
                              interpolation=interp)

        lm = crop(rgb).copy()
        if fr.landmarks_uv is not None:
            for u, v in fr.landmarks_uv[np.isfinite(fr.landmarks_uv).all(1)][:468]:
                p = (int(round((u - x0 + 0.5) * zoom - 0.5)), int(round((v - y0 + 0.5) * zoom - 0.5)))
                cv2.circle(lm, p, 1, (255, 210, 0), -1, cv2.LINE_AA)
        else:
            _label(lm, "none", (6, CELL_PX // 2))
        if fr.model_msg is not None and renderer is not None:
            fitted = crop(renderer.overlay(rgb, fr.model_msg, intrinsics))
        else:
            fitted = crop(rgb // 2)
            _label(fitted, "no model", (6, CELL_PX // 2))
        color = images.to_rgb8(from_image_msg(fr.color_msg), fr.color_msg.encoding)
        depth = images.depth_to_meters(from_image_msg(fr.depth_msg), fr.depth_msg.encoding)
        depth = np.nan_to_num(depth, nan=0.0)
        depth_rgb = depth_to_color(depth, depth_range(depth, fr.landmarks_uv))
        cells = [crop(rgb), lm, fitted, crop(color), crop(depth_rgb, cv2.INTER_NEAREST)]
        top = label_px + i * CELL_PX
        for j, c in enumerate(cells):
            img[top:top + CELL_PX, left_px + j * CELL_PX:left_px + (j + 1) * CELL_PX] = c
        _label(img, cat, (6, top + CELL_PX // 2 + 5))
    return img


# ---- latency and throughput --------------------------------------------------------------------
def latency_summary(seen, window: Tuple[float, float]) -> Dict[str, object]:
    """Per-stage ms (each node's latest /diagnostics), end-to-end camera -> /avatar/points at this
    process, rates and drops. ``window``: (start, end) monotonic s of the category cycling."""
    from facediff_ros import demo
    t0, t1 = window
    topics_of = {"camera": demo.COLOR_TOPIC, **{v[0]: v[0] for k, v in demo.STAGE_OUTPUT.items()
                                                if k != "capture"}}
    with seen.lock:
        arrivals = {name: list(seen.arrivals.get(topic, ())) for name, topic in topics_of.items()}
        e2e = [(t, lat) for t, lat, edited in seen.latency if edited]  # passed-through frames left out
    statuses = {n: seen.status(n) for n in NODES}
    editor = statuses["editor"]
    counters = {}
    if editor is not None:
        counters = {k: int(v) for k, v in editor["values"].items()
                    if k in ("frames_in", "frames_out", "passthrough_no_face_model") and v.isdigit()}
    return {
        "stage_ms": {n: stage_ms(s) for n, s in statuses.items()},
        "end_to_end": dict(_stats_ms([lat for t, lat in e2e if t0 <= t <= t1]),
                           what="camera stamp (ROS clock at the capture node's read) -> /avatar/points "
                                "arrival at the demo process, edited frames during the category cycling"),
        "end_to_end_series": [[round(t - t0, 4), round(lat * 1e3, 2)] for t, lat in e2e],
        "rate_hz": {name: _rate_hz([t for t in a if t0 <= t <= t1]) for name, a in arrivals.items()},
        "throughput_hz": {name: _count_rate_hz(a, t0, t1) for name, a in arrivals.items()},
        "messages": {name: len(a) for name, a in arrivals.items()},
        "drops": {n: drops(s) for n, s in statuses.items()},
        "editor_counters": counters,
        "diagnostics_final": {n: (f"{s['level']}: {s['message']}" if s else None)
                              for n, s in statuses.items()},
    }


def plot_latency(path: Path, lat: Dict[str, object], switches: List[Tuple[str, float]]) -> None:
    """Two panels: per-node stage times (stacked bars, ms) and end-to-end latency over the run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
    cmap = plt.get_cmap("tab20")
    k = 0
    for i, n in enumerate(NODES):
        left = 0.0
        for st, ms in lat["stage_ms"].get(n, {}).items():
            if st.endswith("total") or ms <= 0:  # totals are sums of the others
                continue
            ax1.barh(i, ms, left=left, color=cmap(k % 20), edgecolor="white", linewidth=0.5)
            widest = max(max(lat["stage_ms"].get(m, {"": 1.0}).values()) for m in NODES)
            if ms > 0.06 * widest:
                ax1.text(left + ms / 2, i, st.replace("edit_", "").replace("fit_", ""), ha="center",
                         va="center", fontsize=6, rotation=90)
            left += ms
            k += 1
        ax1.text(left, i, f"  {left:.0f} ms", va="center", fontsize=8)
    ax1.set_yticks(range(len(NODES)), NODES)
    ax1.invert_yaxis()
    ax1.set_xlabel("ms per frame (node's moving average, /diagnostics)")
    ax1.set_title("per-stage time")
    series = np.asarray(lat["end_to_end_series"], np.float64).reshape(-1, 2)
    if len(series):
        ax2.plot(series[:, 0], series[:, 1], ".-", ms=3, lw=0.6)
    for cat, t in switches:
        ax2.axvline(t, color="grey", lw=0.5, ls="--")
        ax2.text(t, ax2.get_ylim()[1], f" {cat}", rotation=90, va="top", fontsize=7, color="grey")
    e = lat["end_to_end"]
    med = "n/a" if e["median_ms"] is None else f"{e['median_ms']:.0f} ms"
    ax2.set_title(f"camera -> /avatar/points (median {med})")
    ax2.set_xlabel("s since the first category change")
    ax2.set_ylabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- landmark accuracy ---------------------------------------------------------------------------
def landmark_accuracy(seen, gt, table=None) -> Optional[dict]:
    """Landmark error against the ground truth over each sample frame's first landmarks
    (facediff_ros.synthetic.landmark_eval: 68-point subset, and the correspondence table when
    ``table`` = landmark_eval.load_table() is given)."""
    from facediff_ros.adapters import landmarks as landmarks_adapter
    from facediff_ros.synthetic import landmark_eval
    lookup = landmark_eval.FrameLookup(gt)
    intr = landmark_eval.ground_truth_intrinsics(gt)
    per_frame = []
    with seen.lock:
        items = list(seen.landmarks.items())  # sample frame index -> its first landmarks
    for i, msg in items:
        lm = landmarks_adapter.from_msg(msg)
        per_frame.append(landmark_eval.frame_errors(lm.uv.astype(np.float64), lm.points, lm.valid, gt, i,
                                                    *(table or ()), intrinsics=intr))
    if not per_frame:
        return None
    per_frame.sort(key=lambda e: e.index)
    return dict(landmark_eval.summarize(per_frame).as_dict(), frames_in_sample=len(lookup))


# ---- the folder -------------------------------------------------------------------------------------
def write_results(out: Path, seen, gt, window: Tuple[float, float]) -> Dict[str, object]:
    """Write montage.png, avatar_<category>.ply and latency.png into ``out``; the summary parts.
    ``window``: (start, end) monotonic s of the category cycling (rates and latency over it)."""
    import cv2

    from facediff_ros.adapters.cloud import from_pointcloud2
    from facediff_ros.adapters.images import from_camera_info_msg
    from facediff_ros.synthetic.landmark_eval import ground_truth_intrinsics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    intr = from_camera_info_msg(seen.info) if seen.info is not None else ground_truth_intrinsics(gt)
    rows, per_category, files = [], {}, {}
    for ph in seen.phases:
        frames = sorted(seen.complete_frames(ph), key=lambda f: ph.stamps_seen.index(f.stamp_ns))
        last = frames[-1]
        if last.model_msg is None:  # not here yet when the edit arrived: the same frame's later fit
            last.model_msg = seen.models.get(last.stamp_ns)
        rows.append((ph.category, last))
        cloud = from_pointcloud2(last.points_msg)
        ply = out / f"avatar_{ph.category}.ply"
        n_points = write_ply(ply, cloud)
        files[ply.name] = n_points
        per_category[ph.category] = {
            "frames": len(frames), "passed_through_unedited": len(seen.complete_frames(ph, edited=False)),
            "sample_frames": [seen.frame_of.get(f.stamp_ns) for f in frames],
            "ply_points": n_points,
            "cloud": {"height": last.points_msg.height, "width": last.points_msg.width,
                      "point_step": last.points_msg.point_step, "frame_id": last.points_msg.header.frame_id},
            "face_model": last.model_msg is not None}
    from facediff_ros.synthetic import landmark_eval
    table = landmark_eval.load_table()  # (Correspondence, MorphableModel) or None: loaded once for both
    try:
        renderer = ModelRenderer(table[1] if table else None)
    except Exception:  # noqa: BLE001 - the model cache missing: the column says "no model"
        renderer = None
    img = montage(rows, intr, renderer)
    cv2.imwrite(str(out / "montage.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    t0 = window[0]
    lat = latency_summary(seen, window)
    plot_latency(out / "latency.png", lat, [(ph.category, ph.since - t0) for ph in seen.phases])
    with seen.lock:
        unknown = sum(i is None for i in seen.frame_of.values())
    return {"per_category": per_category, "latency": lat, "landmarks": landmark_accuracy(seen, gt, table),
            "camera_frames_not_in_sample": unknown,
            "files": ["montage.png", *files, "summary.json", "latency.png"]}


def write_summary_json(out: Path, summary: Dict[str, object]) -> None:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x
    (Path(out) / "summary.json").write_text(json.dumps(clean(summary), indent=1) + "\n")


def _f(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_summary(s: Dict[str, object]) -> str:
    """The printed summary of a successful run."""
    lat, lm = s["latency"], s["landmarks"]
    m, r = lat["messages"], lat["rate_hz"]
    lines = ["facediff demo: result"]
    lines.append("messages here        " + ", ".join(f"{k} {m[k]} ({_f(r[k], '.1f')} Hz)" for k in m))
    if lm:
        lines.append(f"landmarks vs truth   {lm['frames']}/{lm['frames_in_sample']} sample frames: mean 2D "
                     f"{_f(lm['mean_2d_px'], '.2f')} px, 3D {_f(lm['mean_3d_mm'], '.2f')} mm "
                     "(68-point subset)"
                     + (f"; table {_f(lm['table_mean_2d_px'], '.2f')} px, "
                        f"{_f(lm['table_mean_3d_mm'], '.2f')} mm"
                        if lm.get("table_mean_2d_px") is not None else ""))
    if s["camera_frames_not_in_sample"]:
        lines.append(f"  warning: {s['camera_frames_not_in_sample']} camera images are no frame of the "
                     f"sample (another camera on this ROS_DOMAIN_ID?)")
    e = lat["end_to_end"]
    lines.append(f"end to end           camera -> /avatar/points median {_f(e['median_ms'], '.0f')} ms, "
                 f"p90 {_f(e['p90_ms'], '.0f')} ms over {e['n']} clouds; avatar "
                 f"{_f(lat['throughput_hz'].get('/avatar/points'), '.1f')} clouds/s from "
                 f"{_f(lat['throughput_hz'].get('camera'), '.1f')} camera frames/s")
    for n in NODES:
        st = lat["stage_ms"].get(n, {})
        text = ", ".join(f"{k} {v:.1f}" for k, v in st.items()
                         if not k.startswith("edit_") or k == "edit_total") or "none received"
        lines.append(f"{n + ' (ms)':<21}{text}")
    d = {n: v for n, v in lat["drops"].items() if v}
    lines.append("drops                " + ("; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in dd.items())
                                                      for n, dd in d.items()) or "none"))
    cats = s["per_category"]
    lines.append("categories           " + ", ".join(f"{c} {v['frames']}" for c, v in cats.items())
                 + " edited frames (passed through unedited: "
                 + str(sum(v["passed_through_unedited"] for v in s["per_category"].values())) + ")")
    t = s["timings_s"]
    lines.append(f"time                 graph {t['graph_s']:.1f} s (avatar points "
                 f"{_f(t.get('editor_first_output_s'), '.1f')}"
                 f" s after the start; categories {_f(t.get('categories_s'), '.1f')} s), writing "
                 f"{t['write_s']:.1f} s, total {t['total_s']:.1f} s")
    lines.append("nodes                " + ", ".join(f"{n} {how}" for n, how in s["processes"].items()))
    lines.append(f"result folder        {s['out']}")
    for f in s["files"]:
        lines.append(f"  {f}")
    lines.append("result               OK")
    return "\n".join(lines)
