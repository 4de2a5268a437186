"""The batching controller against fixed credit windows, side by side in one run.

    python tools/bench_batching.py [--graph graphs/work.yaml] [--path /hello]
                                   [--connections 1,64] [--duration 8] [--repeat 2]

Variants of the graph: every stage with its own `prefetch` (fixed), with `prefetch: 64`
(fixed, big), and with `batching: {min: 1, max: 64}` (adaptive, starting from the graph's
prefetch). Each is driven by wrk (closed loop, or seda's generator when wrk is missing) at
each connection count, interleaved `--repeat` times; prints req/s and p99 per variant and the
ratio to the graph as it is. The load generator shares the 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seda.bench import BenchOptions, Server, drive, graph_data, settle  # noqa: E402


def variants(graph: Path, folder: Path) -> dict[str, Path]:
    spec = graph_data(graph)
    out = {"as is": graph}
    for name, change in (("prefetch 64", {"prefetch": 64}),
                         ("batching", {"batching": {"min": 1, "max": 64}})):
        copy = yaml.safe_load(yaml.safe_dump(spec))
        for stage in copy["stages"].values():
            stage.update(change)
        path = folder / f"{name.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(copy, sort_keys=False))
        out[name] = path
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default=str(ROOT / "graphs" / "work.yaml"))
    parser.add_argument("--path", default="/hello")
    parser.add_argument("--connections", default="1,64")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    loadgen = "wrk" if shutil.which("wrk") else "seda"
    counts = [int(c) for c in args.connections.split(",")]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = variants(Path(args.graph).resolve(), Path(tmp))
        for _ in range(args.repeat):
            for name, graph in graphs.items():
                server = Server(BenchOptions(str(graph), ["seda"], counts), "seda",
                                Path(tmp) / "server.log")
                try:
                    port = server.start(args.path)
                    for connections in counts:
                        settle(server.proc.pid)
                        url = f"http://127.0.0.1:{port}{args.path}"
                        drive(loadgen, url, connections, 2.0, None, 5.0)  # warm up
                        figures = drive(loadgen, url, connections, args.duration, None, 5.0)
                        results.setdefault((name, connections), []).append(figures)
                        print(f"{name:12} c={connections:<4} {figures['rps']:>9,.0f} req/s  "
                              f"p99 {figures['p99_ms']:.1f} ms", flush=True)
                finally:
                    server.stop()
    print(f"\n{loadgen}, {args.path}, median of {args.repeat}; ratio to the graph as it is")
    print("| variant | connections | req/s | ratio | p99 ms |")
    print("|---|---|---|---|---|")
    for connections in counts:
        base = statistics.median(r["rps"] for r in results[("as is", connections)])
        for name in ("as is", "prefetch 64", "batching"):
            runs = results[(name, connections)]
            rps = statistics.median(r["rps"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            print(f"| {name} | {connections} | {rps:,.0f} | {rps / base:.2f} | {p99:.1f} |")
    return 0


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    sys.exit(main())
