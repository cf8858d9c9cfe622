"""Personalisation: fine-tune the editor on one person's own fitted frames (ROS-free part).

The command (:mod:`facediff_ros.personalize_command`) reads a recording or photos, runs the
landmark + fitting stages on them and hands the fitted frames here (:class:`FittedFrame`). This
module then

1. picks the frames (:func:`split_frames`): a held-out set first, spread over expression and pose
   by farthest-point sampling on ``[expression weights, pose_weight * head rotation vector]``, then
   the training frames the same way from what stays at least ``gap_s`` away in time from every
   held-out frame (neighbouring video frames are near copies; without the gap the held-out error
   would measure memory, not generalisation);
2. makes self-supervised pairs (:func:`make_pairs`): rebuild frame j from frame i plus frame j's
   fitted mesh, for i != j with head poses close enough that the network sees what it sees live
   (the live edit keeps the pose; here ``max_pose_deg`` / ``max_shift_m`` bound the change). The
   inputs are built by :func:`~facediff_ros.core.editor.inputs.network_inputs`, the function the
   synthetic training pairs and the live edit use: the crop of frame i's fitted mesh, frame i's
   RGB-D as the source, buffers of frame j's fitted mesh; the target is frame j's own image in that
   crop. The category and intensity the network is told are the nearest category to frame j's
   fitted weights (:func:`~facediff_ros.core.face.expressions.nearest_category`);
3. fine-tunes from the base weights with :func:`~facediff_ros.core.editor.train.train` (its
   checkpoint makes a stopped run resume) under a wall-clock budget. The learning rate is constant
   after a short warm-up, so a run does not depend on its budget: 5 minutes are 2 minutes resumed
   for 3 more;
4. scores the base and the personalised weights on the held-out pairs in the same run
   (:func:`heldout_scores`: RGB PSNR inside the target face mask) and draws the before/after figure
   (:func:`before_after_figure`).

Frames: meshes are in the camera optical frame (REP-103: x right, y down, z forward), metres;
rotations in radians unless named ``_deg``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.crop import CropConfig
from facediff_ros.core.editor.inputs import editor_triangles, face_crop, network_inputs
from facediff_ros.core.editor.residual import model_only_rgbd
from facediff_ros.core.face import expressions
from facediff_ros.core.face.morphable_model import MorphableModel
from facediff_ros.core.fitting.solver import rotation_log
from facediff_ros.core.render.renderer import Renderer

FACE_COVERAGE = 0.5  # a pixel is face where the target mesh covers it (as editor_eval's mask > 0.5)


class PersonalizeError(ValueError):
    """Input that cannot be personalised on; the message is the one line the command prints."""


@dataclass
class FittedFrame:
    """One input frame with its fit (what the fitting stage gave for it)."""

    index: int
    timestamp: Optional[float]        # s; None for photos (no time order, no gap needed)
    rgb: np.ndarray                   # (H, W, 3) uint8
    depth_m: Optional[np.ndarray]     # (H, W) float32 metres, 0 = none; None: colour only
    intrinsics: Intrinsics
    identity: np.ndarray              # (K,) float32
    expression: np.ndarray            # (E,) float32 in [0, 1], MorphableModel order
    R: np.ndarray                     # (3, 3) x_cam = R x_model + t
    t: np.ndarray                     # (3,) m


@dataclass(frozen=True)
class PersonalizeConfig:
    """Frame selection, pairs and fine-tuning. Times in seconds, angles in degrees, lengths in metres."""

    max_frames: int = 48            # training frames at most (farthest-point order)
    heldout_fraction: float = 0.2   # of the usable frames, at most max_heldout
    max_heldout: int = 12
    min_train_frames: int = 8
    min_heldout_frames: int = 3
    gap_s: float = 0.3              # training frames keep this far in time from held-out ones
    pose_weight: float = 2.0        # feature per radian of head rotation (expression weights are 0..1)
    max_pose_deg: float = 15.0      # pair: head rotation between source and target
    max_shift_m: float = 0.03       # pair: face centre moved at most this (the crop is 0.24 m)
    max_pairs: int = 384
    eval_sources: int = 2           # held-out pairs per held-out frame (closest-pose training sources)
    lr: float = 1e-3                # half the base run's 2e-3: a few hundred steps on one person
    batch_size: int = 8
    warmup_steps: int = 10
    ema_decay: float = 0.95         # ~20-step horizon: a budget of a few dozen steps still moves the EMA
    checkpoint_every: int = 20
    step_cap: int = 100000          # steps are bounded by the budget, not by this
    seed: int = 0
    threads: int = 2
    eval_steps: int = 4             # DDIM steps for the held-out scores (the live default)

    def __post_init__(self):
        for name in ("max_frames", "max_heldout", "min_train_frames", "min_heldout_frames", "max_pairs",
                     "eval_sources", "batch_size", "checkpoint_every", "step_cap", "threads", "eval_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"PersonalizeConfig.{name} must be an integer >= 1, got {v!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError("PersonalizeConfig.heldout_fraction must be in (0, 1), "
                             f"got {self.heldout_fraction}")
        for name in ("gap_s", "pose_weight", "max_pose_deg", "max_shift_m", "lr", "ema_decay"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"PersonalizeConfig.{name} must be finite and >= 0, got {v}")

    def train_config(self, net_config):
        """The :class:`~facediff_ros.core.editor.train.TrainConfig` of the fine-tuning."""
        from facediff_ros.core.editor.train import TrainConfig
        return TrainConfig(net=net_config, steps=self.step_cap, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=self.warmup_steps, final_lr_fraction=1.0, ema_decay=self.ema_decay,
                           seed=self.seed, threads=self.threads, checkpoint_every=self.checkpoint_every)


# ---- frame selection ------------------------------------------------------------------------------
def frame_features(frames: Sequence[FittedFrame], pose_weight: float) -> np.ndarray:
    """(N, E + 3) float64: expression weights, then ``pose_weight`` x the head's rotation vector (rad)."""
    return np.stack([np.concatenate([np.asarray(f.expression, np.float64),
                                     pose_weight * rotation_log(np.asarray(f.R, np.float64))])
                     for f in frames])


