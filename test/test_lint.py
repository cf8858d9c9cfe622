"""flake8 over the package and the tests (configuration in setup.cfg)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flake8_clean():
    out = subprocess.run([sys.executable, "-m", "flake8", "facediff_ros", "test", "launch", "setup.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
