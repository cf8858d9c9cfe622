"""The editor's training pairs: layout, determinism, what source and target share, the cache."""

import time

import numpy as np
import pytest

from facediff_ros.core.face.expressions import CATEGORIES
from facediff_ros.synthetic import editor_data
from facediff_ros.synthetic.editor_data import PairConfig, PairGenerator

CONFIG = PairConfig(seed=7, pairs_per_identity=2)


@pytest.fixture(scope="module")
def gen(model):
    return PairGenerator(CONFIG, model)


@pytest.fixture(scope="module")
def pairs(gen):
    return [gen.pair(i) for i in range(6)]


def test_a_pair_has_the_network_layout(pairs):
    for p in pairs:
        assert p["source"].shape == (4, 64, 64) and p["target"].shape == (4, 64, 64)
        assert p["buffers"].shape == (8, 64, 64)
        assert p["mask"].shape == (64, 64) and p["source_valid"].shape == (64, 64)
        for k in editor_data.ARRAY_KEYS:
            assert p[k].dtype == np.float32 and np.all(np.isfinite(p[k])), k
        for k in ("source", "target", "buffers"):
            assert np.abs(p[k]).max() <= 1.0, k
        assert 0 <= p["mask"].min() and p["mask"].max() <= 1
        assert set(np.unique(p["source_valid"])) <= {0.0, 1.0}
        assert isinstance(p["category"], int) and 0 <= p["category"] < len(CATEGORIES)
        assert 0.3 <= p["intensity"] <= 1.0
        assert 0.45 <= p["z_centre"] <= 0.9 + 0.01  # the fitted centre: within a fitting error
        assert set(np.unique(p["buffers"][7])) <= {-1.0, 0.0, 1.0}


def test_pairs_are_deterministic_per_seed_and_index(gen, pairs, model):
    fresh = PairGenerator(CONFIG, model)
    again = fresh.pair(3)  # first call of a new generator, in another order
    for k in editor_data.ARRAY_KEYS + editor_data.SCALAR_KEYS:
        np.testing.assert_array_equal(again[k], pairs[3][k], err_msg=k)
    np.testing.assert_array_equal(gen.pair(3)["source"], pairs[3]["source"])  # after other indices
    assert not np.array_equal(pairs[2]["source"], pairs[3]["source"])
    other = PairGenerator(PairConfig(seed=8, pairs_per_identity=2), model).pair(3)
    assert np.mean(np.abs(other["target"] - pairs[3]["target"])) > 0.05


def test_faces_are_centred_and_fill_the_crop(pairs):
    for p in pairs:
        m = p["mask"]
        assert m[24:40, 24:40].mean() > 0.95  # the landmark centre is in the middle
        assert 0.3 < m.mean() < 0.97


def test_source_is_noisy_target_is_clean_same_scene(pairs):
    for p in pairs:
        s, t, m = p["source"], p["target"], p["mask"]
        face = m >= 1.0
        valid = p["source_valid"] > 0
        assert valid[face].mean() > 0.6  # holes, but mostly depth
        # Same scene: where both show the face with depth, the depths agree to the sensor's noise
        # (sigma 4 mm z^2: 3.2 mm at 0.9 m, a median |error| of ~2.2 mm) plus what the expression
        # moved: median over the face < 4.2 mm (0.035 normalised; 1-3 mm measured).
        both = face & valid
        assert np.median(np.abs(s[3][both] - t[3][both])) < 0.035
        # Background far from the head: the same wall under the same light, noise aside.
        bg = (m == 0) & (p["buffers"][7] < 0)
        if bg.sum() > 100:
            assert np.median(np.abs(s[:3][:, bg] - t[:3][:, bg])) < 0.06
    # Some source in these pairs has holes on the face (dropout, grazing, stereo shadow).
    assert min(np.mean(p["source_valid"][p["mask"] >= 1]) for p in pairs) < 0.995


def test_warped_colour_is_aligned_with_the_target(pairs):
    """On the pixels the warp fills, the warped source colour is the target's colour up to noise,
    shading change and the fitting error; shifting it by 3 px makes it clearly worse."""
    for p in pairs:
        b, t = p["buffers"], p["target"]
        on = b[7] > 0
        assert on.sum() > 0.5 * (p["mask"] >= 1).sum()
        err = np.abs(b[:3][:, on] - t[:3][:, on]).mean()
        shifted = np.roll(b[:3], 3, axis=2)
        on_s = on & np.roll(on, 3, axis=1)
        err_s = np.abs(shifted[:, on_s] - t[:3][:, on_s]).mean()
        assert err < 0.1 and err < 0.8 * err_s, (err, err_s)


def test_the_cache_writes_resumes_and_loads(tmp_path, gen, pairs, model):
    lines = []
    folder = editor_data.write_cache(tmp_path, 3, CONFIG, shard_size=2, model=model, log=lines.append)
    shards = sorted(folder.glob("*.npz"))
    assert [s.name for s in shards] == [editor_data.shard_name(7, 0), editor_data.shard_name(7, 2)]
    assert (folder / "config.json").exists() and any("pairs 3/3" in s for s in lines)
    loaded = list(editor_data.iter_cache(folder))
    assert [len(s["index"]) for s in loaded] == [2, 1]
    for shard in loaded:
        for j, i in enumerate(shard["index"]):
            for k in editor_data.ARRAY_KEYS:
                assert shard[k].dtype == np.float32
                np.testing.assert_allclose(shard[k][j], pairs[i][k], atol=1e-3, err_msg=k)  # float16
            assert shard["category"][j] == pairs[i]["category"]
            assert shard["intensity"][j] == pytest.approx(pairs[i]["intensity"])
    mtimes = [s.stat().st_mtime_ns for s in shards]
    again = editor_data.write_cache(tmp_path, 3, CONFIG, shard_size=2, model=model)
    assert again == folder and [s.stat().st_mtime_ns for s in shards] == mtimes  # nothing redone


def test_preview_grid(tmp_path, pairs):
    img = editor_data.preview_image(pairs[:2], zoom=2)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[1] == 6 * 66 * 2
    assert img.shape[0] == 18 + 2 * (18 + 66 * 2)


def test_time_per_pair(gen, capsys):
    with pytest.raises(ValueError, match="index"):
        gen.pair(-1)
    gen.pair(40)  # its identity's texture
    t0 = time.perf_counter()
    gen.pair(41)
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\neditor pair: {1000 * dt:.0f} ms (texture shared with the previous pair)")
    assert dt < 2.0  # generous: the machine is shared


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="distance_m"):
        PairConfig(distance_m=(0.9, 0.4))
    with pytest.raises(ValueError, match="pairs_per_identity"):
        PairConfig(pairs_per_identity=0)
