"""`facediff` command line: set-up checks and the package's jobs.

    facediff assets     verify the ICT-FaceKit files and build the model cache (make setup runs it)
    facediff demo       the whole graph on the embedded sample, every expression category; a result folder
    facediff bench      benchmarks: renderer, synthetic actor, capture + landmark nodes, landmarks vs raw
                        MediaPipe, fitting, editor, editor-node (over DDS), stages, graph (end to end),
                        cloud-ratio (make bench; results in build/bench); `facediff bench graph --json OUT`
                        runs one
    facediff evaluate   accuracy against synthetic ground truth: `fitting` (per mode) or `editor`
                        (vs the no-edit and model-only baselines), each with --json OUT
    facediff fit        fit the face model to a recording (.db3/.bag) or an image (+ depth PNG, K.json);
                        state, PLY mesh and overlay PNG per frame with --out DIR, a report with --json
    facediff edit       re-express the face in an image (+ depth PNG, K.json) with the editor: colour, depth,
                        coloured points and a report into --out DIR
    facediff personalize  fine-tune the editor on one person's recordings or photos (--minutes N --out DIR);
                        `facediff personalize --delete DIR` removes such a folder
    facediff record     record the capture topics (or a camera) into a .db3 for personalize, printing prompts
    facediff export     the editor network -> ONNX (static shapes, parity with torch checked) and, with
                        --tensorrt, a cached TensorRT engine; writes editor.onnx + export.json into --out
    facediff montage    render the docs montage (identities x expressions, colour + depth) to a PNG
    facediff bringup    the whole graph as separate node processes (launch/avatar.launch.py's
                        arguments as --name value); Ctrl-C stops it
    facediff params     the nodes' parameter tables (Markdown); --readme FILE rewrites README's tables;
                        --yaml DIR writes the parameters files (config/<node>.yaml)
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from facediff_ros.core.face import assets


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


def _cmd_montage(args: argparse.Namespace) -> int:
    from facediff_ros.synthetic.montage import make_montage  # imported here: the other commands do not render
    img = make_montage(args.out, identities=args.identities, size=args.size, seed=args.seed)
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")
    return 0


# ``facediff bench <target>`` -> the benchmark module; ``facediff bench`` runs them all.
BENCHMARKS = {"renderer": "facediff_ros.bench.renderer_bench", "actor": "facediff_ros.bench.actor_bench",
              "nodes": "facediff_ros.bench.nodes_bench", "landmarks": "facediff_ros.bench.landmarks_bench",
              "fitting": "facediff_ros.bench.fitting_bench", "editor": "facediff_ros.bench.editor_bench",
              "editor-node": "facediff_ros.bench.editor_node_bench",
              "stages": "facediff_ros.bench.stages_bench", "graph": "facediff_ros.bench.graph_bench",
              "cloud-ratio": "facediff_ros.bench.capture_cloud_ratio"}
# ``facediff evaluate <target>`` -> the evaluation module (they make their data from the synthetic actor).
EVALUATIONS = {"personalize": "facediff_ros.synthetic.personalize_eval",
               "fitting": "facediff_ros.synthetic.fitting_eval",
               "editor": "facediff_ros.synthetic.editor_eval",
               "webcam": "facediff_ros.synthetic.webcam_eval"}


def _run_module_main(module: str, json_out: Optional[str], extra: List[str]) -> int:
    """Call ``module.main(argv)`` in this process; a main that returns a result dict counts as success."""
    import importlib
    argv = (["--json", json_out] if json_out else []) + [a for a in extra if a != "--"]
    rc = importlib.import_module(module).main(argv)
    return rc if isinstance(rc, int) else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess
    if args.target:
        return _run_module_main(BENCHMARKS[args.target], args.json, list(args.bench_args))
    if args.json:
        print("facediff bench: --json needs a target (e.g. facediff bench landmarks --json OUT)",
              file=sys.stderr)
        return 2
    # One process per benchmark: each measures a cold start the same way it does alone.
    failed = 0
    for module in BENCHMARKS.values():
        print(f"== {module}", flush=True)
        failed += subprocess.call([sys.executable, "-m", module]) != 0
    return 1 if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    return _run_module_main(EVALUATIONS[args.target], args.json, list(args.eval_args))


def node_param_tables() -> dict:
    """README section name -> Markdown table, from the nodes' parameter dataclasses."""
    from facediff_ros.nodes.capture import CaptureParams
    from facediff_ros.nodes.editor import EditorParams
    from facediff_ros.nodes.fitting import FittingParams
    from facediff_ros.nodes.landmarks import LandmarksParams
    from facediff_ros.nodes.parameters import params_markdown
    return {"capture": params_markdown(CaptureParams), "landmarks": params_markdown(LandmarksParams),
            "fitting": params_markdown(FittingParams), "editor": params_markdown(EditorParams)}


