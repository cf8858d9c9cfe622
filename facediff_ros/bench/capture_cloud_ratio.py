"""Capture -> point-cloud bytes: the package's path vs what a RealSense user writes today.

Both read the same RealSense recording through pyrealsense2 playback (as fast as they ask) and
end with the bytes of an organised depth_image_proc-layout cloud (x y z at 0 4 8, rgb at 16,
32 bytes a point, NaN where there is no depth):

- **package**: :class:`~facediff_ros.core.capture.sources.RecordingSource` ``read()`` (the
  capture node's source) and the editor node's cloud packing
  (``images.depth_to_meters`` -> ``adapters.cloud.depth_cloud_msg``: the PointCloud2 with its
  ``data`` filled, header and fields -- more than the user's code makes);
- **pyrealsense2 user**: ``rs.pipeline`` playback, ``rs.align(rs.stream.color)``,
  ``rs.pointcloud().calculate(depth)``, numpy packing of its vertices and the aligned colour
  into the same layout (z = 0 -> NaN), ``tobytes()``.

``like_for_like``: the package runs ``rs.align`` too (``force_align``, as a real camera's frames
need). ``as_shipped``: the package's default, which skips ``rs.align`` for recordings whose depth
is already registered to colour (the synthetic actor's); the user's code aligns regardless. The
two paths run in alternating blocks so that other load on the machine hits both alike; the ratio
is package / user of the median wall time per frame; ``cpu_ratio`` the same for the process's CPU
time (all threads, playback's included), steadier when other jobs load the machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from facediff_ros.core.cloud import XYZRGB32_DTYPE


def synthetic_recording(folder: Path, frames: int = 30, width: int = 640, height: int = 480) -> Path:
    """A RealSense recording of the synthetic actor (not a person) at ``width`` x ``height``."""
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
    from facediff_ros.synthetic.recording import write_recording
    actor = SyntheticActor(ActorConfig(seed=3, num_frames=frames, width=width, height=height))
    path, _ = write_recording(Path(folder) / f"bench_{width}x{height}.db3", actor)
    return path


class PackagePath:
    """The capture node's recording source + the editor node's cloud packing."""

    name = "package"

    def __init__(self, path: str, force_align: bool):
        from facediff_ros.core.capture import sources
        config = sources.RecordingConfig(path=str(path), loop=True, realtime=False, force_align=force_align)
        self.source = sources.RecordingSource(config)
        self.source.open()
        self.stages: Dict[str, List[float]] = {"read": [], "pack": []}

    def frame(self):
        from facediff_ros.core import images
        from std_msgs.msg import Header

        from facediff_ros.adapters.cloud import depth_cloud_msg
        t0 = time.perf_counter()
        f = self.source.read()
        t1 = time.perf_counter()
        depth_m = images.depth_to_meters(f.depth, "16UC1")
        data = depth_cloud_msg(depth_m, f.intrinsics, f.color, "depth_image_proc", Header()).data
        t2 = time.perf_counter()
        self.stages["read"].append(t1 - t0)
        self.stages["pack"].append(t2 - t1)
        return data

    def close(self) -> None:
        self.source.close()


class RealSenseUserPath:
    """pyrealsense2 playback + rs.align + rs.pointcloud + numpy packing, as its examples do it."""

    name = "pyrealsense2"

    def __init__(self, path: str):
        import pyrealsense2 as rs
        self.rs = rs
        self.pipe = rs.pipeline()
        cfg = rs.config()
        cfg.enable_device_from_file(str(path), repeat_playback=True)
        profile = self.pipe.start(cfg)
        profile.get_device().as_playback().set_real_time(False)
        self.align = rs.align(rs.stream.color)
        self.pc = rs.pointcloud()
        self.last = (None, None)
        self.stages: Dict[str, List[float]] = {"read": [], "pack": []}

    def frame(self) -> bytes:
        t0 = time.perf_counter()
        while True:  # playback hands each frame out twice (beside either neighbour): skip repeats
            frames = self.pipe.wait_for_frames()
            c, d = frames.get_color_frame(), frames.get_depth_frame()
            if not c or not d:
                continue
            ids = (c.get_frame_number(), d.get_frame_number())
            if ids[0] == self.last[0] or ids[1] == self.last[1]:
                continue
            self.last = ids
            break
        aligned = self.align.process(frames)
        depth, color = aligned.get_depth_frame(), aligned.get_color_frame()
        t1 = time.perf_counter()
        points = self.pc.calculate(depth)
        xyz = np.asanyarray(points.get_vertices(2)).reshape(-1, 3)
        rgb = np.asanyarray(color.get_data()).reshape(-1, 3)
        out = np.zeros(xyz.shape[0], XYZRGB32_DTYPE)
        missing = xyz[:, 2] == 0
        for i, k in enumerate("xyz"):
            out[k] = xyz[:, i]
            out[k][missing] = np.nan
        out["rgb"] = ((rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8)
                      | rgb[:, 2]).view(np.float32)
        data = out.tobytes()
        t2 = time.perf_counter()
        self.stages["read"].append(t1 - t0)
        self.stages["pack"].append(t2 - t1)
        return data

    def close(self) -> None:
        self.pipe.stop()


def _median_ms(v) -> float:
    return float(np.median(v) * 1e3)


def compare(path: str, force_align: bool, blocks: int = 10, frames_per_block: int = 10) -> Dict[str, object]:
    """Alternating blocks of the two paths; median ms per frame each and their ratio."""
    paths = [PackagePath(path, force_align), RealSenseUserPath(path)]
    try:
        for p in paths:  # warm-up: playback start, first allocations
            for _ in range(3):
                p.frame()
            p.stages = {k: [] for k in p.stages}
        per_frame = {p.name: [] for p in paths}
        cpu = {p.name: [] for p in paths}
        sizes = {}
        for b in range(blocks):
            for p in (paths if b % 2 == 0 else paths[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(frames_per_block):
                    data = p.frame()
                per_frame[p.name].append((time.perf_counter() - t0) / frames_per_block)
                cpu[p.name].append((time.process_time() - c0) / frames_per_block)
                sizes[p.name] = len(data)
    finally:
        for p in paths:
            p.close()
    pkg, user = _median_ms(per_frame["package"]), _median_ms(per_frame["pyrealsense2"])
    cpkg, cuser = _median_ms(cpu["package"]), _median_ms(cpu["pyrealsense2"])
    return {"package_ms": pkg, "pyrealsense2_ms": user, "ratio": pkg / user,
            "package_cpu_ms": cpkg, "pyrealsense2_cpu_ms": cuser, "cpu_ratio": cpkg / cuser,
            "block_ratios": [a / b for a, b in zip(per_frame["package"], per_frame["pyrealsense2"])],
            "stages_ms": {p.name: {k: _median_ms(v) for k, v in p.stages.items()} for p in paths},
            "cloud_bytes": sizes}


def run(recording: Optional[str] = None, blocks: int = 10, frames_per_block: int = 10) -> Dict[str, object]:
    """Both comparisons on ``recording`` (default: a 640x480 synthetic-actor recording made in a
    temporary folder and deleted afterwards)."""
    with tempfile.TemporaryDirectory(prefix="facediff_bench_") as tmp:
        path = recording or str(synthetic_recording(Path(tmp)))
        from facediff_ros.core.capture import sources
        src = sources.RecordingSource(sources.RecordingConfig(path=path, loop=False, realtime=False))
        src.open()
        size = src.read().intrinsics.shape
        src.close()
        out = {"recording": recording or "synthetic actor 640x480, 30 frames (temporary file)",
               "image_size_hw": list(size),
               "like_for_like": compare(path, True, blocks, frames_per_block),
               "as_shipped": compare(path, False, blocks, frames_per_block)}
    out["ratio"] = out["like_for_like"]["ratio"]
    return out


def main(argv=None) -> int:
    import argparse
    import json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recording",
                    help="a RealSense .db3/.bag (default: a temporary 640x480 actor recording)")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    res = run(args.recording, args.blocks)
    for k in ("like_for_like", "as_shipped"):
        r = res[k]
        print(f"{k}: package {r['package_ms']:.2f} ms, pyrealsense2 {r['pyrealsense2_ms']:.2f} ms per frame: "
              f"ratio {r['ratio']:.2f}; CPU {r['package_cpu_ms']:.2f} / {r['pyrealsense2_cpu_ms']:.2f} ms: "
              f"ratio {r['cpu_ratio']:.2f} (stages {r['stages_ms']})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
