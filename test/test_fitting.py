"""The fitting stage against independently known ground truth (the synthetic actor's parameters).

Landmarks here are the ground-truth mesh seen through the correspondence table (projected, with
pixel noise where stated, and lifted from the sensor's noisy depth by the package's own lifting):
the fitter's accuracy without MediaPipe's own error. ``python -m facediff_ros.synthetic.fitting_eval``
measures the whole path with MediaPipe.
"""

import numpy as np
import pytest

from facediff_ros.core.face.correspondence import Correspondence
from facediff_ros.core.face.morphable_model import rotation_matrix
from facediff_ros.core.fitting import energy
from facediff_ros.core.fitting.solver import rotation_log, schur_identity
from facediff_ros.core.fitting.texture import SubjectTexture
from facediff_ros.core.fitting.tracker import FaceTracker, FitResult, TrackerConfig
from facediff_ros.core.landmarks.lifting import lift_landmarks
from facediff_ros.synthetic.actor import ActorConfig, SensorNoise, SyntheticActor


@pytest.fixture(scope="module")
def corr():
    return Correspondence.load()


@pytest.fixture(scope="module")
def tracker(model, corr):
    return FaceTracker(TrackerConfig(), model, corr)


def _frames(model, corr, seed, n, noise: bool, pixel_sigma=0.0, start=0):
    """Actor frames as fitter inputs + ground truth."""
    cfg = ActorConfig(seed=seed, num_frames=start + n, keep_vertices=True,
                      noise=SensorNoise() if noise else SensorNoise.none())
    actor = SyntheticActor(cfg, model)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        f = actor.frame(i)
        lm = corr.points(f.vertices)  # (478, 3) the table's points on the true mesh
        uv = f.intrinsics.project(lm) + rng.normal(0, pixel_sigma, (478, 2)) if pixel_sigma else \
            f.intrinsics.project(lm)
        depth = f.depth.astype(np.float32) * np.float32(f.depth_scale)
        if noise:
            points, valid = lift_landmarks(uv, depth, f.intrinsics)
        else:
            points, valid = lm.astype(np.float64), np.ones(478, bool)
        out.append(dict(K=f.intrinsics, uv=uv, points=points, valid=valid, depth=depth, f=f,
                        color=f.color))
    return out


def _errors(model, r: FitResult, f):
    ids = model.vertex_ids(("narrow_face",))
    v = r.vertices(model, ids)
    return dict(vertex_mm=1e3 * np.linalg.norm(v - f.vertices[ids], axis=1).mean(),
                expr=np.abs(r.expression - f.expression).mean(),
                rot_deg=np.degrees(np.linalg.norm(rotation_log(r.R @ f.R.T))),
                trans_mm=1e3 * np.linalg.norm(r.t - f.t))


def _track(tracker, frames, mode="depth"):
    tracker.reset()
    results = []
    for fr in frames:
        pts = fr["points"] if mode != "colour" else None
        r = tracker.update(fr["K"], fr["uv"], pts, fr["valid"] if pts is not None else None,
                           fr["depth"] if mode == "depth" else None)
        results.append(r)
    return results


def _after_lock(model, frames, results):
    errs = [_errors(model, r, fr["f"]) for fr, r in zip(frames, results) if r.ok and r.identity_locked]
    assert errs, "the identity never locked"
    return {k: float(np.mean([e[k] for e in errs])) for k in errs[0]}


@pytest.fixture(scope="module")
def clean_frames(model, corr):
    return _frames(model, corr, seed=201, n=36, noise=False)


@pytest.fixture(scope="module")
def noisy_frames(model, corr):
    return _frames(model, corr, seed=202, n=36, noise=True, pixel_sigma=1.0)


# ---- the solver's maths ----------------------------------------------------------------------------
def test_rotation_log_inverts_rotation_matrix():
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.normal(0, 1, 3)
        w *= min(1.0, 3.0 / np.linalg.norm(w))  # angle < pi
        assert np.allclose(rotation_log(rotation_matrix(w)), w, atol=1e-6)
    assert np.allclose(rotation_log(np.eye(3)), 0)


