"""``facediff demo`` (``make demo``): the whole graph on the embedded recording, one result folder.

Starts the four nodes -- **capture** (playing the embedded recording of the synthetic actor,
facediff_ros/data/sample.db3, in a loop), **landmarks**, **fitting** and **editor** -- as separate
processes from the one graph description (facediff_ros.bringup.graph, as avatar.launch.py and
``facediff bringup``), listens in this process to the camera colour, ``/face/landmarks``,
``/face/model``, ``/avatar/color``, ``/avatar/depth``, ``/avatar/points`` and ``/diagnostics``,
and, once every stage has produced output, cycles the editor through the seven expression
categories at run time with the editor's ``set_parameters`` service (``expression``), as
``ros2 param set /editor expression <name>`` would. For each category it keeps
:data:`FRAMES_PER_CATEGORY` edited frames made after the change (the first
:data:`SKIP_AFTER_SWITCH` outputs after the change are not used: the editor may have started them
with the old category; frames the editor passed through unedited -- no face model of their stamp
-- are recognised by their colour being the camera's, byte for byte, and not used), with the
input colour, landmarks and face model of the same camera frame (same stamp).

Stamps are the ROS clock's (unique per message). Which recorded frame a camera image is -- for the
landmark error against the ground truth sample.gt.npz -- is found from its content: playback is
bit-exact, so each sample frame's colour digest identifies it.

It then writes, because the user asked for this output by running the demo (the frames are of
the synthetic actor; nothing else in the package writes frames unasked: faces are biometric
data), a result folder (``--out DIR``, default ``build/demo/<timestamp>``) with:

- ``montage.png``: one row per category; columns input, landmarks drawn, fitted model (the
  FaceModel rendered over the input), edited colour, edited depth (TURBO, near blue);
- ``avatar_<category>.ply``: the last ``/avatar/points`` cloud of the category, its valid points,
  binary little-endian x y z float32 (m, camera optical frame) + red green blue uchar;
- ``summary.json``: latency and throughput (per-stage milliseconds from each node's
  ``/diagnostics``, end-to-end latency, rates, drops), landmark accuracy against the ground truth
  (:mod:`facediff_ros.synthetic.landmark_eval`), per-category frames, timings;
- ``latency.png``: the per-stage times and the end-to-end latency over the run (matplotlib Agg).

End-to-end latency: for each edited ``/avatar/points`` message, its arrival here (wall clock)
minus its header stamp, which is the camera frame's ROS-clock stamp taken by the capture node when
it read the frame (same machine, same clock).

It fails loudly -- non-zero exit and a line naming the stage -- when a node exits, when a stage
produces nothing within its deadline (no camera frames, no landmarks, no face model, no avatar
points), or when a category gets no edited frame.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from facediff_ros.adapters import topics
from facediff_ros.core.face.expressions import CATEGORIES
from facediff_ros.nodes import diagnostics as diag
from facediff_ros.nodes.landmarks import LandmarksParams

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "demo"
NODES = ("capture", "landmarks", "fitting", "editor")   # the graph, source first
STAGES = ("capture", "landmarks", "fitting", "editor")  # what each produces: see STAGE_OUTPUT
FRAMES_PER_CATEGORY = 2
SKIP_AFTER_SWITCH = 2      # clouds after a category change not used (may be edits of the old one)
START_TIMEOUT_S = 120.0    # first camera frame here after the start (rclpy, MediaPipe, torch load)
STAGE_TIMEOUT_S = 60.0     # each stage's first output after the previous stage's first output
CATEGORY_TIMEOUT_S = 30.0  # edited frames of one category after its change
STOP_TIMEOUT_S = 10.0      # SIGINT -> exit; then SIGKILL
DIAGNOSTICS_PERIOD_S = 0.25  # the nodes' /diagnostics period in the demo
CAMERA_TOPICS = topics.camera_topics(LandmarksParams.camera_namespace, LandmarksParams.camera_name)
COLOR_TOPIC = "/" + CAMERA_TOPICS.color
# stage -> (topic this process waits for, what "nothing" means in the failure message)
STAGE_OUTPUT = {
    "capture": (COLOR_TOPIC, "no camera frames"),
    "landmarks": ("/" + topics.FACE_LANDMARKS, "no face landmarks"),
    "fitting": ("/" + topics.FACE_MODEL, "no face model"),
    "editor": ("/" + topics.AVATAR_POINTS, "no avatar points"),
}


class DemoFailure(RuntimeError):
    """A stage produced nothing, or a node died: ``stage`` names it."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


