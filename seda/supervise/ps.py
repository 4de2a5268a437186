"""`seda ps` and `seda stop`: the graphs this user runs on this machine, found by their run
directories (see seda.plan.rundir: private to the user, each with its supervisor's pid and start
time, so a recycled pid is never signalled)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from seda.plan import rundir


def describe(run: Path) -> dict[str, Any]:
    """What `seda ps` shows of one run directory."""
    def text(name: str) -> str:
        path = run / name
        return path.read_text().strip() if rundir.private_file(path) else ""

    try:
        plan = json.loads(text("plan.json") or "{}")
    except ValueError:
        plan = {}
    pid = rundir.owner_pid(run)
    try:
        up = time.time() - psutil.Process(pid).create_time()
    except psutil.Error:
        up = 0.0
    return {"graph": plan.get("graph", run.name), "pid": pid, "model": plan.get("model", "?"),
            "uptime": round(up, 1), "listen": text("listen.url"), "status": text("status.url"),
            "run_dir": str(run)}


def table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns, one line a graph (whole lines: meant for terminals and pipes)."""
    head = ("GRAPH", "PID", "MODEL", "UP", "LISTEN", "STATUS", "RUN DIR")
    lines = [head] + [(r["graph"], str(r["pid"]), r["model"], _duration(r["uptime"]),
                       r["listen"] or "-", r["status"] or "-", r["run_dir"]) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else \
        f"{secs}s"


def stop(run: Path, timeout: float) -> bool:
    """SIGTERM the supervisor of `run` (it drains: requests in flight are answered, a
    pipeline finishes what it read) and wait up to `timeout` s for it to end; True if it
    did."""
    pid = rundir.owner_pid(run)
    if not pid or not rundir.is_live(run):  # (checks the pid's start time: not recycled)
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rundir.is_live(run):
            return True
        time.sleep(0.05)
    return not rundir.is_live(run)
