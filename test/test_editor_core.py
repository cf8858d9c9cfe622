"""Editor core: noise schedule, v-parameterisation, the DDIM sampler and the UNet's conditioning.

The sampler is checked against closed forms: for data that is a single point the ideal denoiser
is known exactly and DDIM must land on the point in any number of steps; for Gaussian data the
ideal denoiser is the Gaussian posterior mean and the probability-flow ODE maps the starting
noise z to mu + s0 * z, which DDIM must approach as steps grow.
"""

import numpy as np
import pytest
import torch

from facediff_ros.core.editor import sampler, schedule
from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
from facediff_ros.core.editor.residual import model_only_rgbd
from facediff_ros.core.face.expressions import CATEGORIES


def test_schedule_is_variance_preserving_with_exact_ends():
    t = np.linspace(0, 1, 11)
    a, s = schedule.alpha_sigma(t)
    np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, atol=1e-12)
    assert (a[0], s[0]) == (1.0, 0.0) and (a[-1], s[-1]) == (0.0, 1.0)  # zero SNR at t = 1, exactly
    assert np.all(np.diff(a) < 0)
    at, st = schedule.alpha_sigma(torch.tensor(t))
    np.testing.assert_allclose(at.numpy(), a, atol=1e-12)
    np.testing.assert_allclose(st.numpy(), s, atol=1e-12)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            schedule.alpha_sigma(bad)


def test_sampling_times():
    np.testing.assert_allclose(schedule.sampling_times(4), [1.0, 0.75, 0.5, 0.25, 0.0])
    for bad in (0, 2.5, -1):
        with pytest.raises(ValueError):
            schedule.sampling_times(bad)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.999, 1.0])
def test_v_parameterisation_round_trip(t):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    tt = torch.tensor(t, dtype=torch.float32)
    a, s = schedule.alpha_sigma(tt)
    x_t = a * x0 + s * eps
    x0_hat, eps_hat = sampler.v_to_x0_eps(x_t, sampler.x0_eps_to_v(x0, eps, tt), tt)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_ddim_lands_on_a_single_data_point_in_any_number_of_steps(steps):
    target = torch.tensor([0.3, -0.7, 1.2])
    calls = []

    def ideal(x_t, t):  # data = {target}: E[x0 | x_t] = target; eps follows from x_t
        calls.append(t)
        a, s = schedule.alpha_sigma(t)
        return target.expand_as(x_t), (x_t - float(a) * target) / float(s)

    out = sampler.sample_ddim(ideal, torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), steps)
    torch.testing.assert_close(out, target.expand(5, 3))
    assert len(calls) == steps and calls[0] == 1.0


def test_ddim_converges_to_the_probability_flow_solution_for_gaussian_data():
    mu, s0 = 0.4, 0.25
    z = torch.randn(2000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def ideal(x_t, t):
        a, s = (float(v) for v in schedule.alpha_sigma(t))
        x0 = mu + a * s0 ** 2 / (a ** 2 * s0 ** 2 + s ** 2) * (x_t - a * mu)  # Gaussian posterior mean
        eps = (x_t - a * x0) / s if s > 0 else torch.zeros_like(x_t)
        return x0, eps

    exact = mu + s0 * z
    spread = float((exact - mu).abs().max())
    errors = {n: float((sampler.sample_ddim(ideal, z, n) - exact).abs().max())
              for n in (1, 2, 4, 8, 50, 200, 1000)}
    assert errors[1] == pytest.approx(spread, rel=1e-9)  # 1 step from zero SNR returns the mean
    assert errors[1] > errors[2] > errors[4] > errors[8] > errors[50] > errors[200] > errors[1000]
    assert 3.0 < errors[50] / errors[200] < 5.0  # DDIM is a first-order ODE solver: error ~ 1/steps
    assert errors[1000] < 0.005 * spread


def _random_net(seed=0, **kw):
    torch.manual_seed(seed)
    net = EditorUNet(EditorNetConfig(crop_size=16, channels=(8, 16), emb_dim=32, **kw)).eval()
    with torch.no_grad():  # the zero-initialised last convs would hide the conditioning paths
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net


def _inputs(b=2, size=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, size, size, generator=g), torch.rand(b, generator=g),
            torch.randn(b, 4, size, size, generator=g), torch.randn(b, 8, size, size, generator=g))


def test_network_shapes_and_sizes():
    net = EditorUNet()
    x, t, src, buf = _inputs(b=3, size=64)
    cat = torch.tensor([0, 3, 6])
    assert net(x, t, src, buf, cat, torch.ones(3)).shape == (3, 4, 64, 64)
    assert sum(p.numel() for p in net.parameters()) < 1_000_000  # ~0.4M: the CPU budget (stack.md)
    with pytest.raises(ValueError):
        EditorNetConfig(crop_size=66, channels=(24, 48, 96))
    with pytest.raises(ValueError):
        EditorNetConfig(channels=(20, 48))


def test_conditioning_paths():
    net = _random_net()
    x, t, src, buf = _inputs()
    n = len(CATEGORIES)
    with torch.no_grad():
        zero = [net(x, t, src, buf, torch.full((2,), c), torch.zeros(2)) for c in range(n)]
        full = [net(x, t, src, buf, torch.full((2,), c), torch.ones(2)) for c in range(n)]
        half = net(x, t, src, buf, torch.full((2,), 1), torch.full((2,), 0.5))
        other_t = net(x, 1 - t, src, buf, torch.full((2,), 1), torch.ones(2))
        other_src = net(x, t, src + 1, buf, torch.full((2,), 1), torch.ones(2))
        other_buf = net(x, t, src, buf + 1, torch.full((2,), 1), torch.ones(2))
    for z in zero[1:]:  # intensity 0: the category does not matter (the neutral condition)
        torch.testing.assert_close(z, zero[0])
    for i in range(n):
        for j in range(i + 1, n):
            assert (full[i] - full[j]).abs().max() > 1e-3, (CATEGORIES[i], CATEGORIES[j])
    assert (half - full[1]).abs().max() > 1e-3 and (half - zero[1]).abs().max() > 1e-3
    for changed in (other_t, other_src, other_buf):
        assert (changed - full[1]).abs().max() > 1e-3