def test_analytic_gradient_matches_finite_differences(model, corr, clean_frames):
    """g = J^T r of every term (3D, 2D, depth), w.r.t. pose, expression and identity, against
    central differences of the cost (all residuals inside the Huber region, so the cost is
    0.5 |r|^2 exactly)."""
    basis = energy.FaceBasis(model, corr, num_identity=10, num_dense=200)
    fr = clean_frames[3]
    tw = energy.TermWeights(huber=1e6, stable_3d_only=False)  # quadratic everywhere
    obs = energy.Observation(fr["uv"], fr["points"], fr["valid"], fr["depth"], fr["K"])
    obs = energy.select_landmarks(obs, basis.landmark_weight, tw.min_landmark_weight)
    rng = np.random.default_rng(1)
    R0 = rotation_matrix([0.01, -0.02, 0.015]) @ fr["f"].R
    t0 = fr["f"].t + [0.001, -0.002, 0.002]
    beta = np.clip(fr["f"].expression + rng.uniform(0, 0.05, 53), 0, 1)
    alpha = rng.normal(0, 0.3, 10)

    def cost(d):
        R = rotation_matrix(d[:3]) @ R0
        return energy.linearize(basis, obs, R, t0 + d[3:6], beta + d[6:59], alpha + d[59:], tw,
                                with_identity=True, jacobian=False).cost

    lin = energy.linearize(basis, obs, R0, t0, beta, alpha, tw, with_identity=True)
    assert lin.stats["n_3d"] > 100 and lin.stats["n_2d"] > 100 and lin.stats["n_depth"] > 50
    num = np.zeros(69)
    for i in range(69):
        h = 1e-6 if i < 6 else 1e-4
        e = np.zeros(69)
        e[i] = h
        num[i] = (cost(e) - cost(-e)) / (2 * h)
    # The depth term's association (the pixel a vertex projects to) is held fixed by the
    # Jacobian but not by the cost: small differences there, relative to the gradient's size.
    assert np.abs(lin.g - num).max() < 0.02 * np.abs(num).max()
    assert np.corrcoef(lin.g, num)[0, 1] > 0.999


def test_schur_complement_matches_a_direct_solve():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(30, 20))
    H = A.T @ A + np.eye(20)
    g = rng.normal(size=20)
    S, b = schur_identity(H, g, num_frames=2, nf=7)  # 14 frame unknowns, 6 shared
    full = np.linalg.solve(H, -g)
    assert np.allclose(np.linalg.solve(S, -b), full[14:])


# ---- recovery of known parameters -----------------------------------------------------------------
def test_recovers_known_parameters_noise_free(model, tracker, clean_frames):
    results = _track(tracker, clean_frames)
    assert all(r.ok for r in results)
    lock = next(i for i, r in enumerate(results) if r.identity_locked)
    assert lock <= 30  # within 1 s of frames at 30 Hz
    e = _after_lock(model, clean_frames, results)
    assert e["vertex_mm"] < 0.5 and e["expr"] < 0.03 and e["rot_deg"] < 0.5 and e["trans_mm"] < 1.0, e
    r = results[-1]
    assert r.terms_used == ("landmarks_3d", "landmarks_2d", "depth") and not r.scale_from_prior
    assert r.quality > 0.9 and r.residual_rms < 1e-3 and r.status == "tracking"
    assert set(r.timings) >= {"init", "solve", "identity", "total"}


def test_recovers_known_parameters_with_sensor_noise(model, tracker, noisy_frames):
    """Targets of the issue, with the actor's RealSense-like depth noise, holes and flying pixels,
    landmarks lifted by the package's lifting and 1 px landmark noise."""
    results = _track(tracker, noisy_frames)
    assert sum(r.ok for r in results) >= len(results) - 1
    e = _after_lock(model, noisy_frames, results)
    assert e["vertex_mm"] <= 1.5 and e["expr"] <= 0.08 and e["rot_deg"] <= 1.0 and e["trans_mm"] <= 2.0, e


