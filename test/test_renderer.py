"""Renderer buffers against analytic ray-surface intersections, for both backends."""

import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.morphable_model import transform
from facediff_ros.core.render.renderer import Lighting, Renderer

BACKENDS = ["raster", "raycast"]
# An off-centre principal point and non-square pixels: the ray of every pixel is checked analytically.
K = Intrinsics(fx=150.0, fy=140.0, cx=70.3, cy=52.8, width=160, height=120)


def pixel_rays(intr):
    """(H, W, 3) ray directions with z = 1 through the pixel centres (independent of the renderer)."""
    v, u = np.mgrid[0:intr.height, 0:intr.width].astype(np.float64)
    return np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u)], -1)


def tilted_plane(point, normal, half_size=0.6):
    """Two triangles spanning a square of the plane, wound so that `normal` is their front side."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    e1 = np.cross(n, [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)  # e1 x e2 = n
    c = np.asarray(point, float)
    verts = np.array([c - half_size * e1 - half_size * e2, c + half_size * e1 - half_size * e2,
                      c + half_size * e1 + half_size * e2, c - half_size * e1 + half_size * e2])
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    assert np.dot(np.cross(verts[1] - verts[0], verts[2] - verts[0]), n) > 0
    return verts.astype(np.float32), tris, n, (e1, e2, c)


def icosphere(subdivisions):
    """Unit icosphere: vertices (V, 3), outward-wound triangles (F, 3)."""
    p = (1 + 5 ** 0.5) / 2
    v = [[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
         [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
         [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [np.array(x, float) / np.linalg.norm(x) for x in v]
    faces = f
    for _ in range(subdivisions):
        cache, new = {}, []

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new
    return np.array(verts), np.array(faces)


@pytest.fixture(scope="module")
def sphere():
    unit, faces = icosphere(5)
    # Circumradius of every triangle bounds how far the flat faces sink below the sphere.
    a, b, c = (unit[faces[:, i]] for i in range(3))
    la, lb, lc = (np.linalg.norm(x, axis=1) for x in (b - c, c - a, a - b))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    r_circ = (la * lb * lc / (4 * area)).max()
    return unit, faces, 1.0 - np.sqrt(1.0 - r_circ ** 2)  # chord sag per unit radius


def ray_sphere_depth(rays, centre, radius):
    """z-depth of the first intersection of rays (z = 1) with a sphere; nan where missed."""
    d = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    b = d @ centre
    disc = b ** 2 - (centre @ centre - radius ** 2)
    t = b - np.sqrt(np.where(disc >= 0, disc, np.nan))
    return t * d[..., 2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normal", [(0.0, 0.0, -1.0), (0.25, -0.35, -1.0)])
def test_plane_depth_and_normals_are_analytic(backend, normal):
    verts, tris, n, _ = tilted_plane((0.0, 0.0, 0.5), normal)
    buf = Renderer(K, backend=backend).render(verts, tris)
    assert buf.mask.all() and (buf.tri_id >= 0).all()
    rays = pixel_rays(K)
    expected = 0.5 * n[2] / (rays @ n)  # ray-plane intersection, point . n = p0 . n
    assert np.abs(buf.depth - expected).max() < 5e-4
    np.testing.assert_allclose(buf.depth, expected, atol=1e-5)
    for smooth in (True, False):
        normals = Renderer(K, backend=backend).render(verts, tris, smooth_normals=smooth).normals
        np.testing.assert_allclose(normals.reshape(-1, 3), np.broadcast_to(n, (K.width * K.height, 3)),
                                   atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backfaces_are_culled_on_request_and_normals_face_the_camera(backend):
    verts, tris, n, _ = tilted_plane((0.0, 0.0, 0.5), (0.2, 0.1, 1.0))  # front side faces away
    r = Renderer(K, backend=backend)
    assert not r.render(verts, tris).mask.any()
    buf = r.render(verts, tris, cull_backfaces=False)
    assert buf.mask.all()
    np.testing.assert_allclose(buf.normals.reshape(-1, 3), np.broadcast_to(-n, (K.width * K.height, 3)),
                               atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cull", [True, False])
def test_sphere_depth_lies_between_the_sphere_and_its_inscribed_mesh(sphere, backend, cull):
    unit, faces, sag = sphere
    radius, centre = 0.1, np.array([0.02, -0.01, 0.5])
    verts = (unit * radius + centre).astype(np.float32)
    buf = Renderer(K, backend=backend).render(verts, faces, cull_backfaces=cull)
    rays = pixel_rays(K)
    outer = ray_sphere_depth(rays, centre, radius)
    inner = ray_sphere_depth(rays, centre, radius * (1 - sag))  # every face lies between the two
    assert sag * radius < 5e-5  # the mesh is fine enough for a sub-millimetre check
    sure = np.isfinite(inner)
    assert buf.mask[sure].all() and not buf.mask[~np.isfinite(outer)].any()
    d = buf.depth[sure]
    assert np.all(d >= outer[sure] - 2e-6) and np.all(d <= inner[sure] + 2e-6)
    assert np.abs(d - outer[sure]).max() < 5e-4


def check_bary_reproduces_points(buf, verts, tris, intr):
    v, u = np.nonzero(buf.mask)
    b = buf.bary[v, u].astype(np.float64)
    assert np.all(b > -1e-4) and np.allclose(b.sum(1), 1.0, atol=1e-5)
    corners = verts[tris[buf.tri_id[v, u]]].astype(np.float64)  # (M, 3, 3)
    points = np.einsum("mk,mkc->mc", b, corners)
    expected = intr.backproject(u, v, buf.depth[v, u])
    assert np.abs(points - expected).max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_tri_id_and_bary_reproduce_the_3d_point(sphere, backend):
    unit, faces, _ = sphere
    verts = (unit * 0.1 + [0.02, -0.01, 0.5]).astype(np.float32)
    check_bary_reproduces_points(Renderer(K, backend=backend).render(verts, faces), verts, faces, K)
    verts, tris, _, _ = tilted_plane((0.01, 0.02, 0.45), (0.3, 0.2, -1.0))
    check_bary_reproduces_points(Renderer(K, backend=backend).render(verts, tris), verts, tris, K)


@pytest.mark.parametrize("backend", BACKENDS)
def test_face_model_render_is_consistent_and_backends_agree(model, backend):
    tris, _, _ = model.triangles()
    R = np.eye(3)
    verts = transform(model.vertices(), R, (0.01, 0.0, 0.6))
    intr = Intrinsics.from_fov(320, 240, 69.0)
    buf = Renderer(intr, backend=backend).render(verts, tris)
    assert 0.05 < buf.mask.mean() < 0.6
    check_bary_reproduces_points(buf, verts, tris, intr)
    other = Renderer(intr, backend="raycast" if backend == "raster" else "raster").render(verts, tris)
    assert (buf.mask == other.mask).mean() > 0.999
    both = buf.mask & other.mask
    same = both & (buf.tri_id == other.tri_id)
    assert same.sum() > 0.99 * both.sum()
    assert np.abs(buf.depth[both] - other.depth[both]).max() < 1e-3
    np.testing.assert_allclose(buf.bary[same], other.bary[same], atol=1e-3)  # Embree: float32 on slivers


@pytest.mark.parametrize("backend", BACKENDS)
def test_texture_gradient_and_vertex_colour_shading(backend):
    verts, tris, n, (e1, e2, c) = tilted_plane((0.0, 0.0, 0.5), (0.2, -0.1, -1.0), half_size=0.5)
    # Texture coordinates affine in the plane: corner k gets ((p - c) . e1, (p - c) . e2) / 1.0 + 0.5.
    uv_of = lambda p: np.stack([(p - c) @ e1 + 0.5, (p - c) @ e2 + 0.5], -1)  # noqa: E731
    tri_uvs = uv_of(verts[tris].astype(np.float64)).astype(np.float32)  # (F, 3, 2)
    ht, wt = 48, 64
    rows, cols = np.mgrid[0:ht, 0:wt]
    # Each texel holds its own (u, v) centre: a linear texture.
    tex = np.stack([(cols + 0.5) / wt, 1 - (rows + 0.5) / ht, np.full((ht, wt), 0.5)], -1)
    flat = Lighting(ambient=1.0, diffuse=0.0)
    buf = Renderer(K, backend=backend).render(verts, tris, tri_uvs, tex.astype(np.float32), lighting=flat)
    v, u = np.nonzero(buf.mask)
    uv_true = uv_of(K.backproject(u, v, buf.depth[v, u]))
    np.testing.assert_allclose(buf.uv[v, u], uv_true, atol=1e-5)
    interior = np.all((uv_true > 1.0 / wt) & (uv_true < 1 - 1.0 / wt), axis=1)  # away from the clamp
    assert interior.sum() > 1000
    expected = np.concatenate([uv_true, np.full((len(u), 1), 0.5)], 1)
    # Bilinear lookup of a linear texture is exact up to OpenCV's 1/32-texel sample placement.
    assert np.abs(buf.color[v, u][interior] - expected[interior]).max() < 1e-3
    # uint8 textures are read as /255.
    buf8 = Renderer(K, backend=backend).render(verts, tris, tri_uvs, (tex * 255).round().astype(np.uint8),
                                               lighting=flat)
    assert np.abs(buf8.color[v, u][interior] - expected[interior]).max() < 3e-3
    # Lambert: colour = albedo * (ambient + diffuse * max(0, n . l)), the plane's normal facing the camera.
    light = Lighting(direction=(0.3, -0.5, -1.0), ambient=0.2, diffuse=0.7)
    albedo = np.array([0.9, 0.6, 0.4], np.float32)
    lit = Renderer(K, backend=backend).render(verts, tris, vertex_colors=np.tile(albedo, (4, 1)),
                                              lighting=light)
    ldir = np.array(light.direction) / np.linalg.norm(light.direction)
    expected = albedo * (0.2 + 0.7 * max(0.0, float(n @ ldir)))
    np.testing.assert_allclose(lit.color[lit.mask], np.broadcast_to(expected, (lit.mask.sum(), 3)), atol=1e-5)
    assert lit.uv is None and buf8.color[~buf8.mask].sum() == 0


def test_spherical_harmonics_constant_term_is_flat_shading():
    verts, tris, _, _ = tilted_plane((0.0, 0.0, 0.5), (0.1, 0.3, -1.0))
    sh = np.zeros((9, 3), np.float32)
    sh[0] = np.array([0.5, 0.7, 0.9]) / 0.282095
    buf = Renderer(K).render(verts, tris, vertex_colors=np.ones((4, 3)), lighting=Lighting(sh=sh))
    np.testing.assert_allclose(buf.color[buf.mask], np.broadcast_to([0.5, 0.7, 0.9], (buf.mask.sum(), 3)),
                               atol=1e-5)


def test_empty_view_and_bad_input_raise_value_errors():
    r = Renderer(K)
    verts, tris, _, _ = tilted_plane((0.0, 0.0, -0.5), (0.0, 0.0, 1.0))  # behind the camera
    for backend in BACKENDS:
        buf = Renderer(K, backend=backend).render(verts, tris, cull_backfaces=False)
        assert not buf.mask.any() and (buf.tri_id == -1).all() and (buf.depth == 0).all()
    verts, tris, _, _ = tilted_plane((0.0, 0.0, 0.5), (0.0, 0.0, -1.0))
    bad = verts.copy()
    bad[1, 2] = np.nan
    cases = [
        (dict(vertices=bad), "vertices"),
        (dict(vertices=verts[:, :2]), "vertices"),
        (dict(vertices=verts.astype(np.int32)), "vertices"),
        (dict(triangles=tris[:, :2]), "triangles"),
        (dict(triangles=np.zeros((0, 3), int)), "triangles"),
        (dict(triangles=tris + 2), "triangles"),
        (dict(triangles=tris - 1), "triangles"),
        (dict(triangles=tris.astype(float)), "triangles"),
        (dict(tri_uvs=np.zeros((2, 3))), "tri_uvs"),
        (dict(texture=np.zeros((4, 4, 3), np.float32)), "tri_uvs"),
        (dict(tri_uvs=np.zeros((2, 3, 2)), texture=np.zeros((4, 4)), ), "texture"),
        (dict(tri_uvs=np.zeros((2, 3, 2)), texture=np.full((4, 4, 3), np.nan)), "texture"),
        (dict(vertex_colors=np.zeros((3, 3))), "vertex_colors"),
    ]
    for change, name in cases:
        args = dict(vertices=verts, triangles=tris)
        args.update(change)
        with pytest.raises(ValueError, match=name):
            r.render(**args)
    with pytest.raises(ValueError, match="backend"):
        Renderer(K, backend="opengl")
    with pytest.raises(ValueError, match="focal"):
        Intrinsics(0.0, 100.0, 10.0, 10.0, 20, 20)


def test_raster_chunks_give_the_same_image(sphere, monkeypatch):
    from facediff_ros.core.render import renderer
    unit, faces, _ = sphere
    verts = (unit * 0.1 + [0.02, -0.01, 0.5]).astype(np.float32)
    whole = Renderer(K, backend="raster").render(verts, faces, cull_backfaces=False)
    monkeypatch.setattr(renderer, "_MAX_CANDIDATES", 1000)
    chunked = Renderer(K, backend="raster").render(verts, faces, cull_backfaces=False)
    np.testing.assert_array_equal(whole.tri_id, chunked.tri_id)
    np.testing.assert_array_equal(whole.depth, chunked.depth)
