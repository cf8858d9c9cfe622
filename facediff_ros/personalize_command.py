"""``facediff personalize``: fine-tune the editor on one person's own frames, within a time budget.

    facediff personalize INPUT... --minutes N --out DIR [--weights BASE] [--json OUT]
    facediff personalize --delete DIR

INPUT: RealSense recordings (``.db3``/``.bag``, e.g. from ``facediff record``) or folders of
PNG/JPEG photos (colour only, a 60 deg horizontal field of view assumed as ``facediff fit`` does) of
one person. Every frame goes through what the nodes run: MediaPipe landmarks (lifted onto the
depth) and the face tracker (:class:`facediff_ros.fitting_command.Fitter`, ``facediff fit``'s own
reader and fitter), looking for up to two faces per frame so that a second person is noticed.
Then :mod:`facediff_ros.core.editor.personalize` picks spread-out frames, holds some out, builds
self-supervised pairs and fine-tunes the base weights (default: the shipped ones) for ``N``
minutes of training in total (reading and fitting come before, the held-out scoring after; both
are printed), with a progress bar and ETA.

DIR ends up holding ``editor.pt`` + ``config.json`` (load them with ``--weights DIR`` /
the editor node's ``weights`` parameter), ``checkpoint.pt`` (a later run with a larger ``N``
continues from it), ``before_after.png`` (held-out frames: source, model-only, base, personalised,
the real frame) and ``personalization.json`` (the marker ``--delete`` looks for, with the scores).

Privacy: faces are biometric data. The folder is created owner-only (0700, files 0600) and nothing
about the person is written anywhere else: the run works in a hidden sibling ``.DIR.partial``
(the same owner-only rules) renamed to DIR at the end; an interrupted run leaves it there to
resume, and ``--delete DIR`` removes both. ``--json OUT`` gets the numbers only (no image, no
fitted face state).

Bad input (unreadable input, no face, several people, too few usable frames, a budget shorter than
one training step, base weights that are not editor weights, a DIR personalised from other
weights or another config): one line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from facediff_ros.blas_threads import limit_blas_threads
from facediff_ros.fitting_command import (DEFAULT_HFOV_DEG, IMAGE_SUFFIXES, RECORDING_SUFFIXES, Frame,
                                          InputError, read_color, recording_frames)

MARKER_FILE = "personalization.json"
MARKER_KIND = "facediff personalization"
FORMAT = 1
FIGURE_FILE = "before_after.png"
# More than this share of the frames with a face showing two faces: several people.
MULTI_FACE_FRACTION = 0.2
# Fits below this quality (landmark coverage x fit score) are not used.
MIN_QUALITY = 0.5
# A recording's frames with a face checked for other people (dlib HOG, ~0.1 s a 640x480 frame).
PEOPLE_CHECK_EVERY = 10
# Frames kept in memory as candidates (the rest are fitted, for tracking, then dropped): the
# farthest-point selection needs spread, not every frame of a 30 fps stream.
MAX_CANDIDATES = 160


def default_weights() -> Path:
    """The shipped editor weights."""
    return Path(__file__).resolve().parent / "data" / "editor"


def partial_dir(out: Path) -> Path:
    """The hidden sibling a run works in before it becomes ``out``."""
    return out.parent / f".{out.name}.partial"


def is_personalization_dir(path: Path) -> bool:
    """True when ``path`` is a folder holding this command's marker file."""
    m = Path(path) / MARKER_FILE
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text()).get("kind") == MARKER_KIND
    except (OSError, ValueError, AttributeError):
        return False


def delete(out) -> List[str]:
    """Remove a personalisation folder and its partial sibling; returns what was removed.

    :raises InputError: ``out`` is not a personalisation folder (nothing is removed).
    """
    out = Path(out)
    removed = []
    targets = [p for p in (out, partial_dir(out)) if p.exists() or p.is_symlink()]
    if not targets:
        raise InputError(f"--delete {out}: no such folder")
    for p in targets:
        if p.is_symlink() or not p.is_dir() or not is_personalization_dir(p):
            raise InputError(f"--delete {p}: not a personalisation folder (no {MARKER_FILE} of "
                             f"facediff personalize); refusing to delete it")
    for p in targets:
        shutil.rmtree(p)
        removed.append(str(p))
    return removed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- reading and fitting ----------------------------------------------------------------------------
