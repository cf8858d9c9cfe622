"""`facediff demo` (the whole graph on the embedded sample, its result folder) and the landmark
evaluation it reports.

The evaluation (facediff_ros.synthetic.landmark_eval) is checked on synthetic arrays with known
offsets: a landmark moved by (3, 4) px is 5 px off, a point moved 2 mm along z is 2 mm off, and
only visible points (2D) / visible points with valid depth (3D) count. The demo is checked against
the same ground-truth thresholds as the capture + landmarks integration test.
"""

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


# ---- the demo's result folder pieces --------------------------------------------------------------
def test_ply_holds_the_finite_points_with_their_colours(tmp_path):
    from facediff_ros.core.cloud import xyzrgb_cloud
    from facediff_ros.demo_results import read_ply, write_ply

    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, size=(4, 5, 3)).astype(np.float32)
    pts[1, 2] = np.nan
    pts[3, 0, 2] = np.nan
    rgb = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    n = write_ply(tmp_path / "a.ply", xyzrgb_cloud(pts, rgb, "depth_image_proc"))
    keep = np.isfinite(pts).all(-1)
    assert n == keep.sum() == 18
    text = (tmp_path / "a.ply").read_bytes()
    assert text.startswith(b"ply\nformat binary_little_endian 1.0\n") and b"element vertex 18\n" in text
    back = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(np.stack([back["x"], back["y"], back["z"]], -1), pts[keep])
    np.testing.assert_array_equal(np.stack([back["red"], back["green"], back["blue"]], -1), rgb[keep])


def test_depth_range_centres_on_the_faces_depth_at_the_landmarks():
    from facediff_ros.demo_results import DEPTH_FAR_M, DEPTH_NEAR_M, depth_range

    depth = np.full((40, 60), 2.0, np.float32)   # a wall at 2 m
    depth[10:20, 20:30] = 0.7                    # the face
    depth[12, 22] = 0.0                          # a hole in it
    uv = np.array([[22.0, 12.0], [25.0, 15.0], [28.4, 18.6], [np.nan, 3.0]])
    assert depth_range(depth, uv) == pytest.approx((0.7 - DEPTH_NEAR_M, 0.7 + DEPTH_FAR_M))
    assert depth_range(depth, None) == pytest.approx((2.0 - DEPTH_NEAR_M, 2.0 + DEPTH_FAR_M))


# ---- the demo on the embedded sample --------------------------------------------------------------
def _sample_or_skip():
    pytest.importorskip("rclpy")
    from facediff_ros.nodes.capture import SAMPLE_RECORDING
    from facediff_ros.synthetic import recording
    if not recording.ground_truth_path(SAMPLE_RECORDING).is_file():
        pytest.skip("the embedded sample is not installed")
    return recording.load_ground_truth(SAMPLE_RECORDING)


