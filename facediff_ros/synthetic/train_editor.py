"""Train the expression editor on cached synthetic pairs (``python -m facediff_ros.synthetic.train_editor``).

Pairs come from :mod:`facediff_ros.synthetic.editor_data` (``--cache`` there writes them); the
whole cache is held in memory as float16 (~130 kB a pair). Each batch draws pairs uniformly. The
loop itself is :func:`facediff_ros.core.editor.train.train` (resumable; EMA weights and the
resolved config written into ``--out``).

    python -m facediff_ros.synthetic.editor_data --seed 0 --pairs 6144 --cache
    python -m facediff_ros.synthetic.train_editor --cache ~/.cache/facediff_ros/editor_pairs/<hash> \\
        --out build/editor_run --steps 6000 [--minutes 60] [--set lr=1e-3 --set batch_size=8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from facediff_ros.core.editor.train import TrainConfig, train
from facediff_ros.synthetic.editor_data import iter_cache

BATCH_KEYS = ("source", "target", "buffers", "mask", "category", "intensity")


class PairPool:
    """All pairs of a cache folder in memory; :meth:`batch` draws ``n`` of them at random."""

    def __init__(self, folder, limit: int = 0):
        parts: Dict[str, List[np.ndarray]] = {k: [] for k in BATCH_KEYS}
        for shard in iter_cache(folder):
            for k in BATCH_KEYS:
                v = shard[k]
                parts[k].append(v.astype(np.float16) if v.dtype == np.float32 and v.ndim > 1 else v)
        if not parts["target"]:
            raise ValueError(f"no pair shards in {folder} (make them with python -m "
                             f"facediff_ros.synthetic.editor_data --cache)")
        self.arrays = {k: np.concatenate(v) for k, v in parts.items()}
        if limit:
            self.arrays = {k: v[:limit] for k, v in self.arrays.items()}
        self.size = len(self.arrays["target"])

    def batch(self, n: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, n)
        out = {}
        for k, v in self.arrays.items():
            x = v[idx]
            out[k] = x.astype(np.int64) if k == "category" else x.astype(np.float32)
        return out


def _parse_overrides(items: List[str]) -> Dict:
    out: Dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parsed
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="a cache folder with pairs-*.npz shards")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint + weights folder (resumed)")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
    ap.add_argument("--init", type=Path, default=None, help="weights folder to fine-tune from")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. lr=1e-3 or net.channels=[32,64,128]")
    args = ap.parse_args(argv)
    try:
        d = TrainConfig().to_dict()
        over = _parse_overrides(args.set)
        d["net"].update(over.pop("net", {}))
        d.update(over)
        d["steps"] = args.steps
        config = TrainConfig.from_dict(d)
        pool = PairPool(args.cache)
    except (ValueError, TypeError) as exc:
        print(f"train_editor: {exc}", file=sys.stderr)
        return 2
    print(f"{pool.size} pairs from {args.cache}; training into {args.out}", flush=True)
    meta = {"data": {"cache": str(args.cache), "pairs": pool.size,
                     "pair_config": json.loads((args.cache / "config.json").read_text())
                     if (args.cache / "config.json").is_file() else None}}
    summary = train(config, pool.batch, args.out, minutes=args.minutes,
                    init_weights=str(args.init) if args.init else None,
                    log=lambda line: print(line, flush=True), extra_meta=meta)
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
