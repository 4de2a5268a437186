"""Slow clients with real sockets: a thousand slowloris connections and a client that sends
without reading do not starve anyone else, and cost the acceptor bounded memory."""

from __future__ import annotations

import contextlib
import http.client
import resource
import selectors
import signal
import socket
import time
from pathlib import Path

from tests.runkit import SedaRun, SteadyClient
from tests.test_run_service import WEB

SLOW = 1000
HEADER_TIMEOUT = 2.0


def graph(conns: int) -> str:
    return WEB.format(workers=2, timeout=10, conns=conns, queue=1000).replace(
        "header_timeout: 0.5", f"header_timeout: {HEADER_TIMEOUT}")


def test_a_thousand_slowloris_clients_do_not_starve_the_others(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * SLOW)), hard))
    with SedaRun(tmp_path, graph(conns=SLOW + 100), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        steady = SteadyClient(port)
        steady.start()
        selector = selectors.DefaultSelector()
        opened: dict[socket.socket, float] = {}
        for i in range(SLOW):  # each starts a request and never finishes its headers
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"GET /loris/{i} HTTP/1.1\r\nHost: x\r\n".encode())
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
            opened[s] = time.monotonic()
        answered: dict[socket.socket, bytes] = {}
        drips = dict.fromkeys(opened, 0.0)
        lasted: list[float] = []
        deadline = time.monotonic() + HEADER_TIMEOUT + 20
        while len(lasted) < SLOW and time.monotonic() < deadline:
            now = time.monotonic()
            for s, due in drips.items():  # a header line every half second: too slow still
                if due <= now and s not in answered:
                    drips[s] = now + 0.5
                    with contextlib.suppress(OSError):
                        s.send(b"X-Drip: 1\r\n")
            for key, _ in selector.select(timeout=0.2):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                answered[s] = answered.get(s, b"") + data
                if not data:  # closed by the server
                    lasted.append(time.monotonic() - opened[s])
                    selector.unregister(s)
                    s.close()
        steady.stop.set()
        steady.join(timeout=15)
        for s in opened:
            s.close()
        selector.close()
        assert len(lasted) == SLOW, f"only {len(lasted)} slow connections were closed"
        assert all(v.startswith(b"HTTP/1.1 408 ") for v in answered.values())
        # closed once their headers were HEADER_TIMEOUT old (the sweep runs every ~0.5 s)
        assert min(lasted) >= HEADER_TIMEOUT - 0.1 and max(lasted) < HEADER_TIMEOUT + 5, \
            (min(lasted), max(lasted))
        assert steady.failures == [], steady.failures[:5]
        assert len(steady.latencies) > 50  # served all along, not once the lorises were gone
        print(f"\n{SLOW} slowloris connections closed after {min(lasted):.2f}-"
              f"{max(lasted):.2f} s; a steady client meanwhile: {len(steady.latencies)} "
              f"requests, slowest {max(steady.latencies) * 1000:.0f} ms")
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr


def test_a_client_that_never_reads_costs_bounded_memory(tmp_path: Path) -> None:
    body = b"x" * 8192
    request = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8192\r\n\r\n" + body)
    with SedaRun(tmp_path, graph(conns=100).replace("max_request_bytes: 4096",
                                                    "max_request_bytes: 16384"),
                 "--listen", "127.0.0.1:0") as run:
        port = run.port()
        [acceptor] = run.workers("seda: acceptor")
        before = acceptor.memory_info().rss
        hog = socket.create_connection(("127.0.0.1", port))
        hog.settimeout(0.2)
        sent = 0
        until = time.monotonic() + 8
        while time.monotonic() < until:  # 8 s of pipelined echoes, never reading one
            with contextlib.suppress(TimeoutError):  # the server stopped reading: its
                sent += hog.send(request * 16)  # answers are not being taken
        grown = acceptor.memory_info().rss - before
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        other.request("GET", "/other")
        answer = other.getresponse()
        assert (answer.status, answer.read()) == (200, b"GET /other")
        other.close()
        hog.close()
        print(f"\nsent {sent / 1e6:.1f} MB of requests without reading; the acceptor grew "
              f"{grown / 1e6:.1f} MB")
        assert sent > 2e6  # the test did push: several MB went in before the server stopped
        assert grown < 32e6, grown
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr
