"""Evaluate the expression editor on held-out synthetic pairs against the ground truth.

``python -m facediff_ros.synthetic.editor_eval [--weights DIR] [--pairs 96] [--steps 1 2 4 8]
[--sequences 7 --frames 3] [--no-photos] [--json OUT] [--figure PNG] [--real-figure PNG]``
(``facediff evaluate editor --json OUT -- ...``). ``--weights`` defaults to the shipped weights;
``--weights ''`` scores the baselines only.

Three parts, each scoring the editor and both baselines in the same run:

1. crops (below): the network's own 64 px crops of held-out pairs;
2. sequences (:mod:`facediff_ros.synthetic.editor_sequences`, ``--sequences N``, 0 skips it):
   whole 640x480 frames of short actor sequences edited through the live path, read by the
   independent judges (:mod:`facediff_ros.judges`): dlib identity distance source <-> edit and
   source <-> truth, expression accuracy by re-fit (output, ground truth, both baselines), identity
   after re-fit, temporal flicker;
3. real photos (:mod:`facediff_ros.synthetic.editor_real`, ``--no-photos`` skips it): the shipped
   public-domain photos edited colour-only to the seven categories, dlib distance per category
   (``--real-figure PNG`` draws them).

Pairs come from :class:`~facediff_ros.synthetic.editor_data.PairGenerator` with a seed the
training cache did not use (default 1; the shipped weights were trained on seed 0), so every
identity, texture, pose and light here is new to the network. Each pair has a clean target: the
same person, light and camera with the target expression.

Methods scored in the same run:

- ``no_edit``: the source crop itself (what the avatar shows without an editor);
- ``model_only``: the source colour warped onto the target geometry where the warp reached
  (buffer mask +1), the source colour elsewhere; depth from the fitted model on the face;
- ``editor_<n>``: the network with n DDIM steps (fixed noise).

Crop metrics, inside the target's face mask (coverage > 0.5): RGB PSNR (dB, colour in [0, 1]),
SSIM (the usual 11x11 Gaussian window, sigma 1.5, on [0, 1] colour, per channel; averaged over the
face pixels) and depth RMSE (mm; the normalised depth times ``CropConfig.depth_range_m``). Per
method also the PSNR per target category.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from facediff_ros.core.editor.avatar import AvatarConfig
from facediff_ros.core.editor.edit import ExpressionEditor
from facediff_ros.core.editor.residual import model_only_rgbd
from facediff_ros.core.editor.train import load_weights
from facediff_ros.core.face.expressions import CATEGORIES
from facediff_ros.synthetic.editor_data import PairConfig, PairGenerator

FACE_COVERAGE = 0.5  # a pixel counts as face where the head covers more than half of it
SHIPPED_WEIGHTS = str(Path(__file__).resolve().parents[1] / "data" / "editor")


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two (H, W) images in [0, 1] (Wang et al. 2004: Gaussian window sigma 1.5,
    K1 = 0.01, K2 = 0.03, dynamic range 1)."""
    import cv2
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def model_only(pair: Dict) -> np.ndarray:
    """The baseline edit from the buffers alone: (4, S, S) like the source."""
    return model_only_rgbd(pair["source"], pair["buffers"])


def pair_metrics(output: np.ndarray, pair: Dict, depth_range_m: float) -> Dict[str, float]:
    """RGB PSNR (dB), SSIM and depth RMSE (mm) of ``output`` against the pair's target, on the face."""
    face = pair["mask"] > FACE_COVERAGE
    if not face.any():
        return {"psnr_db": float("nan"), "ssim": float("nan"), "depth_rmse_mm": float("nan")}
    rgb_err = (output[:3] - pair["target"][:3]) / 2.0  # [-1, 1] -> [0, 1] units
    mse = float(np.mean(rgb_err[:, face] ** 2))
    d_err = (output[3] - pair["target"][3])[face] * depth_range_m * 1000.0
    out01, tgt01 = (output[:3] + 1.0) / 2.0, (pair["target"][:3] + 1.0) / 2.0
    ssim = float(np.mean([ssim_map(out01[c], tgt01[c])[face].mean() for c in range(3)]))
    return {"psnr_db": 10.0 * np.log10(1.0 / max(mse, 1e-12)), "ssim": ssim,
            "depth_rmse_mm": float(np.sqrt(np.mean(d_err ** 2)))}


