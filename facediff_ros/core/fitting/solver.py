"""Levenberg-Marquardt over one frame, or a batch of frames that share one identity.

Unknowns: per frame the block [w (3, rad), t (3, m), beta (E)] of :mod:`.energy`, and optionally the
shared identity alpha (K) at the end. Cost (residuals in units of their noise):

    sum_f data_f                                         (energy.linearize, robust)
    + 0.5 lambda_id |alpha|^2                            (alpha ~ N(0, 1))  -- or, while
      0.5 (alpha - a0)^T P (alpha - a0)                  refining a locked identity, its posterior
    + sum_f 0.5 lambda_e |beta_f|^2 + lambda_s sum beta_f    (small weights; L1 sparsity, beta >= 0)
    + sum_f 0.5 |beta_f - beta_prev|^2 / s_e^2 + 0.5 |log(R_f R_prev^T)|^2 / s_r^2
            + 0.5 |t_f - t_prev|^2 / s_t^2               (temporal, when a previous frame is given)

Expression weights stay in [0, 1]: each step is solved with the weights that sit on a bound and
are pushed outward held fixed (an active set), then clipped. LM damping: ``H + mu diag(H)``; a step
is kept only when the cost drops (mu / 3), otherwise mu x 5 and the step is retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from facediff_ros.core.face.morphable_model import rotation_matrix
from facediff_ros.core.fitting.energy import FaceBasis, Linearization, Observation, TermWeights, linearize


@dataclass(frozen=True)
class PriorWeights:
    """Weights of the priors and the temporal terms (data residuals are in units of their noise)."""

    # alpha ~ N(0, 1) exactly as the model defines it: the MAP weight is 1.
    identity: float = 1.0
    # A weak L2 on the weights keeps directions the data cannot see (e.g. mouth interior
    # shapes with the lips closed) at 0 and the system well conditioned.
    expression_l2: float = 0.5
    # L1 sparsity (beta >= 0, so a linear cost): ARKit-style rigs are redundant (eyeSquint vs
    # cheekSquint, mouthClose vs jawOpen...), the sparsest explanation is the one an animator and
    # the editor expect. 1.0: a weight must lower the data cost by 1 (one sigma^2 / 2) per unit.
    expression_l1: float = 1.0
    # Temporal: expected change per frame at 30 Hz. Speech moves jawOpen by ~0.1 per frame.
    temporal_expression_sigma: float = 0.15
    # Head motion: ~60 deg/s peaks -> 2 deg per frame; 0.05 rad leaves that nearly free.
    temporal_rotation_sigma_rad: float = 0.05
    temporal_translation_sigma_m: float = 0.01

    def __post_init__(self):
        for name in ("identity", "expression_l2", "expression_l1"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"PriorWeights.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("temporal_expression_sigma", "temporal_rotation_sigma_rad",
                     "temporal_translation_sigma_m"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"PriorWeights.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class FrameState:
    """Pose and expression of one frame: x_cam = R X + t (metres), beta in [0, 1]."""

    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,) m
    beta: np.ndarray  # (E,)

    def copy(self) -> "FrameState":
        return FrameState(self.R.copy(), self.t.copy(), self.beta.copy())


@dataclass(frozen=True)
class Terms:
    """Which data terms a solve uses (a term without data is off anyway)."""

    depth: bool = True
    landmarks_3d: bool = True
    landmarks_2d: bool = True


@dataclass
class SolveResult:
    states: List[FrameState]
    alpha: np.ndarray
    cost: float
    iterations: int
    stats: List[Dict[str, float]]          # per frame, at the returned point (energy.Linearization)
    data_cost: List[float]                 # per frame, at the returned point
    H: Optional[np.ndarray] = None         # full damped-free GN matrix of the last linearisation
    g: Optional[np.ndarray] = None
    info: Dict[str, float] = field(default_factory=dict)


def rotation_log(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> axis-angle (3,) radians (the inverse of rotation_matrix)."""
    c = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(c)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if theta < 1e-6:
        return 0.5 * v
    if np.pi - theta < 1e-4:  # near pi: axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(R) + 1) / 2, 0))
        axis *= np.where(v >= 0, 1, -1) if np.any(v) else 1
        return theta * axis / max(np.linalg.norm(axis), 1e-12)
    return theta * v / (2 * np.sin(theta))


