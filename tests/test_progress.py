"""The live progress line of `seda run`: its text and rate (a fake clock), and a real service
run on a terminal (a pty) whose line counts the requests it serves."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from seda.observe.progress import Progress, line
from tests.runkit import live_descendants, run_env


def test_the_line_says_what_it_counts() -> None:
    assert line("requests", 12345, 3, 99.6, 1, 2, 0) == (
        "requests 12,345 · in flight 3 · 100/s · errors 1 · dead 2 · restarts 0")
    assert line("read", 0, 0, 0.0, 0, 0, 0).startswith("read 0 · in flight 0 · 0/s")


def test_the_rate_is_that_of_the_last_two_seconds() -> None:
    now = [0.0]
    progress = Progress(enabled=False, clock=lambda: now[0])
    assert progress.rate(0) == 0.0
    for t in range(1, 11):  # 100/s for 10 s
        now[0] = float(t)
        progress.rate(100 * t)
    for t in range(11, 14):  # then nothing comes: the rate falls to 0 within ~2 s
        now[0] = float(t)
        rate = progress.rate(1000)
    assert rate == 0.0
    assert len(progress._seen) <= 4  # bounded: only the last seconds are kept


SERVICE = """
name: counted
acceptor: {listen: "127.0.0.1:0", protocol: http, entry: web}
stages:
  web: {handler: stagekit:web, workers: 1}
"""


def test_a_service_on_a_terminal_counts_its_requests(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(SERVICE)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "seda.cli", "run", "g.yaml"],
                            cwd=tmp_path, env={**run_env(tmp_path), "COLUMNS": "200"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=follower, start_new_session=True)
    os.close(follower)
    seen = b""

    def read_for(seconds: float) -> None:
        nonlocal seen
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    seen += os.read(leader, 65536)
                except OSError:
                    return

    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", seen)):
            assert time.monotonic() < deadline and proc.poll() is None, seen[-2000:]
            read_for(0.2)
        port = int(found.group(1))
        for i in range(25):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/n{i}", timeout=10) as page:
                assert page.status == 200
        deadline = time.monotonic() + 15
        while b"requests 25 \xc2\xb7 in flight 0" not in seen:
            assert time.monotonic() < deadline, seen[-2000:]
            read_for(0.2)
    finally:
        before = live_descendants()
        proc.send_signal(signal.SIGTERM)  # a drain, as from a terminal's ^C
        try:
            code = proc.wait(30)
        finally:
            read_for(0.5)
            os.close(leader)
            left = [pid for pid in live_descendants() if pid in before]
            for pid in left:
                os.kill(pid, signal.SIGKILL)
    assert code == 0 and not left, (code, left, seen[-2000:])
