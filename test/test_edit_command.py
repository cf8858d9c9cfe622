"""`facediff edit` on an image rendered from the synthetic actor: files, PLY, depth, the edit, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facediff_ros import edit_command
from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A still, neutral actor frame as IMAGE + DEPTH + K.json, with the actor's truth."""
    d = tmp_path_factory.mktemp("edit_in")
    cfg = ActorConfig(seed=41, num_frames=10, speech_jaw=0, blink_rate_hz=0, texture_size=256,
                      expression_schedule=(("neutral", 0.0),))
    f = SyntheticActor(cfg).frame(3)
    cv2.imwrite(str(d / "in.png"), f.color[..., ::-1])
    cv2.imwrite(str(d / "depth.png"), f.depth)
    K = f.intrinsics
    (d / "K.json").write_text(json.dumps({"width": K.width, "height": K.height, "fx": K.fx, "fy": K.fy,
                                          "cx": K.cx, "cy": K.cy}))
    return d, f


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "facediff_ros.cli", "edit", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def edited(scene, tmp_path_factory):
    d, f = scene
    out = tmp_path_factory.mktemp("edit_out") / "happy"
    r = _run(d / "in.png", "--depth", d / "depth.png", "--intrinsics", d / "K.json", "--expression", "happy",
             "--intensity", "1", "--steps", "2", "--out", out, "--json", out.parent / "report.json")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_writes_the_four_files_and_the_report(edited, scene):
    d, f = scene
    assert sorted(p.name for p in edited.iterdir()) == sorted(edit_command.OUTPUT_FILES)
    rep = json.loads((edited / "edit.json").read_text())
    assert json.loads((edited.parent / "report.json").read_text()) == rep
    assert rep["target"] == {"category": "happy", "intensity": 1.0}
    assert rep["steps"] == 2 and rep["colour_only"] is False
    assert rep["fit"]["quality"] > 0.5 and "depth" in rep["fit"]["terms_used"]
    assert set(rep["ms"]) >= {"landmarks", "fit", "edit", "total"}
    assert rep["ms"]["edit_stages"]["network"] > 0
    color = cv2.imread(str(edited / "color.png"))[..., ::-1]
    depth = cv2.imread(str(edited / "depth.png"), cv2.IMREAD_UNCHANGED)
    assert color.shape == f.color.shape and color.dtype == np.uint8
    assert depth.shape == f.depth.shape and depth.dtype == np.uint16


def test_ply_parses_with_one_point_per_edited_pixel_with_depth(edited, scene):
    d, f = scene
    rep = json.loads((edited / "edit.json").read_text())
    raw = (edited / "avatar.ply").read_bytes()
    header = raw[:raw.index(b"end_header\n")].decode("ascii")
    assert f"element vertex {rep['points']}" in header
    assert len(raw) - len(header) - len("end_header\n") == rep["points"] * 15  # 3 float32 + 3 uchar
    pts = edit_command.read_points_ply(edited / "avatar.ply")
    assert len(pts["xyz"]) == rep["points"] > 2000
    # Each point projects onto its own pixel, whose depth.png value is the point's z in mm
    # and whose color.png value is the point's colour.
    K = f.intrinsics
    xyz = pts["xyz"].astype(np.float64)
    u = np.round(K.fx * xyz[:, 0] / xyz[:, 2] + K.cx).astype(int)
    v = np.round(K.fy * xyz[:, 1] / xyz[:, 2] + K.cy).astype(int)
    depth = cv2.imread(str(edited / "depth.png"), cv2.IMREAD_UNCHANGED)
    color = cv2.imread(str(edited / "color.png"))[..., ::-1]
    np.testing.assert_allclose(xyz[:, 2] * 1e3, depth[v, u], atol=0.51)
    np.testing.assert_array_equal(pts["rgb"], color[v, u])


def test_depth_near_the_actors_truth_on_the_face(edited, scene):
    d, f = scene
    depth = cv2.imread(str(edited / "depth.png"), cv2.IMREAD_UNCHANGED).astype(np.float64)
    # Upper face (forehead, eyes, nose): a smile barely moves it, so the edit's depth there should
    # match the neutral truth within a few mm (crop depth resolution ~0.5 mm, 64 px crop).
    lm = f.landmarks_2d
    top = int(lm[19:25, 1].min())
    nose = int(lm[33, 1])
    x0, x1 = int(lm[36, 0]), int(lm[45, 0])
    region = np.zeros(depth.shape, bool)
    region[top:nose, x0:x1] = True
    region &= f.head_mask & (depth > 0)
    assert region.sum() > 500
    err = depth[region] - f.depth_clean[region] * 1e3
    assert np.median(np.abs(err)) < 4.0, np.median(np.abs(err))


def test_the_expression_change_is_measurable(edited, scene):
    d, f = scene
    color = cv2.imread(str(edited / "color.png"))[..., ::-1].astype(np.float64)
    src = f.color.astype(np.float64)
    lm = f.landmarks_2d
    # Mouth box (landmarks 48-67) vs the wall far from the face.
    x0, y0 = lm[48:68].min(0).astype(int) - 4
    x1, y1 = lm[48:68].max(0).astype(int) + 4
    mouth = np.abs(color[y0:y1, x0:x1] - src[y0:y1, x0:x1]).mean()
    corner = np.abs(color[:60, :60] - src[:60, :60]).mean()
    assert corner == 0.0  # pixels outside the edit are the input's
    assert mouth > 5.0, mouth
    # The judge reads a smile on the edit and not on the source.
    from facediff_ros.judges.expression import ExpressionJudge
    with ExpressionJudge() as judge:
        depth = cv2.imread(str(edited / "depth.png"), cv2.IMREAD_UNCHANGED)
        after = judge.read(color.astype(np.uint8), f.intrinsics, depth)
        before = judge.read(f.color, f.intrinsics, f.depth)
    assert after.ok and before.ok
    assert before.category == "neutral"
    names = judge.names
    smile = [names.index("mouthSmile_L"), names.index("mouthSmile_R")]
    assert after.expression[smile].mean() > before.expression[smile].mean() + 0.2