def test_batch_items_are_independent():
    net = _random_net(seed=4)
    x, t, src, buf = _inputs(b=3)
    cat, inten = torch.tensor([1, 2, 5]), torch.tensor([1.0, 0.3, 0.7])
    with torch.no_grad():
        batch = net(x, t, src, buf, cat, inten)
        single = net(x[1:2], t[1:2], src[1:2], buf[1:2], cat[1:2], inten[1:2])
    torch.testing.assert_close(batch[1:2], single, atol=1e-5, rtol=1e-5)


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = _random_net(seed=5)
    x, t, src, buf = _inputs(b=1)
    cat, inten = torch.tensor([4]), torch.tensor([0.8])
    path = tmp_path / "editor.onnx"
    torch.onnx.export(net, (x, t, src, buf, cat, inten), str(path), opset_version=17, dynamo=False,
                      input_names=["x_t", "t", "source", "buffers", "category", "intensity"],
                      output_names=["v"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"x_t": x.numpy(), "t": t.numpy(), "source": src.numpy(), "buffers": buf.numpy(),
             "category": cat.numpy(), "intensity": inten.numpy()}
    with torch.no_grad():
        ref = net(x, t, src, buf, cat, inten).numpy()
    np.testing.assert_allclose(sess.run(["v"], feeds)[0], ref, atol=1e-4, rtol=1e-4)


def test_expression_editor_validates_and_is_deterministic():
    from facediff_ros.core.editor.edit import ExpressionEditor, category_index
    net = _random_net(seed=6)
    ed = ExpressionEditor(net, steps=2, seed=3)
    g = np.random.default_rng(0)
    src = g.uniform(-1, 1, (4, 16, 16)).astype(np.float32)
    buf = g.uniform(-1, 1, (8, 16, 16)).astype(np.float32)
    a = ed.edit(src, buf, "happy", 0.8)
    b = ExpressionEditor(net, steps=2, seed=3).edit(src, buf, 1, 0.8)  # same noise seed, index form
    assert a.shape == (4, 16, 16) and np.array_equal(a, b)
    assert not np.array_equal(a, ed.edit(src, buf, "sad", 0.8))
    # Two steps = the sampler driven by hand with the network as denoiser.
    denoise = sampler.denoiser_from_v_model(net, torch.from_numpy(src)[None], torch.from_numpy(buf)[None],
                                            torch.tensor([1]), torch.tensor([0.8]))
    with torch.no_grad():
        ref = sampler.sample_ddim(denoise, ed.noise.clone(), 2)[0].numpy()
    base = model_only_rgbd(src, buf)  # the network's variable is the residual over the baseline
    np.testing.assert_allclose(a, base + net.config.residual_scale * ref, atol=1e-6)
    assert category_index("Surprised") == CATEGORIES.index("surprised")
    bad = [((src[:3], buf, "happy", 0.5), "source"), ((src, buf[:, :8], "happy", 0.5), None),
           ((src.astype(np.float64) * np.nan, buf, "happy", 0.5), "NaN"),
           ((src.astype(np.int32), buf, "happy", 0.5), "dtype"), ((src, buf, "smug", 0.5), "smug"),
           ((src, buf, 7, 0.5), "category"), ((src, buf, "happy", 1.5), "intensity"),
           ((src, buf, "happy", float("nan")), "intensity")]
    for args, words in bad:
        with pytest.raises(ValueError, match=words):
            ed.edit(*args)
    with pytest.raises(ValueError, match="steps"):
        ExpressionEditor(net, steps=0)


def test_model_only_baseline_by_hand():
    src = np.zeros((4, 2, 2), np.float32) + np.array([0.1, 0.2, 0.3, 0.4], np.float32)[:, None, None]
    buf = np.zeros((8, 2, 2), np.float32)
    buf[0:3] = -0.5
    buf[3] = -0.25
    buf[7] = [[1.0, 0.0], [-1.0, 1.0]]  # warped, to paint / background, warped
    out = model_only_rgbd(src, buf)
    expect_rgb = np.where(np.array([[1, 0], [0, 1]], bool)[None], -0.5, src[:3])
    expect_d = np.where(np.array([[1, 1], [0, 1]], bool), np.float32(-0.25), src[3])
    np.testing.assert_array_equal(out[:3], expect_rgb)
    np.testing.assert_array_equal(out[3], expect_d)
    tout = model_only_rgbd(torch.from_numpy(src)[None], torch.from_numpy(buf)[None])[0].numpy()
    np.testing.assert_array_equal(tout, out)


def test_a_zero_residual_network_returns_the_baseline():
    from facediff_ros.core.editor.edit import ExpressionEditor

    def zero_residual(x_t, t, *conditions):  # v for which x0_hat = alpha x_t - sigma v = 0
        a, s = schedule.alpha_sigma(t)
        return (a / s)[:, None, None, None] * x_t

    net = _random_net(seed=7)
    ed = ExpressionEditor(net, steps=4, model=zero_residual)
    g = np.random.default_rng(1)
    src = g.uniform(-1, 1, (4, 16, 16)).astype(np.float32)
    buf = g.uniform(-1, 1, (8, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(ed.edit(src, buf, "angry", 1.0), model_only_rgbd(src, buf), atol=1e-6)
