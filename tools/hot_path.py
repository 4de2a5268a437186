"""Per-message Python cost of seda's hot paths, in-process (no sockets, no other processes).

    python tools/hot_path.py                    # this tree: both paths
    python tools/hot_path.py --base REV [--runs 6]
                                                # REV and this tree, interleaved run by run
    python tools/hot_path.py --parts             # the worker path, part by part

  worker    the middle stage of tools/bench_pipeline.py's chain (`double`): DATA frames of 64
            messages in, its DATA frames out, the sink's receipts back in
  worker-floor  not seda: the least a batch-native worker (the runtime issue's first item)
            would do for the same frames -- a frame [stage, header, payloads] unpacked and
            checked once, the handler called once a payload, the results packed under one
            header, one receipt a frame: what is left when no per-message bookkeeping is
  acceptor  graphs/hello.yaml's acceptor under AMPED: HTTP requests fed to 64 connections,
            its DATA frames out, the worker's RESULT frames (a reply each) back in, replies
            written to stub transports
  inline-async  graphs/webapp.yaml (a Starlette app) under SPED: requests fed to 64
            connections, the app run inline as a task per request on uvloop, replies written
            to stub transports; with two baselines on the same request: asgi-app (the app
            alone, called directly) and asgi-uvicorn (uvicorn's httptools protocol serving
            it to 64 stub transports)
Only the process's own Python is measured: zmq sends are stubbed, and the frames that come
in are made beforehand (the worker's) or between the timed parts (the acceptor's). It leaves
out what a real run adds (zmq, the event loop, system calls, other processes on the same
cores), which tools/compare_revisions.py and tools/cost_per_request.py measure end to end.
This machine's speed drifts by 20% and more, at times between two levels: --base alternates
the two trees, one process per measurement, and prints the median and the best of each;
believe a difference only when both agree.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def _recorder(sent: list[tuple[bytes, bytes]]) -> Callable[[str, bytes, bytes], bool]:
    """A stand-in for Node.send: keeps (kind, body) and says the frame went."""
    def send(_peer: str, kind: bytes, body: bytes) -> bool:
        sent.append((kind, body))
        return True
    return send


def worker_path(messages: int = 200_000, reps: int = 3,
                parts: dict[str, float] | None = None) -> float:
    """us per message in the chain's middle worker (best of reps); `parts`, if given, is
    filled with the best rep's us per message of each part: the DATA frame taken in
    (decoded, checked, its receipt queued), the frame run (the stage core, its outputs
    handed to the dispatcher, the receipt sent), the output frames encoded and sent, the
    sink's receipts taken in."""
    import bench_pipeline

    from seda.engine.wire import ACK, DATA, encode_data, pack, unpack_data
    from seda.handler import resolve
    from seda.plan.deployment import make_plan
    from seda.runtime.worker import Worker
    from seda.spec.loader import load_text

    spec, _ = load_text(bench_pipeline.CHAIN.format(n=10, tune=bench_pipeline.TUNED))
    with tempfile.TemporaryDirectory() as run_dir:
        worker = Worker(make_plan(spec, run_dir), "double.0", os.getpid(), resolve)
        sent: list[tuple[bytes, bytes]] = []
        worker.send = _recorder(sent)  # type: ignore[method-assign,assignment]
        worker.dispatchers["sink"].grant("sink.0", 512, 1)
        frames = []
        for start in range(0, messages, 64):
            envs = [[i + 1, "source", 1, 0.0, bench_pipeline.item(i), i + 1,
                     0 if i % 8 else time.time_ns()] for i in range(start, start + 64)]
            frames.append([b"source", DATA, encode_data("double", envs, 0, (1 << 41) + start)])
        best = float("inf")
        clock = time.perf_counter
        for _ in range(reps):
            took = {"in": 0.0, "run": 0.0, "out": 0.0, "receipts": 0.0}
            for frame in frames:
                began = clock()
                worker.take(frame)
                taken = clock()
                worker.flush()
                worker.step()
                ran = clock()
                worker.flush()
                took["in"] += taken - began
                took["run"] += ran - taken
                took["out"] += clock() - ran
                outputs = [unpack_data(body, 1 << 30)[3] for kind, body in sent if kind == DATA]
                sent.clear()
                receipt = [b"sink.0", ACK, pack([outputs, outputs, []])]
                began = clock()
                worker.take(receipt)
                took["receipts"] += clock() - began
            per = {k: v / len(frames) / 64 * 1e6 for k, v in took.items()}
            if sum(per.values()) < best:
                best = sum(per.values())
                if parts is not None:
                    parts.update(per)
        worker.close()
    return best