def farthest_point_order(features: np.ndarray, k: int, candidates: Optional[Sequence[int]] = None
                         ) -> List[int]:
    """``k`` indices of ``candidates`` (default all rows), greedily each the farthest from those
    already picked (Euclidean); the first is the candidate nearest the candidates' mean."""
    cand = np.arange(len(features)) if candidates is None else np.asarray(list(candidates), np.int64)
    if len(cand) == 0 or k < 1:
        return []
    x = np.asarray(features, np.float64)[cand]
    first = int(np.argmin(np.linalg.norm(x - x.mean(0), axis=1)))
    picked = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    while len(picked) < min(k, len(cand)):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0 and len(picked) >= 1 and np.all(dist <= 0):
            # Only duplicates left: take them in order (still distinct frames).
            rest = [i for i in range(len(cand)) if i not in set(picked)]
            picked.extend(rest[:k - len(picked)])
            break
        picked.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return [int(cand[i]) for i in picked]


@dataclass
class Split:
    """Indices into the fitted frames."""

    train: List[int]
    heldout: List[int]


def split_frames(frames: Sequence[FittedFrame], config: PersonalizeConfig) -> Split:
    """Held-out and training frames (module docstring, step 1).

    :raises PersonalizeError: fewer usable frames than the minimum for both sets.
    """
    n = len(frames)
    need = config.min_train_frames + config.min_heldout_frames
    if n < need:
        raise PersonalizeError(f"too few usable frames: {n} frames with one fitted face, need at least "
                               f"{need} ({config.min_train_frames} to train on, {config.min_heldout_frames} "
                               f"held out); record longer or add photos")
    feats = frame_features(frames, config.pose_weight)
    n_held = int(np.clip(round(config.heldout_fraction * n), config.min_heldout_frames, config.max_heldout))
    heldout = farthest_point_order(feats, n_held)
    stamps = [f.timestamp for f in frames]
    held_t = [stamps[i] for i in heldout if stamps[i] is not None]
    rest = []
    for i in range(n):
        if i in heldout:
            continue
        if stamps[i] is not None and held_t and min(abs(stamps[i] - t) for t in held_t) < config.gap_s:
            continue
        rest.append(i)
    if len(rest) < config.min_train_frames:
        raise PersonalizeError(f"too few usable frames: {len(rest)} frames stay {config.gap_s:g} s away "
                               f"from the {len(heldout)} held-out ones, need {config.min_train_frames} "
                               "to train on; record longer")
    train = farthest_point_order(feats, config.max_frames, rest)
    return Split(train=train, heldout=heldout)


def _pose_gap(a: FittedFrame, b: FittedFrame, centre_ids) -> Tuple[float, float]:
    """(rotation between the heads in degrees, shift of the 68-landmark centroid in metres)."""
    rot = math.degrees(float(np.linalg.norm(rotation_log(np.asarray(a.R) @ np.asarray(b.R).T))))
    shift = float(np.linalg.norm(np.asarray(a.t) - np.asarray(b.t)))
    return rot, shift


