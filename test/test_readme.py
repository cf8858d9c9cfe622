"""README stays true: its parameter tables are the nodes' own declarations."""

from pathlib import Path

from facediff_ros import cli
from facediff_ros.nodes.capture import CaptureParams
from facediff_ros.nodes.editor import EditorParams
from facediff_ros.nodes.fitting import FittingParams
from facediff_ros.nodes.landmarks import LandmarksParams

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_parameter_tables_match_the_node_dataclasses():
    text = README.read_text()
    assert cli.readme_with_param_tables(text) == text, "run `.venv/bin/facediff params --readme README.md`"
    for cls in (CaptureParams, LandmarksParams, FittingParams, EditorParams):
        for name in cls.__dataclass_fields__:
            assert f"| `{name}` |" in text


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
