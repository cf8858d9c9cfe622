"""Stale Fast DDS shared-memory segments are removed at node start; live ones never (issue 14, item 8).

A participant's segment /dev/shm/fastdds_<16 hex> (35 MB with the package profile) has a lock
file <segment>_el that the owner holds with flock() while it lives. A capture killed with SIGKILL
while no other participant is alive leaves both behind (before: for good). The owner of a lock is
found independently here, in the kernel's /proc/locks (pid and inode of every flock).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facediff_ros.adapters import dds
from waiting import wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm (not Linux)")


def _flock_holders():
    """{inode: pid} of every FLOCK in /proc/locks (the kernel's own table)."""
    holders = {}
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[1] == "FLOCK":
            holders[int(f[5].split(":")[2])] = int(f[4])
    return holders


def _segments_of(pid):
    """Segment names (fastdds_<hex>) whose lock file ``pid`` holds."""
    holders = _flock_holders()
    names = []
    for p in SHM.glob("fastdds_*_el"):
        try:
            if holders.get(p.stat().st_ino) == pid and "_port" not in p.name:
                names.append(p.name[:-len("_el")])
        except FileNotFoundError:
            pass
    return names


def _hold_lock(path):
    """A child process holding an exclusive flock on ``path`` (as a live Fast DDS owner does)."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o666); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _make_segment(d, name, size=4096, age_s=60.0):
    (d / name).write_bytes(b"\0" * size)
    (d / f"{name}_el").write_bytes(b"")
    old = time.time() - age_s
    os.utime(d / name, (old, old))
    os.utime(d / f"{name}_el", (old, old))


def test_only_unlocked_old_segments_are_removed(tmp_path):
    dead, live, young = "fastdds_00112233445566aa", "fastdds_00112233445566bb", "fastdds_00112233445566cc"
    legacy = "fastrtps_00112233445566dd"
    for name in (dead, live, legacy):
        _make_segment(tmp_path, name, size=1000)
    _make_segment(tmp_path, young, age_s=0.0)
    # Ports and unrelated files are never touched, locked or not.
    for other in ("fastdds_port7000", "fastdds_port7000_el", "sem.fastdds_port7000_mutex", "other_el",
                  "fastdds_0011223344556677", "fastdds_xyz_el"):
        (tmp_path / other).write_bytes(b"")
    holder = _hold_lock(tmp_path / f"{live}_el")
    try:
        report = dds.clean_stale_shm(tmp_path, min_age_s=1.0)
    finally:
        holder.stdin.close()
        holder.wait()
    assert sorted(report.removed) == [dead, legacy]
    assert report.removed_bytes == 2000 and report.in_use == 1 and report.too_young == 1
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live, f"{live}_el", young, f"{young}_el", "fastdds_port7000",
                           "fastdds_port7000_el", "sem.fastdds_port7000_mutex", "other_el",
                           "fastdds_0011223344556677", "fastdds_xyz_el"])
    # Now the holder is gone: its segment is stale too; the young one once old enough.
    assert dds.clean_stale_shm(tmp_path, min_age_s=1.0).removed == [live]
    assert dds.clean_stale_shm(tmp_path, min_age_s=0.0).removed == [young]


def test_missing_directory_is_nothing_to_clean(tmp_path):
    report = dds.clean_stale_shm(tmp_path / "absent")
    assert report.removed == [] and report.in_use == 0


def _start_capture(tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "facediff_ros.nodes.capture", "--ros-args",
                             "-p", "loop:=true"], env=dds.configure_environment(dict(os.environ)),
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    proc.log_path = tmp_path / f"{name}.log"
    return proc


def test_segment_of_a_killed_capture_is_removed_at_the_next_start_and_a_live_one_is_kept(tmp_path):
    """No participant in this process: the killed capture is alone, as in the issue."""
    first = _start_capture(tmp_path, "first")
    second = None
    try:
        assert wait_for(lambda: "streaming from" in first.log_path.read_text(), 60.0), \
            first.log_path.read_text()[-3000:]
        (segment,) = _segments_of(first.pid)
        size = (SHM / segment).stat().st_size
        assert size > 32 * 2**20  # the profile's 32 MiB segment
        first.send_signal(signal.SIGKILL)
        first.wait()
        # Left behind, and no longer locked by anyone.
        assert (SHM / segment).exists() and (SHM / f"{segment}_el").exists()
        assert (SHM / f"{segment}_el").stat().st_ino not in _flock_holders()
        # The cleaner leaves lock files younger than its min_age_s (1 s) alone.
        lock_age = time.time() - (SHM / f"{segment}_el").stat().st_mtime
        if lock_age < 1.5:
            time.sleep(1.5 - lock_age)  # not an assertion: makes the stale file old enough
        second = _start_capture(tmp_path, "second")
        assert wait_for(lambda: "streaming from" in second.log_path.read_text(), 60.0), \
            second.log_path.read_text()[-3000:]
        assert not (SHM / segment).exists() and not (SHM / f"{segment}_el").exists()
        assert "shared-memory segment(s) of dead Fast DDS participants" in second.log_path.read_text()
        # The live capture's own segment survives a clean from here, and it keeps running.
        (live,) = _segments_of(second.pid)
        report = dds.clean_stale_shm(min_age_s=0.0)  # the lock alone must protect it
        assert live not in report.removed and report.in_use >= 1
        assert (SHM / live).exists() and _segments_of(second.pid) == [live]
        assert second.poll() is None
        second.terminate()
        assert second.wait(timeout=15) == 0
        # A clean exit removes its own segment.
        assert not (SHM / live).exists()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
