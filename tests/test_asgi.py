"""An ordinary Starlette app (stages/webapp.py) served by seda, under every server model,
through Python's http.client and curl: path parameters, a query, a JSON POST, 404, a raised
exception, a streamed body, repeated headers, the lifespan; and what is not an ASGI app."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runkit import SedaRun, run_env

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["seda", "amped", "sped", "symped", "mp"]


def graph() -> str:
    """graphs/webapp.yaml, on a free port, its handlers found from the repository."""
    text = (ROOT / "graphs" / "webapp.yaml").read_text()
    return text.replace('path: [".."]', f'path: ["{ROOT}"]').replace(
        "listen: 127.0.0.1:8082", "listen: 127.0.0.1:0")


def ask(port: int, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, list[str]], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        heads: dict[str, list[str]] = {}
        for name, value in answer.getheaders():
            heads.setdefault(name.lower(), []).append(value)
        return answer.status, heads, answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize("model", MODELS)
def test_a_starlette_app_answers_alike_under_every_model(tmp_path: Path, model: str) -> None:
    with SedaRun(tmp_path, graph(), "--model", model) as run:
        port = run.port()
        assert ask(port, "GET", "/")[::2] == (200, b"hello, world")
        status, _, body = ask(port, "GET", "/items/7?q=blue")
        assert (status, json.loads(body)) == (200, {"id": 7, "name": "item 7", "q": "blue"})
        status, _, body = ask(port, "GET", "/items/700")  # the lifespan's catalog has no 700
        assert (status, json.loads(body)) == (404, {"error": "no item 700"})
        assert ask(port, "GET", "/no/such/route")[0] == 404
        status, heads, body = ask(port, "POST", "/items", json.dumps({"id": 3}).encode(),
                                  {"content-type": "application/json"})
        assert (status, heads["location"], json.loads(body)) == (
            201, ["/items/3"], {"created": {"id": 3}, "length": 9})
        status, heads, body = ask(port, "GET", "/stream?n=5")  # part by part (chunked)
        assert (status, body) == (200, b"".join(b"part %d\n" % i for i in range(5)))
        assert heads["transfer-encoding"] == ["chunked"] and "content-length" not in heads
        status, heads, _ = ask(port, "GET", "/cookies")
        assert status == 200 and sorted(c.split(";")[0] for c in heads["set-cookie"]) == [
            "a=1", "b=2"]
        assert ask(port, "GET", "/error")[::2] == (500, b"Internal Server Error")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:  # the scope's client: this connection's own address
            conn.request("GET", "/whoami")
            me = json.loads(conn.getresponse().read())
            assert conn.sock is not None
            assert me == {"host": "127.0.0.1", "port": conn.sock.getsockname()[1]}
        finally:
            conn.close()
        if shutil.which("curl"):
            done = subprocess.run(["curl", "-s", "-d", '{"id": 9}', "-H",
                                   "content-type: application/json",
                                   f"http://127.0.0.1:{port}/items"],
                                  capture_output=True, text=True, timeout=30)
            assert json.loads(done.stdout) == {"created": {"id": 9}, "length": 9}
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "RuntimeError: this route always fails" in run.stderr  # logged, as uvicorn does
    assert "0 failed" in run.stderr and "0 restarts" in run.stderr


def seda(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seda.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=tmp, env=run_env(tmp))


@pytest.mark.parametrize(("code", "why"), [
    ("class app:\n    pass\n", "not an ASGI 3 app: it is a class; name the application "
                                "object (app = App())"),
    ("def app(scope, receive, send):\n    pass\n", "not an ASGI 3 app: it is not async"),
    ("async def app(scope):\n    pass\n", "not an ASGI 3 app: it does not take (scope, "
                                         "receive, send)"),
])
def test_what_is_not_an_asgi_app_is_refused_before_anything_starts(
        tmp_path: Path, code: str, why: str) -> None:
    (tmp_path / "notasgi.py").write_text(code)
    (tmp_path / "g.yaml").write_text(
        "name: bad\nacceptor: {listen: '127.0.0.1:0', protocol: http, entry: app}\n"
        "stages:\n  app: {handler: 'asgi:notasgi:app'}\n")
    done = seda(tmp_path, "validate", "g.yaml")
    assert done.returncode == 2
    assert f"g.yaml:4: stages.app.handler: cannot use handler 'asgi:notasgi:app': {why}" \
        in done.stderr, done.stderr
