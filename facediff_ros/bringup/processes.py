"""The graph as separate processes, without ``ros2 launch``: ``facediff bringup``.

Each :class:`~facediff_ros.bringup.graph.NodeSpec` runs as ``python -m facediff_ros.nodes.<name>
--ros-args ...`` (:func:`facediff_ros.bringup.graph.command`) with the package's Fast DDS profile
in its environment. Nothing is restarted silently: when a node exits that was not asked to,
:meth:`GraphProcesses.wait` returns non-zero and names it (with its last console lines), and the
caller stops the others.

No orphans: every child runs in a process group of its own (a Ctrl-C on the terminal reaches
only the bringup process, which forwards it once, as SIGINT, to each group) and, on Linux, with
``PR_SET_PDEATHSIG`` = SIGTERM, so the kernel ends it if the bringup process dies without
stopping it (SIGKILL). (The kernel ties PDEATHSIG to the *thread* that started the child: call
:meth:`GraphProcesses.start` from a thread that lives as long as the graph, e.g. the main thread.)
Fast DDS shared-memory segments of children that had to be killed are removed afterwards
(:func:`facediff_ros.adapters.dds.clean_stale_shm`).
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from facediff_ros.adapters.dds import clean_stale_shm, configure_environment
from facediff_ros.bringup import graph

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 10.0  # SIGINT -> exit; then SIGKILL
TAIL_LINES = 200       # console lines kept per node
_PR_SET_PDEATHSIG = 1


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


_LIBC = _libc()


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: die with the parent (SIGTERM: rclpy shuts down cleanly and frees its segment)."""
    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
    return setup


