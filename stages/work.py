"""Workloads that make the server models' trade-offs visible (graphs/work.yaml, `seda bench`).

The path picks the work, so one graph serves every workload:
  /hello   nothing: short uniform work (the cost of the model itself shows)
  /cpu     1 ms of CPU per request (a loop calibrated at start-up, so the same work
           whatever the machine's load; no clock is read while spinning)
  /mixed   non-uniform: 1 request in 100 takes 50 ms of CPU, the others nothing
  /io      5 ms waiting on a blocking call (a database, a disk), no CPU
Stage options change the figures (`cpu_ms`, `slow_ms`, `slow_every`, `io_ms`).
"""

from __future__ import annotations

import time
from typing import Any

WORKLOADS = ("hello", "cpu", "mixed", "io")


def _loop(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def _calibrate() -> float:
    """Loop iterations per millisecond of CPU on this machine (the median of three tries)."""
    rates = []
    for _ in range(3):
        start = time.thread_time()
        _loop(100_000)
        used = time.thread_time() - start
        rates.append(100_000 / max(used * 1000, 1e-6))
    return sorted(rates)[1]


_PER_MS = 0.0


def spin(ms: float) -> None:
    """Use about `ms` milliseconds of CPU (pure computation, calibrated once per process)."""
    global _PER_MS
    if not _PER_MS:
        _PER_MS = _calibrate()
    _loop(int(ms * _PER_MS))


def route(request: dict[str, Any], ctx: Any) -> str | None:
    """The front stage: read the request and name the work for the `work` stage (an unknown
    path is answered 404 here)."""
    name = request["path"].strip("/") or "hello"
    if name in WORKLOADS:
        return name
    ctx.reply({"status": 404, "body": f"no workload {name!r}; try /{', /'.join(WORKLOADS)}\n"})
    return None


class Work:
    """The work stage: does what the workload asks and replies."""

    def setup(self, ctx: Any) -> None:
        options = ctx.options
        self.cpu_ms = float(options.get("cpu_ms", 1.0))
        self.slow_ms = float(options.get("slow_ms", 50.0))
        self.slow_every = int(options.get("slow_every", 100))
        self.io_ms = float(options.get("io_ms", 5.0))
        self.count = 0
        spin(0)  # calibrate now, not on the first request

    def handle(self, name: str, ctx: Any) -> dict[str, Any]:
        self.count += 1
        if name == "cpu":
            spin(self.cpu_ms)
        elif name == "mixed" and self.count % self.slow_every == 0:
            spin(self.slow_ms)
        elif name == "io":
            time.sleep(self.io_ms / 1000)
        return {"status": 200, "headers": {"content-type": "text/plain"}, "body": f"{name}\n"}