def _input_streams(inputs: Sequence[str]):
    """[(path, kind, frame iterator factory)] for recordings and photo folders."""
    out = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            photos = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not photos:
                raise InputError(f"INPUT {p}: a folder without PNG/JPEG photos")
            out.append((p, "photos", photos))
        elif p.is_file() and p.suffix.lower() in RECORDING_SUFFIXES:
            out.append((p, "recording", None))
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            out.append((p, "photos", [p]))
        elif not p.exists():
            raise InputError(f"INPUT {p}: no such file or folder")
        else:
            raise InputError(f"INPUT {p}: expected a recording ({', '.join(RECORDING_SUFFIXES)}) or a folder "
                             f"of photos ({', '.join(IMAGE_SUFFIXES)})")
    return out


def _photo_frames(photos: List[Path]):
    from facediff_ros.core.camera import Intrinsics
    for k, q in enumerate(photos):
        rgb = read_color(q)
        K = Intrinsics.from_fov(rgb.shape[1], rgb.shape[0], DEFAULT_HFOV_DEG)
        yield Frame(k, 0.0, rgb, None, K)


_DETECTOR = []


def count_faces(rgb: np.ndarray) -> int:
    """Faces dlib's frontal HOG detector finds in an RGB image (no upsampling: faces >= ~80 px)."""
    if not _DETECTOR:
        import dlib
        _DETECTOR.append(dlib.get_frontal_face_detector())
    return len(_DETECTOR[0](np.ascontiguousarray(rgb), 0))


# A recording is read into memory first, at most this many frames (every other one dropped, and
# from then on every second, ... when it is longer: 600 frames of 640x480 RGB-D are ~0.9 GB).
MAX_READ_FRAMES = 600


def _read_all(path: Path, log=None) -> List[Frame]:
    """All frames of a recording (thinned to MAX_READ_FRAMES), read before any fitting.

    Read first so that long recordings can be thinned evenly before the (slow) fitting; this was
    also the workaround for play_recording's old deadlock with a slow reader, since fixed in
    synthetic/recording.py (test/test_recording_slow_reader.py).
    """
    out: List[Frame] = []
    stride, n = 1, 0
    for f in recording_frames(path):
        n += 1
        if (n - 1) % stride:
            continue
        depth = None if f.depth is None else np.array(f.depth, copy=True)
        out.append(Frame(f.index, f.timestamp, np.array(f.rgb, copy=True), depth, f.intrinsics,
                         f.depth_scale))
        if len(out) > MAX_READ_FRAMES:
            out = out[::2]
            stride *= 2
    if log is not None:
        log(f"read {n} frames of {path}" + (f" (kept every {stride}th)" if stride > 1 else ""))
    return out


