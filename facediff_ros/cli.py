"""`facediff` command line: set-up checks and the package's jobs.

    facediff assets     verify the ICT-FaceKit files and build the model cache (make setup runs it)
    facediff demo       the main job on the embedded sample (not built yet: see README)
    facediff bench      benchmarks (not built yet: see README)
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from facediff_ros.core import assets


def _cmd_assets(args: argparse.Namespace) -> int:
    try:
        if args.rebuild:
            folder = assets.build_cache(log=print)
        else:
            folder = assets.ensure_cache(log=print)
    except assets.AssetError as exc:
        print(f"facediff assets: {exc}", file=sys.stderr)
        return 2
    print(f"ICT-FaceKit cache ready: {folder} (MIT licence, see {folder / 'LICENSE'})")
    return 0


def _cmd_not_built(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"facediff {name}: not built yet -- see README, 'What is not built yet'.",
              file=sys.stderr)
        return 3
    return run


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="facediff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assets", help="verify and convert the ICT-FaceKit model into the cache")
    p.add_argument("--rebuild", action="store_true", help="convert again even if the cache is valid")
    p.set_defaults(func=_cmd_assets)
    for name in ("demo", "bench"):
        sub.add_parser(name).set_defaults(func=_cmd_not_built(name))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
