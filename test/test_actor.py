"""The synthetic actor's ground truth, its sensor model, and its RealSense recordings."""

import numpy as np
import pytest

from facediff_ros.synthetic.actor import ActorConfig, SensorNoise, SyntheticActor
from facediff_ros.core.camera import Intrinsics

SMALL = dict(num_frames=6, width=320, height=240, texture_size=256)


@pytest.fixture(scope="module")
def actor(model):
    return SyntheticActor(ActorConfig(seed=3, **SMALL), model=model)


def test_same_seed_same_frames_in_any_order(actor, model):
    again = SyntheticActor(ActorConfig(seed=3, **SMALL), model=model)
    later = actor.frame(4)
    actor.frame(1)
    for a, b in ((later, again.frame(4)), (actor.frame(4), later)):
        np.testing.assert_array_equal(a.color, b.color)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.expression, b.expression)
        np.testing.assert_array_equal(a.R, b.R)
    other = SyntheticActor(ActorConfig(seed=4, **SMALL), model=model).frame(4)
    assert not np.array_equal(other.identity, later.identity)
    assert np.mean(other.depth != later.depth) > 0.05


def test_ground_truth_is_consistent_with_the_model(actor, model):
    K = actor.intrinsics
    for i in (0, 5):
        f = actor.frame(i)
        assert f.color.shape == (240, 320, 3) and f.color.dtype == np.uint8
        assert f.depth.shape == (240, 320) and f.depth.dtype == np.uint16 and f.depth_scale == 0.001
        assert f.identity.shape == (30,) and f.expression.shape == (model.num_expression,)
        assert 0 <= f.expression.min() and f.expression.max() <= 1
        np.testing.assert_allclose(f.R @ f.R.T, np.eye(3), atol=1e-9)
        # Recompute the landmarks from the ground truth through the model: x_cam = R x + t.
        v = model.vertices(f.identity, f.expression)[model.landmarks68]
        np.testing.assert_allclose(f.landmarks_3d, v @ f.R.T + f.t, atol=1e-5)
        x, y, z = f.landmarks_3d.T
        np.testing.assert_allclose(f.landmarks_2d, np.stack([K.fx * x / z + K.cx, K.fy * y / z + K.cy], 1),
                                   atol=1e-3)
        assert 0.5 < np.median(z) < 0.75  # the face ~0.55-0.7 m away
        assert f.landmarks_visible.sum() >= 40 and f.head_mask.mean() > 0.03
        assert f.timestamp == pytest.approx(i / 30.0)


def test_depth_at_landmarks_matches_the_geometry_within_the_noise(actor):
    errors = []
    for i in range(0, 6, 2):
        f = actor.frame(i)
        u, v = np.rint(f.landmarks_2d[f.landmarks_visible]).astype(int).T
        d = f.depth[v, u] * f.depth_scale
        ok = d > 0
        assert ok.mean() > 0.7  # some fall into holes, shadows or grazing regions
        errors.append(np.abs(d[ok] - f.landmarks_3d[f.landmarks_visible][ok, 2]))
    err = np.concatenate(errors)
    # sigma(0.6 m) = 0.004 * 0.36 = 1.4 mm, 0.3 mm quantisation, plus the surface slope within half a pixel.
    assert np.median(err) < 0.003 and np.quantile(err, 0.9) < 0.01


def test_depth_noise_follows_the_configured_model(model):
    noise = SensorNoise(depth_sigma_at_1m=0.005, depth_smooth_fraction=0.0, holes_per_frame=0.0,
                        grazing_cos=0.0, ir_baseline_m=0.0, flying_prob=0.0)
    f = SyntheticActor(ActorConfig(seed=5, **SMALL, noise=noise), model=model).frame(2)
    wall = (f.depth_clean > 1.0) & (f.depth > 0)
    resid = f.depth[wall] * 0.001 - f.depth_clean[wall]
    z = f.depth_clean[wall]
    expected = np.sqrt(np.mean((0.005 * z ** 2) ** 2) + 0.001 ** 2 / 12)
    assert abs(resid.std() / expected - 1) < 0.1 and abs(resid.mean()) < 2e-4
    perfect = SyntheticActor(ActorConfig(seed=5, **SMALL, noise=SensorNoise.none()), model=model).frame(2)
    valid = perfect.depth_clean > 0
    diff = perfect.depth[valid].astype(int) - np.rint(perfect.depth_clean[valid] * 1000).astype(int)
    assert np.abs(diff).max() <= 1 and np.mean(diff != 0) < 1e-3  # float32 ties at half a millimetre


