"""Editor backends timing: ``python -m facediff_ros.bench.editor_bench [--rounds 40] [--json OUT]``.

One edit = the full few-step sampler (``--steps`` network evaluations, 4 by default) on one 64x64
crop (batch 1), through :class:`~facediff_ros.core.editor.backends.BackendEditor`, for every
backend that runs here (torch CPU and onnxruntime CPU everywhere; onnxruntime CUDA, torch CUDA
(FP16 + CUDA graph) and TensorRT where there is a GPU). Unavailable ones are listed with the reason.

Backends are timed alternately, one edit each per round, so a machine whose other load changes
during the run loads them alike; besides each backend's median / p90 / min wall time per edit, the
ratio torch CPU / onnxruntime CPU is given as the median of the per-round ratios. The network is
the trained one with ``--weights DIR``, else a randomly initialised default-size one (timing does not
depend on the weights' values). CPU backends use ``--threads`` intra-op threads (2: this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

from facediff_ros.core.editor.backends import BackendEditor, BackendUnavailable, make_backend
from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet

# (label, backend name, torch device): every backend the package has; each is tried.
CANDIDATES = (("tensorrt", "tensorrt", None), ("onnxruntime-cuda", "onnxruntime-cuda", None),
              ("torch-cuda", "torch", "cuda"), ("onnxruntime-cpu", "onnxruntime-cpu", None),
              ("torch-cpu", "torch", "cpu"))


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed edits per backend (alternating)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed edits per backend first")
    parser.add_argument("--steps", type=int, default=4, help="network evaluations per edit")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    parser.add_argument("--weights", help="trained weights folder (default: a random default-size network)")
    parser.add_argument("--no-spin", action="store_true",
                        help="onnxruntime threads do not busy-wait (fairer on a loaded machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.weights:
        from facediff_ros.core.editor.train import load_weights
        net = load_weights(args.weights)
    else:
        net = EditorUNet(EditorNetConfig()).eval()
    torch.set_num_threads(args.threads)
    s = net.config.crop_size
    g = np.random.default_rng(args.seed)
    source = g.uniform(-1, 1, (4, s, s)).astype(np.float32)   # (4, S, S) RGB-D crop
    buffers = g.uniform(-1, 1, (8, s, s)).astype(np.float32)  # (8, S, S) target buffers

    editors, skipped = {}, {}
    with tempfile.TemporaryDirectory(prefix="editor_bench_") as cache:
        for label, name, device in CANDIDATES:
            try:
                backend = make_backend(name, net, batch=1, threads=args.threads, cache_dir=cache,
                                       device=device, spinning=False if args.no_spin else None)
            except (BackendUnavailable, RuntimeError, ValueError) as exc:
                skipped[label] = str(exc)
                continue
            editors[label] = BackendEditor(backend, steps=args.steps, seed=args.seed)
        outputs = {}
        for label, ed in editors.items():
            for _ in range(args.warmup):
                outputs[label] = ed.edit(source, buffers, "happy", 0.8)
        times: Dict[str, List[float]] = {label: [] for label in editors}
        for _ in range(args.rounds):
            for label, ed in editors.items():
                t = time.perf_counter()
                ed.edit(source, buffers, "happy", 0.8)
                times[label].append(1e3 * (time.perf_counter() - t))

    ref = outputs.get("torch-cpu")
    out: Dict = {"crop_size": s, "batch": 1, "steps": args.steps, "threads": args.threads,
                 "onnxruntime_spinning": not args.no_spin, "rounds": args.rounds,
                 "weights": args.weights or "random (default EditorNetConfig)",
                 "params": int(sum(p.numel() for p in net.parameters())),
                 "loadavg_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(), "backends": {},
                 "skipped": skipped}
    for label, ts in times.items():
        t = np.array(ts)
        out["backends"][label] = {
            "edit_ms_median": float(np.median(t)), "edit_ms_p90": float(np.percentile(t, 90)),
            "edit_ms_min": float(t.min()), "per_evaluation_ms_median": float(np.median(t)) / args.steps,
            "backend": editors[label].backend.describe(),
            "max_abs_diff_vs_torch_cpu": None if ref is None else float(np.abs(outputs[label] - ref).max())}
        b = out["backends"][label]
        print(f"{label:17s} edit median {b['edit_ms_median']:7.2f} ms  p90 {b['edit_ms_p90']:7.2f}  "
              f"min {b['edit_ms_min']:7.2f}  ({args.steps} evaluations; {b['backend']})")
    if "torch-cpu" in times and "onnxruntime-cpu" in times:
        ratios = np.array(times["torch-cpu"]) / np.array(times["onnxruntime-cpu"])  # paired by round
        out["ratio_torch_cpu_over_onnxruntime_cpu"] = float(np.median(ratios))
        print(f"torch CPU / onnxruntime CPU per edit: {out['ratio_torch_cpu_over_onnxruntime_cpu']:.2f}x "
              f"(median of {len(ratios)} paired rounds; load average {out['loadavg_1min']:.2f} "
              f"on {out['cpu_count']} cores)")
    for label, why in skipped.items():
        print(f"{label:17s} not run: {why}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
