"""The editor judged on whole camera frames of short synthetic actor sequences.

Where :mod:`facediff_ros.synthetic.editor_eval` scores the network's 64 px crops, this scores what
a user sees: 640x480 frames edited by :meth:`~facediff_ros.core.editor.avatar.AvatarEditor.edit_frame`
(crop, network, paste) and read by the independent judges of :mod:`facediff_ros.judges`.

Each sequence is one :class:`~facediff_ros.synthetic.actor.SyntheticActor` (seeds from
``seed``; the editor's training pairs come from another generator, so every person is new) holding
a source expression (a category at U(0.3, 0.8), with speech) while the head moves, and ``frames``
consecutive 30 Hz frames. The truth is the same actor (same seed: identity, texture, light, head
motion) rendered with the target expression (a category at U(0.6, 1), the actor's own range; no
speech) and without sensor noise. Targets cycle through the seven categories. Every method edits
with the true model state of the source frame (identity, weights, pose): the editor is judged,
not the fitter.

Methods, all in the same run: ``no_edit`` (the source frame), ``model_only`` (the warp baseline
through the same crop and paste: :class:`ModelOnlyEditor`), ``editor`` (the network, ``steps``
DDIM evaluations, fixed noise), and ``truth`` (the judges' ceiling).

Per method:

- ``dlib_source``: dlib's 128-D embedding distance source frame <-> output frame, mean over
  frames (< 0.6: same person for dlib). dlib's HOG detector is frontal-only and misses some turned
  heads; there the box around the true 68 landmarks stands in (the detection is not what is judged;
  the descriptor still aligns the face with dlib's own shape predictor); ``dlib_detected``: the
  share of frames where the detector found the face itself;
- ``expression_accuracy``: share of frames whose re-fit (:class:`~facediff_ros.judges.expression.
  ExpressionJudge`, with the output's depth) reads the target category;
- ``identity_mm`` / ``identity_coef``: the re-fitted identity against the source frame's re-fit
  (mean neutral-shape distance in mm; coefficient L2), and ``identity_truth_mm`` against the true
  identity;
- ``flicker_rgb`` (8-bit levels) / ``flicker_depth_mm``: inside the face (the truth's head mask in
  both frames), the mean absolute difference between the output's frame-to-frame change and the
  truth's, ``mean |(out_t - out_t-1) - (truth_t - truth_t-1)|``: 0 = the output changes exactly
  as the truth does; shimmer, lag and sensor noise passed through all add to it. ``change_rgb``:
  the output's own mean |frame-to-frame change| there (the truth's is in ``truth``);
- ``psnr_db``: the output against the truth inside the truth's head mask; ``depth_rmse_mm``: the
  depth RMSE inside that mask eroded by 5 px (the silhouette, where a moved jaw meets a wall
  0.8 m behind, would otherwise decide it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from facediff_ros.core.editor.avatar import AvatarConfig
from facediff_ros.core.editor.residual import model_only_rgbd
from facediff_ros.core.face.expressions import CATEGORIES
from facediff_ros.synthetic.actor import ActorConfig, SensorNoise, SyntheticActor

METHODS = ("no_edit", "model_only", "editor", "truth")


@dataclass(frozen=True)
class SequenceConfig:
    sequences: int = 7        # targets cycle through the 7 categories
    frames: int = 4           # consecutive frames per sequence (30 Hz)
    seed: int = 500           # actor seeds seed, seed + 1, ...
    start: int = 10           # first frame (the head is already moving)
    steps: int = AvatarConfig.steps  # editor network evaluations (the live editor's default)
    texture_size: int = 256   # the face is ~130 px wide at 0.62 m: a 256 texture is already finer
    targets: Optional[Tuple[str, ...]] = None  # target categories to cycle through (None: all seven)
    # Also score the editor and the model-only baseline with the other colour paste than
    # AvatarConfig's default (methods ``editor_<mode>_paste`` / ``model_only_<mode>_paste``, mode
    # 'plain' or 'detail'), on the same frames: the paste's before/after in one run.
    compare_paste: bool = False

    def __post_init__(self):
        for name in ("sequences", "frames", "steps", "texture_size"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"SequenceConfig.{name} must be an integer >= 1, got {v}")
        if self.frames < 2:
            raise ValueError("SequenceConfig.frames must be >= 2 (flicker needs two frames)")
        if self.targets is not None:
            if not self.targets or any(t not in CATEGORIES for t in self.targets):
                raise ValueError(f"SequenceConfig.targets must be names from {CATEGORIES}, "
                                 f"got {self.targets}")


class ModelOnlyEditor:
    """The model-only baseline with the editor's interface: the warped source colour and the
    model's depth (:func:`~facediff_ros.core.editor.residual.model_only_rgbd`)."""

    def __init__(self, size: int):
        self.size = int(size)

    def edit(self, source, buffers, category, intensity, steps=None) -> np.ndarray:
        return np.asarray(model_only_rgbd(np.asarray(source), np.asarray(buffers)), np.float32)