# ---- starting the graph --------------------------------------------------------------------------
def graph_specs(expression: str, node_params: Optional[Dict[str, Dict[str, object]]] = None) -> list:
    """The graph's node specs (facediff_ros.bringup.graph, the description avatar.launch.py and
    ``facediff bringup`` use) with the demo's launch arguments -- the embedded recording in a loop,
    ROS-clock stamps (unique per message: the end-to-end latency is measured against them), the
    first category at full intensity -- plus a fast /diagnostics period (final counters arrive
    sooner) and ``node_params``
    (node -> name -> bool/int/float/str, e.g. ``{"landmarks": {"camera_name": "nowhere"}}``) last.

    :raises ValueError: ``node_params`` names a node that is not in the graph.
    """
    from facediff_ros.bringup import graph
    specs = graph.node_specs(graph.resolve({
        "source": "recording", "recording": "", "loop": "true", "stamp_source": "ros",
        "expression": expression, "intensity": "1.0"}))
    by_name = {s.name: s for s in specs}
    for node, values in (node_params or {}).items():
        if node not in by_name:
            raise ValueError(f"node parameters for {node!r}: the graph's nodes are {', '.join(by_name)}")
    for s in specs:
        s.parameters["diagnostics_period_s"] = DIAGNOSTICS_PERIOD_S
        s.parameters.update((node_params or {}).get(s.name, {}))
    return specs


def start_graph(specs: list, env: Dict[str, str]):
    """Start ``specs`` as separate processes (facediff_ros.bringup.processes.GraphProcesses: own
    process groups, SIGINT then SIGKILL on stop, stale shared memory removed)."""
    from facediff_ros.bringup.processes import GraphProcesses
    g = GraphProcesses(specs, env=env, log=lambda line: None)
    g.start()
    return g


# ---- what this process receives -----------------------------------------------------------------
@dataclass
class CategoryFrame:
    """One edited camera frame and its inputs (all of the same stamp)."""

    stamp_ns: int
    input_rgb: Optional[np.ndarray] = None   # (H, W, 3) uint8
    landmarks_uv: Optional[np.ndarray] = None  # (478, 2) px
    model_msg: object = None                 # facediff_ros/FaceModel
    color_msg: object = None                 # /avatar/color
    depth_msg: object = None                 # /avatar/depth
    points_msg: object = None                # /avatar/points

    def complete(self) -> bool:
        return all(x is not None for x in (self.input_rgb, self.color_msg, self.depth_msg, self.points_msg))

    def edited(self) -> bool:
        """The avatar colour differs from the camera's: the editor worked on this frame (a frame
        without a face model of its stamp is passed through unedited, byte for byte)."""
        return self.complete() and bytes(self.color_msg.data) != self.input_rgb.tobytes()


@dataclass
class _Phase:
    category: str
    since: float                             # monotonic s: the parameter change was acknowledged
    stamps_seen: List[int] = field(default_factory=list)  # distinct output stamps, in arrival order
    frames: Dict[int, CategoryFrame] = field(default_factory=dict)


RECENT = 150  # stamps kept per topic (5 s at 30 Hz): longer than any frame takes through the graph


