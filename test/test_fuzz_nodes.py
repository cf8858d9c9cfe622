"""Property-based fuzzing of every node input callback (landmarks, fitting, editor), in-process.

For each callback, hypothesis draws a malformed message (wrong encodings, steps and sizes,
truncated data, NaN/inf, absurd intrinsics, empty arrays, huge declared dimensions, stamps going
backwards) and feeds it with well-formed partners of the same stamp (so that it is paired and
reaches the node's processing, not only its synchroniser). Properties, after every case:

- no exception escapes the callback;
- nothing is dropped through the catch-all: ``drop_internal_error`` stays 0 (an unexpected
  exception in the processing would be counted there);
- every frame is accounted for: each colour (landmarks, editor) or landmarks (fitting) message
  received was dropped by reason before pairing, is paired, counted by the synchroniser as
  unpaired / overflow, or still waits; each paired set was published, found no face / lost the
  face, or was dropped with a reason.

The capture node has no input callback (its frames come from its source; its converter is fuzzed
in test_fuzz_adapters). Cases per callback: FACEDIFF_FUZZ_EXAMPLES (60 by default; `make soak`
runs 10,000).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import Point, Pose, Quaternion  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from facediff_ros.adapters import face_model as fm  # noqa: E402
from facediff_ros.adapters import landmarks as landmarks_adapter  # noqa: E402
from facediff_ros.adapters.images import to_camera_info_msg, to_image_msg  # noqa: E402
from facediff_ros.core.landmarks.pipeline import DROP_REASONS  # noqa: E402
from facediff_ros.msg import ExpressionTarget, FaceLandmarks  # noqa: E402
from fuzz_messages import (F32, FLOATS, FUZZ, UINT32, camera_info_fields, camera_info_msg,  # noqa: E402
                           header, image_fields, image_msg, stamp, stamps)


# Overflow/invalid-value warnings are what NaN/inf/huge inputs cause; the properties judge the outcome.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def ctx():
    from facediff_ros.adapters.dds import configure_environment
    configure_environment()
    c = rclpy.Context()
    rclpy.init(context=c)
    yield c
    c.try_shutdown()


@pytest.fixture(scope="module")
def actor(model):
    """Two frames of the synthetic actor at 160x120 (a face MediaPipe finds), as messages' arrays."""
    from facediff_ros.core.camera import Intrinsics
    from facediff_ros.core.face.correspondence import Correspondence
    from facediff_ros.core.landmarks.face_mesh import landmarks_bbox
    from facediff_ros.core.landmarks.lifting import lift_landmarks
    from facediff_ros.core.landmarks.pipeline import Landmarks
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
    intr = Intrinsics.from_fov(160, 120, 69.0)
    a = SyntheticActor(ActorConfig(seed=7, num_frames=2, keep_vertices=True, intrinsics=intr), model)
    corr = Correspondence.load()
    frames = []
    for i in range(2):
        f = a.frame(i)
        uv = f.intrinsics.project(corr.points(f.vertices)).astype(np.float32)
        pts, valid = lift_landmarks(uv, f.depth.astype(np.float32) * 0.001, f.intrinsics)
        lm = Landmarks(uv=uv, points=pts, valid=valid, presence=1.0,
                       bbox=landmarks_bbox(uv, intr.width, intr.height), image_width=intr.width,
                       image_height=intr.height)
        frames.append(dict(color=f.color, depth=f.depth, intr=f.intrinsics, lm=lm, R=f.R, t=f.t))
    return frames


class Stamps:
    """Stamps for the good partners: mostly increasing, as a live graph's are."""

    def __init__(self):
        self.sec = 1000

    def next(self):
        self.sec += 1
        return stamp(self.sec, 5000)


def _drops(counts):
    return {k[len("drop_"):]: v for k, v in counts.items() if k.startswith("drop_")}


