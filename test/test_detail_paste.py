"""The detail-preserving paste (core/editor/detail_paste.py) against expectations computed here:
the image-resolution warp's lookups, the two-band composition (a frame's fine pattern survives
while the network's coarse correction is applied; invalid pixels take the network's output), and
edit_frame with it (the frame's own detail kept, where the plain paste blurs it)."""

import cv2
import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.avatar import AvatarConfig, AvatarEditor
from facediff_ros.core.editor.crop import CropConfig, FaceCrop
from facediff_ros.core.editor.detail_paste import detail_compose, footprint, image_warp
from facediff_ros.core.editor.inputs import EDITOR_REGIONS
from facediff_ros.core.editor.warp import WarpBuffers
from facediff_ros.core.face.expressions import category_weights
from facediff_ros.core.render.renderer import Renderer
from test_avatar import IdentityEditor, _fit, _smooth_frame

K = Intrinsics.from_fov(640, 480, 69.0)
S = 32


def _crop():
    return FaceCrop(np.array([0.01, -0.02, 0.6]), K, CropConfig(size_px=S))


def _textured_frame(seed=0):
    """A smooth frame plus a +-25 level 2 px checkerboard (detail far finer than a crop pixel)."""
    color, _ = _smooth_frame()
    v, u = np.mgrid[0:480, 0:640]
    texture = np.where(((u // 2) + (v // 2)) % 2 == 0, 25, -25)[..., None]
    return np.clip(color.astype(int) + texture, 0, 255).astype(np.uint8)


def _identity_warp(valid):
    """Each target crop pixel looks up its own position (an unchanged expression)."""
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    xy = np.stack([x, y], -1)
    xy[~valid] = np.nan
    return WarpBuffers(color=np.zeros((S, S, 3), np.float32), valid=valid, depth=np.zeros((S, S), np.float32),
                       normals=np.zeros((S, S, 3), np.float32), mask=np.ones((S, S), bool), source_xy=xy)


def _high_pass(a):
    """The image minus the mean of its 4 neighbours (the checkerboard's detail)."""
    return a - (np.roll(a, 1, 0) + np.roll(a, -1, 0) + np.roll(a, 1, 1) + np.roll(a, -1, 1)) / 4


def _crop_coords(crop):
    """Each footprint pixel's crop coordinates (x, y), from the mapping u = u0 + scale x."""
    x0, x1, y0, y1 = footprint(crop)
    v, u = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    return (u - crop.u0) / crop.scale, (v - crop.v0) / crop.scale


def test_image_warp_samples_the_frame_at_the_upsampled_lookups():
    """A shifted lookup (each target pixel reads 0.3 crop px right, 0.2 down) on a linear image:
    the warp is the image at the shifted image positions; a crop pixel without a valid lookup
    invalidates the image pixels whose bilinear taps read it."""
    crop = _crop()
    v, u = np.mgrid[0:480, 0:640].astype(np.float64)
    img = np.stack([0.2 * u, 0.3 * v, 0.1 * u + 0.1 * v], -1).astype(np.float32)
    valid = np.ones((S, S), bool)
    valid[5, 7] = False
    wb = _identity_warp(valid)
    wb.source_xy[..., 0] += 0.3
    wb.source_xy[..., 1] += 0.2
    col, ok = image_warp(img, crop, wb)
    x, y = _crop_coords(crop)
    assert col.shape == x.shape + (3,) and col.dtype == np.float32
    assert ok.shape == x.shape and ok.dtype == bool
    us, vs = crop.u0 + crop.scale * (x + 0.3), crop.v0 + crop.scale * (y + 0.2)
    expect = np.stack([0.2 * us, 0.3 * vs, 0.1 * us + 0.1 * vs], -1)
    inner = (x >= 0) & (x <= S - 1) & (y >= 0) & (y <= S - 1)  # no border clamping of the lookup
    assert np.abs(col - expect)[ok & inner].max() < 0.02
    reads_it = (np.abs(y - 5) < 1) & (np.abs(x - 7) < 1)
    assert not ok[reads_it].any() and ok[~reads_it & inner].all()
    assert (col[~ok] == 0).all()


def test_a_fine_pattern_survives_while_the_coarse_correction_is_applied():
    """Unchanged expression, network output = its colour input (the crop's own sampling) plus a
    linear correction c(x, y): inside the face the result is the frame itself plus c at each pixel's
    crop coordinates -- the 2 px checkerboard intact (a plain paste averages it away)."""
    crop = _crop()
    img = _textured_frame()
    valid = np.ones((S, S), bool)
    col, ok = image_warp(img, crop, _identity_warp(valid))
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    c = np.stack([0.5 * x - 0.3 * y, 0 * x + 4.0, -0.2 * x], -1)  # (S, S, 3) grey levels
    edit = crop.sample_color(img) + c
    out = detail_compose(crop, col, ok, edit)
    xf, yf = _crop_coords(crop)
    c_img = np.stack([0.5 * xf - 0.3 * yf, 0 * xf + 4.0, -0.2 * xf], -1)
    x0, x1, y0, y1 = footprint(crop)
    frame = img[y0:y1, x0:x1].astype(np.float64)
    # Away from the footprint's border (where the crop's anti-aliasing reads outside it).
    inner = (xf >= 3) & (xf <= S - 4) & (yf >= 3) & (yf <= S - 4)
    assert out.shape == frame.shape and out.dtype == np.float32
    err = np.abs(out - frame - c_img)[inner]
    assert err.mean() < 0.05 and err.max() < 0.5, (err.mean(), err.max())
    # The checkerboard's amplitude survives; the plain paste of the same edit loses most of it.
    plain = crop.paste(img, np.clip(edit, 0, 255), np.ones((S, S)))[y0:y1, x0:x1].astype(np.float64)
    amplitude = np.abs(_high_pass(frame))[inner].mean()
    assert np.abs(_high_pass(out))[inner].mean() > 0.9 * amplitude
    assert np.abs(_high_pass(plain))[inner].mean() < 0.3 * amplitude
    # A Gaussian low-pass of a constant correction is the same constant.
    out_lp = detail_compose(crop, col, ok, crop.sample_color(img) + 4.0, sigma=1.5)
    assert np.abs(out_lp - frame - 4.0)[inner].max() < 0.5


def test_invalid_pixels_take_the_network_output_and_the_blend_is_one_crop_pixel_wide():
    crop = _crop()
    img = _textured_frame()
    valid = np.ones((S, S), bool)
    valid[:, : S // 2] = False  # the left half has no warped colour (e.g. the mouth interior)
    col, ok = image_warp(img, crop, _identity_warp(valid))
    edit = np.full((S, S, 3), 50.0, np.float32)
    out = detail_compose(crop, np.where(ok[..., None], col, -999.0), ok, edit)
    xf, yf = _crop_coords(crop)
    # Left of the valid region: the network's colour exactly (the warp's values are never read).
    assert not ok[xf < S // 2 - 1].any() and np.allclose(out[xf < S // 2 - 1], 50.0)
    # Right, more than a crop pixel inside: the frame's detail on the network's level, i.e. the
    # frame minus its own local mean plus 50: its deviation from 50 has the frame's amplitude.
    x0, x1, y0, y1 = footprint(crop)
    frame = img[y0:y1, x0:x1].astype(np.float64)
    far = (xf > S // 2 + 1) & (xf <= S - 4) & (yf >= 3) & (yf <= S - 4)
    assert np.abs(_high_pass(out) - _high_pass(frame))[far].mean() < 0.5
    assert abs(float(np.mean(out[far])) - 50.0) < 3.0
    # Nothing valid: the network's output, upsampled.
    assert np.allclose(detail_compose(crop, col, np.zeros_like(ok), edit), 50.0)


def test_detail_compose_rejects_bad_input():
    crop = _crop()
    x0, x1, y0, y1 = footprint(crop)
    h, w = y1 - y0, x1 - x0
    with pytest.raises(ValueError, match="warp_img must be"):
        detail_compose(crop, np.zeros((h, w, 3)), np.ones((h, w + 1), bool), np.zeros((S, S, 3)))
    with pytest.raises(ValueError, match="edit must be"):
        detail_compose(crop, np.zeros((h, w, 3)), np.ones((h, w), bool), np.zeros((S + 1, S, 3)))
    with pytest.raises(ValueError, match="sigma"):
        detail_compose(crop, np.zeros((h, w, 3)), np.ones((h, w), bool), np.zeros((S, S, 3)), sigma=-1)
    with pytest.raises(ValueError, match="detail_sigma"):
        AvatarConfig(detail_sigma=-0.5)
    with pytest.raises(ValueError, match="detail_paste"):
        AvatarConfig(detail_paste="yes")


def test_edit_frame_keeps_the_frames_own_detail(model):
    """An identity editor, the source already showing the target (the warp is the identity): the
    detail paste gives back the frame's fine texture on the face, the plain paste a blurred one."""
    _, depth = _smooth_frame()
    color = _textured_frame()
    happy = category_weights(model.expression_names, "happy", 0.6)
    fit = _fit(model, happy)
    plain = AvatarEditor(IdentityEditor(), model, AvatarConfig(detail_paste=False)).edit_frame(
        color, depth, K, fit, "happy", 0.6)
    detail = AvatarEditor(IdentityEditor(), model).edit_frame(color, depth, K, fit, "happy", 0.6)
    assert detail.color.shape == color.shape and detail.color.dtype == np.uint8
    assert np.array_equal(detail.color[~detail.mask], color[~detail.mask])
    assert np.array_equal(detail.depth_m, plain.depth_m, equal_nan=True)  # depth: the same path
    # Well inside the face (the target face rendered in the crop, eroded by 2 crop pixels, read by
    # each image pixel's nearest crop pixel): the plain paste's ring of network colour and the
    # blend into it are left out.
    crop = detail.crop
    tris, _, _ = model.triangles(EDITOR_REGIONS)
    v_tgt = (model.vertices(fit.identity, happy) @ fit.R.T + fit.t).astype(np.float32)
    target = Renderer(crop.intrinsics).render(v_tgt, tris).mask
    core = cv2.erode(target.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    v, u = np.mgrid[0:480, 0:640]
    ix = np.clip(np.floor((u - crop.u0) / crop.scale + 0.5).astype(int), 0, crop.size - 1)
    iy = np.clip(np.floor((v - crop.v0) / crop.scale + 0.5).astype(int), 0, crop.size - 1)
    half = crop.size / 2
    on_crop = (np.abs((u - crop.u0) / crop.scale - (half - 0.5)) < half) & \
        (np.abs((v - crop.v0) / crop.scale - (half - 0.5)) < half)
    deep = core[iy, ix] & on_crop
    assert deep.sum() > 5000 and detail.mask[deep].all()
    err_plain = np.abs(plain.color.astype(int) - color)[deep].mean()
    err_detail = np.abs(detail.color.astype(int) - color)[deep]
    assert err_plain > 15 and err_detail.mean() < 0.05 * err_plain, (err_plain, err_detail.mean())
    assert detail.timings["detail"] >= 0 and "detail" in plain.timings
