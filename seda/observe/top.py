"""`seda top`: a live terminal view of a running graph (rich), from its `/api/status`.

Finds the graph by name (its run directory in the temp folder holds `status.url`), by run
directory, or takes `--url`. One table in the columns of `nodetool tpstats`, a sparkline of
throughput per stage, the queue depth on every edge, the bottleneck highlighted.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from seda.errors import RunError
from seda.plan import rundir

BARS = "▁▂▃▄▅▆▇█"
PIPE_WIDTH = 1000  # columns of `seda top --once` written to a pipe or a file
FIRST_FIGURES_WAIT = 5.0  # s: how long `--once` waits for a graph that has just started


def find_run(target: str | None) -> Path:
    """The run directory of a running graph with a status endpoint: `target` is a graph
    name or a run directory. Only private run directories of this user count (see
    rundir.is_private): a planted one would receive the status token."""
    return rundir.find(target, "status.url", "; give --url or a run directory")


def find_url(target: str | None) -> tuple[str, str]:
    """(status URL, status token or "") of a running graph; the token file, when the run
    has one, is readable by its owner only."""
    run = find_run(target)
    token = run / "status.token"
    return ((run / "status.url").read_text().strip(),
            token.read_text().strip() if rundir.private_file(token) else "")


def _call(url: str, path: str, token: str, body: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    """GET (or POST `body` as JSON to) the status endpoint; a 400's error is a ValueError,
    anything else that fails a RunError."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, Any] = json.load(response)
            return answer
    except urllib.error.HTTPError as exc:
        if exc.code == 400:
            raise ValueError(json.load(exc).get("error", "refused")) from None
        hint = " (give --token)" if exc.code == 401 else ""
        raise RunError(f"cannot use {url}{path}: {exc}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RunError(f"cannot reach {url}{path}: {exc}") from None


def fetch(url: str, token: str = "") -> dict[str, Any]:
    return _call(url, "/api/status", token)


def post_scale(url: str, token: str, stage: str, workers: int) -> dict[str, Any]:
    """Ask a running graph to resize a stage's pool; ValueError carries its refusal."""
    return _call(url, "/api/scale", token, {"stage": stage, "workers": workers})


def sparkline(values: list[float]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))]
                   for v in values)


def _p50_p99(ms: dict[str, float]) -> str:
    """Recent percentiles (service time or queue wait): median and 99th, in ms."""
    return f"{ms['p50']:.3g}/{ms['p99']:.3g}" if ms else "-"


def render(snap: dict[str, Any], before: dict[str, Any] | None = None,
           workers: bool = False) -> Group:
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
                      f"{front['timeouts']} timeouts (504) · {front.get('failed', 0)} failed "
                      f"(500) · {front['protocol_errors']} protocol errors")
        for door, adm in (front.get("admission") or {}).items():
            limit = "open" if adm["rate"] is None else f"{adm['rate']:,.0f} req/s"
            if adm.get("limit") is not None:
                limit += f", at most {adm['limit']:,.0f} in flight"
            header.append(f"\nadmission ({door}): {limit} for a p90 under "
                          f"{adm['target'] * 1000:.0f} ms" +
                          (f" · last: {adm['last']}" if adm.get("last") else ""))
        if front.get("classes"):
            header.append("\nclasses: " + " · ".join(
                f"{cls} (priority {c['priority']}): {c['requests']} requests, "
                f"{c['rejected']} rejected" for cls, c in front["classes"].items()))
    if snap.get("scaling"):
        header.append(f"\nlast pool change: {snap['scaling'][-1]}")
    found = snap.get("diagnosis")
    if found:
        header.append(f"\nbottleneck: {found['stage']} -- {found['why']}; try "
                      f"{found['knob']}", style="bold red")
    table = Table(expand=False)
    for column in ("Stage", "Workers", "Active", "Pending", "Peak", "Completed", "Blocked",
                   "Dropped", "Errors", "Done/s", "Service ms", "Wait ms",
                   "Throughput history"):
        table.add_column(column, justify="left" if column[0] in "ST" else "right")
    worst = snap.get("bottleneck")
    for name, st in snap["stages"].items():
        rates = [h[0] for h in st["history"]][-30:]
        style = "bold red" if name == worst else None
        label = f"{name} ◀ bottleneck" if name == worst else name
        table.add_row(label, str(st["workers"]), f"{st['active']:.1f}", str(st["pending"]),
                      str(st["peak_pending"]), f"{st['completed']:,}", str(st["blocked"]),
                      str(st["dropped"]), str(st["errors"]), f"{st['throughput']:,.0f}",
                      _p50_p99(st.get("service_ms", {})), _p50_p99(st.get("wait_ms", {})),
                      sparkline(rates), style=style)
    edges = Text("queues: " + ("  ".join(f"{e['from']} → {e['to']} {e['depth']} "
                                         f"(peak {e['peak']})" for e in snap["edges"])
                               or "none yet") + "   (ms: p50/p99 of the last 5 s)")
    if not workers:
        return Group(header, table, edges)
    rows = Table(expand=False, title="workers")
    hosts = any(row.get("host") for row in snap.get("workers", []))  # (workers that joined)
    for column in ("Worker", "Pid", "Restarts", "Busy", "Queued", "Window", "Memory",
                   "Received", "Completed", "Errors", *(["Host"] if hosts else [])):
        rows.add_column(column, justify="left" if column in ("Worker", "Host") else "right")
    for row in snap.get("workers", []):
        rows.add_row(row["name"], str(row["pid"] or "down"), str(row["restarts"]),
                     f"{row['utilisation']:.0%}", str(row["queued"]),
                     str(row.get("window", "-")),
                     f"{row['rss'] / (1 << 20):.0f} MiB" if row.get("rss") else "-",
                     f"{row['received']:,}",
                     f"{row['completed']:,}", str(row["errors"]),
                     *([row.get("host") or "here"] if hosts else []))
    return Group(header, table, edges, rows)


def top(url: str, once: bool, interval: float, console: Console | None = None,
        workers: bool = False, token: str = "", as_json: bool = False) -> int:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: whole lines, not cut to 80 columns
            console = Console(width=PIPE_WIDTH)
    snap = fetch(url, token)
    if once or as_json:  # a graph that has just started has its figures within a second
        deadline = time.monotonic() + FIRST_FIGURES_WAIT
        while "stages" not in snap and time.monotonic() < deadline:
            time.sleep(0.1)
            snap = fetch(url, token)
        if as_json:
            print(json.dumps(snap), flush=True)  # the snapshot /api/status serves
        else:
            console.print(render(snap, workers=workers))
        return 0
    from rich.live import Live

    before: dict[str, Any] | None = None
    with Live(render(snap, workers=workers), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            try:
                before, snap = snap, fetch(url, token)
            except RunError:
                live.stop()
                console.print("seda top: the graph has stopped")
                return 0
            live.update(render(snap, before, workers))
