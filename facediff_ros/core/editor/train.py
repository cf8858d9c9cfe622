"""Training the editor network: v-prediction on (source, buffers, target) pairs, EMA weights.

One step: draw t ~ U(0, 1) per pair, noise the target ``x_t = alpha x_0 + sigma eps``, predict v
from ``(x_t, t, source, buffers, category, intensity)`` and regress the true
``v = alpha eps - sigma x_0`` (:mod:`~facediff_ros.core.editor.sampler`); with
``net.config.residual_scale > 0`` x_0 is the scaled residual over the model-only baseline
(:mod:`~facediff_ros.core.editor.residual`). The loss is a weighted
mean square over pixels: the target's face pixels count fully, background pixels
``background_weight`` (they only copy the source through), and the depth channel
``depth_weight`` relative to each colour channel.

This module knows nothing of where pairs come from: :func:`train` takes a callable that returns
batches (the synthetic cache, or a person's own frames when personalising). Checkpoints hold the
model, its EMA, the optimiser, the step and the config, so a stopped run resumes where it was;
the final weights are the EMA's, written with the resolved config beside them
(:func:`save_weights` / :func:`load_weights`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
from facediff_ros.core.editor.residual import model_only_rgbd
from facediff_ros.core.editor.sampler import x0_eps_to_v
from facediff_ros.core.editor.schedule import alpha_sigma

WEIGHTS_FILE = "editor.pt"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults: what fits ~1 h on 2 CPU cores at 64x64 (shared/notes/stack.md)."""

    net: EditorNetConfig = field(default_factory=EditorNetConfig)
    steps: int = 6000
    batch_size: int = 16             # ~0.5 s per step for the 0.4M net on 2 idle cores
    lr: float = 2e-3                 # AdamW; small UNet with GroupNorm tolerates a high rate
    warmup_steps: int = 200
    final_lr_fraction: float = 0.1   # cosine decay to this share of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995         # ~200-step horizon: short runs still get a smoothed model
    background_weight: float = 0.2
    depth_weight: float = 1.0
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 250

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.threads < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size, threads and checkpoint_every must be >= 1")
        if not 0 < self.lr < 1 or not 0 <= self.ema_decay < 1 or not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"need 0 < lr < 1, 0 <= ema_decay < 1, 0 <= final_lr_fraction <= 1; got "
                             f"{self.lr}, {self.ema_decay}, {self.final_lr_fraction}")

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["net"]["channels"] = list(d["net"]["channels"])
        return d

    @classmethod
    def from_dict(cls, d: Dict) -> "TrainConfig":
        d = dict(d)
        net = dict(d.pop("net", {}))
        if "channels" in net:
            net["channels"] = tuple(net["channels"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        return cls(net=EditorNetConfig(**net), **d)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction * lr`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    p = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    return config.lr * (config.final_lr_fraction + (1 - config.final_lr_fraction) * cosine)


def pixel_weights(mask: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """(B, S, S) target face coverage in [0, 1] -> (B, 4, S, S) loss weights (colour x3, depth)."""
    w = config.background_weight + (1 - config.background_weight) * mask.clamp(0, 1)  # (B, S, S)
    ch = torch.tensor([1.0, 1.0, 1.0, config.depth_weight], dtype=w.dtype, device=w.device)
    return w[:, None] * ch[None, :, None, None]


def loss_on_batch(net: EditorUNet, batch: Dict[str, torch.Tensor], config: TrainConfig,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The weighted v-prediction loss on one batch (keys: source, target, buffers, mask, category,
    intensity; see :mod:`facediff_ros.synthetic.editor_data`)."""
    x0 = batch["target"]
    if net.config.residual_scale > 0:
        x0 = (x0 - model_only_rgbd(batch["source"], batch["buffers"])) / net.config.residual_scale
    b = x0.shape[0]
    t = torch.rand(b, generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    a, s = alpha_sigma(t)
    a, s = a[:, None, None, None], s[:, None, None, None]  # (B, 1, 1, 1)
    x_t = a * x0 + s * eps
    v = net(x_t, t, batch["source"], batch["buffers"], batch["category"], batch["intensity"])
    w = pixel_weights(batch["mask"], config)
    return (w * (v - x0_eps_to_v(x0, eps, t[:, None, None, None])) ** 2).sum() / w.sum()


class _EMA:
    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


def save_weights(out_dir, state_dict, config: TrainConfig, extra: Optional[Dict] = None) -> Path:
    """Write ``editor.pt`` (the weights) and ``config.json`` (config + ``extra``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS_FILE + ".tmp")
    torch.save({"format": FORMAT, "state_dict": state_dict, "net": config.to_dict()["net"]}, tmp)
    tmp.replace(out / WEIGHTS_FILE)
    meta = {"format": FORMAT, "config": config.to_dict(), **(extra or {})}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out / WEIGHTS_FILE


def load_weights(weights_dir, expected: Optional[EditorNetConfig] = None) -> EditorUNet:
    """The network saved by :func:`save_weights`, in eval mode.

    :raises ValueError: missing files, another format, or a net config other than ``expected``.
    """
    path = Path(weights_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"no editor weights at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not an editor weights file of format {FORMAT}")
    net_cfg = dict(blob["net"])
    net_cfg["channels"] = tuple(net_cfg["channels"])
    net_cfg.setdefault("residual_scale", 0.0)  # weights saved before the residual mode predict the target
    config = EditorNetConfig(**net_cfg)
    if expected is not None and config != expected:
        raise ValueError(f"{path}: weights are for {config}, expected {expected}")
    net = EditorUNet(config)
    net.load_state_dict(blob["state_dict"])
    return net.eval()


def train(config: TrainConfig, next_batch: Callable[[int, np.random.Generator], Dict[str, np.ndarray]],
          out_dir, minutes: Optional[float] = None, init_weights: Optional[str] = None,
          log: Optional[Callable[[str], None]] = None, extra_meta: Optional[Dict] = None) -> Dict:
    """Train (or resume) and write the EMA weights; returns a summary (steps, loss, time).

    :param next_batch: ``next_batch(batch_size, rng)`` -> dict of numpy arrays (a batch of pairs).
    :param out_dir: checkpoint and weights folder; a checkpoint there is resumed.
    :param minutes: stop (and save) after this much wall time even before ``config.steps``.
    :param init_weights: a weights folder to start from (fine-tuning) instead of random weights.
    :param log: receives one progress line every few steps (loss, ms/step, ETA).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    net = load_weights(init_weights, config.net).train() if init_weights else EditorUNet(config.net)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = _EMA(net, config.ema_decay)
    step, losses, elapsed_before = 0, [], 0.0
    ckpt = out / CHECKPOINT_FILE
    if ckpt.is_file():
        blob = torch.load(ckpt, map_location="cpu", weights_only=False)
        if blob["config"] != config.to_dict():
            raise ValueError(f"{ckpt} was made with another config; use another folder or delete it")
        net.load_state_dict(blob["model"])
        opt.load_state_dict(blob["opt"])
        ema.shadow = blob["ema"]
        step, losses, elapsed_before = blob["step"], blob["losses"], blob["elapsed_s"]
        torch.set_rng_state(blob["torch_rng"])
    rng = np.random.default_rng([config.seed, step])  # resumed runs draw fresh batches
    gen = torch.Generator().manual_seed(config.seed * 100003 + step)

    def checkpoint():
        tmp = out / (CHECKPOINT_FILE + ".tmp")
        torch.save({"config": config.to_dict(), "model": net.state_dict(), "opt": opt.state_dict(),
                    "ema": ema.shadow, "step": step, "losses": losses,
                    "elapsed_s": elapsed_before + time.time() - t_start,
                    "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(ckpt)

    t_start = time.time()
    t_last, recent = t_start, []
    while step < config.steps:
        if minutes is not None and time.time() - t_start > 60 * minutes:
            break
        for g in opt.param_groups:
            g["lr"] = learning_rate(config, step)
        batch = {k: torch.from_numpy(np.asarray(v)) for k, v in next_batch(config.batch_size, rng).items()}
        loss = loss_on_batch(net, batch, config, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        ema.update(net)
        step += 1
        recent.append(float(loss))
        if step % 25 == 0 or step == config.steps:
            losses.append([step, float(np.mean(recent))])
            now = time.time()
            ms = 1000 * (now - t_last) / len(recent)
            left = (config.steps - step) * ms / 1000
            if minutes is not None:
                left = min(left, max(0.0, 60 * minutes - (now - t_start)))
            if log is not None:
                log(f"step {step}/{config.steps}  loss {np.mean(recent):.4f}  {ms:.0f} ms/step  "
                    f"lr {learning_rate(config, step):.2e}  ETA {left / 60:.1f} min")
            t_last, recent = now, []
        if step % config.checkpoint_every == 0:
            checkpoint()
    checkpoint()
    elapsed = elapsed_before + time.time() - t_start
    summary = {"steps": step, "elapsed_s": round(elapsed, 1),
               "final_loss": losses[-1][1] if losses else None, "losses": losses}
    save_weights(out, ema.shadow, config, {"training": {k: v for k, v in summary.items() if k != "losses"},
                                           **(extra_meta or {})})
    return summary
