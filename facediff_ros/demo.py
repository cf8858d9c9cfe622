"""``facediff demo`` (``make demo``): the built part of the graph on the embedded sample.

Starts the **landmarks** and **capture** nodes as real processes (as ``ros2 run`` would), the
capture node playing the embedded recording of the synthetic actor (facediff_ros/data/sample.db3,
``stamp_source:=device`` so each message carries the frame's recorded timestamp and finds it in
the ground truth), and listens in this process to the camera topics, ``/face/landmarks`` and
``/diagnostics``. Once every frame of the sample has its landmarks (or every frame has been played
:data:`MAX_PLAYS` times, or the deadline has passed) it stops both nodes with SIGINT and prints a
summary: frames captured and landmarks published, the publish rate, the fraction of landmarks with
valid depth, their error against the actor's ground truth (sample.gt.npz;
:mod:`facediff_ros.synthetic.landmark_eval`), the nodes' own per-stage timings and the diagnostics
levels they reported.

The recording plays in a loop (``loop:=true``), as in the integration test. Played once
(``loop:=false``) it loses frames: the capture node publishes as soon as its source opens, and
DDS discovery of its participant by the other two took 0.2-3 s here (frames published before a
reader has matched are lost, best effort -- up to the whole 1 s sample); and in about half the
starts librealsense's pipeline queue replaces the playback's first frame with the second before
the first read. Plays are counted once frames reach this process and landmarks come back; each
frame is evaluated once (its first landmarks).

Success: landmarks for at least :data:`MIN_LANDMARK_FRACTION` of the frames. Nothing is written
to disk but the nodes' ROS logs (``ROS_LOG_DIR``, default build/ros_log): faces are biometric data.
The fitting and editor nodes exist but are not in this demo yet: starting the whole graph from one
description is the bringup work (README, "What is not built yet").
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from facediff_ros.adapters import landmarks as landmarks_adapter
from facediff_ros.adapters import topics
from facediff_ros.core.landmarks.pipeline import STAGES
from facediff_ros.nodes import diagnostics as diag
from facediff_ros.nodes.landmarks import LandmarksParams
from facediff_ros.nodes.spin import spin_until, stamp_ns

ROOT = Path(__file__).resolve().parents[1]
MIN_LANDMARK_FRACTION = 0.9
START_TIMEOUT_S = 60.0    # landmark node up (rclpy + MediaPipe: 0.7 s here; far more on a busy machine)
END_SLACK_S = 20.0        # default collection deadline: the recording's length plus this
MAX_PLAYS = 2             # plays (after discovery) before a frame without landmarks is given up
STOP_TIMEOUT_S = 10.0     # SIGINT -> exit; then SIGKILL as a last resort
DIAGNOSTICS_PERIOD_S = 0.25  # the nodes' /diagnostics period here: final counters arrive sooner
# The default graph's names, from the one place that builds them (both nodes start with their
# default camera_namespace/camera_name; this process sits in the root namespace).
CAMERA_TOPICS = topics.camera_topics(LandmarksParams.camera_namespace, LandmarksParams.camera_name)
COLOR_TOPIC = "/" + CAMERA_TOPICS.color
LANDMARKS_TOPIC = "/" + topics.FACE_LANDMARKS


class _NodeProcess:
    """A node run as ``python -m facediff_ros.nodes.<name> --ros-args ...``; its console kept in memory."""

    def __init__(self, name: str, ros_args: List[str], env: Dict[str, str]):
        self.name = name
        self.lines: collections.deque = collections.deque(maxlen=200)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"facediff_ros.nodes.{name}", "--ros-args", *ros_args], env=env,
            cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace")
        # Drained on a thread: a full pipe would block the node.
        self._reader = threading.Thread(target=self._drain, name=f"{name}-console", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """SIGINT (rclpy's clean shutdown), wait; SIGKILL only if it does not exit. How it ended."""
        if self.proc.poll() is not None:
            how = f"had exited ({self.proc.returncode})"
        else:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                how = f"stopped by SIGINT ({self.proc.returncode})"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                how = f"killed: no exit {STOP_TIMEOUT_S:.0f} s after SIGINT"
        self._reader.join(timeout=2.0)
        return how

    def tail(self, n: int = 20) -> str:
        return "\n".join(f"  [{self.name}] {line}" for line in list(self.lines)[-n:])


class _Listener:
    """This process's view of the graph: what arrived on each topic, and when (monotonic s)."""

    def __init__(self, node, lookup):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        from facediff_ros.msg import FaceLandmarks

        self.lookup = lookup
        # topic -> stamp ns -> arrival times (one per play of the frame)
        self.arrivals: Dict[str, Dict[int, List[float]]] = {
            k: collections.defaultdict(list) for k in ("color", "depth", "color_info", "depth_info",
                                                       "landmarks")}
        # stamp ns -> the first landmarks: (uv (478, 2) px, points (478, 3) m, valid (478,))
        self.landmarks: Dict[int, tuple] = {}
        self.latency_s: List[float] = []        # colour image -> its landmarks, at this process
        self.diagnostics: Dict[str, dict] = {}  # status name -> latest {level, message, values, time}
        # status name -> level (in order of first appearance) -> [count, latest message]
        self.levels_seen: Dict[str, Dict[str, list]] = {}
        cam = CAMERA_TOPICS
        streams = (("color", Image, cam.color), ("depth", Image, cam.depth),
                   ("color_info", CameraInfo, cam.color_info), ("depth_info", CameraInfo, cam.depth_info))
        for key, msg_type, topic in streams:
            node.create_subscription(msg_type, "/" + topic, self._keeper(key), qos_profile_sensor_data)
        node.create_subscription(FaceLandmarks, LANDMARKS_TOPIC, self._on_landmarks, qos_profile_sensor_data)
        node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, 10)

    def _keeper(self, key: str) -> Callable:
        def keep(msg) -> None:
            self.arrivals[key][stamp_ns(msg)].append(time.monotonic())
        return keep

    def _on_landmarks(self, msg) -> None:
        now, stamp = time.monotonic(), stamp_ns(msg)
        self.arrivals["landmarks"][stamp].append(now)
        color = self.arrivals["color"].get(stamp)
        if color:
            self.latency_s.append(now - color[-1])
        if stamp not in self.landmarks:
            lm = landmarks_adapter.from_msg(msg)
            self.landmarks[stamp] = (lm.uv.astype(np.float64), lm.points, lm.valid)

    def _on_diagnostics(self, msg) -> None:
        now = time.monotonic()
        for s in msg.status:
            level = diag.level_name(s.level)
            self.diagnostics[s.name] = dict(level=level, message=s.message, time=now,
                                            values={kv.key: kv.value for kv in s.values})
            seen = self.levels_seen.setdefault(s.name, {}).setdefault(level, [0, ""])
            seen[0] += 1
            seen[1] = s.message

    def status(self, suffix: str) -> Optional[dict]:
        """The latest status whose name ends with ``suffix`` (``": capture"``, ``": landmarks"``)."""
        return next((s for n, s in self.diagnostics.items() if n.endswith(suffix)), None)

    def frames(self, key: str, since: float = -np.inf) -> Dict[int, int]:
        """Sample frame index -> times it arrived on ``key`` at or after ``since`` (monotonic s);
        stamps of no sample frame are left out."""
        out: Dict[int, int] = {}
        for stamp, times in self.arrivals[key].items():
            i = self.lookup.index_of(stamp)
            n = sum(t >= since for t in times)
            if i is not None and n:
                out[i] = out.get(i, 0) + n
        return out

    def unknown_stamps(self) -> int:
        return sum(self.lookup.index_of(s) is None for s in self.arrivals["color"])

    def all_times(self, key: str) -> List[float]:
        return [t for times in self.arrivals[key].values() for t in times]


