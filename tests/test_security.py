"""Security promises with real processes: no pickle, private ipc endpoints, and client-facing
sockets in the acceptor alone."""

from __future__ import annotations

import errno
import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.runkit import SedaRun, pickle_uses, run_env
from tests.test_run_service import WEB, web

NOBODY = 65534


def test_the_pickle_guard_sees_pickle_in_any_process(tmp_path: Path) -> None:
    """Every `seda run` of the tests loads the guard and fails its test if pickle was used
    (runkit.SedaRun.cleanup); here is the guard catching pyzmq's pickling calls."""
    code = ("import zmq; c = zmq.Context(); a = c.socket(zmq.PAIR); b = c.socket(zmq.PAIR); "
            "a.bind('inproc://x'); b.connect('inproc://x'); a.send_pyobj({'x': 1}); "
            "assert b.recv_pyobj() == {'x': 1}")
    done = subprocess.run([sys.executable, "-c", code], env=run_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    used = pickle_uses(tmp_path)
    assert "pickle.dumps" in used and "pickle.loads" in used, used


def connect_as(uid: int, endpoint: Path) -> int:
    """Connect to a unix socket from a forked child running as `uid`: 0 or the errno.
    (A fork, not a new interpreter: the interpreter's own files may be closed to `uid`.)"""
    pid = os.fork()
    if pid == 0:  # the child: no return, whatever happens
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(endpoint))
            code = 0
        except OSError as exc:
            code = exc.errno or 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_reach_a_stage(tmp_path: Path) -> None:
    with SedaRun(tmp_path, web(workers=1), "--listen", "127.0.0.1:0") as run:
        run.port()
        endpoint = run.run_dir() / "web.0"
        assert endpoint.is_socket()

        assert connect_as(NOBODY, endpoint) == errno.EACCES
        assert connect_as(os.getuid(), endpoint) == 0  # the owner can: the probe is sound
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr


def inet(proc: psutil.Process) -> list[psutil._common.pconn]:
    return proc.net_connections(kind="inet")


def test_only_the_acceptor_holds_client_connections(tmp_path: Path) -> None:
    graph = WEB.format(workers=2, timeout=10, conns=100, queue=100)
    with SedaRun(tmp_path, graph, "--listen", "127.0.0.1:0", "--status", "127.0.0.1:0") as run:
        port = run.port()
        status_port = int(run.status_url().rsplit(":", 1)[1])
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        client.request("GET", "/pid")
        answer = client.getresponse()
        assert answer.status == 200
        worker_pid = int(answer.read())  # the connection stays open (keep-alive)
        [acceptor] = run.workers("seda: acceptor")
        workers = run.workers("seda: worker")
        assert worker_pid in {w.pid for w in workers} and len(workers) == 2
        for worker in workers:
            assert inet(worker) == [], worker  # workers talk over ipc only
        mine = client.sock.getsockname()
        held = {(c.laddr.port, c.raddr.port if c.raddr else 0, c.status)
                for c in inet(acceptor)}
        assert (port, mine[1], psutil.CONN_ESTABLISHED) in held
        assert (port, 0, psutil.CONN_LISTEN) in held
        # the supervisor binds the port (so a restarted acceptor keeps it) and serves the
        # status page; it never holds a client's connection
        supervisor = {(c.laddr.port, c.status) for c in inet(psutil.Process(run.pid))}
        assert supervisor == {(port, psutil.CONN_LISTEN), (status_port, psutil.CONN_LISTEN)}
        client.close()
        with socket.create_connection(("127.0.0.1", port)):
            pass
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr
