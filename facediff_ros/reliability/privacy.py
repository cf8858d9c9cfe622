"""What the nodes write to disk, judged: faces are biometric data, so no frame may be written unless
the user asks (``facediff fit --out``, personalisation into a chosen folder).

Two views: the files that appeared under folders a run was given as its working directory, HOME
and TMPDIR (:func:`new_files`), and the paths a process opened for writing, from an ``strace``
log (:func:`strace_writes`). :func:`judge` sorts them into the ROS logs, the known third-party
files that hold no image data (listed with what they are), and anything else -- which fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Sequence

# Files libraries the nodes load write on their own, none with image data (checked: contents).
THIRD_PARTY = (
    # librealsense 2.59 usage statistics ("rum", ENABLE_STATS build flag): SDK version, OS, a
    # session id; no device data while no camera is attached, never frames.
    (re.compile(r"(^|/)\.rum/rum\.json(\.[0-9.]+\.tmp)?$"),
     "librealsense usage statistics (SDK version, OS, session id; written to a .tmp, then renamed)"),
    (re.compile(r"(^|/)\.ses$"), "librealsense session id (a timestamp and a UUID)"),
    # onnxruntime's telemetry device id and its local event database (in ~/.cache/Microsoft).
    (re.compile(r"(^|/)\.onnxruntime/(deviceid(\.tmp\.[0-9a-f-]+)?|onnxruntime\.db(-journal|-wal|-shm)?)$"),
     "onnxruntime device id / telemetry db (sqlite and its journal files)"),
    (re.compile(r"(^|/)matplotlib/fontlist-v[0-9.]+\.json(\.matplotlib-lock)?$"),
     "matplotlib font cache (and its lock)"),
    (re.compile(r"(^|/)__pycache__/[^/]+\.pyc(\.[0-9]+)?$"), "Python byte code"),
)
# Kernel / IPC paths a process opens for writing that are not files on disk.
NOT_FILES = re.compile(r"^(/dev/(null|shm/|pts/|tty|urandom)|/proc/|/sys/|pipe:|socket:|anon_inode:)")
# A single 424x240 RGB frame is 305 kB raw; image and array formats start with these bytes.
FRAME_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"PK\x03\x04", b"\x93NUMPY", b"ply\n", b"P6\n", b"BM",
                    b"RIFF")
MAX_THIRD_PARTY_BYTES = 64 * 1024


@dataclass
class Verdict:
    ros_logs: List[str] = field(default_factory=list)
    third_party: List[str] = field(default_factory=list)
    offending: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.offending


def new_files(folders: Iterable[Path]) -> List[Path]:
    """Every regular file under ``folders`` (they were empty when the run started)."""
    out = []
    for d in folders:
        out.extend(p for p in Path(d).rglob("*") if p.is_file())
    return sorted(out)


_OPEN = re.compile(r'^(?:\d+\s+)?'
                   r'(?P<call>openat|open|creat|rename|renameat2?|link|linkat|symlink|truncate|mknod)'
                   r'\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)')
# A path argument, with the directory fd before it when strace -y names one: 3</some/dir>, "name".
_STR = re.compile(r'(?:\d+<(?P<dir>[^>]*)>,\s*)?"(?P<path>(?:[^"\\]|\\.)*)"')


def _paths(args: str) -> List[str]:
    out = []
    for m in _STR.finditer(args):
        path = m.group("path")
        if m.group("dir") and not path.startswith("/"):
            path = m.group("dir").rstrip("/") + "/" + path
        out.append(path)
    return out


def strace_writes(log_text: str) -> List[str]:
    """Paths opened for writing (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC), created, renamed to or linked,
    by successful calls in an ``strace -f -y -e trace=...`` log (``-y``: paths relative to a
    directory fd are joined to it; without it they stay relative to the process's cwd)."""
    paths = set()
    for line in log_text.splitlines():
        m = _OPEN.match(line.strip())
        if not m or int(m.group("ret")) < 0:
            continue
        call, args = m.group("call"), m.group("args")
        strings = _paths(args)
        if not strings:
            continue
        if call in ("openat", "open"):
            if re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
                paths.add(strings[0])
        elif call in ("creat", "truncate", "mknod"):
            paths.add(strings[0])
        else:  # rename*/link*/symlink: the target is the last path
            paths.add(strings[-1])
    return sorted(paths)


def judge(paths: Sequence[str], ros_log_dir: str) -> Verdict:
    """Sort written paths (files or strace paths): ROS logs, known third-party files, the rest."""
    v = Verdict()
    for p in paths:
        s = str(p)
        if NOT_FILES.match(s):
            continue
        if s.startswith(str(ros_log_dir).rstrip("/") + "/") or s == str(ros_log_dir):
            v.ros_logs.append(s)
            continue
        if any(rx.search(s) for rx, _ in THIRD_PARTY) and not _looks_like_frame(Path(s)):
            v.third_party.append(s)
            continue
        v.offending.append(s)
    return v


def _looks_like_frame(path: Path) -> bool:
    """Too big for the small state files above, or an image / array format."""
    try:
        if path.stat().st_size > MAX_THIRD_PARTY_BYTES:
            return True
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False  # gone (a lock or journal file): nothing left to hold a frame
    return any(head.startswith(sig) for sig in FRAME_SIGNATURES)
