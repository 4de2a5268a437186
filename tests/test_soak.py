"""Memory under overload: a service offered twice what it can do for a minute keeps every
process's memory flat, and keeps answering (200, or an explicit 503/504)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.runkit import SedaRun

# two workers of 10 ms each: capacity ~200 req/s, offered 400 req/s (open loop)
SOAK = """
name: soak
acceptor:
  listen: 127.0.0.1:8080
  protocol: http
  entry: web
  limits: {request_timeout: 3}
stages:
  web:
    handler: stagekit:web
    workers: 2
    prefetch: 4
    queue: 200
"""
SECONDS = float(os.environ.get("SEDA_SOAK_SECONDS", "60"))
RATE = 400
SETTLED = min(10.0, SECONDS / 3)  # s: RSS then is the baseline each process is held to
WATCHED = 10.0  # s after SETTLED, at least, over which growth is looked for
GROWTH = 16 << 20  # at most this much above the baseline ...
CEILING = 200 << 20  # ... and never above this


def test_a_minute_at_twice_capacity_keeps_memory_flat(tmp_path: Path) -> None:
    # a run too short to see growth after the baseline would pass whatever happened
    assert SECONDS >= SETTLED + WATCHED, (f"SEDA_SOAK_SECONDS={SECONDS:g} leaves no time to "
                                          f"watch memory after the baseline; use 20 or more")
    with SedaRun(tmp_path, SOAK, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        load = subprocess.Popen(
            [sys.executable, "-m", "seda.bench.loadgen", f"http://127.0.0.1:{port}/sleep?s=0.01",
             "-c", "32", "-r", str(RATE), "-d", str(SECONDS), "-t", "10"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            started = time.monotonic()
            rss: dict[str, list[tuple[float, int]]] = {}
            while load.poll() is None:
                for proc in [psutil.Process(run.pid), *run.tree()]:
                    try:
                        title = proc.cmdline()[0].split(" (")[0].strip()
                        rss.setdefault(title, []).append((time.monotonic() - started,
                                                          proc.memory_info().rss))
                    except (psutil.NoSuchProcess, IndexError):
                        pass
                time.sleep(1.0)
            out, err = load.communicate(timeout=30)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        assert load.returncode == 0, err
        figures = json.loads(out)
        assert set(figures["statuses"]) <= {"200", "503", "504"}, figures
        assert figures["errors"] == 0, figures
        assert figures["statuses"].get("200", 0) > 50 * SECONDS, figures  # kept working
        assert figures["statuses"].get("503", 0) > 0, figures  # and was overloaded
        lines = []
        for title, samples in sorted(rss.items()):
            base = max(v for t, v in samples if t <= SETTLED)
            later = [v for t, v in samples if t > SETTLED]
            assert len(later) >= WATCHED - 1, (title, samples)  # watched after the baseline
            peak = max(later)
            lines.append(f"{title}: {base >> 20} MB at {SETTLED:.0f} s, peak {peak >> 20} MB")
            assert peak <= base + GROWTH and peak <= CEILING, lines[-1]
        print(f"\n{SECONDS:.0f} s at {RATE} req/s offered: {figures['statuses']}; "
              + "; ".join(lines))
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr
