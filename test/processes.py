"""Stopping the node processes a test started: SIGTERM to all, then SIGKILL whoever outlives the wait."""

import subprocess


def stop(*procs, timeout: float = 10.0) -> None:
    """Terminate ``procs`` (all first, so they shut down in parallel), then kill any still running
    after ``timeout`` seconds; every process is waited for, so none is left as a zombie."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
