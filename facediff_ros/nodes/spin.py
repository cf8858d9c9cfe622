"""The one way every facediff_ros node process starts, spins and stops; stamps and waits on a graph."""

from __future__ import annotations

import sys
import time
from typing import Callable, List, Optional

import rclpy
import rclpy.logging
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from facediff_ros.adapters.dds import clean_stale_shm, configure_environment
from facediff_ros.blas_threads import limit_blas_threads

# Exit status of a node that refused its start-up parameters (argparse's "usage error").
EXIT_BAD_PARAMETERS = 2


def run(node_factory: Callable[[], Node], args: Optional[List[str]] = None) -> None:
    """Set up DDS (before rclpy.init), spin the node until Ctrl-C or shutdown, clean up.

    Before DDS starts, shared-memory segments left in /dev/shm by crashed participants are
    removed (:func:`facediff_ros.adapters.dds.clean_stale_shm`). numpy's OpenBLAS gets one thread
    unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say otherwise (:mod:`facediff_ros.blas_threads`:
    the nodes share the cores, and their matrices are small). A node that refuses its start-up
    parameters (ValueError, or rclpy's ParameterException for a value of the wrong type) ends the
    process with its reason on one stderr line and exit status :data:`EXIT_BAD_PARAMETERS`, no
    traceback: the reason is all the user needs, and it is the exception's message.

    :raises SystemExit: with :data:`EXIT_BAD_PARAMETERS` when the node could not be built.
    """
    configure_environment()
    limit_blas_threads(1)
    cleaned = clean_stale_shm()
    rclpy.init(args=args)
    if cleaned.removed:
        rclpy.logging.get_logger("facediff_ros").info(
            f"removed {len(cleaned.removed)} shared-memory segment(s) of dead Fast DDS participants "
            f"({cleaned.removed_bytes / 1e6:.1f} MB) from /dev/shm")
    node = None
    refused = None
    try:
        try:
            node = node_factory()
        except (ValueError, ParameterException) as exc:
            refused = exc
        else:
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        # Also destroys a node whose constructor raised (rclpy's context still tracks it): its
        # destroy_node must cope with a half-built node.
        if rclpy.ok():
            rclpy.shutdown()
    if refused is not None:
        name = getattr(node_factory, "__name__", "node")
        print(f"{name}: cannot start: {refused}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_PARAMETERS)


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
