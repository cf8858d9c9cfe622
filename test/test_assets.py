"""The ICT-FaceKit reader and cache, on the real upstream files."""

import hashlib
import re
import shutil

import numpy as np
import pytest

from facediff_ros.core.face import assets


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The neutral mesh, identity000 and vertex_indices.json read from the real source."""
    wanted = [assets.NEUTRAL_OBJ, "FaceXModel/identity000.obj", "FaceXModel/jawOpen.obj", assets.LICENSE_FILE]
    return dict(assets.iter_upstream_files(assets.find_source(), wanted))


def _first_vertex_by_hand(data: bytes):
    for line in data.decode().splitlines():
        if line.startswith("v "):
            return [float(x) for x in line.split()[1:4]]


def test_reader_counts_match_upstream_readme(upstream):
    mesh = assets.read_obj(upstream[assets.NEUTRAL_OBJ], "neutral")
    # Upstream README: 26,719 vertices and 26,384 polygons in all.
    assert mesh.vertices.shape == (26719, 3)
    assert mesh.num_faces == 26384
    sizes = mesh.face_sizes()
    text = upstream[assets.NEUTRAL_OBJ].decode()
    face_lines = [ln for ln in text.splitlines() if ln.startswith("f ")]
    assert int((sizes == 4).sum()) == sum(len(ln.split()) == 5 for ln in face_lines)
    assert int((sizes == 3).sum()) == sum(len(ln.split()) == 4 for ln in face_lines)
    assert mesh.uvs.shape == (len(re.findall(r"^vt ", text, re.M)), 2)
    np.testing.assert_allclose(mesh.vertices[0], _first_vertex_by_hand(upstream[assets.NEUTRAL_OBJ]))
    # A face corner: the first 'f' line's first vertex/uv, 1-based in the file.
    first = face_lines[0].split()[1].split("/")
    assert mesh.face_vertices[0] == int(first[0]) - 1 and mesh.face_uvs[0] == int(first[1]) - 1


def test_cache_holds_the_upstream_shapes(upstream):
    data = assets.load_cache()
    neutral = assets.read_obj(upstream[assets.NEUTRAL_OBJ], faces=False).vertices
    np.testing.assert_allclose(data["neutral"], neutral, atol=1e-5)
    ident0 = assets.read_obj(upstream["FaceXModel/identity000.obj"], faces=False).vertices
    np.testing.assert_allclose(data["neutral"] + data["identity_deltas"][0], ident0, atol=2e-5)
    names = list(data["expression_names"])
    jaw = assets.read_obj(upstream["FaceXModel/jawOpen.obj"], faces=False).vertices
    jaw_delta = data["expression_deltas"][names.index("jawOpen")]
    np.testing.assert_allclose(data["neutral"] + jaw_delta, jaw, atol=2e-5)
    assert data["identity_deltas"].shape == (100, 26719, 3) and len(names) == 53
    assert (assets.cache_path() / "LICENSE").read_bytes() == upstream[assets.LICENSE_FILE]
    assert assets.cache_is_valid()


def test_altered_file_is_refused_with_a_clear_message(upstream, tmp_path):
    folder = tmp_path / "ict"
    (folder / "FaceXModel").mkdir(parents=True)
    data = bytearray(upstream[assets.NEUTRAL_OBJ])
    data[-2] = ord("7") if data[-2] != ord("7") else ord("8")
    (folder / assets.NEUTRAL_OBJ).write_bytes(bytes(data))
    with pytest.raises(assets.AssetError, match=r"sha256 .* expected .* ICT_FACEKIT_DIR"):
        list(assets.iter_upstream_files(folder, [assets.NEUTRAL_OBJ]))
    assert hashlib.sha256(bytes(data)).hexdigest() != assets.FILE_SHA256[assets.NEUTRAL_OBJ]


def test_missing_file_and_missing_source_are_reported(tmp_path, monkeypatch):
    (tmp_path / "FaceXModel").mkdir()
    with pytest.raises(assets.AssetError, match="missing"):
        list(assets.iter_upstream_files(tmp_path, [assets.NEUTRAL_OBJ]))
    monkeypatch.setenv("ICT_FACEKIT_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(assets.AssetError, match="ICT_FACEKIT_DIR"):
        assets.find_source()
    with pytest.raises(assets.AssetError, match="make setup"):
        assets.load_cache(tmp_path / "empty-cache")


def test_altered_cache_is_detected(tmp_path):
    src = assets.cache_path()
    dst = assets.cache_path(tmp_path)
    shutil.copytree(src, dst)
    assert assets.cache_is_valid(tmp_path)
    with open(dst / "model.npz", "r+b") as fh:
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert not assets.cache_is_valid(tmp_path)


def test_malformed_obj_is_an_asset_error():
    with pytest.raises(assets.AssetError, match="not a number"):
        assets.read_obj(b"v 1 2 x\n")
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.read_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n")
