"""Faces are biometric data: the graph writes no frame to disk unless the user asks.

The four nodes run as processes under ``strace -f`` (every open for writing, create, rename,
link, truncate by every thread), with an empty working directory, HOME and TMPDIR, on the
embedded recording until /avatar/points comes out. Every path written must be a ROS log (under
ROS_LOG_DIR), Fast DDS shared memory, or one of the few third-party state files listed in
facediff_ros.reliability.privacy (none of them image data: sizes and formats checked); the
temporary folders must hold nothing else afterwards.
"""

import os
import shutil
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from facediff_ros.adapters.dds import configure_environment  # noqa: E402
from facediff_ros.reliability.privacy import judge, new_files, strace_writes  # noqa: E402
from facediff_ros.reliability.watch import Listener, NodeProcesses  # noqa: E402
from waiting import wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "facediff_ros" / "data" / "sample.db3"
TRACE = "open,openat,creat,rename,renameat,renameat2,link,linkat,symlink,truncate,mknod"


def test_judge_sorts_written_paths(tmp_path):
    """The judge itself, on paths made here: logs and listed third-party files pass, a frame does not."""
    logs = tmp_path / "ros_log"
    (tmp_path / "home" / ".rum").mkdir(parents=True)
    rum = tmp_path / "home" / ".rum" / "rum.json"
    rum.write_text('{"sdk": {"version": "2.59.1"}}')
    png = tmp_path / "frame.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    big = tmp_path / "home" / "matplotlib" / "fontlist-v3.11.0.json"
    big.parent.mkdir()
    big.write_bytes(b"{" + bytes(200_000))
    v = judge([str(logs / "x.log"), str(rum), "/dev/shm/fastdds_0123", str(png), str(big), "/proc/self/fd/3"],
              str(logs))
    assert v.ros_logs == [str(logs / "x.log")] and v.third_party == [str(rum)]
    assert v.offending == [str(png), str(big)] and not v.ok
    log = ('123 openat(AT_FDCWD, "/tmp/a.png", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 5\n'
           '123 openat(AT_FDCWD, "/etc/hosts", O_RDONLY|O_CLOEXEC) = 6\n'
           '124 openat(AT_FDCWD, "/nope", O_RDWR) = -1 ENOENT (No such file or directory)\n'
           '124 renameat2(AT_FDCWD, "/tmp/x.tmp", AT_FDCWD, "/tmp/x.npz", RENAME_NOREPLACE) = 0\n'
           '125 openat(7</home/u/.cache>, "deviceid", O_RDWR|O_CREAT, 0600) = 8</home/u/.cache/deviceid>\n')
    assert strace_writes(log) == ["/home/u/.cache/deviceid", "/tmp/a.png", "/tmp/x.npz"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.skipif(not SAMPLE.is_file(), reason="the embedded sample recording is not installed")
def test_graph_writes_no_frames(context, tmp_path):
    from facediff_ros.core.face import assets
    home, tmp, cwd, logs = (tmp_path / n for n in ("home", "tmp", "cwd", "ros_log"))
    for d in (home, tmp, cwd):
        d.mkdir()
    env = configure_environment(dict(os.environ, HOME=str(home), TMPDIR=str(tmp), ROS_LOG_DIR=str(logs),
                                     FACEDIFF_CACHE_DIR=str(assets.default_cache_dir()),
                                     PYTHONDONTWRITEBYTECODE="1"))
    traces = tmp_path / "strace"
    traces.mkdir()
    g = NodeProcesses(tmp_path / "consoles", cwd=str(cwd), env=env)
    lis = Listener(context=context)
    try:
        for n in ("landmarks", "fitting", "editor", "capture"):
            g.start(n, ["-p", "diagnostics_period_s:=0.5"],
                    prefix=["strace", "-f", "-qq", "-y", "-e", f"trace={TRACE}", "-o",
                            str(traces / f"{n}.strace")])
        assert wait_for(lambda: lis.count() >= 3 or not all(g.alive().values()), timeout=150.0), g.tail()
        assert all(g.alive().values()), g.tail()
    finally:
        lis.close()
        g.stop(timeout=20.0)
    written = []
    for f in traces.glob("*.strace"):
        for p in strace_writes(f.read_text(errors="replace")):
            written.append(p if p.startswith("/") else str(cwd / p))  # relative to the node's cwd
    verdict = judge(written, str(logs))
    print(f"written by the graph: {len(verdict.ros_logs)} ROS log files, third-party {verdict.third_party}")
    assert verdict.ok, f"the graph wrote files that are not logs: {verdict.offending}"
    assert verdict.ros_logs  # the trace saw the logs: it was watching
    leftovers = judge([str(p) for p in new_files([home, tmp, cwd])], str(logs))
    assert leftovers.ok, leftovers.offending
