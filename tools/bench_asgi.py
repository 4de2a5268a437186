"""The same Starlette app (stages/webapp.py) under uvicorn and under seda, side by side.

    python tools/bench_asgi.py [--duration 5] [--connections 64] [--path /items/7?q=x]
                               [--overload-path /work?ms=2] [--target 0.1] [--out DIR]

0. Waiting: graphs/waits.yaml (one worker, an async stage that awaits 50 ms,
   `concurrency: 256`) under each seda model, wrk -t1 -c256: requests/s against the
   ceiling, 256 / 0.05 s = 5,120/s.
1. Closed loop (wrk -t1 -cC, after 1 s of the same load not counted): uvicorn with
   `--workers 1` and `--workers 2` (uvloop and httptools, access log off), seda `symped`
   (2 loops), `amped` (graphs/webapp.yaml's 2 workers) and `sped`. Requests/s, p50, p99,
   each one's ratio to uvicorn's best, and how its processes split wrk's connections
   (uvicorn's workers share one listening socket: at times one of them takes them all).
2. Overload: each server's peak on `--overload-path` (a route that burns CPU), then seda's
   open-loop generator offers 4x that peak (latency from when each request was due: a
   server that queues is charged for it) to uvicorn's best and to seda symped with
   `acceptor.admission: {target: T}`: goodput (2xx/s) against the peak, p99 of the 2xx
   answers, the share refused (503).
The load generator shares the machine's cores with the servers: its CPU is reported. Writes
DIR/report.md, DIR/results.json and DIR/asgi.png (matplotlib) when --out is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml
from bench_http import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seda.bench import (  # noqa: E402
    BenchOptions,
    Server,
    drive,
    graph_data,
    settle,
    stop_process,
)

GRAPH = ROOT / "graphs" / "webapp.yaml"
WAITS = ROOT / "graphs" / "waits.yaml"


class Uvicorn:
    """`uvicorn stages.webapp:app --workers N` on a free port, stopped on exit."""

    def __init__(self, workers: int, log: Path) -> None:
        self.port = free_port()
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "stages.webapp:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", str(workers), "--loop", "uvloop",
                 "--http", "httptools", "--no-access-log", "--log-level", "warning"],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def start(self, path: str, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5):
                    return self.port
            except urllib.error.HTTPError:
                return self.port
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc)


def seda_server(name: str, graph: Path, log: Path) -> Server:
    model, processes = {"seda symped": ("symped", 2), "seda amped": ("amped", None),
                        "seda sped": ("sped", None)}[name]
    return Server(BenchOptions(str(graph), [model], [1], processes=processes), model, log)


def serve(name: str, graph: Path, logs: Path) -> Uvicorn | Server:
    log = logs / f"{name.replace(' ', '-')}.log"
    if name.startswith("uvicorn"):
        return Uvicorn(int(name.split()[1]), log)
    return seda_server(name, graph, log)


def closed(name: str, graph: Path, logs: Path, path: str, connections: int,
           duration: float) -> dict[str, Any]:
    with started(name, graph, logs, path) as (server, port):
        url = f"http://127.0.0.1:{port}{path}"
        drive("wrk", url, connections, 1.0, None, 5.0)  # warm-up, not counted
        split: list[int] = []
        counter = threading.Thread(target=lambda: split.extend(
            connections_by_process(server.proc.pid, port, duration / 2)))
        counter.start()
        row = drive("wrk", url, connections, duration, None, 5.0)
        counter.join()
        row["split"] = split
        return row


def connections_by_process(pid: int, port: int, after: float) -> list[int]:
    """After `after` seconds, the client connections each process under `pid` holds on
    `port`, most first: how the server's processes split the load generator's connections
    (uvicorn's workers share one listening socket; seda's loops each have their own)."""
    time.sleep(after)
    counts = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            held = sum(1 for c in proc.net_connections(kind="tcp")
                       if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED")
        except psutil.Error:
            continue
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


def open_loop(name: str, graph: Path, logs: Path, path: str, rate: float,
              duration: float) -> dict[str, Any]:
    with started(name, graph, logs, path) as (_, port):
        return drive("seda", f"http://127.0.0.1:{port}{path}", 256, duration, rate, 5.0, 2.0)


@contextlib.contextmanager
def started(name: str, graph: Path, logs: Path, path: str
            ) -> Iterator[tuple[Uvicorn | Server, int]]:
    """Server `name` up and answering `path`, its processes settled; stopped after."""
    server = serve(name, graph, logs)
    try:
        port = server.start(path)
        settle(server.proc.pid)
        yield server, port
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--path", default="/items/7?q=x")
    ap.add_argument("--overload-path", default="/work?ms=2")
    ap.add_argument("--target", type=float, default=0.1, help="admission target p90, s")
    ap.add_argument("--factor", type=float, default=4.0, help="overload: x the peak")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    servers = ["uvicorn 1 worker", "uvicorn 2 workers", "seda symped", "seda amped",
               "seda sped"]
    rows: dict[str, Any] = {"waits": {}, "closed": {}, "peak": {}, "overload": {}}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        print("waiting: graphs/waits.yaml, 1 worker awaiting 50 ms per request, concurrency "
              f"256; wrk -t1 -c256 -d{args.duration:g}s (ceiling 5,120/s)")
        for model in ("seda", "amped", "sped", "symped", "mp"):
            server = Server(BenchOptions(str(WAITS), [model], [1]), model,
                            logs / f"waits-{model}.log")
            try:
                port = server.start("/?s=0")
                url = f"http://127.0.0.1:{port}/x?s=0.05"
                drive("wrk", url, 256, 1.0, None, 5.0)
                row = drive("wrk", url, 256, args.duration, None, 5.0)
            finally:
                server.stop()
            rows["waits"][model] = row
            print(f"  seda {model:7} {row['rps']:>7,.0f} req/s ({row['rps'] / 5120:.2f} of the "
                  f"ceiling)  p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                  f"errors {row['errors']}")
        admitted = logs / "webapp-admission.yaml"
        spec = graph_data(GRAPH)
        spec["acceptor"]["admission"] = {"target": args.target}
        admitted.write_text(yaml.safe_dump(spec, sort_keys=False))
        print(f"closed loop: wrk -t1 -c{args.connections} -d{args.duration:g}s {args.path} "
              f"(after 1 s not counted), {os.cpu_count()} cores shared with wrk")
        for name in servers:
            row = closed(name, GRAPH, logs, args.path, args.connections, args.duration)
            rows["closed"][name] = row
            print(f"  {name:18} {row['rps']:>9,.0f} req/s  p50 {row['p50_ms']:6.2f} ms  "
                  f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}  non-2xx "
                  f"{row['non_2xx']}  wrk {row['loadgen_cores']} cores  connections per "
                  f"process {'/'.join(map(str, row['split'])) or '?'}")
        best_uv = max(("uvicorn 1 worker", "uvicorn 2 workers"),
                      key=lambda n: rows["closed"][n]["rps"])
        best_seda = max(("seda symped", "seda amped", "seda sped"),
                        key=lambda n: rows["closed"][n]["rps"])
        for name in servers:
            rows["closed"][name]["ratio"] = round(
                rows["closed"][name]["rps"] / rows["closed"][best_uv]["rps"], 2)
        print(f"  best: {best_seda} / {best_uv} = "
              f"{rows['closed'][best_seda]['ratio']:.2f}x; p99 "
              f"{rows['closed'][best_seda]['p99_ms']:.2f} vs "
              f"{rows['closed'][best_uv]['p99_ms']:.2f} ms")
        print(f"overload on {args.overload_path}: peak (closed loop, 64 connections), then "
              f"{args.factor:g}x the peak offered open-loop for {args.duration:g} s")
        for name, graph in ((best_uv, GRAPH), ("seda symped", admitted)):
            peak = closed(name, GRAPH, logs, args.overload_path, 64, args.duration)
            rows["peak"][name] = peak
            rate = args.factor * peak["rps"]
            row = open_loop(name, graph, logs, args.overload_path, rate, args.duration)
            ok = row["goodput"]
            row["offered"] = round(rate, 1)
            row["goodput_share"] = round(ok / peak["rps"], 2)
            rows["overload"][name] = row
            print(f"  {name:18} peak {peak['rps']:>7,.0f}/s  offered {rate:>7,.0f}/s  "
                  f"goodput {ok:>7,.0f}/s ({row['goodput_share']:.2f}x peak)  p99 "
                  f"{row.get('ok_p99_ms', row.get('p99_ms', 0)):8.1f} ms  "
                  f"{json.dumps({k: row[k] for k in ('statuses', 'errors') if k in row})}  "
                  f"generator {row['loadgen_cores']} cores")
    if args.out:
        write(Path(args.out), rows, args)
    return 0


def write(out: Path, rows: dict[str, Any], args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(rows["closed"])
    left.bar(names, [rows["closed"][n]["rps"] for n in names], color="#4c72b0")
    left.set_ylabel("requests/s (closed loop)")
    left.set_title(f"{args.path}, wrk -c{args.connections}")
    left.tick_params(axis="x", rotation=30)
    over = list(rows["overload"])
    good = [rows["overload"][n]["goodput_share"] for n in over]
    p99 = [rows["overload"][n].get("ok_p99_ms", rows["overload"][n].get("p99_ms", 0))
           for n in over]
    right.bar([f"{n}\n(goodput x peak)" for n in over], good, color="#55a868")
    right.set_ylim(0, 1.2)
    right.set_title(f"{args.factor:g}x overload on {args.overload_path}")
    twin = right.twinx()
    twin.plot(range(len(over)), p99, "o", color="#c44e52")
    twin.set_yscale("log")
    twin.set_ylabel("p99 of 2xx, ms (red)")
    fig.tight_layout()
    fig.savefig(out / "asgi.png", dpi=110)


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    sys.exit(main())