def _rate_hz(times) -> float:
    """1 / the median interval between arrivals: the streaming rate, blind to the discovery gap."""
    dt = np.diff(np.sort(np.asarray(list(times), np.float64)))
    dt = dt[dt > 0]
    return float(1.0 / np.median(dt)) if dt.size else float("nan")


def _stage_ms(status: Optional[dict]) -> Dict[str, float]:
    """Stage -> ms from a status's ``<stage>_ms`` values; the landmark pipeline's stages first, in order."""
    if status is None:
        return {}
    ms = {k[:-3]: float(v) for k, v in status["values"].items() if k.endswith("_ms")}
    return {k: ms[k] for k in sorted(ms, key=lambda k: (STAGES.index(k) if k in STAGES else len(STAGES), k))}


def _int_value(status: Optional[dict], key: str) -> Optional[int]:
    try:
        return int(status["values"][key]) if status is not None else None
    except (KeyError, ValueError):
        return None


def run_demo(duration_s: Optional[float] = None, frames: Optional[int] = None,
             log: Callable[[str], None] = print) -> Dict[str, object]:
    """Run capture + landmarks on the embedded sample, print the summary, return it as a dict.

    :param duration_s: longest time (s) to collect frames after the capture node starts; default the
        recording's length plus :data:`END_SLACK_S`.
    :param frames: run on the sample's first ``frames`` frames only (default: all of them).
    :param log: where the progress lines and the summary go.
    :returns: the summary; ``returncode`` 0 when landmarks arrived for >= 90% of the frames, else
        non-zero with ``reason``.
    """
    from facediff_ros.synthetic import landmark_eval, recording
    from facediff_ros.nodes.capture import SAMPLE_RECORDING

    t_start = time.monotonic()
    gt_path = recording.ground_truth_path(SAMPLE_RECORDING)
    if not (SAMPLE_RECORDING.is_file() and gt_path.is_file()):
        reason = f"the embedded sample is not installed ({SAMPLE_RECORDING}, {gt_path})"
        log(f"facediff demo: {reason}")
        return {"returncode": 2, "reason": reason}
    gt = recording.load_ground_truth(SAMPLE_RECORDING)
    lookup = landmark_eval.FrameLookup(gt)
    n_sample = len(lookup)
    n_want = n_sample if frames is None else int(frames)
    if not 1 <= n_want <= n_sample:
        raise ValueError(f"frames: expected 1..{n_sample} (the sample's frames), got {frames}")
    length_s = float(gt["timestamp"][-1] - gt["timestamp"][0])
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s: expected > 0 s, got {duration_s}")
    collect_s = float(duration_s) if duration_s is not None else length_s + END_SLACK_S

    # ROS logs (the only files written) under build/ unless the user chose a place.
    os.environ.setdefault("ROS_LOG_DIR", str(ROOT / "build" / "ros_log"))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from facediff_ros.adapters.dds import configure_environment
    configure_environment()  # before rclpy.init: Fast DDS reads it with the first participant
    env = configure_environment(dict(os.environ))
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"

    log(f"facediff demo: {n_want} of the {n_sample} frames of {SAMPLE_RECORDING.name} "
        f"({int(gt['intrinsics'][4])}x{int(gt['intrinsics'][5])}, {length_s + 1 / 30:.1f} s) "
        f"through capture -> landmarks; ROS logs in {os.environ['ROS_LOG_DIR']}")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("facediff_demo", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    seen = _Listener(node, lookup)
    procs: Dict[str, _NodeProcess] = {}
    stops: Dict[str, str] = {}
    failure = ""
    timings: Dict[str, float] = {}
    publishers: Dict[str, List[str]] = {}
    wanted = set(range(n_want))

    def died() -> bool:
        return any(not p.alive() for p in procs.values())

    def covered() -> bool:
        # Every frame's images and landmarks have reached this process.
        return wanted <= set(seen.frames("landmarks")) and wanted <= set(seen.frames("color"))

    def graph_matched() -> bool:
        # Frames reach this process and the landmark node reaches it: from now on every frame
        # played goes through the whole graph.
        return bool(seen.arrivals["color"]) and bool(seen.arrivals["landmarks"])

    def played_enough(since: float) -> bool:
        plays = seen.frames("color", since)
        return all(plays.get(i, 0) >= MAX_PLAYS for i in wanted)

    def status_after(suffix: str, t: float) -> Callable[[], bool]:
        return lambda: (seen.status(suffix) or {"time": -1.0})["time"] > t

    try:
        # Landmarks first: its publisher exists once MediaPipe is loaded; then no frame is lost to
        # its start-up.
        t0 = time.monotonic()
        procs["landmarks"] = _NodeProcess("landmarks", [
            "-p", f"diagnostics_period_s:={DIAGNOSTICS_PERIOD_S}"], env)
        ready = spin_until(executor, lambda: node.count_publishers(LANDMARKS_TOPIC) > 0
                           and node.count_subscribers(COLOR_TOPIC) > 1,
                           t0 + START_TIMEOUT_S, died)
        timings["landmarks_start_s"] = time.monotonic() - t0
        if not ready:
            failure = (f"the landmark node did not come up within {START_TIMEOUT_S:.0f} s"
                       if procs["landmarks"].alive() else "the landmark node exited at start-up")
        else:
            t0 = time.monotonic()
            procs["capture"] = _NodeProcess("capture", [
                "-p", "stamp_source:=device", "-p", "loop:=true",
                "-p", f"diagnostics_period_s:={DIAGNOSTICS_PERIOD_S}"], env)
            deadline = t0 + collect_s
            # DDS discovery of a new participant takes 0.2-3 s here; frames played before it are
            # lost to whichever reader has not matched yet (best effort), so plays count from then.
            spin_until(executor, graph_matched, deadline, died)
            t_matched = time.monotonic()
            spin_until(executor, lambda: covered() or played_enough(t_matched), deadline, died)
            # The last frame's landmarks may still be on their way.
            spin_until(executor, covered, min(deadline, time.monotonic() + 1.0), died)
            timings["capture_s"] = time.monotonic() - t0
            timings["first_frame_s"] = min(seen.all_times("color"), default=float("nan")) - t0
            timings["matched_s"] = t_matched - t0
            if died():
                failure = next(f"the {n} node exited early" for n, p in procs.items() if not p.alive())
            elif not (covered() or played_enough(t_matched)):
                failure = f"the sample's frames did not all arrive within {collect_s:.0f} s"
            publishers = {topic: sorted(f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in
                                        node.get_publishers_info_by_topic(topic))
                          for topic in (LANDMARKS_TOPIC, COLOR_TOPIC)}
            # Final counters and timings: the capture node's last status, then the landmark node's
            # once no more input arrives.
            t1 = time.monotonic()
            spin_until(executor, status_after(": capture", t1), t1 + 2 * DIAGNOSTICS_PERIOD_S + 1.0, died)
            stops["capture"] = procs["capture"].stop()
            t1 = time.monotonic()
            spin_until(executor, status_after(": landmarks", t1), t1 + 2 * DIAGNOSTICS_PERIOD_S + 1.0)
    finally:
        for name in ("capture", "landmarks"):  # the source first: the landmark node then sees no input
            if name in procs and name not in stops:
                stops[name] = procs[name].stop()
        executor.shutdown()
        node.destroy_node()
        ctx.try_shutdown()

    # ---- the summary ---------------------------------------------------------------------------
    plays = seen.frames("color")
    captured = wanted & set(plays)
    streams = ("color", "depth", "color_info", "depth_info")
    complete = wanted & set.intersection(*(set(seen.frames(k)) for k in streams))
    table = landmark_eval.load_table()
    intr = landmark_eval.ground_truth_intrinsics(gt)
    per_frame = []
    for stamp, (uv, points, valid) in seen.landmarks.items():
        i = lookup.index_of(stamp)
        if i in wanted:
            per_frame.append(landmark_eval.frame_errors(uv, points, valid, gt, i, *(table or ()),
                                                        intrinsics=intr))
    per_frame.sort(key=lambda e: e.index)
    lm_frames = {e.index for e in per_frame}
    errors = landmark_eval.summarize(per_frame) if per_frame else None
    cap, lmk = seen.status(": capture"), seen.status(": landmarks")
    summary: Dict[str, object] = {
        "sample": str(SAMPLE_RECORDING),
        "frames_in_sample": n_sample,
        "frames_requested": n_want,
        "frames_captured": len(captured),
        "frames_complete": len(complete),
        "frames_missing": sorted(wanted - lm_frames),
        "plays": max(plays.values(), default=0),
        "frames_unknown_stamp": seen.unknown_stamps(),
        "capture_frames_published": _int_value(cap, "frames"),
        "landmarks_published": len(lm_frames),
        "landmarks_node_faces_out": _int_value(lmk, "faces_out"),
        "landmarks_node_no_face": _int_value(lmk, "no_face") or 0,
        "landmarks_node_drops": {k: int(v) for k, v in (lmk or {"values": {}})["values"].items()
                                 if k.startswith(("drop_", "sync_")) and v.isdigit() and int(v)},
        "capture_rate_hz": _rate_hz(seen.all_times("color")),
        "landmarks_rate_hz": _rate_hz(seen.all_times("landmarks")),
        "latency_ms_median": float(np.median(seen.latency_s) * 1000.0) if seen.latency_s else float("nan"),
        "errors": errors.as_dict() if errors is not None else None,
        "stage_ms": {"capture": _stage_ms(cap), "landmarks": _stage_ms(lmk)},
        "diagnostics_levels": {n: {lv: {"count": c, "last_message": m} for lv, (c, m) in v.items()}
                               for n, v in sorted(seen.levels_seen.items())},
        "diagnostics_final": {n: f"{d['level']}: {d['message']}"
                              for n, d in sorted(seen.diagnostics.items())},
        "processes": stops,
        "publishers": publishers,
        "timings_s": dict(timings, total_s=time.monotonic() - t_start),
    }
    fraction = len(lm_frames) / n_want
    if failure:
        rc, reason = 1, failure
    elif fraction < MIN_LANDMARK_FRACTION:
        rc, reason = 1, (f"landmarks for {len(lm_frames)} of {n_want} frames ({fraction:.0%} < "
                         f"{MIN_LANDMARK_FRACTION:.0%})")
    else:
        rc, reason = 0, ""
    summary.update(returncode=rc, reason=reason)
    log(format_summary(summary))
    if rc:
        for p in procs.values():
            log(f"--- last console lines of the {p.name} node:\n{p.tail()}")
    return summary


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def format_summary(s: Dict[str, object]) -> str:
    """The human summary of :func:`run_demo`'s dict."""
    lines = [f"frames captured      {s['frames_captured']}/{s['frames_requested']} (colour, depth and both "
             f"CameraInfo for {s['frames_complete']}; played up to {s['plays']}x, the capture node "
             f"counted {_fmt(s['capture_frames_published'], 'd')} published)"]
    if s["frames_unknown_stamp"]:
        lines.append(f"  warning: {s['frames_unknown_stamp']} colour frames with stamps of no sample frame "
                     f"(another camera publishing on this ROS_DOMAIN_ID?)")
    drops = ", ".join(f"{k} {v}" for k, v in s["landmarks_node_drops"].items()) or "none"
    missing = f", none for frames {s['frames_missing']}" if s["frames_missing"] else ""
    lines.append(f"landmarks published  {s['landmarks_published']}/{s['frames_requested']} frames{missing} "
                 f"(landmark node: {_fmt(s['landmarks_node_faces_out'], 'd')} published, no face "
                 f"{s['landmarks_node_no_face']}, drops: {drops})")
    lines.append(f"publish rate         (1 / median interval at this process) capture "
                 f"{_fmt(s['capture_rate_hz'], '.1f')} Hz, landmarks "
                 f"{_fmt(s['landmarks_rate_hz'], '.1f')} Hz; colour -> landmarks latency median "
                 f"{_fmt(s['latency_ms_median'], '.1f')} ms")
    e = s["errors"]
    if e:
        lines.append(f"valid depth          {e['valid_fraction']:.1%} of the landmarks")
        lines.append(f"error vs ground truth, 68-point subset ({len(e['per_frame_2d_px'])} frames): "
                     f"mean 2D {_fmt(e['mean_2d_px'], '.2f')} px (p90 {_fmt(e['p90_2d_px'], '.2f')}), "
                     f"mean 3D {_fmt(e['mean_3d_mm'], '.2f')} mm (p90 {_fmt(e['p90_3d_mm'], '.2f')})")
        if e.get("table_mean_2d_px") is not None:
            lines.append(f"error vs ground truth, correspondence table ({e['table_landmarks']} stable "
                         f"landmarks): mean 2D {_fmt(e['table_mean_2d_px'], '.2f')} px, "
                         f"mean 3D {_fmt(e['table_mean_3d_mm'], '.2f')} mm")
        else:
            lines.append("error vs ground truth, correspondence table: table not installed")
    for name, stages in s["stage_ms"].items():
        text = ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) or "no diagnostics received"
        lines.append(f"{name} stages (ms, moving average from /diagnostics): {text}")
    for name, levels in s["diagnostics_levels"].items():
        text = "; ".join(f"{lvl} x{v['count']} (last: {v['last_message']})" for lvl, v in levels.items())
        lines.append(f"diagnostics '{name}': {text}")
    t = s["timings_s"]
    lines.append(f"time                 landmark node up in {_fmt(t.get('landmarks_start_s'), '.1f')} s; "
                 f"after the capture node's start: first frame here {_fmt(t.get('first_frame_s'), '.1f')} s, "
                 f"whole graph matched {_fmt(t.get('matched_s'), '.1f')} s (DDS discovery), "
                 f"last frame needed {_fmt(t.get('capture_s'), '.1f')} s; "
                 f"total {t['total_s']:.1f} s")
    lines.append("nodes                " + ", ".join(f"{n} {how}" for n, how in s["processes"].items()))
    for topic, names in s["publishers"].items():
        if len(names) > 1:
            lines.append(f"  warning: {len(names)} publishers on {topic} ({', '.join(names)}): another graph "
                         f"on this ROS_DOMAIN_ID may have mixed into these figures")
    lines.append("not in this demo yet the fitting and editor nodes (/face/model, /avatar/points): built, "
                 "not yet started as one graph; see README, 'What is not built yet'")
    lines.append("result               " + ("OK" if s["returncode"] == 0 else f"FAILED: {s['reason']}"))
    return "\n".join(lines)
