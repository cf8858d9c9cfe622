"""One live avatar frame: a camera frame + the fitted face model -> the frame with the face re-expressed.

:meth:`AvatarEditor.edit_frame` runs the editor on a camera frame (ROS-free; the editor node wraps
it). Stages, each timed (``AvatarFrame.timings``, milliseconds):

1. ``mesh``: the fitted mesh (identity, expression, pose: ``x_cam = R x_model + t``) and the
   target mesh (same identity and pose, the category's weights at the intensity:
   :func:`facediff_ros.core.face.expressions.category_weights`), camera optical frame, metres;
   only the vertices the rendered triangles and the crop centre use (``AvatarEditor.vertex_ids``),
   their neutral + identity part computed once per fit identity and shared by both meshes;
2. ``crop``: the face crop from the fitted mesh (:func:`~facediff_ros.core.editor.inputs.face_crop`);
3. ``sample``: the source colour (anti-aliased) and depth (nearest) crops;
4. ``inputs``: source RGB-D and target buffers
   (:func:`~facediff_ros.core.editor.inputs.network_inputs`, the function the training pairs use);
5. ``network``: the few-step sampler over any backend (``editor.edit``);
6. ``detail`` (``AvatarConfig.detail_paste``): the model-only warp at the image's resolution,
   sampled from the frame (:func:`~facediff_ros.core.editor.detail_paste.image_warp`);
7. ``paste``: the edited colour composed back into the frame and the edited depth written into it
   (work on the crop's footprint only: the rest of the frame is copied unchanged).

What is written where (crop masks, then mapped to the image by the crop's inverse mapping):

- colour: over the union of the source and target face renders, grown by one crop pixel (so the
  network also repaints the silhouette's mixed pixels and the background a shrinking face
  uncovers), blended with the crop's bilinear alpha (a soft edge ~1 crop pixel wide); every
  other pixel keeps its exact input value. With ``detail_paste`` (default) the colour pasted is
  the person's own warped pixels at the image's resolution plus the network's 64 px
  correction (and the network's colour alone where the warp has none: mouth interior,
  disocclusions); without it, the network's 64 px colour upsampled (blurred at the face);
- depth: on the target face, the network's depth (where it is inside the normalised range); on
  the rest of the source face (what the new expression no longer covers, e.g. a jaw that closed)
  no depth, since what lies behind it was never measured; elsewhere the input depth unchanged.
- ``output='head'`` keeps only the edited region (colour 0, depth NaN elsewhere).

Colour-only (webcam) mode: with ``depth=None`` the fitted source mesh's rendered depth stands in
for the sensor's as the network's source depth, and the output has depth on the edited face only.

Intensity 0 and the neutral category still run the network: what "neutral" looks like for this
person is the network's to decide, not a shortcut's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import cv2
import numpy as np

from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.editor.crop import CropConfig, FaceCrop
from facediff_ros.core.editor.detail_paste import detail_compose, footprint, image_warp
from facediff_ros.core.editor.inputs import editor_triangles, face_crop, network_inputs
from facediff_ros.core.face import expressions
from facediff_ros.core.face.morphable_model import MorphableModel
from facediff_ros.core.render.renderer import Renderer

OUTPUTS = ("frame", "head")
MAX_LIVE_STEPS = 8  # a live edit: 2 is the default; 8 costs 4x its network time


@dataclass(frozen=True)
class AvatarConfig:
    """How a frame is edited."""

    # Network evaluations per edit (the few-step sampler). 2: on 96 held-out pairs 1 / 2 / 4 steps
    # gave 33.97 / 33.56 / 32.76 dB and 3.38 / 3.31 / 3.64 mm, edit CPU 36 / 47 / 63 ms: 2 has the
    # best depth, +0.8 dB over 4 and 16 ms less CPU per frame.
    steps: int = 2
    output: str = "frame"   # 'frame': the edited face in the unchanged frame; 'head': the edited region only
    seed: int = 0           # the editor's fixed starting noise (the same every frame: no shimmer)
    # True: the colour is pasted with the person's own full-resolution detail plus the network's
    # 64 px correction (core/editor/detail_paste.py); False: the network's 64 px colour upsampled.
    detail_paste: bool = True
    # Low-pass (crop pixels, Gaussian sigma) of the network's colour correction in the detail
    # paste: the network's output is softer than its warped input at its own scale, so its full
    # correction would cancel the person's detail near the 64 px Nyquist; 0 takes it unfiltered.
    detail_sigma: float = 1.0

    def __post_init__(self):
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or \
                not 1 <= self.steps <= MAX_LIVE_STEPS:
            raise ValueError(f"steps must be an integer in [1, {MAX_LIVE_STEPS}], got {self.steps!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {self.output!r}")
        if not isinstance(self.detail_paste, (bool, np.bool_)):
            raise ValueError(f"detail_paste must be a bool, got {self.detail_paste!r}")
        if isinstance(self.detail_sigma, bool) or not isinstance(self.detail_sigma, (int, float)) or \
                not np.isfinite(self.detail_sigma) or not 0 <= self.detail_sigma <= 8:
            raise ValueError(f"detail_sigma must be in [0, 8] crop pixels, got {self.detail_sigma!r}")


@dataclass
class AvatarFrame:
    """The edited frame, in the input camera's image (same size, same optical frame)."""

    color: np.ndarray    # (H, W, 3) uint8 RGB
    depth_m: np.ndarray  # (H, W) float32 z-depth (m), NaN = no depth
    mask: np.ndarray     # (H, W) bool: pixels the edit changed (colour or depth)
    crop: FaceCrop       # the crop the network worked in
    category: str        # the target category's name
    intensity: float
    colour_only: bool    # True: no input depth, the fitted mesh stood in for it
    timings: Dict[str, float] = field(default_factory=dict)  # stage -> milliseconds


