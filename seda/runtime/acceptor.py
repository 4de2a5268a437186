"""The acceptor: SPED front door of a service. One asyncio event loop (uvloop when installed)
accepts on the socket the supervisor bound, frames requests with a sans-IO codec, sends them
to the entry stage with credit, and writes replies back in request order per connection.

It is the only process that touches client sockets, and runs no handler. Limits, each with a
clear answer: max connections (accept, then close; counted), max in-flight per connection
(stop reading), entry queue full (503 / error reply at once), request deadline (504; a late
reply is dropped and counted), header and idle timeouts (close), request size (413/431).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import resource
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import zmq
from setproctitle import setproctitle

from seda.engine.codec import BAD_REPLY, Codec, encode_reply, make_codec, repeatable
from seda.engine.codec.http import HttpCodec
from seda.engine.config import CONCURRENCY
from seda.engine.controllers import AdmissionController, Classifier, Decision
from seda.engine.credit import DeadLetter, Dispatcher
from seda.engine.front import (
    LOST_TEXT,
    Book,
    Slot,
    cut,
    next_part,
    server_answer,
    take_ready,
    unsent_parts,
    wants_close,
)
from seda.engine.stage import FRONT_FIGURES, Group, StageCore
from seda.engine.throttle import Throttle
from seda.engine.wire import ID, ONCE, PAYLOAD, REQUEST, SAMPLE, Envelope, Order, Ready, StopIntake
from seda.errors import ProtocolError
from seda.log import LOG
from seda.plan.deployment import Plan
from seda.runtime import access
from seda.runtime.aio import Cutoffs
from seda.runtime.listener import tune
from seda.runtime.node import Node
from seda.runtime.watchdog import Watchdog

SEND_EARLY = 16  # requests queued since the last send that go to the entry stage at once
FD_RESERVE = 64  # descriptors kept free for the acceptor's own use (see connection_cap)
STREAM_MAX = 16 << 20  # bytes of a streamed reply that may wait for its client; past it,
# the reply is cut (a client that does not read must not fill our memory)
CLASS_WEIGHT = 4  # turns a priority level gets for each turn of the next less important one


class FileSend:
    """A file reply streamed with sendfile(2), from the page cache straight to the socket (no
    copy through Python). Tried at once (usually it all goes in one call); what the socket
    cannot take yet is sent when it is writable again. The event loop's transport owns the
    socket and uvloop has no loop.sendfile, so the wait is on a duplicate of the socket's
    descriptor, which the loop may watch; sending starts only once the transport has
    flushed what was written before (the head, earlier replies): bytes never overtake."""

    def __init__(self, conn: Connection, slot: Slot, sock: Any) -> None:
        assert slot.file is not None
        self.conn, self.slot, self.loop = conn, slot, conn.acceptor.loop
        self.fd, self.size = slot.file
        self.offset = 0
        self.sock = sock.fileno()
        self.watch = -1
        self.done = self._send()
        if not self.done:
            try:
                self.watch = os.dup(self.sock)
            except OSError:  # out of descriptors: this client cannot be served now
                self.conn.closed = True
                if conn.transport is not None:
                    conn.transport.abort()
                self.done = self.end()
                return
            self.loop.add_writer(self.watch, self._writable)

    def _send(self) -> bool:
        """Send what the socket takes; True once the file is out (or the connection is
        over), False to wait for writability."""
        transport = self.conn.transport
        if self.conn.closed or transport is None:
            return self.end()
        if transport.get_write_buffer_size():
            return False  # the transport first sends what it holds
        while self.offset < self.size:
            try:
                sent = os.sendfile(self.sock, self.fd, self.offset, self.size - self.offset)
            except BlockingIOError:
                return False
            except OSError:
                sent = 0
            if sent == 0:  # the client went away, or the file shrank under us
                self.conn.closed = True
                transport.abort()
                return self.end()
            self.offset += sent
        return self.end()

    def _writable(self) -> None:
        if self._send() and not self.conn.closed:
            self.conn.file_sent(self.slot)

    def end(self) -> bool:
        if self.fd >= 0:
            if self.watch >= 0:
                self.loop.remove_writer(self.watch)
                os.close(self.watch)
            os.close(self.fd)
            self.fd = self.watch = -1
        return True


def _what(request: Any) -> str:
    """A request named in a log line: 'GET /path', a RESP command's name, or its type."""
    if type(request) is dict:
        return f"{request.get('method')} {str(request.get('path'))[:80]}"
    if type(request) is list and request:
        return f"command {str(request[0])[:40]}"
    return f"a {type(request).__name__} request"