def _check_accounting(node, pivot_in, pivot, outcomes, pre_sync=(), not_frames=("bad_camera_info",
                                                                                "bad_header")):
    """The invariants of the module docstring on ``node``'s counters (absolute totals, so that they
    hold across examples that share the node). ``pre_sync``: drop reasons of pivot messages before
    pairing; ``not_frames``: drops of messages that are not frames (a CameraInfo refused)."""
    c = node.counters.snapshot()
    drops = _drops(c)
    assert drops.get("internal_error", 0) == 0, node.drops.last
    s = node.sync
    before_sync = sum(drops.get(r, 0) for r in pre_sync)
    received = c.get(pivot_in, 0)
    waiting = s.pending(pivot)
    lost_in_sync = sum(v for k, v in s.dropped.items() if k.endswith("_" + pivot))
    # Sets handed on without all partners (the editor's frames without a face model, passed through).
    paired = s.matched + getattr(s, "unmatched", 0)
    assert received == before_sync + paired + lost_in_sync + waiting, (c, dict(s.dropped), paired, waiting)
    frame_drops = sum(v for k, v in drops.items() if k not in not_frames) - before_sync
    assert paired == sum(c.get(k, 0) for k in outcomes) + frame_drops, (c, paired)
    return drops


# ---- landmarks ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def landmarks_node(ctx):
    from facediff_ros.nodes.landmarks import LandmarksNode
    node = LandmarksNode(context=ctx)
    node.pub.publish = lambda m: None  # the payload is built (serialize) and checked elsewhere
    yield node
    node.destroy_node()


LANDMARK_DROPS = set(DROP_REASONS) | {"no_camera_info", "bad_header"}


@st.composite
def landmark_cases(draw, target):
    """(callback name -> message) for one frame set, ``target``'s message malformed."""
    return dict(target=target, seed=draw(st.integers(0, 1)), stamp=draw(stamps()),
                restamp=draw(st.sampled_from([False, False, False, True])),
                image=draw(image_fields(shape=(120, 160))), info=draw(camera_info_fields(shape=(120, 160))),
                order=draw(st.permutations(["info", "depth_info", "depth", "color"])))


def _landmark_messages(actor, case, stamps_):
    f = actor[case["seed"]]
    t = stamps_.next()
    h = header(t)
    msgs = {"color": to_image_msg(f["color"], "rgb8", h), "depth": to_image_msg(f["depth"], "16UC1", h),
            "info": to_camera_info_msg(f["intr"], h), "depth_info": to_camera_info_msg(f["intr"], h)}
    target = case["target"]
    th = header(case["stamp"] if case["restamp"] else t)
    if target in ("color", "depth"):
        msgs[target] = image_msg(case["image"], th)
    else:
        msgs[target] = camera_info_msg(case["info"], th)
    return msgs


def _fuzz_landmarks(node, actor, case, stamps_):
    msgs = _landmark_messages(actor, case, stamps_)
    callbacks = {"color": node.on_color, "depth": node.on_depth, "info": node.on_info,
                 "depth_info": node.on_depth_info}
    for key in case["order"]:
        callbacks[key](msgs[key])
    assert node.wait_idle(60.0)  # the set is processed on the node's worker thread
    # bad_camera_info is a frame's drop here (the pipeline checks the paired CameraInfo).
    drops = _check_accounting(node, "frames_in", "color", ("faces_out", "no_face"),
                              pre_sync=("no_camera_info",),
                              not_frames=("bad_header",))
    assert set(drops) <= LANDMARK_DROPS, drops


_landmark_stamps = Stamps()


@pytest.mark.parametrize("target", ["color", "depth", "info", "depth_info"])
def test_landmarks_callbacks(landmarks_node, actor, target):
    @FUZZ
    @given(landmark_cases(target))
    def run(case):
        _fuzz_landmarks(landmarks_node, actor, case, _landmark_stamps)

    run()
    c = landmarks_node.counters.snapshot()
    assert c.get("frames_in", 0) > 0


def test_landmarks_node_still_finds_the_face_after_fuzzing(landmarks_node, actor):
    """After any amount of abuse, a good frame set is processed as on the first day."""
    before = landmarks_node.counters["faces_out"]
    for _ in range(3):
        t = _landmark_stamps.next()
        f = actor[0]
        h = header(t)
        landmarks_node.on_info(to_camera_info_msg(f["intr"], h))
        landmarks_node.on_depth_info(to_camera_info_msg(f["intr"], h))
        landmarks_node.on_depth(to_image_msg(f["depth"], "16UC1", h))
        landmarks_node.on_color(to_image_msg(f["color"], "rgb8", h))
        assert landmarks_node.wait_idle(60.0)
    assert landmarks_node.counters["faces_out"] > before, landmarks_node.counters.snapshot()


