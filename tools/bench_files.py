"""File replies: sendfile from the acceptor against the file's bytes sent back by the stage.

    python tools/bench_files.py [--duration 5] [--connections 16]    (needs wrk)

For each file size (4 KiB, 64 KiB, 1 MiB) and both handlers of stages/static.py, one fresh
`seda run graphs/static.yaml` (one worker) and `wrk -t1 -cN -dS` fetching that file:
  sendfile  `serve`: the stage answers {"file": path}; the acceptor sends it with sendfile(2)
  inline    `inline`: the stage reads the file and answers its bytes, which travel worker ->
            acceptor as a msgpack frame and are written by the event loop
Prints requests/s, MB/s and sendfile's ratio to inline. wrk shares the 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml
from bench_http import ROOT, free_port, seda, stop, wrk

from seda.bench import graph_data

SIZES = (4 << 10, 64 << 10, 1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        graphs = {}
        for handler in ("serve", "inline"):
            graph = site / f"{handler}.yaml"
            spec = graph_data(ROOT / "graphs" / "static.yaml")
            spec["stages"]["files"].update(handler=f"stages.static:{handler}")
            spec["stages"]["files"]["options"]["root"] = str(site)
            graph.write_text(yaml.safe_dump(spec, sort_keys=False))
            graphs[handler] = graph
        rows = []
        for size in SIZES:
            (site / f"{size}.bin").write_bytes(bytes(range(256)) * (size // 256))
            figures = {}
            for handler, name in (("serve", "sendfile"), ("inline", "inline")):
                port = free_port()
                proc = seda(str(graphs[handler]), port)
                try:
                    figures[name] = wrk(port, args.connections, args.duration, f"/{size}.bin")
                finally:
                    stop(proc)
            rows.append((size, figures))
    print(f"\nfile replies: wrk -t1 -c{args.connections} -d{args.duration}s, one worker")
    print(f"  {'size':>8} {'handler':<9} {'req/s':>9} {'MB/s':>8} {'p99 ms':>8} {'ratio':>6}")
    for size, figures in rows:
        inline = figures["inline"][0]
        for name, (rps, _, p99) in figures.items():
            print(f"  {size >> 10:>6} K {name:<9} {rps:>9,.0f} {rps * size / 1e6:>8.1f} "
                  f"{p99:>8.2f} {rps / inline:>6.2f}")


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
