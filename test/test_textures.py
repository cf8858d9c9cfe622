"""Texture atlas, procedural textures, UV rasteriser and projection of images into UV."""

import dataclasses

import cv2
import numpy as np
import pytest

from facediff_ros.core.render import textures as tx
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.morphable_model import REGIONS, rotation_matrix, transform

S = 256  # small textures keep the tests fast; the features scale with the size


@pytest.fixture(scope="module")
def geo(model):
    return tx.atlas_geometry(model, S)


# ---- atlas and rasteriser ----------------------------------------------------------------------
def test_atlas_uvs_put_each_region_in_its_cell(model):
    tris, uvs, poly = tx.atlas_triangles(model, list(tx.BASE_REGIONS))
    assert uvs.shape == (len(tris), 3, 2) and uvs.min() >= 0 and uvs.max() <= 1
    c = 1.0 / tx.ATLAS_GRID
    for name, (cell, _) in tx._REGION_CELL.items():
        a, b = REGIONS[name].polygons
        sel = (poly >= a) & (poly < b)
        col, row, span = tx.ATLAS_CELLS[cell]
        if name.startswith("eyeball"):  # the iris polygons go to the iris cell
            ia, ib = REGIONS["iris" + name[len("eyeball"):]].polygons
            sel &= ~((poly >= ia) & (poly < ib))
        u, v = uvs[sel, :, 0], 1.0 - uvs[sel, :, 1]  # v measured from the top
        assert u.min() >= col * c and u.max() <= (col + span) * c, name
        assert v.min() >= row * c and v.max() <= (row + span) * c, name


def test_face_and_head_do_not_overlap_in_the_atlas(model):
    occupied = []
    for regions in (["face"], ["head_neck", "mouth_socket"], ["eyeball_left"]):
        tris, uvs, _ = tx.atlas_triangles(model, regions)
        occupied.append(tx.rasterize_uv(uvs, S)[0] >= 0)
    assert occupied[0].sum() > 0.4 * S * S * (3 / 4) ** 2  # the face fills most of its 3x3 cells
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.any(occupied[i] & occupied[j])


def test_rasterize_uv_area_and_barycentrics():
    # One triangle over the lower-left half of the unit square: S^2 / 2 texel centres, and the
    # barycentric mix of its corners reproduces each texel centre's coordinates.
    size = 64
    tri = np.array([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], np.float32)
    tri_id, bary = tx.rasterize_uv(tri, size)
    n = (tri_id == 0).sum()
    assert abs(n - size * size / 2) <= size  # the diagonal's texels may go either way
    rows, cols = np.nonzero(tri_id == 0)
    uv = np.einsum("nk,kc->nc", bary[rows, cols], tri[0].astype(np.float64))
    np.testing.assert_allclose(uv[:, 0], (cols + 0.5) / size, atol=1e-5)
    np.testing.assert_allclose(uv[:, 1], 1 - (rows + 0.5) / size, atol=1e-5)
    np.testing.assert_allclose(bary[rows, cols].sum(1), 1.0, atol=1e-6)
    assert bary[rows, cols].min() >= -1e-6
    with pytest.raises(ValueError, match="tri_uvs"):
        tx.rasterize_uv(np.zeros((3, 2)), size)


def test_atlas_geometry_positions_lie_on_the_mesh(model, geo):
    # Covered texels of the face cell interpolate the mean face: each lies within the bounding box
    # of the face's vertices, and landmark texels map back to their vertices.
    face = geo.covered & (geo.cell == tx._CELL_NAMES.index("face"))
    fv = model.neutral[slice(*REGIONS["face"].vertices)]
    P = geo.position[face]
    assert np.all(P >= fv.min(0) - 1e-5) and np.all(P <= fv.max(0) + 1e-5)
    rc = np.round(geo.landmarks_px[:, ::-1]).astype(int)  # (row, col)
    got = geo.position[rc[:, 0], rc[:, 1]]
    err = np.linalg.norm(got - model.neutral[model.landmarks68], axis=1)
    assert np.median(err) < 1.5 / geo.face_px_per_m * 1.5  # within ~a texel of skin


