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
    with pytest.raises(ValueError, match="depth_m"):
        lift_landmarks(np.zeros((5, 2)), depth[:100], INTR)
    with pytest.raises(ValueError, match="depth_m"):
        sample_depth(np.zeros((5, 2)), depth.astype(np.uint16))
    with pytest.raises(ValueError, match="min_cluster_samples"):
        LiftingConfig(window_radius_px=1, min_cluster_samples=10)
    with pytest.raises(ValueError, match="max_speckle_samples"):
        LiftingConfig(max_speckle_samples=6)