# ---- fitting --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitting_node(ctx):
    from facediff_ros.nodes.fitting import FittingNode
    node = FittingNode(context=ctx)
    yield node
    node.destroy_node()


FITTING_DROPS = {"no_camera_info", "bad_landmarks", "size_mismatch", "bad_depth", "bad_header",
                 "bad_camera_info"}


@st.composite
def face_landmarks_changes(draw):
    """Changes to a good FaceLandmarks: lengths, NaN/inf, sizes, presence, bbox."""
    kind = draw(st.sampled_from(["length", "nan", "values", "size", "presence", "bbox", "all_invalid",
                                 "none"]))
    return dict(kind=kind, length=draw(st.sampled_from([0, 1, 477, 479, 1000])),
                field=draw(st.sampled_from(["u", "v", "points", "valid"])), value=draw(FLOATS),
                frac=draw(st.floats(0, 1)),
                size=tuple(draw(st.one_of(st.integers(0, 400), UINT32)) for _ in range(2)),
                presence=draw(F32), bbox=tuple(draw(UINT32) for _ in range(4)),
                seed=draw(st.integers(0, 2 ** 32 - 1)))


def _bad_landmarks(lm_msg, ch):
    m = FaceLandmarks(header=lm_msg.header, image_width=lm_msg.image_width, image_height=lm_msg.image_height,
                      presence=lm_msg.presence, bbox=lm_msg.bbox)
    u, v = np.array(lm_msg.u, np.float32), np.array(lm_msg.v, np.float32)
    pts = np.array([(p.x, p.y, p.z) for p in lm_msg.points])
    valid = np.array(lm_msg.valid, bool)
    rng = np.random.default_rng(ch["seed"])
    sel = rng.random(len(u)) < ch["frac"]
    k = ch["kind"]
    if k == "nan":
        {"u": u, "v": v}.get(ch["field"], u)[sel] = np.nan
        pts[sel] = np.nan  # valid may still say True: the adapter must refuse it
    elif k == "values":
        fits = abs(ch["value"]) < 3e38 or not math.isfinite(ch["value"])
        u[sel] = np.float32(ch["value"]) if fits else np.inf
        pts[sel] = ch["value"]
    elif k == "all_invalid":
        valid[:] = False
    lists = dict(u=u.tolist(), v=v.tolist(), points=[Point(x=float(a), y=float(b), z=float(c)) for a, b,
                                                     c in pts],
                 valid=valid.tolist())
    if k == "length":
        n = ch["length"]
        seq = lists[ch["field"]]
        lists[ch["field"]] = (seq * (n // max(1, len(seq)) + 1))[:n]
    m.u, m.v, m.points, m.valid = lists["u"], lists["v"], lists["points"], lists["valid"]
    if k == "size":
        m.image_width, m.image_height = ch["size"]
    elif k == "presence":
        m.presence = ch["presence"]
    elif k == "bbox":
        m.bbox.x_offset, m.bbox.y_offset, m.bbox.width, m.bbox.height = ch["bbox"]
    return m


@st.composite
def fitting_cases(draw, target):
    return dict(target=target, seed=draw(st.integers(0, 1)), stamp=draw(stamps()),
                restamp=draw(st.sampled_from([False, False, False, True])),
                image=draw(image_fields(shape=(120, 160))), info=draw(camera_info_fields(shape=(120, 160))),
                lm=draw(face_landmarks_changes()), order=draw(st.permutations(["info", "depth",
                                                                               "landmarks"])))


_fitting_stamps = Stamps()


@pytest.mark.parametrize("target", ["landmarks", "depth", "info"])
def test_fitting_callbacks(fitting_node, actor, target):
    node = fitting_node

    @FUZZ
    @given(fitting_cases(target))
    def run(case):
        f = actor[case["seed"]]
        t = _fitting_stamps.next()
        h = header(t)
        msgs = {"landmarks": landmarks_adapter.to_msg(f["lm"], h), "depth": to_image_msg(f["depth"],
                                                                                         "16UC1", h),
                "info": to_camera_info_msg(f["intr"], h)}
        th = header(case["stamp"] if case["restamp"] else t)
        if target == "landmarks":
            msgs["landmarks"] = _bad_landmarks(msgs["landmarks"], case["lm"])
            msgs["landmarks"].header = th
        elif target == "depth":
            msgs["depth"] = image_msg(case["image"], th)
        else:
            msgs["info"] = camera_info_msg(case["info"], th)
        callbacks = {"landmarks": node.on_landmarks, "depth": node.on_depth, "info": node.on_info}
        for key in case["order"]:
            callbacks[key](msgs[key])
        assert node.wait_idle(60.0)  # the fit runs on the node's worker thread
        drops = _check_accounting(node, "frames_in", "landmarks", ("models_out", "lost"))
        assert set(drops) <= FITTING_DROPS, drops

    run()
    assert node.counters["frames_in"] > 0


def test_fitting_node_still_fits_after_fuzzing(fitting_node, actor):
    before = fitting_node.counters["models_out"]
    for i in (0, 1, 0, 1):
        f = actor[i]
        h = header(_fitting_stamps.next())
        fitting_node.on_info(to_camera_info_msg(f["intr"], h))
        fitting_node.on_depth(to_image_msg(f["depth"], "16UC1", h))
        fitting_node.on_landmarks(landmarks_adapter.to_msg(f["lm"], h))
        assert fitting_node.wait_idle(60.0)
    assert fitting_node.counters["models_out"] > before, fitting_node.counters.snapshot()


# ---- editor ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def editor_node(ctx, tmp_path_factory):
    import torch

    from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
    from facediff_ros.core.editor.train import TrainConfig, save_weights
    from facediff_ros.nodes.editor import EditorNode
    torch.manual_seed(0)
    cfg = EditorNetConfig(crop_size=16, channels=(8, 16), emb_dim=32)
    folder = tmp_path_factory.mktemp("fuzz_editor_weights")
    save_weights(folder, EditorUNet(cfg).state_dict(), TrainConfig(net=cfg))
    node = EditorNode(context=ctx, parameter_overrides=[
        Parameter("weights", value=str(folder)), Parameter("backend", value="torch"), Parameter("steps",
                                                                                                value=1)])
    yield node
    node.destroy_node()


EDITOR_DROPS = {"no_camera_info", "bad_color", "bad_depth", "size_mismatch", "bad_model", "edit_refused",
                "no_depth",
                "no_face_model",
                "stale", "bad_header", "bad_camera_info"}


@st.composite
def face_model_changes(draw):
    kind = draw(st.sampled_from(["model_id", "lengths", "names", "values", "pose", "shuffle", "none"]))
    return dict(kind=kind, model_id=draw(st.sampled_from(["", "other", fm.MODEL_ID.upper()])),
                identity=draw(st.integers(0, 200)), expression=draw(st.integers(0, 80)),
                value=draw(F32), frac=draw(st.floats(0, 1)),
                q=[draw(FLOATS) for _ in range(4)], p=[draw(FLOATS) for _ in range(3)],
                seed=draw(st.integers(0, 2 ** 32 - 1)))


def _bad_model(msg, ch):
    rng = np.random.default_rng(ch["seed"])
    k = ch["kind"]
    ident, expr, names = list(msg.identity), list(msg.expression), list(msg.expression_names)
    if k == "model_id":
        msg.model_id = ch["model_id"]
    elif k == "lengths":
        ident = (ident * 10)[:ch["identity"]]
        expr = (expr * 10)[:ch["expression"]]
    elif k == "names":
        names = [f"x{i}" for i in range(len(names))]
    elif k == "values":
        for arr in (ident, expr):
            for i in range(len(arr)):
                if rng.random() < ch["frac"]:
                    arr[i] = ch["value"]
    elif k == "pose":
        msg.head_pose = Pose(position=Point(x=ch["p"][0], y=ch["p"][1], z=ch["p"][2]),
                             orientation=Quaternion(x=ch["q"][0], y=ch["q"][1], z=ch["q"][2], w=ch["q"][3]))
    elif k == "shuffle":
        order = rng.permutation(len(names))
        names, expr = [names[i] for i in order], [expr[i] for i in order]
    msg.identity, msg.expression, msg.expression_names = ident, expr, names
    return msg


@st.composite
def editor_cases(draw, target):
    return dict(target=target, seed=draw(st.integers(0, 1)), stamp=draw(stamps()),
                restamp=draw(st.sampled_from([False, False, False, True])),
                image=draw(image_fields(shape=(120, 160))), info=draw(camera_info_fields(shape=(120, 160))),
                model=draw(face_model_changes()), order=draw(st.permutations(["info", "depth", "model",
                                                                              "color"])))


@st.composite
def expression_targets(draw):
    n = draw(st.integers(0, 4))
    names = draw(st.lists(st.sampled_from(["jawOpen", "mouthSmile_L", "eyeBlink_R", "nope", ""]), min_size=n,
                          max_size=n))
    weights = [draw(F32) for _ in range(draw(st.sampled_from([n, n, n, n + 1, 0])))]
    return ExpressionTarget(category=draw(st.integers(0, 255)), intensity=draw(F32), weights=weights,
                            weight_names=names)


_editor_stamps = Stamps()


def _editor_messages(model, actor, case, target):
    f = actor[case["seed"]]
    t = _editor_stamps.next()
    h = header(t)
    from facediff_ros.core.fitting.tracker import FitResult
    fit = FitResult(True, "tracking", "", np.zeros(20, np.float32), np.zeros(model.num_expression,
                                                                             np.float32),
                    f["R"], f["t"], 0.001, 0.9, True, ("depth",))
    msgs = {"color": to_image_msg(f["color"], "rgb8", h), "depth": to_image_msg(f["depth"], "16UC1", h),
            "info": to_camera_info_msg(f["intr"], h), "model": fm.to_msg(fit, h, model.expression_names)}
    th = header(case["stamp"] if case["restamp"] else t)
    if target in ("color", "depth"):
        msgs[target] = image_msg(case["image"], th)
    elif target == "info":
        msgs["info"] = camera_info_msg(case["info"], th)
    elif target == "model":
        msgs["model"] = _bad_model(msgs["model"], case["model"])
        msgs["model"].header = th
    return msgs


def _editor_check(node):
    assert node.wait_idle(60.0)
    drops = _check_accounting(node, "frames_in", "color", ("frames_out",))
    assert set(drops) <= EDITOR_DROPS, drops


@pytest.mark.parametrize("target", ["color", "depth", "info", "model"])
def test_editor_callbacks(editor_node, actor, model, target):
    node = editor_node

    @FUZZ
    @given(editor_cases(target))
    def run(case):
        msgs = _editor_messages(model, actor, case, target)
        callbacks = {"color": node.on_color, "depth": node.on_depth, "info": node.on_info,
                     "model": node.on_model}
        for key in case["order"]:
            callbacks[key](msgs[key])
        _editor_check(node)

    run()
    assert node.counters["frames_in"] > 0


def test_editor_target_callback(editor_node):
    node = editor_node
    seen = {"n": 0}

    @FUZZ
    @given(expression_targets())
    def run(msg):
        node.on_target(msg)
        seen["n"] += 1
        c = node.counters.snapshot()
        assert c.get("targets_applied", 0) + c.get("targets_rejected", 0) == seen["n"] + base
        p = node.params.config
        assert 0.0 <= p.intensity <= 1.0 and math.isfinite(p.intensity)
        if node._extra_weights is not None:
            assert np.isfinite(node._extra_weights).all() and (node._extra_weights >= 0).all()

    c0 = node.counters.snapshot()
    base = c0.get("targets_applied", 0) + c0.get("targets_rejected", 0)
    run()


def test_editor_still_edits_after_fuzzing(editor_node, actor, model):
    before = editor_node.counters["frames_out"]
    case = dict(seed=0, restamp=False, stamp=None)
    for _ in range(2):
        msgs = _editor_messages(model, actor, case, target="none")
        for key in ("info", "depth", "model", "color"):
            getattr(editor_node, f"on_{key}")(msgs[key])
        assert editor_node.wait_idle(60.0)
    assert editor_node.counters["frames_out"] > before, editor_node.counters.snapshot()
