"""Energy terms of the face fit, with analytic Jacobians (numpy, float64).

Unknowns of one frame (the *frame block*, in this order):

- ``w`` (3): a rotation increment in radians, applied on the left, ``R <- exp([w]x) R``
  (the pose is stored as a rotation matrix; axis-angle only for the step);
- ``t`` (3): translation in metres, camera optical frame;
- ``beta`` (E): expression weights in [0, 1] (the box is handled by the solver).

Shared by frames of one person: ``alpha`` (K), identity coefficients, N(0, 1)-scaled.

A model point is linear in the coefficients before the pose (:class:`LinearPoints`):

    X = mean + A alpha + B beta          (model frame, metres)
    x = R X + t                          (camera optical frame, metres)

so ``dx/dw = -[x - t]x``, ``dx/dt = I``, ``dx/dbeta = R B``, ``dx/dalpha = R A`` exactly.

Terms (each residual in units of its noise, so that weights are inverse variances):

- **3D landmarks**: ``sqrt(w_l) (x_l - p_l) / sigma_3d`` for each landmark whose lifted 3D point
  ``p_l`` is valid; ``x_l`` is its point on the model through the correspondence table and
  ``w_l`` the table's per-landmark weight (from the landmark's measured held-out residual).
- **2D reprojection**: ``sqrt(w_l) (pi(x_l) - uv_l) / sigma_px``; it carries the fit where depth is
  missing (holes, colour-only input).
- **Dense depth**: point-to-plane ``n . (x_d - q_d) / sigma_depth`` for a fixed subsample of the
  face region's vertices; ``q_d`` is the measured 3D point of the pixel the vertex projects to
  (projective association, re-done at every iteration), ``n`` the model's outward vertex normal.
  Vertices facing away, off the image, on depth holes or further than a gate from the measured
  surface (occlusion, background) are left out.

Every data term is robust (Huber with threshold ``huber`` in units of sigma). Priors and temporal
terms are added by the solver (:mod:`.solver`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.face.correspondence import Correspondence
from facediff_ros.core.face.morphable_model import MorphableModel
from facediff_ros.core.landmarks.face_mesh import NUM_LANDMARKS


@dataclass(frozen=True)
class LinearPoints:
    """Points linear in the coefficients: ``X = mean + identity @ alpha + expression @ beta``.

    The bases are stored component-major, (3, P, K) and (3, P, E), so that rotating them or
    weighting them per point is one matrix product or one broadcast per axis.

    Attributes:
        mean: (P, 3) float64 metres, model frame.
        identity: (3, P, K) float32 metres per unit identity coefficient.
        expression: (3, P, E) float32 metres per unit expression weight.
    """

    mean: np.ndarray
    identity: np.ndarray
    expression: np.ndarray

    @property
    def expression_pm(self) -> np.ndarray:
        """(P, 3, E) point-major copy of the expression basis (made once): rows of a Jacobian are
        then one batched matrix product per term, ~2x faster than three broadcasts."""
        pm = self.__dict__.get("_expression_pm")
        if pm is None:
            pm = np.ascontiguousarray(self.expression.transpose(1, 0, 2))
            object.__setattr__(self, "_expression_pm", pm)
        return pm

    def at(self, alpha: Optional[np.ndarray], beta: Optional[np.ndarray]) -> np.ndarray:
        """(P, 3) float64 model-frame points for the given coefficients (None: zeros)."""
        out = self.mean
        if alpha is not None:
            out = out + (self.identity @ np.asarray(alpha, np.float32)).T  # (3, P) -> (P, 3)
        if beta is not None:
            out = out + (self.expression @ np.asarray(beta, np.float32)).T
        return out

    def take(self, index: np.ndarray) -> "LinearPoints":
        return LinearPoints(self.mean[index], self.identity[:, index], self.expression[:, index])

    def with_identity(self, alpha: np.ndarray) -> "LinearPoints":
        """The same points with the identity folded into the mean (the bases kept)."""
        return LinearPoints(self.at(alpha, None), self.identity, self.expression)


def farthest_point_sample(points: np.ndarray, count: int, start: int = 0) -> np.ndarray:
    """Indices of ``count`` points spread evenly over a point set (greedy farthest-point order)."""
    points = np.asarray(points, dtype=np.float64)
    count = min(int(count), len(points))
    chosen = np.empty(count, dtype=np.int64)
    dist = np.full(len(points), np.inf)
    idx = int(start)
    for i in range(count):
        chosen[i] = idx
        dist = np.minimum(dist, ((points - points[idx]) ** 2).sum(1))
        idx = int(np.argmax(dist))
    return np.sort(chosen)


class FaceBasis:
    """The model restricted to what the fit evaluates: landmark points, dense samples, normals.

    Built once per tracker (~0.6 s): the 478 landmark points through the correspondence table,
    ``num_dense`` vertices of ``dense_regions`` spread by farthest-point sampling on the mean
    face, and for each of those the triangles around it (to compute its normal).
    """

    def __init__(self, model: MorphableModel, correspondence: Correspondence, num_identity: int = 40,
                 num_dense: int = 800, dense_regions: Tuple[str, ...] = ("narrow_face",),
                 normal_regions: Tuple[str, ...] = ("face",)):
        if not 1 <= num_identity <= model.num_identity:
            raise ValueError(f"num_identity must be in [1, {model.num_identity}], got {num_identity}")
        if num_dense < 0:
            raise ValueError(f"num_dense must be >= 0, got {num_dense}")
        self.model = model
        self.num_identity = K = int(num_identity)
        self.num_expression = model.num_expression
        self.landmark_weight = np.asarray(correspondence.weight, np.float64)
        self.landmark_stable = np.asarray(correspondence.stable, bool)

        def linear(ids: np.ndarray, bary: Optional[np.ndarray] = None) -> LinearPoints:
            # (V', 3), (K, V', 3), (E, V', 3) gathered, then combined by barycentrics if given.
            mean = model.neutral[ids].astype(np.float64)
            idb = model.identity_basis[:K, ids].astype(np.float64)
            exb = model.expression_basis[:, ids].astype(np.float64)
            if bary is not None:  # ids (L, 3) with bary (L, 3)
                mean = np.einsum("lkc,lk->lc", mean, bary)
                idb = np.einsum("nlkc,lk->nlc", idb, bary)
                exb = np.einsum("nlkc,lk->nlc", exb, bary)
            return LinearPoints(np.ascontiguousarray(mean),
                                np.ascontiguousarray(idb.transpose(2, 1, 0), dtype=np.float32),  # (3, P, K)
                                np.ascontiguousarray(exb.transpose(2, 1, 0), dtype=np.float32))  # (3, P, E)

        self.landmarks = linear(correspondence.vertex_ids, correspondence.bary.astype(np.float64))
        region = model.vertex_ids(dense_regions)
        sel = farthest_point_sample(model.neutral[region], num_dense) if num_dense else np.zeros(0, np.int64)
        self.dense_vertex_ids = region[sel]
        # Normals: per dense vertex two "cross" edges between opposite 1-ring neighbours (along
        # the ring's two principal tangent directions on the mean face), n = e1 x e2. Each edge
        # is linear in the coefficients, so a normal costs two small products per evaluation
        # instead of re-evaluating the whole 1-ring (measured 1.3 ms -> ~0.2 ms for 800 vertices).
        tris, _, _ = model.triangles(normal_regions)
        pos = {int(v): i for i, v in enumerate(self.dense_vertex_ids)}
        neighbours = [set() for _ in range(len(self.dense_vertex_ids))]
        for tri in tris[np.isin(tris, self.dense_vertex_ids).any(1)]:
            for v in tri:
                i = pos.get(int(v))
                if i is not None:
                    neighbours[i].update(int(x) for x in tri if int(x) != int(v))
        ends = np.zeros((len(neighbours), 4), np.int64)  # (D, 4): a, b, c, d with e1 = a - b, e2 = c - d
        keep = np.ones(len(neighbours), bool)
        for i, nb in enumerate(neighbours):
            v = int(self.dense_vertex_ids[i])
            nb = np.array(sorted(nb)) if nb else np.array([v])
            d = model.neutral[nb].astype(np.float64) - model.neutral[v]  # (N, 3)
            vt = np.linalg.svd(d - d.mean(0), full_matrices=False)[2] if len(nb) >= 2 else np.eye(3)
            p1, p2 = d @ vt[0], d @ vt[1]
            a_, b_, c_, d_ = nb[np.argmax(p1)], nb[np.argmin(p1)], nb[np.argmax(p2)], nb[np.argmin(p2)]
            e1 = model.neutral[a_].astype(np.float64) - model.neutral[b_]
            e2 = model.neutral[c_].astype(np.float64) - model.neutral[d_]
            # Orient like the mesh: the area-weighted normal of the incident triangles points out.
            inc = tris[(tris == v).any(1)]
            tv = model.neutral[inc].astype(np.float64)  # (T, 3, 3)
            ref = np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0]).sum(0)
            if np.dot(np.cross(e1, e2), ref) < 0:
                c_, d_ = d_, c_
            ends[i] = (a_, b_, c_, d_)
            n12 = np.cross(e1, e2)
            cos = abs(np.dot(n12, ref)) / max(np.linalg.norm(n12) * np.linalg.norm(ref), 1e-18)
            keep[i] = cos > np.cos(np.radians(20.0))
        # Drop the few vertices whose cross edges do not give their normal (creases, seams:
        # 2 of 800 on the mean face are > 20 deg off).
        self.dense_vertex_ids, ends = self.dense_vertex_ids[keep], ends[keep]
        self.dense = linear(self.dense_vertex_ids)
        pa, pb, pc, pd = (linear(ends[:, k]) for k in range(4))
        self._edge1 = LinearPoints(pa.mean - pb.mean, pa.identity - pb.identity,
                                   pa.expression - pb.expression)
        self._edge2 = LinearPoints(pc.mean - pd.mean, pc.identity - pd.identity,
                                   pc.expression - pd.expression)
        sets = (self.dense, self._edge1, self._edge2)
        self._dense_stack_expr = np.ascontiguousarray(np.concatenate(
            [lp.expression.reshape(-1, self.num_expression) for lp in sets]))  # (3 sets * 3 * D, E)
        self._alpha_key: Optional[bytes] = None

    @property
    def num_dense(self) -> int:
        return int(len(self.dense_vertex_ids))

    def _fold(self, alpha: np.ndarray) -> None:
        key = np.asarray(alpha, np.float64).tobytes()
        if key != self._alpha_key:  # the identity is folded in once per identity, not per frame
            self._lm_mean = self.landmarks.at(alpha, None)  # (L, 3)
            # Positions and the two normal edges of the dense vertices, component-major:
            # (3 sets, 3, D) means and one (9 D, E) expression matrix -> one GEMV per evaluation.
            self._dense_stack_mean = np.stack([lp.at(alpha, None).T
                                               for lp in (self.dense, self._edge1, self._edge2)])
            self._alpha_key = key

    def landmark_points(self, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """(478, 3) float64 model-frame landmark points."""
        self._fold(alpha)
        return self._lm_mean + (self.landmarks.expression @ np.asarray(beta, np.float32)).T

    def dense_points(self, alpha: np.ndarray, beta: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Model-frame positions (D, 3) and unit outward normals (D, 3) of the dense vertices."""
        self._fold(alpha)
        beta32 = np.asarray(beta, np.float32)
        D = self.num_dense
        st = self._dense_stack_mean + (self._dense_stack_expr @ beta32).reshape(3, 3, D)  # (3 sets, 3, D)
        X, e1, e2 = st[0].T, st[1].T, st[2].T  # (D, 3) each
        n = _cross(e1, e2)
        return X, n / np.maximum(np.sqrt((n * n).sum(1))[:, None], 1e-12)