class _Recent(collections.OrderedDict):
    """A dict that keeps its last RECENT insertions."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if len(self) > RECENT:
            self.popitem(last=False)


def content_key(data) -> bytes:
    """A digest of an image's bytes: the recording's frames are replayed bit-exact, so a camera
    image's digest says which sample frame it is (stamps come from the ROS clock)."""
    return hashlib.blake2b(bytes(data), digest_size=16).digest()


def sample_frames_by_content(path: Path) -> Dict[bytes, int]:
    """content_key(colour) -> frame index for every frame of a recording."""
    from facediff_ros.synthetic.recording import play_recording
    return {content_key(np.ascontiguousarray(f.color).tobytes()): i
            for i, f in enumerate(play_recording(path))}


class Listener:
    """This process's view of the graph: messages kept by stamp, arrival times (monotonic s),
    the per-category collection and the latest /diagnostics status of each node."""

    def __init__(self, node, frame_of_content: Dict[bytes, int]):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data as qos
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        from facediff_ros.msg import FaceLandmarks, FaceModel

        self.lock = threading.Lock()
        self.frame_of_content = frame_of_content
        self.arrivals: Dict[str, List[float]] = collections.defaultdict(list)
        self.frame_of: Dict[int, Optional[int]] = {}  # stamp -> sample frame index (None: not one)
        # Per stamp, the last RECENT stamps only (stamps are unique: the memory stays bounded).
        self.color = _Recent()                   # stamp -> colour Image
        self.landmarks_last = _Recent()          # stamp -> FaceLandmarks
        self.models = _Recent()                  # stamp -> FaceModel
        self.avatar_edited = _Recent()           # stamp -> avatar colour != the camera's
        self.info = None
        self.landmarks: Dict[int, object] = {}   # sample frame index -> its first FaceLandmarks
        self.latency: List[tuple] = []           # (arrival s, camera stamp -> points arrival s, edited)
        self.phase: Optional[_Phase] = None
        self.phases: List[_Phase] = []
        self.diagnostics: Dict[str, dict] = {}   # status name -> latest {level, message, values, time}
        self.levels_seen: Dict[str, Dict[str, int]] = {}
        subs = ((Image, COLOR_TOPIC, self._on_color),
                (CameraInfo, "/" + CAMERA_TOPICS.color_info, self._on_info),
                (FaceLandmarks, "/" + topics.FACE_LANDMARKS, self._on_landmarks),
                (FaceModel, "/" + topics.FACE_MODEL, self._on_model),
                (Image, "/" + topics.AVATAR_COLOR, self._avatar("color_msg")),
                (Image, "/" + topics.AVATAR_DEPTH, self._avatar("depth_msg")),
                (PointCloud2, "/" + topics.AVATAR_POINTS, self._avatar("points_msg")))
        for msg_type, topic, cb in subs:
            node.create_subscription(msg_type, topic, cb, qos)
        node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, 10)

    @staticmethod
    def _stamp(msg) -> int:
        return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)

    def _on_color(self, msg) -> None:
        now = time.monotonic()
        i = self.frame_of_content.get(content_key(msg.data))
        with self.lock:
            s = self._stamp(msg)
            self.arrivals[COLOR_TOPIC].append(now)
            self.frame_of[s] = i
            self.color[s] = msg

    def _on_info(self, msg) -> None:
        self.info = msg

    def _on_landmarks(self, msg) -> None:
        with self.lock:
            self.arrivals["/" + topics.FACE_LANDMARKS].append(time.monotonic())
            s = self._stamp(msg)
            if self.frame_of.get(s) is not None:
                self.landmarks.setdefault(self.frame_of[s], msg)
            self.landmarks_last[s] = msg

    def _on_model(self, msg) -> None:
        with self.lock:
            self.arrivals["/" + topics.FACE_MODEL].append(time.monotonic())
            s = self._stamp(msg)
            self.models[s] = msg
            fr = self.phase.frames.get(s) if self.phase is not None else None
            if fr is not None and fr.model_msg is None:  # arrived after the frame's edit
                fr.model_msg = msg

    def _avatar(self, slot: str) -> Callable:
        topic = {"color_msg": topics.AVATAR_COLOR, "depth_msg": topics.AVATAR_DEPTH,
                 "points_msg": topics.AVATAR_POINTS}[slot]

        def keep(msg) -> None:
            now = time.monotonic()
            with self.lock:
                self.arrivals["/" + topic].append(now)
                s = self._stamp(msg)
                if slot == "color_msg" and s in self.color:
                    self.avatar_edited[s] = bytes(msg.data) != bytes(self.color[s].data)
                if slot == "points_msg":  # the camera stamps are ROS time = this machine's clock
                    self.latency.append((now, time.time() - s * 1e-9, self.avatar_edited.get(s)))
                ph = self.phase
                if ph is None or now < ph.since:
                    return
                if s not in ph.stamps_seen:
                    ph.stamps_seen.append(s)
                if ph.stamps_seen.index(s) < SKIP_AFTER_SWITCH:
                    return
                fr = ph.frames.get(s)
                if fr is None:
                    fr = ph.frames[s] = CategoryFrame(s)
                    color = self.color.get(s)
                    if color is not None:
                        from facediff_ros.adapters.images import from_image_msg
                        from facediff_ros.core import images
                        fr.input_rgb = images.to_rgb8(from_image_msg(color), color.encoding)
                    lm = self.landmarks_last.get(s)
                    if lm is not None:
                        fr.landmarks_uv = np.stack([np.asarray(lm.u, np.float64),
                                                    np.asarray(lm.v, np.float64)], 1)
                    fr.model_msg = self.models.get(s)
                setattr(fr, slot, msg)
        return keep

    def _on_diagnostics(self, msg) -> None:
        now = time.monotonic()
        with self.lock:
            for st in msg.status:
                level = diag.level_name(st.level)
                self.diagnostics[st.name] = dict(level=level, message=st.message, time=now,
                                                 values={kv.key: kv.value for kv in st.values})
                seen = self.levels_seen.setdefault(st.name, {})
                seen[level] = seen.get(level, 0) + 1

    # -- queries (main thread) --
    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.arrivals.get(topic, ()))

    def first(self, topic: str) -> Optional[float]:
        with self.lock:
            a = self.arrivals.get(topic)
            return a[0] if a else None

    def begin(self, category: str, since: float) -> None:
        with self.lock:
            self.phase = _Phase(category, since)
            self.phases.append(self.phase)

    def complete_frames(self, phase: _Phase, edited: bool = True) -> List[CategoryFrame]:
        """The phase's frames with avatar colour, depth and points: the edited ones (``edited``)
        or the ones passed through unedited."""
        with self.lock:
            return [f for f in phase.frames.values() if f.complete() and f.edited() == edited]

    def status(self, node: str) -> Optional[dict]:
        """The latest status of ``node`` (status names are ``"<node name>: <kind>"``)."""
        with self.lock:
            return next((s for n, s in self.diagnostics.items() if n.split(":")[0].strip() == node), None)


