"""MP: a process per connection. The master accepts; each connection gets its own forked
process, which reads a request, runs the whole graph on it, writes the reply, and repeats, in
lock-step, until the client closes.

The classic model, kept honest: handlers are imported and `setup` runs once in the master
before any fork, so a connection process starts warm (copy-on-write) but keeps no state
between connections. At most `plan.processes` connection processes live at once; past the cap
the master stops accepting and new connections wait in the kernel's listen backlog until a
process ends (Apache's MaxRequestWorkers behaviour).

Resource handling: the master reaps its children with wait4 (their CPU time is counted);
each child writes its figures to a pipe when it ends (one atomic write) and dies with the
master (PR_SET_PDEATHSIG). Drain: on `stop_intake` the master stops accepting and sends each
connection process SIGTERM, which finishes the request in hand, then closes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import zmq
from setproctitle import setproctitle

from seda.engine.codec import Codec, encode_reply, encode_streamed, make_codec
from seda.engine.codec.http import HttpCodec
from seda.engine.credit import DeadLetter
from seda.engine.stage import Group, StageCore
from seda.engine.throttle import Throttle
from seda.engine.wire import PAYLOAD, REQUEST, Envelope, Order, StopIntake
from seda.errors import ProtocolError
from seda.plan.deployment import Plan
from seda.runtime import access
from seda.runtime.aio import Cutoffs, new_loop
from seda.runtime.listener import tune
from seda.runtime.node import Node, die_with_parent
from seda.runtime.watchdog import Watchdog

# figures a connection process reports when it ends: one write, under PIPE_BUF, so atomic
REPORT = struct.Struct("<5Q")
REPORTED = ("requests", "responses", "protocol_errors", "failed", "dead_letters")  # failed: 500s
CAPACITY_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Connection:
    """The life of one connection process: lock-step read, run, write."""

    def __init__(self, master: Master, sock: socket.socket) -> None:
        self.master, self.sock = master, sock
        self.limits = master.limits
        self.codec: Codec = make_codec(master.protocol, master.limits)
        self.figures = dict.fromkeys(REPORTED, 0)
        self.throttle = Throttle()
        self.client = ""
        try:
            name = sock.getpeername()
        except OSError:  # gone already
            name = None
        if master.plan.access_log:
            self.client = access.peer(name)
        if isinstance(self.codec, HttpCodec):  # an HTTP request says who sent it
            self.codec.client = access.address(name)
        self.read_at = 0.0  # when the requests being answered were read (the access log)
        # parts of streamed replies (ctx.stream), by request: [head, data, ...]. mp answers
        # a connection's requests in lock-step, so a streamed reply goes out whole
        self.streams: dict[int, list[Any]] = {}
        master.core.streamer = self.stream_part
        self.stopping = False
        # SIGTERM (the drain) sets `stopping` and wakes the select below through this pipe
        self.wake, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self.on_term)

    def on_term(self, _signum: int, _frame: Any) -> None:
        self.stopping = True  # answer what the client has sent already, then close

    def serve(self) -> None:
        sock, codec = self.sock, self.codec
        fd, partial_since = sock.fileno(), 0.0
        while True:
            now = time.monotonic()
            if codec.partial():
                timeout = self.limits.header_timeout - (now - partial_since)
            else:
                timeout = 0.0 if self.stopping else self.limits.idle_timeout
            ready = select.select([fd, self.wake], [], [], max(timeout, 0.0))[0]
            if fd not in ready:
                if self.wake in ready and not self.stopping:
                    os.read(self.wake, 64)
                    continue
                if codec.partial() and not self.stopping:
                    self.write(codec.error_reply(ProtocolError("request not received in time",
                                                               408)), None)
                return  # idle too long, or draining with nothing left to answer
            data = sock.recv(1 << 16)
            if not data:
                return
            self.read_at = time.monotonic()
            was_partial = codec.partial()
            try:
                requests = codec.feed(data)
            except ProtocolError as exc:  # answer what came before the fault, then the error
                self.figures["protocol_errors"] += 1
                self.answer(exc.requests)
                self.write(codec.error_reply(exc), None)
                return
            if codec.partial() and (not was_partial or requests):
                partial_since = time.monotonic()
            if self.answer(requests):
                return

    def stream_part(self, _origin: str, row: list[Any]) -> None:
        request, seq, head, data = row
        if seq == 0:  # (a re-run starts the reply over: nothing of it is written yet)
            self.streams[request] = [head]
        self.streams[request].append(data)

    def answer(self, requests: list[Any]) -> bool:
        """Run `requests` through the graph and write the replies in order; True: close."""
        if not requests:
            return False
        master, codec = self.master, self.codec
        self.figures["requests"] += len(requests)
        deadline = time.time() + self.limits.request_timeout
        envs = [[i, master.name, 1, deadline, request, i, 0]  # run at once: no queue wait
                for i, request in enumerate(requests)]
        group = master.core.process(master.entry, envs) if master.loop is None else \
            master.loop.run_until_complete(master.run_async(envs))
        replies: dict[int, tuple[bytes, bool]] = {}
        for env in group.results:
            if env[REQUEST] not in replies:  # the first reply to a request is its answer
                parts = self.streams.pop(env[REQUEST], None)
                data, close, why = encode_reply(codec, env[PAYLOAD], requests[env[REQUEST]]) \
                    if parts is None else encode_streamed(codec, parts[0], parts[1:],
                                                          env[PAYLOAD], requests[env[REQUEST]])
                if why:
                    self.throttle.say("bad reply", f"a reply could not be sent (answered "
                                                   f"500): {why}")
                replies[env[REQUEST]] = data, close
        for env, error, tb in group.failed:
            self.figures["failed"] += 1
            self.figures["dead_letters"] += 1
            master.dead_letter([DeadLetter(master.entry, env, error, tb)])
            replies[env[REQUEST]] = codec.error_reply(ProtocolError("the handler failed", 500)), \
                False
        for env, why in group.overran:
            self.figures["failed"] += 1
            self.figures["dead_letters"] += 1
            master.dead_letter([DeadLetter(master.entry, env, why, status=504)])
            replies[env[REQUEST]] = codec.error_reply(ProtocolError(
                "the handler ran over its time limit", 504)), False
        self.streams.clear()  # (those of requests that failed)
        out, close = [], False
        for i in range(len(requests)):
            data, close = replies.get(i) or (codec.error_reply(ProtocolError("no reply", 504)),
                                             False)
            out.append(data)
            if close:
                break
        self.figures["responses"] += len(out)
        self.sock.sendall(b"".join(out))  # (a client that reads nothing is dropped at
        # idle_timeout)
        if self.client:
            for request, data in zip(requests, out, strict=False):
                self.log_access(request, data)
        return close

    def write(self, data: bytes, request: Any) -> None:
        """The server's own answer (400, 408): written, and logged."""
        self.sock.sendall(data)
        if self.client:
            self.log_access(request, data)

    def log_access(self, request: Any, data: bytes) -> None:
        took = time.monotonic() - self.read_at if self.read_at else 0.0
        access.log(self.client, request, data, len(data), took,
                   self.master.protocol == "http")


