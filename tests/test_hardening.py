"""Wedges: one client, one reply or one message must cost at most itself -- never a service's
answers to everyone else, a pipeline's end, or credit. Real processes, real sockets, real
clients (raw TCP speaking HTTP and RESP, http.client)."""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seda.runtime import deadletter
from tests.conftest import ROOT
from tests.runkit import SedaRun, Stream, balanced, pipelined, summary_counts, wait_for

SERVICE = """
name: told
model: {model}
acceptor:
  listen: 127.0.0.1:8080
  protocol: http
  entry: told
  limits: {{request_timeout: 20, max_request_bytes: 65536}}
stages:
  told:
    handler: stagekit:as_told
    workers: 2
    prefetch: 8
settings:
  max_message_bytes: {limit}
  dead_letter: dead.jsonl
"""


def service(model: str = "seda", limit: int = 1 << 20) -> str:
    return SERVICE.format(model=model, limit=limit)


def post(path: str, body: bytes) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), len(body), body))


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode()


def stop(run: SedaRun) -> str:
    run.signal(signal.SIGTERM)
    assert run.wait(30) == 0, run.stderr
    return run.stderr


# ---------------------------------------------------------------- frames over the size limit

def resp(*args: bytes | str) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        data = a if isinstance(a, bytes) else a.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def test_kv_as_shipped_answers_many_pipelined_gets_of_a_large_value(tmp_path: Path) -> None:
    """graphs/kv.yaml as shipped: a 1 MB value, then 40 GETs of it in one write. 40 replies
    do not fit one frame (16 MiB): before frames were bounded by bytes, the receiver dropped
    the frame and every one of them timed out, with their credit lost for good."""
    graph = (ROOT / "graphs" / "kv.yaml").read_text()
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        value = os.urandom(500_000).hex().encode()  # 1,000,000 bytes
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(resp("SET", "big", value))
            assert sock.recv(16) == b"+OK\r\n"
            sock.sendall(resp("GET", "big") * 40)
            want = (b"$1000000\r\n" + value + b"\r\n") * 40
            got = b""
            while len(got) < len(want):
                chunk = sock.recv(1 << 20)
                assert chunk, "the connection closed"
                got += chunk
            assert got == want
            sock.sendall(resp("PING"))
            assert sock.recv(16) == b"+PONG\r\n"
        stderr = stop(run)
        balanced(stderr)
        assert "42 requests, 42 responses" in stderr


PIPELINE = """
name: padded
source:
  handler: stagekit:padded
  to: [grow]
  options: {n: 100, size: 200000, big: [50], big_size: 1100000}
stages:
  grow:
    handler: stagekit:grow
    workers: 2
    prefetch: 32
    to: [tally]
    options: {grow: [70], to: 1100000}
  tally:
    handler: stagekit:Tally
    workers: 2
    prefetch: 32
    sink: true
settings:
  max_message_bytes: 1048576
  dead_letter: dead.jsonl
"""


def test_a_pipeline_of_large_messages_ends_and_only_oversized_ones_fail(tmp_path: Path
                                                                         ) -> None:
    """Messages of 200 KB under a 1 MiB limit, 32 to a window: frames are split by bytes and
    every message arrives. One item too large from the source and one output too large from
    a stage fail alone, with an error that names the limit; the pipeline still ends."""
    with SedaRun(tmp_path, PIPELINE) as run:
        assert run.wait(120) == 0, run.stderr
        [tally] = run.results()
        assert tally == {"count": 98, "sum": sum(range(100)) - 50 - 70}
        letters = {r["id"]: r for r in deadletter.read(str(tmp_path / "dead.jsonl"))}
        assert len(letters) == 2, letters
        errors = sorted(r["error"] for r in letters.values())
        assert all("over settings.max_message_bytes (1048576)" in e for e in errors), errors
        assert "2 dead-lettered" in run.stderr


