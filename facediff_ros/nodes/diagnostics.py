"""What every node reports: counted drops by reason, rates, stage timings, rate-limited logs, /diagnostics.

Levels are computed from the node's state by the node (never a status that always says OK);
this module only holds the bookkeeping and builds the ``diagnostic_msgs/DiagnosticStatus``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Dict, Iterable, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR, STALE = (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
                          DiagnosticStatus.STALE)
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


def level_name(level) -> str:
    """'OK', 'WARN', 'ERROR' or 'STALE' for a DiagnosticStatus level (rclpy gives bytes, b'\\x00');
    the value itself for anything else."""
    if isinstance(level, int) and 0 <= level < 256:
        level = bytes([level])
    return LEVEL_NAMES.get(level, str(level))


class RateLimitedLog:
    """Logs each kind of problem once, then at most once per ``period_s`` with a repeat count.

    One line per event would flood the log at 30 Hz; one line per key and period says what is
    wrong and how often.
    """

    def __init__(self, logger, period_s: float = 5.0):
        self._logger = logger
        self._period = float(period_s)
        self._last: Dict[str, float] = {}
        self._suppressed: Counter = Counter()
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str, level: str = "warning") -> bool:
        """Log ``message`` under ``key`` unless logged less than ``period_s`` ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] += 1
                return False
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        text = message + (f" ({n} more since the last report)" if n else "")
        # rclpy ties a severity to each calling line: one line per level.
        if level == "error":
            self._logger.error(text)
        elif level == "info":
            self._logger.info(text)
        else:
            self._logger.warning(text)
        return True


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 2.0):
        self._window = float(window_s)
        self._times: deque = deque()
        self._lock = threading.Lock()

    def tick(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()

    def rate(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0 if not self._times else 1.0 / self._window
            span = max(now - self._times[0], 1e-9)
            return (len(self._times) - 1) / span if span > 0 else 0.0


class StageTimes:
    """Exponential moving average of per-stage durations in milliseconds."""

    def __init__(self, alpha: float = 0.1):
        self._alpha = float(alpha)
        self._ms: Dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        ms = seconds * 1000.0
        with self._lock:
            old = self._ms.get(stage)
            self._ms[stage] = ms if old is None else old + self._alpha * (ms - old)

    def items(self) -> Iterable:
        with self._lock:
            return sorted(self._ms.items())


class Counters:
    """Thread-safe named counters (frames, drops by reason)."""

    def __init__(self):
        self._c: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    def __getitem__(self, key: str) -> int:
        with self._lock:
            return self._c[key]

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._c)


class FrameDrops:
    """A node's dropped frames: counted as ``drop_<reason>``, their rate, the last one, and a
    rate-limited log line naming the node (one piece for every node that drops input)."""

    def __init__(self, counters: Counters, log: RateLimitedLog, node_label: str):
        self._counters = counters
        self._log = log
        self._label = node_label
        self.rate = RateMeter()
        self.last = ""

    def add(self, reason: str, message: str) -> None:
        self._counters.add(f"drop_{reason}")
        self.rate.tick()
        self.last = f"{reason}: {message}"
        self._log(reason, f"{self._label}: dropped a frame ({reason}): {message}")


def status(name: str, hardware_id: str, level: bytes, message: str,
           values: Dict[str, object]) -> DiagnosticStatus:
    """A DiagnosticStatus with ``values`` as key/value strings (floats with 3 decimals)."""
    kv = [KeyValue(key=str(k), value=(f"{v:.3f}" if isinstance(v, float) else str(v)))
          for k, v in values.items()]
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id, values=kv)


def array(stamp, statuses) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg
