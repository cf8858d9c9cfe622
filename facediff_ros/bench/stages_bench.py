"""Per-stage timing of the graph's work on the embedded recording: ``facediff bench stages``.

    python -m facediff_ros.bench.stages_bench [--out-dir build/bench] [--json OUT]

Stages, each in this process, one item at a time (so frames/s = 1000 / mean ms of that stage
alone on one core's share of the machine):

- ``capture``: the capture node's per-frame work (recording read + messages), and ``landmarks``:
  the landmark node's (decode, MediaPipe face mesh, lifting, message) -- both from
  :mod:`facediff_ros.bench.nodes_bench`;
- ``fitting``: ``FaceTracker.update`` per tracked frame (landmarks from the pipeline, depth on);
- ``editor/<backend>/steps<N>``: ``AvatarEditor.edit_frame`` with the shipped weights, for the
  onnxruntime-cpu and torch backends and 1, 2, 4 network evaluations; its sub-stages ``render``
  (the network inputs: source + target renders at the crop and the warp), ``network`` and the rest;
- ``cloud``: ``adapters.cloud.depth_cloud_msg`` (the editor node's organised cloud message) at the
  recording's size and at 640x480;
- ``dds_cloud_640x480``: one 9.8 MB cloud from another process over Fast DDS
  (:mod:`facediff_ros.bench.cloud_transport`).

Writes ``stages.json`` and ``stages.png`` (p50 bars, p95 whiskers) under ``--out-dir``. The load
average is recorded: other jobs on a shared machine slow every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from facediff_ros.bench.process_stats import latency_stats, machine

# As the editor node does (nodes/editor.py): torch's OpenMP threads must not busy-wait on a shared
# machine (40x slower there). Set before torch is imported (editor_stages imports it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _stage(ms: List[float], cpu_ms: Optional[List[float]] = None) -> Dict[str, object]:
    s = latency_stats(ms)
    a = np.asarray(ms, np.float64)
    s["fps_alone"] = float(1e3 / a.mean()) if a.size else None
    if cpu_ms:
        s["cpu_ms_median"] = float(np.median(cpu_ms))
    return s


def editor_stages(fitted, backends=("onnxruntime-cpu", "torch"), steps=(1, 2, 4), edits: int = 20,
                  log=print) -> Dict[str, Dict]:
    from facediff_ros.core.editor.avatar import AvatarConfig, AvatarEditor
    from facediff_ros.core.editor.export import BackendUnavailable
    from facediff_ros.nodes.editor import SHIPPED_WEIGHTS
    frames = [f for f in fitted if f.fit is not None]
    out: Dict[str, Dict] = {}
    for backend in backends:
        try:
            avatar = AvatarEditor.from_weights(SHIPPED_WEIGHTS, backend, config=AvatarConfig(4, "frame"))
        except (BackendUnavailable, ValueError) as exc:
            out[f"editor/{backend}"] = {"skipped": str(exc)}
            continue
        for n in steps:
            total, cpu, parts = [], [], {"render": [], "network": [], "rest": []}
            for i in range(edits + 2):
                f = frames[i % len(frames)]
                depth_m = f.frame.depth.astype(np.float32) / np.float32(1000.0)
                t0, c0 = time.perf_counter(), time.process_time()
                r = avatar.edit_frame(f.frame.color, depth_m, f.frame.intrinsics, f.fit, "happy", 1.0,
                                      steps=n)
                if i < 2:
                    continue  # first calls: allocations, thread pools
                total.append(1e3 * (time.perf_counter() - t0))
                cpu.append(1e3 * (time.process_time() - c0))
                tm = r.timings
                parts["render"].append(tm["inputs"])
                parts["network"].append(tm["network"])
                parts["rest"].append(tm["total"] - tm["inputs"] - tm["network"])
            key = f"editor/{backend}/steps{n}"
            out[key] = _stage(total, cpu)
            out[key]["parts_p50_ms"] = {k: float(np.median(v)) for k, v in parts.items()}
            out[key]["backend"] = avatar.backend.describe()
            log(f"{key}: p50 {out[key]['p50_ms']:.1f} ms ({out[key]['parts_p50_ms']})")
    return out


def cloud_stages(fitted, reps: int = 30) -> Dict[str, Dict]:
    from std_msgs.msg import Header

    from facediff_ros.adapters.cloud import depth_cloud_msg
    from facediff_ros.core.camera import Intrinsics
    out = {}
    f = fitted[0].frame
    rng = np.random.default_rng(0)
    cases = {f"cloud_{f.intrinsics.width}x{f.intrinsics.height}":
             (f.depth.astype(np.float32) / 1000.0, f.intrinsics, f.color),
             "cloud_640x480": (rng.uniform(0.4, 1.5, (480, 640)).astype(np.float32),
                               Intrinsics.from_fov(640, 480, 69.0),
                               rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))}
    for name, (depth, K, color) in cases.items():
        ms, cpu = [], []
        for i in range(reps + 2):
            t0, c0 = time.perf_counter(), time.process_time()
            depth_cloud_msg(depth, K, color, "depth_image_proc", Header())
            if i >= 2:
                ms.append(1e3 * (time.perf_counter() - t0))
                cpu.append(1e3 * (time.process_time() - c0))
        out[name] = _stage(ms, cpu)
    return out


def plot(res: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stages = [(k, v) for k, v in res["stages"].items() if isinstance(v, dict) and v.get("p50_ms") is not None]
    names = [k for k, _ in stages]
    p50 = np.array([v["p50_ms"] for _, v in stages])
    p95 = np.array([v["p95_ms"] for _, v in stages])
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.6))
    y = np.arange(len(names))
    ax.barh(y, p50, xerr=[np.zeros_like(p50), p95 - p50], color="#4c72b0", capsize=3)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")  # 1 ms cloud packing and 100 ms edits on one axis
    ax.set_xlabel("ms per item, log scale (bar: p50, whisker: p95)")
    load = res["machine_before"]["loadavg_1_5_15"][0]
    ax.set_title(f"facediff_ros stages, {res['machine_before']['cpus']} cores, load avg {load:.1f} "
                 f"(shared machine)", fontsize=10)
    for yi, v in zip(y, p50):
        ax.text(v, yi, f" {v:.1f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(recording: Optional[str], frames: int, edits: int, transport: bool, log=print) -> Dict:
    from facediff_ros.bench import nodes_bench
    from facediff_ros.bench.recorded_fits import fit_frames, read_frames, recording_path
    res: Dict[str, object] = {"bench": "stages", "machine_before": machine(),
                              "recording": recording_path(recording)}
    stages: Dict[str, Dict] = {}
    nb = nodes_bench.run(recording, frames)
    for k in ("capture_total", "landmarks_total"):
        s = nb["stages"][k]
        stages[k.replace("_total", "")] = {"n": s["n"], "p50_ms": s["median_ms"], "p95_ms": s["p95_ms"],
                                           "p99_ms": s["p99_ms"], "fps_alone": None}
    res["capture_landmarks_detail"] = nb["stages"]
    log(f"capture p50 {stages['capture']['p50_ms']:.2f} ms, "
        f"landmarks p50 {stages['landmarks']['p50_ms']:.2f} ms")
    fitted = fit_frames(read_frames(recording, max_frames=frames), passes=3)
    res["image_size_hw"] = list(fitted[0].frame.intrinsics.shape)
    stages["fitting"] = _stage([f.fit_ms for f in fitted if f.fit is not None])
    log(f"fitting p50 {stages['fitting']['p50_ms']:.2f} ms")
    stages.update(editor_stages(fitted, edits=edits, log=log))
    stages.update(cloud_stages(fitted))
    if transport:
        from facediff_ros.bench import cloud_transport
        t = cloud_transport.run(count=30, rate=10.0)
        stages["dds_cloud_640x480"] = dict(t["latency_ms"], received=t["received"], sent=t["sent"],
                                           bytes=t["bytes"])
    res["stages"] = stages
    res["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res["machine_after"] = machine()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recording", help="RealSense .db3/.bag (default: the embedded sample)")
    ap.add_argument("--frames", type=int, default=30, help="recording frames to time (default 30)")
    ap.add_argument("--edits", type=int, default=20, help="edits per backend and step count (default 20)")
    ap.add_argument("--no-transport", action="store_true", help="skip the two-process DDS cloud transport")
    ap.add_argument("--out-dir", default="build/bench", help="results folder (default build/bench)")
    ap.add_argument("--json", help="JSON path (default OUT_DIR/stages.json)")
    args = ap.parse_args(argv)
    res = run(args.recording, args.frames, args.edits, not args.no_transport)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = Path(args.json) if args.json else out / "stages.json"
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(res, indent=2))
    plot(res, out / "stages.png")
    print(f"{'stage':<34}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'CPU ms':>9}")
    for k, s in res["stages"].items():
        if s.get("p50_ms") is not None:
            cpu = s.get("cpu_ms_median")
            print(f"{k:<34}{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}{s['p99_ms']:>9.2f}"
                  f"{'' if cpu is None else format(cpu, '9.2f')}")
        else:
            print(f"{k:<34} {s}")
    print(f"wrote {js} and {out / 'stages.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
