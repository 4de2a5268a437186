"""What makes each server model itself, checked on the running processes: symped's N
listening sockets on one port, mp's process per connection and its cap, drains."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from seda.plan.deployment import Plan
from tests.runkit import SedaRun, live_descendants, wait_for
from tests.test_run_service import web


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read().decode()


def listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets in LISTEN state on `port` (from /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rpartition(":")[2], 16) == port:
            inodes.add(inode)
    return inodes


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def test_symped_runs_n_event_loops_each_with_its_own_listening_socket(tmp_path: Path) -> None:
    run = SedaRun(tmp_path, web(), "--listen", "127.0.0.1:0", "--model", "symped",
                  "--processes", "3")
    port = run.port()
    with run:
        acceptors = wait_for(lambda: len(run.workers("seda: acceptor#")) == 3
                             and run.workers("seda: acceptor#"), 10, "three acceptors")
        inodes = listening_inodes(port)
        assert len(inodes) == 3, inodes  # three sockets on one port (SO_REUSEPORT)
        held = [socket_inodes(p.pid) & inodes for p in acceptors]
        assert all(len(h) == 1 for h in held) and len(set().union(*held)) == 3, held
        assert "3 listeners" in run.err_file.read_text()
        # the kernel spreads new connections over the sockets: several loops answer
        pids: set[str] = set()
        for _ in range(300):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status, pid = get(conn, "/pid")
            conn.close()
            assert status == 200
            pids.add(pid)
            if len(pids) == 3:
                break
        assert pids == {str(p.pid) for p in acceptors}


def test_mp_forks_a_process_per_connection_and_respects_its_cap(tmp_path: Path) -> None:
    run = SedaRun(tmp_path, web(), "--listen", "127.0.0.1:0", "--model", "mp",
                  "--processes", "2")
    port = run.port()
    with run:
        master = wait_for(lambda: run.workers("seda: master"), 10, "the master")[0]
        a = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        b = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        pid_a = get(a, "/pid")[1]
        assert get(a, "/pid")[1] == pid_a  # keep-alive: the same process, lock-step
        pid_b = get(b, "/pid")[1]
        assert pid_a != pid_b
        children = {str(p.pid) for p in master.children()}
        assert {pid_a, pid_b} <= children
        assert " ".join(psutil.Process(int(pid_a)).cmdline()).strip() == "seda: mp connection"
        # at the cap (2), a third connection waits in the listen backlog
        answers: list[tuple[int, str]] = []
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)

        def third() -> None:
            answers.append(get(c, "/pid"))

        thread = threading.Thread(target=third)
        thread.start()
        thread.join(1.0)
        assert answers == [] and len(master.children()) == 2
        a.close()  # its process ends, which frees a place for the waiting connection
        thread.join(10)
        assert answers and answers[0][0] == 200, answers
        assert answers[0][1] not in (pid_a, pid_b)
        wait_for(lambda: not psutil.pid_exists(int(pid_a))
                 or psutil.Process(int(pid_a)).status() == psutil.STATUS_ZOMBIE, 5,
                 "the first connection's process to end")
        b.close()
        c.close()
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0
        assert "4 requests, 4 responses" in run.stderr, run.stderr


def test_mp_drain_finishes_the_request_in_hand(tmp_path: Path) -> None:
    run = SedaRun(tmp_path, web(), "--listen", "127.0.0.1:0", "--model", "mp")
    port = run.port()
    with run:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        answers: list[tuple[int, str]] = []
        thread = threading.Thread(target=lambda: answers.append(get(conn, "/sleep?s=1")))
        thread.start()
        wait_for(lambda: run.workers("seda: mp connection"), 5, "the connection process")
        run.signal(signal.SIGTERM)
        thread.join(10)
        assert answers == [(200, "slept")]
        assert run.wait(30) == 0, run.stderr
        with socket.socket() as s:  # the port is closed: nothing is listening any more
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_sigterm_to_the_whole_process_group_stops_every_model_once(tmp_path: Path) -> None:
    """Children leave stopping to the supervisor: nothing is restarted, figures are kept."""
    for model in ("seda", "symped", "mp"):
        folder = tmp_path / model
        folder.mkdir()
        run = SedaRun(folder, web(), "--listen", "127.0.0.1:0", "--model", model)
        port = run.port()
        with run:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            assert get(conn, "/pid")[0] == 200
            conn.close()
            run.signal_group(signal.SIGTERM)
            assert run.wait(30) == 0, run.stderr
            assert "restarting" not in run.stderr, run.stderr
            assert "1 requests, 1 responses" in run.stderr and "0 restarts" in run.stderr


def test_seda_plan_prints_the_processes_and_starts_nothing(root: Path) -> None:
    shop = str(root / "graphs" / "shop.yaml")
    before = live_descendants()
    text = subprocess.run([sys.executable, "-m", "seda.cli", "plan", shop, "--model", "mp",
                           "--processes", "9"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[:3] == [
        "graph 'shop', model mp: 1 process(es) besides the supervisor",
        "  PROCESS  ROLE    STAGES                    SENDS TO",
        "  master   master  parse, catalog, checkout  -"]
    assert "at most 9 alive" in text.stdout
    as_json = subprocess.run([sys.executable, "-m", "seda.cli", "plan", shop, "--json",
                              "--workers", "checkout=2"], capture_output=True, text=True,
                             timeout=60)
    plan = Plan.from_json(as_json.stdout)
    assert plan.model == "seda" and plan.pool_procs["checkout"] == ["checkout.0", "checkout.1"]
    bad = subprocess.run([sys.executable, "-m", "seda.cli", "plan",
                          str(root / "graphs" / "pipeline.yaml"), "--model", "symped"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"{root / 'graphs' / 'pipeline.yaml'}: model: model 'symped' "
                                 f"runs services")
    assert live_descendants() <= before
