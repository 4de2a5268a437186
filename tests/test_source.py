"""The source, in this process with its real sockets: what it writes when results come in
twice (a re-run upstream sends the same ids again, by different sink workers)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from seda.engine import wire as e
from seda.handler import resolve
from seda.plan.deployment import make_plan
from seda.runtime.source import Source
from seda.spec.builder import check_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def source() -> Iterator[tuple[Source, io.StringIO]]:
    run_dir = tempfile.mkdtemp(prefix="seda-source-")
    spec = check_file(ROOT / "graphs" / "pipeline.yaml", imports=False).spec
    plan = make_plan(spec, run_dir, base_dir=str(ROOT))
    out = io.StringIO()
    s = Source(plan, "source", os.getpid(), resolve, out)
    try:
        yield s, out
    finally:
        s.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_results_that_come_twice_are_written_once(source: tuple[Source, io.StringIO]) -> None:
    s, out = source
    rows = [[101, {"w": 1}, 1], [102, {"w": 2}, 2]]
    s.take([b"count.0", e.RESULT, e.pack([0, [], rows, []])])
    s.take([b"count.1", e.RESULT, e.pack([0, [], [*rows[1:], [103, {"w": 3}, 3]], []])])
    s.take([b"count.0", e.RESULT, e.pack([1 << 41, rows[:1], [], []])])  # kept rows too
    assert out.getvalue().splitlines() == ['{"w": 1}', '{"w": 2}', '{"w": 3}']
    assert s.duplicates == 2 and s.results_written == 3
    assert s.stats()["duplicates"] == 2
