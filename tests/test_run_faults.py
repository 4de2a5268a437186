"""Faults with real processes: killed workers, raising handlers, restart limits, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import zmq

from seda.engine import wire as e
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
    handler: stagekit:{sink}
    workers: {sinks}
    sink: true
settings:
  max_attempts: {attempts}
  dead_letter: dead.jsonl
  drain_timeout: 5
  restarts: {{max: {restarts}, within: 10}}
"""


def chain(n: int = 2000, gap: float = 0.0, handler: str = "double", bad: int = -1,
          attempts: int = 3, restarts: int = 10, sink: str = "Collect", sinks: int = 1
          ) -> str:
    """source -> double (2 workers) -> collect: `Collect` (a total, by finish()) or `echo`
    (every item a result of its own)."""
    return CHAIN.format(n=n, gap=gap, handler=handler, bad=bad, attempts=attempts,
                        restarts=restarts, sink=sink, sinks=sinks)


def test_sigkill_of_a_worker_mid_run_loses_nothing(tmp_path: Path) -> None:
    """The victim is killed while it holds work -- the item it is running when it is killed,
    and what its window holds behind it -- and the whole output is what a run without the
    kill gives."""
    n = 3000
    mark = tmp_path / "holder"
    graph = chain(n=n, gap=0.001, handler="hold").replace(
        "options: {bad: -1}", f"options: {{hold: 1500, mark: '{mark}', seconds: 30}}")
    with SedaRun(tmp_path, graph) as run:
        pid = int(wait_for(lambda: mark.exists() and mark.read_text(), 60, "item 1500"))
        victim = psutil.Process(pid)
        assert "seda: worker double#" in " ".join(victim.cmdline())
        victim.send_signal(signal.SIGKILL)
        assert run.wait() == 0, run.stderr
        assert "killed by SIGKILL; restarting" in run.stderr
    [total] = run.results()
    assert total == {"count": n, "sum": 2 * sum(range(n))}  # the clean run's output
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
    """SIGTERM while the middle stage is behind (20 ms an item, its windows full): the items
    in flight are finished before the sinks finish, so the count is what the source read."""
    graph = FOREVER.replace("handler: stagekit:double", "handler: stagekit:slow_double")
    with SedaRun(tmp_path, graph) as run:
        wait_for(lambda: len(run.workers("seda: worker")) == 3, 30, "3 workers")
        time.sleep(1.0)
        started = time.monotonic()
        run.signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 6
        assert "pipeline 'endless' interrupted" in run.stderr
    # the drain finished the work in flight: the sink counted every item the source had
    # read, not just a consistent prefix of them (a drain that dropped the tail would)
    read = int(re.search(r"interrupted: (\d+) items", run.stderr).group(1))  # type: ignore
    [total] = run.results()
    assert total["count"] == read and read > 10, (total, read)
    assert total["sum"] == 2 * sum(range(read))


def test_children_die_with_a_killed_supervisor_and_a_new_run_starts_cleanly(
        tmp_path: Path) -> None:
    with SedaRun(tmp_path, FOREVER, "--status", "127.0.0.1:0") as run:
        kids = wait_for(lambda: len(run.workers("seda: worker")) == 3 and run.tree(), 30,
                        "3 workers")
        assert len(kids) == 5  # and the source, and the fork server
        stale = run.run_dir()
        os.kill(run.pid, signal.SIGKILL)
        run.proc.wait()
        started = time.monotonic()
        wait_for(lambda: not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE
                                 for k in kids), 2.5, "children to exit")
        assert time.monotonic() - started < 2.5
        assert (stale / "status.url").exists()  # nobody was left to remove it
        top = [sys.executable, "-m", "seda.cli", "top", "endless", "--once"]
        gone = subprocess.run(top, capture_output=True, text=True, timeout=60)
        assert gone.returncode != 0 and "no running graph named 'endless'" in gone.stderr
        (tmp_path / "again").mkdir()
        with SedaRun(tmp_path / "again", FOREVER, "--status", "127.0.0.1:0") as again:
            again.status()  # up and serving
            assert not stale.exists()  # the new run removed the dead run's directory
            found = subprocess.run(top, capture_output=True, text=True, timeout=60)
            assert found.returncode == 0, found.stderr
            assert "double" in found.stdout


