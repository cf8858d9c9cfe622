"""Fitting stage: identity, expression and head pose of the morphable model from landmarks + depth.

- :mod:`.energy`: the model's points as linear functions of the coefficients and the energy
  terms (3D landmarks, 2D reprojection, dense point-to-plane depth, priors, temporal) with
  analytic Jacobians;
- :mod:`.solver`: Levenberg-Marquardt over one frame or a batch of frames sharing an identity;
- :mod:`.tracker`: :class:`~.tracker.FaceTracker`, the per-frame tracker (warm start, identity
  lock and refinement, re-initialisation, colour-only mode);
- :mod:`.texture`: per-subject UV texture accumulated over fitted frames.
"""