# ---- the run ------------------------------------------------------------------------------------
def _wait(cond: Callable[[], bool], deadline: float, graph, stage_of_death: Dict[str, str]) -> bool:
    """Poll ``cond`` until it holds or the deadline; a node that exits raises DemoFailure naming it."""
    while True:
        if cond():
            return True
        dead = [n for n, ok in graph.alive().items() if not ok]
        if dead:
            raise DemoFailure(stage_of_death.get(dead[0], dead[0]), f"the {dead[0]} node exited")
        if time.monotonic() >= deadline:
            return bool(cond())
        time.sleep(0.02)


def _set_expression(node, client, category: str, timeout_s: float) -> None:
    """``ros2 param set /editor expression <category>`` through the editor's set_parameters service."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    req = SetParameters.Request()
    req.parameters = [Parameter("expression", value=category).to_parameter_msg()]
    future = client.call_async(req)
    end = time.monotonic() + timeout_s
    while not future.done():
        if time.monotonic() > end:
            raise DemoFailure("editor", f"set_parameters(expression={category}) got no answer in "
                                        f"{timeout_s:.0f} s")
        time.sleep(0.01)
    res = future.result().results[0]
    if not res.successful:
        raise DemoFailure("editor", f"set_parameters(expression={category}) refused: {res.reason}")


def run_demo(out: Optional[Path] = None, categories: Optional[Sequence[str]] = None,
             frames_per_category: int = FRAMES_PER_CATEGORY,
             node_params: Optional[Dict[str, Dict[str, str]]] = None,
             stage_timeout_s: float = STAGE_TIMEOUT_S, start_timeout_s: float = START_TIMEOUT_S,
             category_timeout_s: float = CATEGORY_TIMEOUT_S,
             log: Callable[[str], None] = print) -> Dict[str, object]:
    """Run the whole graph on the embedded sample, cycle the categories, write the result folder.

    :param out: result folder (created; default ``build/demo/<YYYYmmdd-HHMMSS>``).
    :param categories: expression categories to cycle through, in order (default all seven).
    :param frames_per_category: edited frames kept per category (the montage shows the last).
    :param node_params: extra ROS parameters per node, applied last (tuning, fault tests).
    :param stage_timeout_s: deadline (s) for each stage's first output after the previous stage's.
    :param start_timeout_s: deadline (s) for the first camera frame after the nodes start.
    :param category_timeout_s: deadline (s) for a category's edited frames after its change.
    :param log: where progress lines and the summary go.
    :returns: the summary dict; ``returncode`` 0 when every stage and category produced output,
        else 1 with ``failed_stage`` and ``reason`` (2: the embedded sample is not installed).
    """
    from facediff_ros.nodes.capture import SAMPLE_RECORDING
    from facediff_ros.synthetic import recording

    t_start = time.monotonic()
    cats = [str(c) for c in (CATEGORIES if categories is None else categories)]
    bad = [c for c in cats if c not in CATEGORIES]
    if not cats or bad:
        raise ValueError(f"categories: expected names from {', '.join(CATEGORIES)}, got {cats}")
    if int(frames_per_category) < 1:
        raise ValueError(f"frames_per_category: expected >= 1, got {frames_per_category}")
    gt_path = recording.ground_truth_path(SAMPLE_RECORDING)
    if not (SAMPLE_RECORDING.is_file() and gt_path.is_file()):
        reason = f"the embedded sample is not installed ({SAMPLE_RECORDING}, {gt_path})"
        log(f"facediff demo: FAILED: {reason}")
        return {"returncode": 2, "reason": reason, "failed_stage": "capture"}
    out = Path(out) if out is not None else DEFAULT_OUT / datetime.now().strftime("%Y%m%d-%H%M%S")
    specs = graph_specs(cats[0], node_params)  # ValueError for unknown nodes: before anything starts

    os.environ.setdefault("ROS_LOG_DIR", str(ROOT / "build" / "ros_log"))
    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import SingleThreadedExecutor

    from facediff_ros.adapters.dds import configure_environment
    configure_environment()  # before rclpy.init: Fast DDS reads it with the first participant
    env = configure_environment(dict(os.environ))
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    gt = recording.load_ground_truth(SAMPLE_RECORDING)
    frames = sample_frames_by_content(SAMPLE_RECORDING)  # which sample frame a camera image is
    log(f"facediff demo: capture -> landmarks -> fitting -> editor as 4 processes on {SAMPLE_RECORDING.name} "
        f"({int(gt['intrinsics'][4])}x{int(gt['intrinsics'][5])}, {len(gt['frame'])} frames, looping); "
        f"categories {', '.join(cats)}; ROS logs in {os.environ['ROS_LOG_DIR']}")

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("facediff_demo", context=ctx)
    seen = Listener(node, frames)
    client = node.create_client(SetParameters, "/editor/set_parameters")
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="demo-spin", daemon=True)
    spinner.start()
    graph = None
    timings: Dict[str, float] = {}
    failure: Optional[DemoFailure] = None
    stops: Dict[str, str] = {}
    node_of_stage = {s: s for s in STAGES}
    try:
        graph = start_graph(specs, env)
        t0 = time.monotonic()
        deadline = t0 + start_timeout_s
        for stage in STAGES:
            topic, nothing = STAGE_OUTPUT[stage]
            if not _wait(lambda: seen.count(topic) > 0, deadline, graph, node_of_stage):
                limit = start_timeout_s if stage == "capture" else stage_timeout_s
                raise DemoFailure(stage, f"{nothing} ({topic}) within {limit:.0f} s")
            timings[f"{stage}_first_output_s"] = seen.first(topic) - t0
            log(f"  {stage:<9} first output on {topic} {seen.first(topic) - t0:.1f} s after the start")
            deadline = time.monotonic() + stage_timeout_s
        if not _wait(client.service_is_ready, time.monotonic() + stage_timeout_s, graph, node_of_stage):
            raise DemoFailure("editor", "the editor's set_parameters service did not appear")
        t_cycle = time.monotonic()
        for cat in cats:
            _set_expression(node, client, cat, stage_timeout_s)
            seen.begin(cat, time.monotonic())
            ph = seen.phase
            ok = _wait(lambda: len(seen.complete_frames(ph)) >= frames_per_category,
                       time.monotonic() + category_timeout_s, graph, node_of_stage)
            n = len(seen.complete_frames(ph))
            if n == 0:
                raise DemoFailure("editor", f"category {cat!r}: no edited frame (avatar colour, depth and "
                                  f"points of one camera frame) within {category_timeout_s:.0f} s of the "
                                  f"change")
            log(f"  {cat:<9} {n} edited frame{'s' if n > 1 else ''}" + ("" if ok else
                f" (of {frames_per_category} wanted within {category_timeout_s:.0f} s)"))
        window = (t_cycle, time.monotonic())
        timings["categories_s"] = window[1] - t_cycle
        with seen.lock:
            seen.phase = None
        # Final counters: one more diagnostics round from each node before they stop.
        t1 = time.monotonic()
        _wait(lambda: all((seen.status(n) or {"time": -1})["time"] > t1 for n in NODES),
              t1 + 4 * DIAGNOSTICS_PERIOD_S + 2.0, graph, node_of_stage)
    except DemoFailure as exc:
        failure = exc
    finally:
        if graph is not None:
            stops = graph.stop(STOP_TIMEOUT_S)
        executor.shutdown()
        spinner.join(timeout=5.0)
        node.destroy_node()
        ctx.try_shutdown()
        from facediff_ros.adapters.dds import clean_stale_shm
        clean_stale_shm()
    timings["graph_s"] = time.monotonic() - t_start

    summary: Dict[str, object] = {"sample": str(SAMPLE_RECORDING), "categories": cats,
                                  "processes": stops, "timings_s": timings}
    if failure is not None:
        summary.update(returncode=1, failed_stage=failure.stage, reason=str(failure))
        log(f"facediff demo: FAILED at the {failure.stage} stage: {failure}")
        name = failure.stage if failure.stage in NODES else None
        if graph is not None and name:
            log(f"--- last console lines of the {name} node:\n{graph.tail(name, 20)}")
        log("nodes: " + ", ".join(f"{n} {how}" for n, how in stops.items()))
        return summary

    from facediff_ros import demo_results
    t_w = time.monotonic()
    summary.update(demo_results.write_results(out, seen, gt, window))
    summary["timings_s"]["write_s"] = time.monotonic() - t_w
    summary["timings_s"]["total_s"] = time.monotonic() - t_start
    summary.update(returncode=0, failed_stage=None, reason="", out=str(out))
    demo_results.write_summary_json(out, summary)
    log(demo_results.format_summary(summary))
    return summary
