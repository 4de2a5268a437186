"""The pool controller and `seda scale` on a running service: real processes, real sockets."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.runkit import SedaRun, wait_for
from tests.test_status import pipelined_load

SCALED = """
name: {name}
acceptor:
  listen: 127.0.0.1:8080
  entry: web
  limits: {{request_timeout: 60}}
stages:
  web:
    handler: stagekit:web
    workers: 1
    prefetch: 2
    scale: {{min: 1, max: 3, queue: 4, after: 0.5, idle: 2, enabled: {auto}}}
"""


def live_workers(run: SedaRun) -> int:
    snap = run.status()
    return int(snap["stages"]["web"]["workers"])


def test_a_worker_is_added_under_sustained_backlog_and_retired_when_idle(
        tmp_path: Path) -> None:
    run = SedaRun(tmp_path, SCALED.format(name="autoscale", auto="true"),
                  "--listen", "127.0.0.1:0")
    port = run.port()
    with run:
        assert live_workers(run) == 1
        assert len(run.workers("seda: worker web#")) == 1  # the others are not started
        counts: list[int] = []
        load = threading.Thread(target=lambda: counts.extend(
            pipelined_load(port, 30, 6, path=b"/sleep?s=0.05")))
        load.start()  # 180 x 50 ms: 9 s for one worker
        wait_for(lambda: live_workers(run) == 3, 20, "the pool to grow to its max")
        assert len(run.workers("seda: worker web#")) == 3
        load.join(60)
        assert counts == [6] * 30  # every request answered, none lost to a scaling step
        wait_for(lambda: live_workers(run) == 1, 20, "idle workers to be retired")
        wait_for(lambda: len(run.workers("seda: worker web#")) == 1, 10, "their exit")
        snap = run.status()
        assert snap["stages"]["web"]["completed"] == 180  # retired workers' figures stay
        assert any("web 2 -> 1 workers (idle" in line for line in snap["scaling"])
        assert snap["restarts"] == 0  # a retirement is not a crash
        rows = {r["name"]: r for r in snap["workers"]}
        assert rows["web.0"]["pid"] and not rows["web.1"]["pid"] and not rows["web.2"]["pid"]
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr
    log = run.stderr
    assert "seda: scale: web 1 -> 2 workers (queue over 4, or saturated, for 0.5 s)" in log, log
    assert "seda: scale: web 2 -> 3 workers" in log and "web 3 -> 2 workers (idle" in log
    assert "web 2 -> 1 workers (idle" in log and "restarting" not in log


def test_seda_scale_changes_a_running_pool(tmp_path: Path) -> None:
    name = f"manual{abs(hash(tmp_path)) % 10_000}"
    run = SedaRun(tmp_path, SCALED.format(name=name, auto="false"), "--listen", "127.0.0.1:0")
    run.port()
    with run:
        url = run.status_url()

        def scale(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "seda.cli", "scale", *args],
                                  capture_output=True, text=True, timeout=30)

        done = scale("--url", url, "web=3")
        assert done.returncode == 0, done.stderr
        assert "web: 1 -> 3 workers" in done.stdout
        wait_for(lambda: len(run.workers("seda: worker web#")) == 3, 20, "three workers")
        wait_for(lambda: live_workers(run) == 3, 10, "the snapshot to show them")
        done = scale(name, "web=1")  # by the graph's name, as seda top finds it
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(run.workers("seda: worker web#")) == 1, 20, "back to one")
        for bad, why in ((["--url", url, "web=4"], "between 1 and 3"),
                         (["--url", url, "nope=2"], "no stage 'nope'"),
                         (["--url", url, "web"], "STAGE=N")):
            done = scale(*bad)
            assert done.returncode == 2 and why in done.stderr, (bad, done.stderr)
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr
    assert "seda: scale: web 1 -> 3 workers (seda scale)" in run.stderr


def test_a_pipeline_with_a_scaled_stage_runs_to_the_end(tmp_path: Path) -> None:
    """The source waits for the entry workers that are up, not for parked slots; the
    scaled stage grows under the load and every item is counted once."""
    graph = """
name: scaledpipe
source:
  handler: stagekit:numbers
  to: [slow]
  options: {n: 300}    # 300 x 20 ms: 6 s for one worker
stages:
  slow:
    handler: stagekit:slow_double
    workers: 1
    prefetch: 16
    to: [total]
    scale: {min: 1, max: 3, after: 0.5, idle: 30}
  total:
    handler: stagekit:Collect
    sink: true
"""
    with SedaRun(tmp_path, graph) as run:
        assert run.wait(60) == 0, run.stderr
    [total] = run.results()
    assert total == {"count": 300, "sum": 2 * sum(range(300))}
    assert "seda: scale: slow 1 -> 2 workers" in run.stderr, run.stderr


BATCHED = """
name: batched
acceptor: {listen: "127.0.0.1:8080", entry: web}
stages:
  web:
    handler: stagekit:web
    workers: 2
    prefetch: 16
    batching: {min: 1, max: 32, period: 0.25, budget: 0}