def test_a_reply_over_the_limit_is_a_500_for_its_request_alone(tmp_path: Path) -> None:
    """Replies of 600 KB under a 1 MiB limit travel in frames of their own; a 1.5 MB one
    cannot travel at all: its request is answered 500, the others in the same write are
    answered in order, and the service goes on."""
    with SedaRun(tmp_path, service(), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        answers = pipelined(port, [get("/size?600000"), get("/size?1500000"),
                                   get("/size?600000"), get("/plain")])
        assert [status for status, _ in answers] == [200, 500, 200, 200]
        assert answers[0][1] == answers[2][1] == b"y" * 600_000
        assert pipelined(port, [get("/plain")]) == [(200, b"plain")]
        stderr = stop(run)
        balanced(stderr)
    [letter] = deadletter.read(str(tmp_path / "dead.jsonl"))
    assert "over settings.max_message_bytes" in letter["error"]


# ---------------------------------------------------------------- replies of any shape

def _fifo(tmp: Path) -> str:
    path = tmp / "fifo"
    if not path.exists():
        os.mkfifo(path)
    return str(path)


BAD_REPLIES: list[Any] = [
    {"file": "/x", "status": "200"}, {"file": "/x", "headers": [1]},
    {"file": "/dev/null", "headers": {"x": "\u20ac"}}, {"file": "a\x00b"}, {"file": 7},
    {"file": "/dev/zero"}, {"file": "/proc/self/fd/0"}, {"file": "/nonexistent"},
    {"status": 200, "headers": {"x": "1\r\nset-cookie: stolen=1"}, "body": "x"},
    {"status": 200, "headers": {"x y": "1"}, "body": "x"}, {"body": 12345},
    {"status": True}, {"status": 99}, {"json": {b"k": 1}}, {"json": float("nan")},
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
]


@pytest.mark.parametrize("model", ["seda", "sped", "mp"])
def test_a_bad_reply_costs_its_own_request_only(tmp_path: Path, model: str) -> None:
    """Replies the acceptor cannot send as they are -- bad status or headers, a header that
    would split the response, a body that is not bytes, a file path with a NUL, a FIFO (whose
    open would block the loop), a device -- each cost their own request: answered (500, 403,
    404), never blocking, never touching the plain requests pipelined around them."""
    fifo = _fifo(tmp_path)
    with SedaRun(tmp_path, service(model), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        for reply in [*BAD_REPLIES, {"file": fifo}]:
            started = time.monotonic()
            answers = pipelined(port, [get("/plain"), post("/reply", msgpack.packb(reply)),
                                       get("/plain")], timeout=10)
            assert answers[0] == answers[2] == (200, b"plain"), (reply, answers)
            status, body = answers[1]
            assert status in (200, 403, 404, 500), (reply, answers[1])
            assert b"stolen" not in body and time.monotonic() - started < 5, reply
        stderr = stop(run)
    assert "could not be sent (answered 500)" in stderr
    if model != "mp":  # (mp's connection processes report their figures differently)
        balanced(stderr)


def replies(regular: str, fifo: str) -> st.SearchStrategy[Any]:
    """Any value msgpack carries, and dicts in the reply shorthands' shape with any values;
    file replies name a regular file (so their head is made), a FIFO, devices, a NUL."""
    scalars = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
               | st.floats() | st.text(max_size=30) | st.binary(max_size=30))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=12)
    headers = st.dictionaries(st.text(max_size=10), values, max_size=3) | values
    statuses = st.integers(-5, 1000) | values
    paths = st.sampled_from([regular, fifo, "/dev/null", "/dev/zero", "/nonexistent", "/tmp",
                             "x\x00y", regular + "\x00"]) | values
    shaped = st.fixed_dictionaries({}, optional={
        "status": statuses, "headers": headers, "body": values, "json": values})
    files = st.fixed_dictionaries({"file": paths}, optional={"status": statuses,
                                                             "headers": headers})
    return values | shaped | files


