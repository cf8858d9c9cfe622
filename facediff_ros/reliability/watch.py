"""The graph's nodes as separate, watched processes, and a listener for what comes out.

For the fault, soak, two-host and privacy checks: each node is started as
``python -m facediff_ros.nodes.<name> --ros-args ...`` (what the console scripts run), optionally
behind a command prefix (``ip netns exec NS``, ``strace -f ...``), with its console in a log file;
a node can be killed (any signal) and restarted; :func:`proc_sample` reads a process's RSS, open
file descriptors and /dev/shm mappings from /proc. :class:`Listener` is an in-process rclpy node
that timestamps every ``/avatar/points`` (or any topic) it receives and keeps the newest
``/diagnostics`` status of each node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from facediff_ros.adapters.dds import configure_environment

NODES = ("capture", "landmarks", "fitting", "editor")


def node_command(name: str, ros_args: Sequence[str] = ()) -> List[str]:
    """The command line of node ``name`` (the module the console script runs) with ``ros_args``."""
    return [sys.executable, "-m", f"facediff_ros.nodes.{name}", "--ros-args", *ros_args]


@dataclass
class NodeProcess:
    name: str
    cmd: List[str]
    log_path: Path
    proc: Optional[subprocess.Popen] = None
    started_at: float = 0.0  # time.monotonic() of the last start
    starts: int = 0


@dataclass
class NodeProcesses:
    """Start, kill, restart and stop node processes; each one's console goes to ``log_dir/<name>.log``.

    :param env: the children's environment (default: this process's, with the package DDS profile).
    :param cwd: the children's working directory (default: this one).
    """

    log_dir: Path
    env: Optional[Dict[str, str]] = None
    cwd: Optional[str] = None
    nodes: Dict[str, NodeProcess] = field(default_factory=dict)

    def __post_init__(self):
        self.log_dir = Path(self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.env is None:
            self.env = configure_environment(dict(os.environ))

    def start(self, name: str, ros_args: Sequence[str] = (), prefix: Sequence[str] = (),
              module: Optional[str] = None) -> NodeProcess:
        """Start node ``name`` (module ``facediff_ros.nodes.<module or name>``) behind ``prefix``."""
        cmd = list(prefix) + node_command(module or name, ros_args)
        np_ = NodeProcess(name, cmd, self.log_dir / f"{name}.log")
        self.nodes[name] = np_
        self._spawn(np_)
        return np_

    def start_command(self, name: str, cmd: Sequence[str]) -> NodeProcess:
        """Start any command (e.g. a probe) under ``name``, watched like a node."""
        np_ = NodeProcess(name, list(cmd), self.log_dir / f"{name}.log")
        self.nodes[name] = np_
        self._spawn(np_)
        return np_

    def _spawn(self, np_: NodeProcess) -> None:
        log = open(np_.log_path, "a")
        log.write(f"==== start {np_.starts + 1}: {' '.join(np_.cmd)}\n")
        log.flush()
        np_.proc = subprocess.Popen(np_.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        log.close()  # the child holds its own copy
        np_.started_at = time.monotonic()
        np_.starts += 1

    def pid(self, name: str) -> int:
        return self.nodes[name].proc.pid

    def alive(self) -> Dict[str, bool]:
        return {n: p.proc is not None and p.proc.poll() is None for n, p in self.nodes.items()}

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> Optional[int]:
        """Send ``sig`` to node ``name`` and wait for it; its exit status (None: outlived ``timeout``)."""
        p = self.nodes[name].proc
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def restart(self, name: str) -> NodeProcess:
        """Start node ``name`` again with the same command (after :meth:`kill`, or if it exited)."""
        np_ = self.nodes[name]
        if np_.proc is not None and np_.proc.poll() is None:
            self.kill(name)
        self._spawn(np_)
        return np_

    def tail(self, name: Optional[str] = None, chars: int = 2000) -> str:
        """The end of each node's console log (or of one node's), with its exit status."""
        names = [name] if name else list(self.nodes)
        out = []
        for n in names:
            p = self.nodes[n]
            text = p.log_path.read_text(errors="replace") if p.log_path.exists() else ""
            out.append(f"--- {n} (rc {p.proc.poll() if p.proc else None}):\n{text[-chars:]}")
        return "\n".join(out)

    def stop(self, timeout: float = 10.0) -> Dict[str, str]:
        """SIGINT to every node (all first, so they shut down in parallel), SIGKILL whoever outlives
        ``timeout``; returns {name: 'exited rc' | 'killed'}."""
        how = {}
        for p in self.nodes.values():
            if p.proc is not None and p.proc.poll() is None:
                try:
                    os.killpg(p.proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + timeout
        for n, p in self.nodes.items():
            if p.proc is None:
                continue
            try:
                rc = p.proc.wait(timeout=max(0.1, end - time.monotonic()))
                how[n] = f"exited {rc}"
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.proc.wait()
                how[n] = "killed"
        return how


# ---- /proc ----------------------------------------------------------------------------------------
def proc_sample(pid: int) -> Dict[str, object]:
    """RSS (bytes), open file descriptors and the /dev/shm files a process has mapped or open.

    :raises ProcessLookupError: the process is gone.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        fds = os.listdir(f"/proc/{pid}/fd")
        shm = set()
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/shm/"):
                shm.add(target)
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                shm.add(parts[5].replace(" (deleted)", ""))
    except (FileNotFoundError, StopIteration) as exc:
        raise ProcessLookupError(pid) from exc
    return {"rss_bytes": rss_kb * 1024, "fds": len(fds), "shm": sorted(shm)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fastdds_shm_files(shm_dir: str = "/dev/shm") -> List[str]:
    """Fast DDS's files in /dev/shm (segments, their lock files, port segments, semaphores)."""
    try:
        return sorted(n for n in os.listdir(shm_dir) if "fastdds" in n or "fastrtps" in n)
    except OSError:
        return []


# ---- the listener ------------------------------------------------------------------------------
class Listener:
    """An in-process node that records the arrival of a topic and the nodes' /diagnostics.

    ``arrivals`` holds (time.monotonic() at arrival, latency s = wall clock now - header stamp) per
    message; with the capture node's default ``stamp_source:=ros`` on the same host, the latency is
    camera frame read -> received here. Spins on its own thread until :meth:`close`.
    """

    def __init__(self, topic: str = "/avatar/points", msg_type=None, node_name: str = "reliability_listener",
                 context=None):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import PointCloud2

        configure_environment()
        self._own_context = context is None
        if context is None:
            context = rclpy.Context()
            rclpy.init(context=context)
        self.context = context
        self.node = rclpy.create_node(node_name, context=context)
        self.arrivals: List[tuple] = []
        self.last_sizes: List[int] = []
        self.statuses: Dict[str, object] = {}  # status name -> newest DiagnosticStatus
        self.status_history: List[tuple] = []  # (monotonic, name, level, message, values dict)
        self._lock = threading.Lock()
        self.node.create_subscription(msg_type or PointCloud2, topic, self._on_msg, qos_profile_sensor_data)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self._ex = SingleThreadedExecutor(context=context)
        self._ex.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def watch(self, topic: str, msg_type) -> List[float]:
        """Also record the arrival times (time.monotonic()) of ``topic``; returns the list they go in."""
        from rclpy.qos import qos_profile_sensor_data
        times: List[float] = []
        self.node.create_subscription(msg_type, topic, lambda _m: times.append(time.monotonic()),
                                      qos_profile_sensor_data)
        return times

    def _spin(self):
        try:
            self._ex.spin()
        except Exception:  # noqa: BLE001 - shut down under us at close()
            pass

    def _on_msg(self, msg) -> None:
        now = time.time()
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        with self._lock:
            self.arrivals.append((time.monotonic(), now - stamp))
            data = getattr(msg, "data", None)
            if data is not None:
                self.last_sizes.append(len(data))
                del self.last_sizes[:-10]

    def _on_diag(self, msg) -> None:
        t = time.monotonic()
        with self._lock:
            for s in msg.status:
                self.statuses[s.name] = s
                self.status_history.append((t, s.name, s.level, s.message,
                                            {k.key: k.value for k in s.values}))
            del self.status_history[:-5000]

    def count(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def since(self, t: float) -> List[tuple]:
        """Arrivals at or after monotonic time ``t``."""
        with self._lock:
            return [a for a in self.arrivals if a[0] >= t]

    def status_values(self, name_part: str) -> Optional[Dict[str, str]]:
        """The key/values of the newest status whose name contains ``name_part``."""
        with self._lock:
            for name, s in self.statuses.items():
                if name_part in name:
                    return {k.key: k.value for k in s.values}
        return None

    def close(self) -> None:
        self._ex.shutdown()
        self._thread.join(timeout=5)
        self.node.destroy_node()
        if self._own_context:
            self.context.try_shutdown()
