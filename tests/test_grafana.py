"""The Grafana dashboard in docs/grafana: every series its queries name, with every label they
group by, is one a real run's /metrics exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.runkit import SedaRun, wait_for

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "seda-dashboard.json"

SERVICE = """
name: graf
acceptor: {listen: "127.0.0.1:0", protocol: http, entry: front}
stages:
  front: {handler: stagekit:forward, to: [back]}
  back: {handler: stagekit:slow_ok, workers: 2, options: {slow: 0.001}}
"""


def queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 12 and all(p["datasource"]["uid"] == "${datasource}"
                                    for p in board["panels"])
    graph = next(v for v in board["templating"]["list"] if v["name"] == "graph")
    return [*exprs, graph["definition"]]


def test_every_series_the_dashboard_asks_for_is_exported(tmp_path: Path) -> None:
    with SedaRun(tmp_path, SERVICE, "--listen", "127.0.0.1:0", "--status", "127.0.0.1:0") as run:
        port, status = run.port(), run.status_url()
        for i in range(20):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/n{i}", timeout=10).read()
        wait_for(lambda: run.status()["stages"]["back"]["completed"] == 20, 10,
                 "the requests counted")
        with urllib.request.urlopen(f"{status}/metrics", timeout=10) as page:
            text = page.read().decode()
        run.signal(15)
        assert run.wait(30) == 0
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    for expr in queries():
        names = set(re.findall(r"\bseda_[a-z_]+", expr))
        grouped = {label.strip() for clause in re.findall(r"by \(([^)]*)\)", expr)
                   for label in clause.split(",")}
        assert names, expr
        for name in names:
            assert name in labels, f"{name} (in {expr}) is not exported"
            assert "graph" in labels[name], name
            missing = grouped - labels[name]
            assert not missing, f"{name} has no label {missing} (in {expr})"
