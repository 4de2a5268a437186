"""Faults with real processes: killed workers, raising handlers, restart limits, signals."""

from __future__ import annotations

import json
import os
import signal
import stat
import tempfile
import time
from pathlib import Path

import psutil

from tests.runkit import SedaRun, wait_for

CHAIN = """
name: chain
source:
  handler: stagekit:numbers
  to: [double]
  options: {{n: {n}, gap: {gap}}}
stages:
  double:
    handler: stagekit:{handler}
    workers: 2
    prefetch: 16
    to: [collect]
    options: {{bad: {bad}}}
  collect:
    handler: stagekit:Collect
    sink: true
settings:
  max_attempts: {attempts}
  dead_letter: dead.jsonl
  drain_timeout: 5
  restarts: {{max: {restarts}, within: 10}}
"""


def chain(n: int = 2000, gap: float = 0.0, handler: str = "double", bad: int = -1,
          attempts: int = 3, restarts: int = 10) -> str:
    return CHAIN.format(n=n, gap=gap, handler=handler, bad=bad, attempts=attempts,
                        restarts=restarts)


def test_sigkill_of_a_worker_mid_run_loses_nothing(tmp_path: Path) -> None:
    n = 3000
    with SedaRun(tmp_path, chain(n=n, gap=0.001)) as run:
        victim = wait_for(lambda: run.workers("seda: worker double#0"), 30, "double#0")[0]
        wait_for(lambda: (tmp_path / "graph.yaml").exists(), 1, "graph")
        time.sleep(0.8)  # let it get some work in hand
        victim.send_signal(signal.SIGKILL)
        assert run.wait() == 0, run.stderr
        assert "worker double#0 killed by SIGKILL; restarting" in run.stderr
    [total] = run.results()
    assert total == {"count": n, "sum": 2 * sum(range(n))}
    assert "1 restarts" in run.stderr


def test_handler_exception_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    with SedaRun(tmp_path, chain(n=200, handler="poison", bad=13, attempts=3)) as run:
        assert run.wait() == 0, run.stderr
    [total] = run.results()
    assert total == {"count": 199, "sum": sum(range(200)) - 13}
    [letter] = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert (letter["stage"], letter["payload"], letter["attempts"]) == ("double", 13, 3)
    assert letter["error"] == "double: ValueError: cannot digest 13"
    assert "Traceback" in letter["traceback"] and "stagekit.py" in letter["traceback"]
    assert "3 handler errors, 1 dead-lettered" in run.stderr
    assert "restarting" not in run.stderr  # the worker kept running


def test_a_message_that_kills_its_worker_ends_in_the_dead_letters(tmp_path: Path) -> None:
    with SedaRun(tmp_path, chain(n=50, handler="crash", bad=7, attempts=2)) as run:
        assert run.wait() == 0, run.stderr
    [total] = run.results()
    assert total["count"] == 49
    [letter] = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert letter["payload"] == 7
    assert "died while running it (alone) 2 times" in letter["error"]


def test_too_many_restarts_fail_the_run(tmp_path: Path) -> None:
    graph = chain(n=50, handler="crash", bad=-1, attempts=100, restarts=3)
    with SedaRun(tmp_path, graph.replace("{bad: -1}", "{}")) as run:
        assert run.wait() == 1
    assert "restart limit reached: 4 restarts within 10 s (settings.restarts allows 3)" \
        in run.stderr
    assert "exited with code 17" in run.stderr


FOREVER = """
name: endless
source:
  handler: stagekit:forever
  to: [double]
  options: {gap: 0.002}
stages:
  double:
    handler: stagekit:double
    workers: 2
    to: [collect]
  collect:
    handler: stagekit:Collect
    sink: true
settings:
  drain_timeout: 5
"""


def test_sigterm_drains_and_exits(tmp_path: Path) -> None:
    with SedaRun(tmp_path, FOREVER) as run:
        wait_for(lambda: len(run.workers("seda: worker")) == 3, 30, "3 workers")
        time.sleep(1.0)
        started = time.monotonic()
        run.signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 6
        assert "pipeline 'endless' interrupted" in run.stderr
    [total] = run.results()  # work in flight was finished and the sink's total written
    assert total["count"] > 10
    assert total["sum"] == 2 * sum(range(total["count"]))


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    with SedaRun(tmp_path, FOREVER) as run:
        kids = wait_for(lambda: len(run.tree()) == 4 and run.tree(), 30, "4 children")
        os.kill(run.pid, signal.SIGKILL)
        run.proc.wait()
        started = time.monotonic()
        wait_for(lambda: not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE
                                 for k in kids), 2.5, "children to exit")
        assert time.monotonic() - started < 2.5


def test_run_directory_is_private_and_removed(tmp_path: Path) -> None:
    with SedaRun(tmp_path, FOREVER) as run:
        def mine() -> list[Path]:
            plans = Path(tempfile.gettempdir()).glob("seda-endless-*/plan.json")
            return [p.parent for p in plans if str(tmp_path) in p.read_text()]

        [run_dir] = wait_for(mine, 30, "the run directory")
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert run_dir.name.startswith("seda-endless-")
        wait_for(lambda: (run_dir / "double.0").exists(), 10, "the ipc endpoint")
        run.signal(signal.SIGINT)
        assert run.wait(timeout=30) == 128 + signal.SIGINT
        assert not run_dir.exists()
