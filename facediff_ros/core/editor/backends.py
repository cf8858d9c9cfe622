"""Inference backends for the editor's denoiser behind one interface, and the choice between them.

A :class:`Denoiser` is ``v = d(x_t, t, source, buffers, category, intensity)`` over numpy arrays
(float32; category int64) with the static batch it was made for:

- :class:`TorchBackend`: the torch module; on CPU in float32, on CUDA with FP16 autocast and
  optionally replayed from a captured CUDA graph (launch overhead dominates a net this small);
- :class:`OnnxRuntimeBackend`: the exported ONNX file on onnxruntime's CPU provider (intra-op
  threads set) or its CUDA provider;
- :class:`TensorRTBackend`: a TensorRT engine from :mod:`~facediff_ros.core.editor.export`, run with
  tensor addresses + ``execute_async_v3`` on a CUDA stream, torch CUDA tensors as its buffers.

:func:`make_backend` builds one by name; ``auto`` takes the first that works in :data:`AUTO_ORDER`
and says which and why (``.why``). The sampler stays in Python: :class:`BackendEditor` is an
:class:`~facediff_ros.core.editor.edit.ExpressionEditor` whose network calls go to a backend.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from facediff_ros.core.editor.edit import ExpressionEditor
from facediff_ros.core.editor.export import (INPUT_NAMES, OUTPUT_NAME, BackendUnavailable, TensorRTMissing,
                                             ensure_engine, ensure_onnx, io_shapes, require_tensorrt)
from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
from facediff_ros.core.face.assets import default_cache_dir

BACKENDS = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch")
# (backend, device) in the order ``auto`` tries them: fastest first. torch on a CUDA GPU comes before
# onnxruntime on the CPU (a GPU without onnxruntime-gpu still beats 2 CPU cores several times over,
# stack.md: ~3 ms for 4 evaluations with a CUDA graph vs ~7 ms per evaluation on CPU).
AUTO_ORDER = (("tensorrt", "cuda"), ("onnxruntime-cuda", "cuda"), ("torch", "cuda"),
              ("onnxruntime-cpu", "cpu"), ("torch", "cpu"))
_DTYPES = {"float32": np.float32, "int64": np.int64}


class Denoiser(abc.ABC):
    """``__call__(x_t, t, source, buffers, category, intensity) -> v``, numpy in and out.

    Shapes (B = ``self.batch``, S = ``self.config.crop_size``): x_t (B, 4, S, S), t (B,) in [0, 1],
    source (B, 4, S, S), buffers (B, 8, S, S), category (B,) int64, intensity (B,) in [0, 1];
    returns v (B, 4, S, S) float32.

    :ivar name: the backend's name in :data:`BACKENDS`; ``device`` "cpu" or "cuda".
    :ivar why: how it was chosen (set by :func:`make_backend`).
    """

    name = "?"
    device = "cpu"

    def __init__(self, config: EditorNetConfig, batch: int = 1):
        self.config = config
        self.batch = int(batch)
        self.shapes = io_shapes(config, self.batch)
        self.why = ""

    def check(self, *arrays) -> Dict[str, np.ndarray]:
        """The inputs as contiguous arrays of the exported dtypes, by name.

        :raises ValueError: wrong count or shape (naming the input and the expected shape).
        """
        if len(arrays) != len(INPUT_NAMES):
            raise ValueError(f"expected {len(INPUT_NAMES)} inputs {INPUT_NAMES}, got {len(arrays)}")
        feeds = {}
        for name, a in zip(INPUT_NAMES, arrays):
            spec = self.shapes[name]
            if isinstance(a, torch.Tensor):
                a = a.detach().cpu().numpy()
            a = np.ascontiguousarray(a, dtype=_DTYPES[spec["dtype"]])
            if list(a.shape) != spec["shape"]:
                raise ValueError(f"{self.name} backend: input {name!r} has shape {a.shape}, expected "
                                 f"{tuple(spec['shape'])} (batch {self.batch} as exported)")
            feeds[name] = a
        return feeds

    def __call__(self, x_t, t, source, buffers, category, intensity) -> np.ndarray:
        return self._run(self.check(x_t, t, source, buffers, category, intensity))

    @abc.abstractmethod
    def _run(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        """v (B, 4, S, S) float32 for validated ``feeds``."""

    def as_model(self) -> Callable:
        """A callable with the torch module's signature (CPU torch tensors in and out), for the sampler."""
        def model(x_t, t, source, buffers, category, intensity):
            return torch.from_numpy(self(x_t, t, source, buffers, category, intensity))
        return model

    def describe(self) -> str:
        s = self.config.crop_size
        return f"{self.name} ({self.device}, batch {self.batch}, {s}x{s})"


