"""Pinhole camera intrinsics in the REP-103 optical frame (x right, y down, z forward).

Pixel convention (OpenCV, ROS CameraInfo): pixel (u, v) = (column, row) has its centre at
integer coordinates, so the point (x, y, z) projects to u = fx x / z + cx, v = fy y / z + cy.
Images are indexed ``image[v, u]`` with shape (height, width): :meth:`Intrinsics.shape` is the one
place that orders the two.
"""

from __future__ import annotations

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
            if not np.isfinite(v):
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
