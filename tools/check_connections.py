"""Hold N concurrent keep-alive connections against graphs/hello.yaml and report the
acceptor's memory per connection.

    python tools/check_connections.py [N]          (default 10000)

Opens N connections, sends one request on each (in waves of 500, so the entry queue never
overflows into 503s), checks every answer, measures the acceptor's RSS before and after, then
checks that a new client is still served.
"""

from __future__ import annotations

import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from seda.bench import graph_data

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * n + 1024), hard))
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "hello.yaml"
        spec = graph_data(ROOT / "graphs" / "hello.yaml")
        spec["acceptor"]["limits"] = {"max_connections": n + 10}
        graph.write_text(yaml.safe_dump(spec, sort_keys=False))
        err_path = Path(tmp) / "stderr"
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "seda.cli", "run", str(graph),
                                     "--listen", "127.0.0.1:0", "--no-progress"], stderr=err,
                                    stdout=subprocess.DEVNULL)
        try:
            run(proc, err_path, n)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def run(proc: subprocess.Popen[bytes], err_path: Path, n: int) -> None:
    port = 0
    for _ in range(600):
        match = re.search(r":(\d+) \(graph", err_path.read_text())
        if match:
            port = int(match.group(1))
            break
        time.sleep(0.05)
    time.sleep(1.5)
    [acceptor] = [p for p in psutil.Process(proc.pid).children()
                  if "acceptor" in " ".join(p.cmdline())]
    before = acceptor.memory_info().rss
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    ok = 0
    for start in range(0, n, 500):
        wave = socks[start:start + 500]
        for s in wave:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        for s in wave:
            s.settimeout(10)
            ok += s.recv(4096).startswith(b"HTTP/1.1 200")
    time.sleep(1)
    after = acceptor.memory_info().rss
    print(f"{n} concurrent keep-alive connections, {ok} answered 200; acceptor RSS "
          f"{before / 2**20:.1f} MB -> {after / 2**20:.1f} MB, "
          f"{(after - before) / n / 1024:.1f} KiB per connection")
    with socket.create_connection(("127.0.0.1", port)) as late:
        late.sendall(b"GET /?name=late HTTP/1.1\r\n\r\n")
        print("a new client is served:", late.recv(4096).split(b"\r\n\r\n")[1])
    for s in socks:
        s.close()


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
