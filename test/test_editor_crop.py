"""The editor's face crop: exact image <-> crop mapping, crop intrinsics, sampling and pasting."""

import cv2
import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.crop import CropConfig, FaceCrop
from facediff_ros.core.render.renderer import Renderer
from facediff_ros.core.render.textures import atlas_triangles, procedural_texture, TextureParams

K = Intrinsics.from_fov(640, 480, 69.0)  # a D435 colour camera


def _ramps():
    v, u = np.mgrid[0:K.height, 0:K.width].astype(np.float32)
    return u, v


@pytest.fixture(scope="module")
def head(model):
    """A textured head 0.6 m in front of the camera, rendered into the full image."""
    tris, uvs, _ = atlas_triangles(model)
    tex = procedural_texture(model, params=TextureParams(seed=1), size=256)
    v = model.vertices()
    centre = v[model.landmarks68].mean(0)
    vc = (v - centre + np.array([0.02, -0.01, 0.6], np.float32)).astype(np.float32)  # model frame faces -z
    full = Renderer(K).render(vc, tris, uvs, tex)
    return vc, tris, uvs, tex, full, vc[model.landmarks68].mean(0)


def test_crop_intrinsics_project_points_where_the_mapping_puts_them():
    crop = FaceCrop([0.03, -0.02, 0.55], K)
    rng = np.random.default_rng(0)
    p = rng.uniform([-0.1, -0.1, 0.45], [0.1, 0.1, 0.7], (50, 3))
    uv = K.project(p)
    xy = crop.intrinsics.project(p)
    u, v = crop.crop_to_image(xy[:, 0], xy[:, 1])
    np.testing.assert_allclose(np.stack([u, v], 1), uv, atol=1e-9)
    # The face centre lands in the middle of the crop and extent_m spans size_px pixels there.
    np.testing.assert_allclose(crop.intrinsics.project(crop.centre), [31.5, 31.5], atol=1e-9)
    c = crop.config
    assert crop.intrinsics.fx * c.extent_m / crop.z_centre == pytest.approx(c.size_px)
    assert crop.scale == pytest.approx(c.extent_m * K.fx / 0.55 / c.size_px)


def test_pixel_centres_round_trip_image_crop_image():
    crop = FaceCrop([0.01, 0.02, 0.62], K)
    g = np.arange(64.0)
    x, y = crop.image_to_crop(*crop.crop_to_image(g, g[::-1]))
    np.testing.assert_allclose(x, g, atol=1e-12)
    np.testing.assert_allclose(y, g[::-1], atol=1e-12)
    # Sampling an image that holds each pixel's own coordinate returns the mapped coordinate:
    # Gaussian blur and bilinear interpolation keep a linear function (cv2 places bilinear
    # samples on a 1/32-pixel grid, hence the tolerance).
    U, V = _ramps()
    su, sv = crop.sample_color(U), crop.sample_color(V)
    xx, yy = np.meshgrid(g, g)
    eu, ev = crop.crop_to_image(xx, yy)
    np.testing.assert_allclose(su, eu, atol=0.02)
    np.testing.assert_allclose(sv, ev, atol=0.02)
    # And pasting that crop back puts each value on the pixel it came from.
    # (Between the outermost pixel centres and the crop's edge the crop's border is repeated.)
    back_u = crop.paste(U, su, np.ones(crop.shape, bool))
    x, y = crop.image_to_crop(U, _ramps()[1])
    inner = (x >= 0) & (x <= 63) & (y >= -0.5) & (y < 63.5)
    assert inner.sum() > 150 * 150
    np.testing.assert_allclose(back_u[inner], U[inner], atol=0.03 * crop.scale)