def test_landmark_only_and_colour_only_modes(model, tracker, noisy_frames):
    r3 = _track(tracker, noisy_frames, "landmarks_3d")
    assert r3[-1].terms_used == ("landmarks_3d", "landmarks_2d") and not r3[-1].scale_from_prior
    e3 = _after_lock(model, noisy_frames, r3)
    # Without the depth term the pose rests on landmarks weighted for the depth mode: ~2 deg.
    assert e3["vertex_mm"] < 3.0 and e3["rot_deg"] < 3.0, e3
    rc = _track(tracker, noisy_frames, "colour")
    assert rc[-1].ok and rc[-1].terms_used == ("landmarks_2d",) and rc[-1].scale_from_prior
    ec = _after_lock(model, noisy_frames, rc)
    # Scale from the prior: centimetre-level depth error is expected; the pose still holds.
    assert ec["rot_deg"] < 3.0 and ec["expr"] < 0.08, ec
    assert np.isfinite(rc[-1].residual_rms)


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_input_gives_lost_results_or_value_errors(model, corr, clean_frames):
    tr = FaceTracker(TrackerConfig(), model, corr)
    fr = clean_frames[0]
    K, uv, pts, valid, depth = fr["K"], fr["uv"], fr["points"], fr["valid"], fr["depth"]
    nan_uv = np.full((478, 2), np.nan)
    r = tr.update(K, nan_uv, np.full((478, 3), np.nan), np.zeros(478, bool), depth)
    assert not r.ok and r.status == "lost" and "too few" in r.reason and r.quality == 0
    few = uv.copy()
    few[25:] = np.nan
    assert tr.update(K, few, None, None, depth).status == "lost"
    # All 3D points invalid and NaN depth: a colour-only fit, said so.
    r = tr.update(K, uv, np.full((478, 3), np.nan), np.zeros(478, bool), np.full(K.shape, np.nan, np.float32))
    assert r.ok and r.terms_used == ("landmarks_2d",) and r.scale_from_prior
    # All-zero depth (uint16 mm): no depth term, the 3D landmarks still used.
    r = tr.update(K, uv, pts, valid, np.zeros(K.shape, np.uint16))
    assert r.ok and "depth" not in r.terms_used and "landmarks_3d" in r.terms_used
    # Garbage landmarks (all at one pixel): degenerate, lost or low quality, never an exception.
    tr.reset()
    r = tr.update(K, np.full((478, 2), 100.0), np.full((478, 3), 0.5), np.ones(478, bool), depth)
    assert isinstance(r, FitResult)
    # A face outside the depth range (every point far away): handled, no exception.
    r = tr.update(K, uv, pts * 20, valid, depth)
    assert isinstance(r, FitResult)
    bad = [dict(uv=uv[:477]), dict(points=pts[:, :2]), dict(valid=valid[:10]), dict(depth=depth[:100]),
           dict(depth=depth.astype(np.complex64)), dict(intrinsics="K"),
           dict(uv=np.array(["a"] * 956).reshape(478, 2))]
    for b in bad:
        args = dict(intrinsics=K, uv=uv, points=pts, valid=valid, depth=depth)
        args.update(b)
        with pytest.raises(ValueError):
            tr.update(**args)


def test_reinitialises_after_the_face_is_lost(model, corr, clean_frames):
    tr = FaceTracker(TrackerConfig(reset_after_lost=5), model, corr)
    _ = [tr.update(fr["K"], fr["uv"], fr["points"], fr["valid"], fr["depth"]) for fr in clean_frames[:30]]
    assert tr.identity_locked
    K = clean_frames[0]["K"]
    for i in range(5):
        r = tr.update(K, np.full((478, 2), np.nan))
        assert r.status == "lost"
    assert not tr.identity_locked and not r.identity_locked
    fr = clean_frames[31]
    r = tr.update(fr["K"], fr["uv"], fr["points"], fr["valid"], fr["depth"])  # cold start, same person
    assert r.ok and r.status == "initialising"
    assert _errors(model, r, fr["f"])["rot_deg"] < 1.0


