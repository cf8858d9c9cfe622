"""The model-only edit: source colour moved onto the target geometry by triangle id + barycentrics."""

import time

import cv2
import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.crop import FaceCrop
from facediff_ros.core.editor.warp import (MASK_BACKGROUND, MASK_TO_PAINT, MASK_WARPED, WarpBuffers,
                                           buffers_tensor, model_only_edit, warp_source)
from facediff_ros.core.face import expressions
from facediff_ros.core.face.morphable_model import DEFAULT_REGIONS, rotation_matrix
from facediff_ros.core.render.renderer import Lighting, Renderer
from facediff_ros.core.render.textures import TextureParams, atlas_triangles, procedural_texture

K = Intrinsics.from_fov(640, 480, 69.0)
REGIONS = tuple(DEFAULT_REGIONS) + ("teeth", "gums_tongue")  # the mouth interior shows when it opens
UNLIT = Lighting(ambient=1.0, diffuse=0.0)  # colour = albedo: the same surface point, the same colour


class Head:
    """One identity posed 0.6 m away, slightly turned; vertices for any expression (camera frame)."""

    def __init__(self, model, yaw=0.3, pitch=0.1):
        self.model = model
        self.tris, self.uvs, _ = atlas_triangles(model, REGIONS)
        self.tex = procedural_texture(model, params=TextureParams(seed=2), size=256)
        self.identity = (np.random.default_rng(0).standard_normal(30) * 0.8).astype(np.float32)
        self.centre = model.vertices(self.identity)[model.landmarks68].mean(0)
        self.pose(yaw, pitch)

    def pose(self, yaw, pitch=0.1, t=(0.0, 0.0, 0.6)):
        self.R = rotation_matrix((pitch, yaw, 0.0)).astype(np.float32)  # the model frame faces the camera
        self.t = np.asarray(t, np.float32)

    def vertices(self, category="neutral", intensity=1.0):
        w = expressions.category_weights(self.model.expression_names, category, intensity)
        v = self.model.vertices(self.identity, w)
        return ((v - self.centre) @ self.R.T + self.t).astype(np.float32)


@pytest.fixture(scope="module")
def head(model):
    return Head(model)


@pytest.fixture(scope="module")
def crop(head):
    return FaceCrop(head.t, K)


def test_identical_meshes_reproduce_the_source_where_it_is_seen(head, crop):
    r = Renderer(crop.intrinsics)
    v = head.vertices()
    src = r.render(v, head.tris, head.uvs, head.tex)
    b = model_only_edit(src.color, v, v, head.tris, crop.intrinsics, renderer=r)
    assert isinstance(b, WarpBuffers)
    # Every target pixel is its own source pixel: the face is seen, colour unchanged, except
    # where the surface is nearly edge-on (> ~84 deg), which the warp refuses to trust.
    np.testing.assert_array_equal(b.mask, src.mask)
    assert not (b.valid & ~b.mask).any() and b.valid.sum() > 0.99 * b.mask.sum()
    rays = np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0)) + [np.ones((64, 64))], -1)  # (S, S, 3)
    rays[..., 0] = (rays[..., 0] - crop.intrinsics.cx) / crop.intrinsics.fx
    rays[..., 1] = (rays[..., 1] - crop.intrinsics.cy) / crop.intrinsics.fy
    cos = np.abs(np.einsum("hwc,hwc->hw", src.normals, rays)) / np.linalg.norm(rays, axis=-1)
    assert cos[b.mask & ~b.valid].max() < 0.3
    assert np.abs(b.color - src.color)[b.valid].max() < 1e-5
    np.testing.assert_array_equal(b.color[~b.valid], 0.0)
    g = np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0)), -1)  # (S, S, 2) pixel (x, y)
    np.testing.assert_allclose(b.source_xy[b.mask], g[b.mask], atol=1e-4)
    assert np.isnan(b.source_xy[~b.mask]).all()
    np.testing.assert_allclose(b.depth, src.depth)
    np.testing.assert_allclose(b.normals, src.normals)


