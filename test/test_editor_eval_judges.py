"""The editor evaluation's new metrics on a tiny set: SSIM, the sequence judges and flicker, photos."""

import numpy as np
import pytest

from facediff_ros.synthetic import editor_eval, editor_sequences
from facediff_ros.synthetic.editor_sequences import SequenceConfig


def test_ssim_of_constant_images_has_its_closed_form():
    # Constant images: no variance, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1) everywhere.
    a, b = 0.3, 0.7
    got = editor_eval.ssim_map(np.full((20, 24), a), np.full((20, 24), b))
    c1 = 0.01 ** 2
    np.testing.assert_allclose(got, (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-9)
    x = np.random.default_rng(0).random((32, 32))
    np.testing.assert_allclose(editor_eval.ssim_map(x, x), 1.0, atol=1e-9)
    assert editor_eval.ssim_map(x, 1 - x).mean() < 0


def test_crop_metrics_are_deterministic_with_ssim_on_two_pairs():
    a = editor_eval.evaluate(None, pairs=2, seed=1)
    b = editor_eval.evaluate(None, pairs=2, seed=1)
    for name in ("no_edit", "model_only"):
        assert a["methods"][name] == b["methods"][name]
        assert 0 < a["methods"][name]["ssim"] <= 1
    # No edit of a pair whose target differs from its source cannot be perfect.
    assert a["methods"]["no_edit"]["ssim"] < 1


def test_plan_cycles_targets_and_never_keeps_the_source():
    plan = editor_sequences.sequence_plan(SequenceConfig(sequences=9))
    assert [p["target"][0] for p in plan[:7]] == list(editor_sequences.CATEGORIES)
    assert plan[7]["target"][0] == "neutral"
    for p in plan:
        assert p["source"][0] != p["target"][0]
        assert (p["target"][1] == 0.0) == (p["target"][0] == "neutral")
        assert p["target"][0] == "neutral" or 0.6 <= p["target"][1] <= 1.0
    assert plan == editor_sequences.sequence_plan(SequenceConfig(sequences=9))
    with pytest.raises(ValueError, match="targets"):
        SequenceConfig(targets=("smug",))
    with pytest.raises(ValueError, match="frames"):
        SequenceConfig(frames=1)


@pytest.fixture(scope="module")
def baselines():
    cfg = SequenceConfig(sequences=1, frames=2, targets=("happy",))
    return cfg, editor_sequences.evaluate_sequences(None, cfg, keep_frames=True)


def test_sequence_judges_on_the_baselines(baselines):
    cfg, s = baselines
    m = s["methods"]
    assert set(m) == {"no_edit", "model_only", "truth"}
    # The source against itself: dlib distance 0; the truth (same person, a smile, no sensor noise)
    # and the model-only warp stay the same person for dlib.
    assert m["no_edit"]["dlib_source"] == 0.0
    assert 0 < m["truth"]["dlib_source"] < 0.6 and 0 < m["model_only"]["dlib_source"] < 0.6
    # The re-fit reads the target on the truth and on the model-only warp, not on the source.
    assert m["truth"]["expression_accuracy"] == 1.0
    assert m["model_only"]["expression_accuracy"] == 1.0
    assert m["no_edit"]["expression_accuracy"] == 0.0
    assert m["truth"]["read_as"]["happy"] == 2
    # The re-fitted identity is the actor's (single-frame fits: ~1-2 mm).
    for name in m:
        assert m[name]["identity_truth_mm"] < 2.5
    # Truth against itself is not scored.
    assert m["truth"]["psnr_db"] is None and m["truth"]["flicker_rgb"] is None


def test_flicker_and_psnr_recomputed_from_the_actor_frames(baselines):
    cfg, s = baselines
    item = s["plan"][0]
    src_actor, tgt_actor = editor_sequences._actors(item, cfg)
    i0, i1 = cfg.start, cfg.start + 1
    s0, s1 = src_actor.frame(i0), src_actor.frame(i1)
    t0, t1 = tgt_actor.frame(i0), tgt_actor.frame(i1)
    np.testing.assert_array_equal(s["_frames"][0]["no_edit"][1], s1.color)
    face = t0.head_mask & t1.head_mask
    change = (s1.color.astype(float) - s0.color) - (t1.color.astype(float) - t0.color)
    expect = np.abs(change)[face].mean()
    assert s["methods"]["no_edit"]["flicker_rgb"] == pytest.approx(expect, rel=1e-9)
    # Truth frames are clean and the source's are not: the no-edit flicker is at least the noise.
    assert expect > 1.0
    psnr = []
    for src, tru in ((s0, t0), (s1, t1)):
        err = (src.color.astype(float) - tru.color)[tru.head_mask] / 255.0
        psnr.append(10 * np.log10(1 / np.mean(err ** 2)))
    assert s["methods"]["no_edit"]["psnr_db"] == pytest.approx(np.mean(psnr), rel=1e-9)
    # The warp follows the target: closer to the truth than no edit.
    assert s["methods"]["model_only"]["psnr_db"] > s["methods"]["no_edit"]["psnr_db"]


def test_the_truth_shares_the_sources_person_light_and_motion(baselines):
    cfg, s = baselines
    src_actor, tgt_actor = editor_sequences._actors(s["plan"][0], cfg)
    np.testing.assert_array_equal(src_actor.identity, tgt_actor.identity)
    assert src_actor.lighting == tgt_actor.lighting
    for i in (cfg.start, cfg.start + 1):
        R0, t0 = src_actor.pose(i)
        R1, t1 = tgt_actor.pose(i)
        np.testing.assert_array_equal(R0, R1)
        np.testing.assert_array_equal(t0, t1)
