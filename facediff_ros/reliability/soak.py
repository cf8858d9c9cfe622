"""Soak: the whole graph for a long time on a recording, watched for leaks and creep.

    python -m facediff_ros.reliability.soak --duration-s 1200 --json build/soak/soak.json

capture (a recording, looping, played at its recorded 30 Hz) -> landmarks -> fitting -> editor run
as separate processes, as ``facediff bringup`` starts them (:mod:`facediff_ros.bringup`); every
``--sample-s`` seconds this samples, per node, the resident memory
(RSS), open file descriptors (/proc/PID/fd) and /dev/shm files mapped or open, and from a
listener in this process the /avatar/points rate and latency (header stamp, the capture node's
clock when the frame was read, -> received here; same host). After the run the nodes are stopped
and their Fast DDS segments must be gone from /dev/shm.

Pass / fail (after ``--warmup-s``, default 10 % of the run, at least 20 s):

- RSS growth < 5 % per node: median of the last 3 samples vs the median of the first 3;
- no latency creep: the trend of the per-sample median latency (least-squares line) rises by less
  than max(0.25 s, half the median latency) over the run, and output still arrives in the last
  fifth (single samples move with the load of a shared machine; a growing queue moves the trend);
- no leaked file descriptors: each node's fd count in the last fifth <= its first sample's + 4
  (transient sockets); no leaked shared memory: mapped /dev/shm files <= first + 2, and every
  segment a node owned is removed once it has stopped;
- every node alive for the whole run.

Writes the samples and the verdicts as JSON (``--json``); exit status 0 when all checks pass.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from facediff_ros.reliability.watch import NODES, Listener, cpu_seconds, proc_sample

RSS_GROWTH_MAX = 0.05
CREEP_MAX_S = 0.25
FD_SLACK, SHM_SLACK = 4, 2


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _own_segments(shm_files: List[str]) -> List[str]:
    """A participant's own segments (fastdds_<16 hex>, the lock files follow them); port segments are
    shared by all participants of a domain and stay."""
    return sorted({p for p in shm_files if "_port" not in p and "sem." not in p})


def judge(samples: List[Dict], warmup_s: float, leftover_segments: List[str], alive_all: bool) -> Dict:
    """The pass/fail checks of the module docstring on ``samples`` (dicts from :func:`run`)."""
    post = [s for s in samples if s["t_s"] >= warmup_s]
    checks = {}
    if len(post) < 6:
        return {"ok": False, "checks": {"enough_samples": {"ok": False, "post_warmup_samples": len(post)}}}
    fifth = max(2, len(post) // 5)
    for node in NODES:
        rss = [s["nodes"][node]["rss_bytes"] for s in post if node in s["nodes"]]
        fds = [s["nodes"][node]["fds"] for s in post if node in s["nodes"]]
        shm = [s["nodes"][node]["shm_files"] for s in post if node in s["nodes"]]
        first, last = _median(rss[:3]), _median(rss[-3:])
        growth = (last - first) / first if first else float("nan")
        checks[f"{node}_rss"] = {"ok": growth < RSS_GROWTH_MAX, "first_mb": round(first / 1e6, 1),
                                 "last_mb": round(last / 1e6, 1), "growth": round(growth, 4)}
        checks[f"{node}_fds"] = {"ok": max(fds[-fifth:]) <= fds[0] + FD_SLACK, "first": fds[0],
                                 "last_max": max(fds[-fifth:])}
        checks[f"{node}_shm"] = {"ok": max(shm[-fifth:]) <= shm[0] + SHM_SLACK, "first": shm[0],
                                 "last_max": max(shm[-fifth:])}
    lat_first = [x for s in post[:fifth] for x in s["latencies_s"]]
    lat_last = [x for s in post[-fifth:] for x in s["latencies_s"]]
    m1, m2 = _median(lat_first), _median(lat_last)
    # Creep = a steady rise (a queue that grows): the least-squares slope of the per-sample median
    # latency over the run, times the run, must stay under CREEP_MAX_S or half the median -- load
    # spikes of a shared machine move single samples, not the trend.
    pts = [(s["t_s"], _median(s["latencies_s"])) for s in post if s["latencies_s"]]
    rise = float("nan")
    if len(pts) >= 3:
        ts, ls = [p[0] for p in pts], [p[1] for p in pts]
        tm, lm = sum(ts) / len(ts), sum(ls) / len(ls)
        slope = sum((t - tm) * (v - lm) for t, v in pts) / max(1e-9, sum((t - tm) ** 2 for t in ts))
        rise = slope * (ts[-1] - ts[0])
    allowed = max(CREEP_MAX_S, 0.5 * _median([p[1] for p in pts]))
    checks["latency"] = {"ok": bool(lat_last) and rise < allowed, "trend_rise_ms": round(1e3 * rise, 1),
                         "allowed_rise_ms": round(1e3 * allowed, 1),
                         "first_fifth_median_ms": round(1e3 * m1, 1),
                         "last_fifth_median_ms": round(1e3 * m2, 1), "last_fifth_messages": len(lat_last)}
    checks["shm_after_stop"] = {"ok": not leftover_segments, "left": leftover_segments}
    checks["alive"] = {"ok": alive_all}
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}


def run(duration_s: float, sample_s: float, warmup_s: float, recording: str, log_dir: Path,
        log=print) -> Dict:
    """Run the graph for ``duration_s`` and return the report (samples, checks, figures)."""
    from facediff_ros.bringup import graph
    from facediff_ros.bringup.processes import GraphProcesses
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
    # What `facediff bringup` starts: the four nodes with config/<node>.yaml, on the recording.
    values = graph.resolve({"source": "recording", "recording": recording, "loop": "true",
                            "realtime": "true"})
    specs = graph.node_specs(values)
    log_dir.mkdir(parents=True, exist_ok=True)
    g = GraphProcesses(specs, log=log)
    g.start()
    lis = Listener(node_name="soak_listener")
    samples: List[Dict] = []
    segments = set()
    alive_all = True
    t0 = time.monotonic()
    last_count = 0
    cpu0 = {}
    try:
        next_t = t0 + sample_s
        while time.monotonic() - t0 < duration_s:
            time.sleep(max(0.0, next_t - time.monotonic()))
            next_t += sample_s
            now = time.monotonic()
            alive = g.alive()
            if not all(alive.values()):
                alive_all = False
                log(f"soak: a node died: {alive}\n" + "\n".join(f"[{n}] {g.tail(n)}" for n in alive))
                break
            nodes = {}
            pids = g.pids
            for n in NODES:
                pid = pids[n]
                try:
                    ps = proc_sample(pid)
                    cpu = cpu_seconds(pid)
                except ProcessLookupError:
                    continue
                segments.update(_own_segments([p for p in ps["shm"] if "fastdds_" in p]))
                prev = cpu0.get(n)
                cpu0[n] = (now, cpu)
                nodes[n] = {"rss_bytes": ps["rss_bytes"], "fds": ps["fds"], "shm_files": len(ps["shm"]),
                            "cpu_pct": round(100 * (cpu - prev[1]) / (now - prev[0]), 1) if prev else None}
            arrivals = lis.since(now - sample_s)
            count = lis.count()
            samples.append({"t_s": round(now - t0, 2), "nodes": nodes,
                            "points_hz": round((count - last_count) / sample_s, 2),
                            "latencies_s": [round(a[1], 4) for a in arrivals]})
            last_count = count
            lat = [a[1] for a in arrivals]
            log(f"soak {now - t0:7.0f} s: points {samples[-1]['points_hz']:.1f} Hz, latency median "
                f"{1e3 * _median(lat):.0f} ms; RSS MB " + ", ".join(
                    f"{n} {v['rss_bytes'] / 1e6:.0f}" for n, v in nodes.items()) + "; fds " + ", ".join(
                    f"{n} {v['fds']}" for n, v in nodes.items()))
        statuses = {name: {"level": int.from_bytes(s.level, "little") if isinstance(s.level,
                                                                                    bytes) else int(s.level),
                           "message": s.message, "values": {k.key: k.value for k in s.values}}
                    for name, s in lis.statuses.items()}
    finally:
        lis.close()
        how = g.stop(timeout_s=20.0)
        for n in g.children:  # the nodes' console lines, for the record
            (log_dir / f"{n}.log").write_text(g.tail(n, 200) + "\n")
    time.sleep(1.0)
    leftover = sorted(p for p in segments if os.path.exists(p))
    verdict = judge(samples, warmup_s, leftover, alive_all)
    total = time.monotonic() - t0
    lat_all = [x for s in samples if s["t_s"] >= warmup_s for x in s["latencies_s"]]
    figures = {"duration_s": round(total, 1), "post_warmup_points_hz": round(len(lat_all) / max(
        1e-9, duration_s - warmup_s), 2), "latency_p50_ms": round(1e3 * _median(lat_all), 1),
        "latency_p95_ms": round(1e3 * sorted(lat_all)[int(0.95 * (len(lat_all) - 1))],
                                1) if lat_all else None}
    return {"figures": figures, "verdict": verdict, "stopped": how, "final_diagnostics": statuses,
            "samples": samples,
            "params": {"duration_s": duration_s, "sample_s": sample_s, "warmup_s": warmup_s,
                       "recording": recording or "embedded sample (30 Hz, looping)"}}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=float(os.environ.get("FACEDIFF_SOAK_S", 1200)))
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=None, help="default: 10 %% of the run, at least 20 s")
    ap.add_argument("--recording", default="", help="a .db3/.bag (default: the embedded sample)")
    ap.add_argument("--json", default="build/soak/soak.json")
    ap.add_argument("--log-dir", default="build/soak/logs")
    args = ap.parse_args(argv)
    warmup = args.warmup_s if args.warmup_s is not None else max(20.0, 0.1 * args.duration_s)
    report = run(args.duration_s, args.sample_s, warmup, args.recording, Path(args.log_dir))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    v = report["verdict"]
    print(json.dumps({"figures": report["figures"], "ok": v["ok"], "checks": v["checks"]}, indent=1))
    print(f"soak: {'PASS' if v['ok'] else 'FAIL'}; report {args.json}")
    return 0 if v["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