def test_a_rigid_shift_moves_the_lookup_by_fx_dx_over_z(head, crop):
    """Source = target moved 6 mm right and 4 mm down: a target pixel at depth Z finds its point
    (fx' dx / Z, fy' dy / Z) pixels away in the source. On a linear colour ramp, bilinear lookup
    is exact, so the warped colour is the ramp there."""
    Kc = crop.intrinsics
    vt = head.vertices("happy", 0.6)
    vs = vt + np.array([0.006, 0.004, 0.0], np.float32)
    g = np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0)), -1)  # (S, S, 2)
    ramp = np.concatenate([g / 64.0, np.full((64, 64, 1), 0.5)], -1).astype(np.float32)  # (S, S, 3)
    b = model_only_edit(ramp, vs, vt, head.tris, Kc)
    on = b.valid
    assert on.sum() > 0.85 * b.mask.sum()
    z = b.depth[on]
    ex = g[on][:, 0] + Kc.fx * 0.006 / z
    ey = g[on][:, 1] + Kc.fy * 0.004 / z
    np.testing.assert_allclose(b.source_xy[on][:, 0], ex, atol=1e-3)
    np.testing.assert_allclose(b.source_xy[on][:, 1], ey, atol=1e-3)
    np.testing.assert_allclose(b.color[on][:, 0], ex / 64.0, atol=1e-4)
    np.testing.assert_allclose(b.color[on][:, 1], ey / 64.0, atol=1e-4)
    # Lookups that leave the crop are not valid (the shift pushes the right edge out).
    assert not b.valid[b.mask & (b.source_xy[..., 0] >= 63.0)].any()


def test_points_hidden_in_the_source_are_not_valid(model, crop):
    """The head turned 35 deg in the source and facing the camera in the target: the cheek behind
    the nose was hidden. The warp's depth test must agree with an independent visibility oracle,
    a ray from the camera to each source surface point cast against the source mesh (open3d's
    Embree raycaster): hidden when something is hit well before the point."""
    import open3d as o3d

    h = Head(model, yaw=0.6)
    vs = h.vertices()
    h.pose(0.0)
    vt = h.vertices()
    r = Renderer(crop.intrinsics)
    src, tgt = r.render(vs, h.tris), r.render(vt, h.tris)
    b = warp_source(np.zeros((64, 64, 3), np.float32), src, tgt, vs, h.tris, crop.intrinsics)
    # The same surface points on the source mesh, and the warp's lookup is their projection.
    tri = tgt.tri_id[b.mask]
    p = np.einsum("nk,nkc->nc", tgt.bary[b.mask].astype(np.float64), vs[h.tris[tri]].astype(np.float64))
    xy = crop.intrinsics.project(p)
    inside = (xy >= 0).all(1) & (xy <= 63).all(1)
    np.testing.assert_allclose(b.source_xy[b.mask][inside], xy[inside], atol=1e-3)
    # Front faces only, as a camera (and the renderer) sees them: the face mesh is open (eyes,
    # mouth), and a ray may meet the back of an eyelid before the skin behind it.
    a, bb, c = (vs[h.tris[:, k]].astype(np.float64) for k in range(3))
    front = np.einsum("nc,nc->n", np.cross(bb - a, c - a), a) < 0
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vs), o3d.core.Tensor(h.tris[front].astype(np.uint32)))
    dist = np.linalg.norm(p, axis=1)
    rays = np.concatenate([np.zeros_like(p), p / dist[:, None]], 1).astype(np.float32)  # (N, 6)
    t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    hidden = t_hit < dist - 0.005     # another surface at least 5 mm in front
    seen = np.abs(t_hit - dist) < 5e-4
    valid = b.valid[b.mask]
    assert 0.05 < hidden.mean() < 0.5  # a real occlusion happened
    assert not valid[hidden].any()
    # Seen points are valid unless their bilinear lookup touches the source silhouette.
    xs = np.clip(np.rint(xy), 0, 63).astype(int)
    interior = cv2.erode(src.mask.astype(np.uint8), np.ones((3, 3), np.uint8))[xs[:, 1], xs[:, 0]] > 0
    assert valid[seen & inside & interior].mean() > 0.93  # 0.96 measured: steep skin of a 35-deg turn