"""


def test_the_batching_controller_shrinks_the_window_under_a_light_load(
        tmp_path: Path) -> None:
    """One request at a time: throughput does not need big batches, so each worker's credit
    window shrinks from its prefetch (16) towards 1 (Sandstorm's rule alone: `budget: 0`;
    with a time budget it stops at 16, see test_control); a burst is still all answered."""
    import socket
    import time

    run = SedaRun(tmp_path, BATCHED, "--listen", "127.0.0.1:0")
    port = run.port()
    with run:
        def windows() -> list[int]:
            return [r["window"] for r in run.status()["workers"]]

        wait_for(lambda: windows() == [16, 16], 10, "the first reports")  # idle: it stays
        deadline = time.monotonic() + 20
        while max(windows()) > 4 and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
                s.recv(4096)
            time.sleep(0.02)
        assert max(windows()) <= 4, windows()
        assert pipelined_load(port, 20, 20) == [20] * 20  # and bursts are still served
        assert all(1 <= w <= 32 for w in windows()), windows()
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr


STARVED = """
name: starved
source:
  handler: stagekit:forever
  to: [double]
  options: {gap: 0}
stages:
  double:
    handler: stagekit:double
    prefetch: 1
    batching: {min: 1, max: 256, period: 0.25}
    to: [collect]
  collect:
    handler: stagekit:Collect
    sink: true
"""


def test_the_batching_controller_grows_a_window_its_senders_cannot_feed(
        tmp_path: Path) -> None:
    """A source far faster than a window of 1 lets it feed its worker: the source holds
    work back for lack of credit and says so in its frames, the worker has time to spare, so
    its window grows (doubling each period) -- in a real run, not the simulated one."""
    with SedaRun(tmp_path, STARVED) as run:
        seen: list[int] = []

        def window() -> int:
            rows = [r for r in run.status()["workers"] if r["pool"] == "double"]
            seen.append(int(rows[0]["window"]) if rows else 0)
            return seen[-1]

        try:
            wait_for(lambda: window() >= 16, 20, "the window to grow from 1")
        except AssertionError:
            raise AssertionError(f"windows seen: {sorted(set(seen))}; {run.err_file.read_text()}"
                                 ) from None
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 128 + signal.SIGTERM, run.stderr
    read = int(re.search(r"interrupted: (\d+) items", run.stderr).group(1))  # type: ignore
    [total] = run.results()
    assert total == {"count": read, "sum": 2 * sum(range(read))}



CHEAP = """
name: cheap
source: {handler: stagekit:numbers, to: [double], options: {n: 10000000}}
stages:
  double: {handler: stagekit:double, to: [collect]}
  collect: {handler: stagekit:Collect, sink: true}
"""
SLOW = CHEAP.replace("name: cheap", "name: slow").replace(
    "to: [collect]}", "to: [slow]}\n  slow: {handler: stagekit:slow_double, to: [collect]}")


def windows_until(run: SedaRun, seen: dict[str, set[int]],
                  enough: Callable[[dict[str, set[int]]], bool], what: str) -> None:
    """Add every worker window seen, by pool, to `seen` until `enough` of them are."""

    def look() -> bool:
        for row in run.status()["workers"]:
            seen.setdefault(row["pool"], set()).add(int(row["window"]))
        return enough(seen)

    try:
        wait_for(look, 20, what)
    except AssertionError:
        raise AssertionError(f"windows seen: {seen}; {run.err_file.read_text()}") from None


@pytest.mark.parametrize("graph", [CHEAP, SLOW], ids=["cheap", "slow"])
def test_with_the_defaults_a_cheap_stage_batches_hundreds_and_a_slow_one_stays_small(
        tmp_path: Path, graph: str) -> None:
    """No prefetch, no batching in the graph: every stage gets the batching controller.
    Cheap: the stage's window grows from 8 to hundreds (its senders hold work back while
    it has time to spare). Slow (a 20 ms stage after it): that stage's window is 1, its
    time budget (10 ms of work a window), and the cheap stage in front of it stays small
    too (at most 16), so little waits in front of the slow
    stage and the drain after SIGTERM ends in time. Nothing is lost."""
    seen: dict[str, set[int]] = {}
    with SedaRun(tmp_path, graph) as run:
        if graph == CHEAP:
            windows_until(run, seen, lambda s: max(s.get("double", {0})) >= 256,
                          "the cheap stage's window to grow to hundreds")
        else:
            windows_until(run, seen, lambda s: 1 in s.get("slow", ()),
                          "the slow stage's window to be 1")
            until = time.monotonic() + 2  # what the windows do while the run goes on
            windows_until(run, seen, lambda s: time.monotonic() > until, "2 s more")
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 128 + signal.SIGTERM, run.stderr
    if graph == SLOW:
        assert max(seen["double"]) <= 16, seen  # (8: the window each starts with; 16: the
        # most a warm start doubles it to before the slow stage's backlog shows)
        assert max(seen["slow"]) <= 8, seen
    read = int(re.search(r"interrupted: (\d+) items", run.stderr).group(1))  # type: ignore
    [total] = run.results()
    factor = 4 if graph == SLOW else 2
    assert total == {"count": read, "sum": factor * sum(range(read))}
