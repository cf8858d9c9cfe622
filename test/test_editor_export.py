"""Editor export and inference backends: ONNX parity, backend choice, the TensorRT engine cache, the CLI.

Small random networks (16x16 crop, 8/16 channels) stand in for trained weights. What needs TensorRT
or a CUDA GPU skips with the reason; the engine cache's keys and file layout are tested with a
stand-in builder, so the rebuild rules run here too.
"""

import json

import numpy as np
import pytest
import torch

from facediff_ros.core.editor import backends, export
from facediff_ros.core.editor.edit import ExpressionEditor
from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet

SMALL = EditorNetConfig(crop_size=16, channels=(8, 16), emb_dim=32)


def _tensorrt_missing_reason():
    try:
        export.require_tensorrt()
    except export.TensorRTMissing as exc:
        return str(exc).split(":")[0]  # "tensorrt is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    return None


TRT_REASON = _tensorrt_missing_reason()
needs_tensorrt = pytest.mark.skipif(TRT_REASON is not None, reason=str(TRT_REASON))
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")


def _random_net(seed=0, config=SMALL):
    torch.manual_seed(seed)
    net = EditorUNet(config).eval()
    with torch.no_grad():  # the zero-initialised last convs would make v independent of most inputs
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net


def _crops(seed=0, size=16):
    g = np.random.default_rng(seed)
    return (g.uniform(-1, 1, (4, size, size)).astype(np.float32),
            g.uniform(-1, 1, (8, size, size)).astype(np.float32))


