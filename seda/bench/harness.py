"""`seda bench`: one graph under several server models, driven by one load generator, side by
side; a report (markdown table, JSON, plots) of throughput, latency and server CPU.

For each model it starts `seda run FILE --model M --listen 127.0.0.1:0` (a real server, as a
user would run it), then for each path and connection count: a warm-up, then a measured
window during which the server's CPU (supervisor and every descendant, including MP's reaped
connection processes) is sampled with psutil. The load generator is wrk when installed and
the load is closed-loop, else seda's own (`seda.bench.loadgen`, also the only open-loop one); it
runs in its own process and its CPU share is reported too, since it shares the machine.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

from seda.errors import RunError
from seda.names import MODELS
from seda.runtime.listener import raise_fd_limit

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50": %d, "p90": %d, "p99": %d, "max": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
COLUMNS = ("model", "connections", "rps", "ok_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms",
           "errors", "non_2xx", "server_cores", "sys_share", "processes", "loadgen_cores")


@dataclass
class BenchOptions:
    file: str
    models: list[str]
    connections: list[int]
    paths: list[str] = field(default_factory=lambda: ["/"])
    duration: float = 10.0
    warmup: float = 1.0
    rate: float | None = None  # open loop at this many requests/s (seda's generator)
    loadgen: str = "auto"  # auto | wrk | seda
    out: str = "bench-report"
    processes: int | None = None  # passed to symped and mp
    timeout: float = 5.0
    command: str = ""  # how the bench was invoked, for the report
    app_dirs: list[str] = field(default_factory=list)  # --app-dir, passed on to each run


def tree_cpu(pid: int) -> tuple[float, float, int]:
    """(user, system) CPU seconds of `pid` and all its descendants, with the children they
    have reaped, and how many processes there are."""
    user = system = 0.0
    count = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0, 0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user += t.user + t.children_user
        system += t.system + t.children_system
        count += 1
    return user, system, count


def stop_on_sigterm() -> None:
    """SIGTERM ends a benchmark as Ctrl-C does: it unwinds, and the `finally` blocks stop
    the servers it started (killed outright, a benchmark left them running)."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))


