"""Direct tests for bugs a mutation run planted and the rest of the suite let through (issue 14, 9).

Each expectation is computed here from the documented convention (module docstrings, the message
definition), not copied from the implementation.
"""

import math
import re

import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face import expressions as ex
from facediff_ros.core.face.morphable_model import rotation_matrix, transform
from facediff_ros.core.landmarks.lifting import LiftingConfig, lift_landmarks
from facediff_ros.core.sync import StampSynchronizer, SyncConfig

# --- lifting: the cluster-spread check ---------------------------------------------------------

LIFT_INTR = Intrinsics(500.0, 500.0, 20.0, 20.0, 41, 41)
LIFT_UV = np.array([[20.0, 20.0], [18.0, 21.0], [22.3, 19.6]])


def _plane(dz_du, dz_dv):
    """Depth image z = 0.6 + dz_du (u - 20) + dz_dv (v - 20) (metres, per pixel)."""
    v, u = np.mgrid[0:41, 0:41].astype(np.float64)
    return 0.6 + dz_du * (u - 20) + dz_dv * (v - 20)


def test_steep_ramp_is_one_cluster_too_spread_for_one_depth_and_is_invalid():
    # 50 mm per row, 10 mm per column: consecutive sorted samples of a 5x5 window are 10 mm apart
    # (below the 15 mm cluster gap, so the window is one cluster), but the cluster spans
    # 4 * 50 + 4 * 10 = 240 mm > max_cluster_spread_m (40 mm): no single depth describes it.
    cfg = LiftingConfig()
    assert cfg.window_radius_px == 2 and 0.010 < cfg.cluster_gap_m and cfg.max_cluster_spread_m < 0.24
    pts, valid = lift_landmarks(LIFT_UV, _plane(0.01, 0.05), LIFT_INTR, cfg)
    assert not valid.any()
    assert np.isnan(pts).all()


def test_gentle_slope_stays_valid_at_the_centre_pixels_depth():
    # 2 mm per column, 1 mm per row: the window spans 12 mm, one cluster within the spread limit;
    # a plane's values are symmetric about the window centre, so the median is the depth of the
    # pixel nearest the landmark, and the point is that pixel depth back-projected at the exact uv.
    pts, valid = lift_landmarks(LIFT_UV, _plane(0.002, 0.001), LIFT_INTR)
    assert valid.all()
    cu, cv = np.rint(LIFT_UV[:, 0]), np.rint(LIFT_UV[:, 1])
    z = 0.6 + 0.002 * (cu - 20) + 0.001 * (cv - 20)
    expected = np.stack([(LIFT_UV[:, 0] - 20) / 500 * z, (LIFT_UV[:, 1] - 20) / 500 * z, z], 1)
    np.testing.assert_allclose(pts, expected, atol=1e-9)


# --- sync: the tolerance is inclusive ----------------------------------------------------------

SEC = 1_000_000_000


