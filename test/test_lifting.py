"""Depth lifting: planes (analytic), holes, silhouettes with flying pixels, bad input."""

import numpy as np
import pytest

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.landmarks.lifting import LiftingConfig, lift_landmarks, sample_depth

INTR = Intrinsics(600.0, 600.0, 159.5, 119.5, 320, 240)


def test_fronto_parallel_plane_gives_exact_back_projection():
    depth = np.full(INTR.shape, 0.6, np.float32)
    rng = np.random.default_rng(1)
    uv = rng.uniform([5, 5], [314, 234], (100, 2))
    pts, valid = lift_landmarks(uv, depth, INTR)
    assert valid.all()
    expected = np.stack([(uv[:, 0] - 159.5) / 600 * 0.6, (uv[:, 1] - 119.5) / 600 * 0.6,
                         np.full(100, 0.6)], 1)
    np.testing.assert_allclose(pts, expected, atol=1e-6)


def test_tilted_plane_within_half_a_pixel_of_slope():
    # z = 0.5 + 0.001 * u (1 mm per pixel): the window median is the centre pixel's depth, the
    # landmark may sit up to half a pixel from that centre.
    u, _ = INTR.pixel_grid()
    depth = (0.5 + 0.001 * u).astype(np.float32)
    uv = np.array([[100.3, 50.0], [200.0, 120.7], [41.5, 200.2]])
    pts, valid = lift_landmarks(uv, depth, INTR)
    assert valid.all()
    np.testing.assert_allclose(pts[:, 2], 0.5 + 0.001 * uv[:, 0], atol=0.0005 + 1e-6)


def test_holes_and_noise_use_the_median_of_valid_samples():
    rng = np.random.default_rng(2)
    depth = (0.7 + rng.normal(0, 0.001, INTR.shape)).astype(np.float32)
    holes = rng.random(INTR.shape) < 0.4
    depth[holes] = 0.0
    depth[rng.random(INTR.shape) < 0.05] = np.nan
    uv = rng.uniform([10, 10], [310, 230], (200, 2))
    pts, valid = lift_landmarks(uv, depth, INTR)
    assert valid.mean() > 0.95
    assert np.abs(pts[valid, 2] - 0.7).max() < 0.002


def test_all_holes_is_invalid_with_nan_point():
    depth = np.zeros(INTR.shape, np.float32)
    depth[:, 200:] = 0.6
    uv = np.array([[100.0, 100.0], [250.0, 100.0]])
    pts, valid = lift_landmarks(uv, depth, INTR)
    assert valid.tolist() == [False, True]
    assert np.isnan(pts[0]).all() and np.isfinite(pts[1]).all()


def test_outside_image_and_non_finite_uv_are_invalid():
    depth = np.full(INTR.shape, 0.6, np.float32)
    uv = np.array([[-20.0, 10.0], [10.0, 400.0], [np.nan, 5.0], [319.0, 239.0]])
    _, valid = lift_landmarks(uv, depth, INTR)
    assert valid.tolist() == [False, False, False, True]  # the corner still has 9 samples


@pytest.mark.parametrize("flying_columns", [0, 1, 2])
def test_silhouette_takes_foreground_depth_or_is_invalid_never_a_mix(flying_columns):
    fg, bg, edge = 0.5, 1.1, 160
    depth = np.full(INTR.shape, bg, np.float32)
    depth[:, :edge] = fg
    # Flying pixels: a ramp of mixed values between the two surfaces just behind the edge.
    for i in range(flying_columns):
        depth[:, edge + i] = fg + (bg - fg) * (i + 1) / (flying_columns + 1)
    us = np.arange(edge - 8, edge + 9, 0.25)
    uv = np.stack([us, np.full(us.size, 120.3)], 1)
    z, valid = sample_depth(uv, depth)
    for u, zi, ok in zip(us, z, valid):
        if ok:
            near_fg = abs(zi - fg) < 1e-6
            far_side = round(u) - 2 >= edge + flying_columns  # window sees background only
            assert near_fg or (far_side and abs(zi - bg) < 1e-6), f"u={u}: mixed depth {zi}"
        else:
            assert np.isnan(zi)
    # Well inside the face the depth is the face's, and the background side is the background.
    assert valid[us < edge - 3].all() and np.allclose(z[us < edge - 3], fg)
    assert valid[us > edge + flying_columns + 3].all()
    assert np.allclose(z[us > edge + flying_columns + 3], bg)


def test_a_few_speckle_pixels_nearer_than_the_face_are_ignored():
    depth = np.full(INTR.shape, 0.6, np.float32)
    depth[100, 100] = 0.3
    depth[101, 99] = 0.35
    z, valid = sample_depth(np.array([[100.0, 100.0]]), depth)
    assert valid[0] and z[0] == pytest.approx(0.6)


