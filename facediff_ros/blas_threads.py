"""One BLAS thread per node process unless the user chose otherwise (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS).

numpy's OpenBLAS starts one thread per core. The graph's nodes are separate processes on a machine
that may have only 2 cores, and their matrices are small (the tracker's solves, the lifting, the
renderer's per-frame algebra): OpenBLAS's thread hand-offs then cost more than the work. Measured in
the whole graph on the shared 2-core machine (``facediff bench graph``, load 5-7): the fitting node
used 50-54 % of a core for 20-22 fits/s with two threads (half of it on OpenBLAS's second thread),
30 % for 27 fits/s with one (~25 -> ~11 ms CPU per fit). numpy is already
imported when a node starts, so the limit is set through OpenBLAS's own call (what the environment
variable does at load time).
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

_SETTERS = ("openblas_set_num_threads64_", "openblas_set_num_threads", "scipy_openblas_set_num_threads64_")
_GETTERS = ("openblas_get_num_threads64_", "openblas_get_num_threads", "scipy_openblas_get_num_threads64_")


def _openblas_libraries():
    import numpy  # noqa: F401 - loads numpy's OpenBLAS, so that it shows in the process's maps
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({ln.split()[-1] for ln in maps if "openblas" in ln.lower() and "/" in ln})
    except OSError:
        return []
    libs = []
    for path in paths:
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def blas_threads() -> Optional[int]:
    """Threads numpy's OpenBLAS uses now (None: no OpenBLAS found)."""
    for lib in _openblas_libraries():
        for sym in _GETTERS:
            if hasattr(lib, sym):
                return int(getattr(lib, sym)())
    return None


def limit_blas_threads(n: int = 1, env=os.environ) -> bool:
    """Limit numpy's OpenBLAS to ``n`` threads unless OPENBLAS_NUM_THREADS or OMP_NUM_THREADS is set
    (the user's choice wins). True when the limit was applied."""
    if env.get("OPENBLAS_NUM_THREADS") or env.get("OMP_NUM_THREADS"):
        return False
    done = False
    for lib in _openblas_libraries():
        for sym in _SETTERS:
            if hasattr(lib, sym):
                getattr(lib, sym)(int(n))
                done = True
    return done
