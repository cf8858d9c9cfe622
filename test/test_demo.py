"""`facediff demo` end to end on the embedded sample, and the landmark evaluation it reports.

The evaluation (facediff_ros.synthetic.landmark_eval) is checked on synthetic arrays with known
offsets: a landmark moved by (3, 4) px is 5 px off, a point moved 2 mm along z is 2 mm off, and
only visible points (2D) / visible points with valid depth (3D) count. The demo is checked against
the same ground-truth thresholds as the capture + landmarks integration test.
"""

import time

import numpy as np
import pytest

from facediff_ros.synthetic import landmark_eval
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.correspondence import Correspondence
from facediff_ros.synthetic.landmark_eval import MP_FOR_68, FrameLookup, frame_errors, summarize

K68 = np.array(list(MP_FOR_68))
KMP = np.array(list(MP_FOR_68.values()))
INTR = Intrinsics(300.0, 310.0, 211.5, 119.5, 424, 240)


def _ground_truth(frames=2, seed=0):
    """A ground-truth dict with the keys landmark_eval reads (recording.load_ground_truth's layout)."""
    rng = np.random.default_rng(seed)
    lm3 = rng.uniform([-0.08, -0.1, 0.55], [0.08, 0.1, 0.7], size=(frames, 68, 3))  # (N, 68, 3) m
    lm2 = np.stack([INTR.fx * lm3[..., 0] / lm3[..., 2] + INTR.cx,
                    INTR.fy * lm3[..., 1] / lm3[..., 2] + INTR.cy], -1)  # (N, 68, 2) px
    return {"timestamp": np.arange(frames) / 30.0, "landmarks_2d": lm2, "landmarks_3d": lm3,
            "landmarks_visible": np.ones((frames, 68), bool),
            "intrinsics": np.array([INTR.fx, INTR.fy, INTR.cx, INTR.cy, INTR.width, INTR.height]),
            "identity": np.zeros(5, np.float32), "expression": np.zeros((frames, 3), np.float32),
            "R": np.repeat(np.eye(3)[None], frames, 0), "t": np.tile([0.0, 0.0, 0.6], (frames, 1))}


def _landmarks_at(gt, i, offset_px, offset_m):
    """(uv, points, valid) whose subset landmarks sit at frame i's ground truth plus the offsets."""
    rng = np.random.default_rng(i)
    uv = rng.uniform(0, 200, size=(478, 2))
    points = rng.uniform(0.5, 0.7, size=(478, 3))
    uv[KMP] = gt["landmarks_2d"][i][K68] + offset_px
    points[KMP] = gt["landmarks_3d"][i][K68] + offset_m
    return uv, points, np.ones(478, bool)


def test_subset_errors_are_the_known_offsets_over_visible_points_with_depth():
    gt = _ground_truth()
    gt["landmarks_visible"][0, K68[:3]] = False   # 3 subset points hidden in frame 0
    uv, points, valid = _landmarks_at(gt, 0, (3.0, 4.0), (0.0, 0.0, 0.002))
    valid[KMP[3:5]] = False                       # 2 more without depth
    points[~valid] = np.nan
    valid[400:] = False                           # outside the subset: only the valid fraction sees it
    e = frame_errors(uv, points, valid, gt, 0)
    n = len(MP_FOR_68)
    assert e.err_2d_px.shape == (n - 3,) and e.err_3d_mm.shape == (n - 5,)
    np.testing.assert_allclose(e.err_2d_px, 5.0, atol=1e-9)
    np.testing.assert_allclose(e.err_3d_mm, 2.0, atol=1e-6)
    assert e.valid_fraction == pytest.approx((400 - 2) / 478)
    assert e.table_err_2d_px is None and e.table_err_3d_mm is None

    # Frame 1: 1 px and 1 mm off on all 14 points. Means weigh points, not frames.
    uv1, points1, valid1 = _landmarks_at(gt, 1, (0.6, -0.8), (0.001, 0.0, 0.0))
    s = summarize([e, frame_errors(uv1, points1, valid1, gt, 1)])
    assert s.frames == 2
    assert s.mean_2d_px == pytest.approx(((n - 3) * 5.0 + n * 1.0) / (2 * n - 3))
    assert s.mean_3d_mm == pytest.approx(((n - 5) * 2.0 + n * 1.0) / (2 * n - 5))
    np.testing.assert_allclose(s.per_frame_2d_px, [5.0, 1.0])
    np.testing.assert_allclose(s.per_frame_3d_mm, [2.0, 1.0])
    assert s.p90_2d_px == pytest.approx(5.0)
    assert s.valid_fraction == pytest.approx(((400 - 2) / 478 + 1.0) / 2)
    assert s.table_mean_2d_px is None


