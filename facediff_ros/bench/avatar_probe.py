"""The benchmark's own ROS node: receives /avatar/points (latency from the camera stamp) and the
nodes' /diagnostics, and can publish camera frames + FaceModels in the editor's place of the graph.

Latency is this process's wall clock at the cloud's arrival (after rclpy has deserialised it)
minus the cloud's header stamp, which is the camera frame's (the capture node stamps with the
system clock by default, the feeder here with ``time.time_ns()``); both clocks are the same
machine's.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Tuple

from facediff_ros.bench.recorded_fits import FittedFrame

FRAME_ID = "camera_color_optical_frame"


def _values(status) -> Dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


class AvatarProbe:
    """Subscriptions (and optional camera publishers) of one bench node, spun on a thread."""

    def __init__(self, context, name: str = "facediff_bench_probe", feed: bool = False):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        from facediff_ros.adapters import topics
        from facediff_ros.msg import FaceModel

        import rclpy
        self.node = rclpy.create_node(name, context=context)
        self._lock = threading.Lock()
        self.arrivals: List[Tuple[int, int]] = []  # (arrival ns, stamp ns)
        self.diagnostics: Dict[str, Dict[str, str]] = {}  # status name -> last values
        self.messages: Dict[str, str] = {}
        qos = qos_profile_sensor_data
        self.node.create_subscription(PointCloud2, "/" + topics.AVATAR_POINTS, self._on_cloud, qos)
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diag, 50)
        self.pubs = {}
        if feed:
            cam = topics.camera_topics("camera", "camera")
            self.pubs = {"color": self.node.create_publisher(Image, cam.color, qos),
                         "depth": self.node.create_publisher(Image, cam.depth, qos),
                         "info": self.node.create_publisher(CameraInfo, cam.color_info, qos),
                         "model": self.node.create_publisher(FaceModel, topics.FACE_MODEL, qos)}
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - context shut down while spinning
            pass

    def _on_cloud(self, msg) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            self.arrivals.append((now, stamp))

    def _on_diag(self, msg) -> None:
        with self._lock:
            for s in msg.status:
                self.diagnostics[s.name] = _values(s)
                self.messages[s.name] = s.message

    def received(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def since(self, t_ns: int) -> List[Tuple[int, int]]:
        """Arrivals at or after wall time ``t_ns``."""
        with self._lock:
            return [a for a in self.arrivals if a[0] >= t_ns]

    def diag(self, name_part: str) -> Dict[str, str]:
        """The last diagnostics values of the status whose name contains ``name_part``."""
        with self._lock:
            for k, v in self.diagnostics.items():
                if name_part in k:
                    return dict(v)
        return {}

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()


class FrameFeeder:
    """Camera messages + FaceModel of recorded frames, restamped with the wall clock per publish."""

    def __init__(self, probe: AvatarProbe, frames: List[FittedFrame]):
        from builtin_interfaces.msg import Time

        from facediff_ros.adapters import face_model as fm
        from facediff_ros.adapters.camera_frames import frame_messages
        from facediff_ros.core.face.morphable_model import MorphableModel

        names = list(MorphableModel.load().expression_names)
        self.pubs = probe.pubs
        self.sets = []
        for f in frames:
            m = frame_messages(f.frame, Time(), FRAME_ID, "16UC1")
            model = None if f.fit is None else fm.to_msg(f.fit, m.color.header, names)
            self.sets.append((m.color, m.depth, m.info, model))
        self.i = 0
        self.published = 0

    def publish_next(self) -> int:
        """Publish the next frame (looping) stamped now; returns the stamp in ns."""
        color, depth, info, model = self.sets[self.i % len(self.sets)]
        self.i += 1
        now = time.time_ns()
        sec, nsec = divmod(now, 1_000_000_000)
        for msg in (color, depth, info, model):
            if msg is not None:
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nsec
        # Order of a real graph: the camera's messages first, the fit of the frame after them.
        self.pubs["info"].publish(info)
        self.pubs["depth"].publish(depth)
        self.pubs["color"].publish(color)
        if model is not None:
            self.pubs["model"].publish(model)
        self.published += 1
        return now


def diag_delta(before: Dict[str, str], after: Dict[str, str], prefixes=("drop_", "sync_", "passthrough",
                                                                        "frames_", "lost")) -> Dict[str, int]:
    """Counter increases between two diagnostics snapshots, for keys with these prefixes."""
    out = {}
    for k, v in after.items():
        if not k.startswith(prefixes):
            continue
        try:
            d = int(float(v)) - int(float(before.get(k, 0)))
        except ValueError:
            continue
        out[k] = d
    return out


def stage_ms(values: Dict[str, str]) -> Dict[str, float]:
    """The ``*_ms`` stage timings (smoothed means) of a diagnostics snapshot."""
    out = {}
    for k, v in values.items():
        if k.endswith("_ms"):
            try:
                out[k] = round(float(v), 3)
            except ValueError:
                pass
    return out
