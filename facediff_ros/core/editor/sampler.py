"""Few-step deterministic sampling (DDIM, eta = 0) over a v-predicting network.

The network is wrapped as a *denoiser*: ``denoise(x_t, t) -> (x0_hat, eps_hat)``. From
v-prediction (Salimans & Ho 2022), with ``v = alpha * eps - sigma * x_0``:

    x0_hat  = alpha * x_t - sigma * v
    eps_hat = sigma * x_t + alpha * v

v-prediction stays well conditioned at both ends (at t = 1, alpha = 0: x0_hat = -v), which is
what lets the first step start from pure noise and the last step land on data.

A DDIM step from t to s re-noises the current estimate deterministically:
``x_s = alpha(s) * x0_hat + sigma(s) * eps_hat``; the last step returns ``x0_hat`` itself (no
noise is added at s = 0). The number of network evaluations equals ``steps``. The sampler holds
no state: times are passed explicitly, and the starting noise comes from the caller (a fixed
noise per stream keeps a live edit temporally stable).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from facediff_ros.core.editor.schedule import alpha_sigma, sampling_times


def v_to_x0_eps(x_t, v, t):
    """(x0_hat, eps_hat) from the network's v at time ``t`` (torch tensors; ``t`` broadcastable)."""
    a, s = alpha_sigma(t)
    return a * x_t - s * v, s * x_t + a * v


def x0_eps_to_v(x0, eps, t):
    """The training target v for clean ``x0`` and noise ``eps`` at ``t`` (inverse of :func:`v_to_x0_eps`)."""
    a, s = alpha_sigma(t)
    return a * eps - s * x0


def sample_ddim(denoise: Callable, noise, steps: int, callback: Optional[Callable] = None):
    """Deterministic DDIM from ``noise`` (the sample at t = 1) to t = 0 in ``steps`` evaluations.

    :param denoise: ``denoise(x_t, t) -> (x0_hat, eps_hat)``; ``t`` is a python float.
    :param noise: the starting sample (torch tensor, any shape the denoiser takes).
    :param steps: network evaluations (>= 1).
    :param callback: called as ``callback(i, t, x0_hat)`` after each evaluation (for figures).
    :returns: the estimate of x_0.
    """
    times = sampling_times(steps)
    x = noise
    x0 = None
    for i in range(len(times) - 1):
        t, s = float(times[i]), float(times[i + 1])
        x0, eps = denoise(x, t)
        if callback is not None:
            callback(i, t, x0)
        if s > 0.0:
            a_s, s_s = alpha_sigma(s)
            x = float(a_s) * x0 + float(s_s) * eps
    return x0


def denoiser_from_v_model(model: Callable, *conditions) -> Callable[..., Tuple]:
    """Wrap a v-predicting ``model(x_t, t_batch, *conditions)`` as a denoiser for :func:`sample_ddim`."""
    import torch

    def denoise(x_t, t: float):
        tb = torch.full((x_t.shape[0],), t, dtype=x_t.dtype, device=x_t.device)  # (B,)
        v = model(x_t, tb, *conditions)
        return v_to_x0_eps(x_t, v, torch.as_tensor(t, dtype=x_t.dtype))

    return denoise
