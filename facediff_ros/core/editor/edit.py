"""One expression edit of a face crop: validated inputs -> few-step DDIM over the trained network.

:class:`ExpressionEditor` holds the network (torch here; the ONNX/TensorRT backends wrap the same
call) and a fixed starting noise per stream: the same noise every frame keeps a live edit
temporally stable (a new draw each frame would make the details shimmer).

Inputs are the crop tensors of :mod:`facediff_ros.core.editor.crop` / ``warp``: source RGB-D
(4, S, S) and the target buffers (8, S, S), all float32 in [-1, 1]; the output is the edited RGB-D
crop (4, S, S) in the same layout (RGB in [-1, 1], depth normalised around the face centre).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from facediff_ros.core.editor.residual import model_only_rgbd
from facediff_ros.core.editor.network import BUFFER_CHANNELS, SOURCE_CHANNELS, TARGET_CHANNELS, EditorUNet
from facediff_ros.core.editor.sampler import denoiser_from_v_model, sample_ddim
from facediff_ros.core.face.expressions import CATEGORIES

MAX_STEPS = 1000


def category_index(category: Union[str, int]) -> int:
    """Index of an expression category by name (case-insensitive) or index.

    :raises ValueError: an unknown name or an index out of range, listing the valid names.
    """
    if isinstance(category, (int, np.integer)) and not isinstance(category, bool):
        if 0 <= int(category) < len(CATEGORIES):
            return int(category)
    elif isinstance(category, str) and category.strip().lower() in CATEGORIES:
        return CATEGORIES.index(category.strip().lower())
    raise ValueError(f"unknown expression category {category!r}; expected one of {list(CATEGORIES)}")


def _check(name: str, x, channels: int, size: int) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise ValueError(f"{name}: expected a float array, got dtype {a.dtype}")
    if a.shape != (channels, size, size):
        raise ValueError(f"{name}: expected shape {(channels, size, size)}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a.astype(np.float32, copy=False)


class ExpressionEditor:
    """``edit(source, buffers, category, intensity) -> (4, S, S)`` with a trained :class:`EditorUNet`.

    :param net: the network (eval mode is set here).
    :param steps: network evaluations per edit (1..MAX_STEPS; 4 is the live default).
    :param seed: seed of the fixed starting noise.
    :param threads: torch intra-op threads.
    :param model: called instead of ``net`` for each evaluation, with the network's signature (CPU
        torch tensors in and out): an ONNX/TensorRT backend
        (:class:`~facediff_ros.core.editor.backends.BackendEditor`). ``net`` then only has to carry
        ``.config``.
    """

    def __init__(self, net: EditorUNet, steps: int = 4, seed: int = 0, threads: Optional[int] = None,
                 model: Optional[Callable] = None):
        if int(steps) != steps or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
        self.net = net.eval() if model is None else net
        self.model = model if model is not None else self.net
        self.size = net.config.crop_size
        self.steps = int(steps)
        if threads is not None:
            torch.set_num_threads(int(threads))
        g = torch.Generator().manual_seed(int(seed))
        self.noise = torch.randn(1, TARGET_CHANNELS, self.size, self.size, generator=g)  # (1, 4, S, S)

    @torch.no_grad()
    def edit_batch(self, source: np.ndarray, buffers: np.ndarray, categories: Sequence, intensities: Sequence,
                   steps: Optional[int] = None) -> np.ndarray:
        """(B, 4, S, S) source, (B, 8, S, S) buffers -> (B, 4, S, S) edited crops (same noise for all)."""
        src = torch.from_numpy(np.ascontiguousarray(source, np.float32))
        buf = torch.from_numpy(np.ascontiguousarray(buffers, np.float32))
        cat = torch.tensor([category_index(c) for c in categories], dtype=torch.long)
        inten = torch.tensor([float(i) for i in intensities], dtype=torch.float32)
        denoise = denoiser_from_v_model(self.model, src, buf, cat, inten)
        noise = self.noise.expand(src.shape[0], -1, -1, -1).contiguous()
        x0 = sample_ddim(denoise, noise, steps or self.steps)
        scale = self.net.config.residual_scale
        if scale > 0:  # the network denoised the residual over the model-only baseline
            x0 = model_only_rgbd(src, buf) + scale * x0
        return x0.numpy()

    def edit(self, source, buffers, category: Union[str, int], intensity: float,
             steps: Optional[int] = None) -> np.ndarray:
        """Edit one crop.

        :param source: (4, S, S) float source RGB-D crop in [-1, 1].
        :param buffers: (8, S, S) float target buffers (warp.buffers_tensor).
        :param category: a name of :data:`CATEGORIES` or its index.
        :param intensity: in [0, 1].
        :param steps: override the editor's step count for this call.
        :raises ValueError: wrong shapes or dtypes, NaN/inf, unknown category, intensity outside [0, 1].
        """
        src = _check("source", source, SOURCE_CHANNELS, self.size)
        buf = _check("buffers", buffers, BUFFER_CHANNELS, self.size)
        if not isinstance(intensity, (int, float, np.floating)) or not 0.0 <= float(intensity) <= 1.0:
            raise ValueError(f"intensity must be a number in [0, 1], got {intensity!r}")
        if steps is not None and (int(steps) != steps or not 1 <= steps <= MAX_STEPS):
            raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
        return self.edit_batch(src[None], buf[None], [category_index(category)], [float(intensity)], steps)[0]