def evaluate(weights: Optional[str], pairs: int = 96, seed: int = 1, steps: Sequence[int] = (1, 2, 4, 8),
             batch: int = 16, log=None) -> Dict:
    """Score every method on ``pairs`` held-out pairs; returns the summary (see module docstring)."""
    gen = PairGenerator(PairConfig(seed=seed))
    data = []
    t0 = time.time()
    for i in range(pairs):
        data.append(gen.pair(i))
        if log and (i + 1) % 16 == 0:
            log(f"pairs {i + 1}/{pairs} ({time.time() - t0:.0f} s)")
    depth_range = gen.config.crop.depth_range_m
    outputs: Dict[str, List[np.ndarray]] = {"no_edit": [p["source"] for p in data],
                                            "model_only": [model_only(p) for p in data]}
    timing = {}
    if weights:
        editor = ExpressionEditor(load_weights(weights), threads=2)
        for n in steps:
            t1 = time.time()
            res = []
            for k in range(0, pairs, batch):
                chunk = data[k:k + batch]
                res.extend(editor.edit_batch(np.stack([p["source"] for p in chunk]),
                                             np.stack([p["buffers"] for p in chunk]),
                                             [int(p["category"]) for p in chunk],
                                             [float(p["intensity"]) for p in chunk], steps=n))
            outputs[f"editor_{n}"] = res
            timing[f"editor_{n}"] = 1000 * (time.time() - t1) / pairs
            if log:
                log(f"editor, {n} steps: {timing[f'editor_{n}']:.1f} ms per pair (batched {batch})")
    summary: Dict = {"pairs": pairs, "seed": seed, "weights": weights, "methods": {}}
    cats = np.array([int(p["category"]) for p in data])
    for name, outs in outputs.items():
        m = [pair_metrics(o, p, depth_range) for o, p in zip(outs, data)]
        psnr = np.array([x["psnr_db"] for x in m])
        rmse = np.array([x["depth_rmse_mm"] for x in m])
        ssim = np.array([x["ssim"] for x in m])
        summary["methods"][name] = {
            "psnr_db": float(np.nanmean(psnr)), "ssim": float(np.nanmean(ssim)),
            "depth_rmse_mm": float(np.nanmean(rmse)),
            "psnr_db_by_category": {CATEGORIES[c]: float(np.nanmean(psnr[cats == c]))
                                    for c in range(len(CATEGORIES)) if np.any(cats == c)},
        }
        if name in timing:
            summary["methods"][name]["ms_per_pair_batched"] = round(timing[name], 2)
    summary["_data"] = data
    summary["_outputs"] = outputs
    return summary


def figure(summary: Dict, path: Path, rows: int = 7) -> None:
    """PNG grid: one row per target category (first pair of each): source, model-only, each editor
    step count, target; colour above depth."""
    import cv2

    data, outs = summary["_data"], summary["_outputs"]
    cols = ["no_edit", "model_only"] + sorted((k for k in outs if k.startswith("editor_")),
                                              key=lambda k: int(k.split("_")[1]))

    def rgb(t):
        return np.clip((np.moveaxis(t[:3], 0, -1) + 1) * 127.5, 0, 255).astype(np.uint8)

    def depth(t):
        g = np.clip((1 - t[3]) * 127.5, 0, 255).astype(np.uint8)
        return cv2.applyColorMap(g, cv2.COLORMAP_VIRIDIS)[..., ::-1]

    picked = []
    for c in range(len(CATEGORIES)):
        idx = [i for i, p in enumerate(data) if int(p["category"]) == c]
        if idx:
            picked.append(idx[0])
    grid = []
    for i in picked[:rows]:
        tiles = [outs[k][i] for k in cols] + [data[i]["target"]]
        grid.append(np.concatenate([np.concatenate([rgb(t) for t in tiles], 1),
                                    np.concatenate([depth(t) for t in tiles], 1)], 0))
    img = np.concatenate(grid, 0)
    img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])