@dataclass(frozen=True)
class TermWeights:
    """Noise levels of the data terms (their inverse squares weight the residuals)."""

    # Lifted MediaPipe landmarks lie ~2.5 mm from the table's surface points (the table's
    # held-out median), and that error is systematic per landmark and face, not independent
    # noise: 200 landmarks do not average it down. Weighted as 10 mm / 5 px they steer pose and
    # expression while the unbiased depth term sets the shape; measured on held-out actor
    # sequences (fitting_eval, MediaPipe landmarks): 3 mm / 2 px gave 1.5 mm vertex error and 1.8
    # deg, 10 mm / 5 px 0.9 mm and 0.8 deg; with ground-truth landmarks the tighter values win.
    landmark_sigma_m: float = 0.010
    pixel_sigma_px: float = 5.0
    # With the dense depth term in use (at least min_depth_samples dense residuals), the landmark
    # sigmas are multiplied by this: depth then sets shape and pose, the landmarks mainly the
    # expression. Held-out sweep (seeds 101-102, depth mode): x1 0.86 mm / 0.78 deg, x1.5 0.76 mm /
    # 0.58 deg, x2 0.78 mm / 0.57 deg; expression MAE unchanged (0.025).
    landmark_scale_with_depth: float = 1.5
    min_depth_samples: int = 50
    # D4xx depth noise ~1.4 mm at 0.6 m; half of it is spatially correlated over a few pixels,
    # so 2 mm discounts neighbouring samples a little.
    depth_sigma_m: float = 0.002
    # Huber threshold (in sigmas) of every data term: beyond it a residual counts linearly.
    huber: float = 2.0
    # Dense samples further than this from the measured surface along the ray are occluded or
    # hit the background: left out (the face's relief within one pixel is far smaller).
    depth_gate_m: float = 0.012
    # Dense samples whose normal is this close to perpendicular to the ray are left out
    # (RealSense drops grazing depth anyway; what remains there is unreliable).
    min_facing_cos: float = 0.2
    # Landmarks below this table weight are not used (contour points sliding over the skin):
    # 0.3 keeps 288 of 478 (the 203 stable ones among them). Held-out sweep (seeds 101-102),
    # 0.05 -> 0.3: depth mode 0.84 -> 0.77 mm, colour and landmarks-only no worse, and ~1/3
    # fewer 2D rows to evaluate.
    min_landmark_weight: float = 0.3
    # The 3D term uses the table's stable landmarks only (203 of 478, held-out residual < 2.5 mm):
    # the others slide over the skin with the pose, which their 2D term tolerates (2 px) but a
    # 3D term would turn into depth bias; fewer rows also keep tracking fast.
    stable_3d_only: bool = True

    def __post_init__(self):
        for name in ("landmark_sigma_m", "pixel_sigma_px", "depth_sigma_m", "huber", "depth_gate_m",
                     "landmark_scale_with_depth"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"TermWeights.{name} must be > 0, got {v}")
        if int(self.min_depth_samples) != self.min_depth_samples or self.min_depth_samples < 0:
            raise ValueError(f"TermWeights.min_depth_samples must be an integer >= 0, "
                             f"got {self.min_depth_samples}")
        if not 0 <= self.min_facing_cos < 1 or not 0 <= self.min_landmark_weight <= 1:
            raise ValueError("TermWeights: min_facing_cos must be in [0, 1) and min_landmark_weight "
                             "in [0, 1]")


