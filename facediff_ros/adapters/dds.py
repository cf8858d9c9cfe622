"""The DDS set-up every facediff_ros process uses.

Large messages (a 640x480 XYZRGB cloud is 4.9 MB) are lost with Fast DDS's default transports
under best-effort QoS; the package's profile (config/fastdds.xml) adds a shared-memory transport
with a segment big enough for them, plus UDPv4 for other hosts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
PROFILE_NAME = "fastdds.xml"


def profile_path() -> Path:
    """The package's Fast DDS profile: the source tree's config/ or the install's share/."""
    here = Path(__file__).resolve().parents[1]
    candidates = [here.parent / "config" / PROFILE_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory("facediff_ros")) / "config" / PROFILE_NAME)
    except Exception:  # noqa: BLE001 - not installed with colcon: the source tree is enough
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"facediff_ros: {PROFILE_NAME} not found in {[str(c) for c in candidates]}")


def configure_environment(env: Optional[dict] = None) -> dict:
    """Point Fast DDS at the package profile unless the user chose one; return ``env``.

    Must run before ``rclpy.init()`` in this process (Fast DDS reads the variable when it creates
    its first participant); with ``env`` given, prepares a child process's environment instead.
    """
    env = os.environ if env is None else env
    if not env.get(PROFILE_ENV):
        env[PROFILE_ENV] = str(profile_path())
    return env