def test_onnx_export_parity_shapes_and_hash(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = _random_net(seed=1)
    meta = export.export_weights(net, tmp_path, batch=1)
    path = tmp_path / export.ONNX_FILE
    assert meta["parity_max_abs_diff"] < 1e-4 and meta["opset"] >= 17
    assert meta["sha256"] == export.file_sha256(path) and len(meta["sha256"]) == 64
    assert meta["shapes"]["x_t"]["shape"] == [1, 4, 16, 16]
    assert meta["shapes"]["buffers"]["shape"] == [1, 8, 16, 16]
    assert meta["shapes"]["category"]["dtype"] == "int64" and meta["shapes"]["v"]["shape"] == [1, 4, 16, 16]
    assert json.loads((tmp_path / export.EXPORT_FILE).read_text()) == meta == export.read_export(tmp_path)
    # Independently of the export's own check: static shapes and names as documented, and the values.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in sess.get_inputs()] == [
        ("x_t", [1, 4, 16, 16]), ("t", [1]), ("source", [1, 4, 16, 16]), ("buffers", [1, 8, 16, 16]),
        ("category", [1]), ("intensity", [1])]
    assert [o.name for o in sess.get_outputs()] == ["v"]
    g = torch.Generator().manual_seed(9)
    x, buf = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 8, 16, 16, generator=g)
    src = torch.rand(1, 4, 16, 16, generator=g) * 2 - 1
    t, cat, inten = torch.tensor([0.37]), torch.tensor([5]), torch.tensor([0.6])
    with torch.no_grad():
        ref = net(x, t, src, buf, cat, inten).numpy()
    got = sess.run(["v"], {"x_t": x.numpy(), "t": t.numpy(), "source": src.numpy(), "buffers": buf.numpy(),
                           "category": cat.numpy(), "intensity": inten.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-4 and np.abs(ref).max() > 0.1  # not a trivially zero output
    # A changed file no longer counts as the export; a low opset is refused.
    path.write_bytes(path.read_bytes() + b"\0")
    assert export.read_export(tmp_path) is None
    with pytest.raises(ValueError, match="opset"):
        export.export_onnx(net, tmp_path / "old.onnx", opset=16)


def test_fixed_batch_export(tmp_path):
    net = _random_net(seed=2)
    meta = export.export_weights(net, tmp_path, batch=3)
    assert meta["batch"] == 3 and meta["shapes"]["t"]["shape"] == [3] and meta["parity_max_abs_diff"] < 1e-4
    b = backends.OnnxRuntimeBackend(tmp_path / export.ONNX_FILE, SMALL, batch=3, threads=1)
    feeds = export.random_inputs(SMALL, batch=3, seed=4)
    with torch.no_grad():
        ref = net(*(torch.from_numpy(feeds[n]) for n in export.INPUT_NAMES)).numpy()
    np.testing.assert_allclose(b(*(feeds[n] for n in export.INPUT_NAMES)), ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="batch 3"):  # inputs must be of the exported batch
        one = export.random_inputs(SMALL, batch=1)
        b(*(one[n] for n in export.INPUT_NAMES))
    with pytest.raises(ValueError, match="export again"):  # a file of another batch is refused at load
        backends.OnnxRuntimeBackend(tmp_path / export.ONNX_FILE, SMALL, batch=1)


def test_onnxruntime_backend_equals_torch_through_the_sampler(tmp_path):
    net = _random_net(seed=3)
    src, buf = _crops(seed=1)
    ref = ExpressionEditor(net, steps=2, seed=7).edit(src, buf, "surprised", 0.9)
    ort_backend = backends.make_backend("onnxruntime-cpu", net, threads=1, cache_dir=tmp_path)
    torch_backend = backends.make_backend("torch", net, device="cpu", cache_dir=tmp_path)
    assert ort_backend.name == "onnxruntime-cpu" and torch_backend.name == "torch"
    got_ort = backends.BackendEditor(ort_backend, steps=2, seed=7).edit(src, buf, "surprised", 0.9)
    got_torch = backends.BackendEditor(torch_backend, steps=2, seed=7).edit(src, buf, "surprised", 0.9)
    assert got_ort.shape == (4, 16, 16)
    np.testing.assert_allclose(got_ort, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_torch, ref, atol=1e-6, rtol=0)
    assert np.abs(ref - ExpressionEditor(net, steps=2, seed=7).edit(src, buf, "sad", 0.9)).max() > 1e-3
    # The editor's validation still applies in front of a backend.
    with pytest.raises(ValueError, match="intensity"):
        backends.BackendEditor(ort_backend, steps=2).edit(src, buf, "happy", 1.5)
    with pytest.raises(ValueError, match="unknown expression"):
        backends.BackendEditor(ort_backend, steps=2).edit(src, buf, "bored", 0.5)
    # The export went to the cache once and is reused for the same weights and batch.
    assert len(list(tmp_path.glob("onnx-*/editor.onnx"))) == 1
    backends.make_backend("onnxruntime-cpu", net, threads=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("onnx-*/editor.onnx"))) == 1


@pytest.mark.skipif(torch.cuda.is_available() or TRT_REASON is None, reason="a GPU backend is available here")
def test_auto_picks_onnxruntime_cpu_without_a_gpu_and_says_why(tmp_path):
    lines = []
    b = backends.make_backend("auto", _random_net(), cache_dir=tmp_path, log=lines.append)
    assert b.name == "onnxruntime-cpu" and isinstance(b, backends.OnnxRuntimeBackend)
    assert b.why.startswith("auto picked onnxruntime-cpu")
    for skipped in ("tensorrt: tensorrt is not installed", "onnxruntime-cuda:", "torch on cuda:"):
        assert skipped in b.why
    assert any("onnxruntime-cpu" in line and "auto picked" in line for line in lines)  # reported


def test_unknown_and_unavailable_backends_are_named(tmp_path):
    net = _random_net()
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        backends.make_backend("onnx", net, cache_dir=tmp_path)
    if not backends.availability()["onnxruntime-cuda"][0]:
        with pytest.raises(backends.BackendUnavailable, match="onnxruntime-cuda"):
            backends.make_backend("onnxruntime-cuda", net, cache_dir=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(backends.BackendUnavailable, match="no CUDA device"):
            backends.make_backend("torch", net, device="cuda", cache_dir=tmp_path)


@pytest.mark.skipif(TRT_REASON != "tensorrt is not installed", reason="tensorrt is installed")
def test_tensorrt_backend_says_tensorrt_is_not_installed(tmp_path):
    net = _random_net()
    with pytest.raises(export.TensorRTMissing, match="tensorrt is not installed") as info:
        backends.make_backend("tensorrt", net, cache_dir=tmp_path)
    assert isinstance(info.value, backends.BackendUnavailable) and isinstance(info.value, ImportError)
    assert "onnxruntime-cpu" in str(info.value)  # says what to use instead
    with pytest.raises(export.TensorRTMissing, match="tensorrt is not installed"):
        backends.TensorRTBackend(tmp_path / "none.plan", SMALL)
    with pytest.raises(export.TensorRTMissing, match="tensorrt is not installed"):
        export.build_engine(tmp_path / "editor.onnx", tmp_path / "e.plan")


def _key(**change):
    base = dict(gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt="10.9.0.34",
                onnx_sha256="a" * 64, precision="fp16")
    return export.EngineKey(**{**base, **change})


def test_engine_key_changes_with_each_field():
    base = _key()
    variants = [_key(gpu="NVIDIA GeForce RTX 4090"), _key(compute_capability="8.9"),
                _key(tensorrt="10.10.0.31"), _key(onnx_sha256="b" * 64), _key(precision="fp32")]
    digests = {base.digest()} | {k.digest() for k in variants}
    assert len(digests) == 6 and base.digest() == _key().digest()  # deterministic, all distinct
    names = {base.engine_name()} | {k.engine_name() for k in variants}
    assert len(names) == 6
    assert base.engine_name() == f"editor-fp16-{base.digest()[:16]}.plan"
    with pytest.raises(ValueError, match="precision"):
        _key(precision="int8")


def test_engine_key_from_an_onnx_file_uses_its_sha256(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"model a")
    b.write_bytes(b"model b")
    gpu = ("NVIDIA H200", "9.0")
    ka = export.engine_key(a, gpu=gpu, tensorrt_version="10.9")
    assert ka.onnx_sha256 == export.file_sha256(a) and ka.gpu == "NVIDIA H200" and ka.tensorrt == "10.9"
    assert export.engine_key(b, gpu=gpu, tensorrt_version="10.9").digest() != ka.digest()
    assert export.engine_key(a, gpu=("NVIDIA L4", "8.9"), tensorrt_version="10.9").digest() != ka.digest()
    assert export.engine_key(a, gpu=gpu, tensorrt_version="10.10").digest() != ka.digest()
    if TRT_REASON == "tensorrt is not installed":  # the default version comes from tensorrt itself
        with pytest.raises(export.TensorRTMissing):
            export.engine_key(a, gpu=gpu)


def test_engine_cache_reuses_matching_engines_and_rebuilds_otherwise(tmp_path):
    onnx_path = tmp_path / "editor.onnx"
    onnx_path.write_bytes(b"model")
    cache = tmp_path / "engines"
    calls = []

    def fake_build(onnx, engine, precision, timing_cache_path, log=None):
        calls.append((engine.name, precision, timing_cache_path))
        engine.parent.mkdir(parents=True, exist_ok=True)
        engine.write_bytes(f"engine {len(calls)}".encode())
        return {"precision_used": precision, "build_s": 0.0}

    key = export.engine_key(onnx_path, gpu=("NVIDIA H200", "9.0"), tensorrt_version="10.9")
    engine, meta = export.ensure_engine(onnx_path, cache, key=key, build=fake_build)
    assert meta["built"] and engine == cache / key.engine_name() and engine.read_bytes() == b"engine 1"
    sidecar = json.loads(engine.with_suffix(".json").read_text())
    assert sidecar["key"] == {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.9",
                              "onnx_sha256": export.file_sha256(onnx_path), "precision": "fp16"}
    assert calls[0][2] == cache / export.TIMING_CACHE_FILE  # one timing cache shared by the builds
    # Same key: reused, not built.
    again, meta = export.ensure_engine(onnx_path, cache, key=key, build=fake_build)
    assert again == engine and not meta["built"] and len(calls) == 1
    # Another GPU, TensorRT version or ONNX file: another engine file, built; the old one stays.
    other_gpu = export.engine_key(onnx_path, gpu=("NVIDIA L4", "8.9"), tensorrt_version="10.9")
    other_trt = export.engine_key(onnx_path, gpu=("NVIDIA H200", "9.0"), tensorrt_version="10.10")
    for k in (other_gpu, other_trt):
        e, meta = export.ensure_engine(onnx_path, cache, key=k, build=fake_build)
        assert meta["built"] and e != engine and e.is_file()
    onnx_path.write_bytes(b"retrained model")
    new = export.engine_key(onnx_path, gpu=("NVIDIA H200", "9.0"), tensorrt_version="10.9")
    e, meta = export.ensure_engine(onnx_path, cache, key=new, build=fake_build)
    assert meta["built"] and e != engine and len(calls) == 4 and engine.is_file()
    # A sidecar that does not hold the key (corrupt, or a hand-copied engine): rebuilt in place.
    engine.with_suffix(".json").write_text("{not json")
    e, meta = export.ensure_engine(onnx_path, cache, key=key, build=fake_build)
    assert e == engine and meta["built"] and engine.read_bytes() == b"engine 5"
    _, meta = export.ensure_engine(onnx_path, cache, key=key, build=fake_build, force=True)
    assert meta["built"] and len(calls) == 6
    assert sorted(p.name for p in cache.glob("*.plan")) == sorted(
        {k.engine_name() for k in (key, other_gpu, other_trt, new)})


def _save_small_weights(folder, seed=0):
    from facediff_ros.core.editor.train import TrainConfig, save_weights
    net = _random_net(seed)
    save_weights(folder, net.state_dict(), TrainConfig(net=SMALL))
    return net


def test_export_command_on_a_saved_weights_folder(tmp_path, capsys):
    from facediff_ros.cli import main
    weights = tmp_path / "weights"
    net = _save_small_weights(weights, seed=4)
    out = tmp_path / "export"
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity with torch: max abs diff" in printed and "editor.onnx" in printed
    meta = json.loads((out / "export.json").read_text())
    assert meta["parity_max_abs_diff"] < 1e-4 and meta["opset"] == 17 and meta["batch"] == 1
    assert meta["sha256"] == export.file_sha256(out / "editor.onnx")
    assert meta["shapes"]["source"]["shape"] == [1, 4, 16, 16]
    assert meta["weights_sha256"] == export.weights_sha256(net) and meta["net"]["channels"] == [8, 16]
    assert main(["export", "--weights", str(weights), "--out", str(out), "--batch", "2"]) == 0
    assert json.loads((out / "export.json").read_text())["shapes"]["t"]["shape"] == [2]
    # Missing weights: a clear error naming the file, no traceback.
    assert main(["export", "--weights", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no editor weights at" in capsys.readouterr().err
    if TRT_REASON == "tensorrt is not installed":
        assert main(["export", "--weights", str(weights), "--out", str(out), "--tensorrt",
                     "--engine-dir", str(tmp_path / "trt")]) == 3
        assert "tensorrt is not installed" in capsys.readouterr().err
        assert (out / "editor.onnx").is_file()  # the ONNX part is kept


def test_a_weights_folder_with_its_export_is_used_as_is(tmp_path):
    from facediff_ros.cli import main
    weights = tmp_path / "weights"
    _save_small_weights(weights, seed=5)
    assert main(["export", "--weights", str(weights), "--out", str(weights)]) == 0
    cache = tmp_path / "cache"
    b = backends.make_backend("onnxruntime-cpu", weights, threads=1, cache_dir=cache)
    assert b.name == "onnxruntime-cpu" and not list(cache.glob("onnx-*"))  # nothing exported again
    # Weights changed after the export: the stale editor.onnx is not used; a fresh export is made.
    _save_small_weights(weights, seed=6)
    backends.make_backend("onnxruntime-cpu", weights, threads=1, cache_dir=cache)
    assert len(list(cache.glob("onnx-*/editor.onnx"))) == 1


@needs_cuda
def test_torch_cuda_backend_fp16_and_cuda_graph_match_cpu():
    net = _random_net(seed=8)
    feeds = export.random_inputs(SMALL, seed=2)
    args = [feeds[n] for n in export.INPUT_NAMES]
    ref = backends.TorchBackend(net, device="cpu")(*args)
    graph = backends.TorchBackend(net, device="cuda", fp16=True, cuda_graph=True)
    eager = backends.TorchBackend(net, device="cuda", fp16=False, cuda_graph=False)
    assert graph.graph is not None and next(net.parameters()).device.type == "cpu"  # the caller's net stays
    np.testing.assert_allclose(eager(*args), ref, atol=1e-3, rtol=0)
    scale = np.abs(ref).max()
    assert np.abs(graph(*args) - ref).max() < 2e-2 * scale
    other = export.random_inputs(SMALL, seed=3)  # the graph replays with new inputs, not the captured ones
    other_args = [other[n] for n in export.INPUT_NAMES]
    np.testing.assert_allclose(graph(*other_args), backends.TorchBackend(net, device="cpu")(*other_args),
                               atol=2e-2 * scale, rtol=0)


@needs_tensorrt
def test_tensorrt_engine_is_built_cached_and_matches_torch(tmp_path):
    net = _random_net(seed=9)
    lines = []
    b = backends.make_backend("tensorrt", net, cache_dir=tmp_path, log=lines.append)
    assert b.name == "tensorrt" and b.engine_meta["built"]
    feeds = export.random_inputs(SMALL, seed=5)
    args = [feeds[n] for n in export.INPUT_NAMES]
    ref = backends.TorchBackend(net, device="cpu")(*args)
    assert np.abs(b(*args) - ref).max() < 2e-2 * np.abs(ref).max()  # FP16 engine
    assert (tmp_path / "tensorrt" / export.TIMING_CACHE_FILE).is_file()
    again = backends.make_backend("tensorrt", net, cache_dir=tmp_path)
    assert not again.engine_meta["built"]  # same GPU, TensorRT and ONNX: the cached engine
    src, buf = _crops(seed=2)
    np.testing.assert_allclose(backends.BackendEditor(again, steps=2, seed=1).edit(src, buf, "happy", 0.7),
                               ExpressionEditor(net, steps=2, seed=1).edit(src, buf, "happy", 0.7), atol=5e-2)