@dataclass
class Observation:
    """One frame's measurements (camera optical frame).

    Attributes:
        uv: (478, 2) float64 landmark pixels; rows that are not finite are missing.
        points: (478, 3) float64 lifted landmarks in metres, or None (no 3D landmarks).
        valid3d: (478,) bool: rows of ``points`` that carry a measurement.
        depth: (H, W) depth aligned to the colour image in ``depth_scale`` metres per unit
            (float metres with scale 1, or uint16 millimetres with 0.001; 0 / NaN = none), or None.
            Only the pixels the dense samples fall on are read and scaled.
        intrinsics: the colour camera.
        depth_scale: metres per depth unit.
    """

    uv: np.ndarray
    points: Optional[np.ndarray]
    valid3d: np.ndarray
    depth: Optional[np.ndarray]
    intrinsics: Intrinsics
    depth_scale: float = 1.0
    # Derived: which landmarks enter which term (set by :func:`select_landmarks`).
    idx2d: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    idx3d: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def select_landmarks(obs: Observation, weights: np.ndarray, min_weight: float,
                     stable: Optional[np.ndarray] = None) -> Observation:
    """Fill ``obs.idx2d`` / ``obs.idx3d``: usable landmarks of each term (finite, weighted enough;
    for 3D also in ``stable`` when given)."""
    good = (weights >= min_weight)
    obs.idx2d = np.flatnonzero(good & np.isfinite(obs.uv).all(1))
    if obs.points is not None:
        good3 = good if stable is None else good & stable
        obs.idx3d = np.flatnonzero(good3 & obs.valid3d & np.isfinite(obs.points).all(1)
                                   & (obs.points[:, 2] > 0))
    else:
        obs.idx3d = np.zeros(0, np.int64)
    return obs


