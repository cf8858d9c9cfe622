"""Node processes run numpy's OpenBLAS on one thread unless the user's environment says otherwise."""

import os
import subprocess
import sys

import pytest

_PROBE = ("from facediff_ros.blas_threads import blas_threads, limit_blas_threads\n"
          "before = blas_threads()\n"
          "applied = limit_blas_threads(1)\n"
          "print(before, applied, blas_threads())\n")


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    before, applied, after = out.stdout.split()

    def count(text):
        return None if text == "None" else int(text)
    return count(before), applied == "True", count(after)


def test_one_thread_unless_the_user_chose():
    before, applied, after = _run({"OPENBLAS_NUM_THREADS": "2"})
    if before is None:
        pytest.skip("numpy is not linked against OpenBLAS here")
    assert before == 2 and not applied and after == 2  # the user's choice is kept
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: OpenBLAS starts one thread anyway")
    before, applied, after = _run({})
    assert before >= 2 and applied and after == 1
