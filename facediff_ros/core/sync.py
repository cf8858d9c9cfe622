"""A small approximate-time synchroniser for messages of several streams, matched by stamp.

message_filters is not on PyPI, and the graph needs only this: colour, aligned depth and
CameraInfo published by one driver carry the *same* stamp (realsense2_camera, our capture node),
so a set is matched on equal stamps first and, failing that, on the nearest stamp within
``tolerance_s`` (for drivers that stamp streams separately).

Rules (each stream is assumed to arrive in stamp order, as DDS delivers one writer's samples):

- The first key is the pivot (the colour image). A pivot message is matched when every other
  stream has a message with an equal stamp, or else the nearest one within the tolerance.
- A message that can no longer be matched -- older than a matched set, or a pivot message for
  which some stream has already moved past ``stamp + tolerance`` without a partner -- is dropped
  and counted as ``unpaired_<key>``.
- Each stream's queue holds at most ``queue_size`` messages; the oldest is dropped on overflow
  and counted as ``overflow_<key>``.
- :meth:`StampSynchronizer.reconfigure` (new tolerance or queue size) drops what is queued,
  counted as ``reset_<key>``; the counts so far are kept.

With ``report_unmatched=True`` the pivot messages the synchroniser gives up on are not dropped but
handed back by :meth:`StampSynchronizer.add`, in stamp order among the matched sets, as *partial*
sets: the pivot plus whichever partners exist (a key is missing where no partner does), each
partner taken out of its queue. A pivot is given up when it is hopeless (above), when its queue
overflows, when a partner stream's overflow would drop its partner, or when time goes backwards;
such a set is counted in :attr:`StampSynchronizer.unmatched`, not in ``dropped``. The editor
passes those colour frames through unedited instead of losing them. Without the flag nothing
changes.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class SyncConfig:
    """Parameters of :class:`StampSynchronizer`."""

    # 0: exact stamps only (one driver stamps all its streams alike). A positive value pairs the
    # nearest stamps within it; keep it below half the frame period (16 ms at 30 Hz).
    tolerance_s: float = 0.0
    # Messages waiting per stream. 5 frames at 30 Hz: CameraInfo or depth may lag colour by a
    # few frames on a loaded machine; beyond that the set is too old to be worth processing.
    queue_size: int = 5

    def __post_init__(self):
        if not (self.tolerance_s >= 0):
            raise ValueError(f"tolerance_s: expected >= 0 s, got {self.tolerance_s}")
        if int(self.queue_size) != self.queue_size or self.queue_size < 1:
            raise ValueError(f"queue_size: expected an integer >= 1, got {self.queue_size}")


class StampSynchronizer:
    """Matches one message of each stream by stamp (integer nanoseconds)."""

    def __init__(self, keys: Sequence[str], config: SyncConfig = SyncConfig(),
                 report_unmatched: bool = False):
        keys = list(keys)
        if len(keys) < 2 or len(set(keys)) != len(keys):
            raise ValueError(f"keys: expected at least two distinct stream names, got {keys}")
        self.keys = keys
        self.config = config
        self._tol_ns = int(round(config.tolerance_s * 1e9))
        self._queues: Dict[str, deque] = {k: deque() for k in keys}
        self.dropped: Counter = Counter()
        self.matched = 0
        self.resets = 0  # times a stream's stamps went backwards and the queues were cleared
        self.received: Counter = Counter()
        self.report_unmatched = bool(report_unmatched)
        self.unmatched = 0  # pivot messages handed back as partial sets (report_unmatched)

    def reconfigure(self, config: SyncConfig) -> int:
        """Use ``config`` from now on; returns how many queued messages were dropped.

        What is queued was judged under the old tolerance (and may not fit a smaller queue), so it
        is dropped rather than re-matched: each message is counted as ``reset_<key>`` in
        :attr:`dropped`, and every earlier count (matched, dropped, received) is kept.
        """
        if not isinstance(config, SyncConfig):
            raise ValueError(f"config: expected a SyncConfig, got {type(config).__name__}")
        n = 0
        for k, q in self._queues.items():
            if q:
                self.dropped[f"reset_{k}"] += len(q)
                n += len(q)
                q.clear()
        self.config = config
        self._tol_ns = int(round(config.tolerance_s * 1e9))
        return n

    def pending(self, key: str) -> int:
        """Messages of ``key`` waiting for partners."""
        return len(self._queues[key])

    def add(self, key: str, stamp_ns: int, item: Any) -> List[Dict[str, Any]]:
        """Queue ``item`` of stream ``key``; return the sets (key -> item) matched by it, oldest first.

        With ``report_unmatched``, the pivot messages given up on come back too, as partial sets
        (no key for a stream without a partner) in stamp order among the matched ones.
        """
        if key not in self._queues:
            raise ValueError(f"key: unknown stream {key!r}; expected one of {self.keys}")
        q = self._queues[key]
        pivot = self._queues[self.keys[0]]
        self.received[key] += 1
        out: List[Dict[str, Any]] = []
        if q and int(stamp_ns) < q[-1][0]:
            # Time went backwards on this stream (a recording looped, a bag restarted): what is
            # queued belongs to the old timeline and would block the new one, so start afresh
            # (message_filters does the same on a backwards jump).
            while self.report_unmatched and pivot:
                out.append(self._give_up())
            for k, other in self._queues.items():
                self.dropped[f"unpaired_{k}"] += len(other)
                other.clear()
            self.resets += 1
        q.append((int(stamp_ns), item))
        if len(q) > self.config.queue_size and self.report_unmatched:
            if q is pivot:
                out.append(self._give_up())
            else:
                # The waiting pivots this stream's oldest message could partner would lose it.
                while pivot and len(q) > self.config.queue_size and pivot[0][0] <= q[0][0] + self._tol_ns:
                    out.append(self._give_up())
        if len(q) > self.config.queue_size:
            q.popleft()
            self.dropped[f"overflow_{key}"] += 1
        return out + self._match()

    def _give_up(self) -> Dict[str, Any]:
        """The oldest pivot as a partial set with the partners there are (taken from their queues)."""
        stamp, item = self._queues[self.keys[0]].popleft()
        partial = {self.keys[0]: item}
        for k in self.keys[1:]:
            i = self._find(k, stamp)
            if i is not None:
                partial[k] = self._queues[k][i][1]
                del self._queues[k][i]
        self.unmatched += 1
        return partial

    def _find(self, key: str, stamp: int) -> Optional[int]:
        """Index of the partner of ``stamp`` in ``key``'s queue: equal stamp, else nearest in tolerance."""
        best, best_d = None, None
        for i, (s, _) in enumerate(self._queues[key]):
            d = abs(s - stamp)
            if d == 0:
                return i
            if d <= self._tol_ns and (best_d is None or d < best_d):
                best, best_d = i, d
        return best

    def _drop_older(self, key: str, stamp: int) -> None:
        q = self._queues[key]
        while q and q[0][0] < stamp:
            q.popleft()
            self.dropped[f"unpaired_{key}"] += 1

    def _match(self) -> List[Dict[str, Any]]:
        pivot, others = self.keys[0], self.keys[1:]
        out = []
        while self._queues[pivot]:
            stamp, item = self._queues[pivot][0]
            found: List[Tuple[str, int]] = []
            hopeless = False
            for k in others:
                i = self._find(k, stamp)
                if i is None:
                    q = self._queues[k]
                    # The stream has moved past this stamp: no partner will ever come.
                    hopeless |= bool(q) and q[-1][0] > stamp + self._tol_ns
                    break
                found.append((k, i))
            if len(found) == len(others):
                match = {pivot: item}
                self._queues[pivot].popleft()
                for k, i in found:
                    s, other = self._queues[k][i]
                    match[k] = other
                    del self._queues[k][i]
                    self._drop_older(k, s)  # left behind by the match: never matchable
                self.matched += 1
                out.append(match)
                continue
            if hopeless:
                if self.report_unmatched:
                    out.append(self._give_up())
                else:
                    self._queues[pivot].popleft()
                    self.dropped[f"unpaired_{pivot}"] += 1
                continue
            break
        # Others older than the oldest waiting pivot (minus tolerance) can never be matched.
        if self._queues[pivot]:
            oldest = self._queues[pivot][0][0]
            for k in others:
                self._drop_older(k, oldest - self._tol_ns)
        return out
