"""Handlers for the runtime tests (imported by worker processes through PYTHONPATH)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any


def numbers(options: dict[str, Any]) -> Iterator[int]:
    """0..n-1; `pause_after`/`pause` sleep once after that item (first waiting up to 30 s
    for the file `after_file`, if given, to exist); `gap` sleeps between items."""
    for i in range(int(options.get("n", 100))):
        yield i
        if i == options.get("pause_after"):
            if options.get("after_file"):
                deadline = time.monotonic() + 30
                while not os.path.exists(options["after_file"]) and time.monotonic() < deadline:
                    time.sleep(0.005)
            time.sleep(float(options.get("pause", 0.0)))
        if options.get("gap"):
            time.sleep(float(options["gap"]))


def forever(options: dict[str, Any]) -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1
        time.sleep(float(options.get("gap", 0.001)))


def double(x: int, ctx: Any) -> int:
    return x * 2


def timed(x: int, ctx: Any) -> dict[str, Any]:
    """Item `long` takes `seconds` (and creates the file `mark`, if given, when it starts);
    every item reports who ran it and when."""
    start = time.time()
    if x == ctx.options.get("long"):
        if ctx.options.get("mark"):
            open(ctx.options["mark"], "w").close()
        time.sleep(float(ctx.options.get("seconds", 2.0)))
    return {"x": x, "pid": os.getpid(), "start": start, "end": time.time()}


def poison(x: int, ctx: Any) -> int:
    if x == ctx.options.get("bad"):
        raise ValueError(f"cannot digest {x}")
    return x


def crash(x: int, ctx: Any) -> int:
    if x == ctx.options.get("bad", x):
        os._exit(17)
    return x


def echo(x: Any, ctx: Any) -> Any:
    return x


class Collect:
    """Sink: count, sum and (optionally) the items; `delay` seconds per item."""

    def setup(self, ctx: Any) -> None:
        self.count = self.total = 0

    def handle(self, x: int, ctx: Any) -> None:
        delay = ctx.options.get("delay")
        if delay:
            time.sleep(float(delay))
        self.count += 1
        self.total += x

    def finish(self, ctx: Any) -> dict[str, int]:
        return {"count": self.count, "sum": self.total}

    @staticmethod
    def merge(parts: list[dict[str, int]]) -> dict[str, int]:
        return {"count": sum(p["count"] for p in parts), "sum": sum(p["sum"] for p in parts)}


class Slow:
    """Sink that sleeps `delay` every `every` items (a slow consumer)."""

    def setup(self, ctx: Any) -> None:
        self.count = 0

    def handle(self, x: int, ctx: Any) -> None:
        self.count += 1
        if self.count % int(ctx.options.get("every", 100)) == 0:
            time.sleep(float(ctx.options.get("delay", 0.001)))

    def finish(self, ctx: Any) -> dict[str, int]:
        return {"count": self.count}


def web(request: dict[str, Any], ctx: Any) -> Any:
    """HTTP test stage: /slow sleeps, /echo returns the body, /sleep?s=N sleeps N seconds,
    /boom raises, /crash kills its worker, /file?PATH answers with that file."""
    path = request["path"]
    if path == "/slow":
        time.sleep(float(ctx.options.get("slow", 0.3)))
        return "slow"
    if path == "/sleep":
        time.sleep(float(request["query"].partition("=")[2] or 1))
        return "slept"
    if path == "/echo":
        return {"status": 200, "body": request["body"],
                "headers": {"x-length": str(len(request["body"]))}}
    if path == "/pid":
        return str(os.getpid())
    if path == "/boom":
        raise ValueError("boom")
    if path == "/crash":  # a poison request: it kills the worker that runs it
        os._exit(17)
    if path == "/file":  # the file named by the query, streamed by the acceptor
        return {"file": request["query"], "headers": {"content-type": "application/x-test"}}
    return f"{request['method']} {path}"


def busy(request: dict[str, Any], ctx: Any) -> str:
    """HTTP test stage: sleeps `s` seconds (an option) on any path, then answers it."""
    time.sleep(float(ctx.options.get("s", 0.01)))
    return str(request["path"])


def forward(request: dict[str, Any], ctx: Any) -> str:
    """HTTP front stage: pass the path on (the next stage answers)."""
    return str(request["path"])


def slow_ok(path: str, ctx: Any) -> str:
    """Sleep `options.slow` seconds (default 0.02), then answer 'ok'."""
    time.sleep(float(ctx.options.get("slow", 0.02)))
    return "ok"


def slow_double(x: int, ctx: Any) -> int:
    """Double, after 20 ms (a stage slow enough to need more workers)."""
    time.sleep(0.02)
    return x * 2


def query(request: dict[str, Any], ctx: Any) -> str:
    """HTTP front stage: pass the query string on (the next stage answers with it)."""
    return str(request["query"])


def slow_echo(text: str, ctx: Any) -> str:
    """Sleep `options.slow` seconds, then answer with what came in."""
    time.sleep(float(ctx.options.get("slow", 0.0)))
    return text


def padded(options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """n items {"i": i, "pad": "x" * size}; the items listed in `big` are `big_size` long."""
    for i in range(int(options.get("n", 100))):
        size = options["big_size"] if i in options.get("big", []) else options["size"]
        yield {"i": i, "pad": "x" * int(size)}


def grow(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Pass an item on; the ones listed in `grow` get a pad of `to` characters."""
    if item["i"] in ctx.options.get("grow", []):
        item["pad"] = "x" * int(ctx.options["to"])
    return item