def make_pairs(frames: Sequence[FittedFrame], split: Split, config: PersonalizeConfig,
               rng: Optional[np.random.Generator] = None
               ) -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
    """(training pairs, held-out pairs) as (source i, target j) frame indices.

    Training: i != j both training frames, head poses within the config's limits, at most
    ``max_pairs`` (a seeded draw). Held-out: each held-out j with its ``eval_sources`` closest-pose
    training frames as sources (within the limits; at least the closest one). No held-out frame is
    ever a training pair's source or target.

    :raises PersonalizeError: no training pair within the pose limits.
    """
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    train_pairs = []
    for i in split.train:
        for j in split.train:
            if i == j:
                continue
            rot, shift = _pose_gap(frames[i], frames[j], None)
            if rot <= config.max_pose_deg and shift <= config.max_shift_m \
                    and frames[i].intrinsics == frames[j].intrinsics:
                train_pairs.append((i, j))
    if not train_pairs:
        raise PersonalizeError(f"no two training frames have head poses within {config.max_pose_deg:g} deg "
                               f"and {100 * config.max_shift_m:g} cm of each other "
                               "(one camera, head kept in view)")
    if len(train_pairs) > config.max_pairs:
        keep = rng.choice(len(train_pairs), config.max_pairs, replace=False)
        train_pairs = [train_pairs[k] for k in sorted(keep)]
    eval_pairs = []
    for j in split.heldout:
        gaps = []
        for i in split.train:
            if frames[i].intrinsics != frames[j].intrinsics:
                continue
            rot, shift = _pose_gap(frames[i], frames[j], None)
            gaps.append((rot + 100 * shift, rot, shift, i))
        gaps.sort()
        ok = [g for g in gaps if g[1] <= config.max_pose_deg and g[2] <= config.max_shift_m]
        chosen = (ok or gaps[:1])[:config.eval_sources]
        eval_pairs.extend((g[3], j) for g in chosen)
    return train_pairs, eval_pairs


# ---- the network's pairs -------------------------------------------------------------------------
class PairBuilder:
    """Network inputs and target of a (source frame, target frame) pair, the way training pairs are."""

    def __init__(self, model: MorphableModel, crop_config: CropConfig):
        self.model = model
        self.crop_config = crop_config
        self.triangles = editor_triangles(model)
        self.centre_ids = model.landmarks68
        self.names = list(model.expression_names)
        self._renderers: Dict[Intrinsics, Renderer] = {}
        self._verts: Dict[int, np.ndarray] = {}

    def vertices(self, f: FittedFrame) -> np.ndarray:
        """(V, 3) float32 fitted mesh of a frame in the camera frame (m)."""
        v = self._verts.get(id(f))
        if v is None:
            m = self.model.vertices(np.asarray(f.identity, np.float32), np.asarray(f.expression, np.float32))
            v = (m @ np.asarray(f.R, np.float32).T + np.asarray(f.t, np.float32)).astype(np.float32)
            self._verts[id(f)] = v
        return v

    def pair(self, src: FittedFrame, tgt: FittedFrame) -> Dict[str, object]:
        """source (4, S, S), buffers (8, S, S), target (4, S, S), mask (S, S) (target face coverage),
        category, intensity; plus crop and the two face masks (for pasting back)."""
        v_src, v_tgt = self.vertices(src), self.vertices(tgt)
        crop = face_crop(v_src, self.centre_ids, src.intrinsics, self.crop_config)
        r = self._renderers.get(crop.intrinsics)
        if r is None:
            if len(self._renderers) > 64:
                self._renderers.clear()
            r = self._renderers[crop.intrinsics] = Renderer(crop.intrinsics)
        rgb_s = crop.sample_color(src.rgb) * np.float32(1 / 255.0)
        z_s = None if src.depth_m is None else crop.sample_depth(src.depth_m)
        inputs = network_inputs(crop, rgb_s, z_s, v_src, v_tgt, self.triangles, r)
        rgb_t = crop.sample_color(tgt.rgb) * np.float32(1 / 255.0)
        if tgt.depth_m is None:
            tgt_render = r.render(v_tgt, self.triangles)
            z_t = np.where(tgt_render.mask, tgt_render.depth, 0.0).astype(np.float32)
        else:
            z_t = crop.sample_depth(tgt.depth_m)
        target = crop.rgbd(rgb_t, z_t)
        # Sensor holes in the target: the baseline's depth there, so the loss asks for nothing there.
        base = model_only_rgbd(inputs.source, inputs.buffers)
        holes = ~(z_t > 0)
        target[3][holes] = base[3][holes]
        cat, inten = expressions.nearest_category(self.names, np.clip(tgt.expression, 0, 1))
        return {"source": inputs.source, "buffers": inputs.buffers, "target": target,
                "mask": inputs.warp.mask.astype(np.float32), "category": expressions.category_index(cat),
                "intensity": float(inten), "crop": crop, "target_mask": inputs.warp.mask,
                "source_mask": inputs.source_render.mask}


