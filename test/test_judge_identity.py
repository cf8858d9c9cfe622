"""Identity judge (dlib embeddings): ordering on synthetic actors, no face -> None, bad input."""

import numpy as np
import pytest

from facediff_ros.judges.identity import SAME_PERSON_DISTANCE, IdentityJudge, models_dir
from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor


def _still(seed: int, category: str, intensity: float, index: int = 20) -> np.ndarray:
    """A frontal, still, silent actor frame (seeded identity) at one expression; uint8 RGB."""
    cfg = ActorConfig(seed=seed, num_frames=30, yaw_amp=0, pitch_amp=0, roll_amp=0, sway_m=0, speech_jaw=0,
                      blink_rate_hz=0, expression_schedule=((category, intensity),))
    return SyntheticActor(cfg).frame(index).color


@pytest.fixture(scope="module")
def judge():
    return IdentityJudge()


@pytest.fixture(scope="module")
def faces():
    # Three identities, each neutral and with a half smile.
    return {s: (_still(s, "neutral", 0.0), _still(s, "happy", 0.5)) for s in (1, 3, 4)}


def test_models_found_without_importing_the_package():
    import sys

    folder = models_dir()
    assert (folder / "dlib_face_recognition_resnet_model_v1.dat").stat().st_size > 1_000_000
    assert "face_recognition_models" not in sys.modules


def test_same_person_at_two_expressions_is_closer_than_two_people(judge, faces):
    emb = {s: [judge.embed(img) for img in pair] for s, pair in faces.items()}
    for s, (a, b) in emb.items():
        assert a is not None and b is not None, f"no face found for actor {s}"
        assert a.shape == (128,) and np.all(np.isfinite(a))
    same = [judge.distance(a, b) for a, b in emb.values()]
    seeds = sorted(emb)
    cross = [judge.distance(emb[s][0], emb[u][0]) for i, s in enumerate(seeds) for u in seeds[i + 1:]]
    assert max(same) < min(cross), (same, cross)
    assert max(same) < SAME_PERSON_DISTANCE


def test_distance_is_a_metric_on_descriptors(judge, faces):
    a = judge.embed(faces[1][0])
    b = judge.embed(faces[3][0])
    assert judge.distance(a, a) == 0.0
    assert judge.distance(a, b) == pytest.approx(judge.distance(b, a))
    assert judge.distance(a, b) == pytest.approx(float(np.sqrt(np.sum((a - b) ** 2))))
    # Deterministic without jitter.
    np.testing.assert_array_equal(judge.embed(faces[1][0]), a)
    assert judge.distance_images(faces[1][0], faces[3][0]) == pytest.approx(judge.distance(a, b))


def test_detect_returns_a_box_on_the_face(judge, faces):
    img = faces[1][0]
    l, t, r, b = judge.detect(img)
    h, w = img.shape[:2]
    # The actor's face is centred in the image at ~0.62 m (about a fifth of the width wide).
    assert 0 <= l < w / 2 < r <= w and 0 <= t < h / 2 < b <= h
    assert 0.1 * w < r - l < 0.5 * w


def test_no_face_gives_none(judge, faces):
    blank = np.zeros((240, 320, 3), np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert judge.detect(blank) is None
    assert judge.embed(blank) is None
    assert judge.embed(noise) is None
    assert judge.distance_images(blank, faces[1][0]) is None
    assert judge.distance_images(faces[1][0], blank) is None


def test_bad_input_names_the_problem(judge):
    with pytest.raises(ValueError, match="uint8"):
        judge.embed(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        judge.embed(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="box"):
        judge.embed(np.zeros((64, 64, 3), np.uint8), box=(10, 10, 5, 20))
    with pytest.raises(ValueError, match=r"\(128,\)"):
        judge.distance(np.zeros(128), np.zeros(64))
    with pytest.raises(ValueError, match="landmarks"):
        IdentityJudge(landmarks=7)
