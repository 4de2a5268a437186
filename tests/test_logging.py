"""seda's lines and handlers' ctx.log through the logging module: --log-format json (every
line of every process one JSON object), --log-level, and the text format's shape."""

from __future__ import annotations

import http.client
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from seda.log import JsonFormatter, TextFormatter
from tests.runkit import SedaRun, run_env, wait_for

SERVICE = """
name: logs
acceptor: {listen: "127.0.0.1:0", protocol: http, entry: web}
stages:
  web: {handler: stagekit:logged, workers: 1}
"""

PIPELINE = """
name: numbers
source: {handler: stagekit:numbers, options: {count: 3}, to: [double]}
stages:
  double: {handler: stagekit:double, sink: true}
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


def test_text_lines_start_with_the_time_when_asked() -> None:
    line = TextFormatter("web.0", timed=True).format(record("handled"))
    stamp, rest = line.split(" ", 1)
    assert rest == "seda: web.0: handled"
    assert stamp.endswith("Z") and len(stamp) == 24 and stamp[10] == "T", stamp


ACCESS = re.compile(r'^seda: (acceptor(#?\.?\d)?|master|acceptor\.\d+): '
                    r'127\.0\.0\.1:\d+ "(.*)" (\d{3}) (\d+) B \d+\.\d ms$')


@pytest.mark.parametrize("model", ["seda", "amped", "sped", "symped", "mp"])
def test_the_access_log_has_a_line_per_answer_under_every_model(tmp_path: Path, model: str
                                                                ) -> None:
    """Each answer -- the handler's, a 500 after its error, the server's own 400 -- gets
    one line: client, request (path and query), status, bytes written."""
    graph = SERVICE.replace("stagekit:logged", "stagekit:web") + "settings: {max_attempts: 1}\n"
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0", "--model", model,
                 "--access-log") as run:
        port = run.port()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        answers = []
        for method, path in (("GET", "/a?x=1"), ("POST", "/echo"), ("GET", "/boom")):
            conn.request(method, path, body=b"12345" if method == "POST" else None)
            response = conn.getresponse()
            answers.append((response.status, len(response.read())))
        conn.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"NOT HTTP\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        wait_for(lambda: sum(1 for ln in run.err_file.read_text().splitlines()
                             if ACCESS.match(ln)) >= 4, 10, "four access lines")
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0
    lines = [m for ln in run.stderr.splitlines() if (m := ACCESS.match(ln))]
    assert [(m[3], int(m[4])) for m in lines] == [
        ("GET /a?x=1", 200), ("POST /echo", 200), ("GET /boom", 500), ("-", 400)], run.stderr
    assert [s for s, _ in answers] == [200, 200, 500]
    assert all(int(m[5]) > n for m, (_, n) in zip(lines, answers, strict=False))  # head + body


def test_a_json_access_line_carries_the_request_id_that_ctx_log_carries(tmp_path: Path
                                                                       ) -> None:
    with SedaRun(tmp_path, SERVICE, "--listen", "127.0.0.1:0", "--log-format", "json",
                 "--access-log") as run:
        port = run.port()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/a?q=2", timeout=10).read()
        wait_for(lambda: '"client"' in run.err_file.read_text(), 10, "the access line")
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0
    docs = [json.loads(line) for line in run.stderr.splitlines()]
    [handled] = [d for d in docs if d.get("stage") == "web"]
    [line] = [d for d in docs if "client" in d]
    assert line["process"] == "acceptor.0" and line["level"] == "info"
    assert (line["request"], line["status"], line["id"]) == ("GET /a?q=2", 200,
                                                              handled["request"])
    assert line["client"].startswith("127.0.0.1:") and line["bytes"] > 2
    assert 0 <= line["ms"] < 10_000


def test_the_access_log_is_off_unless_asked_and_refused_for_a_pipeline(tmp_path: Path
                                                                      ) -> None:
    with SedaRun(tmp_path, SERVICE, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/a", timeout=10).read()
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0
    assert '"GET /a"' not in run.stderr and "handled /a" in run.stderr
    (tmp_path / "p.yaml").write_text(PIPELINE)
    done = subprocess.run([sys.executable, "-m", "seda.cli", "run", "p.yaml", "--access-log"],
                          cwd=tmp_path, env=run_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("p.yaml: --access-log: this graph has no acceptor (a pipeline's "
                           "results are its log)\n")
