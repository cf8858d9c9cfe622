"""CPU use and peak memory of a running process (Linux /proc), and latency percentiles.

Used by the node and graph benchmarks to report each node process's CPU % (user + system time
over a wall-clock window, 100 % = one core) and peak resident set size (``VmHWM``).
"""

from __future__ import annotations

import os
import time
from typing import Dict, Iterable, Optional

import numpy as np

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of ``pid`` so far (None: the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat)


def peak_rss_mb(pid: int) -> Optional[float]:
    """Peak resident set size of ``pid`` in MiB (VmHWM; None: gone or unknown)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class CpuWindow:
    """CPU % of some processes between :meth:`start` and :meth:`stop` (100 % = one core busy)."""

    def __init__(self, pids: Dict[str, int]):
        self.pids = dict(pids)
        self._t0 = None
        self._c0: Dict[str, Optional[float]] = {}

    def start(self) -> None:
        self._c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._t0 = time.monotonic()

    def stop(self) -> Dict[str, Dict[str, Optional[float]]]:
        wall = time.monotonic() - self._t0
        out = {}
        for k, p in self.pids.items():
            c1, c0 = cpu_seconds(p), self._c0.get(k)
            cpu = None if c1 is None or c0 is None else 100.0 * (c1 - c0) / wall
            out[k] = {"cpu_percent": cpu, "peak_rss_mb": peak_rss_mb(p)}
        return out


def latency_stats(ms: Iterable[float]) -> Dict[str, Optional[float]]:
    """n, p50 / p95 / p99 / max of latencies in ms (None when empty)."""
    a = np.asarray(list(ms), dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def machine() -> Dict[str, object]:
    """What the figures ran on: CPU count and model, load averages (other jobs share the machine)."""
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "loadavg_1_5_15": list(os.getloadavg())}
