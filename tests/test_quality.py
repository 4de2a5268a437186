"""The lint and type gates run as tests, so one test command checks everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_ruff_is_clean(root: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "seda", "stages", "tests",
                           "tools"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_is_clean(root: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