def print_table(s: Dict) -> None:
    """The summary as plain text tables (crops, sequences, photos)."""
    print("crops (64 px, face mask):")
    for name, m in s["methods"].items():
        print(f"  {name:12s} PSNR {m['psnr_db']:6.2f} dB   SSIM {m['ssim']:.3f}   depth RMSE "
              f"{m['depth_rmse_mm']:6.2f} mm"
              + (f"   {m['ms_per_pair_batched']:.1f} ms/pair" if "ms_per_pair_batched" in m else ""))
    seq = s.get("sequences")
    if seq:
        c = seq["config"]
        print(f"sequences ({c['sequences']} x {c['frames']} frames, 640x480, {seq['seconds']:.0f} s):")
        print(f"  {'method':22s} {'expr acc':>8s} {'dlib src':>8s} {'(max)':>6s} {'id mm':>6s} "
              f"{'id coef':>7s} {'flick rgb':>9s} {'flick mm':>8s} {'PSNR':>6s} {'depth mm':>8s}")
        for name, m in seq["methods"].items():
            def f(key, fmt):
                return format(m[key], fmt) if m.get(key) is not None else "n/a"
            print(f"  {name:22s} {f('expression_accuracy', '8.2f')} {f('dlib_source', '8.3f')} "
                  f"{f('dlib_source_max', '6.3f')} {f('identity_mm', '6.2f')} {f('identity_coef', '7.2f')} "
                  f"{f('flicker_rgb', '9.2f')} {f('flicker_depth_mm', '8.2f')} {f('psnr_db', '6.2f')} "
                  f"{f('depth_rmse_mm', '8.2f')}")
    for key in [k for k in s if k.startswith("photos")]:
        real = s[key]
        paste = "detail" if real.get("detail_paste") else "plain"
        for name, row in real["photos"].items():
            if "error" in row:
                print(f"photo {name}: {row['error']}")
                continue
            cats = ", ".join(f"{c} {v['dlib_source']:.2f}" if v["dlib_source"] is not None else f"{c} n/a"
                             for c, v in row["categories"].items())
            print(f"photo {name} (colour-only, {paste} paste), dlib source <-> edit: {cats}")
        if real["dlib_source_mean"] is not None:
            print(f"photos ({paste} paste): mean dlib distance source <-> edit "
                  f"{real['dlib_source_mean']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=SHIPPED_WEIGHTS,
                    help="editor weights folder (default: the shipped ones; '' = baselines only)")
    ap.add_argument("--pairs", type=int, default=96, help="held-out crop pairs")
    ap.add_argument("--seed", type=int, default=1, help="pair seed; the training cache used 0")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--sequences", type=int, default=7,
                    help="actor sequences for the judges and flicker (targets cycle through the 7 "
                         "categories; 0 skips this part)")
    ap.add_argument("--frames", type=int, default=3, help="consecutive frames per sequence (>= 2)")
    ap.add_argument("--sequence-seed", type=int, default=500, help="first actor seed of the sequences")
    ap.add_argument("--sequence-steps", type=int, default=AvatarConfig.steps,
                    help="editor steps in the sequences and photos (default: AvatarConfig.steps)")
    ap.add_argument("--no-photos", action="store_true", help="skip the real-photo part")
    ap.add_argument("--compare-paste", action="store_true",
                    help="also score the sequences and photos with the other colour paste than the "
                         "default (AvatarConfig.detail_paste), in the same run")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    ap.add_argument("--figure", type=Path, default=None, help="write a PNG grid of the crops here")
    ap.add_argument("--real-figure", type=Path, default=None,
                    help="write the real photos' edits (source + seven categories) here")
    args = ap.parse_args(argv)
    weights = args.weights or None
    log = lambda m: print(m, flush=True)  # noqa: E731
    try:
        if args.pairs < 1 or args.sequences < 0:
            raise ValueError("--pairs must be >= 1 and --sequences >= 0")
        if weights and not (Path(weights) / "editor.pt").is_file():
            raise ValueError(f"--weights {weights}: no editor.pt there")
        s = evaluate(weights, args.pairs, args.seed, args.steps, log=log)
        if args.sequences:
            from facediff_ros.synthetic.editor_sequences import SequenceConfig, evaluate_sequences
            s["sequences"] = evaluate_sequences(weights, SequenceConfig(
                sequences=args.sequences, frames=args.frames, seed=args.sequence_seed,
                steps=args.sequence_steps, compare_paste=args.compare_paste), log=log)
        if weights and not args.no_photos:
            from facediff_ros.synthetic import editor_real
            s["photos"] = editor_real.evaluate_photos(weights, steps=args.sequence_steps,
                                                      keep_images=args.real_figure is not None)
            if args.real_figure:
                editor_real.figure(s["photos"], args.real_figure)
                s["photos"].pop("_images")
            if args.compare_paste:
                from facediff_ros.core.editor.avatar import AvatarConfig
                other = not AvatarConfig().detail_paste
                s["photos_" + ("detail" if other else "plain") + "_paste"] = editor_real.evaluate_photos(
                    weights, steps=args.sequence_steps, detail_paste=other)
    except ValueError as exc:
        print(f"editor_eval: {exc}", file=sys.stderr)
        return 2
    print_table(s)
    if args.figure:
        figure(s, args.figure)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        public = {k: v for k, v in s.items() if not k.startswith("_")}
        args.json.write_text(json.dumps(public, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