@pytest.mark.parametrize("offset_ns", [SEC // 4, -(SEC // 4)])
def test_partner_exactly_at_the_tolerance_is_paired(offset_ns):
    # 0.25 s is exact in binary and 250_000_000 ns exact as an integer: |d| == tolerance pairs.
    sync = StampSynchronizer(["color", "depth"], SyncConfig(tolerance_s=0.25))
    assert sync.add("depth", 10 * SEC + offset_ns, "d") == []
    assert sync.add("color", 10 * SEC, "c") == [{"color": "c", "depth": "d"}]
    assert sync.matched == 1 and sum(sync.dropped.values()) == 0


def test_partner_one_nanosecond_beyond_the_tolerance_is_not():
    sync = StampSynchronizer(["color", "depth"], SyncConfig(tolerance_s=0.25))
    sync.add("depth", 10 * SEC + SEC // 4 + 1, "d")
    assert sync.add("color", 10 * SEC, "c") == []
    assert sync.matched == 0 and sync.dropped["unpaired_color"] == 1


# --- expressions: prototypes pinned to the docstring's FACS table ------------------------------

def _docstring_table():
    """{category: ({stem: weight}, [AU tokens])} parsed from the expressions module docstring."""
    lines = ex.__doc__.splitlines()
    rules = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)]
    assert len(rules) == 3, "expected a reST simple table (3 rule lines) in the module docstring"
    spans = [m.span() for m in re.finditer(r"=+", lines[rules[0]])]
    table = {}
    current = None
    for line in lines[rules[1] + 1:rules[2]]:
        cells = [line[a:(b if k < len(spans) - 1 else None)].strip()
                 for k, (a, b) in enumerate(spans)]
        if cells[0]:
            current = cells[0]
            table[current] = ["", ""]
        table[current][0] += " " + cells[1]
        table[current][1] += " " + cells[2]
    out = {}
    for cat, (aus, shapes) in table.items():
        weights = {stem: float(w) for stem, w in re.findall(r"([A-Za-z]+) (\d+(?:\.\d+)?)", shapes)}
        out[cat] = (weights, re.findall(r"\d+(?:/\d+)?", aus))
    return out


def _au_map():
    """AU token -> ICT shape stem, from the docstring's 'AU1 -> browInnerUp, ...' sentence."""
    out = {}
    for aus, stem in re.findall(r"AU(\d+(?:/\d+)?) -> (\w+)", ex.__doc__):
        for au in [aus] + aus.split("/"):  # "26/27" also maps 26 and 27 on their own
            out[au] = stem
    return out


def _stems(proto):
    """{name: w} with _L/_R pairs -> {stem: w}; the two sides must agree."""
    out = {}
    for name, w in proto.items():
        stem = re.sub(r"_[LR]$", "", name)
        if stem != name:
            assert proto[stem + "_L"] == proto[stem + "_R"] == w, name
        out[stem] = w
    return out


def test_docstring_table_is_parsed_completely():
    table = _docstring_table()
    assert list(table) == list(ex.CATEGORIES)
    assert table["neutral"] == ({}, [])
    assert table["surprised"] == ({"browInnerUp": 0.9, "browOuterUp": 0.9, "eyeWide": 0.8, "jawOpen": 0.45},
                                  ["1", "2", "5", "26/27"])
    assert _au_map()["26/27"] == "jawOpen" and _au_map()["5"] == "eyeWide"


@pytest.mark.parametrize("cat", ex.CATEGORIES)
def test_prototype_weights_match_the_facs_table(cat):
    weights, _ = _docstring_table()[cat]
    assert _stems(ex.PROTOTYPES[cat]) == weights
    # ... and what category_weights gives a model (names in any order) is the same table.
    names = sorted(set().union(*(p.keys() for p in ex.PROTOTYPES.values())))[::-1]
    got = ex.category_weights(names, cat, 1.0)
    for name, w in zip(names, got):
        assert w == pytest.approx(weights.get(re.sub(r"_[LR]$", "", name), 0.0), abs=1e-7), name


@pytest.mark.parametrize("cat", ex.CATEGORIES[1:])
def test_every_cited_action_unit_with_an_ict_shape_is_in_the_prototype(cat):
    weights, aus = _docstring_table()[cat]
    au_map = _au_map()
    mapped = [au for au in aus if au in au_map]
    assert mapped, f"{cat}: no cited AU has an ICT shape"
    for au in mapped:
        assert weights.get(au_map[au], 0.0) > 0, f"{cat}: AU{au} -> {au_map[au]} missing"


# --- expressions: nearest_category's intensity is in [0, 1] ------------------------------------

EXPR_NAMES = sorted(set().union(*(p.keys() for p in ex.PROTOTYPES.values())))


@pytest.mark.parametrize("cat", ex.CATEGORIES[1:])
def test_weights_stronger_than_the_prototype_give_intensity_one(cat):
    # ExpressionTarget.msg: intensity in [0, 1], 1 = the full expression. Weights 25 % beyond the
    # prototype (each still a valid weight, capped at 1) are the full expression, not more.
    proto = ex.category_weights(EXPR_NAMES, cat, 1.0).astype(np.float64)
    got, s = ex.nearest_category(EXPR_NAMES, np.minimum(1.25 * proto, 1.0))
    assert got == cat
    assert s == 1.0


def test_intensity_is_never_outside_the_unit_interval():
    rng = np.random.default_rng(14)
    for _ in range(200):
        w = rng.uniform(0, 1, len(EXPR_NAMES)) * rng.uniform(0, 3)
        got, s = ex.nearest_category(EXPR_NAMES, w)
        assert got in ex.CATEGORIES and 0.0 <= s <= 1.0
        assert (s == 0.0) == (got == "neutral")


# --- camera: Intrinsics.from_fov ---------------------------------------------------------------

@pytest.mark.parametrize("w, h, hfov", [(640, 480, 90.0), (641, 361, 60.0), (7, 5, 120.0)])
def test_from_fov_centre_and_focal_length(w, h, hfov):
    intr = Intrinsics.from_fov(w, h, hfov)
    # Pixel centres at integers (camera module docstring): the image spans u in [-0.5, W - 0.5],
    # its centre is ((W - 1) / 2, (H - 1) / 2).
    assert (intr.cx, intr.cy) == ((w - 1) / 2, (h - 1) / 2)
    assert (intr.width, intr.height) == (w, h)
    # The horizontal field of view is the angle between the rays through the left and right image
    # edges (u = -0.5 and u = W - 0.5); square pixels.
    half = math.radians(hfov) / 2
    assert intr.fx == pytest.approx(w / 2 / math.tan(half), rel=1e-12)
    assert intr.fy == intr.fx
    left = (-0.5 - intr.cx) / intr.fx
    right = (w - 0.5 - intr.cx) / intr.fx
    assert math.atan(right) - math.atan(left) == pytest.approx(math.radians(hfov), abs=1e-12)


def test_from_fov_ninety_degrees_is_half_the_width():
    intr = Intrinsics.from_fov(640, 480, 90.0)
    assert intr.fx == pytest.approx(320.0, abs=1e-9) and intr.fy == pytest.approx(320.0, abs=1e-9)
    assert intr.K[0, 2] == 319.5 and intr.K[1, 2] == 239.5
    # The image centre projects from the optical axis.
    np.testing.assert_allclose(intr.project(np.array([0.0, 0.0, 1.0])), [319.5, 239.5])


# --- morphable model: transform with a non-symmetric rotation ----------------------------------

def _rodrigues(axis, angle):
    """Rotation by ``angle`` about unit ``axis`` (right-handed), written out element by element."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    c, s = math.cos(angle), math.sin(angle)
    C = 1 - c
    return np.array([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                     [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                     [z * x * C - y * s, z * y * C + x * s, c + z * z * C]])


def test_transform_quarter_turn_about_z_maps_x_to_y():
    R = _rodrigues([0, 0, 1], math.pi / 2)
    t = np.array([0.1, -0.2, 0.5])
    verts = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, -0.4]], np.float32)
    # Right-handed quarter turn about z: x -> y, y -> -x, z -> z.
    expected = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [-0.3, 0.2, -0.4]]) + t
    np.testing.assert_allclose(transform(verts, R, t), expected, atol=1e-6)


def test_transform_general_rotation_batched_is_R_x_plus_t():
    R = _rodrigues([1.0, -2.0, 0.5], 0.7)
    assert not np.allclose(R, R.T)
    t = np.array([0.03, 0.01, 0.6])
    rng = np.random.default_rng(3)
    verts = rng.normal(size=(2, 5, 3)).astype(np.float32)
    expected = np.einsum("ij,bvj->bvi", R, verts.astype(np.float64)) + t
    got = transform(verts, R, t)
    assert got.shape == (2, 5, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # rotation_matrix (the model's Rodrigues) agrees with the one written here.
    np.testing.assert_allclose(rotation_matrix(np.array([1.0, -2.0, 0.5]) / math.sqrt(5.25) * 0.7), R,
                               atol=1e-12)
