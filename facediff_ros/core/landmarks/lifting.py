"""Image landmarks + aligned depth -> 3D points in the camera optical frame, robustly.

A landmark's depth is read from a small window of the depth image (aligned to the colour image)
around its pixel, because a single depth pixel is often a hole (0 / NaN) and, at the face's
silhouette, a window straddles the face and the background, with RealSense "flying pixels"
(values between the two) along the edge. The window's valid samples are sorted and split into
depth clusters wherever two consecutive samples are more than ``cluster_gap_m`` apart. Clusters
of at most ``max_speckle_samples`` samples are speckle and ignored; the **nearest remaining
cluster** is the surface the landmark lies on (faces are in front of their background) and its
median is the landmark's depth -- provided it has at least ``min_cluster_samples`` samples. So a
landmark on the silhouette takes the foreground depth, never a mix of foreground and
background. The landmark is marked invalid when

- no cluster has ``min_cluster_samples`` samples (holes, image border),
- the nearest non-speckle cluster is too small to be a surface (a sliver of foreground, or a
  line of flying pixels between the face and the background): its depth is not measurable and
  the background's would be wrong,
- the chosen cluster's spread (max - min) exceeds ``max_cluster_spread_m`` (a surface too steep
  or too noisy for one depth value).

Pixel convention: (u, v) = (column, row) with pixel centres at integer coordinates (see
:mod:`facediff_ros.core.camera`); the window is centred on the pixel nearest (u, v), the 3D point
is the back-projection of the exact (u, v) at the window's depth.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics


@dataclass(frozen=True)
class LiftingConfig:
    """Parameters of :func:`lift_landmarks` (depths in metres, sizes in pixels)."""

    # 5x5 window: at 0.6 m with a 640x480 RealSense (fx ~ 610 px) it covers ~5 mm of skin, enough
    # samples to outvote holes and speckle, small enough that the face's relief inside it stays
    # within a few mm.
    window_radius_px: int = 2
    # Consecutive sorted depths more than 15 mm apart start a new surface: the face's own relief
    # across 5 mm of skin is smaller, face-to-background jumps are tens of centimetres.
    cluster_gap_m: float = 0.015
    # A surface needs 6 of the 25 samples: more than one row or column of the window, because a
    # line of flying pixels along a silhouette fills one column (5 samples) with mixed depths.
    min_cluster_samples: int = 6
    # Up to 2 isolated samples nearer than the surface are speckle (RealSense noise), ignored;
    # 3 or more make the window ambiguous (the landmark is invalid).
    max_speckle_samples: int = 2
    # A 5 mm-wide patch of face never spans more than ~40 mm in depth (the steepest side of the
    # nose); more means the cluster chained through flying pixels.
    max_cluster_spread_m: float = 0.04
    # Depths outside this range are invalid (RealSense D4xx minimum range ~0.1 m at 640x480;
    # beyond 5 m nothing is a face worth fitting).
    min_depth_m: float = 0.1
    max_depth_m: float = 5.0

    def __post_init__(self):
        if int(self.window_radius_px) != self.window_radius_px or self.window_radius_px < 0:
            raise ValueError(f"window_radius_px: expected an integer >= 0, got {self.window_radius_px}")
        side = 2 * int(self.window_radius_px) + 1
        if not 1 <= self.min_cluster_samples <= side * side:
            raise ValueError(f"min_cluster_samples: expected 1..{side * side} for a {side}x{side} "
                             f"window, got {self.min_cluster_samples}")
        if not 0 <= self.max_speckle_samples < self.min_cluster_samples:
            raise ValueError(f"max_speckle_samples: expected 0 <= max_speckle_samples < "
                             f"min_cluster_samples ({self.min_cluster_samples}), got "
                             f"{self.max_speckle_samples}")
        if not self.cluster_gap_m > 0 or not self.max_cluster_spread_m > 0:
            raise ValueError(f"cluster_gap_m and max_cluster_spread_m must be > 0, got "
                             f"{self.cluster_gap_m}, {self.max_cluster_spread_m}")
        if not 0 <= self.min_depth_m < self.max_depth_m:
            raise ValueError(f"min_depth_m/max_depth_m: expected 0 <= min < max, got "
                             f"{self.min_depth_m}, {self.max_depth_m}")


# Stand-in for "no sample" in the sorted windows: beyond any depth in any unit (uint16 mm tops out
# at 65535), finite so that the gaps between two of them are 0 (inf - inf would be NaN and warn).
_NO_SAMPLE = 1e12
# The same for uint16 millimetres (usable while the depth range ends more than a gap below it).
_U16_NO_SAMPLE = 65535
_TINY = float(np.nextafter(0.0, 1.0))  # the smallest positive float


def depth_unit_m(depth: np.ndarray) -> float:
    """Metres per unit of a depth image: 0.001 for uint16 millimetres, 1.0 for float metres.

    :raises ValueError: any other dtype.
    """
    if depth.dtype == np.uint16:
        return 0.001
    if np.issubdtype(depth.dtype, np.floating):
        return 1.0
    raise ValueError(f"depth: expected uint16 millimetres or float metres, got {depth.dtype}")


def sample_depth(uv: np.ndarray, depth: np.ndarray,
                 config: LiftingConfig = LiftingConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """Robust depth (m) at each landmark: the median of the nearest well-populated cluster.

    Only the (2r+1)^2 windows are read, in the image's own units (thresholds are converted, not
    the image): converting a whole 640x480 depth image to metres cost more than this function.

    :param uv: (N, 2) pixel coordinates (u = column, v = row).
    :param depth: (H, W) depth image: uint16 millimetres (0 = no measurement, as 16UC1) or float
        metres (NaN / inf / <= 0 = no measurement, as 32FC1); samples outside
        [min_depth_m, max_depth_m] are no measurement either.
    :returns: ``z`` (N,) float64 metres (NaN where invalid) and ``valid`` (N,) bool.
    """
    uv = np.asarray(uv, dtype=np.float64)
    depth = np.asarray(depth)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv: expected shape (N, 2), got {uv.shape}")
    if depth.ndim != 2:
        raise ValueError(f"depth: expected a (H, W) image, got shape {depth.shape}")
    unit = depth_unit_m(depth)
    n = uv.shape[0]
    h, w = depth.shape
    r = int(config.window_radius_px)
    k = (2 * r + 1) ** 2
    # Thresholds in the image's units. The lower bound is never below the smallest positive
    # value, so 0 (16UC1 "no data"), negative and NaN samples all fail ``>= lo``.
    lo = max(config.min_depth_m / unit, _TINY)
    hi = config.max_depth_m / unit
    gap = config.cluster_gap_m / unit
    spread = config.max_cluster_spread_m / unit

    all_finite = bool(np.isfinite(uv).all())
    finite = None if all_finite else np.isfinite(uv).all(axis=1)
    centre = np.rint(uv if all_finite else np.where(finite[:, None], uv, -10.0 * (r + 1))).astype(np.int64)
    du, dv = _window(r)
    lo_c, hi_c = centre.min(axis=0), centre.max(axis=0)  # (u, v) each
    contiguous = depth.flags.c_contiguous
    if contiguous and lo_c[0] >= r and lo_c[1] >= r and hi_c[0] < w - r and hi_c[1] < h - r:
        # Every window inside the image (the usual case): no mask, one gather at flat indices
        # (~3x faster than depth[rows, cols]).
        inside = None
        raw = depth.reshape(-1).take((centre[:, 1] * w + centre[:, 0])[:, None] + (dv * w + du))  # (N, K)
    else:
        rows, cols = centre[:, 1:2] + dv, centre[:, 0:1] + du  # (N, K), K = (2r+1)^2 row-major
        # Negative indices wrap to huge unsigned ones: one comparison per axis finds both borders.
        inside = (rows.view(np.uint64) < h) & (cols.view(np.uint64) < w)
        rows, cols = np.where(inside, rows, 0), np.where(inside, cols, 0)
        # Rows with padding (a sensor_msgs/Image step beyond width) are indexed in 2D: no copy.
        raw = depth.reshape(-1).take(rows * w + cols) if contiguous else depth[rows, cols]
    lo_i, hi_i = math.ceil(lo), math.floor(hi)
    if depth.dtype == np.uint16 and lo_i <= hi_i and hi_i + gap < _U16_NO_SAMPLE:
        # Millimetres stay integers: exact comparisons, and uint16 sorts faster than float64.
        # d in [lo, hi] <=> (d - lo) mod 2^16 <= hi - lo (below lo wraps to a large value).
        ok = (raw - np.uint16(lo_i)) <= np.uint16(hi_i - lo_i)
        no_sample = _U16_NO_SAMPLE
        # For integer samples "step > gap" is "step > floor(gap)", likewise for the spread.
        gap, spread = math.floor(gap), math.floor(spread)
    else:
        raw = raw.astype(np.float64)
        with np.errstate(invalid="ignore"):  # NaN samples compare False: not valid, no warning wanted
            ok = (raw >= lo) & (raw <= hi)
        no_sample = _NO_SAMPLE
    if inside is not None:
        ok &= inside
    s = np.where(ok, raw, raw.dtype.type(no_sample))
    s.sort(axis=1)  # (N, K): each window's valid samples nearest first, then the no-sample entries

    # Clusters are runs of the sorted samples without a step > gap. Runs are numbered by a
    # cumulative count of run starts over the flattened (N * K) ranks -- each row's rank 0 and
    # every step -- so the numbers increase along the flattened array and each run is one
    # contiguous stretch of it. The no-sample entries form runs of their own: the step to them
    # is larger than any gap.
    step = np.empty((n, k), bool)
    step[:, 0] = True
    np.greater(s[:, 1:] - s[:, :-1], gap, out=step[:, 1:])
    run = np.cumsum(step, axis=None, dtype=np.int32)  # (N * K,); int32: less memory to touch
    run2 = run.reshape(n, k)
    # The surface is the nearest run of more than max_speckle_samples valid samples: its first
    # rank j is the smallest with ranks j and j + sp in one run and j + sp valid (sorted: all
    # valid samples come before the no-sample entries).
    sp = int(config.max_speckle_samples)
    surface = run2[:, sp:] == run2[:, :k - sp]
    surface &= s[:, sp:] != no_sample
    start = np.argmax(surface, axis=1)  # 0 where there is none (then surface[start] is False)
    first = _ranks(n, k) + start  # flat index of the run's first sample
    has = surface.reshape(-1)[_ranks(n, k - sp) + start]
    size = np.searchsorted(run, run[first], side="right") - first  # the run's length
    # Spread (last - first sample) and median (mean of the middle two; the same one twice when
    # the size is odd) of the run; s is sorted.
    flat_s = s.reshape(-1)
    lo_s, hi_s = flat_s[first], flat_s[first + size - 1]
    mid = first + (size - 1) // 2
    m1, m2 = flat_s[mid], flat_s[mid + (size + 1) % 2]
    valid = has & (size >= config.min_cluster_samples) & (hi_s - lo_s <= spread)
    if not all_finite:
        valid &= finite
    z = np.where(valid, (m1 + m2.astype(np.float64)) * (0.5 * unit), np.nan)  # the run's median, m
    return z, valid


@functools.lru_cache(maxsize=16)
def _ranks(n: int, step: int = 1) -> np.ndarray:
    """``np.arange(n) * step`` (the flat index of each row's start), cached (per-frame path); read-only."""
    a = np.arange(n) * step
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=8)
def _window(r: int) -> Tuple[np.ndarray, np.ndarray]:
    """(1, K) column and row offsets of a (2r+1)^2 window, row-major (cached: per-frame path)."""
    offsets = np.arange(-r, r + 1)
    du, dv = np.meshgrid(offsets, offsets)
    return du.reshape(1, -1), dv.reshape(1, -1)


