"""Export of the editor's denoiser: torch -> ONNX (static shapes) -> TensorRT engine (cached on disk).

Only the network ``v = net(x_t, t, source, buffers, category, intensity)`` is exported; the sampler
stays a small Python loop over it (k-diffusion style), so one exported file serves any step count.

ONNX: static shapes for the config's crop and a fixed batch (1 by default: one face per frame),
opset >= 17, named inputs :data:`INPUT_NAMES` and output ``v``. :func:`export_weights` writes
``editor.onnx`` and ``export.json`` (shapes, opset, the ONNX file's sha256, the max abs difference
to torch on random inputs, the weights' hash so a stale export is recognised).

TensorRT: :func:`build_engine` builds a serialized engine with the documented Python API
(``trt.Builder`` -> network from ``trt.OnnxParser`` -> ``BuilderConfig`` with the FP16 flag where
the platform has fast FP16 and a timing cache loaded and saved -> ``build_serialized_network``).
:func:`ensure_engine` keeps engines in a cache folder keyed by GPU model + compute capability +
TensorRT version + ONNX sha256 + precision, so an engine built for another GPU or TensorRT version
is never loaded: a new key means a new build. ``tensorrt`` is imported lazily; everything else here
works without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from facediff_ros.core.editor.network import (BUFFER_CHANNELS, SOURCE_CHANNELS, TARGET_CHANNELS,
                                              EditorNetConfig, EditorUNet)
from facediff_ros.core.face.expressions import CATEGORIES

INPUT_NAMES = ("x_t", "t", "source", "buffers", "category", "intensity")
OUTPUT_NAME = "v"
ONNX_FILE = "editor.onnx"
EXPORT_FILE = "export.json"
DEFAULT_OPSET = 17     # the lowest the issue allows; torch's legacy exporter and TensorRT 8.6+ both take it
EXPORT_FORMAT = 1
PARITY_TOLERANCE = 1e-4  # float32 ONNX vs torch on CPU agree to ~1e-7 (stack.md); more means a bad graph
TENSORRT_MISSING = ("tensorrt is not installed: the TensorRT backend needs NVIDIA's tensorrt Python package "
                    "(pip install tensorrt --extra-index-url https://pypi.nvidia.com) and a CUDA GPU; "
                    "use backend onnxruntime-cuda, onnxruntime-cpu or torch instead")
PRECISIONS = ("fp16", "fp32")


class BackendUnavailable(RuntimeError):
    """An inference backend cannot run here; the message names what is missing."""


class TensorRTMissing(BackendUnavailable, ImportError):
    """``tensorrt`` cannot be imported (not installed, or a stub without its libraries)."""


class ExportError(RuntimeError):
    """An export or engine build failed; the message names the file and the step."""


def require_tensorrt():
    """The ``tensorrt`` module, imported on first use.

    :raises TensorRTMissing: it is not installed (the message says how to get it and what to use instead).
    """
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a stub package failing on its missing libraries
        raise TensorRTMissing(f"{TENSORRT_MISSING} ({type(exc).__name__}: {exc})") from exc
    return trt


# ---------------------------------------------------------------- shapes and inputs


def io_shapes(config: EditorNetConfig, batch: int = 1) -> Dict[str, Dict]:
    """Name -> {"shape": [...], "dtype": str} of every network input and of the output ``v``.

    Shapes in elements: images (B, C, S, S) with S = ``config.crop_size`` px; per-item scalars (B,).
    """
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    b, s = int(batch), config.crop_size
    return {"x_t": {"shape": [b, TARGET_CHANNELS, s, s], "dtype": "float32"},
            "t": {"shape": [b], "dtype": "float32"},
            "source": {"shape": [b, SOURCE_CHANNELS, s, s], "dtype": "float32"},
            "buffers": {"shape": [b, BUFFER_CHANNELS, s, s], "dtype": "float32"},
            "category": {"shape": [b], "dtype": "int64"},
            "intensity": {"shape": [b], "dtype": "float32"},
            OUTPUT_NAME: {"shape": [b, TARGET_CHANNELS, s, s], "dtype": "float32"}}


def random_inputs(config: EditorNetConfig, batch: int = 1, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random network inputs in their working ranges (for parity checks and benchmarks), by input name.

    x_t ~ N(0, 1); t, intensity ~ U(0, 1); source, buffers ~ U(-1, 1); category uniform over CATEGORIES.
    """
    shapes = io_shapes(config, batch)
    g = np.random.default_rng(seed)
    return {"x_t": g.standard_normal(shapes["x_t"]["shape"]).astype(np.float32),
            "t": g.uniform(0, 1, shapes["t"]["shape"]).astype(np.float32),
            "source": g.uniform(-1, 1, shapes["source"]["shape"]).astype(np.float32),
            "buffers": g.uniform(-1, 1, shapes["buffers"]["shape"]).astype(np.float32),
            "category": g.integers(0, len(CATEGORIES), shapes["category"]["shape"]).astype(np.int64),
            "intensity": g.uniform(0, 1, shapes["intensity"]["shape"]).astype(np.float32)}


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(net: torch.nn.Module) -> str:
    """Hex sha256 over the state dict (names, shapes, dtypes and bytes, in key order).

    Identifies the weights an export came from, whether they were loaded from a folder or are in memory.
    """
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        a = tensor.detach().cpu().contiguous().numpy()
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- torch -> ONNX