def test_sample_color_equals_a_full_image_reference():
    """The ROI shortcut gives what blurring the whole image and interpolating it would."""
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (K.height, K.width, 3)).astype(np.float32), (0, 0), 2.0)
    crop = FaceCrop([-0.05, 0.01, 0.5], K)
    sigma = 0.4 * np.sqrt(crop.scale ** 2 - 1)
    assert crop.aa_sigma_px == pytest.approx(sigma)
    ref_img = cv2.GaussianBlur(img, (0, 0), sigma)
    g = np.arange(64.0)
    u, v = crop.crop_to_image(*np.meshgrid(g, g))
    iu, iv = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = (u - iu)[..., None], (v - iv)[..., None]
    ref = ((1 - fv) * ((1 - fu) * ref_img[iv, iu] + fu * ref_img[iv, iu + 1])
           + fv * ((1 - fu) * ref_img[iv + 1, iu] + fu * ref_img[iv + 1, iu + 1]))
    out = crop.sample_color(img)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 0.5  # 1/32-pixel placement on a gently varying image
    assert np.abs(out - ref).mean() < 0.05
    # uint8 input: the same, in 0..255 units
    out8 = crop.sample_color(np.rint(img).astype(np.uint8))
    assert np.abs(out8 - out).max() < 0.6


def test_mesh_rendered_with_crop_intrinsics_equals_the_cropped_full_render(head):
    vc, tris, uvs, tex, full, centre = head
    # Integer scale and origin: every crop pixel's ray is an image pixel's ray, so nearest depth
    # sampling of the full render must give the crop render itself.
    uc, vcen = K.project(centre)
    crop = FaceCrop.from_mapping(float(np.round(uc)) - 63, float(np.round(vcen)) - 63, 2.0,
                                 float(centre[2]), K)
    small = Renderer(crop.intrinsics).render(vc, tris, uvs, tex)
    d = crop.sample_depth(full.depth)
    both = (d > 0) & small.mask
    assert both.sum() > 0.5 * 64 * 64
    assert np.mean((d > 0) == small.mask) > 0.999  # only ties on shared edges may differ
    np.testing.assert_allclose(d[both], small.depth[both], atol=1e-6)
    # Colour: the anti-aliased crop of the full render against the crop render, in the interior
    # (the pre-blur spreads edges by ~1 crop pixel).
    col = crop.sample_color(full.color)
    inner = cv2.erode(small.mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    err = np.abs(col - small.color)[inner]
    assert np.median(err) < 0.01 and np.mean(err) < 0.02

    # Any scale (the FaceCrop of the centre): the silhouettes agree to a pixel's rounding.
    crop = FaceCrop(centre, K)
    small = Renderer(crop.intrinsics).render(vc, tris, uvs, tex)
    d = crop.sample_depth(full.depth)
    iou = np.sum((d > 0) & small.mask) / np.sum((d > 0) | small.mask)
    assert iou > 0.97
    same = (d > 0) & small.mask & (np.abs(d - small.depth) < 0.01)
    assert same.sum() > 0.95 * ((d > 0) & small.mask).sum()
    # The crop of a head 0.6 m away holds it: face pixels across most of the crop, and the
    # landmark centre's surface near the middle.
    assert 0.4 < small.mask.mean() < 0.95
    assert small.mask[24:40, 24:40].all()


def test_paste_of_an_unmodified_crop_leaves_unmasked_pixels_unchanged():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (K.height, K.width, 3), dtype=np.uint8)
    crop = FaceCrop([0.0, 0.0, 0.6], K)
    c = crop.sample_color(img)
    mask = np.zeros(crop.shape, bool)
    mask[:, 40:] = True
    out = crop.paste(img, c, mask)
    assert out.dtype == np.uint8 and out.shape == img.shape
    U, V = _ramps()
    x, y = crop.image_to_crop(U, V)
    # Bilinear alpha is exactly 0 left of crop column 39; the whole image outside the crop too.
    untouched = (x < 39) | (x < -0.5) | (x >= 63.5) | (y < -0.5) | (y >= 63.5)
    np.testing.assert_array_equal(out[untouched], img[untouched])
    changed = (x > 41) & (x < 63) & (y > 0) & (y < 63)
    assert np.mean(np.any(out[changed] != img[changed], axis=1)) > 0.5  # the blurred crop replaced them


