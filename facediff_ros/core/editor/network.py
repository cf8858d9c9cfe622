"""The editor's denoising network: a small UNet over the face crop, conditioned by FiLM.

Input channels (all on the same square crop, float32, each normalised to about [-1, 1]):

- the noisy target RGB-D (4: RGB + depth relative to the face centre), the diffusion variable;
- the source RGB-D crop (4), concatenated with the noise (the lab's plan);
- the target buffers rendered from the fitted model with the target expression (8: colour warped
  from the person's own UV texture (3), depth (1), normals (3), face mask (1)), as in DiffusionRig.

The time t and the target expression (category + intensity) enter every residual block as a
per-channel scale and shift after GroupNorm (FiLM / AdaGN). The expression embedding is
``intensity * E[category]``: at intensity 0 every category is the same input, the neutral
"no edit" condition, so intensity interpolates from it by construction.

Output: v (4 channels), see :mod:`facediff_ros.core.editor.sampler`. Static shapes, no data-dependent
control flow: the module exports to ONNX as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import nn

from facediff_ros.core.face.expressions import CATEGORIES

TARGET_CHANNELS = 4      # RGB + depth
SOURCE_CHANNELS = 4      # RGB + depth
BUFFER_CHANNELS = 8      # warped colour 3, depth 1, normals 3, mask 1


@dataclass(frozen=True)
class EditorNetConfig:
    """Size of the network. Defaults from the CPU calibration in shared/notes/stack.md: 24/48/96
    channels at 64x64 take ~7 ms per evaluation with onnxruntime on 2 cores, so 4 evaluations fit
    a 60 ms edit with room for cropping, rendering and the point cloud."""

    crop_size: int = 64                        # px, square; must be divisible by 2**(levels - 1)
    channels: Tuple[int, ...] = (24, 48, 96)   # per UNet level
    blocks_per_level: int = 1
    emb_dim: int = 128                         # time + expression embedding width
    groups: int = 8                            # GroupNorm groups (divides every channel count)
    # > 0: the diffusion variable is (target - model-only baseline) / residual_scale
    # (core/editor/residual.py: the warp already gives most of the target); 0: the target itself.
    residual_scale: float = 0.1

    def __post_init__(self):
        if len(self.channels) < 1 or any(c % self.groups for c in self.channels):
            raise ValueError(f"channels {self.channels}: expected multiples of groups={self.groups}")
        if not self.residual_scale >= 0:
            raise ValueError(f"residual_scale: expected >= 0, got {self.residual_scale}")
        factor = 2 ** (len(self.channels) - 1)  # one halving per level below the top
        if self.crop_size % factor:
            raise ValueError(f"crop_size {self.crop_size}: expected a multiple of {factor}")

    @property
    def in_channels(self) -> int:
        return TARGET_CHANNELS + SOURCE_CHANNELS + BUFFER_CHANNELS


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm -> FiLM(emb) -> SiLU -> conv, twice, with a skip connection."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups if cin % groups == 0 else 1, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(nn.functional.silu(h))
        return self.skip(x) + h


class EditorUNet(nn.Module):
    """``forward(x_t, t, source, buffers, category, intensity) -> v``.

    Shapes: x_t (B, 4, S, S), t (B,) in [0, 1], source (B, 4, S, S), buffers (B, 8, S, S),
    category (B,) int64 index into :data:`facediff_ros.core.face.expressions.CATEGORIES`,
    intensity (B,) float in [0, 1]. Returns v (B, 4, S, S).
    """

    def __init__(self, config: EditorNetConfig = EditorNetConfig()):
        super().__init__()
        self.config = config
        c, e, g = config.channels, config.emb_dim, config.groups
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.expression = nn.Embedding(len(CATEGORIES), e)
        self.stem = nn.Conv2d(config.in_channels, c[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        cin = c[0]
        for i, ch in enumerate(c):
            self.down.append(nn.ModuleList([ResBlock(cin if j == 0 else ch, ch, e, g)
                                            for j in range(config.blocks_per_level)]))
            cin = ch
            if i < len(c) - 1:
                self.pool.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(c) - 1)):
            self.upsample.append(nn.ConvTranspose2d(cin, c[i], 2, stride=2))
            self.up.append(nn.ModuleList([ResBlock(2 * c[i] if j == 0 else c[i], c[i], e, g)
                                          for j in range(config.blocks_per_level)]))
            cin = c[i]
        self.head = nn.Sequential(nn.GroupNorm(g, c[0]), nn.SiLU(),
                                  nn.Conv2d(c[0], TARGET_CHANNELS, 3, padding=1))

    def embedding(self, t: torch.Tensor, category: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """(B, emb_dim): time MLP + intensity-scaled category embedding."""
        emb = self.time_mlp(timestep_embedding(t, self.config.emb_dim))
        return emb + intensity.float()[:, None] * self.expression(category)

    def forward(self, x_t, t, source, buffers, category, intensity):
        emb = self.embedding(t, category, intensity)
        h = self.stem(torch.cat([x_t, source, buffers], dim=1))  # (B, c0, S, S)
        skips = []
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
            if i < len(self.pool):
                skips.append(h)
                h = self.pool[i](h)
        for up, blocks in zip(self.upsample, self.up):
            h = torch.cat([up(h), skips.pop()], dim=1)  # (B, 2 c_i, S_i, S_i)
            for block in blocks:
                h = block(h, emb)
        return self.head(h)