class Connection(asyncio.Protocol):
    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.codec: Codec = make_codec(acceptor.protocol, acceptor.limits)
        self.order: deque[Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False  # not reading: see _flow
        self.sending: FileSend | None = None  # a file reply on its way (others wait)
        self.write_blocked = False  # the transport holds more unsent replies than it likes
        self.max_inflight = acceptor.limits.max_inflight
        self.last_activity = self.partial_since = time.monotonic()
        self.eof = False  # the client half-closed: answer what it sent, then close
        self.client = ""  # host:port, for the access log (found when first needed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not a
        # subclass of asyncio.Transport, but has the same interface
        if not self.acceptor.admit(self):
            transport.abort()
            self.closed = True
            return
        tune(transport.get_extra_info("socket"), self.acceptor.acc)
        if self.acceptor.http:  # an HTTP request says who sent it (its "client")
            cast(HttpCodec, self.codec).client = access.address(
                transport.get_extra_info("peername"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.sending is not None:
            self.sending.end()
        self.acceptor.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = now = time.monotonic()
        codec = self.codec
        was_partial = codec.partial()
        try:
            requests = codec.feed(data)
        except ProtocolError as exc:  # answer what came before the fault, then the error
            self.acceptor.counters["protocol_errors"] += 1
            self.acceptor.count_status(str(exc.status_hint))
            self.acceptor.submit_all(self, exc.requests)
            self.answer_now(self.codec.error_reply(exc), close=True)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        if codec.partial() and (not was_partial or requests):
            self.partial_since = now
        if requests:
            self.acceptor.submit_all(self, requests)
            if len(self.order) >= self.max_inflight:
                self._flow()  # (reading can only stop here, and only for this reason)

    def eof_received(self) -> bool:
        """The client sent FIN (shutdown(SHUT_WR)): it sends no more, but may still read.
        Its requests are answered, then the connection closes; True keeps the transport
        open for those answers (returning None, asyncio's default, closed it at once)."""
        self.eof = True
        self.close_when_answered()
        return True

    def close_when_answered(self) -> None:
        if self.eof and not self.order and self.sending is None and not self.closed \
                and self.transport is not None:
            self.closed = True
            self.transport.close()  # (after what is buffered is written)

    def _flow(self) -> None:
        """Read from the client only while it has room: fewer than max_inflight requests
        unanswered, and its answers not piling up unsent (a client that sends and does not
        read would otherwise fill our memory with its replies)."""
        reading = not self.write_blocked and len(self.order) < self.max_inflight
        if self.eof:
            return  # nothing more will come
        if reading == self.paused and self.transport is not None and not self.closed:
            self.paused = not reading
            if reading:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def pause_writing(self) -> None:  # asyncio: the write buffer passed its high-water mark
        self.write_blocked = True
        self._flow()

    def resume_writing(self) -> None:  # ... and drained below its low-water mark
        self.write_blocked = False
        self._flow()

    def answer_now(self, data: bytes, close: bool) -> None:
        slot = Slot(self, None, data, close, True)
        self.order.append(slot)
        self.write_ready()

    def write_ready(self) -> None:
        """Write every finished reply at the head of the queue (request order)."""
        transport = self.transport
        if self.closed or transport is None:
            return
        while self.sending is None:
            ready = take_ready(self.order)  # (the finished replies go out in one write)
            if not ready:
                parts = unsent_parts(self.order)  # a streamed reply under way
                if parts:
                    transport.write(parts)
                break
            transport.write(ready[0].out if len(ready) == 1 else
                            b"".join([slot.out for slot in ready]))
            for slot in ready[:-1]:
                self.sent(slot)  # (only the last may close the connection)
            last = ready[-1]
            if last.file is not None:
                send = FileSend(self, last, transport.get_extra_info("socket"))
                if not send.done:  # the replies after it wait for the file
                    self.sending = send
                    return
                if self.closed:
                    return
            if self.sent(last):
                return
        self._flow()
        self.close_when_answered()

    def sent(self, slot: Slot) -> bool:
        """A reply is out: its response time is known; close if it asked. True if closed."""
        if slot.timed and self.acceptor.admission is not None:
            self.acceptor.answered(slot)
        if self.acceptor.access_log:
            self.log_access(slot)
        if slot.close and self.transport is not None:
            self.closed = True
            self.transport.close()
            return True
        return False

    def log_access(self, slot: Slot) -> None:
        if not self.client and self.transport is not None:
            self.client = access.peer(self.transport.get_extra_info("peername"))
        size = len(slot.out) + (slot.file[1] if slot.file is not None else 0)
        took = time.monotonic() - slot.start if slot.start else 0.0
        access.log(self.client, slot.request, slot.out, size, took, self.acceptor.http,
                   slot.rid)

    def file_sent(self, slot: Slot) -> None:
        self.sending = None
        if not self.sent(slot):
            self.write_ready()


class Acceptor(Node):
    def __init__(self, plan: Plan, name: str, parent: int, listen_fd: int,
                 resolve: Callable[[str], Any]) -> None:
        super().__init__(plan, name, parent)
        self.beat: float = time.monotonic()  # the loop's last turn (see the watchdog)
        # SPED: the whole graph runs here, inline, on the event loop (no queues, no workers)
        self.core = StageCore(self.spec, self.me.stages, 0, resolve) if self.me.stages \
            else None
        if self.core is not None:
            self.core.setup()
            self.core.streamer = self.send_part  # SPED: parts go to the client at once
            limits = {s: lim for s in self.me.stages if (lim := self.spec.call_limit(s))}
            if limits:  # a call past its limit ends this process: the supervisor restarts it
                # (async handlers: a loop that stops beating for that long is blocked)
                beat = (lambda: self.beat) if self.core.is_async else None
                Watchdog(self.core, limits, plan.run_dir, name, lambda: ("", []),
                         beat=beat).start()
        acc = self.spec.acceptor
        assert acc is not None
        self.acc, self.limits, self.protocol = acc, acc.limits, acc.protocol
        self.entry = acc.entry
        pool = plan.stage_pool.get(self.entry, "")
        # requests read in this turn of the loop, for the entry stage: at the turn's end
        # they go to its dispatcher, as one chunk (SPED runs them at once instead)
        self.entry_dispatcher = self.dispatchers.get(pool)
        self.entry_queue: deque[tuple[str, Envelope]] = deque()
        stage = self.spec.stages[self.entry]
        workers = len(plan.pool_procs.get(pool, [])) or 1
        # requests waiting for credit at the entry stage; past it, an immediate 503
        self.queue_bound = stage.queue or max(1024, 4 * workers * stage.prefetch)
        self.request_timeout = self.limits.request_timeout
        self.listen_sock = socket.socket(fileno=listen_fd)
        self.book = Book()  # the requests in the graph, by id, and their deadlines
        self.conns: set[Connection] = set()
        self.next_id = random.getrandbits(40) << 20
        self.accepting = True
        self.pump_due = False
        # answers by status code (HTTP) or b"reply", as bytes: a reply's code is a slice of
        # the head our codec wrote, counted without decoding it
        self.codes: dict[bytes, int] = {}
        self.busy_replies: dict[tuple[type, int], bytes] = {}  # (codec, Retry-After) -> 503
        self.http = self.protocol == "http"
        self.access_log = plan.access_log  # seda run --access-log (see seda.runtime.access)
        self.repeatable = repeatable(self.protocol)
        rule = acc.admission
        self.admission = AdmissionController(
            rule.target, min_rate=rule.min_rate, max_rate=rule.max_rate) \
            if rule is not None and rule.enabled else None
        self.last_decision = ""
        # request classes: who is turned away first under overload (None: one class)
        self.classes = Classifier(acc.classes) if acc.classes else None
        if self.classes is not None:
            self.class_bounds = [self.classes.bound(i, self.queue_bound)
                                 for i in range(len(self.classes.names))]
            self.class_requests = [0] * len(self.classes.names)
            self.class_rejected = [0] * len(self.classes.names)
        # admitted requests waiting for credit, one queue per priority (classes only)
        self.by_priority: list[deque[tuple[str, list[Any]]]] = [
            deque() for _ in range(self.classes.levels if self.classes else 0)]
        self.held = 0  # requests in by_priority
        self.class_turns = [0] * len(self.by_priority)  # what each level may still move now
        self.unsent = 0  # requests queued since the last flush
        for key in FRONT_FIGURES:
            self.counters[key] = 0
        self.max_connections = self.connection_cap()
        self.throttle = Throttle()
        # async handlers run inline (sped, symped): tasks on this loop, at most this many
        # messages at once
        self.inline_tasks = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.call_limit = self.spec.call_limit(self.entry)
        self.concurrency = max((self.spec.stages[s].concurrency or CONCURRENCY
                                for s in self.me.stages), default=CONCURRENCY)

    def targets(self) -> set[str]:
        acc = self.spec.acceptor
        assert acc is not None
        return set() if self.me.stages else {acc.entry}

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        setproctitle(self.me.title)
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        try:
            runner(self.main())
        finally:
            self.close()

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.cutoffs = Cutoffs(self.loop)
        if self.core is not None:
            await self.core.setup_async()
        self.loop.add_reader(int(self.inbox.getsockopt(zmq.FD)), self.pump)
        self.server = await self.loop.create_server(lambda: Connection(self),
                                                    sock=self.listen_sock,
                                                    backlog=self.acc.backlog)
        self.tell(Ready(os.getpid()))
        next_sweep = 0.0
        while self.running:
            await asyncio.sleep(0.01)
            self.beat = time.monotonic()
            self.pump()
            now = time.monotonic()
            self.expire(now)
            if self.admission is not None:
                self.decided(self.admission.tick(now))
            if now >= next_sweep:
                next_sweep = now + 0.25
                self.sweep(now)
            self._timers()
        self.server.close()
        for task in list(self.tasks):  # (a drain waits for them: only a forced stop gets here)
            task.cancel()
        if self.core is not None:
            await self.core.teardown_async()
        self.report()  # final figures for the supervisor's summary
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()

    def pump(self) -> None:
        """Read every frame waiting in the inbox, then send what is queued. The zmq FD is
        edge-triggered, so read until EVENTS says nothing is left."""
        self.pump_due = False
        while int(self.inbox.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._read_inbox()
        self.flush()

    def flush(self) -> None:
        self.unsent = 0
        if self.held:
            self._by_priority()
        if self.entry_queue:
            if self.core is not None:
                self.run_inline(self.core)  # SPED: what this turn read, as one batch
            elif self.entry_dispatcher is not None:
                self.entry_dispatcher.submit_many(self.entry,
                                                  [env for _, env in self.entry_queue])
                self.entry_queue.clear()
        super().flush()

    def waiting_for_credit(self) -> int:
        """Requests admitted that wait for the entry stage's credit (its queue's length)."""
        return len(self.entry_queue) + (self.entry_dispatcher.backlog()
                                        if self.entry_dispatcher is not None else 0)

    def extra_waiting(self) -> dict[str, int]:
        return {self.entry: self.held} if self.held else {}

    def held_back(self, dispatcher: Dispatcher) -> int:
        return self.held if dispatcher is self.entry_dispatcher else 0

    def soon(self) -> None:
        """Send queued requests once this turn of the event loop ends (a batch per turn)."""
        if not self.pump_due:
            self.pump_due = True
            self.loop.call_soon(self.pump)

    # ------------------------------------------------------------------ connections
    def connection_cap(self) -> int:
        """`max_connections`, or fewer when the descriptor limit cannot hold that many plus
        the acceptor's own descriptors (its sockets to the graph, the event loop's) with a
        margin: a process out of descriptors is aborted by libzmq the next time one of its
        sockets accepts a connection, so clients must never take the last ones."""
        wanted = self.limits.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return wanted
        cap = max(0, min(wanted, soft - len(os.listdir("/proc/self/fd")) - FD_RESERVE))
        if cap < wanted:
            LOG.warning(f"the descriptor limit (RLIMIT_NOFILE {soft}) holds {cap} client "
                        f"connections, fewer than max_connections ({wanted}); raise the hard "
                        f"limit (ulimit -Hn) to allow more")
        return cap

    def admit(self, conn: Connection) -> bool:
        if not self.accepting or len(self.conns) >= self.max_connections:
            self.counters["refused"] += 1
            return False
        self.counters["accepted"] += 1
        self.conns.add(conn)
        return True

    def submit_all(self, conn: Connection, requests: list[Any]) -> None:
        """Queue a connection's new requests for the entry stage (sent once this turn of the
        loop ends), or answer 503 at once when the entry queue is full."""
        self.counters["requests"] += len(requests)
        now, mono = time.time(), time.monotonic()
        deadline, expires = now + self.request_timeout, mono + self.request_timeout
        queue, order, slots, admission, classes = self.entry_queue, conn.order, self.book.slots, \
            self.admission, self.classes
        enter, entry, name = self.book.enter, self.entry, self.name
        bound, reserve, kind, rejected = self.queue_bound, 0.0, 0, 0
        repeatable = self.repeatable
        msg_id, admitted = self.next_id, 0
        waiting = self.waiting_for_credit()
        for request in requests:
            slot = Slot(conn, request, b"", False, False, mono)
            order.append(slot)
            if classes is not None:  # it waits in its priority's queue (see _by_priority)
                kind = classes.classify(request)
                bound, reserve = self.class_bounds[kind], classes.reserve[kind]
                self.class_requests[kind] += 1
                queue = self.by_priority[classes.priorities[kind]]
            if waiting + self.held >= bound or not self.accepting or (
                    admission is not None and not admission.admit(mono, reserve, len(slots))):
                if classes is not None:
                    self.class_rejected[kind] += 1
                rejected += 1
                self._overloaded(slot, admission.retry_after() if admission is not None else 1)
                continue
            msg_id += 1
            rid = msg_id if repeatable(request) else msg_id | ONCE  # (see envelope.ONCE)
            admitted += 1
            if admission is not None:
                slot.timed = True
            enter(slot, rid, expires)
            queue.append((entry, [rid, name, 1, deadline, request, rid,
                                  0 if rid & SAMPLE else int(now * 1e9)]))
            # (a sample's queue wait is timed: see envelope.SAMPLE)
            if classes is not None:
                self.held += 1
            else:
                waiting += 1
        self.next_id = msg_id
        self.unsent += admitted
        if rejected:  # 503s: written once this callback is over, in one write
            self.counters["rejected"] += rejected
            self.count_dropped(self.entry, "rejected", rejected)
            self.count_status("503", rejected)
            self.loop.call_soon(conn.write_ready)
        if self.unsent >= SEND_EARLY:
            self.flush()  # the worker starts on these while this turn reads the rest
        else:
            self.soon()

    def _by_priority(self) -> None:
        """Request classes: move waiting requests to the entry stage's queue, only as many as
        the entry workers have credit for -- the rest wait where a more important request
        that comes later can still overtake them. (SPED: all of them.) The levels take turns,
        weighted 4:1 from each level to the next less important one (16:4:1 for three), so
        more important requests go first and a less important one still gets its share:
        under strict priority a steady stream of checkouts held a page view for the whole
        of the load (8.6 s in graphs/shop.yaml); it waits its turn now, or is turned away
        by its class's smaller queue bound."""
        queue, levels, turns = self.entry_queue, self.by_priority, self.class_turns
        room = self.held if self.entry_dispatcher is None else \
            self.entry_dispatcher.available() - self.waiting_for_credit()
        while room > 0 and any(levels):
            if not any(turns[i] > 0 and waiting for i, waiting in enumerate(levels)):
                turns[:] = [CLASS_WEIGHT ** (len(levels) - 1 - i) for i in range(len(levels))]
            for level, waiting in enumerate(levels):
                take = min(len(waiting), room, turns[level])
                for _ in range(take):
                    queue.append(waiting.popleft())
                turns[level] -= take
                self.held -= take
                room -= take
                if room <= 0:
                    break

    def run_inline(self, core: StageCore) -> None:
        """SPED: run the queued requests through the whole graph now, on this loop."""
        if core.is_async:
            self._start_inline(core)
            return
        envs = [env for _, env in self.entry_queue]
        self.entry_queue.clear()
        self._settle_inline(core.process(self.entry, envs))

    def _settle_inline(self, group: Group) -> None:
        self.on_results([[env[ID], env[PAYLOAD], env[REQUEST]] for env in group.results])
        if group.failed or group.overran:
            self.dead_letter([DeadLetter(self.entry, env, error, tb)
                              for env, error, tb in group.failed] +
                             [DeadLetter(self.entry, env, why, status=504)
                              for env, why in group.overran])

    def _start_inline(self, core: StageCore) -> None:
        """SPED with async handlers: each request a task on this loop, at most `concurrency`
        at once; the rest wait in the entry queue (bounded: past it, 503)."""
        queue, batch = self.entry_queue, core.runners[self.entry].batch is not None
        while queue and self.inline_tasks < self.concurrency:
            envs = [queue.popleft()[1]] if not batch else [
                queue.popleft()[1]
                for _ in range(min(len(queue), self.concurrency - self.inline_tasks))]
            self.inline_tasks += len(envs)
            task = self.loop.create_task(self._inline(core, envs, batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _inline(self, core: StageCore, envs: list[Envelope], batch: bool) -> None:
        try:
            self._settle_inline(await self.cutoffs.run(core, self.entry, envs, batch,
                                                       self.call_limit))
        finally:
            self.inline_tasks -= len(envs)
            if self.entry_queue:
                self.soon()

    too_large_status = 413  # a request no frame can carry (see Node._too_large)

    def on_lost(self, items: list[list[Any]]) -> None:
        """Requests dead-lettered somewhere in the graph: answered now with the status the
        letter carries (500 a failed handler, 504 one past its time limit, 413 a request too
        large for a frame), not 504 at the deadline. The error itself stays in the
        dead-letter file, not in front of the client."""
        for request_id, _error, status in items:
            slot = self.book.settle(request_id)
            if slot is not None:
                self.counters[{504: "timeouts", 503: "rejected"}.get(status, "failed")] += 1
                self.answer_error(slot, ProtocolError(LOST_TEXT.get(status, LOST_TEXT[500]),
                                                      status))

    def on_results(self, items: list[list[Any]]) -> None:
        for _, payload, request_id, *_ in items:
            slot = self.book.settle(request_id)
            if slot is None:
                self.counters["late"] += 1  # timed out already, or a duplicate
                continue
            self.complete(slot, payload)

    def on_parts(self, rows: list[list[Any]]) -> None:
        """Parts of streamed replies ([request, seq, head, data]; see ctx.stream): the head
        with part 0, then a chunk per part, written as soon as the reply is at the head of
        its connection's order. The request stays in the book until its last part (the
        handler's value) comes as a result. A part out of order (the message ran again) or
        a client that lets STREAM_MAX bytes wait cuts the reply."""
        for rid, seq, head, data in rows:
            slot = self.book.slots.get(rid)
            if slot is None or slot.done:
                self.counters["late"] += 1  # answered already: timed out, or cut
                continue
            conn = slot.conn
            codec = cast(HttpCodec, conn.codec)
            if conn.closed:  # the client is gone: nothing of it is kept
                self.book.settle(rid)
                cut(slot)
                continue
            if not next_part(slot, seq):
                self._cut(slot, "its handler ran again after part of it was sent")
                continue
            if seq == 0:
                try:
                    start, slot.close = codec.stream_head(head or {}, slot.request)
                except ValueError as exc:  # nothing is written yet: a 500, as a bad reply
                    self.book.settle(rid)
                    slot.out, slot.close = codec.error_reply(BAD_REPLY), wants_close(slot)
                    slot.done = True
                    self.counters["responses"] += 1
                    self.count_status("500")
                    self.throttle.say("bad reply", f"a streamed reply to "
                                                   f"{_what(slot.request)} could not be sent "
                                                   f"(answered 500): {exc}")
                    conn.write_ready()
                    continue
                slot.parts, slot.held = [start], len(start)
                self.codes[start[9:12]] = self.codes.get(start[9:12], 0) + 1
                if slot.timed:  # admission is told the time to the first part (a stream
                    slot.timed = False  # may last minutes: that is not the server's delay)
                    self.answered(slot)
            assert slot.parts is not None
            chunk = codec.stream_part(data, slot.request)
            slot.parts.append(chunk)
            slot.held += len(chunk)
            transport = conn.transport
            if slot.held > STREAM_MAX or (conn.write_blocked and transport is not None and
                                          transport.get_write_buffer_size() > STREAM_MAX):
                self._cut(slot, f"its client left more than {STREAM_MAX} bytes unread")
                continue
            conn.write_ready()

    def _cut(self, slot: Slot, why: str) -> None:
        self.book.settle(slot.rid)
        self.counters["failed"] += 1
        self.throttle.say("stream cut", f"a streamed reply to {_what(slot.request)} was cut "
                                        f"(the connection closed): {why}")
        cut(slot)
        slot.conn.write_ready()

    def complete(self, slot: Slot, payload: Any) -> None:
        """Turn a stage's reply into bytes for its client. A reply of any shape costs at most
        its own request: one that cannot be sent is answered 500, and said in the log."""
        conn = slot.conn
        if slot.parts is not None:  # the last part of a streamed reply
            self.counters["responses"] += 1
            try:
                slot.parts.append(cast(HttpCodec, conn.codec).stream_end(payload,
                                                                         slot.request))
            except ValueError as exc:
                self._cut(slot, f"its last part is not text or bytes: {exc}")
                return
            slot.out, slot.parts, slot.held, slot.done = b"".join(slot.parts), [], 0, True
            conn.write_ready()
            return
        if self.http and type(payload) is dict and "file" in payload:
            why = self.open_file(slot, cast(HttpCodec, conn.codec), payload)
        else:
            slot.out, slot.close, why = encode_reply(conn.codec, payload, slot.request)
        if why:
            slot.out, slot.close = conn.codec.error_reply(BAD_REPLY), wants_close(slot)
            self.throttle.say("bad reply", f"a reply to {_what(slot.request)} could not be "
                                           f"sent (answered 500): {why}")
        slot.done = True
        self.counters["responses"] += 1
        # HTTP: the status our own head() wrote; other protocols have no status codes
        key = slot.out[9:12] if self.http else b"reply"
        self.codes[key] = self.codes.get(key, 0) + 1
        conn.write_ready()

    def open_file(self, slot: Slot, codec: HttpCodec, reply: dict[str, Any]) -> str:
        """`{"file": path}`: the head now, the file by sendfile once the head is out. Only a
        regular file is sent, and opening never blocks the loop (O_NONBLOCK: a FIFO would
        wait for a writer). A file that cannot be served is answered 404 / 403 / 500 (the
        connection stays usable). Returns why the reply itself is wrong ("" if it is not)."""
        path = reply["file"]
        if type(path) is not str:
            return f"expected a path (text) for 'file', got {type(path).__name__}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except ValueError as exc:  # a NUL in the path
            return f"bad 'file' path: {exc}"
        except OSError as exc:
            status = {errno.ENOENT: 404, errno.ENOTDIR: 404, errno.EACCES: 403,
                      errno.ELOOP: 403}.get(exc.errno or 0, 500)
            slot.out, slot.close = codec.encode(
                {"status": status, "body": f"{status} {exc.strerror}\n"}, slot.request)
            return ""
        try:
            info = os.fstat(fd)
            follows = False
            if stat.S_ISREG(info.st_mode):
                slot.out, slot.close, follows = codec.file_head(reply, slot.request,
                                                                info.st_size)
            else:
                slot.out, slot.close = codec.encode(
                    {"status": 403, "body": "403 not a regular file\n"}, slot.request)
        except ValueError as exc:  # the reply's status or headers
            os.close(fd)
            return str(exc)
        if follows and info.st_size:
            slot.file = (fd, info.st_size)
        else:
            os.close(fd)
        return ""

    def count_status(self, status: str, n: int = 1) -> None:
        key = status.encode()
        self.codes[key] = self.codes.get(key, 0) + n

    def _overloaded(self, slot: Slot, wait: int) -> None:
        """Answer 503 (the caller counts it and writes it): the same bytes for every request
        of a protocol and Retry-After, so they are made once."""
        codec = slot.conn.codec
        key = (type(codec), wait)
        out = self.busy_replies.get(key)
        if out is None:
            out = self.busy_replies[key] = codec.error_reply(
                ProtocolError("overloaded, try again", 503, wait))
        server_answer(slot, out)

    def answer_error(self, slot: Slot, exc: ProtocolError) -> None:
        """Answer a request with the server's error (500, 504) now."""
        server_answer(slot, slot.conn.codec.error_reply(exc))
        self.count_status(str(exc.status_hint))
        slot.conn.write_ready()

    def expire(self, now: float) -> None:
        for slot in self.book.expired(now):
            self.counters["timeouts"] += 1
            self.answer_error(slot, ProtocolError("no reply in time", 504))

    def answered(self, slot: Slot) -> None:
        """An admitted request's answer was written (after those before it on its
        connection: HTTP answers in order): its response time goes to admission."""
        if self.admission is not None:
            now = time.monotonic()
            self.decided(self.admission.observe(now - slot.start, now))

    def decided(self, decision: Decision | None) -> None:
        """Log the admission controller's cuts and openings (raises are many and small:
        they show in the views)."""
        if decision is None or self.admission is None:
            return
        self.last_decision = decision.describe(self.admission.target)
        if decision.what != "raise":
            LOG.info(self.last_decision)

    def sweep(self, now: float) -> None:
        """Close connections that sit idle, or dribble a request too slowly (slowloris)."""
        for conn in list(self.conns):
            if conn.transport is None or conn.closed or conn.order:
                continue
            if conn.codec.partial() and now - conn.partial_since > self.limits.header_timeout:
                self.counters["idle_closed"] += 1
                self.count_status("408")
                conn.answer_now(conn.codec.error_reply(
                    ProtocolError("request not received in time", 408)), close=True)
            elif now - conn.last_activity > self.limits.idle_timeout:
                self.counters["idle_closed"] += 1
                conn.transport.close()

    def on_control(self, order: Order) -> None:
        if isinstance(order, StopIntake):
            self.accepting = False
            self.server.close()
        else:
            super().on_control(order)

    def close(self) -> None:
        try:
            if self.core is not None:
                self.core.teardown()
        finally:
            super().close()

    def stats(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"connections": len(self.conns), "in_flight": len(self.book),
                                   "statuses": {c.decode(): n for c, n in self.codes.items()}}
        if self.admission is not None:
            figures["admission"] = {"rate": self.admission.rate,
                                    "limit": self.admission.limit,
                                    "target": self.admission.target,
                                    "last": self.last_decision}
        if self.classes is not None:
            figures["classes"] = {
                name: {"priority": self.classes.priorities[i],
                       "requests": self.class_requests[i], "rejected": self.class_rejected[i]}
                for i, name in enumerate(self.classes.names)}
        if self.core is not None:
            figures["stages"] = {s: st.figures()
                                 for s, st in self.core.stats.items()}
        return figures

    def pending(self) -> int:
        return super().pending() + len(self.book)
