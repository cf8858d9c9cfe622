"""The editor node as a real process over DDS: ``facediff bench editor-node --json OUT``.

The editor node (``python -m facediff_ros.nodes.editor``, started with
:class:`facediff_ros.bringup.processes.GraphProcesses` from the graph's own node spec and
config/editor.yaml) is fed by this process over Fast DDS -- colour, aligned depth, CameraInfo and
the frame's FaceModel -- from the embedded recording (facediff_ros/data/sample.db3, 424x240) or
``--recording``. The fits are computed once here beforehand (the landmark pipeline and the
tracker, as the landmark and fitting nodes run them), so the figures are the editor's alone: the
FaceModel is published right after its frame, as if the fitting chain took no time.

Modes, one after the other on the same node process:
- ``30hz``: frames published at 30 Hz (a RealSense's rate);
- ``flood``: frames published back to back as fast as this process can (the editor's limit; it
  keeps the newest frame and counts the others ``drop_stale``).

Reported per mode: edited clouds/s received on /avatar/points, latency from the camera stamp to
the cloud's arrival here (p50 / p95 / p99), the node's counted drops (its /diagnostics counters
over the window), its stage timings, CPU % (100 = one core) and peak RSS. Also, in the same run,
capture -> cloud bytes at 640x480: the package's path vs pyrealsense2 + rs.align + rs.pointcloud +
numpy (:mod:`facediff_ros.bench.capture_cloud_ratio`). The machine's load average goes with the
figures: other jobs on a shared machine slow every figure here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from facediff_ros.bench.process_stats import CpuWindow, latency_stats, machine


def start_nodes(names: List[str], overrides: Dict[str, str], extra: Dict[str, Dict[str, object]],
                env: Dict[str, str]):
    """GraphProcesses of the graph's ``names`` nodes (bringup's specs + ``extra`` parameters), started."""
    from facediff_ros.bringup import graph
    from facediff_ros.bringup.processes import GraphProcesses
    specs = [s for s in graph.node_specs(graph.resolve(overrides)) if s.name in names]
    for s in specs:
        s.parameters.update(extra.get(s.name, {}))
    procs = GraphProcesses(specs, env=env, log=lambda line: print(line, file=sys.stderr))
    procs.start()
    return procs


def bench_env(domain: Optional[int]) -> Dict[str, str]:
    """This process's environment with the package's DDS profile and a domain of its own (a bench
    must not see, or be seen by, other graphs on the machine)."""
    from facediff_ros.adapters.dds import configure_environment
    env = configure_environment(dict(os.environ))
    env["ROS_DOMAIN_ID"] = str(domain if domain is not None else random.Random().randint(150, 230))
    env.setdefault("ROS_LOG_DIR", str(Path("build") / "ros_log"))
    return env


def wait_first_cloud(probe, procs, timeout_s: float, feed=None, rate_hz: float = 10.0) -> None:
    """Until the first /avatar/points arrives (feeding frames meanwhile); RuntimeError if a node dies."""
    end = time.monotonic() + timeout_s
    while probe.received() == 0:
        if time.monotonic() > end:
            raise RuntimeError(f"no /avatar/points within {timeout_s:.0f} s; node output:\n" +
                               "\n".join(f"[{n}] {procs.tail(n, 15)}" for n in procs.children))
        dead = procs.exited()
        if dead:
            raise RuntimeError(f"node {dead} exited:\n{procs.tail(dead, 30)}")
        if feed is not None:
            feed.publish_next()
        time.sleep(1.0 / rate_hz)


def measure_window(probe, feed, pids: Dict[str, int], duration_s: float, rate_hz: Optional[float],
                   diag_name: str = "editor") -> Dict[str, object]:
    """Feed at ``rate_hz`` (None: back to back) for ``duration_s``; what came out, and its cost."""
    from facediff_ros.bench.avatar_probe import diag_delta, stage_ms
    before = probe.diag(diag_name)
    cpu = CpuWindow(pids)
    t0 = time.time_ns()
    cpu.start()
    start = time.monotonic()
    published0 = feed.published if feed else 0
    n = 0
    while time.monotonic() - start < duration_s:
        if feed is not None:
            feed.publish_next()
            n += 1
            if rate_hz:
                next_t = start + n / rate_hz
                time.sleep(max(0.0, next_t - time.monotonic()))
            else:
                time.sleep(0)  # flood: yield the GIL to the spinning thread only
        else:
            time.sleep(0.05)
    stats = cpu.stop()
    wall = (time.time_ns() - t0) / 1e9
    time.sleep(0.5)  # clouds of the last frames still in flight, diagnostics of the window
    arrivals = [a for a in probe.since(t0) if a[1] >= t0]  # frames stamped inside the window
    after = probe.diag(diag_name)
    lat = latency_stats([(arr - stamp) / 1e6 for arr, stamp in arrivals])
    return {"duration_s": round(wall, 2),
            "published_fps": round((feed.published - published0) / wall, 2) if feed else None,
            "received": len(arrivals), "received_fps": round(len(arrivals) / wall, 2),
            "latency_ms": lat, "node_counts": diag_delta(before, after), "node_stage_ms": stage_ms(after),
            "processes": stats}


def run(recording: Optional[str], duration_s: float, modes: List[str], backend: str, steps: int,
        frames: int, domain: Optional[int], cloud_ratio: bool, start_timeout_s: float = 120.0) -> Dict:
    env = bench_env(domain)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "FASTDDS_DEFAULT_PROFILES_FILE")})
    out: Dict[str, object] = {"bench": "editor-node", "machine_before": machine(),
                              "domain": int(env["ROS_DOMAIN_ID"]), "backend": backend, "steps": steps}
    from facediff_ros.bench.recorded_fits import fit_frames, read_frames, recording_path
    t = time.perf_counter()
    fitted = fit_frames(read_frames(recording, max_frames=frames))
    out["recording"] = recording_path(recording)
    out["frames"] = len(fitted)
    out["frames_with_fit"] = sum(f.fit is not None for f in fitted)
    out["image_size_hw"] = list(fitted[0].frame.intrinsics.shape)
    out["fit_setup_s"] = round(time.perf_counter() - t, 1)

    import rclpy
    from facediff_ros.bench.avatar_probe import AvatarProbe, FrameFeeder
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    procs = start_nodes(["editor"], {"backend": backend},
                        {"editor": {"steps": steps, "diagnostics_period_s": 0.5}}, env)
    probe = None
    try:
        probe = AvatarProbe(ctx, feed=True)
        feed = FrameFeeder(probe, fitted)
        t = time.perf_counter()
        wait_first_cloud(probe, procs, start_timeout_s, feed)
        out["start_to_first_cloud_s"] = round(time.perf_counter() - t, 1)
        measure_window(probe, feed, procs.pids, 2.0, 30.0)  # warm-up
        out["modes"] = {}
        for mode in modes:
            rate = 30.0 if mode == "30hz" else None
            out["modes"][mode] = r = measure_window(probe, feed, procs.pids, duration_s, rate)
            lat = r["latency_ms"]
            print(f"{mode}: published {r['published_fps']} frames/s, received {r['received_fps']} clouds/s, "
                  f"latency p50 {lat['p50_ms']} p95 {lat['p95_ms']} p99 {lat['p99_ms']} ms, "
                  f"editor {r['processes']['editor']}, counts {r['node_counts']}", flush=True)
        out["editor_diagnostics"] = probe.diag("editor")
    finally:
        if probe is not None:
            probe.close()
        out["stop"] = procs.stop()
        ctx.try_shutdown()
    if cloud_ratio:
        from facediff_ros.bench import capture_cloud_ratio
        out["capture_to_cloud"] = capture_cloud_ratio.run()
        r = out["capture_to_cloud"]
        print(f"capture -> cloud bytes at {r['image_size_hw']}: package / pyrealsense2 = {r['ratio']:.2f} "
              f"(like for like, both rs.align; {r['as_shipped']['ratio']:.2f} as shipped)", flush=True)
    out["machine_after"] = machine()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recording", help="RealSense .db3/.bag (default: the embedded sample)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per mode (default 15)")
    ap.add_argument("--modes", default="30hz,flood", help="comma-separated: 30hz, flood (default both)")
    ap.add_argument("--backend", default="onnxruntime-cpu", help="editor backend (default onnxruntime-cpu)")
    ap.add_argument("--steps", type=int, default=4, help="editor network evaluations (default 4)")
    ap.add_argument("--frames", type=int, default=300,
                    help="at most this many recording frames (default all)")
    ap.add_argument("--domain", type=int, help="ROS_DOMAIN_ID (default: a random one in 150-230)")
    ap.add_argument("--no-cloud-ratio", action="store_true", help="skip the capture -> cloud comparison")
    ap.add_argument("--json", help="write the results here (default build/bench/editor_node.json)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("30hz", "flood")]
    if bad or not modes:
        ap.error(f"--modes: expected 30hz and/or flood, got {args.modes!r}")
    res = run(args.recording, args.duration, modes, args.backend, args.steps, args.frames, args.domain,
              not args.no_cloud_ratio)
    js = Path(args.json or "build/bench/editor_node.json")
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(res, indent=2))
    print(f"wrote {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
