"""The seven expression categories as ICT-FaceKit (ARKit-named) expression weights.

Each category is a fixed prototype: a set of blendshape weights in [0, 1] built from the FACS
action units (AUs) of Ekman's EMFACS prototypes, through the upstream README's table of which ICT
shapes stand for which AU (AU1 -> browInnerUp, AU2 -> browOuterUp, AU4 -> browDown, AU5 -> eyeWide,
AU6 -> cheekSquint, AU7 -> eyeSquint, AU9 -> noseSneer, AU10 -> mouthShrugUpper, AU11 ->
mouthUpperUp, AU12 -> mouthSmile, AU15 -> mouthFrown, AU16 -> mouthLowerDown, AU17 ->
mouthShrugLower, AU20 -> mouthStretch, AU24 -> mouthPress, AU26/27 -> jawOpen; each _L + _R).
A category at intensity ``s`` is ``s`` times its prototype (0 = the neutral face, 1 = the full
expression), the convention of ``facediff_ros/ExpressionTarget``.

========== ======================= ==============================================================
category   AUs (EMFACS prototype)  ICT shapes (weight at intensity 1)
========== ======================= ==============================================================
neutral    none                    none
happy      6 + 12 (+ 25)           mouthSmile 1.0, cheekSquint 0.7, eyeSquint 0.25 (AU6 narrows
                                   the eye), jawOpen 0.08 (AU25, lips just apart)
sad        1 + 4 + 15 (+ 17)       browInnerUp 0.9, browDown 0.3, mouthFrown 0.8,
                                   mouthShrugLower 0.45, eyeBlink 0.15 (drooping upper lid)
surprised  1 + 2 + 5 + 26/27       browInnerUp 0.9, browOuterUp 0.9, eyeWide 0.8, jawOpen 0.45
angry      4 + 5 + 7 + 23/24       browDown 1.0, eyeWide 0.35, eyeSquint 0.6, mouthPress 0.7,
                                   mouthRollLower 0.2 + mouthRollUpper 0.2 (AU23 lip tightener
                                   has no ICT shape; a slight roll narrows the red of the lips)
disgusted  9 + 15 + 16 (+ 10)      noseSneer 0.9, mouthUpperUp 0.4 + mouthShrugUpper 0.3 (AU10),
                                   mouthFrown 0.5, mouthLowerDown 0.25, browDown 0.3, cheekSquint 0.3
fearful    1 + 2 + 4 + 5 + 7       browInnerUp 1.0, browOuterUp 0.6, browDown 0.3, eyeWide 1.0,
           + 20 + 26               eyeSquint 0.2, mouthStretch 0.8, jawOpen 0.3
========== ======================= ==============================================================

Weights of paired shapes are the same on both sides (``_L`` and ``_R``). The weights were chosen
by rendering each category and comparing it with the AU descriptions; two categories share shapes
(surprise and fear both raise the brows and widen the eyes) but no prototype is a multiple of
another, so :func:`nearest_category` separates them.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import numpy as np

# Order of the ExpressionTarget.msg constants NEUTRAL = 0 ... FEARFUL = 6.
CATEGORIES: Tuple[str, ...] = ("neutral", "happy", "sad", "surprised", "angry", "disgusted", "fearful")

# Prototype weights at intensity 1, by shape stem; a stem ending in "_" is expanded to _L and _R.
_PROTOTYPES: Dict[str, Dict[str, float]] = {
    "neutral": {},
    "happy": {"mouthSmile_": 1.0, "cheekSquint_": 0.7, "eyeSquint_": 0.25, "jawOpen": 0.08},
    "sad": {"browInnerUp_": 0.9, "browDown_": 0.3, "mouthFrown_": 0.8, "mouthShrugLower": 0.45,
            "eyeBlink_": 0.15},
    "surprised": {"browInnerUp_": 0.9, "browOuterUp_": 0.9, "eyeWide_": 0.8, "jawOpen": 0.45},
    "angry": {"browDown_": 1.0, "eyeWide_": 0.35, "eyeSquint_": 0.6, "mouthPress_": 0.7,
              "mouthRollLower": 0.2, "mouthRollUpper": 0.2},
    "disgusted": {"noseSneer_": 0.9, "mouthUpperUp_": 0.4, "mouthShrugUpper": 0.3, "mouthFrown_": 0.5,
                  "mouthLowerDown_": 0.25, "browDown_": 0.3, "cheekSquint_": 0.3},
    "fearful": {"browInnerUp_": 1.0, "browOuterUp_": 0.6, "browDown_": 0.3, "eyeWide_": 1.0,
                "eyeSquint_": 0.2, "mouthStretch_": 0.8, "jawOpen": 0.3},
}


def _expand(stems: Dict[str, float]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for stem, w in stems.items():
        for name in ((stem + "L", stem + "R") if stem.endswith("_") else (stem,)):
            out[name] = w
    return out


# name -> weight at intensity 1, per category.
PROTOTYPES: Dict[str, Dict[str, float]] = {c: _expand(_PROTOTYPES[c]) for c in CATEGORIES}


def category_index(name: Union[str, int]) -> int:
    """Index of a category (its ExpressionTarget constant) from its name (any case) or index."""
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if not 0 <= int(name) < len(CATEGORIES):
            raise ValueError(f"category index must be in [0, {len(CATEGORIES) - 1}], got {name}")
        return int(name)
    if isinstance(name, str) and name.lower() in CATEGORIES:
        return CATEGORIES.index(name.lower())
    raise ValueError(f"category must be one of {CATEGORIES} or an index 0..{len(CATEGORIES) - 1}, "
                     f"got {name!r}")


def _check_names(names: Sequence[str]) -> list:
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError("names must not repeat a shape name")
    needed = set().union(*(p.keys() for p in PROTOTYPES.values()))
    missing = sorted(needed - set(names))
    if missing:
        raise ValueError(f"names lacks the shapes the categories use: {missing}")
    return names


def _check_unit(name: str, x: float) -> float:
    x = float(x)
    if not np.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {x}")
    return x


def category_weights(names: Sequence[str], category: Union[str, int], intensity: float = 1.0) -> np.ndarray:
    """Expression weights of a category at an intensity.

    Args:
        names: the E expression names of the model (``MorphableModel.expression_names``), in the
            order of its expression basis; it must hold every shape the categories use.
        category: a name from :data:`CATEGORIES` or its index (the ExpressionTarget constant).
        intensity: in [0, 1]; the weights scale linearly from the neutral face (0) to the
            prototype (1).

    Returns:
        (E,) float32 weights in [0, 1], aligned with ``names``.
    """
    names = _check_names(names)
    proto = PROTOTYPES[CATEGORIES[category_index(category)]]
    s = _check_unit("intensity", intensity)
    out = np.zeros(len(names), dtype=np.float32)
    for i, n in enumerate(names):
        out[i] = s * proto.get(n, 0.0)
    return out


def blend(names: Sequence[str], cat_a: Union[str, int], cat_b: Union[str, int], alpha: float,
          intensity: float = 1.0) -> np.ndarray:
    """Convex blend ``(1 - alpha) * a + alpha * b`` of two categories' weights at one intensity.

    ``alpha`` in [0, 1] (0 gives ``cat_a``, 1 gives ``cat_b``). Returns (E,) float32 in [0, 1].
    """
    alpha = _check_unit("alpha", alpha)
    wa = category_weights(names, cat_a, intensity)
    wb = category_weights(names, cat_b, intensity)
    return ((1.0 - alpha) * wa + alpha * wb).astype(np.float32)


def nearest_category(names: Sequence[str], weights) -> Tuple[str, float]:
    """The category and intensity that best explain a weight vector.

    Each non-neutral category spans the ray ``s * prototype``, s in [0, 1]; the weights are
    projected onto each ray (least squares, s clipped to [0, 1]) and the category with the smallest
    residual wins. The neutral face is the zero vector: all-zero weights (or weights no ray
    explains better than zero) give ``("neutral", 0.0)``.

    Args:
        names: the E expression names, as for :func:`category_weights`.
        weights: (E,) expression weights aligned with ``names``.

    Returns:
        (category name, intensity in [0, 1]).
    """
    names = _check_names(names)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(names),) or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be a finite ({len(names)},) vector, got shape {w.shape}")
    best = ("neutral", 0.0)
    best_res = float(w @ w)
    for cat in CATEGORIES[1:]:
        p = category_weights(names, cat, 1.0).astype(np.float64)
        s = float(np.clip((w @ p) / (p @ p), 0.0, 1.0))
        r = w - s * p
        res = float(r @ r)
        # Strict improvement (with a little slack for rounding) keeps ties on neutral.
        if res < best_res - 1e-12:
            best, best_res = (cat, s), res
    return best
