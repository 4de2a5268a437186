"""Health for process managers: /healthz and /readyz on the status server, and systemd's
readiness protocol (READY=1 once the graph serves, STOPPING=1 when it drains), checked with
a real notify socket, a real service and real HTTP clients."""

from __future__ import annotations

import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from seda.supervise.sdnotify import Notifier
from tests.runkit import SedaRun, wait_for

SERVICE = """
name: healthy
acceptor: {listen: "127.0.0.1:0", protocol: http, entry: web}
stages:
  web: {handler: stagekit:web, workers: 2}
"""


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as page:
            return page.status, page.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_notifier_speaks_only_when_asked(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "none"), "OTHER": "x"}
    notify = Notifier(env)
    assert env == {"OTHER": "x"}  # taken out: children do not notify in our name
    assert not notify("READY=1")  # nobody listens there: no error, no message
    assert not Notifier({})("READY=1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0seda-test-notify")  # an abstract address, as systemd may give
        assert Notifier({"NOTIFY_SOCKET": "@seda-test-notify"})("READY=1", "STATUS=up")
        assert manager.recv(4096) == b"READY=1\nSTATUS=up"


def test_ready_and_stopping_are_told_to_systemd_and_probes(tmp_path: Path) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(30)
    told: list[tuple[float, str]] = []

    def listen() -> None:
        try:
            while True:
                told.append((time.monotonic(), manager.recv(4096).decode()))
        except OSError:
            return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        run = SedaRun(tmp_path, SERVICE, "--status", "127.0.0.1:0",
                      env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        with run:
            wait_for(lambda: told, 30, "READY=1")
            fields = told[0][1].split("\n")
            assert fields[0] == "READY=1" and f"MAINPID={run.pid}" in fields, fields
            assert "STATUS=graph healthy running, model seda" in fields
            port = run.port()
            workers = run.workers("seda: worker")
            assert len(workers) == 2
            for worker in workers:  # only the supervisor notifies
                assert "NOTIFY_SOCKET" not in worker.environ()
            # ready means serving: the first request after READY=1 is answered at once
            assert get(f"http://127.0.0.1:{port}/x") == (200, "GET /x")
            status = run.status_url()
            assert get(f"{status}/healthz") == (200, "ok\n")
            assert get(f"{status}/readyz") == (200, "ready\n")
            # no token needed, and any Host (a probe reaches the pod's address)
            probe = urllib.request.Request(f"{status}/readyz", headers={"Host": "10.1.2.3"})
            with urllib.request.urlopen(probe, timeout=10) as page:
                assert page.status == 200
            # a slow request keeps the drain going while the probes look
            slow = threading.Thread(target=get, args=(f"http://127.0.0.1:{port}/sleep?s=3",))
            slow.start()
            wait_for(lambda: run.status().get("front", {}).get("requests", 0) >= 2, 10,
                     "the slow request read")
            run.signal(signal.SIGTERM)
            wait_for(lambda: len(told) >= 2, 10, "STOPPING=1")
            assert told[1][1].split("\n")[:2] == ["STOPPING=1", "STATUS=draining (SIGTERM)"]
            assert get(f"{status}/readyz") == (503, "not ready: draining\n")
            assert get(f"{status}/healthz") == (200, "ok\n")
            slow.join(30)
            assert run.wait(30) == 0, run.stderr
        assert len(told) == 2  # once each
    finally:
        manager.close()
        listener.join(5)
