"""HTTP and RESP throughput: seda's acceptor against minimal baselines, in one run.

    python tools/bench_http.py [--duration 10] [--connections 64]
    (needs wrk; for the RESP part redis-benchmark and redis-server: apt-get install wrk
     redis-tools redis-server)

HTTP (wrk -t1 -cN -dS against each, after 1 s of the same load that is not counted):
  baseline     a minimal uvloop + httptools hello server (written here, one process)
  amped-min    the same front passing each loop turn's requests over zmq to one worker
               process and back (written here): the least an AMPED server in Python does
  amped-1      seda, graphs/hello.yaml with 1 worker   (acceptor + one worker pool)
  amped-2      seda, graphs/hello.yaml with 2 workers
  sped         seda, graphs/hello.yaml with --model sped (the handler runs in the acceptor)
  symped       seda, graphs/hello.yaml with --model symped (N SPED processes, one port)
  uvicorn      uvicorn serving a raw ASGI hello app, one worker (uvloop, httptools, no
               access log): the server most Python services run on
RESP (redis-benchmark -t get,set, -P 1 and -P 16):
  redis        redis-server, the real thing
  seda-kv      seda, graphs/kv.yaml
Prints requests/s, p50 and p99 latency, and each one's ratio to the baseline. On a 2-core
machine wrk and redis-benchmark use one of the cores: the figures are for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ the baseline server
class Hello(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        body = b"hello, world\n"
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"  # type: ignore[attr-defined]
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))


def serve_baseline(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Hello, "127.0.0.1", port)
        stopped = loop.create_future()
        # on the loop, between callbacks (see serve_amped_min): a SIGTERM that raised inside
        # a protocol callback printed a traceback at the end of every benchmark
        loop.add_signal_handler(signal.SIGTERM, stopped.set_result, None)
        async with server:
            await stopped

    uvloop.run(main())


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The raw ASGI hello that uvicorn serves (no framework)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello, world\n"})


def serve_uvicorn(port: int) -> None:
    import uvicorn

    uvicorn.run(hello_app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off")


# ------------------------------------------------------------------ the AMPED ceiling
# The least an AMPED server in Python does: the same uvloop + httptools front, which sends
# each loop turn's requests as one msgpack frame over zmq to one worker process and writes
# the worker's answers. No envelopes, acks, credit, retries, deadlines, ordering or limits:
# what the architecture itself costs in Python on this machine, not a server to use.
class MinFront(asyncio.Protocol):
    waiting: dict[int, MinFront] = {}
    batch: list[Any] = []
    next_id = 0
    push: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        MinFront.next_id += 1
        MinFront.waiting[MinFront.next_id] = self
        if not MinFront.batch:
            asyncio.get_running_loop().call_soon(MinFront.send)
        MinFront.batch.append([MinFront.next_id, self.url])

    @staticmethod
    def send() -> None:
        import msgpack

        MinFront.push.send(msgpack.packb(MinFront.batch))
        MinFront.batch = []


def _min_worker(inp: str, out: str, parent: int) -> None:
    import msgpack
    import zmq

    from seda.bench import die_with_parent

    die_with_parent(parent)  # never outlive the server, however it ends
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind(inp)
    push.connect(out)
    push.send(msgpack.packb([]))  # ready: the front listens only from now on
    while True:
        push.send(msgpack.packb([[rid, b"hello, world\n"] for rid, _url in
                                 msgpack.unpackb(pull.recv())]))


def serve_amped_min(port: int) -> None:
    import msgpack
    import uvloop
    import zmq

    with tempfile.TemporaryDirectory() as tmp:
        inp, out = f"ipc://{tmp}/in", f"ipc://{tmp}/out"
        worker = subprocess.Popen([sys.executable, __file__, "--amped-min-worker", inp, out,
                                   str(os.getpid())])
        ctx = zmq.Context()
        pull, MinFront.push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.bind(out)
        MinFront.push.connect(inp)
        pull.recv()  # the worker is up (its imports take a moment): only then listen

        def answers() -> None:  # the zmq FD is edge-triggered: read until nothing is left
            while int(pull.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                for rid, body in msgpack.unpackb(pull.recv()):
                    conn = MinFront.waiting.pop(rid)
                    if conn.transport.is_closing():
                        continue  # the client left (wrk's end)
                    conn.transport.write(  # type: ignore[attr-defined]
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(body), body))

        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.add_reader(int(pull.getsockopt(zmq.FD)), answers)
            answers()  # re-arms the edge-triggered FD after the blocking recv above
            server = await loop.create_server(MinFront, "127.0.0.1", port)
            stopped = loop.create_future()
            # on the loop, between callbacks: sys.exit from a plain signal handler raises
            # inside whatever callback runs, and uvloop swallows it in a protocol's callback
            loop.add_signal_handler(signal.SIGTERM, stopped.set_result, None)
            async with server:
                await stopped

        try:
            uvloop.run(main())
        finally:
            worker.terminate()
            worker.wait()


# ------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def seda(graph: str, port: int, *args: str, tree: Path = ROOT) -> subprocess.Popen[bytes]:
    """`seda run GRAPH` from `tree` (this one, or a copy such as bench_compiled's)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-m", "seda.cli", "run", graph, "--no-progress",
                             "--listen", f"127.0.0.1:{port}", *args], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    time.sleep(1.0)  # let every worker grant credit
    return proc


