"""AvatarEditor.edit_frame: where the edit lands in the frame (against the crop mapping computed
here), passthrough with an identity editor, colour-only mode, the 'head' output, validation."""

from types import SimpleNamespace

import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.avatar import AvatarConfig, AvatarEditor, check_target
from facediff_ros.core.editor.inputs import EDITOR_REGIONS
from facediff_ros.core.face.expressions import CATEGORIES, category_weights
from facediff_ros.core.face.morphable_model import rotation_matrix
from facediff_ros.core.render.renderer import Renderer

K = Intrinsics.from_fov(640, 480, 69.0)
S = 64


class IdentityEditor:
    """Returns the source crop: the edit that changes nothing."""

    size = S

    def __init__(self):
        self.calls = []

    def edit(self, source, buffers, category, intensity, steps=None):
        self.calls.append((category, intensity, steps))
        return np.array(source, np.float32)


class ConstantEditor(IdentityEditor):
    """Returns one colour everywhere and the depth of the crop centre (normalised 0)."""

    def __init__(self, rgb01=(1.0, 0.0, 0.0)):
        super().__init__()
        self.rgb01 = rgb01

    def edit(self, source, buffers, category, intensity, steps=None):
        self.calls.append((category, intensity, steps))
        out = np.zeros((4, S, S), np.float32)
        out[:3] = (np.asarray(self.rgb01, np.float32) * 2 - 1)[:, None, None]
        return out


def _fit(model, expression, centre=(0.03, -0.02, 0.6), rvec=(0.1, 0.25, 0.0), seed=0):
    """A fit whose landmark centroid sits at ``centre`` (camera frame, m)."""
    rng = np.random.default_rng(seed)
    identity = rng.normal(0, 0.5, 20).astype(np.float32)
    R = rotation_matrix(rvec)
    c_model = model.vertices(identity, expression)[model.landmarks68].mean(axis=0)
    t = np.asarray(centre, np.float64) - R @ c_model
    return SimpleNamespace(identity=identity, expression=np.asarray(expression, np.float32), R=R, t=t)


def _posed(model, fit, expression):
    v = model.vertices(fit.identity, expression)
    return (v @ fit.R.T + fit.t).astype(np.float32)


def _smooth_frame():
    """A smooth colour image and a tilted plane of depth: resampling them costs almost nothing."""
    v, u = np.mgrid[0:480, 0:640].astype(np.float64)
    color = np.stack([40 + 0.3 * u, 30 + 0.35 * v, 128 + 50 * np.sin(u / 60.0)], -1)
    depth = 0.6 + 0.0002 * (u - 320) + 0.0001 * (v - 240)  # 0.2 / 0.1 mm per pixel
    return np.clip(np.rint(color), 0, 255).astype(np.uint8), depth.astype(np.float32)


@pytest.fixture(scope="module")
def happy(model):
    return category_weights(model.expression_names, "happy", 0.6)


def _crop_mapping(model, fit):
    """u0, v0, scale, z_centre of the editor's crop from its definition (crop.py's docstring)."""
    c = _posed(model, fit, fit.expression)[model.landmarks68].astype(np.float64).mean(axis=0)
    scale = 0.24 * 0.5 * (K.fx + K.fy) / c[2] / S
    uc, vc = K.fx * c[0] / c[2] + K.cx, K.fy * c[1] / c[2] + K.cy
    half = 0.5 * (S - 1) * scale
    return uc - half, vc - half, scale, c[2]