def test_a_different_person_unlocks_the_identity(model, corr, clean_frames):
    tr = FaceTracker(TrackerConfig(refine_every=3, identity_switch_checks=2), model, corr)
    _ = [tr.update(fr["K"], fr["uv"], fr["points"], fr["valid"], fr["depth"]) for fr in clean_frames[:30]]
    assert tr.identity_locked
    first = tr.alpha.copy()
    other = _frames(model, corr, seed=203, n=40, noise=False)
    unlocked_at = None
    results = []
    for i, fr in enumerate(other):
        r = tr.update(fr["K"], fr["uv"], fr["points"], fr["valid"], fr["depth"])
        results.append(r)
        if unlocked_at is None and not tr.identity_locked:
            unlocked_at = i
    assert unlocked_at is not None and unlocked_at <= 9, unlocked_at  # 2 checks, 3 frames apart
    assert tr.identity_locked  # locked again on the new person
    assert np.linalg.norm(tr.alpha - first) > 1.0
    e = _errors(model, results[-1], other[-1]["f"])
    assert e["vertex_mm"] < 1.0, e  # the previous identity would be ~5 mm off
    # The same person does not trip the test.
    tr2 = FaceTracker(TrackerConfig(refine_every=3, identity_switch_checks=2), model, corr)
    for fr in clean_frames:
        tr2.update(fr["K"], fr["uv"], fr["points"], fr["valid"], fr["depth"])
    assert tr2.identity_locked and tr2.last_identity_distance_mm < 2.0  # threshold 3 mm


def test_tracker_config_is_validated():
    for bad in (dict(num_identity=0), dict(refine_forget=0.0), dict(min_quality=0.9, good_quality=0.5),
                dict(num_dense=-1), dict(track_iterations=1.5)):
        with pytest.raises(ValueError):
            TrackerConfig(**bad)
    with pytest.raises(ValueError):
        energy.TermWeights(pixel_sigma_px=0)


# ---- texture --------------------------------------------------------------------------------------
def test_subject_texture_recovers_the_albedo(model, tracker, clean_frames):
    """An unlit render shows the albedo itself: the fused texture of fitted frames must match it."""
    from facediff_ros.core.render import textures as tx
    from facediff_ros.core.render.renderer import Lighting, Renderer
    S = 256
    actor_albedo = tx.procedural_texture(model, np.random.default_rng(5), S)
    sub = SubjectTexture(model, size=S)
    results = _track(tracker, clean_frames)
    K = clean_frames[0]["K"]
    ren = Renderer(K)
    added = 0
    for fr, r in list(zip(clean_frames, results))[-12::4]:
        v = fr["f"].vertices
        buf = ren.render(v, sub.triangles, sub.tri_uvs, actor_albedo,
                         lighting=Lighting(ambient=1.0, diffuse=0.0))
        img = np.where(buf.mask[..., None], buf.color, 0.0).astype(np.float32)
        added += sub.add(img, r, K)
    assert added == 3 and sub.frames == 3
    tex, observed = sub.texture()
    w = sub.weight
    seen = w > 0.5
    assert seen.sum() > 2000
    err = np.abs(tex - actor_albedo)[seen]
    # The fit is within ~0.2 mm: colours land on the right texels up to bilinear resampling.
    assert err.mean() < 0.03, err.mean()
    lost = FitResult(False, "lost", "x", r.identity, r.expression, r.R, r.t, float("nan"), 0.0, True, ())
    assert not sub.add(img, lost, K)
    with pytest.raises(ValueError):
        SubjectTexture(model, size=256).texture()


def test_targets_with_mediapipe_landmarks(model, corr, tracker):
    """The whole per-frame path on a held-out actor: MediaPipe face mesh on the rendered colour,
    the package's lifting on the noisy depth, then the tracker (fitting_eval's code, one short
    sequence): the issue's accuracy targets after the identity lock."""
    from facediff_ros.synthetic import fitting_eval as fe
    actor = SyntheticActor(ActorConfig(seed=104, num_frames=40, keep_vertices=True), model)
    inputs = fe.sequence_inputs(actor, corr, "mediapipe", 104)
    res = fe.run_mode(tracker, inputs, "depth", model, model.vertex_ids(("face",)),
                      model.vertex_ids(("narrow_face",)))
    assert res["lost_frames"] == 0 and res["lock_frame"] <= 30 and res["frames_scored"] >= 15, res
    assert res["vertex_error_mm"] <= 1.5 and res["expression_mae"] <= 0.08, res
    assert res["rotation_deg"] <= 1.0 and res["translation_mm"] <= 2.0, res
