"""AvatarEditor.edit_frame against a slow reference written here from the public primitives, on
actor frames: the full model mesh (MorphableModel.vertices, all vertices, both meshes from scratch),
both renders with smooth normals, the warp at the image's resolution on the whole frame converted to
float, and the paste done on full-frame images (FaceCrop.paste of the alpha, FaceCrop.paste_depth).
The editor's fast path (vertex subset, cached identity part, footprint-only compose, windowed remap)
must agree to within float rounding: colour <= 1 level, depth <= 0.1 mm, the same changed pixels."""

import cv2
import numpy as np
import pytest

from facediff_ros.core.editor.avatar import AvatarConfig, AvatarEditor
from facediff_ros.core.editor.detail_paste import detail_compose, footprint, upsample_to_image
from facediff_ros.core.editor.inputs import editor_triangles, face_crop, network_inputs
from facediff_ros.core.editor.warp import WARP_DEPTH_TOLERANCE_M, buffers_tensor, warp_source
from facediff_ros.core.face import expressions
from facediff_ros.core.render.renderer import Renderer
from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor

S = 64


class MixingEditor:
    """A deterministic stand-in for the network whose output depends on every input channel."""

    size = S

    def edit(self, source, buffers, category, intensity, steps=None):
        out = np.empty_like(source)
        out[:3] = np.tanh(0.6 * source[:3] + 0.8 * (2 * buffers[:3] - 1) * buffers[3:4] + 0.1 * buffers[4:7])
        out[3] = np.clip(0.7 * source[3] + 0.3 * (buffers[7] - 0.5), -1.0, 1.0)
        return out.astype(np.float32)


