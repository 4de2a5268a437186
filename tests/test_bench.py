"""`seda bench` end to end at a tiny scale: every model serves, the report is complete, and
nothing is left running. No timing is asserted (these machines are noisy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from seda.bench import loadgen
from seda.names import MODELS
from tests.runkit import live_descendants


def bench(root: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    before = live_descendants()
    done = subprocess.run(
        [sys.executable, "-m", "seda.cli", "bench", str(root / "graphs" / "work.yaml"),
         "--out", str(out), "--duration", "0.5", "--warmup", "0.2", *args],
        capture_output=True, text=True, timeout=240, cwd=root)
    left = live_descendants() - before
    assert not left, f"the bench left processes running: {left}"
    return done


def test_bench_runs_every_model_and_writes_the_report(root: Path, tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed (tools/test installs it)")
    done = bench(root, tmp_path, "--connections", "1,4", "--path", "/hello", "--processes",
                 "2")
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = doc["rows"]
    points = {(r["model"], r["path"], r["connections"]) for r in rows}
    assert points == {(m, "/hello", c) for m in MODELS for c in (1, 4)}
    for row in rows:
        assert row["loadgen"] == "wrk"
        assert row["requests"] > 0 and row["errors"] == 0 and row["non_2xx"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], row
        assert row["server_cores"] > 0, row
    # the models are themselves: mp has a process per connection, symped two loops (the
    # processes a point saw, supervisor included)
    procs = {(r["model"], r["connections"]): r["processes"] for r in rows}
    assert procs[("sped", 1)] == procs[("sped", 4)] == 2  # supervisor + acceptor
    assert procs[("symped", 4)] == 3
    assert procs[("mp", 1)] == 2 + 1  # supervisor, master, one per connection...
    assert procs[("mp", 4)] == 2 + 2  # ... up to the cap (--processes 2)
    report = (tmp_path / "report.md").read_text()
    assert "| model | connections | rps |" in report
    assert report.count("| symped |") == 2 and "## /hello" in report
    assert (tmp_path / "hello.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ET.parse(tmp_path / "hello.svg").getroot().tag.endswith("svg")
    assert done.stderr.count(" req/s ") == len(rows)  # a line per point as it goes


def test_open_loop_with_seda_load_generator(root: Path, tmp_path: Path) -> None:
    done = bench(root, tmp_path, "--models", "amped,sped", "--connections", "2",
                 "--path", "/hello", "--path", "/mixed", "--rate", "400", "--loadgen", "seda")
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["model"], r["path"]) for r in rows] == [
        ("amped", "/hello"), ("amped", "/mixed"), ("sped", "/hello"), ("sped", "/mixed")]
    assert "## /mixed" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "mixed.png").exists() and (tmp_path / "mixed.svg").exists()
    for row in rows:
        assert row["loadgen"] == "seda" and row["rate"] == 400
        # open loop: the server is offered 400/s and keeps up, so about 200 in 0.5 s
        assert 100 <= row["requests"] <= 201 and row["errors"] == 0, row


def test_bench_rejects_what_it_cannot_run(root: Path, tmp_path: Path) -> None:
    done = bench(root, tmp_path, "--models", "sped,nope")
    assert done.returncode == 2 and "unknown model 'nope'" in done.stderr
    pipeline = subprocess.run([sys.executable, "-m", "seda.cli", "bench",
                               str(root / "graphs" / "pipeline.yaml")],
                              capture_output=True, text=True, timeout=60, cwd=root)
    assert pipeline.returncode == 2 and "no http acceptor" in pipeline.stderr
    wrk_open = bench(root, tmp_path, "--models", "sped", "--rate", "10", "--loadgen", "wrk")
    assert wrk_open.returncode == 1 and "needs --loadgen seda" in wrk_open.stderr


def test_load_generator_summary_percentiles() -> None:
    result = loadgen.LoadResult(requests=100, duration=2.0,
                                latencies=[i / 1000 for i in range(1, 101)])
    summary = result.summary()
    assert summary["rps"] == 50.0
    assert (summary["p50_ms"], summary["p90_ms"], summary["p99_ms"], summary["max_ms"]) == \
        (51.0, 91.0, 100.0, 100.0)


def test_open_loop_follows_every_request_due_in_the_window_to_its_answer() -> None:
    """A server that takes 0.3 s per request on each connection, offered 10 req/s for 1 s
    on 2 connections: most answers come after the window ends. Every request due in the
    window is still counted, with its full latency (cut off at the end, a slow server
    looked slower than it is: its last answers were missing from its goodput)."""
    import http.server
    import threading
    import time

    class Slow(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # the stdlib's name
            time.sleep(0.3)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        result = loadgen.run(f"http://127.0.0.1:{server.server_address[1]}/", 2, 1.0,
                             rate=10, timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    summary = result.summary()
    # 9 or 10 are due in the window (its start waits for the connections); cut off at the
    # end, only 5 or 6 of them were counted (those answered within the first second)
    assert set(summary["statuses"]) == {"200"} and summary["statuses"]["200"] >= 9, summary
    assert summary["errors"] == 0, summary


def test_a_benchmark_stopped_by_sigterm_stops_the_servers_it_started() -> None:
    """SIGTERM to a benchmark script while its server is up: the script unwinds and stops
    the `seda run` it started -- nothing of it is left (before, the server ran on)."""
    import contextlib
    import signal
    import time

    root = Path(__file__).resolve().parent.parent
    tool = subprocess.Popen([sys.executable, str(root / "tools" / "bench_batching.py"),
                             "--duration", "60", "--connections", "1", "--repeat", "1"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    me = psutil.Process(tool.pid)
    seen: list[psutil.Process] = []

    def server_up() -> bool:
        for proc in seen:
            with contextlib.suppress(psutil.NoSuchProcess):  # (one that ended meanwhile)
                if "seda: acceptor" in " ".join(proc.cmdline()):
                    return True
        return False

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not server_up():
            time.sleep(0.2)
            seen = me.children(recursive=True)
        assert server_up(), "no server up"
        tool.send_signal(signal.SIGTERM)
        assert tool.wait(30) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(seen, timeout=15)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
        for proc in seen:  # a failed test leaves nothing either
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(seen, timeout=5)


@contextmanager
def contender(root: Path, flag: str) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """A server of tools/bench_http.py (`--serve-...`) on a free port, with a keep-alive
    connection whose first GET / is sent once it listens; killed at the end if still up."""
    import http.client
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(root / "tools" / "bench_http.py"), flag,
                               str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:  # it listens once it is up (amped-min: once its worker is)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                break
            except OSError:
                assert time.monotonic() < deadline, f"{flag}: never listened"
                time.sleep(0.05)
        yield server, conn
        conn.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_amped_ceiling_answers_and_stops_its_worker_on_sigterm(root: Path) -> None:
    """tools/bench_http.py's amped-min (the AMPED ceiling beside seda in the benchmark):
    real HTTP over its zmq round trip, then SIGTERM ends it and its worker process."""
    import signal

    with contender(root, "--serve-amped-min") as (server, conn):
        for _ in range(3):  # keep-alive: several round trips on one connection
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello, world\n")
            conn.request("GET", "/")
        conn.getresponse().read()
        worker = psutil.Process(server.pid).children(recursive=True)
        assert len(worker) == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
        _, alive = psutil.wait_procs(worker, timeout=10)
        assert not alive, "the amped-min worker outlived its server"


def test_the_uvicorn_contender_serves_the_same_hello_and_stops(root: Path) -> None:
    """tools/bench_http.py's uvicorn contender (a raw ASGI app, one worker) answers what the
    other contenders answer, and SIGTERM ends it."""
    import signal

    with contender(root, "--serve-uvicorn") as (server, conn):
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello, world\n")
        server.send_signal(signal.SIGTERM)
        # (uvicorn shuts down, then raises the signal it caught again: 128 + SIGTERM)
        assert server.wait(15) in (0, 128 + signal.SIGTERM, -signal.SIGTERM)


def test_hot_path_tool_drives_a_worker_and_the_acceptor(root: Path) -> None:
    """tools/hot_path.py at a tiny scale: its worker and acceptor harnesses still fit the
    code they drive (the acceptor's checks that every request got its reply written)."""
    sys.path.insert(0, str(root / "tools"))
    try:
        import hot_path
    finally:
        sys.path.remove(str(root / "tools"))
    assert hot_path.worker_path(messages=640, reps=1) > 0
    assert hot_path.worker_floor_path(messages=640, reps=1) > 0
    assert hot_path.acceptor_path(requests=64, reps=1) > 0


WRK_OUTPUT = """Running 4s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.61ms    2.06ms  28.70ms   71.50%
    Req/Sec    11.50k     2.23k   19.21k    80.99%
  Latency Distribution
     50%    5.45ms
     75%    6.13ms
     90%    7.26ms
     99%  870.00us
  45898 requests in 4.02s, 3.41MB read
Requests/sec:  11428.36
Transfer/sec:      0.85MB
"""


def test_bench_http_reads_the_percentiles_not_a_stdev_column(root: Path) -> None:
    """wrk's "+/- Stdev" column can end in 50% or 99% (71.50%, 80.99%): the figures come from
    the latency distribution's own lines, in milliseconds whatever unit wrk printed."""
    sys.path.insert(0, str(root / "tools"))
    try:
        import bench_http
    finally:
        sys.path.remove(str(root / "tools"))
    assert bench_http.wrk_figures(WRK_OUTPUT) == (11428.36, 5.45, 0.87)


def test_the_startup_and_pipeline_benchmarks_run_at_a_tiny_scale(root: Path) -> None:
    """tools/bench_startup.py, bench_pipeline.py and bench_routes.py still drive seda as
    they say (a figure per line; no timing is checked)."""
    done = subprocess.run([sys.executable, "tools/bench_startup.py", "--runs", "1"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    labels = [line.split(" median ")[0].strip() for line in done.stdout.splitlines()[1:]]
    assert labels == ["python -c pass", "python -c 'import seda.cli'",
                      "pipeline: 1 item, start to exit",
                      *(f"service ({m}): first answer"
                        for m in ("seda", "amped", "sped", "symped", "mp"))], done.stdout
    done = subprocess.run([sys.executable, "tools/bench_pipeline.py", "--items", "2000",
                           "--repeat", "1", "--no-pypeln"], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split()[0] for line in done.stdout.splitlines() if "msgs/s" not in line
            and line.startswith("  ") and "without its start-up" not in line]
    assert rows == ["seda", "seda-tuned", "zmq-batch", "mp-queue"] * 2, done.stdout
    done = subprocess.run([sys.executable, "tools/bench_routes.py", "--runs", "1",
                           "--seconds", "1", "--clients", "4"], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [run] = done.stdout.splitlines()[1:]
    assert run.startswith("  run 1: GET /item/7: ") and "POST /checkout statuses {" in run, run