def lift_landmarks(uv: np.ndarray, depth: np.ndarray, intr: Intrinsics,
                   config: LiftingConfig = LiftingConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """Landmarks (u, v) px + aligned depth -> 3D points (m) in the camera optical frame.

    :param uv: (N, 2) pixel coordinates in the colour image (u right, v down, pixel centres at
        integers).
    :param depth: (H, W) depth aligned to the colour image, uint16 millimetres or float metres
        (see :func:`sample_depth`); its shape must be ``intr.shape``.
    :param intr: the colour camera's intrinsics.
    :returns: ``points`` (N, 3) float64 metres, NaN rows where invalid, and ``valid`` (N,) bool.
        A valid point is always finite: a back-projection that overflows (absurd intrinsics) is
        marked invalid rather than published as inf.
    """
    depth = np.asarray(depth)
    if depth.shape != intr.shape:
        raise ValueError(f"depth: shape {depth.shape} does not match the intrinsics' "
                         f"(height, width) {intr.shape}")
    z, valid = sample_depth(uv, depth, config)
    uv = np.asarray(uv, dtype=np.float64)
    # Intrinsics.backproject, written into one array (fewer numpy calls on this per-frame path).
    points = np.empty((uv.shape[0], 3))
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(uv - (intr.cx, intr.cy), z[:, None] / (intr.fx, intr.fy), out=points[:, :2])
    points[:, 2] = z  # NaN where invalid
    finite = np.isfinite(points).all(axis=1)
    if not finite[valid].all():
        valid &= finite  # an overflow (absurd intrinsics) is no measurement
        points[~valid] = np.nan
    return points, valid