def fit_inputs(inputs: Sequence[str], log: Optional[Callable[[str], None]] = None):
    """Read and fit every frame; returns (fitted frames kept as candidates, stats).

    :raises InputError: unreadable input, no face, several people.
    """
    from facediff_ros.core.editor.personalize import FittedFrame
    from facediff_ros.fitting_command import Fitter
    streams = _input_streams(inputs)
    # The tracker's small solves crawl in OpenBLAS thread hand-offs on a busy 2-core machine (~1 frame/s).
    limit_blas_threads(1)
    stats = {"frames": 0, "with_face": 0, "people_checked": 0, "multi_face": 0, "fitted": 0, "usable": 0,
             "inputs": len(streams)}
    kept: List = []
    t0 = time.perf_counter()
    for n_stream, (path, kind, photos) in enumerate(streams):
        # One face tracked (MediaPipe's graph with two faces in tracking mode stalled in
        # wait_until_idle here, 2 of 3 runs); people are counted by dlib's HOG detector instead.
        fitter = Fitter(single_image=(kind == "photos"), max_faces=1)
        stride, seen = 1, 0
        try:
            frames = _read_all(path, log) if kind == "recording" else _photo_frames(photos)
            for frame in frames:
                stats["frames"] += 1
                # Own copies: the colour can be a view of librealsense's frame buffer (see below).
                frame.rgb = np.array(frame.rgb, copy=True)
                if log is not None and stats["frames"] % 30 == 0:
                    log(f"read + fitted {stats['frames']} frames ({stats['usable']} usable) "
                        f"in {time.perf_counter() - t0:.0f} s")
                if frame.depth is not None and not frame.depth.any():
                    frame.depth = None  # a colour-only recording (facediff record --source webcam)
                lm = fitter.landmarks(frame)
                if lm is None:
                    continue
                stats["with_face"] += 1
                faces = 1
                if kind == "photos" or stats["with_face"] % PEOPLE_CHECK_EVERY == 1:
                    faces = count_faces(frame.rgb)
                    stats["people_checked"] += 1
                    stats["multi_face"] += faces > 1
                uv, points, valid = lm
                res = fitter.tracker.update(frame.intrinsics, uv, points, valid, frame.depth,
                                            frame.depth_scale)
                if not res.ok:
                    continue
                stats["fitted"] += 1
                if res.quality < MIN_QUALITY or not res.identity_locked or faces > 1:
                    continue
                stats["usable"] += 1
                seen += 1
                if (seen - 1) % stride:
                    continue
                depth = None if frame.depth is None else \
                    (frame.depth.astype(np.float32) * np.float32(frame.depth_scale))
                # Photos have no time order (timestamp None: no gap rule); streams are kept apart in time.
                stamp = None if kind == "photos" else 1e4 * n_stream + float(frame.timestamp)
                # A copy: the colour may be a view of librealsense's frame buffer, and holding
                # many of those starves the playback's frame pool (the reader then stalls).
                kept.append(FittedFrame(len(kept), stamp, np.array(frame.rgb, copy=True), depth,
                                        frame.intrinsics, res.identity.copy(), res.expression.copy(),
                                        res.R.copy(), res.t.copy()))
                # Thin out evenly: every other frame, from now on half as often.
                if len(kept) > MAX_CANDIDATES:
                    kept = kept[::2]
                    stride *= 2
        finally:
            fitter.close()
    for k, f in enumerate(kept):
        f.index = k
    stats["kept"] = len(kept)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    names = ", ".join(str(p) for p, _, _ in streams)
    if stats["with_face"] == 0:
        raise InputError(f"no face found in {names} ({stats['frames']} frames)")
    if stats["multi_face"] > MULTI_FACE_FRACTION * max(stats["people_checked"], 1):
        raise InputError(f"several people: two or more faces in {stats['multi_face']} of the "
                         f"{stats['people_checked']} frames checked; personalisation needs frames of one "
                         f"person alone")
    return kept, stats


# ---- the run -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _owner_only():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _lock_down(folder: Path) -> None:
    os.chmod(folder, 0o700)
    for p in folder.rglob("*"):
        os.chmod(p, 0o700 if p.is_dir() else 0o600)


