"""Shared pytest set-up: ROS logs under build/, an isolated DDS domain per test session."""

import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("ROS_LOG_DIR", str(ROOT / "build" / "ros_log"))
# Tests of other checkouts (or a running graph) on this machine must not cross-talk with ours.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))


@pytest.fixture(scope="session")
def model():
    """The ICT-FaceKit morphable model from the set-up cache (loaded once per session)."""
    from facediff_ros.core.face.morphable_model import MorphableModel
    return MorphableModel.load()


@pytest.fixture
def context():
    """A fresh rclpy context (package DDS profile set) for nodes built in this process."""
    import rclpy
    from facediff_ros.adapters.dds import configure_environment
    configure_environment()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    ctx.try_shutdown()
