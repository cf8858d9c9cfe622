"""The editor node switches its weights at run time: a good folder is loaded and used for the next
frame; a bad one is rejected with the reason and the old weights keep editing (in-process callbacks)."""
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from facediff_ros.adapters.images import from_image_msg  # noqa: E402
from test_editor_node import _feed, _messages, _node, make_scene  # noqa: E402


@pytest.fixture(scope="module")
def scene(model):
    return make_scene(model)


def _weights(folder, seed):
    import torch

    from facediff_ros.core.editor.network import EditorNetConfig, EditorUNet
    from facediff_ros.core.editor.train import TrainConfig, save_weights
    torch.manual_seed(seed)
    cfg = EditorNetConfig(crop_size=16, channels=(8, 16), emb_dim=32)
    net = EditorUNet(cfg)
    with torch.no_grad():  # a visible difference between the two nets' outputs
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_weights(folder, net.state_dict(), TrainConfig(net=cfg))
    return folder


def _edit(node, out, scene, sec):
    _feed(node, _messages(scene, sec))
    assert node.wait_idle(30.0)
    assert out["color"], node.counters.snapshot()
    return from_image_msg(out["color"][-1]).copy()


def test_weights_switch_at_run_time(context, scene, tmp_path):
    a = _weights(tmp_path / "a", 0)
    b = _weights(tmp_path / "b", 1)
    node, out = _node(context, a)
    try:
        before = _edit(node, out, scene, 10)
        old_avatar = node.avatar
        r = node.set_parameters([Parameter("weights", value=str(b))])[0]
        assert r.successful, r.reason
        assert node.get_parameter("weights").value == str(b) and node.avatar is not old_avatar
        after = _edit(node, out, scene, 11)
        assert not np.array_equal(before, after)
        # Bad folders: rejected with the reason; parameter, backend and output stay those of b.
        empty = tmp_path / "empty"
        empty.mkdir()
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "editor.pt").write_bytes(b"not a torch file")
        for folder, reason in ((empty, "no editor weights"), (broken, "cannot load the editor weights"),
                               (tmp_path / "missing", "no editor weights")):
            current = node.avatar
            r = node.set_parameters([Parameter("weights", value=str(folder))])[0]
            assert not r.successful and reason in r.reason, r.reason
            assert node.get_parameter("weights").value == str(b) and node.avatar is current
        assert np.array_equal(_edit(node, out, scene, 12), after)
    finally:
        node.destroy_node()
    # The switched node edits exactly as a node started with b.
    fresh, out2 = _node(context, b)
    try:
        assert np.array_equal(_edit(fresh, out2, scene, 13), after)
    finally:
        fresh.destroy_node()
