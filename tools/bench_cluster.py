"""A chain across two hosts against the same chain on one: what the network and CurveZMQ cost.

    python tools/bench_cluster.py [--items 300000] [--repeat 3]

(root, and `ip` from iproute2: the second host is a network namespace on this machine, joined
to this one by a veth pair, made and removed by the script.)

The chain of tools/bench_pipeline.py (source -> double -> sink, ~100-byte messages), with
the defaults, three ways in one run:
  ipc        `seda run` as usual: every process on this host, over ipc
  tcp        `--tcp` on this host's end of the veth, with `--keys` (CurveZMQ on): the same
             processes, every hop over TCP and encrypted
  two-hosts  the same, with the middle stage's worker on the other host (`--remote double`
             and `seda worker --join` in the namespace): both of its hops cross the veth
Prints each one's messages/s, first item to last (best of --repeat), and its ratio to ipc.
Both "hosts" share this machine's cores: the figures compare transports, not machines.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import bench_pipeline  # noqa: E402

from seda.bench import OtherHost, other_host, stop_on_sigterm, stop_process  # noqa: E402


def _seda(*args: str) -> list[str]:
    return [sys.executable, "-m", "seda.cli", *args]


def run_chain(tmp: Path, n: int, host: OtherHost | None, *extra: str) -> float:
    """seda's steady rate (first item to last) for one run of the chain; with `host`, the
    middle stage's worker joins from it."""
    graph = tmp / "chain.yaml"
    graph.write_text(bench_pipeline.CHAIN.format(n=n, tune=""))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools")}
    err = tmp / "err.txt"
    remote = ["--join-at", f"{host.here}:0", "--remote", "double"] if host else []
    with open(err, "w") as stderr:
        run = subprocess.Popen(_seda("run", str(graph), "--no-progress", "--no-status", "-o",
                                     str(tmp / "out"), *extra, *remote),
                               cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    joiner = None
    try:
        if host is not None:
            deadline = time.monotonic() + 30
            while not (match := re.search(r"workers join at (tcp://\S+)", err.read_text())):
                if time.monotonic() > deadline or run.poll() is not None:
                    raise RuntimeError(err.read_text())
                time.sleep(0.02)
            joiner = subprocess.Popen(host.command(*_seda("worker", "--join", match.group(1),
                                                          "--keys", str(tmp / "k"), "--host",
                                                          host.there)),
                                      env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        run.wait(timeout=600)
    finally:
        stop_process(run)
        if joiner is not None:
            stop_process(joiner)
    found = re.search(r"items in [0-9.]+ s \(([0-9]+)/s", err.read_text())
    if run.returncode != 0 or not found:
        raise RuntimeError(err.read_text())
    (tmp / "out").unlink(missing_ok=True)
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, other_host() as host:
        tmp = Path(folder)
        subprocess.run(_seda("keys", str(tmp / "k")), check=True, capture_output=True)
        keys = ["--keys", str(tmp / "k")]
        ways = {"ipc": (None, ()), "tcp": (None, ("--tcp", host.here, *keys)),
                "two-hosts": (host, ("--tcp", host.here, *keys))}
        best: dict[str, float] = {}
        for _ in range(args.repeat):  # (interleaved: the machine's drift hits each alike)
            for name, (there, extra) in ways.items():
                best[name] = max(best.get(name, 0.0), run_chain(tmp, args.items, there, *extra))
    print(f"{args.items:,} messages of ~100 bytes, best of {args.repeat}, first item to last; "
          f"{os.cpu_count()} cores shared by both hosts")
    print(f"  {'way':<10} {'msgs/s':>10}  vs ipc")
    for name, rate in best.items():
        print(f"  {name:<10} {rate:>10,.0f}  {rate / best['ipc']:.2f}")


if __name__ == "__main__":
    stop_on_sigterm()
    main()