class Tally:
    """Sink: how many items came and the sum of their `i`; `merge` joins the workers'."""

    def setup(self, ctx: Any) -> None:
        self.count = self.total = 0

    def handle(self, item: dict[str, Any], ctx: Any) -> None:
        self.count += 1
        self.total += item["i"]

    def finish(self, ctx: Any) -> dict[str, int]:
        return {"count": self.count, "sum": self.total}

    @staticmethod
    def merge(parts: list[dict[str, int]]) -> dict[str, int]:
        return {"count": sum(p["count"] for p in parts), "sum": sum(p["sum"] for p in parts)}


def as_told(request: dict[str, Any], ctx: Any) -> Any:
    """HTTP test stage: POST /reply answers with the msgpack value in the body, exactly as
    it is (any shape a handler could return); /size?N answers N bytes; anything else is
    answered 'plain'."""
    import msgpack

    if request["path"] == "/reply":
        return msgpack.unpackb(request["body"], raw=False, strict_map_key=False)
    if request["path"] == "/size":
        return "y" * int(request["query"])
    return "plain"


def stuck(request: dict[str, Any], ctx: Any) -> str:
    """HTTP test stage: /hang never returns (sleeps an hour), /redos never returns while
    holding the GIL (a catastrophic regular expression), /sleep?S sleeps S seconds; the pid
    of the worker that answers anything else."""
    import re

    path = request["path"]
    if path == "/hang":
        time.sleep(3600)
    if path == "/redos":
        re.match(r"(a+)+$", "a" * 64 + "b")
    if path == "/sleep":
        time.sleep(float(request["query"]))
    return str(os.getpid())


class Leak:
    """HTTP test stage that keeps `kb` KiB of every request's answer forever (a leak); it
    answers with its pid and how many MiB it holds."""

    def setup(self, ctx: Any) -> None:
        self.kept: list[bytes] = []

    def handle(self, request: dict[str, Any], ctx: Any) -> str:
        self.kept.append(os.urandom(int(ctx.options.get("kb", 1024)) << 10))
        return f"{os.getpid()} {len(self.kept) * int(ctx.options.get('kb', 1024)) >> 10}"


def hold(x: int, ctx: Any) -> int:
    """Double; item `hold`, the first time it runs, writes this worker's pid to the file
    `mark`, then takes `seconds` (so a test knows which worker holds it, and kills that one);
    run again, it is as quick as the others."""
    if x == ctx.options.get("hold") and not os.path.exists(ctx.options["mark"]):
        with open(ctx.options["mark"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(float(ctx.options.get("seconds", 5.0)))
    return x * 2


def charge(request: dict[str, Any], ctx: Any) -> str:
    """Counts its runs of each request in files under options['dir'] (a side effect a re-run
    would repeat): /fail* raises on its first run, /die* kills its worker on its first run."""
    from pathlib import Path

    mark = Path(ctx.options["dir"]) / (request["method"] + request["path"].replace("/", "_"))
    runs = int(mark.read_text()) + 1 if mark.exists() else 1
    mark.write_text(str(runs))
    if runs == 1 and request["path"].startswith("/fail"):
        raise ValueError("a first run fails")
    if runs == 1 and request["path"].startswith("/die"):
        os._exit(9)
    return f"{request['method']} {request['path']} run {runs}"


def chatty(x: int, ctx: Any) -> int:
    """A handler that prints, as handlers do: it must not land among a pipeline's results."""
    print(f"noise from the handler {x}")
    return x


def logged(request: dict[str, Any], ctx: Any) -> str:
    """Logs through ctx.log: each request at info, /warn at warning too."""
    ctx.log.info("handled %s", request["path"])
    if request["path"] == "/warn":
        ctx.log.warning("careful with %s", request["path"])
    return "ok"


HEAVY = ("pydantic", "networkx", "yaml")  # what a child must not import (seda.engine.config)


def heavy_modules() -> list[str]:
    import sys

    return [m for m in HEAVY if m in sys.modules]


def modules_source(options: dict[str, Any]) -> Iterator[list[str]]:
    """One item: the heavy modules loaded in the source process."""
    yield heavy_modules()


def modules_web(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """HTTP: the heavy modules loaded in the process that runs the handler."""
    return {"json": {"pid": os.getpid(), "modules": heavy_modules()}}


class Modules:
    """Sink: what the source saw, and what this worker sees."""

    def setup(self, ctx: Any) -> None:
        self.source: list[str] = []

    def handle(self, item: list[str], ctx: Any) -> None:
        self.source = item

    def finish(self, ctx: Any) -> dict[str, list[str]]:
        return {"source": self.source, "worker": heavy_modules()}
