"""seda's own HTTP load generator, closed-loop or open-loop, for `seda bench`.

Run as its own process (`python -m seda.bench.loadgen URL ...`, JSON on stdout) so its CPU time can
be measured apart from the server's. One asyncio loop (uvloop when installed), responses
parsed with httptools.

- closed loop (default): each of C connections sends a request, waits for the response,
  sends the next: the offered load follows the server (what wrk does);
- open loop (`--rate R`): requests are due at fixed times (R per second in all) and go out
  on the C connections in turn, pipelined, whether or not earlier ones were answered; a
  latency is measured from the time the request was due, so a stalled server is charged for
  every request it delayed (no coordinated omission).

Only requests due (open) or sent (closed) after the warm-up and before the end are counted.
Closed loop: those answered before the end. Open loop: every request due in the window is
followed to its answer, if need be after the end (no new ones are sent then), for up to
--timeout -- so a slow server's last answers are not cut off the count. Errors: connect
(refused or timed out), reset (closed with requests outstanding), timeout (no response
within --timeout; the connection is closed and opened again), and responses with a status
>= 400 are counted apart (`non_2xx`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools

clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds


@dataclass
class LoadResult:
    requests: int = 0
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, counted requests
    ok_latencies: list[float] = field(default_factory=list)  # seconds, the 2xx ones
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    non_2xx: int = 0
    cpu_user: float = 0.0  # the generator's own CPU seconds
    cpu_system: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat, ok = sorted(self.latencies), sorted(self.ok_latencies)

        def pct(q: float, values: list[float] = lat) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3) \
                if values else 0.0

        return {"requests": self.requests, "duration": round(self.duration, 3),
                "rps": round(self.requests / self.duration, 1) if self.duration else 0.0,
                "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
                "goodput": round(len(ok) / self.duration, 1) if self.duration else 0.0,
                "ok_p50_ms": pct(0.5, ok), "ok_p90_ms": pct(0.9, ok), "ok_p99_ms": pct(0.99, ok),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "max_ms": round(lat[-1] * 1000, 3) if lat else 0.0,
                "errors": sum(self.errors.values()), "error_kinds": dict(self.errors),
                "non_2xx": self.non_2xx, "loadgen_cpu": round(self.cpu_user + self.cpu_system,
                                                              3)}


class _Conn(asyncio.Protocol):
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.sent: deque[float] = deque()  # due/sent times of the requests awaiting replies
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.result.errors["protocol"] += 1
            self.close()

    def on_message_complete(self) -> None:
        started = self.sent.popleft()
        self.gen.answered(self, started, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.sent:
            self.gen.result.errors["reset"] += 1
            self.sent.clear()
        self.gen.lost(self)

    def send(self, started: float) -> None:
        assert self.transport is not None
        self.sent.append(started)
        self.transport.write(self.gen.request)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Generator:
    def __init__(self, url: str, connections: int, duration: float, warmup: float,
                 rate: float | None, timeout: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.request = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                        f"User-Agent: seda-loadgen\r\n\r\n").encode()
        self.connections, self.duration, self.warmup = connections, duration, warmup
        self.rate, self.timeout = rate, timeout
        self.result = LoadResult()
        self.conns: list[_Conn] = []
        self.reconnects: set[asyncio.Future[None]] = set()
        self.begin = self.end = 0.0  # the measured window

    async def run(self) -> LoadResult:
        loop = asyncio.get_running_loop()
        self.loop = loop
        now = clock()
        self.begin = now + self.warmup
        self.end = self.begin + self.duration
        await asyncio.gather(*(self.connect() for _ in range(self.connections)))
        workers = [asyncio.ensure_future(self.watch())]
        if self.rate:
            workers.append(asyncio.ensure_future(self.schedule()))
        await asyncio.sleep(max(0.0, self.end - clock()))
        for worker in workers[1:]:
            worker.cancel()  # nothing is due after the end
        if self.rate:  # open loop: follow what was due in the window to its answer
            tail = self.end + self.timeout
            while clock() < tail and any(conn.sent for conn in self.conns):
                await asyncio.sleep(0.01)
        workers[0].cancel()
        for conn in self.conns:
            conn.sent.clear()  # what is unanswered at the end is not counted
            conn.close()
        self.result.duration = self.duration
        return self.result

    async def connect(self) -> None:
        """Open one connection (again, after a failure, while time is left)."""
        while clock() < self.end:
            conn = _Conn(self)
            try:
                await asyncio.wait_for(self.loop.create_connection(
                    lambda c=conn: c, self.host, self.port), self.timeout)  # type: ignore[misc]
            except (OSError, asyncio.TimeoutError):
                self.result.errors["connect"] += 1
                await asyncio.sleep(0.05)
                continue
            self.conns.append(conn)
            if not self.rate:
                conn.send(clock())
            return

    def answered(self, conn: _Conn, started: float, status: int) -> None:
        now = clock()
        if self.begin <= started < self.end and (now <= self.end or self.rate):
            self.result.requests += 1
            self.result.latencies.append(now - started)
            self.result.statuses[status] += 1
            if status >= 400:
                self.result.non_2xx += 1
            elif status >= 200:
                self.result.ok_latencies.append(now - started)
        if not self.rate and now < self.end:
            conn.send(now)

    def lost(self, conn: _Conn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
            if clock() < self.end:
                self.reconnects.add(task := asyncio.ensure_future(self.connect()))
                task.add_done_callback(self.reconnects.discard)

    async def watch(self) -> None:
        """Close connections whose oldest request has waited longer than the timeout."""
        while True:
            await asyncio.sleep(min(0.1, self.timeout / 4))
            limit = clock() - self.timeout
            for conn in list(self.conns):
                if conn.sent and conn.sent[0] < limit:
                    self.result.errors["timeout"] += len(conn.sent)
                    conn.sent.clear()
                    conn.close()

    async def schedule(self) -> None:
        """Open loop: send every request at its due time, on the connections in turn."""
        assert self.rate
        start, issued, turn = clock(), 0, 0
        while True:
            due = int((clock() - start) * self.rate)
            while issued < due:
                when = start + issued / self.rate
                issued += 1
                if not self.conns:
                    if when >= self.begin:
                        self.result.errors["no_connection"] += 1
                    continue
                turn = (turn + 1) % len(self.conns)
                self.conns[turn].send(when)
            await asyncio.sleep(0.001)


def run(url: str, connections: int, duration: float, warmup: float = 0.0,
        rate: float | None = None, timeout: float = 5.0) -> LoadResult:
    """Drive `url` and return the figures (in this process: its CPU is counted)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    gen = Generator(url, connections, duration, warmup, rate, timeout)
    try:
        import uvloop

        result = uvloop.run(gen.run())
    except ImportError:
        result = asyncio.run(gen.run())
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_user = after.ru_utime - before.ru_utime
    result.cpu_system = after.ru_stime - before.ru_stime
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seda.bench.loadgen",
                                     description="HTTP load, closed or open loop; JSON out.")
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-w", "--warmup", type=float, default=0.0)
    parser.add_argument("-r", "--rate", type=float, default=None,
                        help="open loop: requests per second in all (default: closed loop)")
    parser.add_argument("-t", "--timeout", type=float, default=5.0)
    parser.add_argument("--latencies", action="store_true", help="include every latency")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.connections + 64, hard))
    result = run(args.url, args.connections, args.duration, args.warmup, args.rate,
                 args.timeout)
    out = result.summary()
    if args.latencies:
        out["latencies"] = asdict(result)["latencies"]
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