# ---------------------------------------------------------------- torch


class TorchBackend(Denoiser):
    """The torch module itself.

    :param device: "cpu" or "cuda" (default: cuda when torch sees a GPU).
    :param fp16: CUDA only: run under float16 autocast (default on CUDA). Autocast rather than
        ``.half()``: the sinusoidal time embedding and the FiLM scales stay float32 where it matters.
    :param cuda_graph: CUDA only: capture one evaluation as a CUDA graph and replay it (default on CUDA).
    :param threads: torch intra-op threads (process-wide setting) on CPU.
    """

    name = "torch"

    def __init__(self, net: EditorUNet, batch: int = 1, device: Optional[str] = None,
                 fp16: Optional[bool] = None, cuda_graph: Optional[bool] = None,
                 threads: Optional[int] = None):
        super().__init__(net.config, batch)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch on cuda: no CUDA device is visible to torch "
                                     f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
        self.device = device
        on_gpu = device == "cuda"
        self.fp16 = bool(fp16 if fp16 is not None else on_gpu) and on_gpu
        self.cuda_graph = bool(cuda_graph if cuda_graph is not None else on_gpu) and on_gpu
        if threads is not None and device == "cpu":
            torch.set_num_threads(int(threads))
        # On CUDA a copy moves to the GPU, leaving the caller's CPU module alone.
        self.net = (net if device == "cpu" else _copy_to(net, device)).eval()
        self.graph = None
        if device == "cuda":
            self.static_in = {n: torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"]), device=device)
                              for n, s in self.shapes.items() if n != OUTPUT_NAME}
            if self.cuda_graph:
                self._capture()

    def _forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16, cache_enabled=False):
            return self.net(*(inputs[n] for n in INPUT_NAMES))

    @torch.inference_mode()
    def _capture(self) -> None:
        # Warm up on a side stream before capture (cuDNN picks its kernels then), as torch's CUDA graph
        # documentation does.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = self._forward(self.static_in)

    @torch.inference_mode()
    def _run(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        if self.device == "cpu":
            return self.net(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).numpy()
        for n in INPUT_NAMES:
            self.static_in[n].copy_(torch.from_numpy(feeds[n]), non_blocking=False)
        if self.graph is not None:
            self.graph.replay()
            out = self.static_out
        else:
            out = self._forward(self.static_in)
        return out.float().cpu().numpy()

    def describe(self) -> str:
        extra = (", fp16 autocast" if self.fp16 else "") + (", CUDA graph" if self.graph is not None else "")
        return super().describe()[:-1] + extra + ")"


def _copy_to(net: EditorUNet, device: str) -> EditorUNet:
    copy = EditorUNet(net.config)
    copy.load_state_dict(net.state_dict())
    return copy.to(device)


# ---------------------------------------------------------------- onnxruntime


def _import_onnxruntime():
    try:
        import onnxruntime as ort
    except Exception as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({type(exc).__name__}: {exc}); "
                                 "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)") from exc
    return ort


class OnnxRuntimeBackend(Denoiser):
    """An exported ONNX file on onnxruntime.

    :param device: "cpu" (CPUExecutionProvider) or "cuda" (CUDAExecutionProvider, CPU for what it lacks).
    :param threads: intra-op threads (CPU provider); inter-op is 1: the graph is one sequential chain.
    :param spinning: whether idle intra-op threads busy-wait for work (None: onnxruntime's default,
        on). Off gives the cores back between operators: on a small machine shared with other nodes
        spinning threads compete with them (measured on 2 loaded cores: 2 threads 29 ms per
        evaluation spinning, 15 ms not).
    :raises BackendUnavailable: the CUDA provider is missing or did not load.
    :raises ValueError: the file's inputs are not the exported names and static shapes for this config.
    """

    def __init__(self, onnx_path, config: EditorNetConfig, batch: int = 1, device: str = "cpu",
                 threads: Optional[int] = None, spinning: Optional[bool] = None):
        super().__init__(config, batch)
        ort = _import_onnxruntime()
        self.name = f"onnxruntime-{device}"
        self.device = device
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        if spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if device == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable(f"onnxruntime-cuda: onnxruntime {ort.__version__} has no "
                                         f"CUDAExecutionProvider (providers: {available}); "
                                         "install onnxruntime-gpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # onnxruntime falls back to the CPU silently when the CUDA libraries do not load.
            raise BackendUnavailable(f"onnxruntime-cuda: the CUDA provider did not load (session providers: "
                                     f"{self.session.get_providers()}); check the CUDA/cuDNN libraries")
        got = {i.name: list(i.shape) for i in self.session.get_inputs()}
        want = {n: self.shapes[n]["shape"] for n in INPUT_NAMES}
        if got != want:
            raise ValueError(f"{onnx_path}: inputs {got}, expected {want} "
                             "(another crop size or batch: export again)")

    def _run(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], feeds)[0]