# ---- procedural textures -----------------------------------------------------------------------
def test_deterministic_per_seed_and_in_range(model):
    a = tx.procedural_texture(model, np.random.default_rng(5), S)
    b = tx.procedural_texture(model, np.random.default_rng(5), S)
    c = tx.procedural_texture(model, np.random.default_rng(6), S)
    assert a.shape == (S, S, 3) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_variety_across_seeds(model, geo):
    # Mean cheek colour of 12 random subjects: light to dark skin and different hues.
    rows, cols = _cheek_texels(geo)
    means = np.array([tx.procedural_texture(model, np.random.default_rng(s), S)[rows, cols].mean(0)
                      for s in range(12)])
    lum = means @ [0.2126, 0.7152, 0.0722]
    assert lum.max() - lum.min() > 0.35
    hue = means[:, 0] / np.maximum(means[:, 2], 1e-3)  # red / blue: the undertone and melanin
    assert hue.max() - hue.min() > 0.2
    params = [tx.TextureParams.sample(np.random.default_rng(s)) for s in range(200)]
    tones = np.array([p.tone for p in params])
    assert tones.min() < 0.05 and tones.max() > 0.95  # the whole Monk scale is drawn
    assert len({p.hair_color for p in params}) == 200 and any(p.stubble > 0 for p in params)


def _cheek_texels(geo):
    lm = geo.landmarks_px
    c = (lm[36] + lm[48] + lm[2]) / 3.0  # the left cheek, between eye, mouth corner and jaw
    cc, rr = np.meshgrid(np.arange(-2, 3) + round(c[0]), np.arange(-2, 3) + round(c[1]))
    return rr.ravel(), cc.ravel()


def _patch(tex, xy, r=1):
    x, y = int(round(xy[0])), int(round(xy[1]))
    return tex[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3).mean(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_where_expected(model, geo, seed):
    p = dataclasses.replace(tx.TextureParams.sample(np.random.default_rng(seed)), hair=False, stubble=0.0,
                            brow_density=1.0, lip_tint=0.8, tone=0.1 + 0.3 * seed)
    tex = tx.procedural_texture(model, size=S, params=p)
    lm = geo.landmarks_px
    lip = _patch(tex, (lm[51] + lm[62]) / 2)  # middle of the upper lip
    cheek = tex[_cheek_texels(geo)].mean(0)
    assert lip[0] / lip[1] > 1.1 * cheek[0] / cheek[1]  # lips redder than the cheek

    def lum(c):
        return float(np.dot(c, [0.2126, 0.7152, 0.0722]))
    # Brow: just below the landmark curve at its inner third; forehead: 2 cm above the brows.
    px_mm = geo.face_px_per_m * 1e-3
    brow = np.mean([_patch(tex, lm[i] + [0, 1.5 * px_mm]) for i in (19, 20, 23, 24)], axis=0)
    forehead = _patch(tex, (lm[21] + lm[22]) / 2 - [0, 20 * px_mm], r=2)
    assert lum(brow) < 0.8 * lum(forehead)


def test_eyes_have_pupil_iris_and_sclera(model, geo):
    p = dataclasses.replace(tx.TextureParams.sample(np.random.default_rng(3)), iris_color=(0.2, 0.4, 0.7))
    tex = tx.procedural_texture(model, size=S, params=p)
    sclera = geo.covered & (geo.cell == tx._CELL_NAMES.index("sclera"))
    d = geo.position - geo.eye_centres[0]
    r_mm = np.hypot(d[..., 0], d[..., 1]) * 1e3  # distance from the eye's axis (z), mm
    front = d[..., 2] < 0
    pupil = tex[sclera & front & (r_mm < 1.0)].mean(0)
    iris = tex[sclera & front & (r_mm > 3.5) & (r_mm < 4.5)].mean(0)
    white = tex[sclera & front & (r_mm > 8) & (r_mm < 10)].mean(0)
    assert pupil.max() < 0.15
    assert white.min() > 0.7
    assert iris[2] > iris[0] + 0.1  # the blue iris colour, not sclera or pupil


def test_bad_params():
    with pytest.raises(ValueError, match="tone"):
        tx.TextureParams(tone=1.5)
    with pytest.raises(ValueError, match="hair_color"):
        tx.TextureParams(hair_color=(0.1, 0.2))
    with pytest.raises(ValueError, match="rng or params"):
        tx.procedural_texture(None)


# ---- projection into UV ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene(model):
    from facediff_ros.core.render.renderer import Lighting, Renderer
    K = Intrinsics.from_fov(480, 480, 30)
    tris, uvs, poly = tx.atlas_triangles(model)
    # A smooth source texture: bilinear resampling (texture -> image -> texture) then loses little.
    tex = cv2.GaussianBlur(tx.procedural_texture(model, np.random.default_rng(2), S), (0, 0), 2.0)
    ident = np.random.default_rng(4).standard_normal(100).astype(np.float32) * 0.5
    v = transform(model.vertices(ident), rotation_matrix([0.1, 0.45, 0.0]).astype(np.float32), [0, 0, 0.6])
    unlit = Lighting(ambient=1.0, diffuse=0.0)  # the image shows the albedo itself
    buf = Renderer(K).render(v, tris, uvs, tex, lighting=unlit)
    img = np.where(buf.mask[..., None], buf.color, 0.0).astype(np.float32)
    return dict(K=K, tris=tris, uvs=uvs, tex=tex, v=v, img=img, buf=buf)


def test_project_round_trip(scene):
    T, W = tx.project_to_uv(scene["img"], scene["v"], scene["tris"], scene["uvs"], scene["K"], S)
    assert T.shape == (S, S, 3) and W.shape == (S, S) and W.min() >= 0 and W.max() <= 1
    seen = W > 0.3
    assert seen.sum() > 0.15 * S * S * (3 / 4) ** 2  # a good part of the face is seen
    err = np.abs(T - scene["tex"])[seen]
    assert err.mean() < 0.01 and np.percentile(err, 99) < 0.05


def test_invisible_texels_have_zero_weight(model, scene):
    import open3d as o3d
    v, tris = scene["v"], scene["tris"]
    T, W = tx.project_to_uv(scene["img"], v, tris, scene["uvs"], scene["K"], S)
    tri_id, bary = tx.rasterize_uv(scene["uvs"], S)
    cov = tri_id >= 0
    p = np.einsum("nk,nkc->nc", bary[cov], v[tris[tri_id[cov]]].astype(np.float64))  # texel points
    # Independent visibility: cast a ray from the camera to each texel point (Embree).
    rs = o3d.t.geometry.RaycastingScene()
    rs.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(tris.astype(np.uint32)))
    dist = np.linalg.norm(p, axis=1)
    rays = np.concatenate([np.zeros_like(p), p / dist[:, None]], 1).astype(np.float32)
    t_hit = rs.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    occluded = t_hit < dist - 2e-3  # something 2 mm or more in front of the texel
    assert occluded.sum() > 1000  # the far side of the head, the nose's shadow, the irises
    # Occluders thinner than a pixel (folds at the nostrils and ears seen edge-on) hide a texel
    # from the exact ray but not from the pixels around it; those few may keep a small weight.
    leak = W[cov][occluded]
    assert (leak > 0).sum() <= 0.002 * occluded.sum() and leak.max() < 0.1
    # The iris discs behind the cornea are never visible.
    assert np.all(W[tx.atlas_geometry(model, S).cell == tx._CELL_NAMES.index("iris")] == 0)


