"""Quality regression of the shipped editor weights on a small fixed held-out set.

The pairs are seed-1 pairs (the weights were trained on seed 0: identities, textures, poses and
lights never seen); thresholds sit just below what the shipped weights measured when they were
committed (`facediff evaluate editor --pairs 16 --steps 1 4`, recorded in
facediff_ros/data/editor/config.json under "evaluation"), so a worse model or a broken input path
fails here.
"""

import json
from pathlib import Path

import pytest

from facediff_ros.synthetic import editor_eval

WEIGHTS = Path(__file__).resolve().parents[1] / "facediff_ros" / "data" / "editor"
PAIRS = 16
MARGIN_DB = 0.3      # PSNR may drop this much below the recorded value (thread-count float noise is ~0.01)
MARGIN_MM = 0.3      # depth RMSE may rise this much


@pytest.fixture(scope="module")
def summary():
    if not (WEIGHTS / "editor.pt").is_file():
        pytest.skip(f"no shipped editor weights in {WEIGHTS}")
    return editor_eval.evaluate(str(WEIGHTS), pairs=PAIRS, seed=1, steps=(1, 4))


def test_shipped_weights_keep_their_measured_quality(summary):
    recorded = json.loads((WEIGHTS / "config.json").read_text())["evaluation"]["methods"]
    for name in ("editor_1", "editor_4"):
        got, then = summary["methods"][name], recorded[name]
        assert got["psnr_db"] >= then["psnr_db"] - MARGIN_DB, (name, got, then)
        assert got["depth_rmse_mm"] <= then["depth_rmse_mm"] + MARGIN_MM, (name, got, then)


def test_shipped_weights_beat_both_baselines(summary):
    """1 step beats the model-only edit, which beats no edit, on colour and depth. (4 steps beat
    the model-only colour on the 96-pair evaluation by 0.8 dB but only by ~0.1 dB on these 16 pairs:
    its colour is held by the regression test above instead.)"""
    m = summary["methods"]
    assert m["editor_1"]["psnr_db"] > m["model_only"]["psnr_db"] > m["no_edit"]["psnr_db"], m
    for name in ("editor_1", "editor_4"):
        assert m[name]["depth_rmse_mm"] < m["model_only"]["depth_rmse_mm"], m
    assert m["model_only"]["depth_rmse_mm"] < m["no_edit"]["depth_rmse_mm"], m


# The live path on whole frames, read by the independent judges (facediff_ros.judges): one held-out
# actor sequence, target happy, 2 frames. Measured with the shipped weights (issue 16 report):
# editor dlib distance source <-> edit 0.416 (model-only 0.415, truth 0.435), expression read as
# happy on both frames, PSNR 27.58 dB vs no edit 25.46 dB.
MAX_DLIB = 0.45


def test_shipped_weights_keep_identity_and_expression_on_frames():
    from facediff_ros.synthetic.editor_sequences import SequenceConfig, evaluate_sequences
    if not (WEIGHTS / "editor.pt").is_file():
        pytest.skip(f"no shipped editor weights in {WEIGHTS}")
    s = evaluate_sequences(str(WEIGHTS), SequenceConfig(sequences=1, frames=2, targets=("happy",)))
    m = s["methods"]
    assert m["editor"]["dlib_source"] <= MAX_DLIB, m["editor"]
    assert m["editor"]["expression_accuracy"] == 1.0, m["editor"]["read_as"]
    assert m["editor"]["psnr_db"] > m["no_edit"]["psnr_db"], m
