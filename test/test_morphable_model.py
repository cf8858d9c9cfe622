"""MorphableModel against the upstream OBJs, and its numpy/torch agreement."""

import numpy as np
import pytest
import torch

from facediff_ros.core.face import assets
from facediff_ros.core.face.morphable_model import AXES, REGIONS, rotation_matrix, transform, vertex_normals


@pytest.fixture(scope="module")
def objs():
    names = ["FaceXModel/identity007.obj", "FaceXModel/mouthSmile_L.obj"]
    return {n: assets.read_obj(d, n, faces=False).vertices
            for n, d in assets.iter_upstream_files(assets.find_source(), names)}


def to_model(v_cm):
    """Upstream centimetres, y up, face +z -> metres, y down, face -z (independent of the model code)."""
    return np.stack([v_cm[:, 0], -v_cm[:, 1], -v_cm[:, 2]], 1) * 0.01


def test_unit_vectors_reproduce_upstream_objs(model, objs):
    ident = np.zeros(100, np.float32)
    ident[7] = 1.0
    np.testing.assert_allclose(model.vertices(ident), to_model(objs["FaceXModel/identity007.obj"]), atol=2e-7)
    expr = np.zeros(53, np.float32)
    expr[model.expression_index("mouthSmile_L")] = 1.0
    np.testing.assert_allclose(model.vertices(None, expr), to_model(objs["FaceXModel/mouthSmile_L.obj"]),
                               atol=2e-7)


def test_linearity_batching_and_subsets(model):
    rng = np.random.default_rng(0)
    ident = rng.normal(size=(4, 30)).astype(np.float32)
    expr = rng.random((4, 53)).astype(np.float32)
    v = model.vertices(ident, expr)
    assert v.shape == (4, model.num_vertices, 3)
    manual = model.neutral + np.einsum("bk,kvc->bvc", ident, model.identity_basis[:30]) \
        + np.einsum("be,evc->bvc", expr, model.expression_basis)
    np.testing.assert_allclose(v, manual, atol=1e-5)
    ids = np.array([0, 5, 9000])
    np.testing.assert_allclose(model.vertices(ident, expr, vertex_ids=ids), v[:, ids], atol=1e-6)


def test_torch_matches_numpy_and_has_gradients(model):
    rng = np.random.default_rng(1)
    ident = rng.normal(size=100).astype(np.float32)
    expr = rng.random(53).astype(np.float32)
    ti = torch.tensor(ident, requires_grad=True)
    te = torch.tensor(expr, requires_grad=True)
    tv = model.vertices(ti, te)
    np.testing.assert_allclose(tv.detach().numpy(), model.vertices(ident, expr), atol=1e-5)
    tv[1234, 2].backward()
    # d z_1234 / d identity_k is the basis entry itself.
    np.testing.assert_allclose(ti.grad.numpy(), model.identity_basis[:, 1234, 2], atol=1e-7)


def test_torch_vertex_subsets_are_never_confused(model):
    """A new subset array (even one that reuses a freed array's id) gets its own vertices."""
    ident = torch.zeros(1, 5)

    def subset(ids):  # the index array is a temporary, freed on return: its id() is soon reused
        return model.vertices(ident, None, vertex_ids=np.array(ids))

    subsets = [[0, 1, 2], [100, 200, 300], [9000, 5, 7], [0, 1, 2]]
    results = [subset(ids) for ids in subsets]
    for ids, got in zip(subsets, results):
        np.testing.assert_array_equal(got[0].detach().numpy(), model.neutral[ids])


def test_face_looks_at_a_camera_in_front(model):
    tris, tri_uvs, poly = model.triangles()
    v = model.vertices()
    n = vertex_normals(v, tris)
    nose = model.landmarks68[30]  # Multi-PIE 31 = nose tip
    assert v[nose, 2] < v[:, 2].mean()  # nose nearer the camera (-z) than the head centre
    assert n[nose, 2] < -0.9  # and its normal points at the camera
    cam = transform(v, rotation_matrix([0, 0, 0]), [0, 0, 0.6])
    assert cam[nose, 2] == pytest.approx(0.6 + v[nose, 2])
    # Triangles: each quad -> 2, each triangle -> 1, for the default regions.
    assert tri_uvs.shape == (len(tris), 3, 2) and set(np.unique(poly)) <= set(range(model.num_polygons))
    assert np.all(AXES == np.diag([1, -1, -1]))


def test_regions_partition_the_mesh(model):
    names = [n for n in REGIONS if n not in ("narrow_face",) and not n.startswith(("sclera", "iris"))]
    counts = sum(REGIONS[n].vertices[1] - REGIONS[n].vertices[0] for n in names)
    assert counts == model.num_vertices
    assert sum(REGIONS[n].polygons[1] - REGIONS[n].polygons[0] for n in names) == model.num_polygons


@pytest.mark.parametrize("ident, expr, match", [
    (np.zeros(101, np.float32), None, "identity must have shape"),
    (np.array([np.nan], np.float32), None, "identity holds NaN"),
    (np.zeros(3, np.int64), None, "identity must be a floating-point"),
    (None, np.full(53, 1.5, np.float32), r"expression must lie in \[0.0, 1.0\]"),
    (None, np.zeros((2, 54), np.float32), "expression must have shape"),
])
def test_bad_coefficients_raise_value_error(model, ident, expr, match):
    with pytest.raises(ValueError, match=match):
        model.vertices(ident, expr)


def test_bad_pose_and_region(model):
    with pytest.raises(ValueError, match="R must be"):
        transform(model.neutral, np.eye(4), [0, 0, 1])
    with pytest.raises(ValueError, match="unknown region"):
        model.triangles(["nose"])
