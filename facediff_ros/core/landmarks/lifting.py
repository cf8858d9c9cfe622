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


def sample_depth(uv: np.ndarray, depth_m: np.ndarray,
                 config: LiftingConfig = LiftingConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """Robust depth (m) at each landmark: the median of the nearest well-populated cluster.

    :param uv: (N, 2) pixel coordinates (u = column, v = row).
    :param depth_m: (H, W) float depth in metres, NaN / 0 / out-of-range = no measurement.
    :returns: ``z`` (N,) float64 metres (NaN where invalid) and ``valid`` (N,) bool.
    """
    uv = np.asarray(uv, dtype=np.float64)
    depth_m = np.asarray(depth_m)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv: expected shape (N, 2), got {uv.shape}")
    if depth_m.ndim != 2 or not np.issubdtype(depth_m.dtype, np.floating):
        raise ValueError(f"depth_m: expected a (H, W) float array in metres, got {depth_m.dtype} "
                         f"{depth_m.shape}")
    n = uv.shape[0]
    h, w = depth_m.shape
    r = int(config.window_radius_px)
    finite = np.isfinite(uv).all(axis=1)
    centre = np.where(finite[:, None], np.rint(uv), -10 * (r + 1)).astype(np.int64)  # (N, 2) u, v
    offsets = np.arange(-r, r + 1)
    du, dv = np.meshgrid(offsets, offsets)  # (S, S) each
    cols = centre[:, 0:1] + du.reshape(1, -1)  # (N, K), K = S * S
    rows = centre[:, 1:2] + dv.reshape(1, -1)  # (N, K)
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    samples = np.full(cols.shape, np.nan)
    samples[inside] = depth_m[rows[inside], cols[inside]]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(samples) & (samples >= config.min_depth_m) & (samples <= config.max_depth_m)
    samples = np.where(ok, samples, np.inf)

    s = np.sort(samples, axis=1)  # (N, K), invalid (inf) last
    k = s.shape[1]
    nvalid = ok.sum(axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf between invalid samples: NaN, no gap
        gap = np.diff(s, axis=1) > config.cluster_gap_m  # (N, K-1); inf - finite is a gap
    label = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(gap, axis=1)], axis=1)  # (N, K)
    is_valid_rank = np.arange(k)[None, :] < nvalid[:, None]
    # Per row, the size of each cluster (labels 0..K-1, nearest first); invalid ranks go to a
    # spare bin K.
    flat = np.where(is_valid_rank, label, k) + (k + 1) * np.arange(n)[:, None]
    sizes = np.bincount(flat.reshape(-1), minlength=n * (k + 1)).reshape(n, k + 1)[:, :k]  # (N, K)
    surface = sizes > config.max_speckle_samples
    has = surface.any(axis=1)
    chosen = np.argmax(surface, axis=1)  # the nearest non-speckle cluster
    has &= sizes[np.arange(n), chosen] >= config.min_cluster_samples
    # The chosen cluster is a contiguous run of the sorted samples: [start, start + size).
    size = np.where(has, sizes[np.arange(n), chosen], 1)
    start = np.argmax(label == chosen[:, None], axis=1)
    rowi = np.arange(n)
    lo = s[rowi, start]
    hi = s[rowi, start + size - 1]
    z = 0.5 * (s[rowi, start + (size - 1) // 2] + s[rowi, start + size // 2])  # median
    valid = has & finite
    with np.errstate(invalid="ignore"):
        valid &= (hi - lo) <= config.max_cluster_spread_m
    z = np.where(valid, z, np.nan)
    return z, valid


def lift_landmarks(uv: np.ndarray, depth_m: np.ndarray, intr: Intrinsics,
                   config: LiftingConfig = LiftingConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """Landmarks (u, v) px + aligned depth (m) -> 3D points (m) in the camera optical frame.

    :param uv: (N, 2) pixel coordinates in the colour image (u right, v down, pixel centres at
        integers).
    :param depth_m: (H, W) depth in metres aligned to the colour image (NaN / 0 = invalid); its
        shape must be ``intr.shape``.
    :param intr: the colour camera's intrinsics.
    :returns: ``points`` (N, 3) float64 metres, NaN rows where invalid, and ``valid`` (N,) bool.
    """
    depth_m = np.asarray(depth_m)
    if depth_m.shape != intr.shape:
        raise ValueError(f"depth_m: shape {depth_m.shape} does not match the intrinsics' "
                         f"(height, width) {intr.shape}")
    z, valid = sample_depth(uv, depth_m, config)
    uv = np.asarray(uv, dtype=np.float64)
    points = intr.backproject(uv[:, 0], uv[:, 1], z)  # (N, 3); NaN where z is NaN
    points[~valid] = np.nan
    return points, valid
