"""Head-of-line blocking across routes: page views while checkouts saturate their stage.

    python tools/bench_routes.py [--seconds 8] [--clients 64] [--runs 3] [--tree DIR]

graphs/shop.yaml (parse -> catalog, fast | checkout, 4 workers x 50 ms: ~80/s), under
`seda run` as it ships. From the first moment, --clients connections POST /checkout in a
loop (a process of their own, threads; a 503's Retry-After is honoured with --polite);
0.5 s later, one client GETs /item/7 every 10 ms (this process). (A first GET, answered
before the load starts, makes sure the workers are up.) Prints, per run, the GETs'
latency percentiles and the POSTs' statuses. --tree runs seda from another checkout (e.g.
`git worktree add /tmp/old REV`) to compare. On a 2-core machine the load generator takes
a core: compare runs of one invocation, not absolute figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

POSTS = """
import http.client, json, sys, threading, time
port, seconds, clients, polite = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), \\
    sys.argv[4] == "1"
stop, counts, lock = time.monotonic() + seconds, {}, threading.Lock()
def client():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while time.monotonic() < stop:
        conn.request("POST", "/checkout", body=b'{"items": [1, 2]}')
        answer = conn.getresponse()
        answer.read()
        with lock:
            counts[answer.status] = counts.get(answer.status, 0) + 1
        if answer.status == 503 and polite:
            time.sleep(float(answer.getheader("retry-after") or 1))
threads = [threading.Thread(target=client) for _ in range(clients)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(counts))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def one_run(seconds: float, clients: int, polite: bool, env: dict[str, str]) -> str:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "seda.cli", "run", "graphs/shop.yaml",
                               "--listen", f"127.0.0.1:{port}", "--no-status"], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    load = None
    try:
        wait_port(port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/item/7")  # the service is up (its workers too): start
        conn.getresponse().read()
        load = subprocess.Popen([sys.executable, "-c", POSTS, str(port), str(seconds),
                                 str(clients), "1" if polite else "0"],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)  # the checkouts first: they fill what they can
        latencies: list[float] = []
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            start = time.perf_counter()
            conn.request("GET", "/item/7")
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"GET /item/7: {answer.status}")
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(0.01)
        posts = json.loads(load.communicate(timeout=120)[0])
        return (f"GET /item/7: {len(latencies)} answered, p50 {pct(latencies, 0.5):.1f} ms, "
                f"p90 {pct(latencies, 0.9):.1f}, p99 {pct(latencies, 0.99):.1f}, max "
                f"{max(latencies):.1f}; POST /checkout statuses {posts}")
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--polite", action="store_true",
                        help="the POST clients wait Retry-After after a 503")
    parser.add_argument("--tree", type=Path, help="run seda from this checkout")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.tree:
        env["PYTHONPATH"] = str(args.tree.resolve())
    print(f"{os.cpu_count()} cores; seda from {args.tree or ROOT}; {args.clients} POST "
          f"clients for {args.seconds:g} s")
    for i in range(args.runs):
        print(f"  run {i + 1}: {one_run(args.seconds, args.clients, args.polite, env)}")


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
