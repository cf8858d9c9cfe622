"""`facediff bringup` / facediff_ros/bringup/processes.py: the graph as separate processes.

Every process a test starts carries a marker in its environment (inherited by its children), so
"no process left behind" is checked by scanning /proc for it. Shared-memory checks compare
/dev/shm before and after: a Fast DDS segment that appeared and whose lock nobody holds is stale.
"""

import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from facediff_ros.bringup import graph
from processes import stop as stop_processes
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
TEST_DIR = Path(__file__).resolve().parent
SHM = Path("/dev/shm")
MARKER = "FACEDIFF_BRINGUP_TEST"
PARTICIPANT_LOCK = re.compile(r"(fastdds|fastrtps)_[0-9a-f]{16}_el\Z")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /dev/shm checks")


def _env(marker, **extra):
    env = dict(os.environ, **{MARKER: marker}, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(TEST_DIR)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _marked_pids(marker):
    """PIDs of live processes whose environment has ``MARKER=marker`` (zombies are not processes)."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            state = (d / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            if needle in (d / "environ").read_bytes() and state != "Z":
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def _cmdline(pid):
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _segments():
    """Participant segments' lock files (port segments are a fixed set Fast DDS repairs itself)."""
    if not SHM.is_dir():
        return set()
    return {p.name for p in SHM.glob("fast*_*_el") if PARTICIPANT_LOCK.match(p.name)}


def _stale(names):
    """Of these segment lock files, the ones still present that nobody holds (their owner died)."""
    stale = []
    for name in names:
        try:
            fd = os.open(SHM / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # removed: fine
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stale.append(name)
        except BlockingIOError:
            pass  # held by a live participant (another test's, perhaps)
        finally:
            os.close(fd)
    return stale


def _kill_marked(marker):
    for pid in _marked_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- bad input: one clear message, non-zero, nothing started -----------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--source", "kinect"], "source: expected one of realsense, recording, synthetic, webcam; got 'kinect'"),
    (["--recording", "/no/such/recording.db3"], "recording: no such file: /no/such/recording.db3"),
    (["--params-file", "/no/such/params.yaml"], "params_file: no such file: /no/such/params.yaml"),
    (["--source", "webcam", "--video-device", "/dev/video97"], "video_device: no such file: /dev/video97"),
    (["--use-rviz", "true", "--rviz-config", "/no/such.rviz"], "rviz_config: no such file: /no/such.rviz"),
], ids=["unknown-source", "recording-path", "params-file", "no-webcam", "rviz-config"])
def test_bad_argument_one_line_no_processes(args, message):
    marker = uuid.uuid4().hex
    res = subprocess.run([sys.executable, "-m", "facediff_ros.cli", "bringup", *args], env=_env(marker),
                         cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"facediff bringup: {message}"), res.stderr
    assert res.stdout == ""
    assert _marked_pids(marker) == []