class Master(Node):
    """The accepting process of the mp model; forks a connection process per client."""

    def __init__(self, plan: Plan, name: str, parent: int, listen_fd: int,
                 resolve: Callable[[str], Any]) -> None:
        super().__init__(plan, name, parent)
        acc = self.spec.acceptor
        assert acc is not None
        self.acc, self.limits, self.protocol, self.entry = acc, acc.limits, acc.protocol, \
            acc.entry
        self.core = StageCore(self.spec, self.me.stages, 0, resolve)
        self.core.setup()  # once, before any fork: connection processes start warm
        # async handlers: each connection process makes its own event loop (a loop must not
        # cross a fork) and runs the async setup there, before its first request
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cutoffs: Cutoffs | None = None  # the time limits of its calls (async graphs)
        self.listen_sock = socket.socket(fileno=listen_fd)
        self.listen_sock.setblocking(False)
        self.cap = plan.processes
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.accepting = self.listening = True
        self.poller.register(self.listen_sock, zmq.POLLIN)
        self.reports, self._report_w = os.pipe()
        os.set_blocking(self.reports, False)
        self.poller.register(self.reports, zmq.POLLIN)
        self._partial = b""
        self.cpu = [0.0, 0.0]  # user, system seconds of ended connection processes
        for key in ("accepted", "accept_errors", "forks", "crashed", "peak_processes",
                    *REPORTED):
            self.counters[key] = 0

    # ------------------------------------------------------------------ the loop
    def step(self) -> None:
        self._reap()
        self._read_reports()
        if self.accepting:
            self._accept()
        # at the cap, stop polling the listening socket (it would stay readable: a spin)
        want = self.accepting and len(self.children) < self.cap
        if want != self.listening:
            self.listening = want
            if want:
                self.poller.register(self.listen_sock, zmq.POLLIN)
            else:
                self.poller.unregister(self.listen_sock)

    def _accept(self) -> None:
        while len(self.children) < self.cap:
            try:
                conn, _ = self.listen_sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors or memory: count, retry on next poll
                if exc.errno in CAPACITY_ERRORS:
                    self.counters["accept_errors"] += 1
                    return
                raise
            self.counters["accepted"] += 1
            self._fork(conn)

    def _fork(self, conn: socket.socket) -> None:
        # SIGTERM stays blocked until the child has its handler (a drain is never missed)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            pid = os.fork()
        except OSError:
            self.counters["accept_errors"] += 1
            conn.close()
            return
        finally:
            if os.getpid() == self.pid:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if pid == 0:  # the connection process: never returns
            code = 1
            try:
                code = self._child(conn)
            finally:
                os._exit(code)
        conn.close()
        self.children.add(pid)
        self.counters["forks"] += 1
        self.counters["peak_processes"] = max(self.counters["peak_processes"],
                                              len(self.children))

    def _child(self, sock: socket.socket) -> int:
        die_with_parent(self.pid)
        setproctitle("seda: mp connection")
        self.listen_sock.close()
        os.close(self.reports)
        connection = Connection(self, sock)
        limits = {s: lim for s in self.me.stages if (lim := self.spec.call_limit(s))}
        if limits:  # a call past its limit ends this connection's process
            Watchdog(self.core, limits, "", self.name, lambda: ("", [])).start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if self.core.needs_loop:
            self.loop = new_loop()
            self.cutoffs = Cutoffs(self.loop)
            self.loop.run_until_complete(self.core.setup_async())
        try:
            sock.settimeout(self.limits.idle_timeout)  # bounds a send to a stalled client
            tune(sock, self.acc)
            connection.serve()
        except OSError:
            pass  # the client went away
        finally:
            if self.loop is not None:
                self.loop.run_until_complete(self.core.teardown_async())
            sock.close()
            values = [connection.figures[k] for k in REPORTED]
            os.write(self._report_w, REPORT.pack(*values))
        return 0

    async def run_async(self, envs: list[Envelope]) -> Group:
        """A connection's requests through an async graph, at once: one group of them all."""
        core, entry, limit = self.core, self.entry, self.spec.call_limit(self.entry)
        cutoffs = self.cutoffs
        assert cutoffs is not None
        if core.runners[entry].batch is not None:
            return await cutoffs.run(core, entry, envs, True, limit)
        total = Group([])
        for group in await asyncio.gather(*(cutoffs.run(core, entry, [env], False, limit)
                                            for env in envs)):
            total.inputs += group.inputs
            total.results += group.results
            total.failed += group.failed
            total.overran += group.overran
            total.dropped += group.dropped
        return total

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.cpu[0] += usage.ru_utime
            self.cpu[1] += usage.ru_stime
            if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0:
                self.counters["crashed"] += 1  # its client saw the connection close

    def _read_reports(self) -> None:
        try:
            data = self._partial + os.read(self.reports, 1 << 16)
        except BlockingIOError:
            return
        whole = len(data) - len(data) % REPORT.size
        for values in REPORT.iter_unpack(data[:whole]):
            for key, value in zip(REPORTED, values, strict=True):
                self.counters[key] += value
        self._partial = data[whole:]

    # ------------------------------------------------------------------ control and end
    def on_control(self, order: Order) -> None:
        if isinstance(order, StopIntake):
            self.accepting = False
            self._signal_children(signal.SIGTERM)
        else:
            super().on_control(order)

    def _signal_children(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                self.children.discard(pid)

    def close(self) -> None:
        """End every connection process (SIGTERM, then SIGKILL after a second), reap them."""
        self._signal_children(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        self._signal_children(signal.SIGKILL)
        while self.children:
            self._reap()
            time.sleep(0.001)
        self._read_reports()
        try:
            self.core.teardown()
        finally:
            self.report()
            super().close()

    def pending(self) -> int:
        return super().pending() + len(self.children)

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.children), "processes": len(self.children),
                "cap": self.cap, "children_cpu_user": round(self.cpu[0], 3),
                "children_cpu_system": round(self.cpu[1], 3)}