# ---------------------------------------------------------------- TensorRT


class TensorRTBackend(Denoiser):
    """A TensorRT engine run with tensor addresses + ``execute_async_v3`` on a CUDA stream.

    Buffers are torch CUDA tensors allocated once, one per engine I/O tensor (shapes and dtypes read
    from the engine); a call copies the inputs in, enqueues the engine and copies ``v`` out.

    :raises TensorRTMissing: tensorrt is not installed.
    :raises BackendUnavailable: no CUDA device visible to torch; the engine does not deserialize
        (another GPU or TensorRT version, or a corrupt file: :meth:`from_onnx` rebuilds it).
    :raises ValueError: the engine's I/O names or shapes are not this config's.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path, config: EditorNetConfig, batch: int = 1):
        super().__init__(config, batch)
        trt = require_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt: no CUDA device is visible to torch "
                                     "(its tensors are the engine's buffers)")
        self.engine_path = Path(engine_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{self.engine_path}: TensorRT {trt.__version__} could not deserialize "
                                     "the engine (built for another GPU/TensorRT, or corrupt)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers: Dict[str, torch.Tensor] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = list(self.engine.get_tensor_shape(name))
            if name not in self.shapes or shape != self.shapes[name]["shape"]:
                raise ValueError(f"{self.engine_path}: I/O tensor {name!r} {shape} is not one of "
                                 f"{ {n: s['shape'] for n, s in self.shapes.items()} }")
            np_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            tensor = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, np_dtype)).dtype, device="cuda")
            self.buffers[name] = tensor
            self.context.set_tensor_address(name, tensor.data_ptr())
        missing = set(self.shapes) - set(self.buffers)
        if missing:
            raise ValueError(f"{self.engine_path}: the engine lacks I/O tensors {sorted(missing)}")

    @classmethod
    def from_onnx(cls, onnx_path, config: EditorNetConfig, cache_dir, batch: int = 1, precision: str = "fp16",
                  log: Optional[Callable[[str], None]] = None) -> "TensorRTBackend":
        """The engine for ``onnx_path`` from the cache in ``cache_dir`` (built when absent or stale)."""
        engine, meta = ensure_engine(onnx_path, cache_dir, precision=precision, log=log)
        try:
            backend = cls(engine, config, batch)
        except BackendUnavailable:
            if meta["built"]:
                raise
            engine, meta = ensure_engine(onnx_path, cache_dir, precision=precision, force=True, log=log)
            backend = cls(engine, config, batch)
        backend.engine_meta = meta
        return backend

    def _run(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        with torch.cuda.stream(self.stream):
            for n in INPUT_NAMES:
                self.buffers[n].copy_(torch.from_numpy(feeds[n]), non_blocking=False)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.engine_path}: execute_async_v3 failed")
            out = self.buffers[OUTPUT_NAME].float().cpu()  # waits for the stream's work
        return out.numpy()


# ---------------------------------------------------------------- choice


def availability() -> Dict[str, Tuple[bool, str]]:
    """(available, reason) per backend name and device, from cheap probes (nothing is built)."""
    out: Dict[str, Tuple[bool, str]] = {}
    cuda = torch.cuda.is_available()
    gpu = f"CUDA GPU {torch.cuda.get_device_name(0)}" if cuda else \
        f"no CUDA device visible to torch {torch.__version__}"
    try:
        trt = require_tensorrt()
        out["tensorrt"] = (cuda, f"tensorrt {trt.__version__}, {gpu}")
    except TensorRTMissing:
        out["tensorrt"] = (False, "tensorrt is not installed")
    try:
        ort = _import_onnxruntime()
        providers = ort.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in providers
        out["onnxruntime-cuda"] = (has_cuda and cuda,
                                   f"onnxruntime {ort.__version__} providers {providers}, {gpu}")
        out["onnxruntime-cpu"] = (True, f"onnxruntime {ort.__version__}")
    except BackendUnavailable as exc:
        out["onnxruntime-cuda"] = out["onnxruntime-cpu"] = (False, str(exc))
    out["torch:cuda"] = (cuda, gpu)
    out["torch:cpu"] = (True, f"torch {torch.__version__}")
    return out


def _net_of(source: Union[str, Path, EditorUNet]) -> Tuple[EditorUNet, List[Path]]:
    if isinstance(source, EditorUNet):
        return source.eval(), []
    from facediff_ros.core.editor.train import load_weights
    return load_weights(source), [Path(source)]


def _make_one(name: str, device: str, net: EditorUNet, folders: List[Path], batch: int,
              threads: Optional[int], cache_dir: Path, precision: str,
              log: Optional[Callable[[str], None]], spinning: Optional[bool] = None) -> Denoiser:
    if name == "torch":
        return TorchBackend(net, batch=batch, device=device, threads=threads)
    onnx_path, _ = ensure_onnx(net, folders, cache_dir, batch=batch, log=log)
    if name == "tensorrt":
        return TensorRTBackend.from_onnx(onnx_path, net.config, cache_dir / "tensorrt", batch=batch,
                                         precision=precision, log=log)
    return OnnxRuntimeBackend(onnx_path, net.config, batch=batch, device=device, threads=threads,
                              spinning=spinning)


def make_backend(name: str, source: Union[str, Path, EditorUNet], batch: int = 1, threads: Optional[int] = 2,
                 cache_dir=None, precision: str = "fp16", device: Optional[str] = None,
                 spinning: Optional[bool] = None, log: Optional[Callable[[str], None]] = None) -> Denoiser:
    """A denoiser backend by name; ``auto`` takes the first of :data:`AUTO_ORDER` that works here.

    :param name: one of :data:`BACKENDS`.
    :param source: a weights folder (``editor.pt`` + ``config.json``; an ``editor.onnx`` there from
        ``facediff export`` is reused when it is of these weights and batch) or a network.
    :param batch: the static batch (ONNX and TensorRT are exported for it).
    :param threads: CPU intra-op threads (onnxruntime; torch's process-wide setting).
    :param cache_dir: ONNX exports and TensorRT engines (default: the package cache folder + ``/editor``).
    :param precision: TensorRT engine precision, "fp16" or "fp32".
    :param device: for ``torch`` only: "cpu" or "cuda" (default: cuda when available).
    :param spinning: onnxruntime only: busy-waiting intra-op threads (see :class:`OnnxRuntimeBackend`).
    :returns: the backend, with ``.why`` saying how it was chosen (``auto``: what each faster one lacked).
    :raises BackendUnavailable: the backend cannot run here, naming what is missing
        (its subclass :class:`TensorRTMissing` when it is the tensorrt package).
    :raises ValueError: an unknown name.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    net, folders = _net_of(source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "editor"
    avail = availability()
    if name != "auto":
        dev = device if name == "torch" else ("cpu" if name == "onnxruntime-cpu" else "cuda")
        if name == "torch" and dev is None:
            dev = "cuda" if avail["torch:cuda"][0] else "cpu"
        ok, reason = avail[f"torch:{dev}" if name == "torch" else name]
        if not ok:
            if name == "tensorrt" and reason == "tensorrt is not installed":
                require_tensorrt()  # raises TensorRTMissing with the full message
            raise BackendUnavailable(f"backend {name!r} is not available here: {reason}")
        backend = _make_one(name, dev, net, folders, batch, threads, cache, precision, log, spinning)
        backend.why = f"requested: {name!r} ({reason})"
        return backend
    skipped = []
    for cand, dev in AUTO_ORDER:
        key = f"torch:{dev}" if cand == "torch" else cand
        ok, reason = avail[key]
        label = key.replace(":", " on ")
        if not ok:
            skipped.append(f"{label}: {reason}")
            continue
        try:
            backend = _make_one(cand, dev, net, folders, batch, threads, cache, precision, log, spinning)
        except (BackendUnavailable, RuntimeError, OSError) as exc:  # e.g. an engine build failed: next one
            skipped.append(f"{label}: failed ({type(exc).__name__}: {exc})")
            continue
        backend.why = f"auto picked {label} ({reason})"
        if skipped:
            backend.why += f"; skipped {'; '.join(skipped)}"
        if log:
            log(f"editor backend: {backend.describe()}: {backend.why}")
        return backend
    raise BackendUnavailable("no editor backend could run: " + "; ".join(skipped))


class BackendEditor(ExpressionEditor):
    """:class:`ExpressionEditor` (same validation, fixed noise and sampler) with a backend as the network.

    :param backend: a :class:`Denoiser`; its batch is the batch ``edit_batch`` takes (1 for ``edit``).
    """

    def __init__(self, backend: Denoiser, steps: int = 4, seed: int = 0):
        # The backend stands in for the net: it carries .config, and every evaluation goes to it.
        super().__init__(backend, steps=steps, seed=seed, model=backend.as_model())
        self.backend = backend