def check_target(category: Union[str, int], intensity) -> tuple:
    """(category index, intensity as float) or ValueError naming the valid values."""
    idx = expressions.category_index(category)  # raises with the list of names
    if isinstance(intensity, bool) or not isinstance(intensity, (int, float, np.floating, np.integer)):
        raise ValueError(f"intensity must be a number in [0, 1], got {intensity!r}")
    x = float(intensity)
    if not np.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(f"intensity must be a number in [0, 1], got {intensity!r}")
    return idx, x


def crop_config_for(weights_dir, size_px: int) -> CropConfig:
    """The crop the weights in ``weights_dir`` were trained on: ``config.json``'s
    ``data.pair_config.crop`` when recorded there (train_editor writes it), else the default
    geometry at the network's size.

    :raises ValueError: a recorded crop of another size than the network's.
    """
    crop = None
    path = Path(weights_dir) / "config.json"
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
            crop = ((meta.get("data") or {}).get("pair_config") or {}).get("crop")
        except (ValueError, AttributeError):
            crop = None
    config = CropConfig(**crop) if isinstance(crop, dict) else CropConfig(size_px=int(size_px))
    if config.size_px != size_px:
        raise ValueError(f"{path}: the pairs' crop is {config.size_px} px, the network's {size_px} px")
    return config