@pytest.mark.parametrize("category", ["happy", "surprised", "disgusted"])
def test_warp_of_an_unlit_render_gives_the_target_render(head, crop, category):
    """Unlit renders show albedo: the target's colour at a pixel is the texture at that surface
    point, which the warp fetches from the source render (bilinear between its pixels)."""
    r = Renderer(crop.intrinsics)
    vs, vt = head.vertices(), head.vertices(category, 1.0)
    src = r.render(vs, head.tris, head.uvs, head.tex, lighting=UNLIT)
    tgt = r.render(vt, head.tris, head.uvs, head.tex, lighting=UNLIT)
    b = warp_source(src.color, src, tgt, vs, head.tris, crop.intrinsics)
    # Skin newly shown (under the chin, beside the nostrils, the mouth) is ~5-8 % of the face.
    assert b.valid.sum() > 0.88 * b.mask.sum()
    err = np.abs(b.color - tgt.color)[b.valid]
    # Bilinear resampling of a point-sampled render (hair, brows and eyes alias at 3.75 mm/px).
    assert err.mean() < 0.015 and np.quantile(err, 0.99) < 0.2
    # Where the mouth opens, the interior was behind the lips: not valid, left to the network.
    if category == "surprised":
        moved = b.mask & ~b.valid
        assert moved.sum() > 10
        mouth = [i for i, reg in enumerate(REGIONS) if reg in ("teeth", "gums_tongue", "mouth_socket")]
        assert mouth  # the regions exist; their triangles are among those not valid
        _, _, poly = atlas_triangles(head.model, REGIONS)
        interior = np.isin(poly, head.model.polygon_ids(("teeth", "gums_tongue", "mouth_socket")))
        shown = tgt.tri_id[b.mask] >= 0
        in_mouth = interior[tgt.tri_id[b.mask][shown]]
        assert (~b.valid[b.mask][shown][in_mouth]).mean() > 0.8


def test_buffers_tensor_layout(head, crop):
    r = Renderer(crop.intrinsics)
    vs, vt = head.vertices(), head.vertices("surprised", 1.0)
    src = r.render(vs, head.tris, head.uvs, head.tex)
    b = model_only_edit(src.color, vs, vt, head.tris, crop.intrinsics, renderer=r)
    t = buffers_tensor(b, crop)
    assert t.shape == (8, 64, 64) and t.dtype == np.float32
    assert np.all(np.abs(t) <= 1.0)
    np.testing.assert_allclose(t[0:3][:, b.valid], (2 * b.color[b.valid] - 1).T, atol=1e-6)
    np.testing.assert_array_equal(t[0:3][:, ~b.valid], 0.0)
    rel = np.clip((b.depth[b.mask] - crop.z_centre) / 0.12, -1, 1)  # the neck is > 12 cm behind
    np.testing.assert_allclose(t[3][b.mask], rel, atol=1e-5)
    np.testing.assert_array_equal(t[3][~b.mask], 1.0)
    np.testing.assert_allclose(np.linalg.norm(t[4:7][:, b.mask], axis=0), 1.0, atol=1e-4)
    assert set(np.unique(t[7])) == {MASK_BACKGROUND, MASK_TO_PAINT, MASK_WARPED}
    np.testing.assert_array_equal(t[7] == MASK_WARPED, b.valid)
    np.testing.assert_array_equal(t[7] == MASK_BACKGROUND, ~b.mask)
    t255 = buffers_tensor(WarpBuffers(b.color * 255, b.valid, b.depth, b.normals, b.mask, b.source_xy),
                          crop, color_scale=255.0)
    np.testing.assert_allclose(t255, t, atol=1e-5)


def test_warp_speed_at_64(head, crop, capsys):
    r = Renderer(crop.intrinsics)
    vs, vt = head.vertices(), head.vertices("happy", 1.0)
    src = r.render(vs, head.tris, head.uvs, head.tex)
    tgt = r.render(vt, head.tris)
    times = {"warp": [], "edit": []}
    for _ in range(5):
        t0 = time.perf_counter()
        warp_source(src.color, src, tgt, vs, head.tris, crop.intrinsics)
        t1 = time.perf_counter()
        model_only_edit(src.color, vs, vt, head.tris, crop.intrinsics, renderer=r)
        t2 = time.perf_counter()
        times["warp"].append(t1 - t0)
        times["edit"].append(t2 - t1)
    warp_ms, edit_ms = (1000 * min(v) for v in times.values())
    with capsys.disabled():
        print(f"\nwarp at 64x64: {warp_ms:.2f} ms given both renders; {edit_ms:.1f} ms with the two renders")
    assert warp_ms < 20 and edit_ms < 150  # generous: the machine is shared


def test_bad_input_is_named(head, crop):
    r = Renderer(crop.intrinsics)
    v = head.vertices()
    src = r.render(v, head.tris)
    with pytest.raises(ValueError, match="source_color"):
        warp_source(np.zeros((32, 32, 3)), src, src, v, head.tris, crop.intrinsics)
    with pytest.raises(ValueError, match="target_render"):
        full = Renderer(K).render(v, head.tris)
        warp_source(np.zeros((64, 64, 3)), src, full, v, head.tris, crop.intrinsics)
    with pytest.raises(ValueError, match="renderer"):
        model_only_edit(np.zeros((64, 64, 3)), v, v, head.tris, crop.intrinsics, renderer=Renderer(K))