@dataclass
class _Fit:
    identity: np.ndarray
    expression: np.ndarray
    R: np.ndarray
    t: np.ndarray


def sequence_plan(config: SequenceConfig) -> List[Dict]:
    """Per sequence: actor seed, source (category, intensity), target (category, intensity)."""
    plan = []
    for k in range(config.sequences):
        rng = np.random.default_rng([config.seed, k])
        cycle = config.targets if config.targets is not None else CATEGORIES
        tgt = cycle[k % len(cycle)]
        src = CATEGORIES[int(rng.choice([i for i in range(len(CATEGORIES)) if CATEGORIES[i] != tgt]))]
        src_int = 0.0 if src == "neutral" else float(rng.uniform(0.3, 0.8))
        tgt_int = 0.0 if tgt == "neutral" else float(rng.uniform(0.6, 1.0))
        plan.append({"seed": config.seed + k, "source": (src, src_int), "target": (tgt, tgt_int)})
    return plan


def _actors(item: Dict, config: SequenceConfig):
    n = config.start + config.frames
    # Both with a fixed one-segment schedule and no blinks: the actors draw the same random numbers,
    # so identity, texture, light, head motion and per-frame sensor noise are the same.
    common = dict(seed=item["seed"], num_frames=n, blink_rate_hz=0.0, texture_size=config.texture_size)
    src = SyntheticActor(ActorConfig(expression_schedule=(item["source"],), **common))
    # The truth is clean (no sensor noise, as the crop evaluation's targets): a sharp reference
    # for PSNR and for the flicker, whose frame-to-frame change is then the motion alone.
    tgt = SyntheticActor(ActorConfig(expression_schedule=(item["target"],), speech_jaw=0.0,
                                     noise=SensorNoise.none(), **common), model=src.model)
    return src, tgt


