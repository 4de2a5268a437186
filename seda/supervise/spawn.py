"""Starting children: a fresh interpreter (subprocess), or a fork of a warm *fork server*.

A fresh interpreter spends ~0.4 s importing seda (pydantic most of it) before it can work;
that was most of the time a restarted worker was out. So, where a graph has worker pools, the
supervisor starts one fork server (`python -m seda.supervise.spawn`) before its first child: a
single-threaded process that imports the worker's and the acceptor's modules once and then,
on request, forks a child from itself. The child must be the supervisor's own (pidfd, exit
status, no orphans), so the fork is doubled: the server forks A, A forks the child W and
exits, and W -- orphaned -- is adopted by the supervisor, which made itself a *child
subreaper* (Linux `PR_SET_CHILD_SUBREAPER`). A tells the server W's pid and exits; the server
reaps A -- from then on W is the supervisor's child -- and only then gives the supervisor W's
pid (before that, the supervisor's waitpid would fail: a race that once made it take a live
worker for dead). W waits until it has been adopted, then runs `seda.runtime.child.main` as a fresh
interpreter would.

Workers and acceptors come from the fork server. The server inherits the listening sockets
(and never uses them) so that a forked acceptor has its own at the same descriptor number;
every other forked child closes them (only the acceptor holds a client-facing socket). mp's
master and the source are fresh interpreters. Handler modules are imported by each child,
never by the server, so no user code runs before a fork. If the server is gone, children are
started as fresh interpreters: slower, same behaviour.

Wire (pipes, one line each): request a JSON list of seda.runtime.child's arguments, answer `pid`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import subprocess
import sys
import time
import traceback
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36
ANSWER_WAIT = 5.0  # s: the server answers in milliseconds; longer means it is stuck


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); False where that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Forked:
    """A child made by the fork server: the subset of subprocess.Popen the supervisor uses.
    It is our child (adopted), so waitpid works."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)


class ForkServer:
    """The supervisor's handle on its fork server."""

    def __init__(self, parent: int, listeners: tuple[int, ...] = ()) -> None:
        """`listeners`: the listening sockets' descriptors, inherited by the server so that
        an acceptor forked from it gets its own (and every other child closes them)."""
        self.requests_r, self.requests_w = os.pipe()
        self.answers_r, self.answers_w = os.pipe()
        self.proc: Any = subprocess.Popen(
            [sys.executable, "-m", "seda.supervise.spawn", str(parent), str(self.requests_r),
             str(self.answers_w), json.dumps(list(listeners))], stdin=subprocess.DEVNULL,
            pass_fds=(self.requests_r, self.answers_w, *listeners))
        os.close(self.requests_r)
        os.close(self.answers_w)
        self.buffer = b""

    @property
    def pid(self) -> int:
        return int(self.proc.pid) if self.proc is not None else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *args: str) -> Forked | None:
        """Fork a child from the server (`args`: seda.runtime.child's arguments); None if the
        server cannot (then start it fresh)."""
        if not self.alive():
            return None
        try:
            os.write(self.requests_w, json.dumps(args).encode() + b"\n")
            deadline = time.monotonic() + ANSWER_WAIT
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.answers_r], [], [], left)[0]:
                    raise OSError("the fork server did not answer")
                chunk = os.read(self.answers_r, 64)
                if not chunk:
                    raise OSError("the fork server is gone")
                self.buffer += chunk
        except OSError:
            self.close()
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return Forked(int(line))

    def close(self) -> None:
        if self.proc is None:
            return
        for fd in (self.requests_w, self.answers_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None


def _run_adopted(parent: int, first: int, argv: list[str]) -> None:
    """In W (forked by `first`): wait to be adopted by the supervisor, run the child, exit
    (never return)."""
    from seda.runtime.child import main

    code = 1
    try:
        while os.getppid() == first:  # A is on its way out
            time.sleep(0.001)
        if os.getppid() == parent:  # adopted (else the supervisor is gone: so are we)
            code = main(argv)
    except BaseException:  # what a fresh interpreter would print on its way out
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve(parent: int, requests: int, answers: int, listeners: list[int]) -> None:
    from setproctitle import setproctitle

    import seda.runtime.acceptor  # the imports this server exists to do once
    import seda.runtime.worker  # noqa: F401

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401  (the acceptor's event loop, when installed)
    setproctitle("seda: fork server")
    stream = os.fdopen(requests, "rb")
    for line in stream:
        args = [str(a) for a in json.loads(line)]  # plan, name, supervisor pid(, fd)
        read_pid, write_pid = os.pipe()
        first = os.fork()
        if first == 0:
            me = os.getpid()
            worker = os.fork()
            if worker:  # A: say who W is, then leave W to be adopted
                os.write(write_pid, f"{worker}\n".encode())
                os._exit(0)
            stream.close()
            mine = {int(a) for a in args[3:]}  # an acceptor keeps its listening socket
            for fd in (answers, read_pid, write_pid, *(set(listeners) - mine)):
                os.close(fd)
            _run_adopted(parent, me, ["seda.runtime.child", *args])
        os.close(write_pid)
        with os.fdopen(read_pid, "rb") as said:
            worker_pid = said.read().strip()
        os.waitpid(first, 0)  # A is gone, so W has been adopted: only now is it the
        os.write(answers, worker_pid + b"\n")  # supervisor's child (waitpid works)


def main(argv: list[str]) -> int:
    from seda.runtime.child import ignore_stop_signals
    from seda.runtime.node import die_with_parent

    ignore_stop_signals()
    parent = int(argv[1])
    die_with_parent(parent)
    with contextlib.suppress(KeyboardInterrupt):
        _serve(parent, int(argv[2]), int(argv[3]), json.loads(argv[4]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
