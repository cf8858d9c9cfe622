"""Expression categories: ranges, linearity, blending, projection round trip, bad input."""

import numpy as np
import pytest

from facediff_ros.core.face import expressions as ex


@pytest.fixture(scope="module")
def names(model):
    return model.expression_names


def test_categories_follow_message_constants():
    # ExpressionTarget.msg: NEUTRAL=0, HAPPY=1, SAD=2, SURPRISED=3, ANGRY=4, DISGUSTED=5, FEARFUL=6.
    from pathlib import Path
    msg = (Path(__file__).resolve().parents[1] / "msg" / "ExpressionTarget.msg").read_text()
    consts = {}
    for line in msg.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "uint8" and parts[2] == "=":
            consts[parts[1].lower()] = int(parts[3])
    assert consts == {c: i for i, c in enumerate(ex.CATEGORIES)}
    for i, c in enumerate(ex.CATEGORIES):
        assert ex.category_index(c) == i == ex.category_index(i) == ex.category_index(c.upper())


@pytest.mark.parametrize("cat", ex.CATEGORIES)
def test_weights_in_unit_range_and_linear(names, cat):
    w1 = ex.category_weights(names, cat, 1.0)
    assert w1.shape == (len(names),) and w1.dtype == np.float32
    assert w1.min() >= 0.0 and w1.max() <= 1.0
    assert not np.any(ex.category_weights(names, cat, 0.0))
    for s in (0.25, 0.5, 0.8):
        np.testing.assert_allclose(ex.category_weights(names, cat, s), s * w1, atol=1e-7)
    if cat != "neutral":
        assert np.count_nonzero(w1) >= 2


def test_prototypes_use_the_readme_action_units(names):
    """Spot-check the AU -> shape mapping of the upstream README for each category."""
    def w(cat, name):
        return ex.category_weights(names, cat)[names.index(name)]
    assert w("happy", "mouthSmile_L") > 0.5 and w("happy", "cheekSquint_R") > 0.3        # AU12, AU6
    assert w("sad", "browInnerUp_L") > 0.5 and w("sad", "mouthFrown_R") > 0.5           # AU1, AU15
    assert w("surprised", "browOuterUp_R") > 0.5 and w("surprised", "jawOpen") > 0.2    # AU2, AU26
    assert w("angry", "browDown_L") > 0.5 and w("angry", "mouthPress_L") > 0.3          # AU4, AU24
    assert w("disgusted", "noseSneer_L") > 0.5 and w("disgusted", "mouthLowerDown_R") > 0.2  # AU9, AU16
    assert w("fearful", "mouthStretch_L") > 0.5 and w("fearful", "eyeWide_R") > 0.5     # AU20, AU5
    # Left and right agree for every paired shape.
    for cat in ex.CATEGORIES:
        v = ex.category_weights(names, cat)
        for i, n in enumerate(names):
            if n.endswith("_L"):
                assert v[i] == v[names.index(n[:-2] + "_R")]


def test_blend_endpoints_and_convexity(names):
    a, b = ex.category_weights(names, "happy"), ex.category_weights(names, "surprised")
    np.testing.assert_allclose(ex.blend(names, "happy", "surprised", 0.0), a, atol=1e-7)
    np.testing.assert_allclose(ex.blend(names, "happy", "surprised", 1.0), b, atol=1e-7)
    mid = ex.blend(names, 1, 3, 0.3, intensity=0.5)
    np.testing.assert_allclose(mid, 0.5 * (0.7 * a + 0.3 * b), atol=1e-6)
    assert mid.min() >= 0 and mid.max() <= 1


@pytest.mark.parametrize("cat", ex.CATEGORIES)
def test_nearest_category_round_trip(names, cat):
    for s in np.linspace(0.4, 1.0, 7):
        got, s_hat = ex.nearest_category(names, ex.category_weights(names, cat, s))
        assert got == cat
        if cat == "neutral":
            assert s_hat == 0.0
        else:
            assert s_hat == pytest.approx(s, abs=1e-5)


def test_nearest_category_with_noise_and_extra_shapes(names):
    rng = np.random.default_rng(0)
    for cat in ex.CATEGORIES[1:]:
        w = ex.category_weights(names, cat, 0.8) + rng.uniform(0, 0.03, len(names))
        got, s = ex.nearest_category(names, np.clip(w, 0, 1))
        assert got == cat and abs(s - 0.8) < 0.1
    assert ex.nearest_category(names, np.zeros(len(names))) == ("neutral", 0.0)


def test_bad_inputs(names):
    with pytest.raises(ValueError, match="category"):
        ex.category_weights(names, "bored")
    with pytest.raises(ValueError, match="category"):
        ex.category_weights(names, 7)
    with pytest.raises(ValueError, match="intensity"):
        ex.category_weights(names, "happy", 1.5)
    with pytest.raises(ValueError, match="intensity"):
        ex.category_weights(names, "happy", float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        ex.blend(names, "happy", "sad", -0.1)
    with pytest.raises(ValueError, match="names"):
        ex.category_weights([n for n in names if n != "jawOpen"], "happy")
    with pytest.raises(ValueError, match="weights"):
        ex.nearest_category(names, np.zeros(3))
