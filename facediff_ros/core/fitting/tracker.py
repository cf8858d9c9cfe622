"""FaceTracker: identity, expression and head pose per frame from landmarks (+ depth), live.

Per frame (:meth:`FaceTracker.update`):

1. **Input**: MediaPipe's 478 landmarks in pixels, optionally lifted to 3D (camera optical frame,
   metres, NaN where invalid) and optionally the aligned depth image. Wrong shapes raise
   ValueError; everything else (NaN, holes, too few landmarks) gives a result with ``ok=False``
   and ``status='lost'``, never an exception.
2. **Start**: the previous frame's pose and expression (warm start). Without one (first frame,
   face lost), the pose comes from the landmarks: a weighted Kabsch fit of the mean face's
   landmark points to the lifted 3D landmarks, or PnP on the 2D landmarks when there is no depth.
3. **Solve** (:func:`.solver.solve`): before the identity is locked, pose + expression + identity on
   this frame; after, pose + expression only (``track_iterations`` LM steps).
4. **Identity**: every ``identity_frame_spacing``-th good frame is kept until there are
   ``identity_frames`` of them; one batched solve over those frames (shared identity, per-frame
   pose and expression) gives the identity, which is then locked. Its information matrix (the
   batch's GN matrix with the poses and expressions marginalised out) becomes the prior of a slow
   recursive refinement: every ``refine_every`` frames the current frame's information about the
   identity is added (with forgetting factor ``refine_forget``) and the identity takes the
   corresponding Gauss-Newton step -- a Kalman-filter-like update, so later frames move it less.
5. **Re-initialisation**: the warm start is dropped when a frame is lost; after ``reset_after_lost``
   lost frames in a row (the person may have left) the identity is unlocked and estimated anew.
   A different person taking over without a lost frame is caught by the **identity-distance
   test**: on refinement frames the frame's own MAP identity (N(0, 1) prior, no lock) is compared
   with the locked one as the RMS distance of the dense face vertices of the two neutral shapes;
   ``identity_switch_checks`` checks in a row above ``identity_switch_mm`` unlock the identity.
   The test needs the dense depth term: a single frame's identity from landmarks alone (3D or
   2D) scatters too much (a held-out landmarks-only sequence unlocked a correct identity), so
   frames without depth skip it.

**Colour only** (no depth image and no valid 3D landmark): 2D reprojection + priors. A 2D fit
cannot tell a larger head further away from a smaller one nearer: the identity prior (N(0, 1))
picks the scale, so translation along the ray and overall face size inherit the population's size
spread (a few per cent, i.e. centimetres of depth at 0.6 m). ``terms_used`` says so
(``'landmarks_2d'`` without ``'landmarks_3d'`` / ``'depth'``), and ``scale_from_prior`` is True.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.correspondence import Correspondence
from facediff_ros.core.face.morphable_model import MorphableModel, REGIONS
from facediff_ros.core.fitting.energy import (FaceBasis, Observation, TermWeights, check_landmarks,
                                              select_landmarks)
from facediff_ros.core.fitting.solver import (FrameState, PriorWeights, Terms, _Problem, rotation_log,
                                              schur_identity, solve)


@dataclass(frozen=True)
class TrackerConfig:
    """FaceTracker settings (frames at ~30 Hz assumed where a count of frames is a time)."""

    # 40 identity modes hold 96 % of the face region's shape variance (the first 30: 94 %, 60:
    # 98 %); more modes cost time at the identity solve and fit noise (60 measured no better on
    # held-out sequences: 1.10 vs 1.04 mm).
    num_identity: int = 40
    # Dense depth samples over the narrow face (forehead to chin): 800 are ~9 mm apart, enough
    # to pin shape modes whose wavelength is centimetres; 600 -> 800 lowered the held-out vertex
    # error by ~0.15 mm, more costs time per iteration.
    num_dense: int = 800
    terms: TermWeights = field(default_factory=TermWeights)
    priors: PriorWeights = field(default_factory=PriorWeights)
    # Warm-started tracking: the frame-to-frame change is small, and the model is linear in the
    # expression, so one LM step per frame (kept only if the cost drops) tracks as well as more:
    # held-out depth-mode error with 1 / 2 LM steps 0.86 / 0.84 mm vertex, 0.78 / 0.76 deg, at
    # about half the time (fitting_eval, MediaPipe landmarks, seeds 101-102).
    track_iterations: int = 1
    # A cold start (pose from landmarks only) needs more, half of them with a wide depth gate.
    init_iterations: int = 12
    init_depth_gate_m: float = 0.05
    # Identity: 6 frames, every 4th good frame -> locked after ~0.8 s at 30 Hz (target: < 1 s),
    # with different poses and expressions in the batch (one frame cannot separate them).
    identity_frames: int = 6
    identity_frame_spacing: int = 4
    identity_iterations: int = 8
    # After lock: one refinement step every 10 frames (3 Hz), forgetting 2 % per step (memory
    # ~50 steps, ~17 s): slow enough not to follow expressions into the identity.
    refine_every: int = 10
    refine_forget: float = 0.98
    # Identity-distance test (see the module docstring). Measured (depth, actor seeds 201 vs 203,
    # refinement every 3 frames): the same person's single-frame identity lies 0.7-1.3 mm (clean)
    # / 0.8-2.0 mm (sensor noise) from the locked one, another person's 3.9-5.8 mm; 3 mm with 3
    # checks in a row separates them with margin on both sides.
    identity_switch_mm: float = 3.0
    identity_switch_checks: int = 3
    # Lost this many frames in a row (1 s): forget the identity (someone else may come back).
    reset_after_lost: int = 30
    # Fewer usable 2D landmarks than this: no fit (MediaPipe gives 478; a partial face ~200).
    min_landmarks_2d: int = 30
    # Fewer valid 3D landmarks than this: the 3D landmark term is not used (too few to constrain
    # the pose in depth, and with so few the lifting likely failed).
    min_landmarks_3d: int = 12
    # A fit below this quality is reported lost and not used as the next warm start.
    min_quality: float = 0.2
    # Frames at least this good feed the identity estimate.
    good_quality: float = 0.5

    def __post_init__(self):
        for name in ("num_identity", "track_iterations", "init_iterations", "identity_frames",
                     "identity_frame_spacing", "identity_iterations", "refine_every",
                     "identity_switch_checks",
                     "reset_after_lost", "min_landmarks_2d"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"TrackerConfig.{name} must be an integer >= 1, got {v}")
        if int(self.num_dense) != self.num_dense or self.num_dense < 0:
            raise ValueError(f"TrackerConfig.num_dense must be an integer >= 0, got {self.num_dense}")
        if not 0 < self.refine_forget <= 1:
            raise ValueError(f"TrackerConfig.refine_forget must be in (0, 1], got {self.refine_forget}")
        if not 0 <= self.min_quality <= self.good_quality <= 1:
            raise ValueError("TrackerConfig: need 0 <= min_quality <= good_quality <= 1")
        if not self.identity_switch_mm > 0 or not self.init_depth_gate_m > 0:
            raise ValueError("TrackerConfig: identity_switch_mm and init_depth_gate_m must be > 0")


@dataclass
class FitResult:
    """The model state that explains one frame.

    Attributes:
        ok: a usable fit (False: ``status == 'lost'``; the other fields then hold the last state).
        status: 'initialising' (identity not locked yet), 'tracking', or 'lost'.
        reason: why a frame was lost ('' otherwise).
        identity: (K,) float32 identity coefficients (N(0, 1)-scaled).
        expression: (E,) float32 weights in [0, 1], MorphableModel order.
        R: (3, 3) float64 rotation and t: (3,) float64 metres: x_cam = R x_model + t (camera optical
            frame).
        residual_rms: RMS residual in metres over the metric terms used (3D landmarks: point
            distance; depth: point-to-plane); colour only: the 2D residual converted to metres at
            the face's distance.
        quality: in [0, 1]: landmark coverage x fit score (see :meth:`FaceTracker._quality`).
        identity_locked: the identity is held (refined slowly) rather than estimated per frame.
        terms_used: data terms that had data this frame: 'landmarks_3d', 'landmarks_2d', 'depth'.
        scale_from_prior: colour only: size and distance are told apart by the identity prior only.
        timings: milliseconds per stage ('init', 'solve', 'identity', 'total').
        stats: per-term counts and RMS residuals (see energy.Linearization.stats).
    """

    ok: bool
    status: str
    reason: str
    identity: np.ndarray
    expression: np.ndarray
    R: np.ndarray
    t: np.ndarray
    residual_rms: float
    quality: float
    identity_locked: bool
    terms_used: Tuple[str, ...]
    scale_from_prior: bool = False
    timings: Dict[str, float] = field(default_factory=dict)
    stats: Dict[str, float] = field(default_factory=dict)

    @property
    def rvec(self) -> np.ndarray:
        """(3,) axis-angle of R, radians."""
        return rotation_log(self.R)

    def vertices(self, model: MorphableModel, vertex_ids: Optional[np.ndarray] = None) -> np.ndarray:
        """(V, 3) float32 fitted vertices in the camera frame (metres)."""
        v = model.vertices(self.identity, self.expression, vertex_ids=vertex_ids)
        return (v @ self.R.T.astype(np.float32) + self.t.astype(np.float32)).astype(np.float32)


class FaceTracker:
    """Per-frame face fitting with warm start, identity lock and re-initialisation (see module)."""

    def __init__(self, config: Optional[TrackerConfig] = None, model: Optional[MorphableModel] = None,
                 correspondence: Optional[Correspondence] = None):
        self.config = config = config if config is not None else TrackerConfig()
        if not isinstance(config, TrackerConfig):
            raise ValueError(f"config must be a TrackerConfig, got {type(config).__name__}")
        self.model = model if model is not None else MorphableModel.load()
        self.correspondence = correspondence if correspondence is not None else Correspondence.load()
        self.basis = FaceBasis(self.model, self.correspondence, config.num_identity, config.num_dense)
        self.reset()

    # ---- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: identity, warm start, batch."""
        K, E = self.basis.num_identity, self.basis.num_expression
        self.alpha = np.zeros(K)
        self.identity_locked = False
        self._P: Optional[np.ndarray] = None  # identity information after lock (K, K)
        self._batch: List[Tuple[Observation, FrameState]] = []
        self._good_since_batch = 0
        self._switch_votes = 0
        self._frames_since_refine = 0
        self._lost_run = 0
        self._state: Optional[FrameState] = None  # warm start (None: cold)
        self._last = FrameState(np.eye(3), np.array([0.0, 0.0, 0.6]), np.zeros(E))
        self.last_identity_distance_mm = float("nan")

    def _unlock(self) -> None:
        self.alpha = np.zeros(self.basis.num_identity)
        self.identity_locked = False
        self._P = None
        self._batch = []
        self._good_since_batch = 0
        self._switch_votes = 0

    # ---- per frame -----------------------------------------------------------------------------
    def update(self, intrinsics: Intrinsics, uv, points=None, valid=None, depth=None,
               depth_scale: float = 0.001) -> FitResult:
        """Fit one frame.

        Args:
            intrinsics: the colour camera (depth aligned to it).
            uv: (478, 2) landmark pixels (u right, v down, pixel centres at integers); NaN = missing.
            points: (478, 3) lifted landmarks, metres, camera optical frame, NaN where invalid; or None.
            valid: (478,) bool, rows of ``points`` that hold a measurement (None: all finite rows).
            depth: (H, W) aligned depth: float metres, or uint16 in ``depth_scale`` metres per unit;
                0 / NaN = no data; or None (no dense depth term).
            depth_scale: metres per unit of an integer depth image.

        Returns:
            :class:`FitResult`. Raises ValueError only for wrong shapes / types of the arguments.
        """
        t0 = time.perf_counter()
        if not isinstance(intrinsics, Intrinsics):
            raise ValueError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        uv, pts, val = check_landmarks(uv, points, valid)
        d, scale = None, 1.0
        if depth is not None:
            d = np.asarray(depth)
            if d.shape != intrinsics.shape:
                raise ValueError(f"depth must have shape {intrinsics.shape} (height, width), got {d.shape}")
            if np.issubdtype(d.dtype, np.integer):
                scale = float(depth_scale)  # kept in its units: only the sampled pixels are scaled
                if not np.isfinite(scale) or scale <= 0:
                    raise ValueError(f"depth_scale must be > 0 m per unit, got {depth_scale}")
            elif not np.issubdtype(d.dtype, np.floating):
                raise ValueError(f"depth must be float metres or integer units, got dtype {d.dtype}")
        tw = self.config.terms
        obs = select_landmarks(Observation(uv, pts, val, d, intrinsics, scale), self.basis.landmark_weight,
                               tw.min_landmark_weight,
                               self.basis.landmark_stable if tw.stable_3d_only else None)
        return self._fit(obs, t0)

    def _fit(self, obs: Observation, t0: float) -> FitResult:
        c = self.config
        timings: Dict[str, float] = {}
        if len(obs.idx2d) < c.min_landmarks_2d:
            return self._lost(f"too few landmarks ({len(obs.idx2d)} usable, need {c.min_landmarks_2d})", t0)
        use_3d = len(obs.idx3d) >= c.min_landmarks_3d
        terms = Terms(depth=obs.depth is not None, landmarks_3d=use_3d, landmarks_2d=True)
        cold = self._state is None
        t1 = time.perf_counter()
        if cold:
            start = self._initial_pose(obs, use_3d)
            if start is None:
                return self._lost("no initial pose (degenerate landmarks)", t0)
        else:
            start = self._state
        timings["init"] = 1e3 * (time.perf_counter() - t1)
        t1 = time.perf_counter()
        previous = [None if cold else self._state]
        solve_id = not self.identity_locked
        try:
            if cold:
                # Phase 1: pose and expression with a wide depth gate (the start may be cm off).
                r = solve(self.basis, [obs], [start], self.alpha, c.terms, c.priors, solve_identity=False,
                          terms=terms, iterations=c.init_iterations // 2, depth_gate_m=c.init_depth_gate_m)
                start = r.states[0]
            r = solve(self.basis, [obs], [start], self.alpha, c.terms, c.priors, solve_identity=solve_id,
                      previous=previous, terms=terms,
                      iterations=(c.init_iterations - c.init_iterations // 2) if cold else c.track_iterations)
        except (np.linalg.LinAlgError, FloatingPointError) as exc:  # pragma: no cover - defensive
            return self._lost(f"solver failed: {exc}", t0)
        timings["solve"] = 1e3 * (time.perf_counter() - t1)
        state, stats = r.states[0], r.stats[0]
        if not (np.all(np.isfinite(state.R)) and np.all(np.isfinite(state.t)) and state.t[2] > 0.05):
            return self._lost("fit diverged", t0)
        quality = self._quality(obs, stats)
        if quality < c.min_quality:
            return self._lost(f"fit quality {quality:.2f} below {c.min_quality}", t0, stats)
        if solve_id:
            self.alpha = r.alpha
        self._state = state
        self._last = state
        self._lost_run = 0
        t1 = time.perf_counter()
        self._identity_step(obs, state, quality, terms, stats.get("n_depth", 0) > 0)
        timings["identity"] = 1e3 * (time.perf_counter() - t1)
        timings["total"] = 1e3 * (time.perf_counter() - t0)
        used = tuple(name for name, key in (("landmarks_3d", "n_3d"), ("landmarks_2d", "n_2d"),
                                            ("depth", "n_depth")) if stats.get(key, 0) > 0)
        return FitResult(True, "tracking" if self.identity_locked else "initialising", "",
                         self.alpha.astype(np.float32), state.beta.astype(np.float32), state.R.copy(),
                         state.t.copy(), self._residual_rms(stats, state, obs), quality, self.identity_locked,
                         used, scale_from_prior=not ("landmarks_3d" in used or "depth" in used),
                         timings=timings, stats=dict(stats))

    def _lost(self, reason: str, t0: float, stats: Optional[Dict[str, float]] = None) -> FitResult:
        self._state = None
        self._lost_run += 1
        if self._lost_run >= self.config.reset_after_lost and (self.identity_locked or self._batch):
            self._unlock()
        s = self._last
        return FitResult(False, "lost", reason, self.alpha.astype(np.float32), s.beta.astype(np.float32),
                         s.R.copy(), s.t.copy(), float("nan"), 0.0, self.identity_locked, (),
                         timings={"total": 1e3 * (time.perf_counter() - t0)}, stats=dict(stats or {}))

    # ---- pieces --------------------------------------------------------------------------------
    def _initial_pose(self, obs: Observation, use_3d: bool) -> Optional[FrameState]:
        """Pose of the current identity's neutral face from the landmarks (None if degenerate)."""
        E = self.basis.num_expression
        X_all = self.basis.landmarks.at(self.alpha, None)  # (478, 3) model frame
        if use_3d:
            idx = obs.idx3d
            stable = idx[self.basis.landmark_stable[idx]]
            if len(stable) >= 6:
                idx = stable
            X, Y = X_all[idx], obs.points[idx]
            w = self.basis.landmark_weight[idx]
            # Weighted Kabsch with a robust second pass (lifting outliers at the silhouette).
            for _ in range(2):
                mx, my = (w[:, None] * X).sum(0) / w.sum(), (w[:, None] * Y).sum(0) / w.sum()
                C = ((Y - my) * w[:, None]).T @ (X - mx)
                U, S, Vt = np.linalg.svd(C)
                if S[1] < 1e-12:
                    return None
                D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
                R = U @ D @ Vt
                t = my - R @ mx
                res = np.linalg.norm(X @ R.T + t - Y, axis=1)
                w = w * (res < max(3 * np.median(res), 0.01))
                if w.sum() <= 0:
                    return None
            return FrameState(R, t, np.zeros(E))
        idx = obs.idx2d
        K = obs.intrinsics.K
        ok, rvec, tvec = cv2.solvePnP(X_all[idx].astype(np.float64), obs.uv[idx].astype(np.float64), K, None,
                                      flags=cv2.SOLVEPNP_SQPNP)
        if not ok or not np.all(np.isfinite(tvec)) or float(tvec.reshape(3)[2]) <= 0.05:
            return None
        R, _ = cv2.Rodrigues(rvec)
        return FrameState(R.astype(np.float64), tvec.reshape(3).astype(np.float64), np.zeros(E))

    def _quality(self, obs: Observation, stats: Dict[str, float]) -> float:
        """Coverage x fit score, in [0, 1].

        Coverage: the table weight of the landmarks that entered the fit over half the total
        (a frontal face with all landmarks scores 1; a half-hidden face less). Fit score:
        ``1 / (1 + max(0, r - 1.5)^2)`` with r the count-weighted mean of each term's RMS
        residual in units of its noise (r ~ 1 for a fit that explains the data to the noise).
        """
        tw = self.config.terms
        w = self.basis.landmark_weight
        cov = float(w[obs.idx2d].sum() / (0.5 * w[w >= tw.min_landmark_weight].sum()))
        num, den = 0.0, 0.0
        for n_key, rms_key, sigma in (("n_3d", "rms_3d_m", tw.landmark_sigma_m * np.sqrt(3)),
                                      ("n_2d", "rms_2d_px", tw.pixel_sigma_px * np.sqrt(2)),
                                      ("n_depth", "rms_depth_m", tw.depth_sigma_m)):
            n = stats.get(n_key, 0)
            if n and np.isfinite(stats[rms_key]):
                num += n * stats[rms_key] / sigma
                den += n
        if den == 0:
            return 0.0
        r = num / den
        return float(min(1.0, cov) / (1.0 + max(0.0, r - 1.5) ** 2))

    def _residual_rms(self, stats: Dict[str, float], state: FrameState, obs: Observation) -> float:
        sq, n = 0.0, 0
        for n_key, rms_key in (("n_3d", "rms_3d_m"), ("n_depth", "rms_depth_m")):
            if stats.get(n_key, 0) and np.isfinite(stats[rms_key]):
                sq += stats[n_key] * stats[rms_key] ** 2
                n += stats[n_key]
        if n:
            return float(np.sqrt(sq / n))
        if stats.get("n_2d", 0) and np.isfinite(stats["rms_2d_px"]):
            f = 0.5 * (obs.intrinsics.fx + obs.intrinsics.fy)
            return float(stats["rms_2d_px"] * state.t[2] / f)
        return float("nan")

    def _identity_step(self, obs: Observation, state: FrameState, quality: float, terms: Terms,
                       has_depth: bool) -> None:
        """Collect frames and lock the identity, or refine a locked one and run the switch test."""
        c = self.config
        if quality < c.good_quality:
            return
        if not self.identity_locked:
            self._good_since_batch += 1
            if self._batch and self._good_since_batch < c.identity_frame_spacing:
                return
            self._good_since_batch = 0
            self._batch.append((obs, state.copy()))
            if len(self._batch) < c.identity_frames:
                return
            obs_b = [o for o, _ in self._batch]
            r = solve(self.basis, obs_b, [s for _, s in self._batch], self.alpha, c.terms, c.priors,
                      solve_identity=True, terms=terms, iterations=c.identity_iterations)
            self.alpha = r.alpha
            S, _ = schur_identity(r.H, r.g, len(obs_b), 6 + self.basis.num_expression)
            self._P = S
            self.identity_locked = True
            self._batch = []
            self._frames_since_refine = 0
            # The warm start's pose/expression were fitted with the old identity: re-solve them.
            self._state = self._last = r.states[-1]
            return
        self._frames_since_refine += 1
        if self._frames_since_refine < c.refine_every:
            return
        self._frames_since_refine = 0
        prob = _Problem(self.basis, [obs], c.terms, c.priors, True, [None],
                        (np.zeros((self.basis.num_identity,) * 2), self.alpha), terms, None)
        _, _, H, g = prob.evaluate([state], self.alpha, jacobian=True)
        S, b = schur_identity(H, g, 1, 6 + self.basis.num_expression)
        lam = c.priors.identity
        K = self.basis.num_identity
        if has_depth:
            own = self.alpha + np.linalg.solve(S + lam * np.eye(K), -(b + lam * self.alpha))
            d = self.basis.dense.identity @ (own - self.alpha).astype(np.float32)  # (3, D) metres
            dist = float(np.sqrt((d.astype(np.float64) ** 2).sum(0).mean()) * 1e3)
            self.last_identity_distance_mm = dist
            self._switch_votes = self._switch_votes + 1 if dist > c.identity_switch_mm else 0
            if self._switch_votes >= c.identity_switch_checks:
                self._unlock()
                self._state = None
                return
        P = self._P
        self.alpha = self.alpha + np.linalg.solve(P + S, -b)
        self._P = c.refine_forget * (P + S)


def face_region_vertex_ids(model: MorphableModel, region: str = "narrow_face") -> np.ndarray:
    """Vertex ids of a region (default: the narrow face, forehead to chin) -- for evaluations."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}")
    return model.vertex_ids((region,))
