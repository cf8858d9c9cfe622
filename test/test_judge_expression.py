"""Expression judge: classification of weight vectors, re-fit of actor frames, identity distances."""

import numpy as np
import pytest

from facediff_ros.core.face import expressions
from facediff_ros.core.face.morphable_model import MorphableModel
from facediff_ros.judges.expression import (NEUTRAL_BELOW, ExpressionJudge, classify,
                                            identity_coefficient_distance)
from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor


@pytest.fixture(scope="module")
def names():
    return list(MorphableModel.load().expression_names)


@pytest.mark.parametrize("category", expressions.CATEGORIES[1:])
def test_a_prototype_at_any_clear_intensity_is_its_category(names, category):
    for s in (0.4, 0.8, 1.0):
        w = expressions.category_weights(names, category, s)
        cat, got = classify(names, w)
        assert cat == category
        assert got == pytest.approx(s, abs=1e-6)


def test_short_projections_are_neutral(names):
    assert classify(names, np.zeros(len(names))) == ("neutral", 0.0)
    p = expressions.category_weights(names, "happy", 1.0)
    length = float(np.linalg.norm(p))
    # Just below / above the threshold length along the happy ray.
    assert classify(names, p * (0.9 * NEUTRAL_BELOW / length))[0] == "neutral"
    assert classify(names, p * (1.1 * NEUTRAL_BELOW / length))[0] == "happy"
    # Small noise on every shape (a fit of a neutral face) stays neutral.
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(0, 0.02, len(names)), 0, 1)
    assert classify(names, noise)[0] == "neutral"


def test_identity_coefficient_distance_pads_the_shorter():
    assert identity_coefficient_distance([3.0, 4.0], [0.0, 0.0, 0.0]) == pytest.approx(5.0)
    assert identity_coefficient_distance([1.0, 2.0, 2.0], [1.0]) == pytest.approx(np.sqrt(8.0))


@pytest.fixture(scope="module")
def judge():
    j = ExpressionJudge()
    yield j
    j.close()


def _frame(seed, category, intensity, index=5):
    cfg = ActorConfig(seed=seed, num_frames=10, speech_jaw=0, blink_rate_hz=0, texture_size=256,
                      expression_schedule=((category, intensity),))
    return SyntheticActor(cfg).frame(index)


def test_refit_reads_clear_expressions_and_the_identity(judge):
    # Happy and disgusted re-fit at 0.4-0.9 intensity on held-out actors (the least shrunk
    # categories); neutral projects well below the threshold.
    for seed, category, intensity in ((31, "happy", 1.0), (32, "disgusted", 1.0), (33, "neutral", 0.0)):
        f = _frame(seed, category, intensity)
        r = judge.read(f.color, f.intrinsics, f.depth)
        assert r.ok, r.reason
        assert r.category == category, (seed, r.category, r.intensity)
        # The re-fitted identity is the actor's: a single-frame fit lies ~1-2 mm from the truth,
        # another person ~4-6 mm (tracker's identity-switch measurements).
        assert judge.identity_distance_mm(r.identity, f.identity) < 2.5
    other = _frame(34, "neutral", 0.0)
    assert judge.identity_distance_mm(r.identity, other.identity) > 3.0


def test_identity_distance_mm_against_the_model(judge):
    m = judge.model
    ids = m.vertex_ids(("narrow_face",))
    a = np.zeros(m.num_identity, np.float32)
    b = a.copy()
    b[0] = 1.0
    va = m.vertices(a, vertex_ids=ids).astype(np.float64)
    vb = m.vertices(b, vertex_ids=ids).astype(np.float64)
    expect = 1e3 * np.linalg.norm((va - va.mean(0)) - (vb - vb.mean(0)), axis=1).mean()
    assert judge.identity_distance_mm(a, b) == pytest.approx(expect, rel=1e-5)
    assert judge.identity_distance_mm(a, a) == 0.0


def test_no_face_and_bad_input(judge):
    f = _frame(31, "neutral", 0.0)
    r = judge.read(np.zeros_like(f.color), f.intrinsics, None)
    assert not r.ok and "no face" in r.reason and r.category is None
    with pytest.raises(ValueError, match="uint8"):
        judge.read(f.color.astype(np.float32), f.intrinsics)
    with pytest.raises(ValueError, match="depth_mm"):
        judge.read(f.color, f.intrinsics, f.depth.astype(np.float32))
