"""`seda top`: a live terminal view of a running graph (rich), from its `/api/status`.

Finds the graph by name (its run directory in the temp folder holds `status.url`), by run
directory, or takes `--url`. One table in the columns of `nodetool tpstats`, a sparkline of
throughput per stage, the queue depth on every edge, the bottleneck highlighted.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from seda.errors import RunError

BARS = "▁▂▃▄▅▆▇█"


def find_url(target: str | None) -> str:
    """The status URL of a running graph: `target` is a graph name or a run directory."""
    if target and Path(target, "status.url").is_file():
        return Path(target, "status.url").read_text().strip()
    pattern = f"seda-{target}-*" if target else "seda-*"
    found = sorted(Path(tempfile.gettempdir()).glob(f"{pattern}/status.url"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        what = f"named '{target}'" if target else "at all"
        raise RunError(f"no running graph {what} (looked for {tempfile.gettempdir()}/"
                       f"{pattern}/status.url); give --url or a run directory")
    if len(found) > 1:
        runs = ", ".join(str(p.parent) for p in found)
        raise RunError(f"several running graphs match: {runs}; name one run directory")
    return found[0].read_text().strip()


def fetch(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/api/status", timeout=5) as response:
            data: dict[str, Any] = json.load(response)
            return data
    except (urllib.error.URLError, OSError) as exc:
        raise RunError(f"cannot read {url}/api/status: {exc}") from None


def sparkline(values: list[float]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))]
                   for v in values)


def _service(ms: dict[str, float]) -> str:
    """Recent service time (handler time per message), median and 99th percentile."""
    return f"{ms['p50']:.3g}/{ms['p99']:.3g}" if ms else "-"


def render(snap: dict[str, Any], before: dict[str, Any] | None = None) -> Group:
    """The view of one snapshot (`before`, the previous one, gives the acceptor's rates)."""
    if "stages" not in snap:
        return Group(Text("waiting for the graph's first figures (it has just started)"))
    header = Text(f"graph {snap['graph']} · model {snap['model']} · up {snap['uptime']:.0f} s"
                  f" · restarts {snap['restarts']} · dead letters {snap['dead_letters']}")
    front = snap.get("front")
    if front:
        rate = 0.0
        if before and before.get("front") and snap["time"] > before["time"]:
            rate = ((front["responses"] - before["front"]["responses"])
                    / (snap["time"] - before["time"]))
        header.append(f"\nacceptor: {front['connections']} connections · {rate:,.0f} replies/s"
                      f" · {front['requests']} requests · {front['rejected']} rejected (503) · "
                      f"{front['timeouts']} timeouts (504) · {front['protocol_errors']} "
                      f"protocol errors")
    table = Table(expand=False)
    for column in ("Stage", "Workers", "Active", "Pending", "Peak", "Completed", "Blocked",
                   "Dropped", "Errors", "Done/s", "p50/p99 ms", "Throughput history"):
        table.add_column(column, justify="left" if column[0] in "ST" else "right")
    worst = snap.get("bottleneck")
    for name, st in snap["stages"].items():
        rates = [h[0] for h in st["history"]][-30:]
        style = "bold red" if name == worst else None
        label = f"{name} ◀ bottleneck" if name == worst else name
        table.add_row(label, str(st["workers"]), f"{st['active']:.1f}", str(st["pending"]),
                      str(st["peak_pending"]), f"{st['completed']:,}", str(st["blocked"]),
                      str(st["dropped"]), str(st["errors"]), f"{st['throughput']:,.0f}",
                      _service(st.get("service_ms", {})), sparkline(rates), style=style)
    edges = Text("queues: " + ("  ".join(f"{e['from']} → {e['to']} {e['depth']} "
                                         f"(peak {e['peak']})" for e in snap["edges"])
                               or "none yet"))
    return Group(header, table, edges)


def top(url: str, once: bool, interval: float, console: Console | None = None) -> int:
    console = console or Console()
    snap = fetch(url)
    if once:
        console.print(render(snap))
        return 0
    from rich.live import Live

    before: dict[str, Any] | None = None
    with Live(render(snap), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            try:
                before, snap = snap, fetch(url)
            except RunError:
                live.stop()
                console.print("seda top: the graph has stopped")
                return 0
            live.update(render(snap, before))
