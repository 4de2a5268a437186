"""seda placed by Ray against the same chain as Ray actors calling each other, in one run.

    python tools/bench_ray.py [--items 100000] [--ray-items 20000]

(needs `pip install 'seda[ray]'`; starts a Ray cluster of two raylets on this machine with
ray.cluster_utils, and removes it.)

The chain of tools/bench_pipeline.py (source -> double -> sink, ~100-byte messages):
  ray-actors  the obvious Ray-native design: a `double` actor and a `sink` actor, the driver
              calling sink.add.remote(double.run.remote(item)) for each item (the object
              reference passed on, so the value goes actor to actor), then waiting for all
  seda-ray    `seda run --ray` on the chain graph with the middle stage's `placement:`
              asking for a custom resource of the second raylet: Ray starts its worker as an
              actor there, which joins the run; seda's own sockets carry the messages
  seda-local  the same graph without --ray (its processes started by seda, over ipc)
Prints messages/s (first item to last for seda; the whole loop for the actors) and the
ratios, then Ray's start-up cost: from the supervisor's start to the first item read,
with --ray against without. Every process shares this machine's cores.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import bench_pipeline  # noqa: E402

from seda.bench import stop_on_sigterm  # noqa: E402

PLACED = """
name: bench-ray
path: ["{tools}"]   # (a joined worker imports its handlers from the plan's folders)
source: {{handler: "bench_pipeline:numbers", to: [double], options: {{n: {n}}}}}
stages:
  double:
    handler: "bench_pipeline:double"
    to: [sink]
    placement: {{resources: {{far: 1}}}}
  sink: {{handler: "bench_pipeline:Total", sink: true}}
"""


def ray_actors(n: int) -> float:
    """msgs/s of the chain as two Ray actors, one remote call per message and stage."""
    import ray

    @ray.remote
    class Double:
        def run(self, x: list[Any]) -> list[Any]:
            return bench_pipeline.double(x, None)

    @ray.remote
    class Sink:
        def __init__(self) -> None:
            self.count = self.total = 0

        def add(self, x: list[Any]) -> None:
            self.count += 1
            self.total += x[0]

        def result(self) -> dict[str, int]:
            return {"count": self.count, "sum": self.total}

    double, sink = Double.remote(), Sink.remote()
    ray.get([double.run.remote(bench_pipeline.item(0)), sink.result.remote()])  # (started)
    began = time.perf_counter()
    done = [sink.add.remote(double.run.remote(bench_pipeline.item(i))) for i in range(n)]
    ray.get(done)
    elapsed = time.perf_counter() - began
    total = ray.get(sink.result.remote())
    assert total == {"count": n, "sum": 2 * sum(range(n))}, total
    return n / elapsed


def seda_run(tmp: Path, n: int, *extra: str) -> tuple[float, float]:
    """(seda's steady rate, seconds from the command's start to its first item read)."""
    graph = tmp / "chain.yaml"
    graph.write_text(PLACED.format(n=n, tools=ROOT / "tools"))
    err = tmp / "err.txt"
    with open(err, "w") as stderr:
        done = subprocess.run([sys.executable, "-m", "seda.cli", "run", str(graph),
                               "--no-progress", "--no-status", "-o", str(tmp / "out"), *extra],
                              cwd=tmp, stdout=subprocess.DEVNULL, stderr=stderr, timeout=600)
    text = err.read_text()
    found = re.search(r"items in [0-9.]+ s \(([0-9]+)/s; start-up ([0-9.]+) s\)", text)
    if done.returncode != 0 or not found:
        raise RuntimeError(text)
    (tmp / "out").unlink(missing_ok=True)
    return float(found.group(1)), float(found.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--ray-items", type=int, default=20_000,
                        help="items through the Ray actors (they are slow)")
    args = parser.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1, resources={"far": 1})
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            subprocess.run([sys.executable, "-m", "seda.cli", "keys", str(tmp / "k")],
                           check=True, capture_output=True)
            local, local_start = seda_run(tmp, args.items)
            placed, placed_start = seda_run(tmp, args.items, "--tcp", "127.0.0.1", "--keys",
                                            str(tmp / "k"), "--ray", cluster.address)
        ray.init(address=cluster.address, logging_level="ERROR")
        actors = ray_actors(args.ray_items)
        ray.shutdown()
    finally:
        cluster.shutdown()
    print(f"chain, ~100-byte messages, {os.cpu_count()} cores shared by everything")
    print(f"  {'contender':<12} {'msgs/s':>10}")
    for name, rate in (("seda-local", local), ("seda-ray", placed), ("ray-actors", actors)):
        print(f"  {name:<12} {rate:>10,.0f}")
    print(f"seda on Ray / Ray actors: {placed / actors:.1f}x; seda on Ray / seda local: "
          f"{placed / local:.2f}x")
    print(f"start-up (the supervisor's start to the first item read): local "
          f"{local_start:.2f} s, --ray {placed_start:.2f} s "
          f"(+{placed_start - local_start:.2f} s: connecting to Ray, starting the actor, its "
          f"worker joining)")


if __name__ == "__main__":
    stop_on_sigterm()
    main()
