"""Where a request's CPU goes: per-process CPU time per request under wrk, seda and baseline.

    python tools/cost_per_request.py [--graph graphs/hello.yaml] [--workers hello=1]
                                     [--duration 5] [--connections 64] [--tree DIR]

Runs, one after the other: the minimal uvloop + httptools server of tools/bench_http.py and
its AMPED ceiling (amped-min: requests over zmq to one worker process and back), then
`seda run GRAPH` under each of `--models` (default: seda with `--workers hello=1`, and sped), each
under `wrk -t1 -cN -dS` (seda from `--tree`, another copy of this tree, when given), and
prints for every process (and wrk) its CPU share and its user and system microseconds per
request (CPU time from /proc via psutil, sampled just before and just after wrk). A process
at ~100% is the bottleneck; one well under 100% while the machine is not saturated points at
latency (a round trip between processes that do not overlap) rather than CPU. The figures
drift with the machine's load: compare within a run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_http import (  # noqa: E402
    free_port,
    seda,
    serve_amped_min,
    serve_baseline,
    stop,
    wait_port,
)

Sample = dict[int, tuple[str, float, float]]


def sample(procs: list[psutil.Process]) -> Sample:
    out: Sample = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            title = " ".join(proc.cmdline())[:40]
            out[proc.pid] = (title, times.user, times.system)
        except psutil.Error:
            pass
    return out


def measure(procs: list[psutil.Process], port: int, connections: int, duration: int
            ) -> list[str]:
    before, start = sample(procs), time.monotonic()
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{duration}s",
                            f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
    load = psutil.Process(wrk.pid)
    last: tuple[float, float] = (0.0, 0.0)
    while wrk.poll() is None:
        try:
            times = load.cpu_times()
            last = (times.user, times.system)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out = wrk.stdout.read() if wrk.stdout else ""
    elapsed, after = time.monotonic() - start, sample(procs)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        return [f"  wrk gave no figure: {out.strip()[:200]}"]
    rate = float(found.group(1))
    requests = rate * duration
    lines = [f"  {rate:,.0f} req/s"]
    rows = [(after[pid][0], after[pid][1] - before[pid][1], after[pid][2] - before[pid][2])
            for pid in after if pid in before]
    rows.append(("wrk (load generator)", *last))
    for title, user, system in rows:
        if user + system < 0.01:
            continue  # idle (fork server, supervisor)
        lines.append(f"  {title:40s} cpu {100 * (user + system) / elapsed:5.1f}%  "
                     f"{1e6 * (user + system) / requests:6.1f} us/req  (user "
                     f"{1e6 * user / requests:5.1f}, sys {1e6 * system / requests:5.1f})")
    return lines


def run_baseline(connections: int, duration: int,
                 serve: Callable[[int], None] = serve_baseline) -> list[str]:
    port = free_port()
    server = mp.Process(target=serve, args=(port,), daemon=True)
    server.start()
    try:
        wait_port(port)
        assert server.pid is not None
        top = psutil.Process(server.pid)
        return measure([top, *top.children(recursive=True)], port, connections, duration)
    finally:
        server.terminate()
        server.join(10)


def run_seda(graph: str, model: str, workers: str, connections: int, duration: int,
             tree: Path = ROOT) -> list[str]:
    port = free_port()
    extra = ["--model", model] if model != "seda" else []
    if workers and model in ("seda", "amped"):
        extra += ["--workers", workers]
    proc = seda(graph, port, *extra, tree=tree)  # started, listening, workers ready
    try:
        supervisor = psutil.Process(proc.pid)
        return measure([supervisor, *supervisor.children(recursive=True)], port, connections,
                       duration)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default="graphs/hello.yaml")
    parser.add_argument("--models", default="seda,sped")
    parser.add_argument("--workers", default="hello=1", help="seda run --workers (seda, amped)")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="run seda from this copy of the tree (e.g. a compiled one)")
    args = parser.parse_args()
    args.tree = args.tree.resolve()  # the servers run with it as their directory
    print(f"{psutil.cpu_count()} cores; wrk -t1 -c{args.connections} -d{args.duration}s")
    print("baseline (uvloop + httptools, one process):")
    print("\n".join(run_baseline(args.connections, args.duration)))
    print("amped-min (the same front, requests over zmq to one worker and back):")
    print("\n".join(run_baseline(args.connections, args.duration, serve_amped_min)))
    for model in args.models.split(","):
        print(f"seda {args.graph} --model {model}"
              f"{'' if args.tree == ROOT else f' (from {args.tree})'}:")
        print("\n".join(run_seda(args.graph, model, args.workers, args.connections,
                                 args.duration, args.tree)))


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