def ms(text: str) -> float:
    value = float(re.sub(r"[a-z]+", "", text))
    return value / 1000 if text.endswith("us") else value * 1000 if text.endswith("s") and \
        not text.endswith("ms") else value


def wrk(port: int, connections: int, duration: int, path: str = "/", warmup: int = 1
        ) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms), after `warmup` seconds of the same load that are not counted
    (a fresh server's first requests pay for connections, first calls and caches)."""
    if warmup:
        subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{warmup}s",
                        f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=warmup + 60)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=duration + 60).stdout
    return wrk_figures(out)


def wrk_figures(out: str) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) from what `wrk --latency` printed."""
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    # the percentiles are anchored at the start of their lines: a "+/- Stdev" column that
    # ends in 50% or 99% (71.50%) is followed by spaces too
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    return rps, p50, p99


def redis_bench(port: int, pipeline: int, requests: int) -> dict[str, float]:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "get,set", "-n",
                          str(requests), "-P", str(pipeline), "-q"], capture_output=True,
                         text=True, timeout=600, stdin=subprocess.DEVNULL).stdout
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r"^(GET|SET): ([0-9.]+) requests per second", out.replace("\r", "\n"),
                        re.M)}


# ------------------------------------------------------------------ runs
def wrk_written(flag: str, connections: int, duration: int) -> tuple[float, float, float]:
    """wrk against a server written in this script (`--serve-baseline`, `--serve-amped-min`),
    started for the run and stopped after it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), flag, str(port)])
    try:
        wait_port(port)
        return wrk(port, connections, duration)
    finally:
        stop(server)  # type: ignore[arg-type]


def wrk_seda(connections: int, duration: int, *args: str, tree: Path = ROOT
             ) -> tuple[float, float, float]:
    """wrk against `seda run graphs/hello.yaml ARGS` from `tree`, stopped after the run."""
    port = free_port()
    proc = seda("graphs/hello.yaml", port, *args, tree=tree)
    try:
        return wrk(port, connections, duration)
    finally:
        stop(proc)


def bench_http(connections: int, duration: int) -> None:
    results: dict[str, tuple[float, float, float]] = {}
    for name, flag in (("baseline", "--serve-baseline"), ("amped-min", "--serve-amped-min"),
                       ("uvicorn", "--serve-uvicorn")):
        results[name] = wrk_written(flag, connections, duration)
    for workers in (1, 2):
        results[f"amped-{workers}"] = wrk_seda(connections, duration, "--model", "amped",
                                               "--workers", f"hello={workers}")
    results["sped"] = wrk_seda(connections, duration, "--model", "sped")
    results["symped"] = wrk_seda(connections, duration, "--model", "symped")
    base_rps = results["baseline"][0]
    print(f"\nHTTP: wrk -t1 -c{connections} -d{duration}s, hello world")
    print(f"  {'server':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs baseline':>12}")
    for name, (rps, p50, p99) in results.items():
        print(f"  {name:<10} {rps:>10,.0f} {p50:>8.2f} {p99:>8.2f} {rps / base_rps:>12.2f}")
    print(f"  amped-1 / uvicorn: {results['amped-1'][0] / results['uvicorn'][0]:.2f}x")


def bench_resp(requests: int) -> None:
    if not (shutil.which("redis-benchmark") and shutil.which("redis-server")):
        print("\nRESP: skipped (needs redis-benchmark and redis-server)")
        return
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                                  "--appendonly", "no", "--dir", tmp],
                                 stdout=subprocess.DEVNULL)
        try:
            wait_port(port)
            for p in (1, 16):
                rows[f"redis -P{p}"] = redis_bench(port, p, requests)
        finally:
            stop(redis)  # type: ignore[arg-type]
    port = free_port()
    proc = seda("graphs/kv.yaml", port)
    try:
        for p in (1, 16):
            rows[f"seda-kv -P{p}"] = redis_bench(port, p, requests)
    finally:
        stop(proc)
    print(f"\nRESP: redis-benchmark -t get,set -n {requests} (50 clients)")
    print(f"  {'server':<14} {'SET/s':>10} {'GET/s':>10} {'vs redis':>9}")
    for name, row in rows.items():
        ref = rows[f"redis -P{name.rsplit('P', 1)[1]}"]
        ratio = row.get("GET", 0) / ref.get("GET", 1)
        print(f"  {name:<14} {row.get('SET', 0):>10,.0f} {row.get('GET', 0):>10,.0f} "
              f"{ratio:>9.2f}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-baseline":
        serve_baseline(int(sys.argv[2]))
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--amped-min-worker":
        _min_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-uvicorn":
        serve_uvicorn(int(sys.argv[2]))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-amped-min":
        serve_amped_min(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--no-resp", action="store_true", help="HTTP only")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk (apt-get install wrk)")
    print(f"{os.cpu_count()} cores; load generators run on the same machine")
    bench_http(args.connections, args.duration)
    if not args.no_resp:
        bench_resp(args.requests)


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
