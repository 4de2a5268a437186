"""Shared fixtures: repository paths; the test process adopts orphans (see below)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_PR_SET_CHILD_SUBREAPER = 36

# The test process is a child subreaper: a process whose parent dies (a supervisor killed by a
# test, or one that exits leaving a child behind) is adopted by pytest instead of init, so
# the checks for leftover processes (runkit.SedaRun.cleanup, live_descendants) can see it.
if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    raise RuntimeError("prctl(PR_SET_CHILD_SUBREAPER) failed: leftover checks would be blind")


@pytest.fixture
def root() -> Path:
    return ROOT