class _ShiftedModel:
    """Duck-typed MorphableModel: fixed vertices (m, model frame), shifted by the first expression weight."""

    def __init__(self, vertices):
        self._v = vertices

    def vertices(self, identity, expression):
        return self._v + np.array([0.0, float(expression[0]), 0.0])


def test_table_errors_follow_the_tables_points_on_the_posed_mesh():
    gt = _ground_truth(frames=1)
    rng = np.random.default_rng(3)
    V = 40
    verts = rng.uniform([-0.08, -0.1, -0.05], [0.08, 0.1, 0.05], size=(V, 3))
    gt["expression"][0, 0] = 0.01
    angle = np.radians(20.0)
    gt["R"][0] = np.array([[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0],
                           [-np.sin(angle), 0.0, np.cos(angle)]])
    bary = rng.uniform(0.1, 1.0, size=(478, 3))
    bary /= bary.sum(1, keepdims=True)
    stable = rng.random(478) < 0.5
    corr = Correspondence(rng.integers(0, V, size=(478, 3)), bary.astype(np.float32),
                          np.ones(478, np.float32), stable, np.zeros(478, np.float32))
    # The table's points on the posed mesh, summed here corner by corner.
    posed = (verts + [0.0, 0.01, 0.0]) @ gt["R"][0].T + gt["t"][0]  # (V, 3) camera frame
    ref = np.zeros((478, 3))
    for k in range(3):
        ref += corr.bary[:, k:k + 1].astype(np.float64) * posed[corr.vertex_ids[:, k]]
    uv = np.stack([INTR.fx * ref[:, 0] / ref[:, 2] + INTR.cx, INTR.fy * ref[:, 1] / ref[:, 2] + INTR.cy], 1)
    uv += (0.6, 0.8)                                # 1 px
    points = ref + (0.0, 0.0, -0.003)               # 3 mm
    valid = np.ones(478, bool)
    valid[:50] = False
    points[~valid] = np.nan
    e = frame_errors(uv, points, valid, gt, 0, corr, _ShiftedModel(verts))
    mesh_stable = stable & (np.arange(478) < 468)   # iris points never count
    assert e.table_err_2d_px.shape == (mesh_stable.sum(),)
    assert e.table_err_3d_mm.shape == ((mesh_stable & valid).sum(),)
    np.testing.assert_allclose(e.table_err_2d_px, 1.0, atol=1e-4)
    np.testing.assert_allclose(e.table_err_3d_mm, 3.0, atol=1e-4)
    s = summarize([e])
    assert s.table_landmarks == mesh_stable.sum()
    assert s.table_mean_2d_px == pytest.approx(1.0, abs=1e-4)
    assert s.table_mean_3d_mm == pytest.approx(3.0, abs=1e-4)


def test_frame_lookup_matches_stamps_within_a_microsecond():
    gt = _ground_truth(frames=30)
    lookup = FrameLookup(gt)
    assert len(lookup) == 30
    for i in (0, 7, 29):
        ns = int(round(i / 30.0 * 1e9))
        assert lookup.index_of(ns) == i
        assert lookup.index_of(ns + 900) == i
        assert lookup.index_of(ns - 1_100) is None
    assert lookup.index_of(-10**9) is None
    assert landmark_eval.ground_truth_intrinsics(gt) == INTR


def test_bad_inputs_raise_value_errors_naming_the_argument():
    gt = _ground_truth()
    uv, points, valid = _landmarks_at(gt, 0, (0, 0), (0, 0, 0))
    with pytest.raises(ValueError, match="uv"):
        frame_errors(uv[:468], points, valid, gt, 0)
    with pytest.raises(ValueError, match="points"):
        frame_errors(uv, points[:, :2], valid, gt, 0)
    with pytest.raises(ValueError, match="index"):
        frame_errors(uv, points, valid, gt, 2)
    with pytest.raises(ValueError, match="model"):
        frame_errors(uv, points, valid, gt, 0, correspondence=object())
    with pytest.raises(ValueError, match="errors"):
        summarize([])


