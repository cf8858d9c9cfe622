"""The one way every facediff_ros node process starts, spins and stops."""

from __future__ import annotations

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
