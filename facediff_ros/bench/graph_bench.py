"""The whole graph end to end: ``facediff bench graph [--duration 30] [--out-dir build/bench]``.

The four nodes (capture on the embedded recording at its recorded 30 Hz, looping; landmarks;
fitting; editor) start as separate processes with :mod:`facediff_ros.bringup` (the graph's own
node specs and config/*.yaml), in a ROS domain of their own; this process receives
/avatar/points like any consumer and reports, over ``--duration`` seconds after the first cloud
and a warm-up:

- throughput: clouds/s received, and edited frames/s (the editor's published frames less those it
  passed through unedited for want of a face model in time);
- latency: the cloud's arrival here minus its header stamp, which is the camera frame's (the
  capture node stamps with the system clock when it reads the frame): p50 / p95 / p99;
- per node: CPU % (100 = one core) and peak RSS, and the counters of its /diagnostics over the
  window (frames in/out, drops by reason);
- the machine's load average before and after (other jobs on a shared machine take cores from
  the graph: the figures are for the machine as it was).

Writes ``graph.json`` and ``graph.png`` (latency histogram, CPU per node) under ``--out-dir``.
Target on a 2-core machine: >= 10 frames/s with p95 <= 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from facediff_ros.bench.process_stats import CpuWindow, latency_stats, machine

NODES = ("capture", "landmarks", "fitting", "editor")


def run(duration_s: float, backend: str, steps: Optional[int], recording: Optional[str],
        domain: Optional[int], extra: Optional[Dict[str, Dict[str, object]]] = None, warmup_s: float = 3.0,
        start_timeout_s: float = 180.0) -> Dict:
    import rclpy

    from facediff_ros.bench.avatar_probe import AvatarProbe, diag_delta, stage_ms
    from facediff_ros.bench.editor_node_bench import bench_env, start_nodes, wait_first_cloud
    env = bench_env(domain)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "FASTDDS_DEFAULT_PROFILES_FILE")})
    overrides = {"source": "recording", "loop": "true", "realtime": "true"}
    if backend:
        overrides["backend"] = backend
    if recording:
        overrides["recording"] = recording
    params: Dict[str, Dict[str, object]] = {n: {"diagnostics_period_s": 0.5} for n in NODES}
    if steps:
        params["editor"]["steps"] = steps
    for n, p in (extra or {}).items():
        params.setdefault(n, {}).update(p)
    res: Dict[str, object] = {"bench": "graph", "machine_before": machine(),
                              "domain": int(env["ROS_DOMAIN_ID"]), "arguments": overrides,
                              "node_parameters": params}
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    procs = start_nodes(list(NODES), overrides, params, env)
    probe = None
    try:
        probe = AvatarProbe(ctx)
        t = time.perf_counter()
        wait_first_cloud(probe, procs, start_timeout_s)
        res["start_to_first_cloud_s"] = round(time.perf_counter() - t, 1)
        time.sleep(warmup_s)
        before = {n: probe.diag(n) for n in NODES}
        cpu = CpuWindow(procs.pids)
        t0 = time.time_ns()
        cpu.start()
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            dead = procs.exited()
            if dead:
                raise RuntimeError(f"node {dead} exited during the run:\n{procs.tail(dead, 30)}")
            time.sleep(0.2)
        res["processes"] = cpu.stop()
        wall = (time.time_ns() - t0) / 1e9
        time.sleep(0.6)
        arrivals = [a for a in probe.since(t0) if a[1] >= t0]
        lat_ms = [(a - s) / 1e6 for a, s in arrivals]
        res["duration_s"] = round(wall, 2)
        res["received"] = len(arrivals)
        res["throughput_fps"] = round(len(arrivals) / wall, 2)
        res["latency_ms"] = latency_stats(lat_ms)
        res["latencies_ms"] = [round(x, 2) for x in lat_ms]
        res["nodes"] = {}
        for n in NODES:
            after = probe.diag(n)
            counters = ("drop_", "sync_", "passthrough", "frames_", "lost", "faces", "models_", "no_face",
                        "published")
            res["nodes"][n] = {"counts": diag_delta(before[n], after, prefixes=counters),
                               "stage_ms": stage_ms(after), **res["processes"].get(n, {})}
        ed = res["nodes"]["editor"]["counts"]
        # Clouds of frames the editor passed through unedited (no face model in time) are not edits.
        res["edited"] = ed.get("frames_out", 0) - ed.get("passthrough_no_face_model", 0)
        res["edited_fps"] = round(res["edited"] / wall, 2)
        res["editor_message"] = probe.messages.get(next((k for k in probe.messages if "editor" in k), ""), "")
    finally:
        if probe is not None:
            probe.close()
        res["stop"] = procs.stop()
        ctx.try_shutdown()
    res["machine_after"] = machine()
    lat = res.get("latency_ms", {})
    res["target"] = {"throughput_fps_min": 10.0, "p95_ms_max": 150.0,
                     "met": bool(res.get("edited_fps", 0) >= 10.0 and lat.get("p95_ms") is not None
                                 and lat["p95_ms"] <= 150.0)}
    return res


def plot(res: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    lat = np.asarray(res.get("latencies_ms", []))
    if lat.size:
        a.hist(lat, bins=40, color="#4c72b0")
        for q, c in (("p50_ms", "k"), ("p95_ms", "r"), ("p99_ms", "m")):
            v = res["latency_ms"][q]
            a.axvline(v, color=c, ls="--", lw=1, label=f"{q[:3]} {v:.0f} ms")
        a.axvline(150, color="g", lw=1, label="target p95 150 ms")
        a.legend(fontsize=8)
    a.set_xlabel("camera stamp -> /avatar/points received (ms)")
    a.set_ylabel("clouds")
    a.set_title(f"end to end: {res.get('throughput_fps', 0):.1f} clouds/s "
                f"({res.get('edited_fps', 0):.1f} edited) over {res.get('duration_s', 0):.0f} s", fontsize=10)
    names = list(res.get("nodes", {}))
    cpu = [res["nodes"][n].get("cpu_percent") or 0 for n in names]
    rss = [res["nodes"][n].get("peak_rss_mb") or 0 for n in names]
    b.bar(names, cpu, color="#dd8452")
    for i, (c, r) in enumerate(zip(cpu, rss)):
        b.text(i, c, f"{c:.0f}%\n{r:.0f} MB", ha="center", va="bottom", fontsize=8)
    b.set_ylabel("CPU % (100 = one core); label: peak RSS")
    b.set_ylim(0, 1.25 * max(cpu + [1.0]))  # room for the labels
    m0, m1 = res["machine_before"], res.get("machine_after", res["machine_before"])
    b.set_title(f"{m0['cpus']} cores; load avg {m0['loadavg_1_5_15'][0]:.1f} -> "
                f"{m1['loadavg_1_5_15'][0]:.1f} (shared machine)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    ap.add_argument("--backend", default="", help="editor backend ('' = config/editor.yaml's)")
    ap.add_argument("--steps", type=int, default=None, help="editor steps (default: config/editor.yaml's)")
    ap.add_argument("--recording", default="", help="RealSense .db3/.bag (default: the embedded sample)")
    ap.add_argument("--domain", type=int, help="ROS_DOMAIN_ID (default: a random one in 150-230)")
    ap.add_argument("--out-dir", default="build/bench", help="results folder (default build/bench)")
    ap.add_argument("--json", help="JSON path (default OUT_DIR/graph.json)")
    args = ap.parse_args(argv)
    res = run(args.duration, args.backend, args.steps, args.recording or None, args.domain)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = Path(args.json) if args.json else out / "graph.json"
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(res, indent=2))
    plot(res, out / "graph.png")
    lat = res["latency_ms"]
    print(f"graph: {res['throughput_fps']} clouds/s ({res['edited_fps']} edited frames/s), latency "
          f"p50 {lat['p50_ms']} p95 {lat['p95_ms']} p99 {lat['p99_ms']} ms; "
          f"load {res['machine_before']['loadavg_1_5_15'][0]:.1f}; target met: {res['target']['met']}")
    for n, v in res["nodes"].items():
        cpu, rss = v.get("cpu_percent") or 0, v.get("peak_rss_mb") or 0
        print(f"  {n:<10} CPU {cpu:5.1f}%  peak RSS {rss:6.1f} MB  {v['counts']}")
    print(f"wrote {js} and {out / 'graph.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