class _Problem:
    """Cost, GN matrix and step of one solve (frames + optional identity)."""

    def __init__(self, basis: FaceBasis, obs: Sequence[Observation], tw: TermWeights, pw: PriorWeights,
                 solve_identity: bool, previous: Sequence[Optional[FrameState]],
                 identity_prior: Optional[Tuple[np.ndarray, np.ndarray]], terms: Terms,
                 depth_gate_m: Optional[float]):
        self.basis, self.obs, self.tw, self.pw = basis, list(obs), tw, pw
        self.solve_identity = solve_identity
        self.previous = list(previous)
        self.identity_prior = identity_prior
        self.terms = terms
        self.gate = depth_gate_m
        self.E, self.K = basis.num_expression, basis.num_identity
        self.nf = 6 + self.E
        self.n = len(self.obs) * self.nf + (self.K if solve_identity else 0)

    def _prior_cost(self, states: List[FrameState], alpha: np.ndarray) -> float:
        pw, c = self.pw, 0.0
        if self.solve_identity:
            if self.identity_prior is None:
                c += 0.5 * pw.identity * float(alpha @ alpha)
            else:
                P, a0 = self.identity_prior
                d = alpha - a0
                c += 0.5 * float(d @ P @ d)
        for s, prev in zip(states, self.previous):
            c += 0.5 * pw.expression_l2 * float(s.beta @ s.beta) + pw.expression_l1 * float(s.beta.sum())
            if prev is not None:
                db = s.beta - prev.beta
                c += 0.5 * float(db @ db) / pw.temporal_expression_sigma ** 2
                dr = rotation_log(s.R @ prev.R.T)
                c += 0.5 * float(dr @ dr) / pw.temporal_rotation_sigma_rad ** 2
                dt = s.t - prev.t
                c += 0.5 * float(dt @ dt) / pw.temporal_translation_sigma_m ** 2
        return c

    def evaluate(self, states: List[FrameState], alpha: np.ndarray, jacobian: bool
                 ) -> Tuple[float, List[Linearization], Optional[np.ndarray], Optional[np.ndarray]]:
        """Total cost, per-frame linearisations and (with jacobian) the full H, g with priors."""
        lins = [linearize(self.basis, o, s.R, s.t, s.beta, alpha, self.tw, with_identity=self.solve_identity,
                          use_depth=self.terms.depth, use_3d=self.terms.landmarks_3d,
                          use_2d=self.terms.landmarks_2d, depth_gate_m=self.gate, jacobian=jacobian)
                for o, s in zip(self.obs, states)]
        cost = sum(lin.cost for lin in lins) + self._prior_cost(states, alpha)
        if not jacobian:
            return cost, lins, None, None
        H, g = np.zeros((self.n, self.n)), np.zeros(self.n)
        nf, E, pw = self.nf, self.E, self.pw
        ia = slice(self.n - self.K, self.n)
        for f, (lin, s, prev) in enumerate(zip(lins, states, self.previous)):
            b = slice(f * nf, (f + 1) * nf)
            H[b, b] += lin.H[:nf, :nf]
            g[b] += lin.g[:nf]
            if self.solve_identity:
                H[b, ia] += lin.H[:nf, nf:]
                H[ia, b] += lin.H[nf:, :nf]
                H[ia, ia] += lin.H[nf:, nf:]
                g[ia] += lin.g[nf:]
            be = np.arange(f * nf + 6, f * nf + 6 + E)
            H[be, be] += pw.expression_l2
            g[be] += pw.expression_l2 * s.beta + pw.expression_l1
            if prev is not None:
                we = 1.0 / pw.temporal_expression_sigma ** 2
                H[be, be] += we
                g[be] += we * (s.beta - prev.beta)
                wr = 1.0 / pw.temporal_rotation_sigma_rad ** 2
                ir = np.arange(f * nf, f * nf + 3)
                H[ir, ir] += wr  # d log(exp(w) R R_prev^T) / dw ~ I for small differences
                g[ir] += wr * rotation_log(s.R @ prev.R.T)
                wt = 1.0 / pw.temporal_translation_sigma_m ** 2
                it = np.arange(f * nf + 3, f * nf + 6)
                H[it, it] += wt
                g[it] += wt * (s.t - prev.t)
        if self.solve_identity:
            if self.identity_prior is None:
                H[ia, ia] += pw.identity * np.eye(self.K)
                g[ia] += pw.identity * alpha
            else:
                P, a0 = self.identity_prior
                H[ia, ia] += P
                g[ia] += P @ (alpha - a0)
        return cost, lins, H, g

    def step(self, states: List[FrameState], H: np.ndarray, g: np.ndarray, mu: float) -> np.ndarray:
        """Damped GN step with the expression weights on a bound held where pushed outward."""
        free = np.ones(self.n, bool)
        for f, s in enumerate(states):
            be = slice(f * self.nf + 6, f * self.nf + 6 + self.E)
            gb = g[be]
            free[be] = ~(((s.beta <= 0.0) & (gb > 0)) | ((s.beta >= 1.0) & (gb < 0)))
        idx = np.flatnonzero(free)
        Hf = H[np.ix_(idx, idx)]
        d = np.diag(Hf)
        # Damping scaled by the diagonal (Marquardt), with a floor for directions without data.
        A = Hf + np.diag(mu * np.maximum(d, 1e-6 * max(float(d.max()), 1.0)) + 1e-9)
        delta = np.zeros(self.n)
        try:
            delta[idx] = -np.linalg.solve(A, g[idx])
        except np.linalg.LinAlgError:
            delta[idx] = -np.linalg.lstsq(A, g[idx], rcond=None)[0]
        return delta

    def apply(self, states: List[FrameState], alpha: np.ndarray, delta: np.ndarray
              ) -> Tuple[List[FrameState], np.ndarray]:
        out = []
        for f, s in enumerate(states):
            d = delta[f * self.nf:(f + 1) * self.nf]
            out.append(FrameState(rotation_matrix(d[0:3]) @ s.R, s.t + d[3:6],
                                  np.clip(s.beta + d[6:], 0.0, 1.0)))
        new_alpha = alpha + delta[self.n - self.K:] if self.solve_identity else alpha
        return out, new_alpha