# ---- the demo on the embedded sample --------------------------------------------------------------
def test_demo_runs_the_graph_on_the_sample_within_the_integration_thresholds():
    pytest.importorskip("rclpy")
    from test_capture_landmarks_integration import (MAX_MEAN_2D_PX, MAX_MEAN_2D_PX_TABLE, MAX_MEAN_3D_MM,
                                                    MAX_MEAN_3D_MM_TABLE)

    from facediff_ros.synthetic import recording
    from facediff_ros.demo import run_demo
    from facediff_ros.nodes.capture import SAMPLE_RECORDING

    if not recording.ground_truth_path(SAMPLE_RECORDING).is_file():
        pytest.skip("the embedded sample is not installed")
    gt = recording.load_ground_truth(SAMPLE_RECORDING)
    lines = []
    t0 = time.monotonic()
    s = run_demo(log=lines.append)
    wall = time.monotonic() - t0
    text = "\n".join(lines)
    assert s["returncode"] == 0, text
    n = len(gt["frame"])
    assert s["frames_in_sample"] == s["frames_requested"] == n
    assert s["frames_captured"] == n, text
    assert s["landmarks_published"] >= 0.9 * n, text
    assert s["frames_unknown_stamp"] == 0, text
    e = s["errors"]
    assert e["frames"] == s["landmarks_published"]
    assert e["mean_2d_px"] < MAX_MEAN_2D_PX and e["mean_3d_mm"] < MAX_MEAN_3D_MM, text
    assert e["valid_fraction"] > 0.8, text
    if e["table_mean_2d_px"] is not None:
        assert e["table_mean_2d_px"] < MAX_MEAN_2D_PX_TABLE and e["table_mean_3d_mm"] < MAX_MEAN_3D_MM_TABLE
    # The nodes' own diagnostics arrived, with stage timings, and both stopped on SIGINT.
    assert "face_mesh" in s["stage_ms"]["landmarks"] and "read" in s["stage_ms"]["capture"], text
    assert any(n.endswith(": landmarks") and "OK" in lv for n, lv in s["diagnostics_levels"].items()), text
    assert all("SIGINT (0)" in how for how in s["processes"].values()), s["processes"]
    assert "not in this demo yet" in text and "result               OK" in text
    assert wall < 30.0, f"the demo took {wall:.1f} s"


def test_cli_demo_passes_its_options_and_returns_the_demos_code(monkeypatch):
    from facediff_ros import cli, demo
    calls = []

    def fake_run_demo(duration_s=None, frames=None):
        calls.append((duration_s, frames))
        return {"returncode": 1, "reason": "test"}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--frames", "12", "--duration", "5"]) == 1
    assert cli.main(["demo"]) == 1
    assert calls == [(5.0, 12), (None, None)]


def test_cli_bench_landmarks_writes_the_ratio_json(tmp_path, capsys):
    """`facediff bench landmarks --json OUT` on a short 640x480 actor recording (3 frames, 1 loop)."""
    pytest.importorskip("rclpy")
    import json

    from facediff_ros import cli
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "landmarks", "--json", str(out), "--frames", "3", "--loops", "1"]) == 0
    res = json.loads(out.read_text())
    assert (res["width"], res["height"]) == (640, 480)
    assert res["landmarks_ms"] > 0 and res["raw_mediapipe_ms"] > 0
    assert res["ratio"] == pytest.approx(res["landmarks_ms"] / res["raw_mediapipe_ms"])
    assert res["timed_per_side"] == 2  # 3 frames, the first one not timed
    assert res["frames_with_face"] == {"landmarks": 2, "raw_mediapipe": 2}
    assert set(res["landmarks_stage_median_ms"]) == {"decode", "face_mesh", "lifting", "message"}
    assert f"ratio {res['ratio']:.2f}" in capsys.readouterr().out


def test_cli_bench_without_a_target_runs_every_benchmark_and_refuses_json(monkeypatch, capsys):
    import subprocess

    from facediff_ros import cli
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda argv: calls.append(argv[-1]) or 0)
    assert cli.main(["bench"]) == 0
    assert calls == list(cli.BENCHMARKS.values()) and "facediff_ros.bench.landmarks_bench" in calls
    assert cli.main(["bench", "--json", "x.json"]) == 2
    assert "needs a target" in capsys.readouterr().err
