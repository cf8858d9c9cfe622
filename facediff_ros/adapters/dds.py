"""The DDS set-up every facediff_ros process uses.

Large messages (a 640x480 XYZRGB cloud is 4.9 MB) are lost with Fast DDS's default transports
under best-effort QoS; the package's profile (config/fastdds.xml) adds a shared-memory transport
with a segment big enough for them, plus UDPv4 for other hosts.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

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


# ---- stale shared-memory segments --------------------------------------------------------------
#
# Each Fast DDS participant with the SHM transport maps one segment, /dev/shm/<domain>_<16 hex>
# (35 MB with the package profile's 32 MiB segment), next to a lock file <segment>_el that it
# holds with an exclusive flock() for the segment's life; Fast DDS creates and locks the lock
# file *before* it creates the segment (SharedMemManager::Segment, RobustExclusiveLock). The
# kernel drops a flock when its holder dies, so a lock file nobody holds marks a segment whose
# owner is gone -- the rule `fastdds shm clean` applies. The wheel ships that tool
# (<venv>/tools/fastdds/shm/clean.py) but its command needs psutil, which is not installed, and
# a sub-process per node start costs ~0.3 s, hence the same check here.
#
# Differences from the tool, each for safety: a lock file younger than ``min_age_s`` is left
# alone (between Fast DDS's open(O_CREAT) and its flock() a live owner's file is briefly
# unlocked); the lock file is opened without O_CREAT (a vanished one is not re-created); the
# segment is removed while this process holds the lock, so no new owner can take the name
# meanwhile. Port segments (<domain>_port<N>, 52 kB, a fixed set per domain) are not touched:
# Fast DDS re-opens them by number and repairs a dead one itself (SharedMemGlobal's is_zombie).

SHM_DIR = Path("/dev/shm")
_SEGMENT_LOCK = re.compile(r"(fastdds|fastrtps)_[0-9a-f]{16}_el\Z")


@dataclass
class ShmCleanReport:
    """What :func:`clean_stale_shm` found: removed segment names and bytes, live ones kept."""

    removed: List[str] = field(default_factory=list)
    removed_bytes: int = 0
    in_use: int = 0
    too_young: int = 0
    errors: List[str] = field(default_factory=list)


def _lock_is_free(fd: int) -> bool:
    """Take the exclusive flock on ``fd`` without blocking; True (and held) when nobody had it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def clean_stale_shm(shm_dir: Path = SHM_DIR, min_age_s: float = 1.0) -> ShmCleanReport:
    """Remove Fast DDS participant segments whose owner process is dead.

    :param shm_dir: where POSIX shared memory lives (Linux: /dev/shm).
    :param min_age_s: lock files modified less than this many seconds ago are kept even when
        unlocked (an owner may be between creating and locking it).
    :returns: the removed segments, their size in bytes, and how many were kept.
    """
    report = ShmCleanReport()
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return report  # no /dev/shm (not Linux): nothing Fast DDS could have left here
    now = time.time()
    for name in sorted(names):
        if not _SEGMENT_LOCK.match(name):
            continue
        lock_path = Path(shm_dir) / name
        segment_path = Path(shm_dir) / name[:-len("_el")]
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # removed meanwhile (its owner closed cleanly) or not ours to open
        try:
            if now - os.fstat(fd).st_mtime < min_age_s:
                report.too_young += 1
                continue
            if not _lock_is_free(fd):
                report.in_use += 1
                continue
            # The lock is ours now: no live process owns this name.
            try:
                size = segment_path.stat().st_size
                segment_path.unlink()
                report.removed_bytes += size
            except FileNotFoundError:
                pass  # the owner died between locking and creating the segment
            except OSError as exc:
                report.errors.append(f"{segment_path}: {exc}")
                continue
            try:
                lock_path.unlink()
            except OSError as exc:
                report.errors.append(f"{lock_path}: {exc}")
            report.removed.append(segment_path.name)
        finally:
            os.close(fd)  # releases the flock
    return report