def test_accumulate_and_finalize(model, scene):
    from facediff_ros.core.render.renderer import Lighting, Renderer
    K, tris, uvs, tex = scene["K"], scene["tris"], scene["uvs"], scene["tex"]
    tsum = wsum = None
    for yaw in (-0.5, 0.5):
        v = transform(model.vertices(), rotation_matrix([0.0, yaw, 0.0]).astype(np.float32), [0, 0, 0.6])
        buf = Renderer(K).render(v, tris, uvs, tex, lighting=Lighting(ambient=1.0, diffuse=0.0))
        img = np.where(buf.mask[..., None], buf.color, 0.0).astype(np.float32)
        T, W = tx.project_to_uv(img, v, tris, uvs, K, S)
        single = W > 0
        tsum, wsum = tx.accumulate(tsum, wsum, T, W)
    fused, observed = tx.finalize(tsum, wsum, fallback=np.full((S, S, 3), 0.5, np.float32))
    assert observed.sum() > single.sum() * 1.3  # both sides of the face
    err = np.abs(fused - tex)[wsum > 0.3]
    assert err.mean() < 0.01
    assert np.all(fused[~observed] == 0.5)
    filled, _ = tx.finalize(tsum, wsum)  # nearest observed colour elsewhere
    assert filled.min() >= 0 and np.all(filled[~observed].sum(-1) > 0)


def test_project_with_a_depth_map_and_bad_inputs(scene):
    K = scene["K"]
    T, W = tx.project_to_uv(scene["img"], scene["v"], scene["tris"], scene["uvs"], K, S,
                            depth=scene["buf"].depth)
    T0, W0 = tx.project_to_uv(scene["img"], scene["v"], scene["tris"], scene["uvs"], K, S)
    both = (W > 0.3) & (W0 > 0.3)
    assert both.sum() > 0.9 * (W0 > 0.3).sum()  # the same skin is seen
    with pytest.raises(ValueError, match="image"):
        tx.project_to_uv(scene["img"][:10], scene["v"], scene["tris"], scene["uvs"], K, S)
    with pytest.raises(ValueError, match="depth"):
        tx.project_to_uv(scene["img"], scene["v"], scene["tris"], scene["uvs"], K, S, depth=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="tri_uvs"):
        tx.project_to_uv(scene["img"], scene["v"], scene["tris"], scene["uvs"][:5], K, S)