def test_the_edit_lands_on_the_target_face_by_the_crop_mapping(model, happy):
    """A constant editor (red, depth = the crop centre's): the frame is red with that depth exactly
    where the target face is, by the mapping u = u0 + scale x computed here, and untouched away
    from it."""
    color, depth = _smooth_frame()
    fit = _fit(model, np.zeros(model.num_expression, np.float32))
    editor = ConstantEditor()
    # The plain paste: the crop's colour exactly (the detail paste adds the frame's own fine
    # detail to it: test_detail_paste.py).
    av = AvatarEditor(editor, model, AvatarConfig(detail_paste=False))
    out = av.edit_frame(color, depth, K, fit, "happy", 0.6)
    u0, v0, scale, zc = _crop_mapping(model, fit)
    assert out.crop.u0 == pytest.approx(u0, abs=1e-3) and out.crop.scale == pytest.approx(scale, rel=1e-5)
    # The target face rendered here, in the crop camera of that mapping.
    tris, _, _ = model.triangles(EDITOR_REGIONS)
    crop_K = Intrinsics(K.fx / scale, K.fy / scale, (K.cx - u0) / scale, (K.cy - v0) / scale, S, S)
    target = Renderer(crop_K).render(_posed(model, fit, happy), tris).mask  # (S, S)
    source = Renderer(crop_K).render(_posed(model, fit, fit.expression), tris).mask
    assert target.sum() > 0.3 * S * S and (target != source).any()  # the expression moved the face
    # Each image pixel's nearest crop pixel.
    v, u = np.mgrid[0:480, 0:640]
    x, y = (u - u0) / scale, (v - v0) / scale
    ix, iy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    inside = (ix >= 0) & (ix < S) & (iy >= 0) & (iy < S)
    on_target = np.zeros((480, 640), bool)
    on_target[inside] = target[iy[inside], ix[inside]]
    on_source_only = np.zeros((480, 640), bool)
    on_source_only[inside] = (source & ~target)[iy[inside], ix[inside]]
    # Depth: the crop centre's on the target face, none on the face the expression left, input elsewhere.
    assert np.allclose(out.depth_m[on_target], zc, atol=1e-6)
    assert np.isnan(out.depth_m[on_source_only]).all()
    rest = ~on_target & ~on_source_only
    assert np.array_equal(out.depth_m[rest], depth[rest])
    # Colour: red well inside the target face (every bilinear tap on it).
    core = np.zeros((S, S), bool)
    core[1:-1, 1:-1] = (target[:-2, 1:-1] & target[2:, 1:-1] & target[1:-1, :-2] & target[1:-1, 2:]
                        & target[1:-1, 1:-1])
    deep = np.zeros((480, 640), bool)
    deep[inside] = core[iy[inside], ix[inside]]
    assert (out.color[deep] == [255, 0, 0]).all()
    # The blend covers the faces grown by one crop pixel, read bilinearly (taps within one more):
    # nothing changes beyond 2 crop pixels (Chebyshev) of either face.
    near = np.pad(target | source, 2)
    near = np.any([np.roll(np.roll(near, dy, 0), dx, 1) for dy in range(-2, 3) for dx in range(-2, 3)], 0)
    near = near[2:-2, 2:-2]
    far = np.ones((480, 640), bool)
    far[inside] = ~near[iy[inside], ix[inside]]
    assert np.array_equal(out.color[far], color[far])
    assert not out.mask[far].any() and out.mask[on_target].all()
    assert editor.calls == [(CATEGORIES.index("happy"), 0.6, AvatarConfig().steps)]
    assert set(out.timings) == {"mesh", "crop", "sample", "inputs", "network", "detail", "paste", "total"}
    assert out.timings["total"] >= out.timings["network"] >= 0


def test_passthrough_identity_editor(model, happy):
    """An editor that returns its source: the frame is the input outside the mask and the input up to
    resampling inside (a smooth image: a few grey levels; a tilted plane: the nearest-pixel step)."""
    color, depth = _smooth_frame()
    fit = _fit(model, happy)  # already showing the target: source and target face coincide
    out = AvatarEditor(IdentityEditor(), model).edit_frame(color, depth, K, fit, "happy", 0.6)
    m = out.mask
    assert 3000 < m.sum() < 0.5 * m.size
    assert np.array_equal(out.color[~m], color[~m])
    diff = np.abs(out.color.astype(int) - color.astype(int))[m]
    assert diff.max() <= 3 and diff.mean() < 1.0, (diff.max(), diff.mean())
    assert np.array_equal(out.depth_m[~m], depth[~m])
    ok = m & np.isfinite(out.depth_m)
    assert ok.sum() > 0.9 * (m.sum() - 2 * (m.sum() ** 0.5) * 4)  # all but a ring at the edge
    # Nearest crop pixel: off by at most ~0.6 crop px = 0.6 scale image px along the plane's gradient.
    bound = 0.6 * out.crop.scale * np.hypot(0.0002, 0.0001) * 1.5 + 1e-6
    assert np.abs(out.depth_m[ok] - depth[ok]).max() < bound
    assert not out.colour_only and out.category == "happy" and out.intensity == 0.6


def test_colour_only_uses_the_fitted_mesh_depth(model, happy):
    """No input depth: depth only on the edited face, where it is the fitted mesh's (rendered here
    at the image's own resolution) up to the crop's resampling."""
    color, _ = _smooth_frame()
    fit = _fit(model, happy)
    out = AvatarEditor(IdentityEditor(), model).edit_frame(color, None, K, fit, "happy", 0.6)
    assert out.colour_only
    assert np.isnan(out.depth_m[~out.mask]).all()
    tris, _, _ = model.triangles(EDITOR_REGIONS)
    full = Renderer(K).render(_posed(model, fit, happy), tris)
    both = np.isfinite(out.depth_m) & full.mask
    assert both.sum() > 0.8 * np.isfinite(out.depth_m).sum() > 1000
    err = np.abs(out.depth_m[both] - full.depth[both])
    assert np.median(err) < 0.002 and np.percentile(err, 90) < 0.006, (np.median(err), np.percentile(err, 90))
    assert np.array_equal(out.color[~out.mask], color[~out.mask])


