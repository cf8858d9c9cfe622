"""The synthetic actor as a capture source (``source:=synthetic``): frames like a camera's, live."""

from __future__ import annotations

import time

from facediff_ros.core import images
from facediff_ros.core.capture.sources import CapturedFrame, SourceEnded, SourceUnavailable
from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor


class SyntheticSource:
    """The synthetic actor (:mod:`facediff_ros.synthetic.actor`) rendered live, paced at its frame rate.

    :param actor_config: an ``ActorConfig``; default: the actor's defaults with ``num_frames``.
    :param num_frames: frames in the sequence when no ``actor_config`` is given.
    :param loop: start the sequence again at its end (else :class:`SourceEnded`).
    :param realtime: sleep to keep the actor's frame rate; False renders as fast as possible.
    """

    def __init__(self, actor_config=None, num_frames: int = 300, loop: bool = True,
                 realtime: bool = True):
        if int(num_frames) < 1:
            raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
        self.actor_config = actor_config
        self.num_frames = int(num_frames)
        self.loop = loop
        self.realtime = realtime
        self._actor = None
        self._index = 0
        self._next_due = 0.0

    def describe(self) -> str:
        return "synthetic actor"

    def open(self) -> None:
        try:
            config = self.actor_config or ActorConfig(num_frames=self.num_frames)
            self._actor = SyntheticActor(config)
        except (ImportError, OSError, ValueError) as exc:
            raise SourceUnavailable(f"cannot build the synthetic actor: {exc}") from None
        self._index = 0
        self._next_due = time.monotonic()

    def read(self) -> CapturedFrame:
        if self._actor is None:
            raise SourceUnavailable("read() before open()")
        if self._index >= len(self._actor):
            if not self.loop:
                raise SourceEnded("the synthetic sequence has ended")
            self._index = 0
        period = 1.0 / float(self._actor.config.fps)
        if self.realtime:
            delay = self._next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # Late frames do not pile up: the schedule restarts from now when it falls behind.
            self._next_due = max(self._next_due + period, time.monotonic() - period)
        f = self._actor.frame(self._index)
        self._index += 1
        depth = images.depth_units_to_mm(f.depth, f.depth_scale)
        return CapturedFrame(color=f.color, depth=depth, intrinsics=f.intrinsics,
                             depth_scale=float(f.depth_scale), stamp=float(f.timestamp),
                             frame_number=int(f.index))

    def close(self) -> None:
        self._actor = None
