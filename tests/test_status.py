"""Live figures: the status snapshot (pure), then /api/status, /metrics and `seda top` on a
running graph whose slow stage is known."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from seda.observe.status import Status, metric_families
from seda.plan.deployment import make_plan
from seda.spec.loader import load_text
from tests.runkit import TESTS, SedaRun, wait_for

DEPTH = """
name: depth
acceptor: {listen: "127.0.0.1:0", entry: front}
stages:
  front: {handler: "stagekit:forward", prefetch: 256, to: [slow]}
  slow: {handler: "stagekit:slow_ok", prefetch: 2, options: {slow: 0.02}}
"""


def test_snapshot_adds_up_reports() -> None:
    spec, _ = load_text(DEPTH)
    plan = make_plan(spec, "/run/x")
    status = Status(plan, started=100.0)
    reports: dict[str, dict[str, Any]] = {
        "acceptor.0": {"waiting": {"front": 3}, "connections": 5, "requests": 40,
                       "responses": 30},
        "front.0": {"waiting": {"slow": 7}, "blocked": ["slow"]},
        "slow.0": {"inbox": {"slow": {"front.0": 2}}, "dead_letters": 1},
    }
    alive = {n: 1 for n in plan.procs}
    status.update(101.0, reports, {"slow.completed": 10, "slow.busy": 0.5}, {}, alive)
    snap = status.update(101.5, reports, {"slow.completed": 20, "slow.busy": 0.9,
                                          "front.completed": 30, "slow.sent_in": {"front": 29},
                                          "front.sent_in": {"acceptor": 33}},
                         {"slow.0": 2}, alive)
    slow = snap["stages"]["slow"]
    assert slow["pending"] == 9 and slow["blocked"] == 1 and slow["completed"] == 20
    assert slow["throughput"] == 20.0 and slow["active"] == 0.8 and slow["utilisation"] == 0.8
    assert snap["stages"]["front"]["pending"] == 3
    assert snap["edges"] == [
        {"from": "acceptor", "to": "front", "depth": 3, "peak": 3, "sent": 33},
        {"from": "front", "to": "slow", "depth": 9, "peak": 9, "sent": 29}]
    assert snap["bottleneck"] == "slow"
    assert snap["front"]["connections"] == 5 and snap["front"]["responses"] == 30
    assert snap["restarts"] == 2 and snap["dead_letters"] == 1
    quiet = status.update(102.0, {}, {"slow.completed": 20, "slow.busy": 0.9}, {}, alive)
    assert quiet["stages"]["slow"]["pending"] == 0 and quiet["bottleneck"] is None
    assert quiet["stages"]["slow"]["peak_pending"] == 9  # peaks are kept
    assert [h[1] for h in quiet["stages"]["slow"]["history"]] == [9, 9, 0]


def test_snapshot_counts_drops_by_reason_and_rows_per_worker() -> None:
    spec, _ = load_text(DEPTH.replace("prefetch: 2,", "prefetch: 2, workers: 2,"))
    plan = make_plan(spec, "/run/x")
    status = Status(plan, started=0.0)
    alive = {n: 10 + i for i, n in enumerate(plan.procs)}

    def report(busy: float, completed: int) -> dict[str, Any]:
        return {"stages": {"slow": {"busy": busy, "completed": completed}}, "queued": 3}

    totals = {"slow.expired": 2, "slow.dead_letters": 1, "front.rejected": 4,
              "slow.duplicates": 0}
    status.update(1.0, {"slow.0": report(0.1, 5), "slow.1": report(0.0, 0)}, totals, {},
                  alive)
    snap = status.update(1.5, {"slow.0": report(0.5, 9), "slow.1": report(0.1, 1)}, totals,
                         {"slow.1": 1}, alive)
    assert snap["stages"]["slow"]["dropped_by"] == {
        "deadline": 2, "admission": 0, "dead_letter": 1, "duplicate": 0}
    assert snap["stages"]["slow"]["dropped"] == 3
    assert snap["stages"]["front"]["dropped_by"]["admission"] == 4
    rows = {r["name"]: r for r in snap["workers"]}
    assert set(rows) == {"front.0", "slow.0", "slow.1"}
    assert rows["slow.0"]["utilisation"] == 0.8 and rows["slow.0"]["completed"] == 9
    assert rows["slow.1"]["utilisation"] == 0.2 and rows["slow.1"]["restarts"] == 1
    assert rows["slow.0"]["queued"] == 3 and rows["front.0"]["completed"] == 0
    # a restarted worker's counters begin again: no share is made up from the old pid's
    alive["slow.0"] = 99
    snap = status.update(2.0, {"slow.0": report(0.05, 1)}, totals, {}, alive)
    assert {r["name"]: r["utilisation"] for r in snap["workers"]}["slow.0"] == 0.0


def test_service_time_buckets_and_percentiles() -> None:
    from seda.engine.stage import bucket_upper, time_bucket
    from seda.observe.status import percentiles

    for ns in (0, 1, 7, 8, 15, 16, 1000, 999_999, 20_000_000, 3 * 10**9):
        key = time_bucket(ns)
        assert ns <= bucket_upper(key) <= max(ns * 1.25, 15), ns  # within 25% above
        lower = key if key < 16 else (4 + key % 4) << (key // 4 - 3)
        assert lower <= ns, ns  # the bucket's own range holds it
    hist: dict[int, int] = {}
    for ms in [1] * 80 + [10] * 15 + [100] * 5:
        key = time_bucket(ms * 1_000_000)
        hist[key] = hist.get(key, 0) + 1
    p = percentiles(hist)
    assert 1 <= p["p50"] <= 1.25 and 10 <= p["p90"] <= 12.5 and 100 <= p["p99"] <= 125
    assert percentiles({}) == {}


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: dict[str, Any] = json.load(response)
        return data


def pipelined_load(port: int, connections: int, each: int, path: bytes = b"/x",
                   until: threading.Event | None = None) -> list[int]:
    """`connections` clients each pipelining `each` GETs; returns the replies each read.

    With `until`, each client pipelines `each` again after reading its replies, until the
    event is set."""
    counts = [0] * connections

    def client(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            while True:
                s.sendall((b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n") * each)
                data, closed = b"", False
                while data.count(b"HTTP/1.1 200") < each and not closed:
                    chunk = s.recv(65536)
                    closed = not chunk
                    data += chunk
                counts[i] += data.count(b"HTTP/1.1 200")
                if until is None or until.is_set() or closed:
                    return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return counts


def test_depth_builds_on_the_slow_edge_and_drains(tmp_path: Path) -> None:
    run = SedaRun(tmp_path, DEPTH, "--listen", "127.0.0.1:0")
    port = run.port()
    with run:
        url = wait_for(lambda: re.search(r"status on (http://\S+)", run.err_file.read_text()),
                       10, "the status line").group(1)
        wait_for(lambda: get_json(f"{url}/api/status").get("stages"), 10, "a first snapshot")
        assert pipelined_load(port, 1, 1) == [1]  # the graph is up: no wait for first credit
        counts: list[int] = []
        load = threading.Thread(target=lambda: counts.extend(pipelined_load(port, 40, 5)))
        load.start()
        peaks = {"front->slow": 0, "acceptor->front": 0}
        queued = {"front->slow": 0, "acceptor->front": 0}  # snapshots with > 20 on the edge
        top = ""
        while load.is_alive():
            snap = get_json(f"{url}/api/status")
            for edge in snap["edges"]:
                key = f"{edge['from']}->{edge['to']}"
                peaks[key] = max(peaks.get(key, 0), edge["depth"])
                queued[key] = queued.get(key, 0) + (edge["depth"] > 20)
            if snap["bottleneck"] == "slow" and not top:
                top = subprocess.run([sys.executable, "-m", "seda.cli", "top", "--once",
                                      "--url", url], capture_output=True, text=True,
                                     timeout=30, env={"COLUMNS": "160", "PATH": ""}).stdout
            time.sleep(0.1)
        load.join()
        assert counts == [5] * 40  # every request answered
        # 200 requests at 20 ms each through one slow worker: the queue stays in front of it
        # for the ~4 s the load lasts; upstream, a burst may sit in front's inbox for a moment
        # (or wait for front's first credit) but does not stay
        assert peaks["front->slow"] >= 100, (peaks, queued)
        assert queued["front->slow"] >= 10, (peaks, queued)
        assert queued["front->slow"] >= 3 * queued["acceptor->front"], (peaks, queued)
        assert "slow ◀ bottleneck" in top, top
        assert "front → slow" in top, top

        def drained() -> dict[str, Any] | None:
            snap = get_json(f"{url}/api/status")
            quiet = all(s["pending"] == 0 for s in snap["stages"].values())
            counted = (snap["stages"]["slow"]["completed"] == 201
                       and snap["front"]["responses"] == 201)  # reports lag up to 0.5 s
            return snap if quiet and counted else None

        snap = wait_for(drained, 10, "the queues to drain")
        assert snap["stages"]["front"]["completed"] == 201
        assert {(e["from"], e["to"]): e["sent"] for e in snap["edges"]} == {
            ("acceptor", "front"): 201, ("front", "slow"): 201}
        assert snap["front"]["statuses"] == {"200": 201}
        service = snap["stages"]["slow"]["service_ms_all"]  # the handler sleeps 20 ms
        assert 20 <= service["p50"] <= 30 and service["p50"] <= service["p99"] <= 60, service
        assert snap["stages"]["slow"]["peak_pending"] >= 100
        # queue wait: behind a 20 ms stage that had ~100 queued, most waited ~100 x 20 ms;
        # front's messages are run as they come
        waits = {s: snap["stages"][s]["wait_ms_all"] for s in ("front", "slow")}
        assert waits["slow"]["p50"] >= 500 and waits["slow"]["p90"] >= 1000, waits
        assert waits["front"]["p50"] < waits["slow"]["p50"] / 10, waits
        rows = [r for r in snap["workers"] if r["pool"] == "slow"]
        assert [(r["name"], r["completed"]) for r in rows] == [("slow.0", 201)], rows
        assert snap["stages"]["slow"]["dropped_by"] == {
            "deadline": 0, "admission": 0, "dead_letter": 0, "duplicate": 0}
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {(s.name, s.labels.get("stage", s.labels.get("to", s.labels.get("worker",
                                                                                  "")))): s.value
                   for family in text_string_to_metric_families(text)
                   for s in family.samples}
        assert samples[("seda_stage_processed_total", "slow")] == 201
        assert samples[("seda_stage_service_seconds_count", "slow")] == 201
        # queue wait is timed on a sample: the messages whose (hash-like) id is 0 mod 8
        assert 8 <= samples[("seda_stage_queue_wait_seconds_count", "slow")] <= 50
        assert samples[("seda_worker_processed_total", "slow.0")] == 201
        assert samples[("seda_stage_queue_depth", "slow")] == 0
        assert samples[("seda_stage_queue_depth_peak", "slow")] >= 100
        assert samples[("seda_stage_workers", "slow")] == 1
        assert ("seda_edge_queue_depth", "slow") in samples
        assert samples[("seda_acceptor_requests_total", "")] >= 200


def dump_dom(url: str) -> str:
    """The dashboard's DOM after its script ran for ~1.5 s, from headless Chromium."""
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=1500", "--dump-dom", f"{url}/"],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dom_figures(dom: str) -> tuple[int, int]:
    """(completed of `slow` as drawn on its node, depth drawn on the front -> slow edge)."""
    node = re.search(r'<g class="node" data-id="slow"[^>]*data-completed="(\d+)"', dom)
    edge = re.search(r'data-edge="front slow"[^>]*data-depth="(\d*)"', dom)
    assert node and edge, dom[:3000]
    return int(node.group(1)), int(edge.group(1) or 0)