def test_run_directory_is_private_and_removed(tmp_path: Path) -> None:
    with SedaRun(tmp_path, FOREVER) as run:
        run_dir = run.run_dir()
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert run_dir.name.startswith("seda-endless-")
        wait_for(lambda: (run_dir / "double.0").exists(), 10, "the ipc endpoint")
        run.signal(signal.SIGINT)
        assert run.wait(timeout=30) == 128 + signal.SIGINT
        assert not run_dir.exists()


def test_malformed_frames_in_a_stage_mailbox_are_counted_and_dropped(tmp_path: Path) -> None:
    n = 3000
    with SedaRun(tmp_path, chain(n=n, gap=0.001), "--status", "127.0.0.1:0") as run:
        run_dir = run.run_dir()
        wait_for(lambda: run.status()["stages"]["double"]["completed"] > 100, 30, "work")
        context = zmq.Context()
        intruder = context.socket(zmq.DEALER)  # in the run directory: same user (see docs)
        intruder.setsockopt(zmq.ROUTING_ID, b"intruder")
        intruder.setsockopt(zmq.LINGER, 2000)
        intruder.connect(f"ipc://{run_dir}/double.0")
        bad: list[list[bytes]] = [
            [e.DATA],                                         # too few frames
            [e.DATA, b"\xc1\xc1"],                            # not msgpack
            [e.DATA, e.pack(["double", 0, 1, [1], 2, 3])],    # not a batch
            [e.DATA, e.encode_data("nowhere", [], 0, 1)],     # a stage it does not run
            [e.ACK, e.pack([[1], [2], []])],                  # receipts from a stranger
            [e.CONTROL, e.pack({"op": "stop"})],              # orders from a stranger
            [b"Q", b""],                                      # no such kind
            [e.DATA, b"\x00" * 64, b"extra"],                 # too many frames
        ]
        for frames in bad:
            intruder.send_multipart(frames)
        intruder.close()
        context.term()
        wait_for(lambda: run.status()["processes"]["double.0"]["malformed"] == len(bad), 10,
                 "the bad frames to be counted")
        assert run.wait() == 0, run.stderr
        assert "restarting" not in run.stderr  # the stage kept going
    [total] = run.results()
    assert total == {"count": n, "sum": 2 * sum(range(n))}


def test_a_killed_sink_that_keeps_state_makes_the_result_incomplete_and_says_so(
        tmp_path: Path) -> None:
    """Collect counts in memory for finish(): its inputs were acknowledged as they were
    counted, so no re-run brings them back. The run must not pass off a short count."""
    with SedaRun(tmp_path, chain(n=3000, gap=0.001)) as run:
        victim = wait_for(lambda: run.workers("seda: worker collect#0"), 30, "the sink")[0]
        wait_for(lambda: run.status()["stages"]["collect"]["completed"] > 200, 30, "counts")
        victim.send_signal(signal.SIGKILL)
        assert run.wait() == 1, run.stderr
    assert "'collect' (" in run.stderr and "result will be incomplete" in run.stderr
    assert "RESULT INCOMPLETE: worker collect#0 died holding the finish() state of " \
           "'collect'" in run.stderr
    [total] = run.results()
    assert total["count"] < 3000  # what the restarted sink counted: written, and flagged


def test_without_its_fork_server_a_run_restarts_workers_fresh(tmp_path: Path) -> None:
    """The fork server is an optimisation: killed, the run goes on, and a worker that dies
    afterwards is started as a fresh interpreter (slower, same behaviour)."""
    n = 3000
    with SedaRun(tmp_path, chain(n=n, gap=0.001)) as run:
        wait_for(lambda: len(run.workers("seda: worker")) == 3, 30, "the workers")
        # (a child forked a moment ago still bears its server's title: wait for one)
        [server] = wait_for(lambda: len(s := run.workers("seda: fork server")) == 1 and s, 10,
                            "the fork server")
        [victim] = run.workers("seda: worker double#0")
        server.send_signal(signal.SIGKILL)
        wait_for(lambda: not run.workers("seda: fork server"), 5, "the server to be gone")
        victim.send_signal(signal.SIGKILL)
        assert run.wait() == 0, run.stderr
        assert "worker double#0 killed by SIGKILL; restarting" in run.stderr
    [total] = run.results()
    assert total == {"count": n, "sum": 2 * sum(range(n))}