def worker_floor_path(messages: int = 200_000, reps: int = 3) -> float:
    """us per message of the batch-native floor for worker_path's frames (best of reps)."""
    import bench_pipeline
    import msgpack

    handler, ctx = bench_pipeline.double, object()
    frames = [msgpack.packb(["double", [start, "source", 1, 0.0, time.time_ns()],
                             [bench_pipeline.item(i) for i in range(start, start + 64)]])
              for start in range(0, messages, 64)]
    sent: list[bytes] = []
    best = float("inf")
    for _ in range(reps):
        began = time.perf_counter()
        for body in frames:
            stage, header, payloads = msgpack.unpackb(body)
            if type(stage) is not str or type(header) is not list or len(header) != 5 or \
                    type(payloads) is not list:
                raise ValueError("malformed frame")
            out: list[Any] = []
            append = out.append
            for payload in payloads:
                try:
                    value = handler(payload, ctx)
                except Exception:  # (failed by index, in a real one)
                    continue
                if value is not None:
                    append(value)
            sent.append(msgpack.packb(["sink", header, out]))
            sent.append(msgpack.packb([header[0]]))  # the receipt: one a batch
        best = min(best, (time.perf_counter() - began) / len(frames) / 64 * 1e6)
        sent.clear()
    return best


def _stub_transport() -> type:
    """A transport class that counts the writes (in `written`) and does nothing else."""
    class Transport:
        written = 0

        def write(self, data: bytes) -> None:
            Transport.written += 1

        def get_extra_info(self, _key: str, default: Any = None) -> Any:
            return {"sockname": ("127.0.0.1", 8082),
                    "peername": ("127.0.0.1", 5555)}.get(_key, default)

        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def close(self) -> None:
            pass

    return Transport


def _connections(acceptor: Any, transport: type, n: int) -> list[Any]:
    """`n` connections of `acceptor`, each on a stub transport (no socket)."""
    from seda.runtime.acceptor import Connection

    conns = []
    for _ in range(n):
        conn = Connection(acceptor)
        conn.transport = transport()
        acceptor.conns.add(conn)
        conns.append(conn)
    return conns


