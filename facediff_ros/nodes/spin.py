"""The one way every facediff_ros node process starts, spins and stops; stamps and waits on a graph."""

from __future__ import annotations

import time
from typing import Callable, List, Optional

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from facediff_ros.adapters.dds import configure_environment


def run(node_factory: Callable[[], Node], args: Optional[List[str]] = None) -> None:
    """Set up DDS (before rclpy.init), spin the node until Ctrl-C or shutdown, clean up."""
    configure_environment()
    rclpy.init(args=args)
    node = None
    try:
        node = node_factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def stamp_ns(msg) -> int:
    """A stamped message's ``header.stamp`` as integer nanoseconds (the synchroniser's key)."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def spin_until(executor, cond: Callable[[], bool], deadline: float,
               abort: Callable[[], bool] = lambda: False) -> bool:
    """Spin until ``cond()``, ``abort()`` or the monotonic ``deadline``; ``cond()`` at the end.

    For callers that wait on what arrives (matched counts, received messages), never on sleeps.
    """
    while time.monotonic() < deadline and not abort():
        if cond():
            return True
        executor.spin_once(timeout_sec=0.05)
    return cond()