@dataclass
class Linearization:
    """The data terms of one frame at one point: cost, Gauss-Newton matrix and gradient.

    Attributes:
        cost: robust data cost, 0.5 * sum rho(r) (r in sigmas).
        H: (n, n) J^T W J over the frame block [w, t, beta] (+ alpha when identity was asked for).
        g: (n,) J^T W r.
        stats: per-term counts and RMS residuals: ``n_3d``, ``rms_3d_m``, ``n_2d``, ``rms_2d_px``,
            ``n_depth``, ``rms_depth_m`` (RMS of the raw, unweighted residuals of the inliers).
    """

    cost: float
    H: np.ndarray
    g: np.ndarray
    stats: Dict[str, float]


def _huber(e: np.ndarray, k: float) -> Tuple[np.ndarray, np.ndarray]:
    """Huber cost rho(e) (with rho = e^2 near 0) and IRLS weight rho'(e) / (2 e), for |e| in sigmas."""
    a = np.abs(e)
    inside = a <= k
    rho = np.where(inside, a * a, 2 * k * a - k * k)
    w = np.where(inside, 1.0, k / np.maximum(a, 1e-12))
    return rho, w


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x b over the last axis (broadcasting); np.cross's axis handling costs more than the maths."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def _fill_rows(J: np.ndarray, row0: int, G: np.ndarray, y: np.ndarray, R: np.ndarray, lin: LinearPoints,
               idx: np.ndarray, with_identity: bool) -> int:
    """Write the Jacobian rows of residuals ``res(x)`` of camera points ``x = R X + t``.

    G (P, r, 3) is d res / d x per point (already scaled by the term's weight), y (P, 3) is
    x - t. With ``g`` a row of G: d/dw = (y x g), d/dt = g, d/dbeta = (g R) B, d/dalpha = (g R) A.
    Returns the next free row.
    """
    P, r = G.shape[0], G.shape[1]
    E = lin.expression.shape[2]
    rows = slice(row0, row0 + P * r)
    Jv = J[rows].reshape(P, r, -1)  # (P, r, n) view
    Jv[:, :, 0:3] = _cross(y[:, None, :], G)
    Jv[:, :, 3:6] = G
    M = (G.reshape(-1, 3) @ R).reshape(P, r, 3).astype(np.float32)  # (P, r, 3) model-frame rows
    Jv[:, :, 6:6 + E] = np.matmul(M, lin.expression_pm[idx])  # (P, r, 3) @ (P, 3, E)
    if with_identity:
        A = lin.identity[:, idx]  # (3, P, K)
        Jv[:, :, 6 + E:] = (M[:, :, 0:1] * A[0][:, None] + M[:, :, 1:2] * A[1][:, None]
                            + M[:, :, 2:3] * A[2][:, None])
    return row0 + P * r