def solve(basis: FaceBasis, observations: Sequence[Observation], states: Sequence[FrameState],
          alpha: np.ndarray, tw: TermWeights, pw: PriorWeights, *, solve_identity: bool,
          previous: Optional[Sequence[Optional[FrameState]]] = None,
          identity_prior: Optional[Tuple[np.ndarray, np.ndarray]] = None, terms: Terms = Terms(),
          iterations: int = 3, mu: float = 1e-3, depth_gate_m: Optional[float] = None,
          tolerance: float = 1e-4) -> SolveResult:
    """Minimise the cost above from ``states`` / ``alpha``.

    Args:
        basis, observations, states: the model, one Observation and a start state per frame.
        alpha: (K,) identity (the start when ``solve_identity``, else held fixed).
        tw, pw: data noise levels and prior weights.
        solve_identity: optimise alpha too (shared by all frames).
        previous: per frame, the previous frame's state for the temporal terms (or None).
        identity_prior: (P (K, K), a0 (K,)): a Gaussian on alpha that replaces N(0, 1).
        terms: data terms to use.
        iterations: LM iterations (each: one step, one cost evaluation).
        mu: initial LM damping.
        depth_gate_m: dense-depth gate for this solve (wider while far off).
        tolerance: stop when an accepted step lowers the cost by less than this fraction.
    """
    prob = _Problem(basis, observations, tw, pw, solve_identity,
                    previous if previous is not None else [None] * len(observations),
                    identity_prior, terms, depth_gate_m)
    states = [s.copy() for s in states]
    alpha = np.asarray(alpha, np.float64).copy()
    cost, lins, H, g = prob.evaluate(states, alpha, jacobian=True)
    it, accepted = 0, 0
    for it in range(1, iterations + 1):
        delta = prob.step(states, H, g, mu)
        new_states, new_alpha = prob.apply(states, alpha, delta)
        last = it == iterations
        new_cost, new_lins, new_H, new_g = prob.evaluate(new_states, new_alpha, jacobian=not last)
        if new_cost < cost:
            decrease = (cost - new_cost) / max(cost, 1e-12)
            states, alpha, cost, lins = new_states, new_alpha, new_cost, new_lins
            accepted += 1
            mu = max(mu / 3.0, 1e-7)
            if last or decrease < tolerance:
                break
            H, g = new_H, new_g
        else:
            mu *= 5.0
    return SolveResult(states, alpha, cost, it, [lin.stats for lin in lins], [lin.cost for lin in lins],
                       H, g, {"accepted": accepted, "mu": mu})


def schur_identity(H: np.ndarray, g: np.ndarray, num_frames: int, nf: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Marginalise the frame blocks out of a [frames..., alpha] system: (S (K, K), b (K,)).

    ``S`` is the information the frames carry about alpha with their poses and expressions free;
    ``(S, b)`` give the GN step on alpha alone: ``S da = -b``.
    """
    m = num_frames * nf
    Hff, Hfa, Haa = H[:m, :m], H[:m, m:], H[m:, m:]
    Hff = Hff + 1e-9 * np.eye(m)
    X = np.linalg.solve(Hff, np.concatenate([Hfa, g[:m, None]], axis=1))  # (m, K + 1)
    S = Haa - Hfa.T @ X[:, :-1]
    b = g[m:] - Hfa.T @ X[:, -1]
    return 0.5 * (S + S.T), b
