"""Overload: goodput and latency of admitted requests, with admission control on and off.

    python tools/bench_overload.py [--graph graphs/work.yaml] [--path /cpu] [--target 0.1]
                                   [--loads 0.5,1,2,4] [--duration 8] [--out docs/overload]

1. Capacity: seda's closed-loop generator (32 connections) for `--duration` seconds against
   the graph as it is; the 2xx answers per second are the peak.
2. For each load (a multiple of that peak), seda's open-loop generator offers that many
   requests per second (latency counted from when each was due, so queueing is charged),
   first against the graph as it is (admission off: only the entry queue bound sheds
   load), then against a copy with `acceptor.admission: {target: T}`.
Prints a table (goodput, its share of the peak, p50/p90/p99 of the 2xx answers, the share
answered 503, errors) and writes it with the raw figures to OUT/report.md and
OUT/results.json, and a plot of goodput and latency against the load to OUT/overload.png
(when matplotlib is installed). The load generator runs on the same cores: its CPU share
is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seda.bench import BenchOptions, Server, drive, graph_data, settle  # noqa: E402


def with_admission(graph: Path, target: float, folder: Path) -> Path:
    spec = graph_data(graph)
    spec["acceptor"]["admission"] = {"target": target}
    out = folder / f"{graph.stem}-admission.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def point(graph: Path, path: str, logs: Path, tag: str, duration: float,
          connections: int, rate: float | None) -> dict[str, Any]:
    server = Server(BenchOptions(str(graph), ["seda"], [connections]), "seda",
                    logs / f"{tag}.log")
    try:
        port = server.start(path)
        settle(server.proc.pid)
        url = f"http://127.0.0.1:{port}{path}"
        # open loop: 3 s at the offered rate first (the controller settles), in the same
        # run, so the warm-up's backlog is not left to the server as work nobody waits for
        figures = drive("seda", url, connections, duration, rate, 5.0, 3.0 if rate else 0.0)
    finally:
        server.stop()
    figures["log"] = [line for line in (logs / f"{tag}.log").read_text().splitlines()
                      if "admission:" in line][-3:]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default=str(ROOT / "graphs" / "work.yaml"))
    parser.add_argument("--path", default="/cpu")
    parser.add_argument("--target", type=float, default=0.1, help="p90 target, seconds")
    parser.add_argument("--loads", default="0.5,1,2,4")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "docs" / "overload"))
    args = parser.parse_args()
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    graph = Path(args.graph).resolve()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        controlled = with_admission(graph, args.target, Path(tmp))
        peak = point(graph, args.path, logs, "capacity", args.duration, 32, None)
        capacity = peak["goodput"]
        print(f"capacity: {capacity:,.0f} 2xx/s (closed loop, 32 connections; p90 "
              f"{peak['ok_p90_ms']:.0f} ms)", flush=True)
        rows = []
        for load in [float(x) for x in args.loads.split(",")]:
            for mode, file in (("off", graph), ("on", controlled)):
                rate = round(load * capacity)
                figures = point(file, args.path, logs, f"{mode}-{load:g}x", args.duration,
                                args.connections, rate)
                row = {"admission": mode, "load": load, "offered": rate, **figures}
                rows.append(row)
                print(line(row, capacity), flush=True)
    report = render(rows, capacity, args, peak, time.time() - started)
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"capacity": peak, "rows": rows}, indent=1))
    print(report)
    plot(rows, capacity, args.target, args.path, out / "overload.png")
    return 0


def plot(rows: list[dict[str, Any]], capacity: float, target: float, path: str,
         file: Path) -> None:
    """Goodput and the p90 / p99 of admitted requests against the offered load, admission
    on and off (when matplotlib is installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_overload: no plot (pip install matplotlib)", file=sys.stderr)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in (("off", "o--"), ("on", "s-")):
        mine = [r for r in rows if r["admission"] == mode]
        loads = [r["load"] for r in mine]
        left.plot(loads, [r["goodput"] / capacity for r in mine], style,
                  label=f"admission {mode}")
        right.plot(loads, [r["ok_p90_ms"] for r in mine], style, label=f"p90, admission {mode}")
        right.plot(loads, [r["ok_p99_ms"] for r in mine], style, alpha=0.4,
                   label=f"p99, admission {mode}")
    left.axhline(0.9, color="grey", linestyle=":", label="0.9 of the peak")
    left.set_xlabel("offered load (x peak)")
    left.set_ylabel("goodput (x peak)")
    left.set_ylim(bottom=0)
    left.legend()
    right.axhline(target * 1000, color="grey", linestyle=":", label="p90 target")
    right.set_yscale("log")
    right.set_xlabel("offered load (x peak)")
    right.set_ylabel("latency of 2xx answers, ms")
    right.legend(fontsize="small")
    fig.suptitle(f"overload: {path}, peak {capacity:,.0f} 2xx/s, p90 target "
                 f"{target * 1000:.0f} ms")
    fig.tight_layout()
    fig.savefig(file, dpi=100)


def line(row: dict[str, Any], capacity: float) -> str:
    answered = sum(row["statuses"].values()) or 1
    shed = row["statuses"].get("503", 0) / answered
    return (f"| {row['admission']} | {row['load']:g}x | {row['offered']:,} | "
            f"{row['goodput']:,.0f} | {row['goodput'] / capacity:.2f} | {row['ok_p50_ms']:,.0f} | "
            f"{row['ok_p90_ms']:,.0f} | {row['ok_p99_ms']:,.0f} | {shed:.0%} | "
            f"{row['errors']} | {row['loadgen_cores']:.2f} |")


def render(rows: list[dict[str, Any]], capacity: float, args: argparse.Namespace,
           peak: dict[str, Any], took: float) -> str:
    head = ("| admission | load | offered req/s | goodput (2xx/s) | of peak | p50 ms | p90 ms "
            "| p99 ms | answered 503 | errors | loadgen cores |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    body = "\n".join(line(r, capacity) for r in rows)
    command = " ".join(["python", "tools/bench_overload.py", *sys.argv[1:]])
    return (f"# Overload: admission control on and off\n\n`{command}` "
            f"(about {max(1, round(took / 60))} minutes)\n\nGraph "
            f"`{Path(args.graph).name}`, path `{args.path}`, "
            f"p90 target {args.target * 1000:.0f} ms. Peak: {capacity:,.0f} 2xx/s (closed "
            f"loop, 32 connections, p90 {peak['ok_p90_ms']:.0f} ms). Open loop on "
            f"{args.connections} connections, {args.duration:g} s measured after 3 s at the "
            f"same rate (one run of the generator); every request due in the window is "
            f"followed to its answer; latencies of 2xx answers, from when each request was "
            f"due.\n\n"
            f"{head}\n{body}\n")


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    sys.exit(main())
