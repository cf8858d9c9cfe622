"""Waiting on a condition with a deadline: the tests' one polling loop."""

import time


def wait_for(cond, timeout: float = 10.0, poll_s: float = 0.01) -> bool:
    """Poll ``cond()`` until it is true or ``timeout`` seconds passed; its last value is returned,
    so the whole condition is checked once more at the deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll_s)
    return bool(cond())
