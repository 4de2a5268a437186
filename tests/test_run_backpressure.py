"""Back-pressure end to end: a fast source of 1,000,000 items through a slow sink keeps every
process's memory flat (the bounds are stated in docs/runtime.md)."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from tests.runkit import SedaRun

GRAPH = """
name: backpressure
source:
  handler: stagekit:numbers
  to: [double]
  options: {n: 1000000}
stages:
  double:
    handler: stagekit:double
    prefetch: 256
    to: [slow]
  slow:
    handler: stagekit:Slow
    prefetch: 64
    sink: true
    options: {every: 500, delay: 0.004}
"""
MB = 1 << 20
BOUND = {"source": 80 * MB, "worker double#0": 80 * MB, "worker slow#0": 120 * MB}


def test_a_slow_sink_slows_the_source_and_memory_stays_flat(tmp_path: Path) -> None:
    peaks: dict[str, int] = {}
    firsts: dict[str, int] = {}
    with SedaRun(tmp_path, GRAPH) as run:
        while run.proc.poll() is None:
            for kid in run.tree():
                try:
                    title = " ".join(kid.cmdline()).strip().removeprefix("seda: ")
                    rss = kid.memory_info().rss
                except psutil.Error:
                    continue
                firsts.setdefault(title, rss)
                peaks[title] = max(peaks.get(title, 0), rss)
            time.sleep(0.25)
        assert run.wait() == 0, run.stderr
    print({t: f"{p / MB:.0f} MB" for t, p in peaks.items()})
    assert run.results() == [{"count": 1_000_000}]
    for title, bound in BOUND.items():
        assert peaks[title] < bound, f"{title} peaked at {peaks[title] / MB:.0f} MB"
    # the source read only as fast as credit allowed: it held no backlog of a million items
    assert peaks["source"] - firsts["source"] < 16 * MB, peaks
