"""Async handlers under every server model, with real processes and real HTTP clients:
concurrency per worker, a killed worker, time limits, a blocked loop, failures, pipelines,
sync and async stages mixed."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.runkit import SedaRun, run_env, wait_for

MODELS = ["seda", "amped", "sped", "symped", "mp"]

SERVICE = """\
name: asvc
acceptor:
  listen: 127.0.0.1:0
  protocol: http
  entry: wait
stages:
  wait: {{handler: "asynckit:wait", workers: 1, concurrency: 256{extra}}}
settings: {{dead_letter: dead.jsonl{settings}}}
"""


def get(port: int, path: str, timeout: float = 30) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        return answer.status, json.loads(body) if body.startswith(b"{") else body
    finally:
        conn.close()


def at_once(port: int, paths: list[str]) -> list[tuple[int, Any]]:
    """Each path on a connection of its own, all sent at once; the answers in order."""
    out: list[tuple[int, Any]] = [(0, None)] * len(paths)

    def one(i: int) -> None:
        try:
            out[i] = get(port, paths[i])
        except OSError as exc:
            out[i] = (-1, repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("model", MODELS)
def test_one_worker_runs_many_async_requests_at_once(tmp_path: Path, model: str) -> None:
    """200 requests that each await 50 ms, at once, on one worker (one loop, one process
    per connection under mp): they overlap -- the most the handler saw running at once is
    in the answers -- and all are done in far less than the 10 s one after another takes."""
    with SedaRun(tmp_path, SERVICE.format(extra="", settings=""), "--model", model) as run:
        port = run.port()
        start = time.monotonic()
        answers = at_once(port, [f"/r{i}?s=0.05" for i in range(200)])
        took = time.monotonic() - start
        assert [s for s, _ in answers] == [200] * 200, answers[:3]
        assert [body["path"] for _, body in answers] == [f"/r{i}" for i in range(200)]
        if model != "mp":  # (mp: a process per connection, one request each; symped:
            # two loops, each with about half of them)
            assert max(body["peak"] for _, body in answers) >= (25 if model == "symped"
                                                                else 50)
        assert took < 200 * 0.05, took
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "200 responses" in run.stderr and "0 failed" in run.stderr


def test_a_killed_async_worker_loses_none_of_its_requests(tmp_path: Path) -> None:
    """kill -9 of the worker while it awaits 100 requests: each is run again on its
    successor and answered exactly once (a second request on each connection gets its own
    answer, not a stray one)."""
    mark = tmp_path / "holder"
    graph = SERVICE.format(extra="", settings="").replace(
        '"asynckit:wait"', '"asynckit:mark_then_wait"').replace(
        "concurrency: 256", f"concurrency: 256, options: {{mark: '{mark}', seconds: 1.0}}")
    with SedaRun(tmp_path, graph) as run:
        port = run.port()
        out: list[Any] = [None] * 100

        def client(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                replies = []
                for path in (f"/first{i}", f"/second{i}"):
                    conn.request("GET", path)
                    answer = conn.getresponse()
                    replies.append((answer.status, json.loads(answer.read())["path"]))
                out[i] = replies
            except (OSError, ValueError) as exc:
                out[i] = repr(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        pid = int(wait_for(lambda: mark.exists() and mark.read_text(), 30, "a held request"))
        def held() -> bool:  # all 100 unanswered, none left in the worker's inbox
            status = run.status()
            return bool(status["front"]["in_flight"] >= 100
                        and status["workers"][0]["queued"] == 0)

        wait_for(held, 30, "100 requests in flight")
        victim = psutil.Process(pid)
        assert "seda: worker wait#" in " ".join(victim.cmdline())
        victim.send_signal(signal.SIGKILL)
        for t in threads:
            t.join(60)
        assert out == [[(200, f"/first{i}"), (200, f"/second{i}")] for i in range(100)]
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "killed by SIGKILL; restarting" in run.stderr and "1 restarts" in run.stderr


@pytest.mark.parametrize("model", ["seda", "sped"])
def test_an_async_call_past_its_time_limit_is_answered_504_and_costs_only_itself(
        tmp_path: Path, model: str) -> None:
    graph = SERVICE.format(extra=", timeout: 0.5", settings="")
    with SedaRun(tmp_path, graph, "--model", model) as run:
        port = run.port()
        slow, fast = at_once(port, ["/slow?s=3", "/fast?s=0.01"])
        assert slow[0] == 504 and fast == (200, {"path": "/fast", "pid": fast[1]["pid"],
                                                  "peak": fast[1]["peak"]})
        assert get(port, "/after?s=0")[0] == 200
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "0 restarts" in run.stderr  # no process was replaced for it
    [letter] = [json.loads(ln) for ln in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert "ran over its time limit (0.5 s)" in letter["error"]


@pytest.mark.parametrize("model", MODELS)
def test_an_async_handler_that_raises_fails_its_request_alone(tmp_path: Path,
                                                             model: str) -> None:
    with SedaRun(tmp_path, SERVICE.format(extra="", settings=""), "--model", model) as run:
        port = run.port()
        answers = at_once(port, ["/raise?s=0.01", "/a?s=0.01", "/b?s=0.01"])
        assert [s for s, _ in answers] == [500, 200, 200]
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "ValueError: asked to fail" in (tmp_path / "dead.jsonl").read_text()


def test_a_handler_that_blocks_the_loop_gets_its_worker_replaced(tmp_path: Path) -> None:
    """A sync sleep inside `async def` stops the worker's loop: past the time limit the
    worker ends itself, a fresh one takes its place, and the request that blocked is run
    again alone; it blocks again, is charged and, out of attempts, answered; the service
    goes on."""
    graph = SERVICE.format(extra=", timeout: 1", settings=", max_attempts: 1")
    with SedaRun(tmp_path, graph) as run:
        port = run.port()
        status, _ = get(port, "/block?s=4")
        assert status in (500, 502)
        assert get(port, "/after?s=0")[0] == 200
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "the event loop was blocked for" in run.stderr
    # it blocked twice: once among the worker's work, once alone (then it was charged)
    assert "2 restarts" in run.stderr


PIPELINE = """\
name: apipe
source: {handler: "asynckit:numbers", to: [double], options: {n: 500}}
stages:
  double: {handler: "asynckit:Doubler", workers: 2, to: [total], concurrency: 16}
  total: {handler: "asynckit:Total", sink: true}