def test_head_output_keeps_only_the_edited_region(model, happy):
    color, depth = _smooth_frame()
    fit = _fit(model, happy)
    av = AvatarEditor(IdentityEditor(), model, AvatarConfig(output="head"))
    head = av.edit_frame(color, depth, K, fit, "happy", 0.6)
    frame = av.edit_frame(color, depth, K, fit, "happy", 0.6, output="frame")
    assert (head.color[~head.mask] == 0).all() and np.isnan(head.depth_m[~head.mask]).all()
    assert np.array_equal(head.color[head.mask], frame.color[frame.mask])
    assert np.array_equal(head.mask, frame.mask)


def test_neutral_and_intensity_zero_still_run_the_network(model):
    color, depth = _smooth_frame()
    fit = _fit(model, np.zeros(model.num_expression, np.float32))
    editor = IdentityEditor()
    av = AvatarEditor(editor, model, AvatarConfig(steps=2))
    av.edit_frame(color, depth, K, fit, "neutral", 1.0)
    av.edit_frame(color, depth, K, fit, "sad", 0.0, steps=3)
    assert editor.calls == [(0, 1.0, 2), (CATEGORIES.index("sad"), 0.0, 3)]


def test_validation(model):
    color, depth = _smooth_frame()
    fit = _fit(model, np.zeros(model.num_expression, np.float32))
    av = AvatarEditor(IdentityEditor(), model)
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="intensity"):
            av.edit_frame(color, depth, K, fit, "happy", bad)
    for bad in ("joy", 7, -1):
        with pytest.raises(ValueError, match="category"):
            av.edit_frame(color, depth, K, fit, bad, 0.5)
    assert check_target("HAPPY", 1) == (1, 1.0)
    with pytest.raises(ValueError, match="color"):
        av.edit_frame(color[:, :, 0], depth, K, fit, "happy", 0.5)
    with pytest.raises(ValueError, match="color"):
        av.edit_frame(color.astype(np.float32), depth, K, fit, "happy", 0.5)
    with pytest.raises(ValueError, match="depth"):
        av.edit_frame(color, depth[:100], K, fit, "happy", 0.5)
    with pytest.raises(ValueError, match="depth"):
        av.edit_frame(color, (depth * 1000).astype(np.uint16), K, fit, "happy", 0.5)
    nan = SimpleNamespace(**{**vars(fit), "t": np.array([0.0, np.nan, 0.6])})
    with pytest.raises(ValueError, match="NaN"):
        av.edit_frame(color, depth, K, nan, "happy", 0.5)
    short = SimpleNamespace(**{**vars(fit), "expression": fit.expression[:50]})
    with pytest.raises(ValueError, match="expression"):
        av.edit_frame(color, depth, K, short, "happy", 0.5)
    away = SimpleNamespace(**{**vars(fit), "t": fit.t + [2.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="outside"):
        av.edit_frame(color, depth, K, away, "happy", 0.5)
    for kw in ({"steps": 0}, {"steps": 9}, {"steps": 2.5}, {"output": "face"}):
        with pytest.raises(ValueError):
            AvatarConfig(**kw)
    with pytest.raises(ValueError, match="steps"):
        av.edit_frame(color, depth, K, fit, "happy", 0.5, steps=20)


def test_a_saved_random_network_runs_end_to_end(model, tmp_path):
    """The real path: weights saved by train.save_weights, loaded through a backend, any crop size."""
    from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
    from facediff_ros.core.editor.train import TrainConfig, save_weights
    net_cfg = EditorNetConfig(crop_size=16, channels=(8, 16), emb_dim=32)
    save_weights(tmp_path, EditorUNet(net_cfg).state_dict(), TrainConfig(net=net_cfg))
    av = AvatarEditor.from_weights(tmp_path, "torch", model=model, config=AvatarConfig(steps=2))
    assert av.crop_config.size_px == 16 and av.backend.name == "torch"
    color, depth = _smooth_frame()
    fit = _fit(model, np.zeros(model.num_expression, np.float32))
    out = av.edit_frame(color, depth, K, fit, "surprised", 1.0)
    assert out.color.shape == color.shape and out.color.dtype == np.uint8
    assert out.depth_m.dtype == np.float32 and out.mask.any()
    assert np.array_equal(out.color[~out.mask], color[~out.mask])