def export_onnx(net: EditorUNet, path, batch: int = 1, opset: int = DEFAULT_OPSET) -> Path:
    """Write the network as ONNX with static shapes for ``net.config.crop_size`` and ``batch``.

    The file is written next to ``path`` and renamed into place, so a reader never sees half a model.
    :raises ValueError: opset below 17.
    :raises ExportError: the exporter or the ONNX checker failed.
    """
    if int(opset) < 17:
        raise ValueError(f"opset must be >= 17 (GroupNorm and the exporter's ops), got {opset}")
    import onnx  # imported here: only exporting needs it
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    feeds = random_inputs(net.config, batch)
    args = tuple(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter: it takes opset 17 directly and gives a plain static graph
            # (stack.md: both exporters match onnxruntime to 1e-7; the dynamo one starts at opset 18).
            # Its deprecation notice and GroupNorm's trace-time shape check (static shapes here, so
            # constant is right) would only clutter the output; the parity check is the real test.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(net, args, str(tmp), opset_version=int(opset), dynamo=False,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              do_constant_folding=True)
        onnx.checker.check_model(str(tmp))
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    tmp.replace(path)
    return path


def parity_max_abs_diff(net: EditorUNet, onnx_path, batch: int = 1, samples: int = 3, seed: int = 0) -> float:
    """Largest |onnxruntime(CPU) - torch| over ``samples`` random input sets (same units as v)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i in range(int(samples)):
        feeds = random_inputs(net.config, batch, seed=seed + i)
        with torch.no_grad():
            ref = net.eval()(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).numpy()
        got = sess.run([OUTPUT_NAME], feeds)[0]
        worst = max(worst, float(np.max(np.abs(got - ref))))
    return worst


def _net_config_dict(config: EditorNetConfig) -> Dict:
    d = asdict(config)
    d["channels"] = list(d["channels"])
    return d


def export_weights(net: EditorUNet, out_dir, batch: int = 1, opset: int = DEFAULT_OPSET,
                   parity_samples: int = 3) -> Dict:
    """Write ``editor.onnx`` + ``export.json`` into ``out_dir``; returns what export.json holds.

    :raises ExportError: the export failed, or its parity with torch is worse than PARITY_TOLERANCE
        (the ONNX file is then removed: a wrong model must not be picked up by a backend).
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    path = export_onnx(net, out / ONNX_FILE, batch=batch, opset=opset)
    diff = parity_max_abs_diff(net, path, batch=batch, samples=parity_samples)
    if not diff <= PARITY_TOLERANCE:  # also catches NaN
        path.unlink(missing_ok=True)
        raise ExportError(f"{path}: onnxruntime differs from torch by {diff:.3g} "
                          f"(> {PARITY_TOLERANCE}); removed")
    import onnx
    import onnxruntime
    meta = {"format": EXPORT_FORMAT, "onnx": ONNX_FILE, "sha256": file_sha256(path), "opset": int(opset),
            "batch": int(batch), "crop_size": net.config.crop_size, "shapes": io_shapes(net.config, batch),
            "input_names": list(INPUT_NAMES), "output_names": [OUTPUT_NAME],
            "parity_max_abs_diff": diff, "parity_tolerance": PARITY_TOLERANCE,
            "parity_samples": int(parity_samples),
            "weights_sha256": weights_sha256(net), "net": _net_config_dict(net.config),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "export_s": round(time.perf_counter() - t0, 3)}
    tmp = out / (EXPORT_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    tmp.replace(out / EXPORT_FILE)
    return meta


def read_export(folder) -> Optional[Dict]:
    """export.json of ``folder`` when it and the ONNX file it names are there and agree (sha256), or None."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / EXPORT_FILE).read_text())
        onnx_path = folder / meta["onnx"]
        if meta.get("format") != EXPORT_FORMAT or file_sha256(onnx_path) != meta["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def ensure_onnx(net: EditorUNet, folders, cache_dir, batch: int = 1, opset: int = DEFAULT_OPSET,
                log: Optional[Callable[[str], None]] = None) -> Tuple[Path, Dict]:
    """An ONNX file of exactly these weights at this batch: found in ``folders`` or the cache, or exported.

    :param folders: folders to look in first (e.g. the weights folder, where ``facediff export`` writes).
    :param cache_dir: where a new export goes, in a sub-folder named by the weights' hash and the batch.
    :returns: (path of the ONNX file, its export.json content).
    """
    want = weights_sha256(net)
    sub = Path(cache_dir) / f"onnx-{want[:16]}-b{int(batch)}"
    for folder in [*folders, sub]:
        meta = read_export(folder)
        if meta and meta["weights_sha256"] == want and meta["batch"] == int(batch) and meta["opset"] >= 17:
            return Path(folder) / meta["onnx"], meta
    if log:
        log(f"exporting the editor network to ONNX in {sub} (no export of these weights at batch {batch})")
    return sub / ONNX_FILE, export_weights(net, sub, batch=batch, opset=opset)


# ---------------------------------------------------------------- ONNX -> TensorRT engine cache


@dataclass(frozen=True)
class EngineKey:
    """What an engine is valid for. Any field changing means a different engine file (a rebuild)."""

    gpu: str                 # device name, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0": kernels are chosen per architecture
    tensorrt: str            # engines are not portable across TensorRT versions
    onnx_sha256: str         # the exported network (weights + graph)
    precision: str           # "fp16" or "fp32" (as requested)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def digest(self) -> str:
        """Hex sha256 of the key's fields (JSON, sorted keys)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def engine_name(self) -> str:
        """File name of the engine: ``editor-<precision>-<first 16 hex of the digest>.plan``."""
        return f"editor-{self.precision}-{self.digest()[:16]}.plan"


TIMING_CACHE_FILE = "timing.cache"


def engine_paths(cache_dir, key: EngineKey) -> Tuple[Path, Path]:
    """(engine file, its JSON sidecar holding the key) in ``cache_dir``.

    Engines for other keys stay in the folder: a cache shared by several GPUs (a network home) keeps
    each machine's engine.
    """
    engine = Path(cache_dir) / key.engine_name()
    return engine, engine.with_suffix(".json")


def current_gpu() -> Tuple[str, str]:
    """(name, compute capability "major.minor") of the current CUDA device, through torch.

    :raises RuntimeError: no CUDA device is visible to torch.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible to torch (torch.cuda.is_available() is False); "
                           "TensorRT engines are built for and run on a CUDA GPU")
    i = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(i)
    return torch.cuda.get_device_name(i), f"{major}.{minor}"


def engine_key(onnx_path, precision: str = "fp16", gpu: Optional[Tuple[str, str]] = None,
               tensorrt_version: Optional[str] = None) -> EngineKey:
    """The key of an engine for ``onnx_path`` on this machine (or on the given GPU / TensorRT version).

    :param gpu: (name, compute capability); default: :func:`current_gpu`.
    :param tensorrt_version: default: the installed ``tensorrt.__version__`` (:class:`TensorRTMissing`
        without one).
    """
    # tensorrt first: without it there is nothing to build, whatever the GPU.
    version = tensorrt_version if tensorrt_version is not None else require_tensorrt().__version__
    name, cc = gpu if gpu is not None else current_gpu()
    return EngineKey(gpu=name, compute_capability=cc, tensorrt=version, onnx_sha256=file_sha256(onnx_path),
                     precision=precision)


def build_engine(onnx_path, engine_path, precision: str = "fp16", timing_cache_path=None,
                 workspace_bytes: int = 1 << 30, log: Optional[Callable[[str], None]] = None) -> Dict:
    """Build a serialized TensorRT engine from an ONNX file (TensorRT 10 Python API).

    :param precision: "fp16" sets BuilderFlag.FP16 when the platform has fast FP16 (else FP32 is kept
        and said in the result); "fp32" never sets it.
    :param timing_cache_path: loaded when present, written back after the build (later builds of the
        same or similar networks skip most tactic timing).
    :param workspace_bytes: builder workspace memory pool limit.
    :returns: {"precision_used", "build_s", "bytes"}.
    :raises TensorRTMissing, ExportError: no tensorrt; the parser or the builder failed (with its errors).
    """
    trt = require_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    fp16 = precision == "fp16" and bool(builder.platform_has_fast_fp16)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "fp16" and log:
        log("this GPU has no fast FP16: building the engine in FP32")
    blob = b""
    if timing_cache_path is not None and Path(timing_cache_path).is_file():
        blob = Path(timing_cache_path).read_bytes()
    cache = config.create_timing_cache(blob)  # an empty buffer makes a new cache
    # ignore_mismatch=False: a cache from another device or version is not merged (its timings would mislead)
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    if timing_cache_path is not None:
        tc = Path(timing_cache_path)
        tc.parent.mkdir(parents=True, exist_ok=True)
        tc_tmp = tc.with_name(tc.name + ".tmp")
        tc_tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        tc_tmp.replace(tc)
    return {"precision_used": "fp16" if fp16 else "fp32", "build_s": round(time.perf_counter() - t0, 3),
            "bytes": engine_path.stat().st_size}


def ensure_engine(onnx_path, cache_dir, precision: str = "fp16", key: Optional[EngineKey] = None,
                  build: Callable[..., Dict] = build_engine, force: bool = False,
                  log: Optional[Callable[[str], None]] = None) -> Tuple[Path, Dict]:
    """The cached engine for ``onnx_path`` on this GPU + TensorRT version, built when absent or stale.

    An engine is reused only when its file and its sidecar are there and the sidecar holds exactly
    ``key``; otherwise (another GPU, TensorRT version, ONNX file or precision, a missing or corrupt
    sidecar, ``force``) it is built again, with the shared timing cache in ``cache_dir``.

    :param key: default :func:`engine_key` (needs tensorrt and a GPU); tests pass their own.
    :param build: the builder, ``build(onnx_path, engine_path, precision=, timing_cache_path=, log=)``.
    :returns: (engine path, sidecar content: ``key``, the build's result, and ``built``: whether it
        was built by this call).
    """
    key = key if key is not None else engine_key(onnx_path, precision)
    engine, sidecar = engine_paths(cache_dir, key)
    if not force and engine.is_file():
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("key") == asdict(key):
                return engine, {**meta, "built": False}
        except (OSError, ValueError):
            pass  # missing or corrupt sidecar: rebuild below
        if log:
            log(f"{engine}: its key does not match this GPU/TensorRT/ONNX "
                f"({key.gpu}, TensorRT {key.tensorrt}); rebuilding")
    elif log:
        log(f"building the TensorRT engine {engine} ({key.precision}, {key.gpu}, TensorRT {key.tensorrt})")
    result = build(onnx_path, engine, precision=key.precision,
                   timing_cache_path=Path(cache_dir) / TIMING_CACHE_FILE, log=log)
    meta = {"key": asdict(key), "onnx": str(onnx_path), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(result or {})}
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)
    return engine, {**meta, "built": True}
