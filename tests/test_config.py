"""Children run from plain data (seda.engine.config): the spec decoded without pydantic, and no
child process importing pydantic, networkx or yaml (live, under several models)."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from seda.engine import config
from seda.plan.deployment import make_plan
from seda.spec.builder import check_file
from tests.runkit import SedaRun

ROOT = Path(__file__).resolve().parent.parent


def _compare(record: Any, spec: Any, where: str) -> None:
    """Every field of `record` equals the spec's field of that name (recursively)."""
    if dataclasses.is_dataclass(record):
        for f in dataclasses.fields(record):
            _compare(getattr(record, f.name), getattr(spec, f.name), f"{where}.{f.name}")
    elif isinstance(record, dict):
        assert set(record) == set(spec), where
        for key in record:
            _compare(record[key], spec[key], f"{where}[{key}]")
    elif isinstance(record, tuple):
        assert len(record) == len(spec), where
        for i, (a, b) in enumerate(zip(record, spec, strict=True)):
            _compare(a, b, f"{where}[{i}]")
    else:
        assert record == spec, (where, record, spec)


@pytest.mark.parametrize("graph", sorted(p.name for p in (ROOT / "graphs").glob("*.yaml")))
def test_the_plan_decodes_to_the_same_values_as_the_spec(graph: str) -> None:
    spec = check_file(ROOT / "graphs" / graph, imports=False).spec
    conf = make_plan(spec, "RUN_DIR").conf()
    assert isinstance(conf, config.Graph)
    _compare(conf, spec, spec.name)
    assert conf.entries() == spec.entries() and conf.is_service == spec.is_service


def test_a_plan_that_did_not_come_from_a_spec_is_refused() -> None:
    with pytest.raises(KeyError):
        config.decode(config.Settings, {"max_attempts": 3})


def test_the_time_limit_of_a_call() -> None:
    spec = check_file(ROOT / "graphs" / "shop.yaml", imports=False).spec
    conf = make_plan(spec, "RUN_DIR").conf()
    assert conf.call_limit("catalog") == max(spec.acceptor.limits.request_timeout,  # type: ignore[union-attr]
                                              config.SERVICE_CALL_LIMIT)


PIPELINE = """
name: light
source: {handler: stagekit:modules_source, to: [look]}
stages:
  look: {handler: stagekit:Modules, sink: true}
"""
SERVICE = """
name: light-web
acceptor: {listen: "127.0.0.1:0", protocol: http, entry: web}
stages:
  web: {handler: stagekit:modules_web, workers: 1}
"""


def test_no_child_of_a_pipeline_imports_pydantic_networkx_or_yaml(tmp_path: Path) -> None:
    with SedaRun(tmp_path, PIPELINE) as run:
        assert run.wait(60) == 0, run.stderr
    assert run.results() == [{"source": [], "worker": []}]


@pytest.mark.parametrize("model", ["seda", "sped", "mp"])
def test_no_child_of_a_service_imports_pydantic_networkx_or_yaml(tmp_path: Path, model: str
                                                                 ) -> None:
    """seda: a worker forked from the fork server; sped: the acceptor; mp: a connection
    process forked from the master (a fresh interpreter)."""
    with SedaRun(tmp_path, SERVICE, "--listen", "127.0.0.1:0", "--model", model) as run:
        port = run.port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            seen = json.loads(answer.read())
        assert seen["pid"] != run.pid and seen["modules"] == [], seen
