"""The noise schedule: continuous time t in [0, 1] -> (alpha, sigma) of a variance-preserving process.

``x_t = alpha(t) * x_0 + sigma(t) * eps`` with ``alpha^2 + sigma^2 = 1``; t = 0 is clean data,
t = 1 is pure noise (alpha = 0 exactly, so sampling starts from noise that carries no signal and
training sees the same "zero SNR" start as inference; Lin et al. 2024, "Common diffusion noise
schedules and sample steps are flawed"). The cosine schedule (Nichol & Dhariwal 2021):
``alpha = cos(pi/2 * t)``, ``sigma = sin(pi/2 * t)``.

Functions take numpy or torch and return the same kind; they hold no state (the sampler passes
the time explicitly, never a hidden step index).
"""

from __future__ import annotations

import math

import numpy as np

from facediff_ros.core.tensors import is_torch


def alpha_sigma(t):
    """(alpha, sigma) at time ``t`` (scalar, numpy array or torch tensor, values in [0, 1])."""
    if is_torch(t):
        import torch
        a = torch.cos(t * (math.pi / 2))
        s = torch.sin(t * (math.pi / 2))
        return torch.where(t >= 1, torch.zeros_like(a), a), torch.where(t >= 1, torch.ones_like(s), s)
    t = np.asarray(t, dtype=np.float64)
    if np.any((t < 0) | (t > 1)) or not np.all(np.isfinite(t)):
        raise ValueError(f"t must lie in [0, 1], got {t}")
    a, s = np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)
    return np.where(t >= 1, 0.0, a), np.where(t >= 1, 1.0, s)


def sampling_times(steps: int):
    """The ``steps + 1`` times a sampler visits, from 1 (noise) to 0 (data), evenly spaced.

    ``steps`` is the number of network evaluations. Even spacing in t is even spacing in the
    angle of (alpha, sigma), which spends steps evenly over log-SNR's useful middle range.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return np.linspace(1.0, 0.0, int(steps) + 1)
