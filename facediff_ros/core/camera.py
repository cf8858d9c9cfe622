"""Pinhole camera intrinsics in the REP-103 optical frame (x right, y down, z forward).

Pixel convention (OpenCV, ROS CameraInfo): pixel (u, v) = (column, row) has its centre at
integer coordinates, so the point (x, y, z) projects to u = fx x / z + cx, v = fy y / z + cy.
Images are indexed ``image[v, u]`` with shape (height, width): :meth:`Intrinsics.shape` is the one
place that orders the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics (px) of an undistorted image of ``width`` x ``height`` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            if not math.isfinite(v):  # math, not numpy: this runs per frame, on scalars
                raise ValueError(f"Intrinsics.{name} must be finite, got {v}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be > 0 px, got fx={self.fx}, fy={self.fy}")
        if int(self.width) != self.width or int(self.height) != self.height \
                or self.width <= 0 or self.height <= 0:
            raise ValueError(f"width and height must be positive integers, got {self.width}x{self.height}")

    @property
    def shape(self) -> tuple:
        """(height, width): the numpy shape of an image from this camera."""
        return (int(self.height), int(self.width))

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_K(cls, K, width: int, height: int) -> "Intrinsics":
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float) -> "Intrinsics":
        """Square pixels, principal point at the image centre, horizontal field of view in degrees."""
        f = 0.5 * width / np.tan(np.radians(hfov_deg) / 2)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)

    def scaled(self, sx: float, sy: float) -> "Intrinsics":
        """Intrinsics of the same camera resized by (sx, sy) (pixel-centre convention kept)."""
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                          (self.cy + 0.5) * sy - 0.5, int(round(self.width * sx)),
                          int(round(self.height * sy)))

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) camera points (m) -> (..., 2) pixel coordinates (u, v); z must be > 0."""
        p = np.asarray(points, dtype=np.float64)
        z = p[..., 2]
        return np.stack([self.fx * p[..., 0] / z + self.cx, self.fy * p[..., 1] / z + self.cy], -1)

    def backproject(self, u, v, z) -> np.ndarray:
        """Pixel coordinates and z-depth (m) -> (..., 3) camera points (m)."""
        u, v, z = (np.asarray(a, dtype=np.float64) for a in (u, v, z))
        return np.stack([(u - self.cx) / self.fx * z, (v - self.cy) / self.fy * z, z], -1)

    def pixel_grid(self) -> tuple:
        """(u, v) float32 arrays of shape (height, width) with each pixel's centre coordinates."""
        v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        return u, v


# Plausible pinhole cameras (checked on CameraInfo from the wire, where anything can arrive).
# Focal lengths, relative to the image's longer side s = max(width, height): f >= 0.01 s is a
# field of view below ~179.4 deg, f <= 100 s one above ~0.57 deg -- far wider than any camera this
# package meets (RealSense D4xx colour: f ~ 0.9 s), and tight enough that f = 1e-300 (points
# ~1e300 m away, inf at 1e-310) cannot pass.
MIN_FOCAL_PER_SIDE = 1e-2
MAX_FOCAL_PER_SIDE = 1e2
# Principal point: at most one image size outside the image (cx in [-W, 2W], cy in [-H, 2H]);
# a real one lies near the centre, cropped or shifted sensors stay well inside this.
PRINCIPAL_POINT_MARGIN = 1.0


def check_camera_matrix(K, width: int, height: int) -> None:
    """Refuse a camera matrix this package cannot use for an image of ``width`` x ``height`` px.

    Checks: finite; fx, fy within [:data:`MIN_FOCAL_PER_SIDE`, :data:`MAX_FOCAL_PER_SIDE`] x
    max(width, height); (cx, cy) within :data:`PRINCIPAL_POINT_MARGIN` image sizes of the image;
    zero skew (K[0, 1]: :class:`Intrinsics` and all back-projection here assume none; every
    RealSense and ROS calibration publishes 0); K[1, 0] = 0 and a last row of exactly [0, 0, 1]
    (sensor_msgs/CameraInfo's form of K).

    :param K: the camera matrix (px), (3, 3) or its 9 values row-major.
    :raises ValueError: the first failed check, with the values.
    """
    # Python floats, not numpy: this runs on every frame and numpy's per-call cost on nine
    # numbers is most of the work.
    k = [float(v) for v in np.ravel(K)]
    if len(k) != 9 or not all(math.isfinite(v) for v in k):
        raise ValueError(f"k: expected a finite 3x3 camera matrix, got {k}")
    w, h = int(width), int(height)
    side = max(w, h)
    lo, hi = MIN_FOCAL_PER_SIDE * side, MAX_FOCAL_PER_SIDE * side
    fx, skew, cx, k10, fy, cy = k[:6]
    if not (lo <= fx <= hi and lo <= fy <= hi):
        raise ValueError(f"k: focal lengths fx={fx!r}, fy={fy!r} px are outside [{lo:g}, {hi:g}] "
                         f"({MIN_FOCAL_PER_SIDE:g}..{MAX_FOCAL_PER_SIDE:g} x the {side} px image side)")
    m = PRINCIPAL_POINT_MARGIN
    if not (-m * w <= cx <= (1 + m) * w and -m * h <= cy <= (1 + m) * h):
        raise ValueError(f"k: principal point ({cx!r}, {cy!r}) px is more than {m:g} image sizes "
                         f"outside the {w}x{h} image")
    if skew != 0.0:
        raise ValueError(f"k: skew K[0,1]={skew!r} is not supported (expected 0)")
    if k10 != 0.0 or k[6:] != [0.0, 0.0, 1.0]:
        raise ValueError(f"k: expected K[1,0] = 0 and a last row [0, 0, 1], got K[1,0]={k10!r}, "
                         f"last row {k[6:]}")