def linearize(basis: FaceBasis, obs: Observation, R: np.ndarray, t: np.ndarray, beta: np.ndarray,
              alpha: np.ndarray, tw: TermWeights, *, with_identity: bool, use_depth: bool = True,
              use_3d: bool = True, use_2d: bool = True, depth_gate_m: Optional[float] = None,
              jacobian: bool = True) -> Linearization:
    """Data terms of one frame at pose (R, t) and coefficients (beta, alpha).

    Args:
        basis: the model's fitted points.
        obs: the frame's measurements (with :func:`select_landmarks` applied).
        R: (3, 3) rotation, t: (3,) metres: x_cam = R X + t.
        beta: (E,) expression weights; alpha: (K,) identity coefficients.
        tw: noise levels and gates.
        with_identity: also differentiate w.r.t. alpha (H and g grow by K).
        use_depth / use_3d / use_2d: switch terms off (a term without data is off anyway).
        depth_gate_m: override of ``tw.depth_gate_m`` (wider while a fit is far off).
        jacobian: False computes the cost and statistics only (H, g are empty).
    """
    E, K = basis.num_expression, basis.num_identity
    n = 6 + E + (K if with_identity else 0)
    cost = 0.0
    stats: Dict[str, float] = {"n_3d": 0, "rms_3d_m": float("nan"), "n_2d": 0, "rms_2d_px": float("nan"),
                               "n_depth": 0, "rms_depth_m": float("nan")}
    blocks = []  # (G (P, r, 3), residual (P, r), y (P, 3), LinearPoints, point ids)
    Kc = obs.intrinsics
    w_tab = basis.landmark_weight
    if use_depth and obs.depth is not None and basis.num_dense:
        X, nrm = basis.dense_points(alpha, beta)
        x = X @ R.T + t
        nrm = nrm @ R.T  # (D, 3) camera frame
        z = x[:, 2]
        H_img, W_img = obs.depth.shape
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.rint(Kc.fx * x[:, 0] / z + Kc.cx)
            v = np.rint(Kc.fy * x[:, 1] / z + Kc.cy)
        facing = (nrm * x).sum(1) / np.maximum(np.linalg.norm(x, axis=1), 1e-9)  # cos; < 0 faces us
        ok = (z > 1e-3) & (u >= 0) & (u < W_img) & (v >= 0) & (v < H_img) & (facing < -tw.min_facing_cos)
        idx = np.flatnonzero(ok)
        zm = obs.depth[v[idx].astype(np.int64), u[idx].astype(np.int64)].astype(np.float64) * obs.depth_scale
        gate = tw.depth_gate_m if depth_gate_m is None else depth_gate_m
        with np.errstate(invalid="ignore"):
            good = np.isfinite(zm) & (zm > 0) & (np.abs(zm - z[idx]) < gate)
        idx, zm = idx[good], zm[good]
        if len(idx):
            xd, nd = x[idx], nrm[idx]
            # The measured point of the pixel the vertex projects to (its centre, fixed while x
            # moves within the pixel: the Jacobian n is then exact).
            q = np.stack([(u[idx] - Kc.cx) / Kc.fx * zm, (v[idx] - Kc.cy) / Kc.fy * zm, zm], 1)  # (Dv, 3)
            e = ((xd - q) * nd).sum(1)  # (Dv,) metres, point-to-plane
            rho, irls = _huber(e / tw.depth_sigma_m, tw.huber)
            cost += 0.5 * float(rho.sum())
            stats["n_depth"] = int(len(idx))
            stats["rms_depth_m"] = float(np.sqrt((e ** 2).mean()))
            if jacobian:
                s = np.sqrt(irls) / tw.depth_sigma_m
                blocks.append(((s[:, None] * nd)[:, None, :], (s * e)[:, None], xd - t, basis.dense, idx))
    # With enough dense depth the landmarks only steer (see TermWeights.landmark_scale_with_depth).
    scale = tw.landmark_scale_with_depth if stats["n_depth"] >= tw.min_depth_samples else 1.0
    sigma3, sigma2 = tw.landmark_sigma_m * scale, tw.pixel_sigma_px * scale
    if (use_3d and len(obs.idx3d)) or (use_2d and len(obs.idx2d)):
        x_lm = basis.landmark_points(alpha, beta) @ R.T + t  # (478, 3)
    if use_3d and len(obs.idx3d):
        i3 = obs.idx3d
        e = x_lm[i3] - obs.points[i3]  # (P3, 3) metres
        dist = np.linalg.norm(e, axis=1) / sigma3
        rho, irls = _huber(dist, tw.huber)
        cost += 0.5 * float((w_tab[i3] * rho).sum())
        inl = dist <= 3 * tw.huber
        stats["n_3d"] = int(len(i3))
        stats["rms_3d_m"] = float(np.sqrt((e[inl] ** 2).sum(1).mean())) if inl.any() else float("nan")
        if jacobian:
            s = np.sqrt(w_tab[i3] * irls) / sigma3  # (P3,)
            G = s[:, None, None] * np.eye(3)  # (P3, 3, 3)
            blocks.append((G, s[:, None] * e, x_lm[i3] - t, basis.landmarks, i3))
    if use_2d and len(obs.idx2d):
        i2 = obs.idx2d
        x2 = x_lm[i2]
        z = x2[:, 2]
        front = z > 1e-3
        i2, x2, z = i2[front], x2[front], z[front]
        uv = np.stack([Kc.fx * x2[:, 0] / z + Kc.cx, Kc.fy * x2[:, 1] / z + Kc.cy], 1)
        e = uv - obs.uv[i2]  # (P2, 2) px
        dist = np.linalg.norm(e, axis=1) / sigma2
        rho, irls = _huber(dist, tw.huber)
        cost += 0.5 * float((w_tab[i2] * rho).sum())
        stats["n_2d"] = int(len(i2))
        inl = dist <= 3 * tw.huber
        stats["rms_2d_px"] = float(np.sqrt((e[inl] ** 2).sum(1).mean())) if inl.any() else float("nan")
        if jacobian and len(i2):
            s = np.sqrt(w_tab[i2] * irls) / sigma2
            G = np.zeros((len(i2), 2, 3))  # (P2, 2, 3) d(u, v)/dx, scaled
            G[:, 0, 0] = s * Kc.fx / z
            G[:, 0, 2] = -s * Kc.fx * x2[:, 0] / (z * z)
            G[:, 1, 1] = s * Kc.fy / z
            G[:, 1, 2] = -s * Kc.fy * x2[:, 1] / (z * z)
            blocks.append((G, s[:, None] * e, x2 - t, basis.landmarks, i2))
    if not jacobian:
        return Linearization(cost, np.zeros((0, 0)), np.zeros(0), stats)
    rows = sum(b[0].shape[0] * b[0].shape[1] for b in blocks)
    if rows == 0:
        return Linearization(cost, np.zeros((n, n)), np.zeros(n), stats)
    # float32 Jacobian: residuals are in sigmas and the system has < 200 unknowns, so single
    # precision loses nothing that matters and halves the cost of J^T J.
    J = np.empty((rows, n), np.float32)
    r = np.empty(rows, np.float32)
    row = 0
    for G, res, y, lin, idx in blocks:
        r[row:row + res.size] = res.reshape(-1)
        row = _fill_rows(J, row, G, y, R, lin, idx, with_identity)
    H = (J.T @ J).astype(np.float64)
    g = (J.T @ r).astype(np.float64)
    return Linearization(cost, H, g, stats)


def check_landmarks(uv, points, valid) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Validate and convert a landmark frame: uv (478, 2) px, points (478, 3) m or None, valid (478,).

    :raises ValueError: a wrong shape or a non-numeric array (the only per-frame errors a tracker
        raises; missing values are NaN and simply not used).
    """
    try:
        uv = np.asarray(uv, dtype=np.float64)
        pts = None if points is None else np.asarray(points, dtype=np.float64)
        val = np.ones(NUM_LANDMARKS, bool) if valid is None else np.asarray(valid)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"landmarks must be numeric arrays: {exc}") from None
    if uv.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"uv must have shape ({NUM_LANDMARKS}, 2), got {uv.shape}")
    if pts is not None and pts.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"points must have shape ({NUM_LANDMARKS}, 3), got {pts.shape}")
    if val.shape != (NUM_LANDMARKS,):
        raise ValueError(f"valid must have shape ({NUM_LANDMARKS},), got {val.shape}")
    return uv, pts, val.astype(bool)