class AvatarEditor:
    """Edits camera frames with a face model fit; see the module docstring.

    :param editor: anything with ``size`` (the crop side, px) and
        ``edit(source (4, S, S), buffers (8, S, S), category, intensity, steps=) -> (4, S, S)``:
        an :class:`~facediff_ros.core.editor.edit.ExpressionEditor` or a
        :class:`~facediff_ros.core.editor.backends.BackendEditor`.
    :param model: the morphable model the fits are of (loaded when None).
    :param config: :class:`AvatarConfig`.
    :param crop: the crop geometry the network was trained with (default: :class:`CropConfig` at
        the editor's size).
    """

    def __init__(self, editor, model: Optional[MorphableModel] = None, config: Optional[AvatarConfig] = None,
                 crop: Optional[CropConfig] = None):
        self.config = config if config is not None else AvatarConfig()
        if not isinstance(self.config, AvatarConfig):
            raise ValueError(f"config must be an AvatarConfig, got {type(self.config).__name__}")
        if not callable(getattr(editor, "edit", None)) or not isinstance(getattr(editor, "size", None), int):
            raise ValueError("editor must have an int .size and an .edit(source, buffers, category, "
                             "intensity, steps=) method")
        self.editor = editor
        self.crop_config = crop if crop is not None else CropConfig(size_px=editor.size)
        if self.crop_config.size_px != editor.size:
            raise ValueError(f"crop size {self.crop_config.size_px} px differs from the editor's "
                             f"{editor.size} px")
        self.model = model if model is not None else MorphableModel.load()
        self.names = list(self.model.expression_names)
        # Only the vertices the rendered triangles and the crop centre use are computed (~89% of
        # the model's): triangles and landmark ids index this subset.
        tris = editor_triangles(self.model)
        self.vertex_ids = np.unique(np.concatenate([tris.reshape(-1), self.model.landmarks68]))  # (M,)
        local = np.full(self.model.num_vertices, -1, np.int64)
        local[self.vertex_ids] = np.arange(len(self.vertex_ids))
        self.triangles = local[tris]  # (F, 3) ids into the subset
        self.centre_ids = local[self.model.landmarks68]  # (68,) ids into the subset
        E = self.model.num_expression
        self._expression_basis = np.ascontiguousarray(
            self.model.expression_basis[:, self.vertex_ids].reshape(E, -1))  # (E, M * 3) m per unit weight
        self._identity_part = (None, None)  # (identity bytes, (M, 3) neutral + identity offsets): one fit's

    @classmethod
    def from_weights(cls, weights_dir, backend: str = "auto", model: Optional[MorphableModel] = None,
                     config: Optional[AvatarConfig] = None, threads: Optional[int] = 2,
                     log: Optional[Callable[[str], None]] = None, spinning: Optional[bool] = False
                     ) -> "AvatarEditor":
        """An editor over the weights in ``weights_dir`` on ``backend`` (see
        :func:`~facediff_ros.core.editor.backends.make_backend`; ``.backend`` holds it, with ``.why``).

        ``spinning``: onnxruntime's idle threads busy-wait between operators. Off by default: the
        editor shares a small machine's cores with the capture, landmark and fitting nodes, and
        spinning threads take CPU from them (None: onnxruntime's default, on).

        :raises ValueError: missing or unreadable weights (the message names the file).
        :raises BackendUnavailable: the backend cannot run here.
        """
        from facediff_ros.core.editor.backends import BackendEditor, make_backend  # torch: only when used
        config = config if config is not None else AvatarConfig()
        den = make_backend(backend, weights_dir, threads=threads, log=log, spinning=spinning)
        editor = BackendEditor(den, steps=config.steps, seed=config.seed)
        out = cls(editor, model, config, crop_config_for(weights_dir, editor.size))
        out.backend = den
        return out

    # ---- one frame -------------------------------------------------------------------------------
    def check_fit(self, fit):
        """(identity, expression clipped to [0, 1], R, t) of a fit, or ValueError saying what is wrong."""
        identity = np.asarray(getattr(fit, "identity", None), dtype=np.float64)
        expression = np.asarray(getattr(fit, "expression", None), dtype=np.float64)
        R = np.asarray(getattr(fit, "R", None), dtype=np.float64)
        t = np.asarray(getattr(fit, "t", None), dtype=np.float64)
        if identity.ndim != 1 or not 0 <= len(identity) <= self.model.num_identity:
            raise ValueError(f"fit.identity must be (K,) with K <= {self.model.num_identity}, "
                             f"got shape {identity.shape}")
        if expression.shape != (self.model.num_expression,):
            raise ValueError(f"fit.expression must be ({self.model.num_expression},) in the model's order, "
                             f"got shape {expression.shape}")
        if R.shape != (3, 3) or t.shape != (3,):
            raise ValueError(f"fit.R must be (3, 3) and fit.t (3,), got {R.shape} and {t.shape}")
        for name, a in (("identity", identity), ("expression", expression), ("R", R), ("t", t)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"fit.{name} contains NaN or inf")
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0:
            raise ValueError("fit.R is not a rotation")
        if t[2] <= 0:
            raise ValueError(f"fit.t puts the head behind the camera (z = {t[2]:.3f} m)")
        # The fitter clamps weights into [0, 1]; a message may carry a rounding step past either end.
        return identity.astype(np.float32), np.clip(expression, 0, 1).astype(np.float32), R, t

    def _identity_vertices(self, identity: np.ndarray) -> np.ndarray:
        """(M, 3) float32 neutral + identity offsets of the vertex subset (model frame, m), kept
        while the fit's identity stays the same (a tracker's identity changes rarely)."""
        key = identity.tobytes()
        cached_key, base = self._identity_part
        if cached_key != key:
            # The same sum as MorphableModel.vertices (neutral + identity first), on the subset.
            base = self.model.vertices(identity if len(identity) else None, None)[self.vertex_ids]
            self._identity_part = (key, base)  # one assignment: safe with a concurrent reader
        return base

    def _posed(self, identity, weights, R, t) -> np.ndarray:
        """(M, 3) float32 camera-frame vertices of the subset (``x_cam = R x_model + t``, m)."""
        base = self._identity_vertices(identity)
        w = np.asarray(weights, dtype=np.float32)
        v = base + (w @ self._expression_basis).reshape(base.shape)  # (M, 3) model frame
        return (v @ R.T.astype(np.float32) + t.astype(np.float32)).astype(np.float32)  # (M, 3) camera

    def edit_frame(self, color: np.ndarray, depth: Optional[np.ndarray], intrinsics: Intrinsics, fit,
                   category: Union[str, int], intensity: float, extra_weights: Optional[np.ndarray] = None,
                   steps: Optional[int] = None, output: Optional[str] = None) -> AvatarFrame:
        """Edit one frame.

        :param color: (H, W, 3) uint8 RGB of the intrinsics' size.
        :param depth: (H, W) float z-depth in metres aligned to the colour (0 or NaN = none), or None
            for colour-only mode.
        :param intrinsics: the colour camera's.
        :param fit: the face model state (``identity`` (K,), ``expression`` (E,) in the model's order,
            ``R`` (3, 3), ``t`` (3,) m: a :class:`~facediff_ros.core.fitting.tracker.FitResult`).
        :param category: a name of :data:`~facediff_ros.core.face.expressions.CATEGORIES` or its index.
        :param intensity: in [0, 1].
        :param extra_weights: optional (E,) weights in [0, 1] added to the category's for the target
            mesh (ExpressionTarget's raw weights), clipped to [0, 1]; the network still gets the
            category (it was trained on category prototypes only).
        :param steps: / :param output: override the config for this call.
        :raises ValueError: bad sizes or dtypes, a fit with NaN or of another model, an unknown
            category, an intensity outside [0, 1], a face whose centre is outside the image.
        """
        t0 = time.perf_counter()
        times: Dict[str, float] = {}
        cfg = replace(self.config, steps=self.config.steps if steps is None else steps,
                      output=self.config.output if output is None else output)
        cat, inten = check_target(category, intensity)
        if not isinstance(intrinsics, Intrinsics):
            raise ValueError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        img = np.asarray(color)
        if img.dtype != np.uint8 or img.shape != intrinsics.shape + (3,):
            raise ValueError(f"color must be {intrinsics.shape + (3,)} uint8 as the intrinsics, "
                             f"got {img.shape} {img.dtype}")
        base_depth = None
        if depth is not None:
            d = np.asarray(depth)
            if d.shape != intrinsics.shape or d.dtype.kind != "f":
                raise ValueError(f"depth must be {intrinsics.shape} float metres as the intrinsics, "
                                 f"got {d.shape} {d.dtype}")
            with np.errstate(invalid="ignore"):
                base_depth = np.where(np.isfinite(d) & (d > 0), d, np.nan).astype(np.float32)  # (H, W)
        identity, expression, R, t = self.check_fit(fit)
        w_tgt = expressions.category_weights(self.names, cat, inten)
        if extra_weights is not None:
            extra = np.asarray(extra_weights, dtype=np.float32)
            if extra.shape != w_tgt.shape or not np.all(np.isfinite(extra)):
                raise ValueError(f"extra_weights must be finite ({len(w_tgt)},), got {extra.shape}")
            w_tgt = np.clip(w_tgt + extra, 0.0, 1.0).astype(np.float32)
        v_src = self._posed(identity, expression, R, t)
        v_tgt = self._posed(identity, w_tgt, R, t)
        t1 = time.perf_counter()
        times["mesh"] = t1 - t0

        crop = face_crop(v_src, self.centre_ids, intrinsics, self.crop_config)
        uc, vc = intrinsics.project(crop.centre)
        H, W = intrinsics.shape
        if not (0 <= uc < W and 0 <= vc < H):
            raise ValueError(f"the face centre projects to ({uc:.0f}, {vc:.0f}) px, outside the {W}x{H} "
                             f"image")
        t2 = time.perf_counter()
        times["crop"] = t2 - t1

        src_rgb = crop.sample_color(img) * np.float32(1.0 / 255.0)  # (S, S, 3) in [0, 1]
        src_z = None if base_depth is None else crop.sample_depth(base_depth)  # (S, S) m, 0 = none
        t3 = time.perf_counter()
        times["sample"] = t3 - t2

        inputs = network_inputs(crop, src_rgb, src_z, v_src, v_tgt, self.triangles,
                                Renderer(crop.intrinsics))
        t4 = time.perf_counter()
        times["inputs"] = t4 - t3

        out = np.asarray(self.editor.edit(inputs.source, inputs.buffers, cat, inten, steps=cfg.steps))
        if out.shape != inputs.source.shape or not np.all(np.isfinite(out)):
            raise ValueError(f"the editor returned {out.shape} (finite: {bool(np.all(np.isfinite(out)))}), "
                             f"expected finite {inputs.source.shape}")
        t5 = time.perf_counter()
        times["network"] = t5 - t4

        detail = None
        if cfg.detail_paste:
            # The same warp at the image's resolution over the crop's footprint (module detail_paste).
            warp_rgb, warp_valid = image_warp(img, crop, inputs.warp)  # (h, w, 3) 0..255, (h, w)
            detail = (warp_rgb, warp_valid, cfg.detail_sigma)
        t6 = time.perf_counter()
        times["detail"] = t6 - t5
        frame = self._compose(img, base_depth, crop, out, inputs.warp.mask, inputs.source_render.mask,
                              cfg.output, detail)
        t7 = time.perf_counter()
        times["paste"] = t7 - t6
        times["total"] = t7 - t0
        color_out, depth_out, mask = frame
        return AvatarFrame(color=color_out, depth_m=depth_out, mask=mask, crop=crop,
                           category=expressions.CATEGORIES[cat], intensity=inten,
                           colour_only=base_depth is None,
                           timings={k: 1e3 * v for k, v in times.items()})

    @staticmethod
    def _compose(img: np.ndarray, base_depth: Optional[np.ndarray], crop: FaceCrop, out: np.ndarray,
                 target_mask: np.ndarray, source_mask: np.ndarray, output: str, detail=None):
        """(colour (H, W, 3) uint8, depth (H, W) float32 m with NaN, changed mask (H, W) bool).

        ``detail``: None (the network's colour upsampled by the paste), or (the warped colour over
        the crop's footprint (h, w, 3) 0..255, its validity (h, w) bool, the correction's low-pass
        sigma in crop pixels) for :func:`~facediff_ros.core.editor.detail_paste.detail_compose`.
        """
        rgb = np.clip((np.moveaxis(out[:3], 0, -1) + 1.0) * 127.5, 0.0, 255.0)  # (S, S, 3) 0..255
        n = np.clip(out[3], -1.0, 1.0)
        # +-1 is "at or beyond the range" (the background is clipped there): no surface to write.
        face_z = np.where(target_mask & (np.abs(n) < 1.0), crop.denormalise_depth(n), 0.0)  # (S, S) m
        face = target_mask | source_mask  # (S, S): where the fitted face was or will be
        region = cv2.dilate(face.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
        H, W = img.shape[:2]
        # Everything below works on the crop's footprint only (the image pixels whose centres lie
        # on the crop): outside it no pixel changes, so the full frame is only copied.
        x0, x1, y0, y1 = footprint(crop)
        changed = np.zeros((H, W), bool)
        depth = np.full((H, W), np.nan, np.float32) if base_depth is None else base_depth.copy()
        if x1 <= x0 or y1 <= y0:
            color = img.copy()
        else:
            # The blend's alpha: crop.paste of the region onto zeros with the region as its
            # alpha, i.e. (the region's bilinear lookup) squared.
            up = crop.to_footprint(region)  # (h, w)
            a = up * up
            sel = a > 0
            changed[y0:y1, x0:x1] = sel
            if detail is None:
                color = crop.paste(img, rgb, region)
            else:
                # The same blend as crop.paste, of the detailed colour at the image's own pixels.
                warp_rgb, warp_valid, sigma = detail
                color = img.copy()
                full = detail_compose(crop, warp_rgb, warp_valid, rgb, sigma)
                np.clip(full, 0.0, 255.0, out=full)
                # Over the whole box, no boolean gathers: where alpha is 0 the blend is the old
                # value exactly (old + 0 * finite), so those pixels keep their input value.
                old = img[y0:y1, x0:x1].astype(np.float32)  # (h, w, 3)
                blended = old + a[..., None] * (full - old)  # in [0, 255]: alpha in [0, 1]
                color[y0:y1, x0:x1] = np.rint(blended, out=blended).astype(np.uint8)
            # crop.paste_depth's nearest lookup: face_z where the face was or is; 0 there (the
            # uncovered part) is a hole.
            iy, ix = crop.nearest_in_footprint()
            take = face[iy[:, None], ix[None, :]]  # (h, w)
            box = depth[y0:y1, x0:x1]
            box[take] = face_z[iy[:, None], ix[None, :]][take].astype(np.float32)
            with np.errstate(invalid="ignore"):
                box[~(box > 0)] = np.nan
            changed[y0:y1, x0:x1] |= take  # where depth was written
        if output == "head":
            color = np.where(changed[..., None], color, 0).astype(np.uint8)
            depth = np.where(changed, depth, np.nan).astype(np.float32)
        return color, depth, changed