def test_colour_only_without_intrinsics(scene, tmp_path):
    d, f = scene
    r = _run(d / "in.png", "--expression", "surprised", "--intensity", "0.7", "--steps", "1",
             "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "edit.json").read_text())
    assert rep["colour_only"] is True
    assert any("60 deg" in n for n in rep["notes"]) and any("colour-only" in n for n in rep["notes"])
    assert "depth" not in rep["fit"]["terms_used"]
    depth = cv2.imread(str(tmp_path / "depth.png"), cv2.IMREAD_UNCHANGED)
    # Depth on the edited face only.
    assert 0 < (depth > 0).sum() == rep["points"] <= rep["edited_pixels"]


def _bad(tmp_path, *args):
    out = tmp_path / "out"
    r = _run(*args, "--out", out, timeout=200)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert not out.exists() or not any(out.iterdir()), "something was written"
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("facediff edit:")]
    assert len(lines) == 1, r.stderr[-2000:]
    return lines[0]


def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(scene, tmp_path):
    d, f = scene
    img = d / "in.png"
    assert "unknown" in _bad(tmp_path, img, "--expression", "smug") and "happy" in _bad(
        tmp_path, img, "--expression", "Smug")
    assert "--intensity" in _bad(tmp_path, img, "--expression", "happy", "--intensity", "1.5")
    assert "--intensity" in _bad(tmp_path, img, "--expression", "happy", "--intensity", "nan")
    assert "--steps" in _bad(tmp_path, img, "--expression", "happy", "--steps", "0")
    assert "no such file" in _bad(tmp_path, d / "missing.png", "--expression", "happy")
    assert "--depth" in _bad(tmp_path, img, "--depth", d / "nope.png", "--intrinsics", d / "K.json",
                             "--expression", "happy")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    assert "no face" in _bad(tmp_path, blank, "--expression", "happy")


def test_weights_of_another_config_are_refused(scene, tmp_path):
    import torch

    from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
    from facediff_ros.core.editor.train import TrainConfig, save_weights
    d, f = scene
    # A 32 px network whose config.json records the shipped 64 px crop.
    shipped = json.loads((edit_command.shipped_weights() / "config.json").read_text())
    net_cfg = EditorNetConfig(crop_size=32, channels=(8, 16), groups=4, emb_dim=32)
    torch.manual_seed(0)
    w = tmp_path / "w32"
    save_weights(w, EditorUNet(net_cfg).state_dict(), TrainConfig(net=net_cfg),
                 extra={"data": shipped["data"]})
    msg = _bad(tmp_path, d / "in.png", "--expression", "happy", "--weights", w)
    assert "--weights" in msg and "32 px" in msg
    # Not a weights file at all.
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "editor.pt").write_bytes(b"not torch")
    assert "--weights" in _bad(tmp_path, d / "in.png", "--expression", "happy", "--weights", junk)
    assert "no such folder" in _bad(tmp_path, d / "in.png", "--expression", "happy",
                                    "--weights", tmp_path / "nowhere")


def test_depth_png_and_points_round_trip(tmp_path):
    from facediff_ros.core.camera import Intrinsics
    K = Intrinsics(100.0, 110.0, 3.0, 2.0, 6, 4)
    depth = np.full((4, 6), np.nan, np.float32)
    depth[1, 2] = 0.6004
    depth[2, 5] = 0.75
    depth[3, 0] = -1.0
    mm = edit_command.depth_png(depth)
    assert mm.dtype == np.uint16 and mm[1, 2] == 600 and mm[2, 5] == 750 and mm.sum() == 1350
    color = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    mask = np.ones((4, 6), bool)
    mask[2, 5] = False
    xyz, rgb = edit_command.avatar_points(color, depth, mask, K)
    assert xyz.shape == (1, 3)
    expect = [(2 - 3.0) * 0.6004 / 100.0, (1 - 2.0) * 0.6004 / 110.0, 0.6004]
    np.testing.assert_allclose(xyz[0], expect, rtol=1e-6)
    np.testing.assert_array_equal(rgb[0], color[1, 2])
    edit_command.write_points_ply(tmp_path / "p.ply", xyz, rgb)
    back = edit_command.read_points_ply(tmp_path / "p.ply")
    np.testing.assert_array_equal(back["xyz"], xyz)
    np.testing.assert_array_equal(back["rgb"], rgb)


def test_default_steps_are_the_live_editors():
    """`facediff edit` and the sequence evaluation default to AvatarConfig.steps; --steps still overrides."""
    import argparse
    import inspect

    from facediff_ros.core.editor.avatar import AvatarConfig
    from facediff_ros.synthetic.editor_sequences import SequenceConfig
    p = argparse.ArgumentParser()
    edit_command.add_arguments(p)
    assert p.parse_args(["a.png", "--expression", "happy", "--out", "o"]).steps == AvatarConfig.steps
    assert p.parse_args(["a.png", "--expression", "happy", "--out", "o", "--steps", "5"]).steps == 5
    assert inspect.signature(edit_command.edit_image).parameters["steps"].default is None  # -> the config's
    assert SequenceConfig().steps == AvatarConfig.steps
    assert SequenceConfig(steps=3).steps == 3