def test_paste_is_the_exact_inverse_mapping():
    crop = FaceCrop([0.04, -0.03, 0.7], K)
    g = np.arange(64, dtype=np.float32)
    xs = np.repeat(g[None, :], 64, 0)  # (S, S) each pixel's own x
    base = np.full(K.shape, -7.0, np.float32)
    out = crop.paste(base, xs, np.ones(crop.shape, bool))
    U, V = _ramps()
    x, y = crop.image_to_crop(U, V)
    on = (x >= -0.5) & (x < 63.5) & (y >= -0.5) & (y < 63.5)
    np.testing.assert_allclose(out[on], np.clip(x[on], 0, 63), atol=0.04)
    np.testing.assert_array_equal(out[~on], -7.0)
    # Depth: nearest lookup, the mask respected, integer units written in those units.
    depth_mm = np.full(K.shape, 1500, np.uint16)
    crop_depth = (0.6 + 0.001 * xs).astype(np.float32)
    mask = np.ones(crop.shape, bool)
    mask[:8] = False
    out = crop.paste_depth(depth_mm, crop_depth, mask, depth_scale=0.001)
    assert out.dtype == np.uint16
    ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
    take = on & (iy >= 8)
    np.testing.assert_array_equal(out[take], (600 + ix[take]).astype(np.uint16))
    np.testing.assert_array_equal(out[~take], 1500)


def test_sample_depth_is_nearest_and_keeps_holes():
    z = np.full(K.shape, 1.2, np.float32)
    z[:, 330:] = 0.55  # a silhouette through the crop
    z[240:250, 300:310] = 0.0  # a hole
    z[100, 320] = np.nan
    crop = FaceCrop([0.0, 0.0, 0.6], K)
    d = crop.sample_depth(z)
    assert set(np.unique(d)) <= {0.0, np.float32(0.55), np.float32(1.2)}
    assert (d == 0).any() and (d == np.float32(0.55)).any() and (d == np.float32(1.2)).any()
    mm = crop.sample_depth(np.rint(np.nan_to_num(z) * 1000).astype(np.uint16), depth_scale=0.001)
    np.testing.assert_allclose(mm, d, atol=1e-6)
    # Off the image: no depth.
    edge = FaceCrop([0.35, 0.0, 0.6], K)
    assert not edge.in_image().all()
    np.testing.assert_array_equal(edge.sample_depth(z)[~edge.in_image()], 0.0)


def test_depth_normalisation_round_trip_with_holes():
    crop = FaceCrop([0.0, 0.0, 0.6], K, CropConfig(depth_range_m=0.1, hole_value=1.0))
    z = np.full(crop.shape, 0.62, np.float32)
    z[0, 0] = 0.0
    z[0, 1] = np.nan
    z[0, 2] = 0.45   # 0.15 m in front: clipped to -1
    z[0, 3] = 2.0    # background: clipped to +1
    n, valid = crop.normalise_depth(z)
    assert n.dtype == np.float32 and valid.dtype == bool
    assert n[5, 5] == pytest.approx(0.2)
    assert (n[0, 0], n[0, 1], n[0, 2], n[0, 3]) == (1.0, 1.0, -1.0, 1.0)
    assert not valid[0, 0] and not valid[0, 1] and valid[0, 2]
    back = crop.denormalise_depth(n, valid)
    np.testing.assert_allclose(back[5:, 5:], 0.62, atol=1e-6)
    assert back[0, 0] == 0 and back[0, 1] == 0 and back[0, 2] == pytest.approx(0.5)
    t = crop.rgbd(np.full(crop.shape + (3,), 0.25, np.float32), z)
    assert t.shape == (4, 64, 64) and t.dtype == np.float32
    np.testing.assert_allclose(t[:3], -0.5)
    np.testing.assert_array_equal(t[3], n)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="centre_cam"):
        FaceCrop([0, 0, -1], K)
    with pytest.raises(ValueError, match="metres"):
        FaceCrop([0, 0, 600.0], K)  # millimetres by mistake
    with pytest.raises(ValueError, match="size_px"):
        CropConfig(size_px=3)
    crop = FaceCrop([0, 0, 0.6], K)
    with pytest.raises(ValueError, match="image must be"):
        crop.sample_color(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="depth_scale"):
        crop.sample_depth(np.zeros(K.shape, np.uint16))
    with pytest.raises(ValueError, match="crop_mask"):
        crop.paste(np.zeros(K.shape + (3,), np.uint8), np.zeros((64, 64, 3)), np.full((64, 64), 2.0))