def readme_with_param_tables(text: str) -> str:
    """README text with each ``<!-- params:NAME -->`` ... ``<!-- /params:NAME -->`` block regenerated."""
    for name, table in node_param_tables().items():
        start, end = f"<!-- params:{name} -->", f"<!-- /params:{name} -->"
        a, b = text.find(start), text.find(end)
        if a < 0 or b < a:
            raise ValueError(f"README has no {start} ... {end} block")
        text = text[:a + len(start)] + "\n" + table + text[b:]
    return text


def _cmd_params(args: argparse.Namespace) -> int:
    if args.yaml:
        from facediff_ros.bringup.params_files import write_all
        for node, path in write_all(args.yaml).items():
            print(f"wrote {path} ({node})")
        return 0
    if args.readme:
        from pathlib import Path
        path = Path(args.readme)
        path.write_text(readme_with_param_tables(path.read_text()))
        print(f"updated the parameter tables in {path}")
        return 0
    for name, table in node_param_tables().items():
        print(f"### {name}\n\n{table}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from facediff_ros import fitting_command  # imported here: it loads MediaPipe and the model
    return fitting_command.run(args)


def _cmd_edit(args: argparse.Namespace) -> int:
    from facediff_ros import edit_command  # imported here: it loads MediaPipe, the model and torch
    return edit_command.run(args)


def _cmd_personalize(args: argparse.Namespace) -> int:
    from facediff_ros import personalize_command  # imported here: MediaPipe, torch
    return personalize_command.run(args)


def _cmd_record(args: argparse.Namespace) -> int:
    from facediff_ros import record_command  # imported here: pyrealsense2, rclpy for --source topics
    return record_command.run(args)


def _cmd_export(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from facediff_ros.core.editor import export  # imported here: torch + onnx
    from facediff_ros.core.editor.train import load_weights
    try:
        net = load_weights(args.weights)
        meta = export.export_weights(net, args.out, batch=args.batch, opset=args.opset)
    except (ValueError, OSError, export.ExportError) as exc:
        print(f"facediff export: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    size = meta["crop_size"]
    print(f"wrote {out / export.ONNX_FILE} (opset {meta['opset']}, batch {meta['batch']}, {size}x{size}, "
          f"sha256 {meta['sha256'][:16]}...) and {out / export.EXPORT_FILE}; "
          f"parity with torch: max abs diff {meta['parity_max_abs_diff']:.2e}")
    if not args.tensorrt:
        return 0
    from facediff_ros.core.face.assets import default_cache_dir
    # The default engine folder is the one make_backend looks in, so the node finds what was built here.
    cache = Path(args.engine_dir) if args.engine_dir else default_cache_dir() / "editor" / "tensorrt"
    try:
        engine, info = export.ensure_engine(out / export.ONNX_FILE, cache, precision=args.precision,
                                            log=print)
    except (export.BackendUnavailable, RuntimeError, OSError) as exc:
        print(f"facediff export: TensorRT engine not built: {exc}", file=sys.stderr)
        return 3
    meta["tensorrt"] = {"engine": str(engine), **{k: v for k, v in info.items() if k != "built"}}
    (out / export.EXPORT_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    done = "built" if info["built"] else "reused"
    print(f"TensorRT engine {done}: {engine} ({info.get('precision_used', '?')})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from facediff_ros.demo import run_demo  # imported here: it loads rclpy
    node_params: dict = {}
    for item in args.node_param:
        key, sep, value = item.partition("=")
        node, dot, name = key.partition(".")
        if not (sep and dot and node and name):
            print(f"facediff demo: --node-param {item!r}: expected NODE.NAME=VALUE", file=sys.stderr)
            return 2
        import yaml  # values typed as after `-p name:=value`: 2 -> int, true -> bool
        node_params.setdefault(node, {})[name] = yaml.safe_load(value) if value else ""
    kwargs = {"stage_timeout_s": args.stage_timeout} if args.stage_timeout is not None else {}
    try:
        summary = run_demo(out=args.out, categories=args.categories.split(",") if args.categories else None,
                           node_params=node_params, **kwargs)
    except ValueError as exc:
        print(f"facediff demo: {exc}", file=sys.stderr)
        return 2
    return int(summary["returncode"])


def _cmd_bringup(args: argparse.Namespace) -> int:
    import shlex

    from facediff_ros.bringup import graph
    overrides = {a.name: getattr(args, a.name) for a in graph.ARGUMENTS if getattr(args, a.name) is not None}
    try:
        specs = graph.node_specs(overrides)
    except ValueError as exc:
        print(f"facediff bringup: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for spec in specs:
            print(shlex.join(graph.command(spec)))
        return 0
    from facediff_ros.bringup import processes  # imported here: signals, sub-processes

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    try:
        return processes.run(specs, log=log, echo=lambda line: print(line, flush=True),
                             duration_s=args.duration)
    except ValueError as exc:  # an executable (rviz2) missing: nothing was started
        print(f"facediff bringup: {exc}", file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="facediff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assets", help="verify and convert the ICT-FaceKit model into the cache")
    p.add_argument("--rebuild", action="store_true", help="convert again even if the cache is valid")
    p.set_defaults(func=_cmd_assets)
    p = sub.add_parser("montage", help="render identities x expression categories (colour + depth) to a PNG")
    p.add_argument("--out", default="docs/montage.png", help="PNG to write")
    p.add_argument("--identities", type=int, default=4, help="random subjects (rows)")
    p.add_argument("--size", type=int, default=192, help="pixels per cell side")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_montage)
    p = sub.add_parser("params", help="print the nodes' parameter tables (Markdown)")
    p.add_argument("--readme", help="rewrite the tables between the params markers of this file")
    p.add_argument("--yaml", metavar="DIR", help="write the nodes' parameters files DIR/<node>.yaml "
                   "(config/ is generated this way)")
    p.set_defaults(func=_cmd_params)
    p = sub.add_parser("bench", help="run the benchmarks (all, or one target)")
    p.add_argument("target", nargs="?", choices=list(BENCHMARKS),
                   help="one benchmark; 'landmarks': the landmark node's per-frame work vs raw MediaPipe "
                        "on a 640x480 actor recording (prints the ratio)")
    p.add_argument("--json", help="with a target: also write its results to this JSON file")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="further options for the target's benchmark")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("evaluate", help="accuracy against synthetic ground truth (fitting, editor)")
    p.add_argument("target", choices=list(EVALUATIONS))
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("eval_args", nargs=argparse.REMAINDER, help="further options for the evaluation")
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("fit", help="fit the face model to a recording or an image; files out only with --out")
    from facediff_ros.fitting_command import add_arguments as add_fit_arguments  # numpy/json only at import
    add_fit_arguments(p)
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser("edit", help="re-express the face in an image with the editor; files into --out DIR")
    from facediff_ros.edit_command import add_arguments as add_edit_arguments  # numpy/json only at import
    add_edit_arguments(p)
    p.set_defaults(func=_cmd_edit)
    p = sub.add_parser("personalize", help="fine-tune the editor on one person's recordings/photos within a "
                                           "time budget (owner-only folder; --delete DIR removes it)")
    from facediff_ros.personalize_command import add_arguments as add_personalize_arguments
    add_personalize_arguments(p)
    p.set_defaults(func=_cmd_personalize)
    p = sub.add_parser("record",
                       help="record RGB-D frames (capture topics or a camera) into a .db3, with prompts")
    from facediff_ros.record_command import add_arguments as add_record_arguments
    add_record_arguments(p)
    p.set_defaults(func=_cmd_record)
    p = sub.add_parser("export", help="export the editor network to ONNX (and a TensorRT engine)")
    p.add_argument("--weights", required=True, help="weights folder (editor.pt + config.json)")
    p.add_argument("--out", required=True,
                   help="folder for editor.onnx + export.json (may be the weights folder)")
    p.add_argument("--batch", type=int, default=1, help="static batch of the exported network")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--tensorrt", action="store_true",
                   help="also build the TensorRT engine (needs tensorrt + a GPU)")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="TensorRT engine precision")
    p.add_argument("--engine-dir", help="TensorRT engine cache (default: the package cache, editor/tensorrt)")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("demo", help="the whole graph on the embedded sample through the seven expression "
                       "categories; writes a result folder (montage, PLYs, latency)")
    p.add_argument("--out", help="result folder (default build/demo/<timestamp>)")
    p.add_argument("--categories", help="comma-separated categories to cycle through (default all seven)")
    p.add_argument("--node-param", action="append", default=[], metavar="NODE.NAME=VALUE",
                   help="extra ROS parameter for one node, e.g. editor.steps=2 (repeatable)")
    p.add_argument("--stage-timeout", type=float, help="seconds each stage has for its first output")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("bringup", help="start the whole graph as separate node processes (the launch "
                                       "file's arguments; no ros2 launch needed)")
    from facediff_ros.bringup.graph import ARGUMENTS  # no rclpy, no launch
    for a in ARGUMENTS:
        shown = "" if not a.choices else " {" + ",".join(c or "''" for c in a.choices) + "}"
        p.add_argument("--" + a.name.replace("_", "-"), dest=a.name, metavar="VALUE",
                       help=f"{a.description}{shown} (default {a.default!r})".replace("%", "%%"))
    p.add_argument("--duration", type=float, help="stop the graph after this many seconds (default: Ctrl-C)")
    p.add_argument("--dry-run", action="store_true", help="print the node command lines, start nothing")
    p.set_defaults(func=_cmd_bringup)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
