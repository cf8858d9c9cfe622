"""Editor training loop: it learns (overfits a fixed batch), resumes exactly where it stopped,
writes weights that load back into the same network, and refuses mismatched configs."""

import json

import numpy as np
import pytest
import torch

from facediff_ros.core.editor import train as tr
from facediff_ros.core.editor.network import EditorNetConfig

SMALL = EditorNetConfig(crop_size=16, channels=(8, 16), emb_dim=32)


def _fixed_batch(n=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.uniform(-1, 1, (n, 4, size, size)).astype(np.float32)
    return {"source": src, "target": np.clip(src[:, ::-1] * 0.5, -1, 1).copy(),
            "buffers": rng.uniform(-1, 1, (n, 8, size, size)).astype(np.float32),
            "mask": (rng.random((n, size, size)) > 0.3).astype(np.float32),
            "category": rng.integers(0, 7, n), "intensity": rng.uniform(0, 1, n).astype(np.float32)}


def _config(**kw):
    base = dict(net=SMALL, steps=60, batch_size=4, lr=3e-3, warmup_steps=5, checkpoint_every=20,
                ema_decay=0.9, threads=1)
    base.update(kw)
    return tr.TrainConfig(**base)


def _eval_loss(net, batch, config, seed=123):
    torch.manual_seed(0)
    tb = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        return float(np.mean([float(tr.loss_on_batch(net, tb, config, torch.Generator().manual_seed(s)))
                              for s in range(seed, seed + 8)]))


def test_training_reduces_the_loss_on_a_fixed_batch(tmp_path):
    batch = _fixed_batch()
    config = _config(steps=80)
    torch.manual_seed(config.seed)
    before = _eval_loss(tr.EditorUNet(config.net), batch, config)
    summary = tr.train(config, lambda n, rng: batch, tmp_path)
    after = _eval_loss(tr.load_weights(tmp_path, SMALL), batch, config)
    assert summary["steps"] == 80
    assert after < 0.7 * before, (before, after)


def test_resume_continues_from_the_checkpoint(tmp_path):
    batch = _fixed_batch()
    first = tr.train(_config(steps=40), lambda n, rng: batch, tmp_path)
    assert first["steps"] == 40
    blob = torch.load(tmp_path / tr.CHECKPOINT_FILE, weights_only=False)
    assert blob["step"] == 40
    # The same config with more steps is another config: refused, not silently mixed.
    with pytest.raises(ValueError, match="another config"):
        tr.train(_config(steps=60), lambda n, rng: batch, tmp_path)
    calls = []
    again = tr.train(_config(steps=40), lambda n, rng: calls.append(1) or batch, tmp_path)
    assert again["steps"] == 40 and calls == []  # already done: nothing more is trained


def test_time_budget_stops_and_saves(tmp_path):
    batch = _fixed_batch()
    summary = tr.train(_config(steps=10_000), lambda n, rng: batch, tmp_path, minutes=0.02)
    assert 0 < summary["steps"] < 10_000
    meta = json.loads((tmp_path / tr.CONFIG_FILE).read_text())
    assert meta["training"]["steps"] == summary["steps"] and meta["config"]["steps"] == 10_000
    tr.load_weights(tmp_path)


def test_weights_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(1)
    net = tr.EditorUNet(SMALL)
    tr.save_weights(tmp_path, net.state_dict(), _config())
    loaded = tr.load_weights(tmp_path, SMALL)
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(ValueError, match="weights are for"):
        tr.load_weights(tmp_path, EditorNetConfig())
    with pytest.raises(ValueError, match="no editor weights"):
        tr.load_weights(tmp_path / "missing")


def test_config_round_trip_and_validation():
    c = _config(lr=1e-3)
    assert tr.TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown"):
        tr.TrainConfig.from_dict({**c.to_dict(), "lr_typo": 1})
    with pytest.raises(ValueError):
        _config(lr=0)


def test_learning_rate_schedule():
    c = _config(steps=100, warmup_steps=10, lr=0.5, final_lr_fraction=0.1)
    assert tr.learning_rate(c, 0) == pytest.approx(0.05)
    assert tr.learning_rate(c, 9) == pytest.approx(0.5)
    assert tr.learning_rate(c, 10) == pytest.approx(0.5)
    assert tr.learning_rate(c, 55) == pytest.approx(0.275)  # half way through the cosine: (1 + 0.1) / 2
    assert tr.learning_rate(c, 100) == pytest.approx(0.05)


def test_pixel_weights():
    c = _config(background_weight=0.2, depth_weight=2.0)
    w = tr.pixel_weights(torch.tensor([[[0.0, 1.0], [0.5, 1.0]]]), c)
    assert w.shape == (1, 4, 2, 2)
    torch.testing.assert_close(w[0, 0], torch.tensor([[0.2, 1.0], [0.6, 1.0]]))
    torch.testing.assert_close(w[0, 3], 2 * w[0, 0])
