"""Streamed replies (ctx.stream, and ASGI apps' streamed bodies): each part reaches the
client while the handler still runs, under every model that can (mp sends it whole); a
reply that cannot be finished -- its handler fails, or its worker dies and another starts
it again -- is cut (the connection closes before the end chunk), never wrong, and costs
only itself. Real processes and raw sockets: the test sees the chunks as they come."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import pytest

from seda.engine.codec.http import HttpCodec
from seda.engine.front import Slot, cut, next_part, server_answer, unsent_parts
from seda.spec.models import Limits
from tests.runkit import SedaRun, wait_for

GRAPH = """\
name: streams
acceptor: {{listen: 127.0.0.1:0, protocol: http, entry: {entry}}}
stages:
{stages}
settings: {{dead_letter: dead.jsonl}}
"""
ASYNC = "  ticks: {handler: asynckit:ticks, workers: 1}"
SYNC = "  ticks: {handler: asynckit:sync_ticks, workers: 1}"


def codec() -> HttpCodec:
    return HttpCodec(Limits())  # type: ignore[arg-type]


def test_a_streamed_reply_is_a_chunked_head_its_parts_and_an_end_chunk() -> None:
    get, head = {"method": "GET", "keep_alive": True}, {"method": "HEAD", "keep_alive": False}
    out, close = codec().stream_head({"status": 201, "headers": {
        "X-A": "1", "transfer-encoding": "gzip"}}, get)
    assert (out, close) == (b"HTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-type: text/plain; "
                            b"charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n", False)
    assert codec().stream_part(b"hello", get) == b"5\r\nhello\r\n"
    assert codec().stream_part(b"", get) == b""  # (an empty chunk would end the body)
    assert codec().stream_end("bye", get) == b"3\r\nbye\r\n0\r\n\r\n"
    assert codec().stream_end(None, get) == b"0\r\n\r\n"
    assert codec().stream_part(b"x", head) == codec().stream_end("x", head) == b""
    assert codec().stream_head({}, head)[1] is True
    for bad in ({"status": 204}, {"status": 99}, {"headers": {"a\nb": "x"}}):
        with pytest.raises(ValueError):
            codec().stream_head(bad, get)
    with pytest.raises(ValueError):
        codec().stream_end({"not": "bytes"}, get)


def test_the_book_takes_parts_in_order_and_cuts_a_reply_it_cannot_finish() -> None:
    from collections import deque

    slot = Slot(None, {"method": "GET"})
    order = deque([slot])
    assert unsent_parts(order) == b""  # not a stream
    assert next_part(slot, 0) and not next_part(slot, 0)  # a part 0 again: a re-run
    slot.parts = [b"head", b"one"]
    assert unsent_parts(order) == b"headone" and slot.parts == [] and not slot.done
    assert next_part(slot, 1)
    slot.parts.append(b"two")
    server_answer(slot, b"HTTP/1.1 504 ...")  # too late for a status: cut
    assert (slot.out, slot.close, slot.done) == (b"two", True, True)
    other = Slot(None, {})
    other.parts = [b"x"]
    cut(other)
    assert (other.out, other.close, other.parts) == (b"x", True, [])


def request(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def read_until(sock: socket.socket, marker: bytes, got: bytes = b"") -> bytes:
    """Read until `marker` is in what came, or the peer closes (socket timeout: 20 s --
    a part that is not sent as it is made never arrives while the handler waits)."""
    while marker not in got:
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


def body_of(raw: bytes) -> bytes:
    """The body of a chunked response."""
    rest, out = raw.partition(b"\r\n\r\n")[2], b""
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, rest = out + rest[:n], rest[n + 2:]
    return out


@pytest.mark.parametrize(("model", "stage"), [
    ("seda", ASYNC), ("amped", ASYNC), ("sped", ASYNC), ("symped", ASYNC), ("seda", SYNC)],
    ids=["seda", "amped", "sped", "symped", "seda-sync"])
def test_parts_reach_the_client_while_the_handler_still_runs(
        tmp_path: Path, model: str, stage: str) -> None:
    gate = tmp_path / "gate"
    graph = GRAPH.format(entry="ticks", stages=stage)
    with SedaRun(tmp_path, graph, "--model", model) as run:
        port = run.port()
        with request(port, f"/t?gate={gate}") as sock:
            first = read_until(sock, b"first")  # the handler is waiting for the gate now
            assert b"transfer-encoding: chunked" in first and b"x-stream: yes" in first
            assert not gate.exists()
            gate.touch()
            raw = read_until(sock, b"0\r\n\r\n", first)
            pid = int(body_of(raw).split()[1])
            assert body_of(raw) == f"first {pid}\nsecond\nlast\n".encode()
            sock.sendall(b"GET /t?gate=" + str(gate).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            again = read_until(sock, b"0\r\n\r\n")  # the connection goes on
            assert body_of(again).endswith(b"second\nlast\n")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "2 responses, 0 rejected, 0 timeouts, 0 failed" in run.stderr
    assert "0 dead-lettered" in run.stderr


def test_under_mp_a_streamed_reply_goes_out_whole(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    with SedaRun(tmp_path, GRAPH.format(entry="ticks", stages=ASYNC), "--model", "mp") as run:
        with request(run.port(), f"/t?gate={gate}") as sock:
            raw = read_until(sock, b"0\r\n\r\n")
        assert b"transfer-encoding: chunked" in raw and b"x-stream: yes" in raw
        assert body_of(raw).endswith(b"\nsecond\nlast\n")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr


@pytest.mark.parametrize("model", ["seda", "sped"])
def test_a_handler_that_fails_after_its_first_part_has_its_reply_cut(
        tmp_path: Path, model: str) -> None:
    gate = tmp_path / "gate"
    with SedaRun(tmp_path, GRAPH.format(entry="ticks", stages=ASYNC), "--model", model) as run:
        port = run.port()
        with request(port, f"/t?gate={gate}&fail=1") as sock:
            first = read_until(sock, b"first")
            gate.touch()
            raw = read_until(sock, b"0\r\n\r\n", first)  # ... until the server closes
        assert b"first" in raw and b"second" not in raw and not raw.endswith(b"0\r\n\r\n")
        with request(port, f"/t?gate={gate}") as sock:  # the server goes on
            assert body_of(read_until(sock, b"0\r\n\r\n")).endswith(b"second\nlast\n")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "RuntimeError: failed after its first part" in (tmp_path / "dead.jsonl").read_text()


def test_a_worker_killed_mid_stream_cuts_that_reply_and_no_other(tmp_path: Path) -> None:
    """The request goes out again (a GET may run twice); its new run starts the reply over,
    which cannot be taken back from the client: the acceptor cuts it instead."""
    gate = tmp_path / "gate"
    with SedaRun(tmp_path, GRAPH.format(entry="ticks", stages=ASYNC), "--model", "seda") as run:
        port = run.port()
        with request(port, f"/t?gate={gate}") as sock:
            first = read_until(sock, b"first")
            while not re.search(rb"first \d+\n", first):
                first += sock.recv(65536)
            pid = int(re.search(rb"first (\d+)\n", first).group(1))  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
            raw = read_until(sock, b"0\r\n\r\n", first)  # ... until the acceptor closes
        assert not raw.endswith(b"0\r\n\r\n") and raw.count(b"first") == 1
        gate.touch()
        with request(port, f"/t?gate={gate}") as sock:  # a fresh worker serves the next
            raw = read_until(sock, b"0\r\n\r\n")
            assert int(body_of(raw).split()[1]) != pid
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "killed by SIGKILL; restarting" in run.stderr


def test_only_the_stage_that_replies_may_stream(tmp_path: Path) -> None:
    stages = ("  early: {handler: asynckit:stream_early, to: [ticks]}\n" + ASYNC)
    with SedaRun(tmp_path, GRAPH.format(entry="early", stages=stages), "--model", "amped") \
            as run:
        with request(run.port(), "/t?gate=x") as sock:
            assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 500")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    wait_for(lambda: (tmp_path / "dead.jsonl").exists(), 10, "the dead letter")
    assert "stage 'early' cannot stream: only the stage whose value is the reply" in \
        (tmp_path / "dead.jsonl").read_text()