def test_bad_input_raises_value_error():
    depth = np.full(INTR.shape, 0.6, np.float32)
    with pytest.raises(ValueError, match="uv"):
        lift_landmarks(np.zeros((5, 3)), depth, INTR)
    with pytest.raises(ValueError, match="depth"):
        lift_landmarks(np.zeros((5, 2)), depth[:100], INTR)
    with pytest.raises(ValueError, match="depth"):
        sample_depth(np.zeros((5, 2)), depth.astype(np.int32))  # neither uint16 mm nor float m
    with pytest.raises(ValueError, match="depth"):
        sample_depth(np.zeros((5, 2)), depth[None])
    with pytest.raises(ValueError, match="min_cluster_samples"):
        LiftingConfig(window_radius_px=1, min_cluster_samples=10)
    with pytest.raises(ValueError, match="max_speckle_samples"):
        LiftingConfig(max_speckle_samples=6)


def _scene_mm(seed):
    """A noisy face-like depth scene (uint16 mm): a surface, a background step, holes, speckle."""
    rng = np.random.default_rng(seed)
    depth = 600.0 + 20 * np.sin(np.arange(INTR.width) / 15.0)[None, :] + rng.normal(0, 10, INTR.shape)
    depth[:, 200:] += 500.0                                   # background step at u = 200
    depth[rng.random(INTR.shape) < 0.55] = 0                  # holes
    depth[rng.random(INTR.shape) < 0.02] = rng.uniform(150, 6000)  # speckle, some out of range
    return np.rint(depth).clip(0, 65535).astype(np.uint16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_millimetres_lift_like_the_same_depth_in_metres(seed):
    """uint16 mm is read in its own units (integers); the float-metre path is the reference.

    Thresholds off whole millimetres (15.5 mm gap, 40.5 mm spread, 100.5 mm .. 4999.5 mm): at a
    whole-millimetre threshold the integer path is exact where float32 metres may round either
    way.
    """
    mm = _scene_mm(seed)
    metres = np.where(mm == 0, np.nan, mm.astype(np.float64) / 1000.0).astype(np.float32)
    cfg = LiftingConfig(cluster_gap_m=0.0155, max_cluster_spread_m=0.0405, min_depth_m=0.1005,
                        max_depth_m=4.9995)
    rng = np.random.default_rng(seed + 10)
    uv = rng.uniform([-3, -3], [INTR.width + 2, INTR.height + 2], (478, 2))  # border windows too
    pts_mm, valid_mm = lift_landmarks(uv, mm, INTR, cfg)
    pts_m, valid_m = lift_landmarks(uv, metres, INTR, cfg)
    assert valid_m.sum() > 200 and (~valid_m).sum() > 20  # both outcomes exercised
    np.testing.assert_array_equal(valid_mm, valid_m)
    np.testing.assert_allclose(pts_mm[valid_mm], pts_m[valid_m], rtol=0, atol=1e-6)


def test_rows_with_padding_lift_like_a_contiguous_image():
    """A depth image viewed from a sensor_msgs/Image with row padding (step > width) is not contiguous."""
    mm = _scene_mm(3)
    padded = np.zeros((INTR.height, INTR.width + 7), np.uint16)
    padded[:, :INTR.width] = mm
    view = padded[:, :INTR.width]
    assert not view.flags.c_contiguous
    uv = np.random.default_rng(4).uniform([-3, -3], [INTR.width + 2, INTR.height + 2], (300, 2))
    a = lift_landmarks(uv, mm, INTR)
    b = lift_landmarks(uv, view, INTR)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("fx", [1e-310, 5e-324])
def test_a_back_projection_that_overflows_is_invalid_never_inf(fx):
    """Intrinsics that pass Intrinsics' own checks (finite, > 0) but make x = inf: no valid inf."""
    intr = Intrinsics(fx, 600.0, 159.5, 119.5, 320, 240)
    depth = np.full(intr.shape, 0.6, np.float32)
    uv = np.array([[10.0, 10.0], [159.5, 119.5], [300.0, 200.0]])
    pts, valid = lift_landmarks(uv, depth, intr)
    # (u - cx) / fx overflows except on the principal point's column, where it is 0 * inf = NaN.
    assert not valid.any()
    assert np.isnan(pts).all()


def test_huge_but_finite_points_stay_valid_and_finite():
    """fx = 1e-300 gives x ~ 1e300 m: finite, so lifting keeps it (CameraInfo validation refuses it)."""
    intr = Intrinsics(1e-300, 600.0, 159.5, 119.5, 320, 240)
    pts, valid = lift_landmarks(np.array([[10.0, 10.0]]), np.full(intr.shape, 0.6, np.float32), intr)
    assert valid[0] and np.isfinite(pts[0]).all()
    assert pts[0, 0] == pytest.approx((10.0 - 159.5) / 1e-300 * 0.6)