def test_sensor_artefacts_appear_where_a_realsense_puts_them(model):
    clean = SensorNoise.none()
    c = ActorConfig(seed=6, **SMALL, noise=clean)
    base = SyntheticActor(c, model=model).frame(1)
    shadowed = SyntheticActor(ActorConfig(seed=6, **SMALL, noise=SensorNoise(
        depth_sigma_at_1m=0.0, holes_per_frame=0.0, grazing_cos=0.0, flying_prob=0.0)), model=model).frame(1)
    lost = (base.depth > 0) & (shadowed.depth == 0)
    assert lost.sum() > 50
    # The stereo shadow falls mostly on the wall just left of the head (a little on the face: nose, ears).
    assert (lost & base.head_mask).sum() < 0.3 * lost.sum()
    rows = np.nonzero(base.head_mask.any(1))[0]
    left = right = 0
    for r in rows:
        cols = np.nonzero(base.head_mask[r])[0]
        left += lost[r, max(cols[0] - 6, 0):cols[0]].sum()
        right += lost[r, cols[-1] + 1:cols[-1] + 7].sum()
    assert left > 5 * max(right, 1)
    holes = SyntheticActor(ActorConfig(seed=6, **SMALL, noise=SensorNoise(
        depth_sigma_at_1m=0.0, holes_per_frame=20.0, ir_baseline_m=0.0, grazing_cos=0.0, flying_prob=0.0)),
        model=model).frame(1)
    assert ((holes.depth == 0) & (base.depth > 0)).mean() > 0.002


def test_config_validation_and_json_round_trip():
    c = ActorConfig(seed=2, num_frames=3, intrinsics=Intrinsics(300.0, 300.0, 150.0, 100.0, 320, 200),
                    expression_schedule=(("happy", 0.8), ("sad", 0.5)))
    assert ActorConfig.from_json(c.to_json()) == c
    for bad in (dict(num_frames=0), dict(fps=0), dict(distance_m=1.3), dict(identity_modes=101),
                dict(expression_schedule=(("joyful", 1.0),)), dict(expression_schedule=(("happy", 2.0),)),
                dict(speech_jaw=1.5), dict(noise="realsense")):
        with pytest.raises(ValueError):
            ActorConfig(**bad)
    for bad in (dict(depth_sigma_at_1m=-1.0), dict(hole_radius_px=(3.0, 1.0)), dict(max_depth_m=100.0)):
        with pytest.raises(ValueError):
            SensorNoise(**bad)


def test_frame_index_is_checked(actor):
    for bad in (-1, 6, 2.5):
        with pytest.raises(ValueError, match="index"):
            actor.frame(bad)


def test_recording_round_trip(actor, tmp_path):
    pytest.importorskip("pyrealsense2")
    from facediff_ros.synthetic.recording import load_ground_truth, play_recording, write_recording
    rec, gt_path = write_recording(tmp_path / "clip.db3", actor, num_frames=5)
    assert rec.is_file() and gt_path.name == "clip.gt.npz"
    frames = [actor.frame(i) for i in range(5)]
    played = list(play_recording(rec))
    assert len(played) == 5
    for f, p in zip(frames, played):
        assert p.timestamp == pytest.approx(f.timestamp, abs=1e-6)
        np.testing.assert_array_equal(p.color, f.color)
        np.testing.assert_array_equal(p.depth_mm, f.depth)
        assert p.depth_scale == pytest.approx(0.001)
        K, Kp = f.intrinsics, p.intrinsics
        assert (Kp.width, Kp.height) == (K.width, K.height)
        np.testing.assert_allclose([Kp.fx, Kp.fy, Kp.cx, Kp.cy], [K.fx, K.fy, K.cx, K.cy], rtol=1e-6)
    gt = load_ground_truth(rec)
    np.testing.assert_array_equal(gt["frame"], np.arange(5))
    np.testing.assert_allclose(gt["landmarks_3d"], np.stack([f.landmarks_3d for f in frames]))
    np.testing.assert_array_equal(gt["landmarks_visible"], np.stack([f.landmarks_visible for f in frames]))
    np.testing.assert_allclose(gt["R"], np.stack([f.R for f in frames]))
    assert list(gt["category"]) == [f.category for f in frames]
    assert ActorConfig.from_json(str(gt["config_json"])) == actor.config
    # Real-time pacing drops nothing; rs.align over the registered depth only adds holes.
    assert len(list(play_recording(rec, realtime=True))) == 5
    for f, p in zip(frames, play_recording(rec, force_rs_align=True)):
        both = (p.depth_mm > 0) & (f.depth > 0)
        assert both.sum() > 0.85 * (f.depth > 0).sum()
        assert (p.depth_mm[both] == f.depth[both]).mean() > 0.95
    with pytest.raises(FileExistsError):
        write_recording(rec, actor, num_frames=2)
    with pytest.raises(ValueError, match="db3"):
        write_recording(tmp_path / "clip.bag", actor, num_frames=2)
    with pytest.raises(ValueError, match="path"):
        next(play_recording(tmp_path / "missing.db3"))
