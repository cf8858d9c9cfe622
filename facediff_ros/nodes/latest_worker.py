"""A worker thread that processes only the newest input: no FIFO backlog when a node is slower than its input.

A subscription callback that does the work itself makes frames queue (in DDS's history and the
executor) whenever the work takes longer than the frame period: every frame then comes out that
many frames late. Here the callback only hands its input over (:meth:`LatestWorker.submit`); the
worker thread takes the newest, and an input that was still waiting when a newer one arrived is
given to ``on_stale`` (the node counts it, ``drop_stale``) instead of being processed.

Shutdown: :meth:`LatestWorker.stop` (from the node's ``destroy_node``, before its publishers go)
ends the thread after the item in hand. A Ctrl-C invalidates the ROS context before
``destroy_node`` runs, so an item in hand may fail to publish: ``context_ok`` tells the worker
that the failure is the shutdown's (not the frame's) and it ends quietly.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional


class LatestWorker:
    """Runs ``handle(item)`` on a thread for the newest submitted item; at most one item waits."""

    def __init__(self, name: str, handle: Callable[[Any], Any], on_stale: Callable[[Any], None],
                 on_error: Callable[[Exception], None], context_ok: Callable[[], bool] = lambda: True):
        self._handle = handle
        self._on_stale = on_stale
        self._on_error = on_error
        self._context_ok = context_ok
        self._cond = threading.Condition()
        self._waiting: Optional[Any] = None
        self._stop = False
        self.busy = False
        self.handled = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> None:
        """Give ``item`` to the worker; an item still waiting is replaced and reported stale."""
        with self._cond:
            if self._stop:
                return
            stale, self._waiting = self._waiting, item
            self._cond.notify_all()
        if stale is not None:
            self._on_stale(stale)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item, self._waiting = self._waiting, None
                self.busy = True
            try:
                if not self._context_ok():
                    return  # shutting down: nothing may be published any more
                self._handle(item)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one item
                if not self._context_ok():
                    return  # the shutdown's failure (e.g. publishing on an invalid context), not the item's
                self._on_error(exc)
            finally:
                with self._cond:
                    self.busy = False
                    self.handled += 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing waits and nothing is being processed, or ``timeout`` s passed."""
        end = time.monotonic() + timeout
        with self._cond:
            while (self._waiting is not None or self.busy) and self._thread.is_alive():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread after the item in hand (a waiting item is discarded); waits ``timeout`` s."""
        with self._cond:
            self._stop = True
            self._waiting = None
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