"""


@pytest.mark.parametrize("model", ["seda", "amped"])
def test_an_async_pipeline_gives_the_sync_pipelines_result(tmp_path: Path,
                                                           model: str) -> None:
    """Async setup, handle and finish; items finish out of order; the total is exact."""
    with SedaRun(tmp_path, PIPELINE, "--model", model) as run:
        assert run.wait() == 0, run.stderr
    assert run.results() == [{"count": 500, "sum": 2 * sum(range(500))}]


MIXED = """\
name: mixed
acceptor: {listen: "127.0.0.1:0", protocol: http, entry: parse}
stages:
  parse: {handler: "asynckit:parse", to: [lookup]}
  lookup: {handler: "asynckit:lookup", to: [render], pool: back, concurrency: 32}
  render: {handler: "asynckit:render", pool: back}
"""


@pytest.mark.parametrize("model", MODELS)
def test_sync_and_async_stages_mix_in_one_graph_and_one_pool(tmp_path: Path,
                                                             model: str) -> None:
    with SedaRun(tmp_path, MIXED, "--model", model) as run:
        port = run.port()
        answers = at_once(port, [f"/item/{i}" for i in range(20)])
        assert answers == [(200, {"path": f"/item/{i}", "n": len(f"/item/{i}"),
                                  "found": True}) for i in range(20)]
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr


def seda(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seda.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=tmp, env=run_env(tmp))


def test_validate_says_concurrency_does_nothing_for_a_sync_handler(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(MIXED.replace("pool: back, concurrency: 32",
                                                   "pool: back").replace(
        '"asynckit:parse", to', '"asynckit:parse", concurrency: 8, to'))
    done = seda(tmp_path, "validate", "g.yaml")
    assert done.returncode == 0
    assert ("g.yaml:4: warning: stages.parse.concurrency: has no effect: the handler is not async "
            "(async def), so it runs one message at a time") in done.stderr


def test_plan_says_what_blocks_the_loop_when_handlers_run_inline(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(MIXED)
    out = seda(tmp_path, "plan", "g.yaml", "--model", "sped").stdout
    assert "handlers run inline, in the acceptor's event loop:" in out
    assert "async (lookup): many requests wait at once" in out
    assert "sync (parse, render): a call blocks every connection of that loop" in out
    assert "inline" not in seda(tmp_path, "plan", "g.yaml", "--model", "seda").stdout


def test_the_live_view_counts_an_async_worker_with_every_slot_taken_as_busy(
        tmp_path: Path) -> None:
    """An async worker that awaits `concurrency` requests at once is 100% busy in the
    status (its time is counted per slot), and the stage, with requests waiting for credit
    in front of it, is named the bottleneck."""
    graph = SERVICE.format(extra="", settings="").replace("concurrency: 256",
                                                          "concurrency: 4")
    with SedaRun(tmp_path, graph) as run:
        port = run.port()
        clients = threading.Thread(target=at_once, args=(port, ["/x?s=1"] * 24))
        clients.start()

        def busy() -> dict[str, Any] | None:
            status = run.status()
            stage = status["stages"]["wait"]
            return status if stage["utilisation"] >= 0.7 and stage["pending"] > 0 else None

        status = wait_for(busy, 8, "a busy async stage in the status")
        assert status["bottleneck"] == "wait", status["diagnosis"]
        clients.join(60)
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr


def test_under_sped_a_handler_that_blocks_the_loop_gets_the_acceptor_replaced(
        tmp_path: Path) -> None:
    """The same blocking call under sped stops the acceptor's own loop: its watchdog sees
    the loop stop turning for longer than the time limit and ends the process; a fresh
    acceptor serves on the same port."""
    graph = SERVICE.format(extra=", timeout: 1", settings="")
    with SedaRun(tmp_path, graph, "--model", "sped") as run:
        port = run.port()
        try:
            status, _ = get(port, "/block?s=4", timeout=20)
        except (OSError, http.client.HTTPException):
            status = 0  # the connection went with the acceptor
        assert status in (0, 500, 502, 504)
        def served() -> bool:
            try:
                return get(port, "/after?s=0", timeout=5)[0] == 200
            except OSError:
                return False  # (between the two acceptors)

        assert wait_for(served, 30, "a fresh acceptor")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr
    assert "a call to stage 'wait' ran over its timeout of 1 s" in run.stderr


def test_validate_says_prefetch_does_nothing_for_an_async_handler(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(MIXED.replace("pool: back, concurrency: 32",
                                                   "pool: back, prefetch: 16"))
    done = seda(tmp_path, "validate", "g.yaml")
    assert done.returncode == 0
    assert ("g.yaml:5: warning: stages.lookup.prefetch: has no effect: the handler is async, "
            "and an async stage's window is its concurrency") in done.stderr, done.stderr
