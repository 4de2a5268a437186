"""seda's lines and handlers' ctx.log through the logging module: --log-format json (every
line of every process one JSON object), --log-level, and the text format's shape."""

from __future__ import annotations

import json
import logging
import signal
import urllib.request
from pathlib import Path

from seda.log import JsonFormatter, TextFormatter
from tests.runkit import SedaRun, wait_for

SERVICE = """
name: logs
acceptor: {listen: "127.0.0.1:0", protocol: http, entry: web}
stages:
  web: {handler: stagekit:logged, workers: 1}
"""


def record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("seda", level, "f.py", 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_the_text_format_is_one_line_with_process_level_and_stage() -> None:
    assert TextFormatter("supervisor").format(record("listening on x")) == \
        "seda: listening on x"
    assert TextFormatter("web.0").format(record("careful", logging.WARNING, stage="web")) == \
        "seda: web.0: warning: web: careful"
    doc = json.loads(JsonFormatter("web.0", "g").format(
        record("handled", stage="web", request=12)))
    assert doc["time"].endswith("Z") and len(doc["time"]) == 24
    assert {k: v for k, v in doc.items() if k != "time"} == {
        "level": "info", "graph": "g", "process": "web.0", "stage": "web", "request": 12,
        "message": "handled"}


def test_json_logs_are_one_object_a_line_from_every_process(tmp_path: Path) -> None:
    with SedaRun(tmp_path, SERVICE, "--listen", "127.0.0.1:0", "--log-format", "json") as run:
        port = run.port()
        for path in ("/a", "/warn"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()
        wait_for(lambda: "careful with /warn" in run.err_file.read_text(), 10, "the warning")
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0
    docs = [json.loads(line) for line in run.stderr.splitlines()]  # every line is JSON
    assert all(d["graph"] == "logs" for d in docs)
    supervisor = [d for d in docs if d["process"] == "supervisor"]
    assert any(d["message"].startswith("listening on http://127.0.0.1:") for d in supervisor)
    assert any("stopped after draining: 2 requests" in d["message"] for d in supervisor)
    handled = [d for d in docs if d.get("stage") == "web"]
    assert [(d["level"], d["message"]) for d in handled] == [
        ("info", "handled /a"), ("info", "handled /warn"), ("warning", "careful with /warn")]
    assert {d["process"] for d in handled} == {"web.0"}
    assert all(isinstance(d["request"], int) and d["request"] > 0 for d in handled)
    assert handled[0]["request"] != handled[1]["request"] == handled[2]["request"]


def test_the_log_level_hides_what_is_less_important(tmp_path: Path) -> None:
    with SedaRun(tmp_path, SERVICE, "--listen", "127.0.0.1:0", "--log-level", "warning") as run:
        listen = wait_for(lambda: (run.run_dir() / "listen.url").is_file()
                          and (run.run_dir() / "listen.url").read_text().strip(), 30,
                          "the listen address")
        for path in ("/a", "/warn"):
            urllib.request.urlopen(f"{listen}{path}", timeout=10).read()
        wait_for(lambda: "careful" in run.err_file.read_text(), 10, "the warning")
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0
    assert run.stderr.splitlines() == ["seda: web.0: warning: web: careful with /warn"]