def _reference(model, img, depth, K, fit, category, intensity, editor, detail_paste, output, sigma=1.0):
    """(colour, depth, changed) computed the slow way (see the module docstring)."""
    cat = expressions.category_index(category)
    ident = np.asarray(fit.identity, np.float32)
    expr = np.clip(np.asarray(fit.expression, np.float64), 0, 1).astype(np.float32)
    R, t = np.asarray(fit.R, np.float64), np.asarray(fit.t, np.float64)
    w_tgt = expressions.category_weights(list(model.expression_names), cat, float(intensity))

    def posed(w):
        v = model.vertices(ident, w)  # (V, 3): every vertex
        return (v @ R.T.astype(np.float32) + t.astype(np.float32)).astype(np.float32)

    v_src, v_tgt = posed(expr), posed(w_tgt)
    tris = editor_triangles(model)
    base_depth = None
    if depth is not None:
        base_depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)
    crop = face_crop(v_src, model.landmarks68, K)
    src_rgb = crop.sample_color(img) * np.float32(1.0 / 255.0)
    src_z = None if base_depth is None else crop.sample_depth(np.nan_to_num(base_depth, nan=0.0))
    rend = Renderer(crop.intrinsics)
    src_render = rend.render(v_src, tris)  # smooth normals, as any render
    inputs = network_inputs(crop, src_rgb, src_z, v_src, v_tgt, tris, rend)
    warp = warp_source(src_rgb, src_render, rend.render(v_tgt, tris), v_src, tris, crop.intrinsics,
                       WARP_DEPTH_TOLERANCE_M)
    np.testing.assert_array_equal(buffers_tensor(warp, crop), inputs.buffers)
    out = editor.edit(inputs.source, inputs.buffers, cat, intensity)

    rgb = np.clip((np.moveaxis(out[:3], 0, -1) + 1.0) * 127.5, 0.0, 255.0)
    n = np.clip(out[3], -1.0, 1.0)
    face_z = np.where(warp.mask & (np.abs(n) < 1.0), crop.denormalise_depth(n), 0.0)
    face = warp.mask | src_render.mask
    region = cv2.dilate(face.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    H, W = img.shape[:2]
    x0, x1, y0, y1 = footprint(crop)
    # The inverse mapping written out here: footprint pixel (u - x0, v - y0) -> crop coordinates.
    M = np.array([[1 / crop.scale, 0, (x0 - crop.u0) / crop.scale],
                  [0, 1 / crop.scale, (y0 - crop.v0) / crop.scale]])

    def up(values):  # (S, S[, C]) -> full frame (H, W[, C]) float32, 0 off the footprint
        full = np.zeros((H, W) + values.shape[2:], np.float32)
        w = cv2.warpAffine(values.astype(np.float32), M, (x1 - x0, y1 - y0),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        full[y0:y1, x0:x1] = w.reshape((y1 - y0, x1 - x0) + values.shape[2:])
        return full

    a_up = up(region)
    alpha = np.zeros((H, W), np.float32)
    alpha[a_up > 0] = a_up[a_up > 0] * a_up[a_up > 0]  # crop.paste of the region onto 0 with itself as alpha
    if not detail_paste:  # crop.paste: the colour blended with the region's own lookup as alpha
        sel = a_up > 0
        old = img[sel].astype(np.float32)
        blended = old + a_up[sel][:, None] * (up(rgb)[sel] - old)
        color = img.copy()
        color[sel] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    else:
        # image_warp on the whole frame in float, each upsampling on its own.
        ok = warp.valid & np.all(np.isfinite(warp.source_xy), axis=-1)
        xy = np.where(ok[..., None], warp.source_xy, 0.0).astype(np.float32)
        valid = upsample_to_image(crop, ok.astype(np.float32)) > 1.0 - 1e-4
        up_xy = upsample_to_image(crop, xy)
        map_u = (crop.u0 + crop.scale * up_xy[..., 0]).astype(np.float32)
        map_v = (crop.v0 + crop.scale * up_xy[..., 1]).astype(np.float32)
        colour = cv2.remap(img.astype(np.float32), map_u, map_v, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        warp_rgb = np.where(valid[..., None], colour, 0.0).astype(np.float32)
        color = img.copy()
        full = np.clip(detail_compose(crop, warp_rgb, valid, rgb, sigma), 0.0, 255.0)
        a = alpha[y0:y1, x0:x1]
        sel = a > 0
        old = img[y0:y1, x0:x1][sel].astype(np.float32)
        blended = old + a[sel][:, None] * (full[sel] - old)
        color[y0:y1, x0:x1][sel] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    changed = alpha > 0
    d = np.full((H, W), np.nan, np.float32) if base_depth is None else base_depth.copy()
    # Nearest crop pixel of every footprint pixel's centre, where the face was or is.
    ix = np.clip(np.floor((np.arange(x0, x1) - crop.u0) / crop.scale + 0.5).astype(int), 0, S - 1)
    iy = np.clip(np.floor((np.arange(y0, y1) - crop.v0) / crop.scale + 0.5).astype(int), 0, S - 1)
    take = np.zeros((H, W), bool)
    take[y0:y1, x0:x1] = face[iy[:, None], ix[None, :]]
    d[take] = face_z[iy[:, None], ix[None, :]][take[y0:y1, x0:x1]]
    d = np.where(d > 0, d, np.nan).astype(np.float32)
    changed |= take
    if output == "head":
        color = np.where(changed[..., None], color, 0).astype(np.uint8)
        d = np.where(changed, d, np.nan).astype(np.float32)
    return color, d, changed


@pytest.fixture(scope="module")
def frames():
    actor = SyntheticActor(ActorConfig(seed=43, num_frames=40, texture_size=256))
    return [actor.frame(i) for i in (4, 17, 31)]


@pytest.mark.parametrize("detail_paste", [True, False])
def test_edit_frame_matches_the_slow_reference(model, frames, detail_paste):
    editor = MixingEditor()
    avatar = AvatarEditor(editor, model, AvatarConfig(steps=2, detail_paste=detail_paste))
    checked = 0
    for f in frames:
        depth = f.depth.astype(np.float32) * np.float32(f.depth_scale)
        for category, intensity in (("happy", 1.0), ("surprised", 0.7)):
            for d in (depth, None):
                for output in ("frame", "head"):
                    got = avatar.edit_frame(f.color, d, f.intrinsics, f, category, intensity, output=output)
                    color, z, changed = _reference(model, f.color, d, f.intrinsics, f, category, intensity,
                                                   editor, detail_paste, output)
                    assert changed.sum() > 2000  # the face was edited
                    np.testing.assert_array_equal(got.mask, changed)
                    assert np.abs(got.color.astype(int) - color.astype(int)).max() <= 1
                    np.testing.assert_array_equal(np.isnan(got.depth_m), np.isnan(z))
                    fin = ~np.isnan(z)
                    assert np.abs(got.depth_m[fin] - z[fin]).max() <= 1e-4
                    checked += 1
    assert checked == 24


def test_the_identity_part_follows_the_fit(model, frames):
    """A new identity is not served from the previous fit's cached part."""
    avatar = AvatarEditor(MixingEditor(), model)
    f = frames[0]
    ident, expr, R, t = avatar.check_fit(f)
    a = avatar._posed(ident, expr, R, t)
    other = (ident + 0.5).astype(np.float32)
    b = avatar._posed(other, expr, R, t)
    full = model.vertices(other, expr)[avatar.vertex_ids]
    np.testing.assert_allclose(b, (full @ R.T + t).astype(np.float32), atol=1e-6)
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(avatar._posed(ident, expr, R, t), a)