def test_dry_run_prints_the_graph_commands():
    import shlex
    res = subprocess.run([sys.executable, "-m", "facediff_ros.cli", "bringup", "--dry-run", "--source",
                          "synthetic", "--expression", "sad", "--namespace", "robot"],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res
    specs = graph.node_specs({"source": "synthetic", "expression": "sad", "namespace": "robot"})
    assert res.stdout.splitlines() == [shlex.join(graph.command(s)) for s in specs]


def test_a_node_that_refuses_to_start_ends_bringup(tmp_path):
    """A params file the capture node refuses (8UC1 is no depth encoding): the node exits 2 with
    its reason; bringup names it, stops the three others while they start, exits non-zero, and
    leaves no process behind."""
    params = tmp_path / "bad.yaml"
    params.write_text('/**/capture:\n  ros__parameters:\n    depth_encoding: "8UC1"\n')
    marker = uuid.uuid4().hex
    shm_before = _segments()
    res = subprocess.run([sys.executable, "-m", "facediff_ros.cli", "bringup", "--params-file", str(params)],
                         env=_env(marker), cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "the capture node exited with status 2; its last console lines:" in res.stderr, res.stderr
    assert "[capture] CaptureNode: cannot start: invalid parameter: depth_encoding" in res.stderr, res.stderr
    assert "stopping the other nodes" in res.stderr
    assert wait_for(lambda: not _marked_pids(marker), timeout=10.0), _marked_pids(marker)
    assert wait_for(lambda: not _stale(_segments() - shm_before), timeout=5.0)


def test_rviz_not_installed_starts_nothing(monkeypatch):
    specs = graph.node_specs({"use_rviz": "true"})
    from facediff_ros.bringup.processes import GraphProcesses
    gp = GraphProcesses(specs, env=dict(os.environ, PATH="/nonexistent"), log=lambda m: None)
    with pytest.raises(ValueError, match="rviz2: rviz2 not found on PATH"):
        gp.start()
    assert gp.children == {}


# ---- signals and deaths, with two small real nodes ------------------------------------------------------

_DRIVER = """
import sys
from facediff_ros.bringup import graph, processes
specs = [graph.NodeSpec(name=n, executable=n, module="bringup_fake_node", namespace="/" + n, params_files=[],
                        parameters={}, remappings=[]) for n in ("first", "second")]
sys.exit(processes.run(specs, log=lambda m: print(m, file=sys.stderr, flush=True)))
"""


class _Driver:
    """processes.run over two fake nodes in a process of its own (as `facediff bringup` runs)."""

    def __init__(self, tmp_path):
        self.marker = uuid.uuid4().hex
        self.err = tmp_path / "driver.err"
        self.out = tmp_path / "driver.out"
        self.shm_before = _segments()
        self.proc = subprocess.Popen([sys.executable, "-c", _DRIVER], env=_env(self.marker), cwd=str(ROOT),
                                     stdout=open(self.out, "w"), stderr=open(self.err, "w"))

    def children(self):
        return {pid: _cmdline(pid) for pid in _marked_pids(self.marker) if pid != self.proc.pid}

    def wait_up(self):
        assert wait_for(lambda: self.out.read_text().count("up") >= 2 or self.proc.poll() is not None,
                        timeout=60.0), self.report()
        assert self.proc.poll() is None and len(self.children()) == 2, self.report()

    def report(self):
        return f"stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}"

    def cleanup(self):
        if self.proc.poll() is None:
            stop_processes(self.proc)
        _kill_marked(self.marker)


@pytest.fixture
def driver(tmp_path):
    d = _Driver(tmp_path)
    yield d
    d.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_is_forwarded_and_every_node_stops(driver, sig):
    driver.wait_up()
    driver.proc.send_signal(sig)
    assert driver.proc.wait(timeout=30) == 0, driver.report()
    err = driver.err.read_text()
    assert f"{sig.name} received, stopping the nodes" in err
    assert "second stopped by SIGINT (0), first stopped by SIGINT (0)" in err, err
    assert wait_for(lambda: not driver.children(), timeout=5.0), driver.children()
    assert _stale(_segments() - driver.shm_before) == []


def test_a_dead_node_is_named_and_the_others_stopped(driver):
    driver.wait_up()
    (victim,) = [pid for pid, cmd in driver.children().items() if "__node:=second" in cmd]
    os.kill(victim, signal.SIGKILL)
    rc = driver.proc.wait(timeout=30)
    err = driver.err.read_text()
    assert rc == 128 + signal.SIGKILL, driver.report()
    assert "the second node was killed by signal 9; its last console lines:" in err
    assert "[second] fake node /second/second up" in err  # its own last words, from memory
    assert "first stopped by SIGINT (0)" in err and "restart" not in err
    assert wait_for(lambda: not driver.children(), timeout=5.0), driver.children()
    # The killed participant's segment was removed by bringup.
    assert _stale(_segments() - driver.shm_before) == []


def test_bringup_killed_takes_its_nodes_along(driver):
    driver.wait_up()
    driver.proc.kill()  # no chance to forward anything: PR_SET_PDEATHSIG ends the children
    driver.proc.wait(timeout=10)
    assert wait_for(lambda: not driver.children(), timeout=20.0), driver.children()
    # SIGTERM lets rclpy shut down cleanly: no segment is left.
    assert wait_for(lambda: not _stale(_segments() - driver.shm_before), timeout=5.0)


# ---- the real graph -------------------------------------------------------------------------------------

AVATAR_DEADLINE_S = 180.0  # four nodes loading MediaPipe, the model, torch on a busy 2-core machine


def test_bringup_graph_publishes_avatar_points_and_stops_when_a_node_dies(tmp_path, context):
    """`facediff bringup` on the embedded sample: /avatar/points reaches this process (sensor-data
    QoS), in the colour optical frame and depth_image_proc's layout; then the fitting node is
    killed: bringup names it, stops the others and exits non-zero, leaving no process and no
    shared-memory segment behind."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2

    from facediff_ros.adapters import topics
    if not (ROOT / "facediff_ros" / "data" / "sample.db3").is_file():
        pytest.skip("the embedded sample is not installed")

    marker = uuid.uuid4().hex
    shm_before = _segments()
    out, err = tmp_path / "bringup.out", tmp_path / "bringup.err"
    proc = subprocess.Popen([sys.executable, "-m", "facediff_ros.cli", "bringup", "--stamp-source", "device"],
                            env=_env(marker), cwd=str(ROOT), stdout=open(out, "w"), stderr=open(err, "w"))
    probe = rclpy.create_node("bringup_probe", context=context)
    clouds = []
    probe.create_subscription(PointCloud2, "/" + topics.AVATAR_POINTS, clouds.append, qos_profile_sensor_data)
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(probe)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()

    def report():
        return f"--- stderr:\n{err.read_text()[-3000:]}\n--- stdout:\n{out.read_text()[-4000:]}"

    try:
        assert wait_for(lambda: clouds or proc.poll() is not None, timeout=AVATAR_DEADLINE_S), report()
        assert clouds, f"bringup exited ({proc.returncode}) before /avatar/points arrived\n{report()}"
        c = clouds[0]
        assert c.header.frame_id == "camera_color_optical_frame"
        assert c.point_step == 32 and [f.name for f in c.fields][:3] == ["x", "y", "z"]
        assert c.height * c.width * c.point_step == len(c.data) > 0
        publishers = probe.get_publishers_info_by_topic("/" + topics.AVATAR_POINTS)
        assert [(p.node_namespace, p.node_name) for p in publishers] == [("/", "editor")]

        pids = {pid: _cmdline(pid) for pid in _marked_pids(marker) if pid != proc.pid}
        nodes = {n: pid for pid, cmd in pids.items() for n in graph.NODES
                 if f"facediff_ros.nodes.{n} " in cmd}
        assert sorted(nodes) == sorted(graph.NODES), pids
        os.kill(nodes["fitting"], signal.SIGKILL)
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL, report()
        text = err.read_text()
        assert "the fitting node was killed by signal 9; its last console lines:" in text, report()
        for n in ("capture", "landmarks", "editor"):
            assert f"{n} stopped by SIGINT" in text, report()
        assert wait_for(lambda: not _marked_pids(marker), timeout=10.0), _marked_pids(marker)
        assert wait_for(lambda: not _stale(_segments() - shm_before), timeout=5.0), \
            _stale(_segments() - shm_before)
    finally:
        if proc.poll() is None:
            stop_processes(proc, timeout=20)
        _kill_marked(marker)
        ex.shutdown()
        spinner.join(timeout=5)
        probe.destroy_node()