def acceptor_path(requests: int = 25_600, reps: int = 5) -> float:
    """us per request in graphs/hello.yaml's acceptor under AMPED (best of reps)."""
    from seda.engine.wire import DATA, RESULT, pack, unpack_data
    from seda.handler import resolve
    from seda.plan.deployment import make_plan
    from seda.runtime.acceptor import Acceptor
    from seda.spec.loader import load_file

    Transport = _stub_transport()

    class Loop:
        def call_soon(self, *_args: Any) -> None:
            pass

    spec, _ = load_file(ROOT / "graphs" / "hello.yaml")
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    reply = {"status": 200, "headers": {"content-type": "text/plain"},
             "body": "hello, world\n"}
    with tempfile.TemporaryDirectory() as run_dir, socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        plan = make_plan(spec, run_dir, workers={"hello": 1})
        acceptor = Acceptor(plan, "acceptor.0", os.getpid(), listening.fileno(), resolve)
        acceptor.listen_sock.detach()  # the with-block closes the socket
        sent: list[tuple[bytes, bytes]] = []
        acceptor.send = _recorder(sent)  # type: ignore[method-assign,assignment]
        acceptor.dispatchers["hello"].grant("hello.0", 64, 1)
        acceptor.loop = Loop()  # type: ignore[assignment]
        conns = _connections(acceptor, Transport, 64)
        best = float("inf")
        for _ in range(reps):
            spent = 0.0
            for turn in range(requests // 16):  # 16 connections' requests per loop turn
                first = turn * 16 % 64
                began = time.perf_counter()
                for conn in conns[first:first + 16]:
                    conn.data_received(request)
                acceptor.flush()
                spent += time.perf_counter() - began
                frames = [unpack_data(body, 1 << 30) for kind, body in sent if kind == DATA]
                rows = [[msg_id, reply, request] for frame in frames
                        for msg_id, request in zip(frame[1].ids, frame[1].requests,
                                                           strict=True)]
                sent.clear()
                answer = [b"hello.0", RESULT, pack([0, [], rows, [f[3] for f in frames]])]
                began = time.perf_counter()
                acceptor.take(answer)
                acceptor.flush()
                spent += time.perf_counter() - began
            acceptor.book.deadlines.clear()
            best = min(best, spent / requests * 1e6)
        if Transport.written != requests * reps:
            raise RuntimeError(f"{Transport.written} replies written for {requests * reps}")
        acceptor.inbox.close(linger=0)
        acceptor.outbox.close(linger=0)
    return best


def inline_async_path(requests: int = 12_800, reps: int = 5) -> float:
    """us per request in graphs/webapp.yaml's acceptor under SPED: the Starlette app runs
    inline, a task per request on a real event loop (uvloop), replies to stub transports."""
    import asyncio

    from seda.handler import resolve
    from seda.plan.deployment import make_plan
    from seda.runtime.acceptor import Acceptor
    from seda.runtime.aio import Cutoffs, new_loop
    from seda.spec.loader import load_file

    Transport = _stub_transport()

    graph = ROOT / "graphs" / "webapp.yaml"
    spec, _ = load_file(graph)
    request = b"GET /items/7?q=x HTTP/1.1\r\nHost: 127.0.0.1:8082\r\n\r\n"
    sys.path.insert(0, str(ROOT))  # (the graph's `path:`; stages/ is beside graphs/)
    loop = new_loop()
    asyncio.set_event_loop(loop)
    with tempfile.TemporaryDirectory() as run_dir, socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        plan = make_plan(spec, run_dir, model="sped", base_dir=str(graph.parent))
        acceptor = Acceptor(plan, "acceptor.0", os.getpid(), listening.fileno(), resolve)
        acceptor.listen_sock.detach()
        acceptor.loop = loop
        acceptor.cutoffs = Cutoffs(loop)  # (what Acceptor.main sets up)
        assert acceptor.core is not None
        loop.run_until_complete(acceptor.core.setup_async())
        conns = _connections(acceptor, Transport, 64)

        async def settle() -> None:
            while acceptor.tasks or acceptor.entry_queue:
                await asyncio.sleep(0)

        best = float("inf")
        for _ in range(reps):
            began = time.perf_counter()
            for _ in range(requests // 64):  # every connection sends, then all answered
                for conn in conns:
                    conn.data_received(request)
                acceptor.flush()
                loop.run_until_complete(settle())
            best = min(best, (time.perf_counter() - began) / requests * 1e6)
            acceptor.book.deadlines.clear()
        if Transport.written != requests * reps:
            raise RuntimeError(f"{Transport.written} replies written for {requests * reps}")
        loop.run_until_complete(acceptor.core.teardown_async())
        acceptor.inbox.close(linger=0)
        acceptor.outbox.close(linger=0)
    loop.close()
    return best


_CATALOG = {i: f"item {i}" for i in range(100)}  # what the app's lifespan makes


def _webapp_request_scope() -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/items/7",
            "raw_path": b"/items/7", "query_string": b"q=x", "root_path": "",
            "client": ["127.0.0.1", 5555], "server": None,
            "state": {"catalog": _CATALOG},
            "headers": [(b"host", b"127.0.0.1:8082")]}


def on_new_loop(coro: Any) -> float:
    """Run `coro` on a fresh event loop (uvloop where installed), then close the loop."""
    from seda.runtime.aio import new_loop

    loop = new_loop()
    try:
        return float(loop.run_until_complete(coro))
    finally:
        loop.close()


def asgi_app_path(requests: int = 12_800, reps: int = 5) -> float:
    """Baseline: us per request of the Starlette app alone (stages/webapp.py, the same
    request as inline-async), called directly on a uvloop loop: what no server can save."""


    sys.path.insert(0, str(ROOT))
    from stages.webapp import app

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict[str, Any]) -> None:
        pass

    async def run() -> float:
        best = float("inf")
        for _ in range(reps):
            began = time.perf_counter()
            for _ in range(requests):
                await app(_webapp_request_scope(), receive, send)
            best = min(best, (time.perf_counter() - began) / requests * 1e6)
        return best

    return on_new_loop(run())


