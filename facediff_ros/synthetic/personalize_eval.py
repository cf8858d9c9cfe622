"""Evaluate personalisation: the personalised editor vs the shipped one on held-out frames of the same person.

``facediff evaluate personalize --json OUT [-- --identities 7001 7002 --budgets 2 5 10 --frames 240]``

For each synthetic actor identity (:class:`~facediff_ros.synthetic.actor.SyntheticActor` seeds;
the shipped editor never saw an actor: it was trained on
:class:`~facediff_ros.synthetic.editor_data.PairGenerator` pairs of seed 0, whose identities and
textures are drawn from other random streams, ``default_rng([0, 0, group])``, so every identity
here is new to it) a RealSense-like recording is written into a private temporary folder,
read back and fitted once (``facediff personalize``'s own reader and fitter), and then
personalised with each budget in increasing order. The budgets are nested: the run for 5 minutes
resumes the 2-minute run's checkpoint for 3 more minutes (the fine-tuning's learning rate is
constant after warm-up, so this is what a 5-minute run from scratch does too, with other batches).

Scores on the held-out pairs (target frames never trained on, >= ``gap_s`` from every training
frame), all in the same run and on the same pairs, for the model-only warp, the shipped ("base")
weights and the personalised ones:

- RGB PSNR (dB) inside the target's face mask, against the real held-out frame;
- dlib identity distance (:class:`facediff_ros.judges.identity.IdentityJudge`): the edited crop
  pasted back into its source frame (as the avatar node shows it), embedded, against the embedding
  of the real held-out frame (lower: more like the person; dlib's same-person threshold is 0.6).
  Pairs where dlib finds no face in either image are left out and counted.

Budgets are in minutes (floats: the tests use a few seconds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

DEFAULT_IDENTITIES = (7001, 7002)
DEFAULT_BUDGETS = (2.0, 5.0, 10.0)


def write_actor_recording(folder: Path, seed: int, frames: int, noise: str = "realsense",
                          width: int = 640, height: int = 480) -> Path:
    """A synthetic actor recording of ``frames`` frames (expressions change every second)."""
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
    from facediff_ros.synthetic.recording import NOISE_PRESETS, write_recording
    actor = SyntheticActor(ActorConfig(seed=seed, num_frames=frames, width=width, height=height,
                                       noise=NOISE_PRESETS[noise], expression_hold_s=1.0,
                                       expression_transition_s=0.3))
    path, _ = write_recording(folder / f"actor{seed}.db3", actor, overwrite=True)
    return path


def identity_distances(frames, eval_pairs, prepared, outputs: Dict[str, np.ndarray], judge) -> Dict:
    """Per method: mean dlib distance of the pasted edit to the real held-out frame, pairs used."""
    import cv2
    ref: Dict[int, Optional[np.ndarray]] = {}
    res: Dict[str, List[float]] = {k: [] for k in outputs}
    missing = {k: 0 for k in outputs}
    for n, (i, j) in enumerate(eval_pairs):
        if j not in ref:
            ref[j] = judge.embed(frames[j].rgb)
        meta = prepared.eval_meta[n]
        for name, outs in outputs.items():
            # Pasted as the avatar shows it: over the union of both face renders, grown by a pixel.
            rgb = np.clip((np.moveaxis(outs[n][:3], 0, -1) + 1.0) * 127.5, 0.0, 255.0)
            face = (meta["target_mask"] | meta["source_mask"]).astype(np.uint8)
            region = cv2.dilate(face, np.ones((3, 3), np.uint8)).astype(np.float32)
            color = meta["crop"].paste(frames[i].rgb, rgb, region)
            e = judge.embed(color)
            if e is None or ref[j] is None:
                missing[name] += 1
                continue
            res[name].append(judge.distance(e, ref[j]))
    return {k: {"identity_distance": float(np.mean(v)) if v else None, "pairs": len(v),
                "no_face": missing[k]} for k, v in res.items()}


def evaluate(identities: Sequence[int] = DEFAULT_IDENTITIES, budgets: Sequence[float] = DEFAULT_BUDGETS,
             frames: int = 240, noise: str = "realsense", weights: Optional[str] = None, config=None,
             figure_dir: Optional[Path] = None, log=lambda s: print(s, flush=True)) -> Dict:
    """Personalise each identity with each budget; returns the summary (module docstring)."""
    from facediff_ros.judges.identity import IdentityJudge
    from facediff_ros.personalize_command import fit_inputs, personalize
    judge = IdentityJudge()
    budgets = sorted(float(b) for b in budgets)
    rows = []
    t0 = time.time()
    for seed in identities:
        tmp = Path(tempfile.mkdtemp(prefix="facediff-personalize-eval-"))  # 0700
        try:
            rec = write_actor_recording(tmp, seed, frames, noise)
            fitted, stats = fit_inputs([str(rec)], log=None)
            log(f"identity {seed}: {stats['usable']}/{stats['frames']} frames usable ({stats['seconds']} s)")
            for b in budgets:
                rep = personalize([str(rec)], b, tmp / "person", weights, config=config, log=None,
                                  progress=False, frames=fitted, stats=stats)
                ids = identity_distances(fitted, rep["_prepared"].eval_pairs, rep["_prepared"],
                                         rep["_outputs"], judge)
                row = {"identity_seed": seed, "budget_min": b, "steps": rep["training"]["steps"],
                       "train_s": rep["training"]["elapsed_s"], "train_pairs": rep["train_pairs"],
                       "heldout_pairs": rep["heldout_pairs"], "heldout_frames": rep["heldout_frames"],
                       "methods": {k: {"psnr_db": rep["heldout"][k]["psnr_db"], **ids[k]}
                                   for k in rep["heldout"]}}
                m = row["methods"]
                d_base, d_personal = m["base"]["identity_distance"], m["personalised"]["identity_distance"]
                row["gain_psnr_db"] = round(m["personalised"]["psnr_db"] - m["base"]["psnr_db"], 3)
                if d_personal is not None and d_base is not None:
                    row["gain_identity_distance"] = round(d_base - d_personal, 4)
                rows.append(row)
                log(f"identity {seed}, {b:g} min ({row['steps']} steps): PSNR base "
                    f"{m['base']['psnr_db']:.2f} -> personalised {m['personalised']['psnr_db']:.2f} dB; "
                    f"identity distance base {_fmt(d_base)} -> {_fmt(d_personal)} "
                    f"({time.time() - t0:.0f} s)")
                if figure_dir is not None:
                    figure_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(tmp / "person" / "before_after.png",
                                    figure_dir / f"personalize_{seed}_{b:g}min.png")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = {"identities": list(identities), "budgets_min": budgets, "frames": frames, "noise": noise,
               "weights": weights or "shipped", "rows": rows, "by_budget": {}}
    for b in budgets:
        sel = [r for r in rows if r["budget_min"] == b]
        agg = {}
        for name in ("model_only", "base", "personalised"):
            ps = [r["methods"][name]["psnr_db"] for r in sel]
            ds = [r["methods"][name]["identity_distance"] for r in sel
                  if r["methods"][name]["identity_distance"] is not None]
            agg[name] = {"psnr_db": float(np.mean(ps)),
                         "identity_distance": float(np.mean(ds)) if ds else None}
        agg["gain_psnr_db"] = agg["personalised"]["psnr_db"] - agg["base"]["psnr_db"]
        d_base, d_personal = agg["base"]["identity_distance"], agg["personalised"]["identity_distance"]
        if d_personal is not None and d_base is not None:
            agg["gain_identity_distance"] = d_base - d_personal
        summary["by_budget"][f"{b:g}"] = agg
    summary["elapsed_s"] = round(time.time() - t0, 1)
    return summary


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="facediff evaluate personalize", description=__doc__.split("\n")[0])
    ap.add_argument("--identities", type=int, nargs="+", default=list(DEFAULT_IDENTITIES),
                    help="synthetic actor seeds (people the editor never saw)")
    ap.add_argument("--budgets", type=float, nargs="+", default=list(DEFAULT_BUDGETS),
                    help="training budgets in minutes (floats; nested: each resumes the previous)")
    ap.add_argument("--frames", type=int, default=240, help="recording length per identity (30 fps)")
    ap.add_argument("--noise", default="realsense", choices=["realsense", "low", "none"])
    ap.add_argument("--weights", default=None, help="base weights (default: the shipped ones)")
    ap.add_argument("--figures", type=Path, default=None, help="copy each run's before/after PNG here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from facediff_ros.fitting_command import InputError
    try:
        s = evaluate(args.identities, args.budgets, args.frames, args.noise, args.weights,
                     figure_dir=args.figures)
    except InputError as exc:
        print(f"personalize_eval: {exc}", file=sys.stderr)
        return 2
    print("| budget (min) | PSNR shipped (dB) | PSNR personalised (dB) | gain (dB) "
          "| identity distance shipped | identity distance personalised |")
    print("|---|---|---|---|---|---|")
    for b, a in s["by_budget"].items():
        print(f"| {b} | {a['base']['psnr_db']:.2f} | {a['personalised']['psnr_db']:.2f} | "
              f"{a['gain_psnr_db']:+.2f} | {_fmt(a['base']['identity_distance'])} | "
              f"{_fmt(a['personalised']['identity_distance'])} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(s, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