def _depth_mm(depth_m: np.ndarray) -> np.ndarray:
    d = np.asarray(depth_m, np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(d) & (d > 0)
    out = np.zeros(d.shape, np.uint16)
    out[ok] = np.clip(np.round(d[ok] * 1e3), 1, 65535)
    return out


def evaluate_sequences(weights: Optional[str], config: SequenceConfig = SequenceConfig(),
                       log: Optional[Callable[[str], None]] = None, keep_frames: bool = False) -> Dict:
    """Run every method on every sequence and score them (module docstring). Without ``weights``
    the editor is left out. Returns {'config', 'plan', 'methods': {name: metrics}, 'seconds'}
    (and '_frames' with ``keep_frames``: per sequence, per method, the output colour frames)."""
    from facediff_ros.core.editor.avatar import AvatarConfig, AvatarEditor, crop_config_for
    from facediff_ros.judges.expression import ExpressionJudge, identity_coefficient_distance
    from facediff_ros.judges.identity import IdentityJudge

    t0 = time.time()
    plan = sequence_plan(config)
    editors = {}
    model = None
    if weights:
        editors["editor"] = AvatarEditor.from_weights(weights, "torch",
                                                      config=AvatarConfig(steps=config.steps))
        model = editors["editor"].model
        size = editors["editor"].editor.size
        crop = crop_config_for(weights, size)
    else:
        from facediff_ros.core.editor.crop import CropConfig
        crop, size = CropConfig(), CropConfig().size_px
    editors["model_only"] = AvatarEditor(ModelOnlyEditor(size), model, AvatarConfig(steps=config.steps), crop)
    model = editors["model_only"].model
    if config.compare_paste:
        other = not AvatarConfig().detail_paste
        tag = "detail" if other else "plain"
        for name in [m for m in ("editor", "model_only") if m in editors]:
            editors[f"{name}_{tag}_paste"] = AvatarEditor(
                editors[name].editor, model, AvatarConfig(steps=config.steps, detail_paste=other), crop)
    idj = IdentityJudge()
    exj = ExpressionJudge()
    methods = [m for m in METHODS if m != "editor" or weights] + [m for m in editors if m.endswith("_paste")]
    rows: Dict[str, Dict[str, list]] = {m: {} for m in methods}

    def add(m, key, value):
        rows[m].setdefault(key, []).append(value)

    kept = []
    try:
        for k, item in enumerate(plan):
            src_actor, tgt_actor = _actors(item, config)
            tgt_cat, tgt_int = item["target"]
            outs: Dict[str, list] = {m: [] for m in methods}
            truths = []
            src_fit = None
            for j in range(config.frames):
                i = config.start + j
                src = src_actor.frame(i)
                tru = tgt_actor.frame(i)
                truths.append(tru)
                K = src.intrinsics
                fit = _Fit(src_actor.identity, src.expression, src.R, src.t)
                lm = src.landmarks_2d  # (68, 2) px: the stand-in box when the detector misses
                box_true = (*lm.min(0), *lm.max(0))
                src_box = idj.detect(src.color)
                src_emb = idj.embed(src.color, src_box if src_box is not None else box_true)
                if j == 0:
                    src_fit = exj.read(src.color, K, src.depth)
                for m in methods:
                    if m == "no_edit":
                        color, depth_mm = src.color, src.depth
                    elif m == "truth":
                        color, depth_mm = tru.color, tru.depth
                    else:
                        depth_m = src.depth.astype(np.float32) * np.float32(0.001)
                        out = editors[m].edit_frame(src.color, depth_m, K, fit, tgt_cat, tgt_int)
                        color, depth_mm = out.color, _depth_mm(out.depth_m)
                    outs[m].append((color, depth_mm))
                    box = idj.detect(color)
                    add(m, "dlib_detected", float(box is not None))
                    emb = idj.embed(color, box if box is not None else box_true)
                    add(m, "dlib_source", idj.distance(src_emb, emb))
                    r = exj.read(color, K, depth_mm)
                    add(m, "expression_correct", float(r.ok and r.category == tgt_cat))
                    add(m, "refit_failed", float(not r.ok))
                    if r.ok:
                        add(m, "read_" + r.category, 1.0)
                        add(m, "identity_truth_mm", exj.identity_distance_mm(r.identity, src_actor.identity))
                        if src_fit is not None and src_fit.ok:
                            add(m, "identity_mm", exj.identity_distance_mm(r.identity, src_fit.identity))
                            add(m, "identity_coef",
                                identity_coefficient_distance(r.identity, src_fit.identity))
                    face = tru.head_mask
                    err = (color.astype(np.float64) - tru.color)[face] / 255.0
                    add(m, "psnr_db", 10 * np.log10(1.0 / max(float(np.mean(err ** 2)), 1e-12)))
                    inner = cv2.erode(face.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
                    both = inner & (depth_mm > 0) & (tru.depth > 0)
                    if both.any():
                        dz = depth_mm[both].astype(np.float64) - tru.depth[both]
                        add(m, "depth_rmse_mm", float(np.sqrt(np.mean(dz ** 2))))
            # Flicker: the output's frame-to-frame change beyond the truth's, inside the face.
            for m in methods:
                for j in range(1, config.frames):
                    face = truths[j].head_mask & truths[j - 1].head_mask
                    (c1, d1), (c0, d0) = outs[m][j], outs[m][j - 1]
                    t1, t0_ = truths[j], truths[j - 1]
                    d_out = c1.astype(np.float64) - c0  # (H, W, 3) the output's change
                    d_tru = t1.color.astype(np.float64) - t0_.color
                    add(m, "change_rgb", float(np.abs(d_out)[face].mean()))
                    add(m, "flicker_rgb", float(np.abs(d_out - d_tru)[face].mean()))
                    zz = face & (d1 > 0) & (d0 > 0) & (t1.depth > 0) & (t0_.depth > 0)
                    if zz.any():
                        dz_out = d1[zz].astype(np.float64) - d0[zz]
                        dz_tru = t1.depth[zz].astype(np.float64) - t0_.depth[zz]
                        add(m, "flicker_depth_mm", float(np.abs(dz_out - dz_tru).mean()))
            if keep_frames:
                kept.append({m: [c for c, _ in outs[m]] for m in methods})
            if log:
                acc = {m: np.mean(rows[m]["expression_correct"]) for m in methods}
                log(f"sequence {k + 1}/{len(plan)} ({item['source'][0]} -> {tgt_cat}): expression accuracy "
                    "so far " + ", ".join(f"{m} {a:.2f}" for m, a in acc.items())
                    + f" ({time.time() - t0:.0f} s)")
    finally:
        exj.close()

    summary: Dict = {"config": asdict(config), "plan": plan, "methods": {}}
    for m in methods:
        r = rows[m]

        def mean(key):
            vals = r.get(key, [])
            return float(np.mean(vals)) if vals else None

        summary["methods"][m] = {
            "frames": config.sequences * config.frames,
            "expression_accuracy": mean("expression_correct"), "refit_failed": mean("refit_failed"),
            "read_as": {c: int(sum(r.get("read_" + c, []))) for c in CATEGORIES},
            "dlib_source": mean("dlib_source"), "dlib_source_max": float(max(r["dlib_source"])),
            "dlib_detected": mean("dlib_detected"),
            "identity_mm": mean("identity_mm"), "identity_coef": mean("identity_coef"),
            "identity_truth_mm": mean("identity_truth_mm"),
            "flicker_rgb": mean("flicker_rgb"), "flicker_depth_mm": mean("flicker_depth_mm"),
            "change_rgb": mean("change_rgb"),
            "psnr_db": mean("psnr_db"), "depth_rmse_mm": mean("depth_rmse_mm"),
        }
    if "truth" in summary["methods"]:  # the truth against itself: nothing to measure
        summary["methods"]["truth"].update(flicker_rgb=None, flicker_depth_mm=None, psnr_db=None,
                                           depth_rmse_mm=None)
    summary["seconds"] = round(time.time() - t0, 1)
    if keep_frames:
        summary["_frames"] = kept
    return summary
