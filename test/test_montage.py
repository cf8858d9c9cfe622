"""The docs montage: layout, non-empty colour cells, depth cells that decode to the face's depth."""

import cv2
import numpy as np
import pytest

from facediff_ros.synthetic.montage import MontageConfig, make_montage

CATEGORIES = 7  # neutral, happy, sad, surprised, angry, disgusted, fearful
IDENTITIES, SIZE = 2, 64


@pytest.fixture(scope="module")
def montage(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("montage") / "montage.png"
    img = make_montage(path, identities=IDENTITIES, size=SIZE, seed=3, model=model)
    return path, img


def cells(img, kind):
    """Yield (identity, column, cell image) for the colour or depth cells."""
    top = MontageConfig().label_px
    for i in range(IDENTITIES):
        y0 = top + (2 * i + (kind == "depth")) * SIZE
        for c in range(CATEGORIES):
            yield i, c, img[y0:y0 + SIZE, c * SIZE:(c + 1) * SIZE]


def decode_turbo(rgb, near, far):
    """Depth (m) of TURBO-coloured pixels by nearest colour in OpenCV's own 256-entry table."""
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, ::-1]
    d2 = ((rgb[:, None, :].astype(np.int32) - lut[None].astype(np.int32)) ** 2).sum(-1)  # (N, 256)
    return near + d2.argmin(1) / 255.0 * (far - near)


def test_file_matches_the_returned_image_and_the_grid_layout(montage):
    path, img = montage
    on_disk = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(on_disk, img)
    cfg = MontageConfig()
    rows = cfg.label_px + IDENTITIES * 2 * SIZE + cfg.legend_px  # header, colour + depth per subject, legend
    assert img.shape == (rows, CATEGORIES * SIZE, 3) and img.dtype == np.uint8


def test_colour_cells_show_a_face_where_the_depth_cells_have_depth(montage):
    _, img = montage
    background = np.rint(0.16 * 255)
    for (i, c, col), (_, _, dep) in zip(cells(img, "colour"), cells(img, "depth")):
        face = np.abs(col.astype(float) - background).max(-1) > 0  # differs from the grey background
        has_depth = dep.max(-1) > 0  # black = no surface
        assert 0.25 < face.mean() < 0.9, (i, c)
        # Apart from the text label at the top of the first column, colour and depth show the same
        # silhouette.
        mask = np.ones_like(face)
        mask[:16, :] = False
        agree = (face == has_depth)[mask].mean()
        assert agree > 0.99, (i, c, agree)
        assert not has_depth[0, 0] and not has_depth[0, -1]  # the head is centred: empty top corners


def test_depth_cells_decode_to_the_face_in_front_of_its_centre(montage):
    _, img = montage
    near, far = MontageConfig().depth_range_m
    c0 = SIZE // 2
    for i, c, dep in cells(img, "depth"):
        # The landmarks' centroid (inside the head) sits on the optical axis at 0.6 m: the surface
        # seen around the image centre is in front of it, by less than a head's half depth.
        patch = dep[c0 - 3:c0 + 3, c0 - 3:c0 + 3].reshape(-1, 3)
        assert patch.max(-1).min() > 0, (i, c)
        z = decode_turbo(patch, near, far)
        assert np.all(z < 0.6) and np.all(z > 0.5), (i, c, z.min(), z.max())
        # Relief: the face spans a few centimetres of depth, not one colour.
        valid = dep.reshape(-1, 3)[dep.reshape(-1, 3).max(-1) > 0]
        zz = decode_turbo(valid, near, far)
        assert np.percentile(zz, 95) - np.percentile(zz, 5) > 0.02


def test_bad_arguments_raise(tmp_path, model):
    with pytest.raises(ValueError, match="out_path"):
        make_montage(tmp_path / "montage.jpg", identities=1, size=64, model=model)
    with pytest.raises(ValueError, match="identities"):
        make_montage(tmp_path / "montage.png", identities=0, size=64, model=model)
    assert not (tmp_path / "montage.png").exists()