def test_demo_runs_the_whole_graph_and_writes_the_result_folder(tmp_path):
    """The demo end to end (four of the seven categories, one frame each, to keep the test short;
    `make demo` runs all seven): every category gets an edited frame; the folder holds the montage
    (input vs edited columns differ, edited depth present), one PLY per category with the cloud's
    finite points near the face's depth, the summary (stages of all four nodes, end-to-end
    latency, landmark accuracy within the integration thresholds) and the plot."""
    import json

    import cv2
    from test_capture_landmarks_integration import MAX_MEAN_2D_PX, MAX_MEAN_3D_MM

    from facediff_ros import demo_results
    from facediff_ros.demo import run_demo

    gt = _sample_or_skip()
    out = tmp_path / "result"
    lines = []
    cats = ["neutral", "happy", "sad", "fearful"]
    s = run_demo(out=out, categories=cats, frames_per_category=1, log=lines.append)
    text = "\n".join(lines)
    assert s["returncode"] == 0, text
    assert text.endswith("result               OK") and f"result folder        {out}" in text
    assert all("SIGINT" in how for how in s["processes"].values()), s["processes"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["montage.png", "summary.json", "latency.png"]
                           + [f"avatar_{c}.ply" for c in cats])

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["per_category"]) == list(cats)
    W, H = int(gt["intrinsics"][4]), int(gt["intrinsics"][5])
    face_z = float(np.median(gt["t"][:, 2]))
    for cat, info in summary["per_category"].items():
        assert info["frames"] >= 1 and info["face_model"], (cat, info)
        assert info["cloud"] == {"height": H, "width": W, "point_step": 32,
                                 "frame_id": "camera_color_optical_frame"}
        ply = demo_results.read_ply(out / f"avatar_{cat}.ply")
        assert len(ply) == info["ply_points"] > 0.5 * W * H
        z = ply["z"]
        assert np.isfinite(z).all() and z.min() > 0.2
        # the face is the nearest thing: the nearest 2 % of the points lie around its depth
        assert abs(np.percentile(z, 1) - face_z) < 0.15, (cat, np.percentile(z, 1), face_z)

    img = cv2.imread(str(out / "montage.png"))[..., ::-1]
    cell = demo_results.CELL_PX
    rows, cols = (img.shape[0] - 24) // cell, (img.shape[1] - 84) // cell
    assert (rows, cols) == (len(cats), len(demo_results.COLUMNS))

    def cell_at(r, c):
        return img[24 + r * cell:24 + (r + 1) * cell, 84 + c * cell:84 + (c + 1) * cell].astype(int)
    for r in range(rows):
        assert np.abs(cell_at(r, 3) - cell_at(r, 0)).mean() > 0.5, f"row {r}: edited colour = input"
        assert np.abs(cell_at(r, 1) - cell_at(r, 0)).mean() > 0.5, f"row {r}: no landmarks drawn"
        assert (cell_at(r, 4).sum(-1) > 0).mean() > 0.5, f"row {r}: edited depth mostly empty"
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    lat = summary["latency"]
    assert "read" in lat["stage_ms"]["capture"] and "face_mesh" in lat["stage_ms"]["landmarks"]
    assert "fit_total" in lat["stage_ms"]["fitting"] and "edit_total" in lat["stage_ms"]["editor"]
    e2e = lat["end_to_end"]
    assert e2e["n"] >= 1 and 0 < e2e["median_ms"] < 30_000
    lm = summary["landmarks"]
    assert lm["frames"] >= 0.9 * len(gt["frame"])
    assert lm["mean_2d_px"] < MAX_MEAN_2D_PX and lm["mean_3d_mm"] < MAX_MEAN_3D_MM, lm


def test_demo_fails_loudly_naming_the_stage_that_produced_nothing(tmp_path, capsys):
    """The landmark node listening on a camera that does not exist: no landmarks -> exit 1, a line
    naming the stage, every node stopped, no result folder."""
    _sample_or_skip()
    from facediff_ros import cli
    out = tmp_path / "result"
    rc = cli.main(["demo", "--out", str(out), "--node-param", "landmarks.camera_name=nowhere",
                   "--stage-timeout", "6"])
    text = capsys.readouterr().out
    assert rc == 1, text
    assert "FAILED at the landmarks stage" in text
    assert "no face landmarks (/face/landmarks) within 6 s" in text
    assert "capture   first output" in text and "landmarks first output" not in text
    nodes_line = next(line for line in text.splitlines() if line.startswith("nodes: "))
    assert nodes_line.count("stopped by SIGINT") == 4, nodes_line
    assert not out.exists()


def test_cli_demo_passes_typed_node_parameters_and_returns_the_demos_code(monkeypatch, capsys):
    from facediff_ros import cli, demo
    calls = []

    def fake_run_demo(**kwargs):
        calls.append(kwargs)
        return {"returncode": 1, "reason": "test"}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--out", "x", "--categories", "happy,sad", "--node-param", "editor.steps=2",
                     "--node-param", "landmarks.camera_name=nowhere", "--node-param", "capture.loop=false",
                     "--stage-timeout", "5"]) == 1
    assert calls[-1] == {"out": "x", "categories": ["happy", "sad"], "stage_timeout_s": 5.0,
                         "node_params": {"editor": {"steps": 2}, "landmarks": {"camera_name": "nowhere"},
                                         "capture": {"loop": False}}}
    assert cli.main(["demo"]) == 1
    assert calls[-1] == {"out": None, "categories": None, "node_params": {}}
    assert cli.main(["demo", "--node-param", "steps=2"]) == 2
    assert "expected NODE.NAME=VALUE" in capsys.readouterr().err


def test_demo_refuses_unknown_nodes_and_categories_before_starting_anything():
    _sample_or_skip()
    from facediff_ros.demo import run_demo
    with pytest.raises(ValueError, match="'renderer'"):
        run_demo(node_params={"renderer": {"x": 1}}, log=lambda line: None)
    with pytest.raises(ValueError, match="categories"):
        run_demo(categories=["grumpy"], log=lambda line: None)


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
