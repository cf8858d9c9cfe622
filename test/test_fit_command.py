"""``facediff fit``: a recording with ground truth, an image with and without depth, bad input.

Expectations come from outside the command: the synthetic actor's ground truth (its mesh from
the model with the true identity, expressions and poses), the PLY read back with open3d, and the
depth residual recomputed by projecting the PLY's vertices into the depth image (point samples,
not the command's rendering).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import facediff_ros
from facediff_ros import cli, fitting_command
from facediff_ros.synthetic.recording import load_ground_truth

SAMPLE = Path(facediff_ros.__file__).parent / "data" / "sample.db3"
# The sample's identity locks at frame 20 (6 frames, every 4th good one); 24 frames leave 3 after it.
SAMPLE_FRAMES = 24


def _read_ply(path):
    import open3d as o3d
    mesh = o3d.io.read_triangle_mesh(str(path))
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles)


def _truth_vertices(model, gt, i):
    R, t = gt["R"][i], gt["t"][i]
    return model.vertices(gt["identity"], gt["expression"][i]) @ R.T.astype(np.float32) + t.astype(np.float32)


def _point_sampled_residual_mm(vertices, depth_mm, K):
    """Median |measured - vertex z| (mm), the measurement interpolated bilinearly at each vertex's
    projection (its 4 neighbours all with depth), where it is within 2 cm of the vertex (the
    vertex is on the visible surface, not hidden behind the nose or at the silhouette)."""
    uv = K.project(vertices)
    u0, v0 = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (u0 >= 0) & (u0 < K.width - 1) & (v0 >= 0) & (v0 < K.height - 1)
    u0, v0, fu, fv = u0[inside], v0[inside], uv[inside, 0] - u0[inside], uv[inside, 1] - v0[inside]
    n = [depth_mm[v0 + dv, u0 + du].astype(np.float64) for dv, du in ((0, 0), (0, 1), (1, 0), (1, 1))]
    z = (n[0] * (1 - fu) + n[1] * fu) * (1 - fv) + (n[2] * (1 - fu) + n[3] * fu) * fv
    d = z - 1e3 * vertices[inside, 2]
    keep = np.all([x > 0 for x in n], axis=0) & (np.ptp(n, axis=0) < 20) & (np.abs(d) < 20)
    return float(np.median(np.abs(d[keep]))), int(keep.sum())


@pytest.mark.skipif(not SAMPLE.is_file(), reason="embedded sample not installed")
def test_recording_with_ground_truth(tmp_path, model, capsys):
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    rc = cli.main(["fit", str(SAMPLE), "--frames", str(SAMPLE_FRAMES), "--out", str(out),
                   "--json", str(report_path)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    rep = json.loads(report_path.read_text())
    gt = load_ground_truth(SAMPLE)
    assert rep["kind"] == "recording" and rep["ground_truth"].endswith("sample.gt.npz")
    assert (rep["width"], rep["height"]) == (int(gt["intrinsics"][4]), int(gt["intrinsics"][5]))
    frames = rep["frames"]
    assert [f["index"] for f in frames] == list(range(SAMPLE_FRAMES))  # exact frames, none skipped
    assert all(f["ok"] and "depth" in f["terms_used"] for f in frames)
    assert frames[-1]["identity_locked"] and rep["summary"]["lock_frame"] < SAMPLE_FRAMES - 1
    for f in frames:
        assert {"residual_rms_mm", "depth_residual_mm", "quality", "identity_locked", "terms_used"} <= set(f)
        assert f["ms"]["total"] > 0 and f["ground_truth_frame"] == f["index"]
    # The sample's depth noise ("low" preset) is ~1 mm at 0.72 m: a fit on the surface leaves about that.
    assert rep["summary"]["depth_residual_mm_median"] < 2.0
    a = rep["summary"]["after_lock"]
    assert a["vertex_error_mm"] < 2.0 and a["rotation_deg"] < 1.5 and a["translation_mm"] < 3.0
    assert "vs ground truth after the lock" in stdout

    # Files of the last frame, checked against the ground truth without the command's code.
    last = SAMPLE_FRAMES - 1
    v, tris = _read_ply(out / f"frame_{last:04d}.ply")
    ids = model.vertex_ids(("face",))
    assert v.shape == (len(ids), 3) and len(tris) == len(model.triangles(("face",))[0])
    truth = _truth_vertices(model, gt, last)
    narrow = model.vertex_ids(("narrow_face",))
    assert np.linalg.norm(v[narrow] - truth[narrow], axis=1).mean() < 0.002  # metres, camera frame
    state = np.load(out / f"frame_{last:04d}.npz")
    cos = (np.trace(state["R"] @ gt["R"][last].T) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 1.5
    assert np.linalg.norm(state["t"] - gt["t"][last]) < 0.003
    assert list(state["expression_names"]) == list(gt["expression_names"])
    # The reported depth residual agrees with one measured by projecting the PLY's vertices.
    from facediff_ros.synthetic.recording import play_recording
    rec = next(f for i, f in enumerate(play_recording(SAMPLE)) if i == last)
    mine, n = _point_sampled_residual_mm(v[narrow], rec.depth_mm, rec.intrinsics)
    assert n > 1000 and abs(mine - frames[last]["depth_residual_mm"]) < 0.3, (mine, frames[last])
    import cv2
    png = cv2.imread(str(out / f"frame_{last:04d}.png"))
    H = rep["height"]
    assert png.shape == (H, rep["width"] + 2 * H, 3)


@pytest.fixture(scope="module")
def actor_files(tmp_path_factory, model):
    """A 640x480 synthetic actor frame as the files a user would pass: PNG, depth PNG, K.json."""
    import cv2
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
    actor = SyntheticActor(ActorConfig(seed=7, num_frames=1, keep_vertices=True), model)
    f = actor.frame(0)
    d = tmp_path_factory.mktemp("actor")
    cv2.imwrite(str(d / "face.png"), f.color[..., ::-1])
    cv2.imwrite(str(d / "face_depth.png"), f.depth)
    K = f.intrinsics
    (d / "K.json").write_text(json.dumps({"width": K.width, "height": K.height, "fx": K.fx, "fy": K.fy,
                                          "cx": K.cx, "cy": K.cy}))
    return d, f


def test_image_with_depth(tmp_path, actor_files, model):
    d, f = actor_files
    out = tmp_path / "out"
    rep = fitting_command.fit_input(d / "face.png", d / "face_depth.png", d / "K.json", out)
    fr = rep["frames"][0]
    assert rep["kind"] == "image" and not rep["colour_only"] and rep["ground_truth"] is None
    assert fr["ok"] and set(fr["terms_used"]) == {"landmarks_3d", "landmarks_2d", "depth"}
    assert not fr["identity_locked"]  # one frame: the identity is this frame's estimate
    assert fr["quality"] > 0.5 and fr["depth_residual_mm"] < 3.0
    v, _ = _read_ply(out / "frame_0000.ply")
    narrow = model.vertex_ids(("narrow_face",))
    # One frame, identity and expression from it alone: a few mm (tracked sequences: ~1 mm).
    assert np.linalg.norm(v[narrow] - f.vertices[narrow], axis=1).mean() < 0.004
    mine, n = _point_sampled_residual_mm(v[narrow], f.depth, f.intrinsics)
    assert n > 1000 and abs(mine - fr["depth_residual_mm"]) < 0.3
    assert sorted(p.name for p in out.iterdir()) == ["frame_0000.npz", "frame_0000.ply", "frame_0000.png"]


def test_image_colour_only_writes_nothing_without_out(tmp_path, actor_files, capsys):
    d, f = actor_files
    report = tmp_path / "r.json"
    rc = fitting_command.main([str(d / "face.png"), "--intrinsics", str(d / "K.json"), "--json", str(report)])
    stdout = capsys.readouterr().out
    assert rc == 0 and "colour-only" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # nothing but the asked-for report
    rep = json.loads(report.read_text())
    fr = rep["frames"][0]
    assert rep["colour_only"] and fr["ok"] and fr["terms_used"] == ["landmarks_2d"] and fr["scale_from_prior"]
    assert fr["depth_residual_mm"] is None
    # Without K.json a default camera is assumed, and said.
    rc = fitting_command.main([str(d / "face.png"), "--quiet"])
    assert rc == 0 and "assumed a 60 deg" in capsys.readouterr().out


def _bad(capsys, *argv):
    rc = fitting_command.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("facediff fit: ") and "Traceback" not in err
    return err


def test_bad_inputs_one_line_exit_2(tmp_path, actor_files, capsys):
    d, f = actor_files
    img, depth, K = d / "face.png", d / "face_depth.png", json.loads((d / "K.json").read_text())

    def kjson(**change):
        p = tmp_path / "k_bad.json"
        p.write_text(json.dumps({**K, **change}))
        return p

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    assert "not a readable" in _bad(capsys, garbage)
    assert "no such file" in _bad(capsys, tmp_path / "missing.png")
    assert "expected a recording" in _bad(capsys, tmp_path / "face.tiff")
    assert "says 320x480" in _bad(capsys, img, "--intrinsics", kjson(width=320))
    assert "fx and fy must be > 0" in _bad(capsys, img, "--intrinsics", kjson(fx=-500.0))
    assert "fx and fy must be > 0" in _bad(capsys, img, "--intrinsics", kjson(fy=0))
    assert "finite number" in _bad(capsys, img, "--intrinsics", kjson(cx="middle"))
    assert "outside" in _bad(capsys, img, "--intrinsics", kjson(fx=1e-3, fy=1e-3))
    assert "outside" in _bad(capsys, img, "--intrinsics", kjson(cx=5000.0))
    no_key = tmp_path / "k_nokey.json"
    no_key.write_text(json.dumps({k: v for k, v in K.items() if k != "cy"}))
    assert "keys" in _bad(capsys, img, "--intrinsics", no_key)
    not_json = tmp_path / "k.json"
    not_json.write_text("{fx: 1")
    assert "as JSON" in _bad(capsys, img, "--intrinsics", not_json)
    import cv2
    small = tmp_path / "small_depth.png"
    cv2.imwrite(str(small), np.full((240, 320), 600, np.uint16))
    assert "not aligned" in _bad(capsys, img, "--depth", small, "--intrinsics", d / "K.json")
    eight = tmp_path / "depth8.png"
    cv2.imwrite(str(eight), np.full(f.depth.shape, 60, np.uint8))
    assert "16-bit" in _bad(capsys, img, "--depth", eight, "--intrinsics", d / "K.json")
    empty = tmp_path / "depth0.png"
    cv2.imwrite(str(empty), np.zeros(f.depth.shape, np.uint16))
    assert "no pixel has depth" in _bad(capsys, img, "--depth", empty, "--intrinsics", d / "K.json")
    assert "needs --intrinsics" in _bad(capsys, img, "--depth", depth)
    fake_db3 = tmp_path / "fake.db3"
    fake_db3.write_bytes(b"SQLite format 3\0" + b"\0" * 100)
    assert "--depth and --intrinsics are for an image" in _bad(capsys, fake_db3, "--depth", depth)
    assert "fake.db3" in _bad(capsys, fake_db3)


def test_console_script_exit_status(tmp_path):
    """The installed ``facediff`` entry point: exit status 2 and one stderr line, no traceback."""
    exe = Path(sys.executable).with_name("facediff")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "facediff_ros.cli"]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    p = subprocess.run(cmd + ["fit", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "bad.jpg" in p.stderr
