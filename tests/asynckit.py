"""Async handlers for the runtime tests (imported by worker processes through PYTHONPATH)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

_running = _peak = 0  # calls of `wait` in this process now, and the most at once


async def wait(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Awaits `?s=SECONDS` (default 0.05), then answers its path, the worker's pid and the
    most calls this process had running at once so far."""
    global _running, _peak
    seconds = float(request["query"].partition("s=")[2] or 0.05)
    _running += 1
    _peak = max(_peak, _running)
    try:
        if request["path"] == "/block":
            time.sleep(seconds)  # a sync call inside async def: it blocks the whole loop
        await asyncio.sleep(seconds)
        if request["path"] == "/raise":
            raise ValueError("asked to fail")
    finally:
        _running -= 1
    return {"json": {"path": request["path"], "pid": os.getpid(), "peak": _peak}}


async def mark_then_wait(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Writes the worker's pid to options.mark once it holds a request, then waits."""
    Path(ctx.options["mark"]).write_text(str(os.getpid()))
    await asyncio.sleep(float(ctx.options.get("seconds", 1.0)))
    return {"json": {"path": request["path"]}}


def parse(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A sync stage in front of an async one."""
    return {"path": request["path"], "n": len(request["path"])}


async def lookup(item: dict[str, Any], ctx: Any) -> Any:
    await asyncio.sleep(0.01)
    ctx.emit("render", {**item, "found": True})
    return None


def render(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A sync stage behind an async one (in the same pool or another)."""
    return {"json": item}


class Doubler:
    """An async class handler of a pipeline: async setup, handle and teardown."""

    async def setup(self, ctx: Any) -> None:
        await asyncio.sleep(0)
        self.factor = 2

    async def handle(self, x: int, ctx: Any) -> int:
        await asyncio.sleep(0.001 * (x % 3))  # they finish out of order
        return x * self.factor


class Total:
    """An async sink: `finish` is awaited at the end of the pipeline."""

    def setup(self, ctx: Any) -> None:
        self.count = self.sum = 0

    async def handle(self, x: int, ctx: Any) -> None:
        self.count += 1
        self.sum += x

    async def finish(self, ctx: Any) -> dict[str, int]:
        return {"count": self.count, "sum": self.sum}

    @staticmethod
    def merge(values: list[dict[str, int]]) -> dict[str, int]:
        return {"count": sum(v["count"] for v in values), "sum": sum(v["sum"] for v in values)}


def numbers(options: dict[str, Any]) -> Any:
    return range(int(options.get("n", 100)))


def _query(request: dict[str, Any]) -> dict[str, str]:
    return dict(p.split("=", 1) for p in request["query"].split("&") if "=" in p)


async def ticks(request: dict[str, Any], ctx: Any) -> str:
    """A streamed reply (ctx.stream): its first part at once (with this worker's pid), then,
    once the file `?gate=PATH` exists (the test makes it when it has read the first part),
    a second part and the last. `?fail=1`: it raises instead of the second part."""
    query = _query(request)
    ctx.stream(f"first {os.getpid()}\n", status=200,
               headers={"content-type": "text/plain", "x-stream": "yes"})
    gate = Path(query["gate"])
    for _ in range(2000):  # up to 20 s
        if gate.exists():
            break
        await asyncio.sleep(0.01)
    if query.get("fail"):
        raise RuntimeError("failed after its first part")
    ctx.stream("second\n")
    return "last\n"


def sync_ticks(request: dict[str, Any], ctx: Any) -> str:
    """`ticks` as a sync handler (it blocks its worker while it waits for the gate)."""
    query = _query(request)
    ctx.stream(f"first {os.getpid()}\n", headers={"x-stream": "yes"})
    gate = Path(query["gate"])
    for _ in range(2000):
        if gate.exists():
            break
        time.sleep(0.01)
    ctx.stream(b"second\n")
    return "last\n"


def stream_early(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A stage that is not the one that replies, trying to stream."""
    ctx.stream("no")
    return request