def test_dashboard_in_headless_chromium_follows_the_load(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (tools/test installs it)")
    run = SedaRun(tmp_path, DEPTH.replace("0.02", "0.03"), "--listen", "127.0.0.1:0")
    port = run.port()
    with run:
        url = wait_for(lambda: re.search(r"status on (http://\S+)", run.err_file.read_text()),
                       10, "the status line").group(1)
        # the load goes on until the first dump is taken, however long Chromium takes to start
        # on a busy machine: 40 clients, each pipelining 5 GETs again as soon as it has its
        # replies, keep ~150 requests queued in front of the 30 ms stage
        stop = threading.Event()
        counts: list[int] = []
        load = threading.Thread(target=lambda: counts.extend(
            pipelined_load(port, 40, 5, until=stop)))
        load.start()
        try:
            wait_for(lambda: any(e["to"] == "slow" and e["depth"] > 50
                                 for e in get_json(f"{url}/api/status").get("edges", [])), 10,
                     "a queue in front of the slow stage")
            during = dom_figures(dump_dom(url))
        finally:
            stop.set()
            load.join()
        total = sum(counts)
        assert len(counts) == 40 and all(c > 0 and c % 5 == 0 for c in counts), counts
        wait_for(lambda: get_json(f"{url}/api/status")["stages"]["slow"]["completed"] == total
                 and get_json(f"{url}/api/status")["stages"]["slow"]["pending"] == 0, 30,
                 "the snapshot to show the load done")
        after = dom_figures(dump_dom(url))
        assert during[1] > 0 and during[0] < total, (during, total)  # a queue drawn, mid-way
        assert after == (total, 0), (after, total)  # every request counted, the queue gone


def test_top_renders_a_snapshot_or_says_it_waits() -> None:
    from rich.console import Console

    from seda.observe.top import render, sparkline

    console = Console(record=True, width=160)
    console.print(render({}))
    assert "waiting for the graph's first figures" in console.export_text()
    spec, _ = load_text(DEPTH)
    plan = make_plan(spec, "/run/x")
    status = Status(plan, started=0.0)
    alive = {n: 1 for n in plan.procs}
    status.update(1.0, {}, {"slow.busy": 0.0}, {}, alive)
    snap = status.update(1.5, {"front.0": {"waiting": {"slow": 4}}},
                         {"slow.completed": 3, "slow.busy": 0.45}, {}, alive)
    console.print(render(snap))
    text = console.export_text()
    assert "slow ◀ bottleneck" in text and "front → slow 4 (peak 4)" in text
    assert ("bottleneck: slow -- workers 90% busy, 4 waiting; try more workers (workers:, "
            "scale:, or seda scale)") in text
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█" and sparkline([0, 0]) == "▁▁"



def test_request_classes_add_up_over_front_doors_and_show_in_top() -> None:
    from rich.console import Console

    from seda.observe.top import render

    spec, _ = load_text(DEPTH)
    status = Status(make_plan(spec, "/run/x", model="symped", processes=2), started=0.0)
    doors = status.plan.front_doors()
    assert len(doors) == 2
    gold = {"priority": 0, "requests": 7, "rejected": 1}
    rest = {"priority": 1, "requests": 9, "rejected": 5}
    snap = status.update(1.0, {doors[0]: {"classes": {"gold": gold, "rest": rest}},
                               doors[1]: {"classes": {"gold": gold, "rest": rest}}}, {}, {}, {})
    assert snap["front"]["classes"] == {
        "gold": {"priority": 0, "requests": 14, "rejected": 2},
        "rest": {"priority": 1, "requests": 18, "rejected": 10}}
    samples = {(s.name, s.labels.get("class")): s.value
               for m in metric_families(snap) for s in m.samples}
    assert samples[("seda_acceptor_class_rejected_total", "rest")] == 10
    console = Console(record=True, width=200)
    console.print(render(snap))
    assert "rest (priority 1): 18 requests, 10 rejected" in console.export_text()


def test_top_shows_queue_wait_and_a_row_per_worker() -> None:
    from rich.console import Console

    from seda.engine.stage import bucket_upper
    from seda.observe.top import render

    spec, _ = load_text(DEPTH)
    status = Status(make_plan(spec, "/run/x"), started=0.0)
    snap = status.update(1.0, {"slow.0": {"stages": {"slow": {"completed": 7}}, "queued": 2}},
                         {"slow.completed": 7, "slow.waits": {80: 7}}, {"slow.0": 3},
                         {"slow.0": 4242, "front.0": 4241})
    console = Console(record=True, width=200)
    console.print(render(snap, workers=True))
    text = console.export_text()
    ms = f"{bucket_upper(80) / 1e6:.3g}"  # all seven waits fell in bucket 80
    assert "Wait ms" in text and f"{ms}/{ms}" in text, text
    row = next(line for line in text.splitlines() if "slow.0" in line)
    assert [c.strip() for c in row.split("│")[1:6]] == ["slow.0", "4242", "3", "0%", "2"], row


def test_top_shows_the_host_of_workers_that_joined() -> None:
    from rich.console import Console

    from seda.observe.top import render

    spec, _ = load_text(DEPTH)
    status = Status(make_plan(spec, "/run/x"), started=0.0)
    snap = status.update(1.0, {}, {}, {}, {"slow.0": 4242})
    console = Console(record=True, width=220)
    console.print(render(snap, workers=True))
    assert "Host" not in console.export_text()  # all here: no column
    next(r for r in snap["workers"] if r["name"] == "slow.0")["host"] = "gpu-7 (ray node 3c)"
    console = Console(record=True, width=220)
    console.print(render(snap, workers=True))
    row = next(line for line in console.export_text().splitlines() if "slow.0" in line)
    assert row.split("│")[-2].strip() == "gpu-7 (ray node 3c)", row


def test_status_token_guards_every_page_and_seda_top_finds_it(tmp_path: Path) -> None:
    import secrets
    import urllib.error

    name = f"tok{secrets.token_hex(4)}"  # a name no other run has, for `seda top NAME`
    token = secrets.token_urlsafe(24)
    graph = DEPTH.replace("name: depth", f"name: {name}")
    # `=`: a token_urlsafe token starts with '-' one time in 64, which argparse would take
    # for an option (the run then exits 2 and never prints its status line)
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0", f"--status-token={token}") as run:
        url = run.status_url()
        for page in ("/", "/api/status", "/metrics", "/graph.svg"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{url}{page}", timeout=5)
            assert refused.value.code == 401, page
            assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
            wrong = urllib.request.Request(f"{url}{page}",
                                           headers={"Authorization": "Bearer " + "x" * 32})
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(wrong, timeout=5)
            bearer = urllib.request.Request(f"{url}{page}",
                                            headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(bearer, timeout=5) as ok:
                assert ok.status == 200
            with urllib.request.urlopen(f"{url}{page}?token={token}", timeout=5) as ok:
                assert ok.status == 200  # how a browser opens the dashboard
        saved = next(Path(tempfile.gettempdir()).glob(f"seda-{name}-*/status.token"))
        assert saved.stat().st_mode & 0o777 == 0o600 and saved.read_text().strip() == token
        top = [sys.executable, "-m", "seda.cli", "top", "--once"]
        env = {"COLUMNS": "160", "PATH": ""}
        by_name = subprocess.run([*top, name], capture_output=True, text=True, timeout=30,
                                 env=env)
        assert by_name.returncode == 0 and f"graph {name}" in by_name.stdout, by_name.stderr
        # into a pipe, with no COLUMNS: whole lines, not cut to 80 columns
        piped = subprocess.run([*top, "--workers", name], capture_output=True, text=True,
                               timeout=30, env={"PATH": ""})
        assert piped.returncode == 0 and "…" not in piped.stdout, piped.stdout
        assert max(map(len, piped.stdout.splitlines())) > 80, piped.stdout
        for column in ("Completed", "Throughput history", "Memory", "Received"):
            assert column in piped.stdout, piped.stdout
        as_json = subprocess.run([*top, "--json", name], capture_output=True, text=True,
                                 timeout=30, env={"PATH": ""})
        snap = json.loads(as_json.stdout)
        assert as_json.returncode == 0 and snap["graph"] == name and snap["stages"], snap
        no_token = subprocess.run([*top, "--url", url], capture_output=True, text=True,
                                  timeout=30, env=env)
        assert no_token.returncode != 0 and "401" in no_token.stderr
        assert "give --token" in no_token.stderr
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr


def test_status_beyond_loopback_needs_a_token_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(DEPTH)
    for args, why in ((["--status", "0.0.0.0:0"], "needs --status-token"),
                      (["--status", "127.0.0.1:0", "--status-token", "short"], "too short")):
        done = subprocess.run([sys.executable, "-m", "seda.cli", "run", str(tmp_path / "g.yaml"),
                               *args], capture_output=True, text=True, timeout=30,
                              env={**{k: v for k, v in os.environ.items()
                                      if k != "SEDA_STATUS_TOKEN"}, "PYTHONPATH": str(TESTS)})
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()  # one line, and no process was started
        assert line.startswith("<command line>: --status ") and why in line, line


def stage(utilisation: float, pending: list[int]) -> dict[str, Any]:
    """What diagnosis reads of a stage: its workers' busy share now, its queue over time."""
    return {"utilisation": utilisation, "pending": pending[-1],
            "history": [(0.0, p) for p in pending]}


def test_the_bottleneck_is_a_busy_stage_or_a_growing_queue_never_an_idle_one() -> None:
    from seda.observe.status import diagnosis

    # the report of the issue: a stage 1% busy with work waiting was the "bottleneck"
    assert diagnosis({"idle": stage(0.01, [50, 40, 45, 30, 40]), "quiet": stage(0.0, [0])}
                     ) is None
    busy = diagnosis({"a": stage(0.85, [9, 9, 9, 9, 9]), "b": stage(0.95, [1, 1, 1, 1, 2]),
                      "c": stage(0.99, [0, 0, 0, 0, 0])})  # c: busy, but nothing waits
    assert busy == {"stage": "b", "reason": "busy", "why": "workers 95% busy, 2 waiting",
                    "knob": "more workers (workers:, scale:, or seda scale)"}
    starved = diagnosis({"a": stage(0.1, [1, 2, 3, 4, 5]), "b": stage(0.3, [10, 20, 30, 40, 50]),
                         "c": stage(0.5, [10, 20, 30, 30, 60])})  # c: not growing throughout
    assert starved == {"stage": "b", "reason": "starved",
                       "why": "queue growing to 50 while its workers are 30% busy",
                       "knob": "a larger window (prefetch:, or batching:)"}
    assert diagnosis({"new": stage(0.1, [1, 2, 3])}) is None  # 2 s of history first
    assert diagnosis({"a": stage(0.9, [5]), "b": stage(0.1, [1, 2, 3, 4, 5])})["stage"] == "a"