def test_any_reply_shape_gets_exactly_one_answer(tmp_path: Path) -> None:
    """Property, through a live acceptor: whatever a handler returns -- any msgpack value,
    any mix of the shorthands' keys with any values -- its request gets exactly one answer,
    the requests pipelined around it get theirs, and the service answers afterwards."""
    regular, fifo = tmp_path / "regular.txt", _fifo(tmp_path)
    regular.write_text("a regular file\n")
    with SedaRun(tmp_path, service(), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        sent = 0

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(replies(str(regular), fifo))
        def one_answer(reply: Any) -> None:
            nonlocal sent
            answers = pipelined(port, [get("/plain"), post("/reply", msgpack.packb(reply)),
                                       get("/plain")], timeout=10)
            sent += 3
            assert answers[0] == answers[2] == (200, b"plain"), (reply, answers)
            assert 200 <= answers[1][0] <= 599

        one_answer()
        assert pipelined(port, [get("/plain")]) == [(200, b"plain")]
        stderr = stop(run)
        balanced(stderr)
        assert summary_counts(stderr)["requests"] == sent + 1


def test_a_file_reply_with_a_status_that_has_no_body_sends_no_file(tmp_path: Path) -> None:
    """{"file": path, "status": 204}: the head says no body, so the file's bytes after it
    were read as the next response ("BadStatusLine: a regular file", found by the property
    above in about one run of ten)."""
    regular = tmp_path / "regular.txt"
    regular.write_text("a regular file\n")
    with SedaRun(tmp_path, service(), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        for status in (204, 304):
            reply = msgpack.packb({"file": str(regular), "status": status})
            assert pipelined(port, [get("/plain"), post("/reply", reply), get("/plain")],
                             timeout=5) == [(200, b"plain"), (status, b""), (200, b"plain")]
        balanced(stop(run))


def test_a_fifo_named_by_a_reply_does_not_block_the_loop(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: on the acceptor's loop that
    stopped every connection. A FIFO is not a regular file: 403 at once."""
    fifo = _fifo(tmp_path)
    with SedaRun(tmp_path, service(), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        started = time.monotonic()
        [(status, body)] = pipelined(port, [post("/reply", msgpack.packb({"file": fifo}))],
                                     timeout=5)
        assert (status, body) == (403, b"403 not a regular file\n")
        assert pipelined(port, [get("/plain")], timeout=5) == [(200, b"plain")]
        assert time.monotonic() - started < 3
        balanced(stop(run))


def test_response_splitting_is_refused(tmp_path: Path) -> None:
    """A header value with CR/LF from a handler would become a header of its own; a body of
    12345 would become 12,345 NUL bytes. Both are answered 500 instead."""
    with SedaRun(tmp_path, service(), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        split = {"headers": {"x-user": "a\r\nSet-Cookie: session=stolen"}, "body": "hi"}
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post("/reply", msgpack.packb(split)) + post(
                "/reply", msgpack.packb({"body": 12345})) + get("/plain"))
            data = b""
            deadline = time.monotonic() + 10
            while data.count(b"HTTP/1.1 ") < 3 or not data.endswith(b"plain"):
                assert time.monotonic() < deadline, data
                data += sock.recv(65536)
        assert b"stolen" not in data and b"\x00" not in data
        assert data.count(b"HTTP/1.1 500 ") == 2 and data.endswith(b"\r\n\r\nplain")
        wait_for(lambda: "could not be sent" in run.err_file.read_text(), 5, "the log line")
        balanced(stop(run))


# ---------------------------------------------------------------- half-closed clients

ECHO = """
name: echo
model: {model}
acceptor:
  listen: 127.0.0.1:8080
  protocol: {protocol}
  entry: echo
stages:
  echo:
    handler: stagekit:{handler}
"""

HALF_CLOSED = {
    "http": (b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
             [b"GET /a", b"GET /b"], "web"),
    "line": (b"one\ntwo\n", [b"one\n", b"two\n"], "echo"),
    "resp": (resp("PING", "x") + resp("ECHO", "y"),
             [b"*2\r\n$4\r\nPING\r\n$1\r\nx\r\n", b"*2\r\n$4\r\nECHO\r\n$1\r\ny\r\n"], "echo"),
}


@pytest.mark.parametrize(("protocol", "model"), [
    ("http", "seda"), ("line", "seda"), ("resp", "seda"), ("http", "sped"), ("http", "mp"),
    ("resp", "amped")])
def test_a_half_closed_client_still_gets_its_answers(tmp_path: Path, protocol: str,
                                                     model: str) -> None:
    """Requests, then shutdown(SHUT_WR): the client sends no more but reads on. Every
    request it sent is answered, in order, then the server closes."""
    data, answers, handler = HALF_CLOSED[protocol]
    graph = ECHO.format(model=model, protocol=protocol, handler=handler)
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := sock.recv(65536):  # until the server closes (or a timeout)
                    got += chunk
            at = 0
            for answer in answers:
                found = got.find(answer, at)
                assert found >= 0, (answer, got)
                at = found + len(answer)
        stderr = stop(run)
    if model != "mp":
        balanced(stderr)


# ---------------------------------------------------------------- handlers that never return

STUCK = """
name: stuck
model: {model}
acceptor:
  listen: 127.0.0.1:8080
  protocol: http
  entry: stuck
  limits: {{request_timeout: {deadline}}}
stages:
  stuck:
    handler: stagekit:stuck
    workers: 2
    prefetch: 4
    timeout: {timeout}
settings:
  dead_letter: dead.jsonl
"""


def fetch(port: int, path: str, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize("model", ["seda", "amped"])
def test_a_call_past_its_timeout_is_answered_504_and_its_worker_replaced(
        tmp_path: Path, model: str) -> None:
    """Requests whose handler never returns: past the stage's timeout (1 s) each is answered
    504, its worker is replaced, and the service answers everyone else throughout. Before,
    four such requests left every worker stuck and every later request got a 504."""
    graph = STUCK.format(model=model, deadline=30, timeout=1)
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        before = {int(fetch(port, "/pid")[1]) for _ in range(8)}
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as a, \
                socket.create_connection(("127.0.0.1", port), timeout=30) as b:
            a.sendall(get("/hang") * 2)
            b.sendall(get("/hang") * 2)
            time.sleep(0.2)  # (the hangs are in the workers' hands before the others come)
            answers = [fetch(port, "/pid") for _ in range(10)]
            for sock in (a, b):
                stream = Stream(sock)
                for _ in range(2):
                    response = http.client.HTTPResponse(stream)  # type: ignore[arg-type]
                    response.begin()
                    assert response.status == 504, response.read()
                    assert b"over its time limit" in response.read()
        assert all(status == 200 for status, _ in answers), answers
        assert time.monotonic() - started < 20  # 504s at ~1 s each, not at the 30 s deadline
        after = {int(fetch(port, "/pid")[1]) for _ in range(8)}
        assert not after & before  # every worker that held a hang was replaced
        stderr = stop(run)
    assert stderr.count("ran over its timeout of 1 s") >= 2
    assert "restart limit" not in stderr
    balanced(stderr)


def test_a_stuck_call_shows_as_busy_in_the_live_view(tmp_path: Path) -> None:
    """A worker inside a 4 s call sends no figures; the live view counts it busy (it showed
    0% busy before)."""
    graph = STUCK.format(model="seda", deadline=30, timeout=10).replace("workers: 2",
                                                                         "workers: 1")
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(get("/sleep?4"))
            time.sleep(2.5)
            [row] = run.status()["workers"]
            stage = run.status()["stages"]["stuck"]
            assert row["utilisation"] >= 0.8 and stage["utilisation"] >= 0.8, (row, stage)
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        balanced(stop(run))


def test_a_call_stuck_holding_the_gil_is_ended_from_outside(tmp_path: Path) -> None:
    """A catastrophic regular expression holds the GIL: the worker's watchdog thread cannot
    run, so its heartbeat stops and the supervisor kills the worker past its timeout. The
    request is answered (500 once its attempts are spent, or 504 at its deadline); the other
    worker serves everyone else meanwhile."""
    graph = STUCK.format(model="seda", deadline=15, timeout=1)
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(get("/redos"))
            time.sleep(0.2)
            answers = [fetch(port, "/pid", timeout=10)[0] for _ in range(5)]
            response = http.client.HTTPResponse(Stream(sock))  # type: ignore[arg-type]
            response.begin()
            assert response.status in (500, 504)
        assert answers == [200] * 5
        stderr = stop(run)
    assert "(a call that holds the GIL): killing it" in stderr
    balanced(stderr)


PIPELINE_STUCK = """
name: stuck
source:
  handler: stagekit:numbers
  to: [work]
  options: {n: 50}
stages:
  work:
    handler: stagekit:timed
    workers: 2
    to: [sink]
    timeout: 0.5
    options: {long: 7, seconds: 3600}
  sink:
    handler: stagekit:echo
    sink: true
settings:
  dead_letter: dead.jsonl
"""


def test_a_pipeline_item_past_its_timeout_is_dead_lettered_and_the_run_ends(tmp_path: Path
                                                                             ) -> None:
    with SedaRun(tmp_path, PIPELINE_STUCK) as run:
        assert run.wait(60) == 0, run.stderr
        assert sorted(r["x"] for r in run.results()) == [x for x in range(50) if x != 7]
        [letter] = deadletter.read(str(tmp_path / "dead.jsonl"))
        assert letter["payload"] == 7 and "over its timeout of 0.5 s" in letter["error"]


def test_under_sped_a_stuck_call_takes_its_acceptor_which_comes_back(tmp_path: Path
                                                                      ) -> None:
    """Under sped the handlers run on the acceptor's loop: a call past its timeout ends the
    acceptor (its connections close) and the supervisor starts another on the same port."""
    graph = STUCK.format(model="sped", deadline=30, timeout=1)
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(get("/hang"))
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""  # closed, not answered
        wait_for(lambda: fetch(port, "/pid", timeout=5)[0] == 200, 20, "the new acceptor")
        stderr = stop(run)
    assert "ran over its timeout of 1 s" in stderr


# ---------------------------------------------------------------- memory

LEAK = """
name: leak
acceptor:
  listen: 127.0.0.1:8080
  protocol: http
  entry: leak
stages:
  leak:
    handler: stagekit:Leak
    workers: 2
    max_memory_mb: 96
    options: {kb: 4096}
"""


def test_a_leaking_worker_is_recycled_and_its_memory_is_reported(tmp_path: Path) -> None:
    """Each request leaks 4 MiB in its worker. Resident memory per worker is in
    /api/status and /metrics; a worker over max_memory_mb (96) finishes what it holds and a
    fresh process takes its place -- every request is still answered, and the recycling is
    no crash (no backoff, not counted against the restart limit)."""
    with SedaRun(tmp_path, LEAK, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        pids, answers = set(), []
        for _ in range(120):
            status, body = fetch(port, "/", timeout=20)
            answers.append(status)
            pids.add(int(body.split()[0]))
            time.sleep(0.02)
        assert answers == [200] * 120
        assert len(pids) >= 4, pids  # 120 x 4 MiB over 2 workers: some were replaced
        snapshot = run.status()
        rows = {row["name"]: row for row in snapshot["workers"]}
        assert all(16 << 20 < row["rss"] < 400 << 20 for row in rows.values()), rows
        assert snapshot["processes"]["acceptor.0"]["rss"] > 0
        url = run.status_url()
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert ('seda_worker_rss_bytes{graph="leak",host="local",pool="leak",worker="leak.0"}'
                in metrics)
        stderr = stop(run)
    assert "is over max_memory_mb (96)" in stderr
    assert "restart limit" not in stderr and "restarting" not in stderr
    balanced(stderr)


# ---------------------------------------------------------------- the status server

SCALED = """
name: {name}
acceptor:
  listen: 127.0.0.1:8080
  protocol: http
  entry: web
stages:
  web:
    handler: stagekit:web
    workers: 1
    scale: {{min: 1, max: 3, enabled: false}}
"""


def status_request(url: str, data: bytes) -> bytes:
    """Raw bytes to the status server, its whole answer back (it closes or keeps alive)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        sock.settimeout(2)
        out = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and out.split(b"\r\n\r\n", 1)[1] and \
                        b"content-length: 0\r\n" not in out:
                    break
    return out


def test_the_status_server_refuses_cross_site_changes_and_foreign_hosts(tmp_path: Path
                                                                        ) -> None:
    """A page on another site may not resize pools (Origin, or a content type a form can
    send); a request under another host name (DNS rebinding) is refused; a negative or huge
    Content-Length is a 400/413, not a read without end. What `seda scale` sends works."""
    with SedaRun(tmp_path, SCALED.format(name="csrf"), "--listen", "127.0.0.1:0") as run:
        run.port()
        url = run.status_url()
        port = url.rsplit(":", 1)[1]
        body = b'{"stage": "web", "workers": 3}'

        def scale(*headers: str, data: bytes = body) -> bytes:
            head = "".join(f"{h}\r\n" for h in headers)
            return status_request(url, (f"POST /api/scale HTTP/1.1\r\n{head}Content-Length: "
                                        f"{len(data)}\r\n\r\n").encode() + data)

        host = f"Host: 127.0.0.1:{port}"
        assert scale(host, "Content-Type: application/json",
                     "Origin: http://evil.example").startswith(b"HTTP/1.1 403 ")
        assert scale(host, "Content-Type: text/plain").startswith(b"HTTP/1.1 415 ")
        assert scale(host).startswith(b"HTTP/1.1 415 ")
        assert scale("Host: evil.example", "Content-Type: application/json").startswith(
            b"HTTP/1.1 403 ")
        assert status_request(url, f"GET /api/status HTTP/1.1\r\nHost: rebound.example:{port}"
                                   f"\r\n\r\n".encode()).startswith(b"HTTP/1.1 403 ")
        for length, status in (("-5", b"400"), ("99999999999", b"413")):
            answer = status_request(url, f"POST /api/scale HTTP/1.1\r\n{host}\r\nContent-Type: "
                                         f"application/json\r\nContent-Length: {length}\r\n\r\n"
                                         f"{{}}".encode())
            assert answer.startswith(b"HTTP/1.1 " + status), answer
        assert run.status()["stages"]["web"]["workers"] == 1  # nothing above resized it
        done = subprocess.run([sys.executable, "-m", "seda.cli", "scale", "--url", url,
                               "web=2"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "web: 1 -> 2 workers" in done.stdout, done.stderr
        stop(run)


def test_idle_connections_to_the_status_server_hold_no_threads(tmp_path: Path) -> None:
    """3,000 idle connections to the status port: the supervisor keeps a bounded number of
    threads (one per connection before: 3,004), and a new client is still answered."""
    import psutil

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    with SedaRun(tmp_path, SCALED.format(name="idle"), "--listen", "127.0.0.1:0") as run:
        run.port()
        url = run.status_url()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        idle = []
        try:
            for _ in range(3000):
                idle.append(socket.create_connection((host, int(port)), timeout=10))
            threads = psutil.Process(run.pid).num_threads()
            assert threads < 20, threads
            with urllib.request.urlopen(f"{url}/api/status", timeout=10) as response:
                assert response.status == 200
        finally:
            for sock in idle:
                sock.close()
        stop(run)


def test_seda_top_trusts_only_private_run_directories_of_its_user(tmp_path: Path) -> None:
    """Another local user can plant seda-NAME-x in the shared temp folder; `seda top NAME`
    would send the status token to the URL found there. Only directories owned by the user,
    closed to others (0700), are trusted."""
    trap = socket.create_server(("127.0.0.1", 0))
    trap.settimeout(0.2)
    name = f"planted{os.getpid()}"
    for owner, mode in ((65534, 0o755), (os.getuid(), 0o755), (65534, 0o700)):
        planted = Path(tempfile.mkdtemp(prefix=f"seda-{name}-"))
        try:
            (planted / "status.url").write_text(
                f"http://127.0.0.1:{trap.getsockname()[1]}\n")
            (planted / "owner").write_text(f"{os.getpid()} "
                                           f"{psutil.Process().create_time()!r}\n")
            os.chown(planted, owner, -1)
            os.chmod(planted, mode)
            done = subprocess.run([sys.executable, "-m", "seda.cli", "top", "--once", name],
                                  capture_output=True, text=True, timeout=30,
                                  env={**os.environ, "SEDA_STATUS_TOKEN": "s" * 20})
            assert done.returncode != 0 and "no running graph" in done.stderr, done.stderr
            with pytest.raises(TimeoutError):
                trap.accept()  # nobody came
        finally:
            shutil.rmtree(planted)
    trap.close()


# ---------------------------------------------------------------- bad files and arguments

def cli(*args: str, cwd: Path | None = None, timeout: float = 60,
        **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seda.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), **env})


def test_a_fifo_a_device_or_a_folder_as_the_graph_file_is_one_line_and_exit_2(
        tmp_path: Path) -> None:
    fifo = _fifo(tmp_path)
    for path, why in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                      (str(tmp_path), "a directory")):
        for command in ("validate", "run", "plan", "graph"):
            done = cli(command, path, timeout=20)
            assert done.returncode == 2, (command, path, done.stderr)
            assert done.stderr == f"{path}: cannot read graph file: {why}\n"


def test_an_import_that_hangs_fails_validate_in_bounded_time(tmp_path: Path) -> None:
    (tmp_path / "hangs.py").write_text("import time\ntime.sleep(3600)\n\n\n"
                                       "def handle(x, ctx):\n    return x\n")
    (tmp_path / "g.yaml").write_text("name: h\nacceptor: {entry: s}\n"
                                     "stages: {s: {handler: 'hangs:handle'}}\n")
    for command in ("validate", "run"):
        done = cli(command, str(tmp_path / "g.yaml"), cwd=tmp_path, timeout=30,
                   SEDA_IMPORT_TIMEOUT="1")
        assert done.returncode == 2, done.stderr
        assert done.stderr == (f"{tmp_path / 'g.yaml'}:3: stages.s.handler: cannot use "
                               f"handler 'hangs:handle': importing 'hangs' did not finish in "
                               f"1 s (does it wait for something at import time?)\n")


POISON = """
name: poison
source:
  handler: stagekit:numbers
  to: [p]
  options: {n: 20}
stages:
  p:
    handler: stagekit:poison
    to: [sink]
    max_attempts: 1
    options: {bad: 3}
  sink:
    handler: stagekit:echo
    sink: true
settings:
  dead_letter: dead.jsonl
"""


def test_a_damaged_dead_letter_file_does_not_stop_later_runs(tmp_path: Path) -> None:
    """A line cut short in the dead-letter file (a full disk, a kill) made every later run
    from that folder crash with a traceback and leave its run directory behind."""
    letters = tmp_path / "dead.jsonl"
    letters.write_text('{"graph": "poison", "stage": "p", "id": 1}\n{"graph": "poi')
    with SedaRun(tmp_path, POISON) as run:
        assert run.wait(60) == 0, run.stderr
        # the one traceback is the handler's, said with its dead letter; seda's own: none
        lines = run.stderr.splitlines()
        traces = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
        assert len(traces) == 1 and "gave up on a message" in lines[traces[0] - 1], run.stderr
        assert "1 dead-lettered" in run.stderr
        assert sorted(run.results()) == [x for x in range(20) if x != 3]
        assert run.run_dirs() == []
    assert [r.get("payload") for r in deadletter.read(str(letters))] == [None, 3]


def test_a_dead_letter_folder_that_is_missing_stops_the_run_before_it_starts(
        tmp_path: Path) -> None:
    graph = POISON.replace("dead_letter: dead.jsonl", "dead_letter: gone/dead.jsonl")
    (tmp_path / "g.yaml").write_text(graph)
    for command in ("validate", "run"):
        done = cli(command, str(tmp_path / "g.yaml"), cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr == (f"{tmp_path / 'g.yaml'}:17: settings.dead_letter: dead "
                               f"letters could not be written: the folder {tmp_path / 'gone'} "
                               f"does not exist\n")


# ---------------------------------------------------------------- what held, held

SMUGGLING = [
    b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n"
    b"abcdGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\n\r\n",
]


def test_a_thousand_pipelined_requests_and_smuggling_attempts(tmp_path: Path) -> None:
    """What held in the adversarial pass keeps holding: 1,000 requests in one write are all
    answered, in order; requests that could smuggle a second request past a proxy
    (conflicting lengths, an obfuscated Transfer-Encoding) are refused with 400 and the
    connection closed -- the request hidden behind them never runs."""
    with SedaRun(tmp_path, service(), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        answers = pipelined(port, [get(f"/size?{i % 50}") for i in range(1000)], timeout=60)
        assert answers == [(200, b"y" * (i % 50)) for i in range(1000)]
        for attempt in SMUGGLING:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(attempt)
                got = b""
                while chunk := sock.recv(65536):
                    got += chunk
            assert got.startswith(b"HTTP/1.1 400 ") and got.count(b"HTTP/1.1") == 1, got
        stderr = stop(run)
        balanced(stderr)
        assert summary_counts(stderr)["requests"] == 1000