class _Child:
    """One node process; its console lines kept in memory (and echoed through ``echo``)."""

    def __init__(self, spec: graph.NodeSpec, cmd: List[str], env: Dict[str, str],
                 echo: Optional[Callable[[str], None]]):
        self.spec, self.cmd = spec, cmd
        self.name = spec.name
        self.lines: collections.deque = collections.deque(maxlen=TAIL_LINES)
        self.expected_exit = False
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", start_new_session=True,
                                     preexec_fn=_child_setup(os.getpid()))
        self._echo = echo
        self._reader = threading.Thread(target=self._drain, name=f"{self.name}-console", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        # A full pipe would block the node: read continuously.
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self._echo is not None:
                self._echo(f"[{self.name}] {line}")

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the child's own group: its children too
        except (ProcessLookupError, PermissionError):
            pass

    def join_reader(self, timeout: float = 2.0) -> None:
        self._reader.join(timeout=timeout)


class GraphProcesses:
    """Starts, watches and stops the graph's node processes.

    :param specs: the processes (:func:`facediff_ros.bringup.graph.node_specs`), started in order.
    :param env: environment of the children (default: this process's); the Fast DDS profile is
        added unless one is set.
    :param log: where bringup's own messages go.
    :param echo: where the children's console lines go, prefixed ``[name]`` (None: kept only in
        memory, see :meth:`tail`).
    """

    def __init__(self, specs: Sequence[graph.NodeSpec], env: Optional[Dict[str, str]] = None,
                 log: Callable[[str], None] = print, echo: Optional[Callable[[str], None]] = None):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        self.specs = list(specs)
        self.env = configure_environment(dict(os.environ if env is None else env))
        self.env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
        self.env["PYTHONUNBUFFERED"] = "1"  # console lines as they happen
        self.log = log
        self.echo = echo
        self.children: Dict[str, _Child] = {}
        self.failure: Optional[str] = None  # what made wait() return non-zero

    # ---- starting --------------------------------------------------------------------------
    def _command(self, spec: graph.NodeSpec) -> List[str]:
        cmd = graph.command(spec)
        if spec.module is None:
            import shutil
            exe = shutil.which(spec.executable, path=self.env.get("PATH"))
            if exe is None:
                raise ValueError(f"{spec.name}: {spec.executable} not found on PATH (install it, e.g. "
                                 f"ros-<distro>-{spec.executable}, or leave use_rviz false)")
            cmd[0] = exe
        return cmd

    def start(self) -> None:
        """Start every process (stale Fast DDS segments of dead processes removed first).

        :raises ValueError: an executable (rviz2) is not installed; nothing is started then.
        """
        commands = [(s, self._command(s)) for s in self.specs]  # all checked before any starts
        clean_stale_shm()
        for spec, cmd in commands:
            self.children[spec.name] = _Child(spec, cmd, self.env, self.echo)
            self.log(f"bringup: started {spec.name} (pid {self.children[spec.name].proc.pid})")

    def restart(self, name: str) -> None:
        """Stop ``name`` if it runs and start it again (for fault tests; bringup never does this)."""
        child = self.children[name]
        self._stop_children([child], STOP_TIMEOUT_S)
        self.children[name] = _Child(child.spec, child.cmd, self.env, self.echo)

    # ---- watching --------------------------------------------------------------------------
    @property
    def pids(self) -> Dict[str, int]:
        return {n: c.proc.pid for n, c in self.children.items()}

    def alive(self) -> Dict[str, bool]:
        return {n: c.proc.poll() is None for n, c in self.children.items()}

    def tail(self, name: str, n: int = 20) -> str:
        """The last ``n`` console lines of node ``name``."""
        return "\n".join(list(self.children[name].lines)[-n:])

    def exited(self) -> Optional[str]:
        """The first node (in start order) that exited without being asked to, or None."""
        for name, c in self.children.items():
            if c.proc.poll() is not None and not c.expected_exit:
                return name
        return None

    def wait(self, timeout_s: Optional[float] = None,
             stop_requested: Callable[[], bool] = lambda: False, poll_s: float = 0.1) -> Optional[int]:
        """Block until a node exits unexpectedly, ``stop_requested()`` or ``timeout_s`` passes.

        :returns: non-zero (the node's exit status, 1 if it was 0; 128 + signal for a signal) when
            a node exited unexpectedly -- :attr:`failure` then names it with its last lines --;
            None when asked to stop or on timeout.
        """
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            name = self.exited()
            if name is not None:
                c = self.children[name]
                c.join_reader(1.0)  # its last lines
                rc = c.proc.returncode
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                last = self.tail(name, 15)
                self.failure = (f"the {name} node {how}; its last console lines:\n"
                                + ("\n".join(f"  [{name}] {line}" for line in last.splitlines())
                                   or "  (none)"))
                return 128 - rc if rc < 0 else (rc or 1)
            if stop_requested() or (end is not None and time.monotonic() >= end):
                return None
            time.sleep(poll_s)

    # ---- stopping --------------------------------------------------------------------------
    def _stop_children(self, children: List[_Child], timeout_s: float) -> Dict[str, str]:
        how: Dict[str, str] = {}
        for c in children:
            c.expected_exit = True
            if c.proc.poll() is None:
                c.signal(signal.SIGINT)  # rclpy's clean shutdown (frees its shared memory)
            else:
                how[c.name] = f"had exited ({c.proc.returncode})"
        end = time.monotonic() + timeout_s
        killed = False
        for c in children:
            if c.name in how:
                continue
            try:
                c.proc.wait(timeout=max(0.0, end - time.monotonic()))
                how[c.name] = f"stopped by SIGINT ({c.proc.returncode})"
            except subprocess.TimeoutExpired:
                c.signal(signal.SIGKILL)
                c.proc.wait()
                killed = True
                how[c.name] = f"killed: no exit {timeout_s:.0f} s after SIGINT"
        for c in children:
            c.join_reader()
        if killed or any(c.proc.returncode < 0 for c in children):
            # A killed participant leaves its segment behind; its lock is free now.
            report = clean_stale_shm(min_age_s=0.0)
            if report.removed:
                self.log(f"bringup: removed {len(report.removed)} shared-memory segment(s) of killed "
                         f"nodes from /dev/shm")
        return how

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> Dict[str, str]:
        """SIGINT to every node still running (the sources first: downstream nodes see no input
        meanwhile), wait up to ``timeout_s``, SIGKILL what remains. Returns {name: how it ended}."""
        return self._stop_children(list(reversed(list(self.children.values()))), timeout_s)


def run(specs: Sequence[graph.NodeSpec], env: Optional[Dict[str, str]] = None,
        log: Callable[[str], None] = print, echo: Optional[Callable[[str], None]] = print,
        duration_s: Optional[float] = None) -> int:
    """``facediff bringup``: start ``specs``, forward SIGINT/SIGTERM, stop everything on the way out.

    :param duration_s: stop after this many seconds (None: until a signal or a node's death).
    :returns: 0 after a requested stop (signal or duration) in which every node exited cleanly;
        the dead node's status (non-zero) when one exited unexpectedly; 1 when a node had to be
        killed at the stop.
    """
    stop = threading.Event()
    received: List[int] = []

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    graph_processes = GraphProcesses(specs, env=env, log=log, echo=echo)
    rc = 0
    try:
        graph_processes.start()
        log(f"bringup: {len(specs)} nodes running ({', '.join(s.name for s in specs)}); Ctrl-C stops them")
        rc = graph_processes.wait(timeout_s=duration_s, stop_requested=stop.is_set) or 0
        if rc:
            log(f"bringup: {graph_processes.failure}")
            log("bringup: stopping the other nodes")
        elif received:
            log(f"bringup: {signal.Signals(received[0]).name} received, stopping the nodes")
    finally:
        how = graph_processes.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    log("bringup: " + ", ".join(f"{n} {h}" for n, h in how.items()))
    if not rc and any(h.startswith("killed") for h in how.values()):
        rc = 1
    return rc