class Server:
    """A `seda run` of the graph under one model, on a free port, stopped on exit."""

    def __init__(self, options: BenchOptions, model: str, log: Path) -> None:
        args = [sys.executable, "-m", "seda.cli", "run", options.file, "--model", model,
                "--listen", "127.0.0.1:0", "--no-progress"]
        if options.processes and model in ("symped", "mp"):
            args += ["--processes", str(options.processes)]
        for folder in options.app_dirs:
            args += ["--app-dir", folder]
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        self.port = 0

    def start(self, path: str, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while not self.port:
            match = re.search(r"listening on \w+://[^ ]+:(\d+)", self.log.read_text())
            if match:
                self.port = int(match.group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RunError(f"the server did not start: {self.log.read_text().strip()}")
            else:
                time.sleep(0.05)
        while True:  # ready when it answers (the port is open before the children are up)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5):
                    return self.port
            except urllib.error.HTTPError:
                return self.port  # an answer, even an error status, means it is up
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RunError(f"the server does not answer: {self.log.read_text()}"
                                   ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc)  # (its children die with it: PR_SET_PDEATHSIG)


def stop_process(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    """SIGTERM (a server drains), then SIGKILL after `grace` seconds; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pick_loadgen(options: BenchOptions) -> str:
    if options.loadgen == "auto":
        return "wrk" if shutil.which("wrk") and options.rate is None else "seda"
    if options.loadgen == "wrk":
        if shutil.which("wrk") is None:
            raise RunError("--loadgen wrk: wrk is not installed (apt-get install wrk)")
        if options.rate is not None:
            raise RunError("--rate (open loop) needs --loadgen seda: wrk is closed-loop")
    return options.loadgen


def seconds(loadgen: str, duration: float) -> float:
    """The duration a generator can do: wrk counts whole seconds."""
    return float(max(1, round(duration))) if loadgen == "wrk" else duration


def _communicate(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RunError("the load generator did not finish in time") from None
    return out


def drive(loadgen: str, url: str, connections: int, duration: float,
          rate: float | None, timeout: float, warmup: float = 0.0) -> dict[str, Any]:
    """One load run; returns the load generator's figures (latencies in ms). Its CPU is what
    this process's reaped children used meanwhile (the generator is the only one). `warmup`
    (seda's generator only): seconds of the same load before the measured window, in the
    same run -- so what the warm-up left queued is still answered to the same client."""
    before = os.times()
    if loadgen == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT)
        try:
            proc = subprocess.Popen(
                ["wrk", "-t1", f"-c{connections}", f"-d{seconds(loadgen, duration):g}s",
                 f"--timeout={max(1, round(timeout))}s", "-s", script.name, url],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out = _communicate(proc, duration + 60)
        finally:
            os.unlink(script.name)
        line = next((x for x in reversed(out.splitlines()) if x.startswith("{")), None)
        if line is None:
            raise RunError(f"wrk gave no figures: {out.strip()[-300:]}")
        w = json.loads(line)
        took = w["duration_us"] / 1e6
        kinds = {k: w[k] for k in ("connect", "read", "write", "timeout") if w[k]}
        figures = {"requests": w["requests"], "duration": round(took, 3),
                   "rps": round(w["requests"] / took, 1),
                   **{f"{k}_ms": round(w[k] / 1000, 3) for k in ("p50", "p90", "p99", "max")},
                   "errors": sum(kinds.values()), "error_kinds": kinds, "non_2xx": w["status"]}
    else:
        args = [sys.executable, "-m", "seda.bench.loadgen", url, "-c", str(connections), "-d",
                str(duration), "-t", str(timeout), "-w", str(warmup)]
        if rate:
            args += ["-r", str(rate)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        out = _communicate(proc, warmup + duration + timeout + 60)
        if proc.returncode != 0 or not out.strip():
            raise RunError(f"the load generator failed (exit {proc.returncode})")
        figures = json.loads(out)
        figures.pop("loadgen_cpu", None)
    after = os.times()
    used = (after.children_user - before.children_user
            + after.children_system - before.children_system)
    figures["loadgen_cores"] = round(used / max(duration + (warmup if loadgen == "seda" else 0),
                                               1e-9), 2)
    return figures


def settle(pid: int, idle_cores: float = 0.15, most: float = 60.0) -> float:
    """Wait until the server is idle again (what one point left behind -- a backlog of
    closed connections, queued requests -- must not be charged to the next); returns the
    seconds waited."""
    start = time.monotonic()
    user, system, _ = tree_cpu(pid)
    while time.monotonic() - start < most:
        time.sleep(0.5)
        user2, system2, _ = tree_cpu(pid)
        if (user2 - user) + (system2 - system) < idle_cores * 0.5:
            break
        user, system = user2, system2
    return round(time.monotonic() - start, 1)


def measure(server: Server, loadgen: str, path: str, connections: int,
            options: BenchOptions) -> dict[str, Any]:
    settled = settle(server.proc.pid)
    url = f"http://127.0.0.1:{server.port}{path}"
    if options.warmup > 0:
        drive(loadgen, url, connections, options.warmup, options.rate, options.timeout)
        settled += settle(server.proc.pid)  # the warm-up's closed connections are gone
    duration = seconds(loadgen, options.duration)
    user0, sys0, _ = tree_cpu(server.proc.pid)
    peak = [0]  # most server processes seen during the window (mp: one per client)
    done = threading.Event()

    def count() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], tree_cpu(server.proc.pid)[2])

    sampler = threading.Thread(target=count, daemon=True)
    sampler.start()
    try:
        figures = drive(loadgen, url, connections, duration, options.rate, options.timeout)
    finally:
        done.set()
        sampler.join()
    user1, sys1, count_end = tree_cpu(server.proc.pid)
    processes = max(peak[0], count_end)
    used = (user1 - user0) + (sys1 - sys0)
    figures.update(server_user=round(user1 - user0, 3), server_system=round(sys1 - sys0, 3),
                   server_cores=round(used / figures["duration"], 2) if figures["duration"]
                   else 0.0, sys_share=round((sys1 - sys0) / used, 3) if used > 0 else 0.0,
                   processes=processes, settle_s=settled)
    return figures


@contextmanager
def serving(options: BenchOptions, model: str, path: str, logs: Path) -> Iterator[Server]:
    server = Server(options, model, logs / f"{model}.log")
    try:
        server.start(path)
        yield server
    finally:
        server.stop()


def run_bench(options: BenchOptions, console: Console | None = None) -> list[dict[str, Any]]:
    """Run every (model, path, connections) point, printing a line for each; returns the
    rows (also written to OUT/results.json, with OUT/report.md and the plots)."""
    unknown = [m for m in options.models if m not in MODELS]
    if unknown:
        raise RunError(f"unknown model(s): {', '.join(unknown)}; models: {', '.join(MODELS)}")
    loadgen = pick_loadgen(options)
    out = Path(options.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    raise_fd_limit(2 * max(options.connections) + 256)  # inherited by the load generators
    rows: list[dict[str, Any]] = []
    total = len(options.models) * len(options.paths) * len(options.connections)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with RichProgress(*columns, console=console, transient=True,
                      disable=not console.is_terminal) as bar:
        task = bar.add_task("starting", total=total)
        for model in options.models:
            bar.update(task, description=f"{model}: starting")
            with serving(options, model, options.paths[0], logs) as server:
                for path in options.paths:
                    for connections in options.connections:
                        bar.update(task, description=f"{model} {path} c={connections}")
                        row = {"model": model, "path": path, "connections": connections,
                               "rate": options.rate, "loadgen": loadgen,
                               **measure(server, loadgen, path, connections, options)}
                        rows.append(row)
                        console.print(line_of(row), highlight=False, soft_wrap=True)
                        bar.advance(task)
    write_report(options, loadgen, rows)
    return rows


def ok_rps(row: dict[str, Any]) -> float:
    """Answers with a status below 400, per second (503s of a full queue do not count)."""
    return (row["requests"] - row["non_2xx"]) / row["duration"] if row["duration"] else 0.0


def line_of(row: dict[str, Any]) -> str:
    return (f"{row['model']:>6} {row['path']:<8} c={row['connections']:<5} "
            f"{row['rps']:>10,.0f} req/s ({ok_rps(row):,.0f} ok)  p50 {row['p50_ms']:.2f}  "
            f"p99 {row['p99_ms']:.2f} ms  errors {row['errors']}  "
            f"server {row['server_cores']:.2f} cores "
            f"(sys {row['sys_share']:.0%})  loadgen {row['loadgen_cores']:.2f} cores")


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), {mem:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def write_report(options: BenchOptions, loadgen: str, rows: list[dict[str, Any]]) -> None:
    out = Path(options.out)
    meta = {"command": options.command, "machine": machine(), "loadgen": loadgen,
            "date": time.strftime("%Y-%m-%d %H:%M"), "duration": options.duration,
            "warmup": options.warmup, "rate": options.rate, "file": options.file}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plots = plot(options, rows)
    load = f"open loop at {options.rate:g} req/s" if options.rate else "closed loop"
    lines = [f"# seda bench: {Path(options.file).name}", "",
             f"- command: `{options.command}`" if options.command else "",
             f"- machine: {meta['machine']}",
             f"- load: {loadgen}, {load}, "
             f"{options.duration:g} s measured after {options.warmup:g} s warm-up per point",
             f"- date: {meta['date']}", "",
             "Columns: rps = answered requests per second, ok_rps = those answered with a "
             "status below 400 (the plots show these); latencies in ms (of all answers); "
             "server_cores = CPU seconds used by all server processes per second of wall "
             "time; sys_share = "
             "kernel share of that CPU; processes = most server processes seen during the "
             "window; loadgen_cores = the load generator's CPU on the same machine. Before the "
             "warm-up and again before the measured window the bench waits until the server "
             "is idle (results.json: settle_s). '-': nothing was answered in the window.", ""]
    for path in options.paths:
        lines += [f"## {path}", ""]
        for name in plots.get(path, []):
            lines.append(f"![{path}]({name})")
        lines += ["", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join("---:" if c != "model" else "---" for c in COLUMNS) + "|"]
        for row in rows:
            if row["path"] == path:
                lines.append("| " + " | ".join(_cell(row, c) for c in COLUMNS) + " |")
        lines.append("")
    (out / "report.md").write_text("\n".join(x for x in lines if x is not None) + "\n")


def _cell(row: dict[str, Any], column: str) -> str:
    if column.endswith("_ms") and not row["requests"]:
        return "-"  # nothing answered in the window: no latency to show
    if column == "ok_rps":
        return f"{ok_rps(row):,.0f}"
    value = row[column]
    if column == "rps":
        return f"{value:,.0f}"
    if column == "sys_share":
        return f"{value:.0%}"
    return str(value)


def plot(options: BenchOptions, rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Throughput and p99 against connections, a line per model: OUT/PATH.png and .svg."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("seda bench: no plots (pip install matplotlib)", file=sys.stderr)
        return {}
    made: dict[str, list[str]] = {}
    for path in options.paths:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
        for model in options.models:
            points = sorted((r["connections"], ok_rps(r), r["p99_ms"], r["requests"])
                            for r in rows if r["path"] == path and r["model"] == model)
            if not points:
                continue
            line = top.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                            label=model)[0]
            answered = [p for p in points if p[3]]  # no p99 where nothing was answered
            bottom.plot([p[0] for p in answered], [p[2] for p in answered], marker="o",
                        label=model, color=line.get_color())
        top.set_ylabel("ok requests / s")
        top.set_title(f"{Path(options.file).name} {path}")
        bottom.set_ylabel("p99 latency (ms)")
        bottom.set_yscale("log")
        bottom.set_xlabel("connections")
        bottom.set_xscale("log", base=2)
        bottom.set_xticks(options.connections, [str(c) for c in options.connections])
        top.legend()
        top.grid(True, alpha=0.3)
        bottom.grid(True, alpha=0.3)
        fig.tight_layout()
        stem = path.strip("/").replace("/", "_") or "root"
        made[path] = []
        for ext in ("png", "svg"):
            fig.savefig(Path(options.out) / f"{stem}.{ext}")
            made[path].append(f"{stem}.{ext}")
        plt.close(fig)
    return made


def graph_data(file: str | Path) -> dict[str, Any]:
    """A YAML graph file as data to edit and write elsewhere (a benchmark's variant): its
    `path` folders made absolute, so the copy imports the same handlers wherever it is."""
    import yaml

    data: dict[str, Any] = yaml.safe_load(Path(file).read_text())
    home = Path(file).resolve().parent
    data["path"] = [str((home / folder).resolve()) for folder in data.get("path", [])]
    return data