def asgi_uvicorn_path(requests: int = 12_800, reps: int = 5) -> float:
    """Baseline: us per request of uvicorn's HTTP protocol (httptools) serving the same app
    to 64 connections with stub transports, as inline-async does for seda's acceptor."""
    import asyncio

    from uvicorn.config import Config
    from uvicorn.lifespan.on import LifespanOn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState


    sys.path.insert(0, str(ROOT))
    from stages.webapp import app

    Transport = _stub_transport()

    request = b"GET /items/7?q=x HTTP/1.1\r\nHost: 127.0.0.1:8082\r\n\r\n"

    async def run() -> float:
        config = Config(app=app, loop="none", http="httptools", access_log=False,
                        lifespan="on", log_level="warning")
        config.load()
        lifespan = LifespanOn(config)
        await lifespan.startup()
        state = ServerState()
        conns = []
        for _ in range(64):
            conn = HttpToolsProtocol(config=config, server_state=state,
                                     app_state=lifespan.state)
            conn.connection_made(Transport())  # type: ignore[arg-type]
            conns.append(conn)
        best = float("inf")
        for _ in range(reps):
            began = time.perf_counter()
            for _ in range(requests // 64):
                for conn in conns:
                    conn.data_received(request)
                while state.tasks:
                    await asyncio.sleep(0)
            best = min(best, (time.perf_counter() - began) / requests * 1e6)
        if Transport.written != 2 * requests * reps:  # (uvicorn: the head, then the body)
            raise RuntimeError(f"{Transport.written} writes for {requests * reps} requests")
        await lifespan.shutdown()
        return best

    return on_new_loop(run())


PATHS = {"worker": worker_path, "worker-floor": worker_floor_path, "acceptor": acceptor_path,
         "inline-async": inline_async_path, "asgi-app": asgi_app_path,
         "asgi-uvicorn": asgi_uvicorn_path}


def measure(tree: Path, path: str) -> float:
    """One measurement in a fresh process that imports seda from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, __file__, "--one", path], env=env, cwd=tree,
                          capture_output=True, text=True, timeout=600)
    found = re.search(r"([0-9.]+) us", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(done.stderr or done.stdout)
    return float(found.group(1))


def compare(base: str, runs: int) -> None:
    from compare_revisions import checkout

    with checkout(base) as tree:
        for path in PATHS:
            costs: dict[str, list[float]] = {"base": [], "new": []}
            for i in range(runs):
                order = (("base", tree), ("new", ROOT))
                for label, where in order if i % 2 else order[::-1]:
                    costs[label].append(measure(where, path))
            for name, pick in (("median", statistics.median), ("best", min)):
                old, new = pick(costs["base"]), pick(costs["new"])
                print(f"{path}: {name} of {runs}: base {old:.2f} us, new {new:.2f} us per "
                      f"message; new/base {new / old:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", help="a git revision to compare this tree with")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--one", choices=list(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--parts", action="store_true",
                        help="the worker path only, and its parts: frame in, run, frames "
                             "out, receipts in (us per message each)")
    args = parser.parse_args()
    if args.parts:
        parts: dict[str, float] = {}
        total = worker_path(parts=parts)
        print(" ".join(f"{k} {v:.3f}" for k, v in parts.items()) + f" = {total:.3f} us")
    elif args.one:
        print(f"{PATHS[args.one]():.3f} us")
    elif args.base:
        compare(args.base, args.runs)
    else:
        for name, path in PATHS.items():
            print(f"{name}: {path():.2f} us per message", flush=True)


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