TRAIN_KEYS = ("source", "buffers", "target", "mask", "category", "intensity")


def stack(pairs: Sequence[Dict]) -> Dict[str, np.ndarray]:
    """Pairs -> arrays (N, ...) float32 (category int64) under :data:`TRAIN_KEYS`."""
    out = {k: np.stack([np.asarray(p[k], np.float32) for p in pairs]) for k in TRAIN_KEYS
           if k not in ("category", "intensity")}
    out["category"] = np.array([p["category"] for p in pairs], np.int64)
    out["intensity"] = np.array([p["intensity"] for p in pairs], np.float32)
    return out


def batch_sampler(data: Dict[str, np.ndarray]) -> Callable[[int, np.random.Generator], Dict[str, np.ndarray]]:
    """``next_batch(batch_size, rng)`` over stacked pairs (a seeded draw with replacement), with a
    random horizontal flip of nothing: the pairs are used as built (flipping would mirror the person)."""
    n = len(data["category"])

    def next_batch(batch_size: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        idx = rng.integers(0, n, batch_size)
        return {k: v[idx] for k, v in data.items()}

    return next_batch


# ---- scores -----------------------------------------------------------------------------------------
def face_psnr(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """RGB PSNR (dB, colour in [0, 1]) of (4, S, S) crops inside ``mask > FACE_COVERAGE``; NaN if empty."""
    face = np.asarray(mask) > FACE_COVERAGE
    if not face.any():
        return float("nan")
    err = (np.asarray(output)[:3] - np.asarray(target)[:3]) / 2.0  # [-1, 1] -> [0, 1] units
    mse = float(np.mean(err[:, face] ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def edit_pairs(net, data: Dict[str, np.ndarray], steps: int, seed: int = 0, batch: int = 16) -> np.ndarray:
    """(N, 4, S, S) edits of stacked pairs by ``net`` (an :class:`EditorUNet`), fixed noise."""
    from facediff_ros.core.editor.edit import ExpressionEditor
    editor = ExpressionEditor(net, steps=steps, seed=seed)
    out = []
    for k in range(0, len(data["category"]), batch):
        out.append(editor.edit_batch(data["source"][k:k + batch], data["buffers"][k:k + batch],
                                     list(data["category"][k:k + batch]),
                                     list(data["intensity"][k:k + batch]), steps=steps))
    return np.concatenate(out, 0)


def heldout_scores(outputs: Dict[str, np.ndarray], data: Dict[str, np.ndarray]) -> Dict[str, Dict]:
    """Per method: mean and per-pair face PSNR (dB) against the held-out targets."""
    res = {}
    for name, outs in outputs.items():
        psnr = [face_psnr(o, t, m) for o, t, m in zip(outs, data["target"], data["mask"])]
        res[name] = {"psnr_db": float(np.nanmean(psnr)), "psnr_db_per_pair": [round(p, 3) for p in psnr]}
    return res


def before_after_figure(data: Dict[str, np.ndarray], outputs: Dict[str, np.ndarray], scores: Dict,
                        path, rows: int = 4, zoom: int = 3) -> np.ndarray:
    """PNG: per held-out pair (rows, spread over the set) source | each method | target (frame j),
    with PSNR labels; writes ``path`` when given. Returns (H, W, 3) uint8 RGB."""
    import cv2
    names = list(outputs)
    n = len(data["category"])
    pick = sorted(set(np.linspace(0, n - 1, min(rows, n)).round().astype(int).tolist()))

    def rgb(t):
        return np.clip((np.moveaxis(t[:3], 0, -1) + 1) * 127.5, 0, 255).astype(np.uint8)

    cols = ["source"] + names + ["target (held out)"]
    grid = []
    for i in pick:
        tiles = [data["source"][i]] + [outputs[k][i] for k in names] + [data["target"][i]]
        row = []
        for c, t in zip(cols, tiles):
            im = cv2.resize(rgb(t), None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
            im = np.pad(im, ((16, 2), (1, 1), (0, 0)), constant_values=255)
            label = c if c not in scores else f"{c} {scores[c]['psnr_db_per_pair'][i]:.1f} dB"
            cv2.putText(im, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
            row.append(im)
        grid.append(np.concatenate(row, 1))
    img = np.concatenate(grid, 0)
    head = np.full((20, img.shape[1], 3), 255, np.uint8)
    text = "held-out face PSNR: " + ", ".join(f"{k} {scores[k]['psnr_db']:.2f} dB" for k in names)
    cv2.putText(head, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    img = np.concatenate([head, img], 0)
    if path is not None:
        ok, buf = cv2.imencode(".png", img[..., ::-1])
        Path(path).write_bytes(buf.tobytes())
    return img


# ---- the whole run ----------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything the fine-tuning needs, made before anything is written."""

    split: Split
    train_pairs: List[Tuple[int, int]]
    eval_pairs: List[Tuple[int, int]]
    train_data: Dict[str, np.ndarray]
    eval_data: Dict[str, np.ndarray]
    eval_meta: List[Dict] = field(default_factory=list)  # crop + masks per held-out pair
    seconds: float = 0.0


def prepare(frames: Sequence[FittedFrame], model: MorphableModel, crop_config: CropConfig,
            config: PersonalizeConfig, log: Optional[Callable[[str], None]] = None) -> Prepared:
    """Split, pairs and their network inputs (in memory)."""
    t0 = time.perf_counter()
    split = split_frames(frames, config)
    train_pairs, eval_pairs = make_pairs(frames, split, config)
    builder = PairBuilder(model, crop_config)
    built = []
    for k, (i, j) in enumerate(train_pairs):
        built.append(builder.pair(frames[i], frames[j]))
        if log is not None and (k + 1) % 64 == 0:
            log(f"pairs {k + 1}/{len(train_pairs)}")
    ev = [builder.pair(frames[i], frames[j]) for i, j in eval_pairs]
    meta = [{"crop": p["crop"], "target_mask": p["target_mask"], "source_mask": p["source_mask"]} for p in ev]
    return Prepared(split, train_pairs, eval_pairs, stack(built), stack(ev), meta, time.perf_counter() - t0)


def time_one_step(base_net, data: Dict[str, np.ndarray], config: PersonalizeConfig) -> float:
    """Seconds one fine-tuning step takes here (a throwaway copy of the net, nothing kept)."""
    import copy

    import torch

    from facediff_ros.core.editor.train import loss_on_batch
    tc = config.train_config(base_net.config)
    torch.set_num_threads(config.threads)
    net = copy.deepcopy(base_net).train()
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr)
    sampled = batch_sampler(data)(tc.batch_size, np.random.default_rng(0))
    batch = {k: torch.from_numpy(v) for k, v in sampled.items()}
    best = float("inf")
    for _ in range(2):  # the first call pays for allocations
        t0 = time.perf_counter()
        loss = loss_on_batch(net, batch, tc, torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best


def checkpoint_progress(out_dir) -> Tuple[int, float]:
    """(step, elapsed s) of the checkpoint in ``out_dir``, (0, 0) without one."""
    import torch

    from facediff_ros.core.editor.train import CHECKPOINT_FILE
    p = Path(out_dir) / CHECKPOINT_FILE
    if not p.is_file():
        return 0, 0.0
    blob = torch.load(p, map_location="cpu", weights_only=False)
    return int(blob["step"]), float(blob["elapsed_s"])


def fine_tune(prepared: Prepared, base_weights, out_dir, minutes: float, config: PersonalizeConfig,
              extra_meta: Optional[Dict] = None, log: Optional[Callable[[str], None]] = None) -> Dict:
    """Fine-tune (or resume) in ``out_dir`` until ``minutes`` of training in total (this run and
    the runs before it); writes ``editor.pt`` + ``config.json`` (the EMA weights) there.
    Returns train()'s summary plus ``resumed_from_step``."""
    from facediff_ros.core.editor.train import load_weights, train
    base = load_weights(base_weights)
    tc = config.train_config(base.config)
    step0, elapsed0 = checkpoint_progress(out_dir)
    left_min = max(0.0, minutes - elapsed0 / 60.0)
    summary = train(tc, batch_sampler(prepared.train_data), out_dir, minutes=left_min,
                    init_weights=str(base_weights), log=log,
                    extra_meta={**(extra_meta or {}), "personalization": {"config": asdict(config)}})
    summary["resumed_from_step"] = step0
    return summary