class ProgressBar:
    """``\\r[#####.....]  42 %  step 120  loss 0.123  1m05s left`` on a stream, by training time."""

    def __init__(self, total_s: float, done_s: float, stream=None, width: int = 30):
        self.total, self.done0 = max(total_s, 1e-9), done_s
        self.t0 = time.time()
        self.stream = stream if stream is not None else sys.stderr
        self.width = width

    def __call__(self, line: str) -> None:
        m = re.search(r"step (\d+)/\d+\s+loss ([0-9.]+)\s+(\d+) ms/step", line)
        step, loss, ms = (m.group(1), m.group(2), m.group(3)) if m else ("?", "?", "?")
        done = min(self.done0 + time.time() - self.t0, self.total)
        frac = done / self.total
        left = self.total - done
        bar = "#" * int(round(frac * self.width))
        self.stream.write(f"\r[{bar:<{self.width}}] {100 * frac:5.1f} %  step {step}  loss {loss}  "
                          f"{ms} ms/step  ETA {int(left // 60)}m{int(left % 60):02d}s ")
        self.stream.flush()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _base_meta(base: Path) -> Dict:
    try:
        return json.loads((base / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def personalize(inputs: Sequence[str], minutes: float, out, weights=None, config=None,
                log: Optional[Callable[[str], None]] = print, progress: bool = True,
                frames=None, stats=None) -> Dict:
    """Run the whole personalisation (module docstring); returns the report.

    ``frames``/``stats``: already fitted frames (the evaluation fits once and personalises several
    budgets); ``inputs`` is then only recorded.

    :raises InputError: bad input (nothing is written then).
    """
    import torch

    from facediff_ros.core.editor import personalize as P
    from facediff_ros.core.editor.avatar import crop_config_for
    from facediff_ros.core.editor.train import CHECKPOINT_FILE, load_weights
    from facediff_ros.core.face.morphable_model import MorphableModel

    config = config if config is not None else P.PersonalizeConfig()
    log = log or (lambda s: None)
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise InputError(f"--minutes must be a number > 0, got {minutes!r}")
    out = Path(out)
    base = Path(weights) if weights else default_weights()
    # The output folder: a fresh one, one of ours to continue, or refuse.
    if out.exists() and not is_personalization_dir(out):
        raise InputError(f"--out {out}: exists and is not a personalisation folder; choose a new folder")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: its parent folder {out.parent} does not exist")
    work = out if out.exists() else partial_dir(out)
    resuming = work.exists()
    if resuming and not is_personalization_dir(work):
        raise InputError(f"{work}: exists and is not a personalisation folder; "
                         "remove it or choose another --out")
    # Base weights: editor weights of this package's format, with their crop.
    try:
        base_net = load_weights(base)
        crop_config = crop_config_for(base, base_net.config.crop_size)
    except Exception as exc:  # noqa: BLE001 - any unreadable file (torch raises pickle errors too)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"--weights {base}: not usable editor weights ({first})") from None
    base_sha = _sha256(base / "editor.pt")
    tc = config.train_config(base_net.config)
    if resuming:
        marker = json.loads((work / MARKER_FILE).read_text())
        if marker.get("base_sha256") != base_sha:
            raise InputError(f"{work} was personalised from other weights ({marker.get('base_weights')}); "
                             f"pass those with --weights, or use another --out")
        ck = work / CHECKPOINT_FILE
        if ck.is_file() and torch.load(ck, map_location="cpu", weights_only=False)["config"] != tc.to_dict():
            raise InputError(f"{work} was made with another configuration; use another --out "
                             f"(or facediff personalize --delete {out})")

    # Read + fit + pairs: all in memory; bad input stops here with nothing written.
    t_start = time.perf_counter()
    if frames is None:
        frames, stats = fit_inputs(inputs, log)
    model = MorphableModel.load()
    try:
        prepared = P.prepare(frames, model, crop_config, config)
    except P.PersonalizeError as exc:
        raise InputError(str(exc)) from None
    step_s = P.time_one_step(base_net, prepared.train_data, config)
    done_s = P.checkpoint_progress(work)[1] if resuming else 0.0
    if 60 * minutes < step_s:
        raise InputError(f"--minutes {minutes:g} ({60 * minutes:.1f} s) is shorter than one training step "
                         f"here ({step_s:.2f} s); give at least {max(0.1, math.ceil(step_s / 6) / 10):g}")
    prep_s = time.perf_counter() - t_start
    log(f"{stats['frames']} frames read, {stats['usable']} usable; {len(prepared.split.train)} training and "
        f"{len(prepared.split.heldout)} held-out frames, {len(prepared.train_pairs)} training and "
        f"{len(prepared.eval_pairs)} held-out pairs ({prep_s:.0f} s); one step {1000 * step_s:.0f} ms; "
        f"training {minutes:g} min" + (f" (resuming after {done_s / 60:.1f} min)" if done_s else ""))

    base_meta = _base_meta(base)
    fresh = not resuming
    with _owner_only():
        if fresh:
            work.mkdir(mode=0o700)
        try:
            marker = {"kind": MARKER_KIND, "format": FORMAT, "base_weights": str(base),
                      "base_sha256": base_sha, "minutes": minutes}
            (work / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n")
            bar = ProgressBar(60 * minutes, done_s) if progress else None
            extra = {"data": {"pair_config": (base_meta.get("data") or {}).get("pair_config")
                              or {"crop": crop_config.__dict__}},
                     "base": {"weights": str(base), "sha256": base_sha}}
            summary = _train(prepared, base, work, minutes, config, extra, bar)
            if bar is not None:
                bar.finish()
            t_eval = time.perf_counter()
            personal = load_weights(work)
            ev = prepared.eval_data
            outputs = {"model_only": np.stack([P.model_only_rgbd(s, b)
                                               for s, b in zip(ev["source"], ev["buffers"])]),
                       "base": P.edit_pairs(base_net, ev, config.eval_steps, config.seed),
                       "personalised": P.edit_pairs(personal, ev, config.eval_steps, config.seed)}
            scores = P.heldout_scores(outputs, prepared.eval_data)
            P.before_after_figure(prepared.eval_data, outputs, scores, work / FIGURE_FILE)
            report = {
                "kind": MARKER_KIND, "format": FORMAT, "base_weights": str(base), "base_sha256": base_sha,
                "minutes": minutes, "inputs": [str(s) for s in inputs], "frames": stats,
                "train_frames": len(prepared.split.train), "heldout_frames": len(prepared.split.heldout),
                "train_pairs": len(prepared.train_pairs), "heldout_pairs": len(prepared.eval_pairs),
                "prepare_s": round(prep_s, 1), "step_ms": round(1000 * step_s, 1),
                "training": {k: v for k, v in summary.items() if k != "losses"},
                "eval_steps": config.eval_steps, "eval_s": round(time.perf_counter() - t_eval, 1),
                "heldout": {k: {"psnr_db": round(v["psnr_db"], 3)} for k, v in scores.items()},
                "gain_psnr_db": round(scores["personalised"]["psnr_db"] - scores["base"]["psnr_db"], 3),
            }
            (work / MARKER_FILE).write_text(json.dumps(report, indent=1) + "\n")
            _lock_down(work)
            if work != out:
                os.replace(work, out)
        except KeyboardInterrupt:
            if fresh and not (work / CHECKPOINT_FILE).is_file():
                shutil.rmtree(work, ignore_errors=True)
            raise
        except BaseException:
            if fresh:  # nothing half-written: a failed first run leaves no folder
                shutil.rmtree(work, ignore_errors=True)
            raise
    report["out"] = str(out)
    report["_prepared"] = prepared
    report["_outputs"] = outputs
    return report


def _train(prepared, base, work, minutes, config, extra, bar):
    from facediff_ros.core.editor import personalize as P
    return P.fine_tune(prepared, base, work, minutes, config, extra_meta=extra, log=bar)


# ---- command -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``facediff personalize`` options (cli.py builds its subcommand from these)."""
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="recordings (.db3/.bag) or folders of photos of one person")
    p.add_argument("--minutes", type=float, help="training time in total, minutes (a later run with a "
                                                 "larger value continues from the checkpoint)")
    p.add_argument("--out", help="the personalisation folder (created owner-only)")
    p.add_argument("--weights", help=f"base weights folder (default: the shipped {default_weights()})")
    p.add_argument("--json", help="write the report (numbers only) to this JSON file")
    p.add_argument("--delete", metavar="DIR", help="remove a personalisation folder (and its partial run)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    """0 done, 2 bad input (one line on stderr), 130 interrupted (the checkpoint is kept)."""
    try:
        if args.delete:
            if args.inputs or args.out or args.minutes is not None:
                raise InputError("--delete DIR takes no INPUT, --out or --minutes")
            for p in delete(args.delete):
                print(f"removed {p}")
            return 0
        if not args.inputs or not args.out or args.minutes is None:
            raise InputError("need INPUT..., --minutes N and --out DIR (or --delete DIR)")
        report = personalize(args.inputs, args.minutes, args.out, args.weights,
                             log=None if args.quiet else print, progress=not args.quiet)
        if args.json:
            public = {k: v for k, v in report.items() if not k.startswith("_")}
            try:
                Path(args.json).write_text(json.dumps(public, indent=1) + "\n")
            except OSError as exc:
                raise InputError(f"--json {args.json}: cannot write it ({exc})") from None
    except InputError as exc:
        print(f"facediff personalize: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfacediff personalize: interrupted; run the same command again to continue from the "
              f"last checkpoint (or --delete {args.out})", file=sys.stderr)
        return 130
    h = report["heldout"]
    t = report["training"]
    print(f"wrote {report['out']} ({t['steps']} steps, {t['elapsed_s'] / 60:.1f} min of training): "
          f"held-out face PSNR {h['base']['psnr_db']:.2f} dB with the base weights -> "
          f"{h['personalised']['psnr_db']:.2f} dB personalised ({report['gain_psnr_db']:+.2f} dB; "
          f"model-only {h['model_only']['psnr_db']:.2f} dB); "
          f"figure {Path(report['out']) / FIGURE_FILE}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="facediff personalize", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
