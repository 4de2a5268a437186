"""The IO shell every data-plane process shares: mailboxes, credit, acks, control, stats.

Resource handling: each process binds one ROUTER inbox at its ipc endpoint (routing id = its
name) and owns one ROUTER outbox (same routing id, ROUTER_MANDATORY) connected to every peer
it sends to. Every frame is [sender, kind, body]. A fresh zmq Context is made here, in the
child, never inherited.

Error handling: malformed frames are counted and dropped; a send to a peer that is not
connected takes the messages back (they stay pending and go out again when the peer grants
credit); the supervisor's CONTROL `peer_down` re-dispatches what a dead worker held.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import zmq
from setproctitle import setproctitle

from seda.engine import config
from seda.engine.credit import Book, DeadLetter, Dispatcher, Frame, Tracker
from seda.engine.throttle import Throttle
from seda.engine.wire import (
    ACK,
    ATTEMPT,
    BOUNCE,
    CONTROL,
    CREDIT,
    DATA,
    FINAL,
    FRAME_OVERHEAD,
    HELLO,
    ID,
    LOST,
    ONCE,
    ORIGIN,
    PART,
    PAYLOAD,
    REQUEST,
    RESULT,
    STATUS,
    DeadLetters,
    Envelope,
    Order,
    PeerDown,
    Peers,
    Probe,
    ProbeReply,
    Ready,
    Report,
    Stats,
    Stop,
    bounded,
    encode_data,
    pack,
    pack_record,
    unpack_ack,
    unpack_credit,
    unpack_lost,
    unpack_order,
    unpack_parts,
    unpack_results,
)
from seda.errors import ProtocolError
from seda.log import LOG
from seda.plan.deployment import FRONT_ROLES, SUPERVISOR, Plan
from seda.runtime import deadletter, secure

RESULTS = "@results"
ORIGIN_WINDOW = 1 << 30  # results to the origin are not credit-limited (bounded upstream)
ERROR_MAX, TB_MAX = 4096, 32768  # characters of an error and its traceback that travel
HELLO_EVERY = 0.1
HELLO_EVERY_AT_START = 0.01  # ... for the first START_PHASE s: a peer not bound yet is soon
START_PHASE = 2.0
UNREACHABLE_FOR = 5.0  # s: a live tcp peer that no send has reached for this long is said
RECONNECT_IVL = (10, 100)  # ms: zmq's first retry to connect to a peer, doubling up to the
# second (zmq's default, 100 ms flat, cost a pipeline's start-up up to 0.1 s: a process that
# starts first connects to a peer's endpoint before the peer has bound it)
STATS_EVERY = 0.5
PARENT_CHECK_EVERY = 0.5
SUPERVISOR_SILENCE = 3.0  # s without a word from the supervisor before a joined worker exits
_PR_SET_PDEATHSIG = 1


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """This process's resident memory in bytes (Linux: /proc/self/statm; 0 if unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _kept_rows(envs: list[Envelope]) -> list[list[Any]]:
    """Results as the origin gets them: [id, payload, request] (+ [stage] for a sink's
    finish value)."""
    return [[env[ID], env[PAYLOAD], env[REQUEST], *env[FINAL:]] for env in envs]


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL us when the supervisor dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the periodic getppid() check still catches it
    if os.getppid() != parent:
        os._exit(1)


def route_bound(spec: config.Graph, stages: list[str], workers: int) -> int:
    """How many messages a service's process may hold for a pool (its `stages`, `workers`
    processes) waiting for its credit before it answers 503 instead: the largest `queue` of
    the pool's stages, by default the entry queue's default, max(1024, 4 x workers x
    prefetch)."""
    return max(st.queue if st.queue is not None else max(1024, 4 * workers * st.prefetch)
               for st in (spec.stages[s] for s in stages))


class Node:
    """Base of worker and source processes. Subclasses implement `step` and the hooks."""

    def __init__(self, plan: Plan, name: str, parent: int) -> None:
        self.plan, self.name, self.parent = plan, name, parent
        self.me = plan.procs[name]
        self.spec = plan.conf()
        # the largest frame a receiver accepts, and so the largest a sender makes
        self.limit = self.spec.settings.max_message_bytes + FRAME_OVERHEAD
        self.throttle = Throttle()
        self.running = True
        self.rss = 0  # resident memory in bytes, as of the last report
        self.counters: dict[str, int] = {"malformed": 0, "dead_letters": 0, "unreachable": 0,
                                         "dead_letters_unwritten": 0}
        self.dropped: dict[str, dict[str, int]] = {}  # stage -> reason -> count (sent here)
        self.sent_to: dict[str, int] = {}  # stage -> messages sent to it (re-sends included)
        self.pool_of = {w: p for p, ws in plan.pool_procs.items() for w in ws}
        # what an edge from this process starts from in the views: its pool, or its role
        self.edge_from = self.pool_of.get(name) or ("source" if self.me.role == "source"
                                                    else "acceptor")
        # results go to the origin; a front door is its own (symped has several)
        self.origin = name if self.me.role in FRONT_ROLES else plan.origin()
        self._retry = {s: st.retry for s, st in self.spec.stages.items()}
        self.dispatchers = {p: Dispatcher(p, plan.pool_procs[p], self._max_attempts,
                                          rerun=self._rerun)
                            for p in self._downstream_pools()}
        # stage -> the dispatcher for its pool
        self._route = {s: self.dispatchers[p] for s, p in plan.stage_pool.items()
                       if p in self.dispatchers}
        stages_of: dict[str, list[str]] = {}
        for stage, pool in plan.stage_pool.items():
            stages_of.setdefault(pool, []).append(stage)
        # a service's routes are bounded queues whose enqueue fails fast: past a stage's
        # bound, what a handler emits to it is answered 503 at once, so a full route never
        # holds this worker's window (and with it every other route) -- see route_bound
        self._bounds = {s: (self.dispatchers[p], route_bound(self.spec, stages_of[p],
                                                             len(plan.pool_procs[p])))
                        for s, p in plan.stage_pool.items()
                        if p in self.dispatchers} if self.spec.is_service else {}
        self.results = Dispatcher(RESULTS, [self.origin], lambda _stage: ORIGIN_WINDOW)
        self.results.grant(self.origin, ORIGIN_WINDOW)
        self.tracker = Tracker()
        # per sender: receipts (frame keys), DONEs (frame keys) and failures ([key, id,
        # error, traceback, status]), sent together in one ACK frame
        self._acks: dict[str, tuple[list[int], list[int], list[list[Any]]]] = {}
        # inputs from the origin whose only outputs are results for it: their results go to
        # it in one frame with their DONEs, and need no receipt (see flush, unpack_results)
        self.replies: list[list[Any]] = []
        self.after_results: list[int] = []
        self._next_hello = self._next_stats = self._next_parent = 0.0
        self.started_at = self.heard_supervisor = time.monotonic()
        self.zmq = zmq.Context()
        # with the run's keys every socket speaks CURVE, and ZAP admits only the run's key
        keys = secure.load_keys(plan.keys) if plan.keys else None
        self.gate = secure.Gate(self.zmq, keys) if keys is not None else None
        self.inbox = self._socket()
        if keys is not None:
            secure.serve(self.inbox, keys)
        self.inbox.bind(self.me.endpoint)
        # where it is bound (a tcp inbox's port is chosen now: peers learn it, see Peers)
        self.address = self.inbox.getsockopt_string(zmq.LAST_ENDPOINT)
        self.outbox = self._socket()
        self.outbox.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if any(secure.wildcard(plan.endpoint(peer)) for peer in self.me.peers) or \
                plan.supervisor_address:
            secure.moving_peers(self.outbox)
        if keys is not None:
            secure.connect_as(self.outbox, keys)
        self.connected: dict[str, str] = {}  # peer -> the endpoint the outbox connects to
        # tcp peers at a known address (until they are said down), and since when no send
        # to each has got through: a live peer that this host cannot reach (an address it
        # gave that only its own host knows) is said, not waited for in silence
        self.reachable: set[str] = set()
        self.failing: dict[str, float] = {}
        self.connect_peers({peer: plan.endpoint(peer) for peer in self.me.peers})
        self.poller = zmq.Poller()
        self.poller.register(self.inbox, zmq.POLLIN)

    def connect_peers(self, addresses: dict[str, Any]) -> None:
        """Connect the outbox to the peers among `addresses` whose endpoint is new (an
        address not known yet -- tcp://HOST:* -- is left until the supervisor says it)."""
        for peer, endpoint in addresses.items():
            if peer not in self.me.peers or type(endpoint) is not str or \
                    secure.wildcard(endpoint) or self.connected.get(peer) == endpoint:
                continue
            # a restarted peer, bound at another port: connect there too (the old endpoint
            # is not disconnected -- zmq_disconnect of a pipe to a dead peer left
            # zmq_ctx_term hanging -- it only retries, and routing ids pick the live pipe)
            self.outbox.connect(endpoint)
            self.connected[peer] = endpoint
            if endpoint.startswith("tcp://"):
                self.reachable.add(peer)
                self.failing.pop(peer, None)

    def _socket(self) -> zmq.Socket[bytes]:
        sock = self.zmq.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTING_ID, self.name.encode())
        # a restarted peer (same routing id) takes over from its dead predecessor at once,
        # even if the old connection is not yet torn down (restarts take ~0.1 s)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, 0)  # credit bounds data; acks are bounded by data
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL[0])
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL[1])
        return sock

    def _downstream_pools(self) -> list[str]:
        return sorted({self.plan.stage_pool[t] for t in self.targets()})

    def targets(self) -> set[str]:
        """Stages outside this process that this process sends to."""
        return set()

    def _max_attempts(self, stage: str) -> int:
        own = self.spec.stages[stage].max_attempts
        return own if own is not None else self.spec.settings.max_attempts

    def _rerun(self, stage: str, env: Envelope) -> bool:
        """May `stage` run this message again (see the stage's `retry`, envelope.ONCE)?"""
        retry = self._retry[stage]
        return retry == "always" or (retry == "idempotent" and not env[REQUEST] & ONCE)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        setproctitle(self.me.title)
        self.tell(Ready(os.getpid(), self.address))
        try:
            while self.running:
                busy = self.has_work()
                events = dict(self.poller.poll(0 if busy else 20))
                if events:
                    self._read_inbox()
                    if self.receipts_first():
                        self._flush_acks()  # receipts go back before we spend time on work
                self.step()
                self.flush()
                self._timers()
        finally:
            self.close()

    def stop(self) -> None:
        self.running = False

    def receipts_first(self) -> bool:
        """Send the receipts of what just came in before the work of this turn (the
        senders' books wait for them), or with the turn's other acknowledgements, in one
        frame (see Worker)."""
        return True

    def close(self) -> None:
        # the supervisor only stops us once nothing is in flight (or the drain gave up)
        self.inbox.close(linger=0)
        self.outbox.close(linger=200)  # time for the last report to reach the supervisor
        if self.gate is not None:
            self.gate.close()
        self.zmq.term()

    def _read_inbox(self, most: int = 256) -> None:
        for _ in range(most):
            try:
                frames = self.inbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.take(frames)

    def take(self, frames: list[bytes]) -> None:
        """Act on one inbox message [sender, kind, body]. One that is malformed (wrong frame
        count, a body that does not decode to its kind's shape, over the size limit) is
        counted and dropped -- and accounted for, see `lost_frame`."""
        try:
            sender_b, kind, body = frames
            sender = sender_b.decode()
        except ValueError:  # UnicodeDecodeError is a ValueError
            self.counters["malformed"] += 1
            return
        try:
            self.on_frame(sender, kind, body)
        except (ValueError, ProtocolError, KeyError, TypeError, IndexError) as exc:
            self.lost_frame(sender, kind, exc)

    def lost_frame(self, sender: str, kind: bytes, exc: Exception) -> None:
        """A frame from `sender` was dropped. If the sender is a peer of ours, whatever the
        frame carried (messages, receipts, results) may never be acknowledged: both sides
        send again what the other has not confirmed -- we at once, the sender when our
        BOUNCE reaches it -- so no message and no credit vanishes with a frame."""
        self.counters["malformed"] += 1
        known = sender in self.pool_of or sender == self.origin
        self.throttle.say("dropped", f"dropped a {kind[:1]!r} frame from {sender[:40]!r}: "
                                     f"{str(exc)[:200]}"
                                     f"{'; both sides send again what it held' if known else ''}")
        if known:
            self.bounced(sender)
            self.send(sender, BOUNCE, b"")

    def bounced(self, peer: str) -> None:
        """A frame between us and `peer` was lost: what `peer` holds of ours goes out again."""
        if peer == self.origin and peer != self.name:
            self.dead_letter(self.results.bounced(peer))
        elif peer in self.pool_of and self.pool_of[peer] in self.dispatchers:
            self.dead_letter(self.dispatchers[self.pool_of[peer]].bounced(peer))

    def on_frame(self, sender: str, kind: bytes, body: bytes) -> None:
        if kind == ACK:
            received, done, fails = unpack_ack(body, self.limit)
            dispatcher = self._dispatcher_of(sender)
            if received:
                self.on_received(dispatcher.received(sender, received))
            if fails:  # (before the DONE of their frames)
                letters = []
                for key, msg_id, error, tb, status in fails:
                    letter = dispatcher.failed(sender, key, msg_id, error, tb, status)
                    if letter is not None:
                        letters.append(letter)
                self.dead_letter(letters)
            if done:
                dispatcher.done(sender, done)
        elif kind == CREDIT:
            window, pid = unpack_credit(body, self.limit)
            self.dead_letter(self._dispatcher_of(sender).grant(sender, window, pid))
        elif kind == CONTROL and sender == SUPERVISOR:
            self.heard_supervisor = time.monotonic()
            self.on_control(unpack_order(body, self.limit))
        elif kind == BOUNCE:
            self.bounced(sender)
        else:
            self.on_other(sender, kind, body)

    def _dispatcher_of(self, sender: str) -> Dispatcher:
        if sender == self.origin:
            return self.results
        return self.dispatchers[self.pool_of[sender]]

    def on_other(self, sender: str, kind: bytes, body: bytes) -> None:
        if kind == RESULT:  # only origins (source, acceptor) receive results
            key, kept, sent, done = unpack_results(body, self.limit)
            if kept:  # received and done at once, acknowledged with the next flush
                acks = self._acks_of(sender)
                acks[0].append(key)
                acks[1].append(key)
                self.on_results(kept)
            if sent:
                self.on_results(sent)
            if done:
                self._dispatcher_of(sender).done(sender, done)
        elif kind == LOST:
            self.on_lost(unpack_lost(body, self.limit))
        elif kind == PART:
            self.on_parts(unpack_parts(body, self.limit))
        else:
            self.counters["malformed"] += 1

    def on_results(self, items: list[list[Any]]) -> None:
        """Results [id, payload, request(, stage)] for an origin; others never get them."""
        self.counters["malformed"] += len(items)

    def on_parts(self, rows: list[list[Any]]) -> None:
        """Parts of streamed replies [request, seq, head, data], for a front door."""
        self.counters["malformed"] += len(rows)

    def send_part(self, origin: str, row: list[Any]) -> None:
        """A part of a streamed reply (ctx.stream) to its front door, now: the reply
        itself follows as a result, after it (frames between two processes keep their
        order). Best effort, as LOST rows: a part lost cuts its reply (see on_parts)."""
        if origin == self.name:
            self.on_parts([row])
        else:
            self._send_rows(origin, PART, [row])

    def on_lost(self, items: list[list[Any]]) -> None:
        """[request, error] for work of this origin that was dead-lettered somewhere (an
        acceptor answers its client; the dead-letter file already has the rest)."""

    def on_control(self, order: Order) -> None:
        if isinstance(order, PeerDown):
            name = order.name
            self.reachable.discard(name)  # (until its next incarnation's address comes)
            self.failing.pop(name, None)
            if name in self.pool_of and self.pool_of[name] in self.dispatchers:
                dispatcher = self.dispatchers[self.pool_of[name]]
                culprits: set[int] | None = None
                if order.timed_out is not None:  # its watchdog ended it (seda.runtime.watchdog)
                    culprits = set(order.timed_out) if order.sender == self.name else set()
                self.dead_letter(dispatcher.down(name, order.pid, culprits, order.why))
            elif name == self.origin:
                self.results.down(name)
                self.results.grant(name, ORIGIN_WINDOW)
        elif isinstance(order, Probe):
            self.tell(ProbeReply(order.wave, self.pending(), self.sent_total(),
                                 self.probe_extra()))
        elif isinstance(order, Peers):
            self.connect_peers(order.addresses)
        elif isinstance(order, Stop):
            self.stop()

    def on_received(self, books: list[tuple[Book, int]]) -> None:
        """Outputs of frames this process received are downstream (or never will be)."""
        for book in self.tracker.received(books):
            self.ack_done(book.sender, book.key)

    # ------------------------------------------------------------------ hooks
    def has_work(self) -> bool:
        return False

    def step(self) -> None:
        """Do local work (run handlers, read the source); subclasses override."""

    def probe_extra(self) -> dict[str, Any]:
        return {}

    def held_back(self, dispatcher: Dispatcher) -> int:
        """Messages for the dispatcher's pool that this process holds outside its queue."""
        return 0

    def extra_waiting(self) -> dict[str, int]:
        """stage -> messages this process holds for it outside its dispatchers (the
        acceptor's request classes)."""
        return {}

    def stats(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ sending
    def _acks_of(self, sender: str) -> tuple[list[int], list[int], list[list[Any]]]:
        acks = self._acks.get(sender)
        if acks is None:
            acks = self._acks[sender] = ([], [], [])
        return acks

    def ack_received(self, sender: str, key: int) -> None:
        self._acks_of(sender)[0].append(key)

    def ack_done(self, sender: str, key: int) -> None:
        if sender == self.origin:  # after the results its messages made (see flush)
            self.after_results.append(key)
        else:
            self._acks_of(sender)[1].append(key)

    def fail(self, sender: str, key: int, msg_id: int, error: str, tb: str,
             status: int = 0) -> None:
        """Message `msg_id` of frame `key` from `sender` failed (sent before, or with, that
        frame's DONE)."""
        # (an exception's text is the handler's to choose: a frame must still hold it)
        self._acks_of(sender)[2].append([key, msg_id, error[:ERROR_MAX], tb[-TB_MAX:],
                                         status])

    def submit_outputs(self, emits: list[tuple[str, Envelope]], results: list[Envelope],
                       book: Book | None = None) -> int:
        """Queue the outputs of (messages of) a frame for sending, tagged with its book;
        returns how many were queued (the tracker waits for their receipts)."""
        queued = 0
        if emits and self._bounds:
            emits = self._admit(emits)
        if emits:
            stage = emits[0][0]
            route = self._route
            if all(target == stage for target, _ in emits):  # (one route: nearly always)
                route[stage].submit_many(stage, [env for _, env in emits], book)
            else:
                by_stage: dict[str, list[Envelope]] = {}
                for target, env in emits:
                    by_stage.setdefault(target, []).append(env)
                for target, envs in by_stage.items():
                    route[target].submit_many(target, envs, book)
            queued += len(emits)
        if results:
            self.results.submit_many(RESULTS, results, book)
            queued += len(results)
        return queued

    def _admit(self, emits: list[tuple[str, Envelope]]) -> list[tuple[str, Envelope]]:
        """A service's emits that their route's queue has room for; the others' requests
        are answered 503 now (LOST rows to their origin), not queued."""
        bounds, kept, refused = self._bounds, [], []
        for item in emits:
            dispatcher, bound = bounds[item[0]]
            if dispatcher.backlog() >= bound:
                refused.append(item)
            else:
                kept.append(item)
        if refused:
            rows: dict[str, list[list[Any]]] = {}
            for stage, env in refused:
                self.count_dropped(stage, "rejected")
                rows.setdefault(env[ORIGIN], []).append(
                    [env[REQUEST], f"stage '{stage}' is full", 503])
            for origin, items in rows.items():
                if origin == self.name:
                    self.on_lost(items)
                else:  # best effort: if this frame is lost, the request's deadline holds
                    self._send_rows(origin, LOST, items)
        return kept

    def send(self, peer: str, kind: bytes, body: bytes) -> bool:
        try:
            self.outbox.send_multipart([peer.encode(), kind, body], zmq.NOBLOCK)
            if self.failing:
                self.failing.pop(peer, None)
            return True
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                self.counters["unreachable"] += 1
                if peer in self.reachable:
                    self.failing.setdefault(peer, time.monotonic())
                return False
            raise

    def _say_unreachable(self, now: float) -> None:
        """Peers at a tcp address that nothing sent has reached for UNREACHABLE_FOR s, and
        that the supervisor has not said are down: alive, but not at that address from here
        (a joined worker bound an address only its own host knows, or a firewall)."""
        for peer, since in self.failing.items():
            if now - since >= UNREACHABLE_FOR:
                self.throttle.say(f"unreachable {peer}",
                                  f"cannot reach {peer} at {self.connected.get(peer, '?')}: "
                                  f"nothing sent there got through for {now - since:.0f} s "
                                  f"(is it an address this host reaches? a worker that joined "
                                  f"binds its --host: docs/cluster.md)")

    def report(self) -> None:
        links = {lk.name: [lk.up, lk.window, len(lk.pending), lk.isolated, lk.pid]
                 for d in self.dispatchers.values() for lk in d.links.values()}
        suspects = sum(len(d.suspects) for d in self.dispatchers.values())
        waiting: dict[str, int] = {}
        blocked: list[str] = []  # stages this process holds work for with no credit left
        for dispatcher in self.dispatchers.values():
            held = dispatcher.waiting()
            waiting.update(held)
            if held and dispatcher.available() == 0:
                blocked.extend(held)
        for stage, count in self.extra_waiting().items():
            waiting[stage] = waiting.get(stage, 0) + count
        figures = self.stats()
        self.rss = rss()
        stages = figures.setdefault("stages", {})
        for stage, reasons in self.dropped.items():  # counted against the stage they were for
            stages[stage] = {**stages.get(stage, {}), **reasons}
        for stage, count in self.sent_to.items():  # merged per edge by the supervisor
            stages.setdefault(stage, {})["sent_in"] = {self.edge_from: count}
        self.tell(Stats({"pending": self.pending(), **self.counters, **figures,
                         "rss": self.rss, "links": links, "suspects": suspects,
                         "address": self.address,
                         "refused_peers": self.gate.refused if self.gate is not None else 0,
                         "waiting": waiting, "blocked": blocked}))

    def tell(self, report: Report) -> None:
        """A report to the supervisor."""
        self.send(SUPERVISOR, STATUS, pack_record(report, self.name))

    def _flush_acks(self) -> None:
        """Send the receipts, DONEs and failures; what cannot go now (the peer is not
        connected) is kept for the next flush -- lost, it would leave its frame pending at
        the sender for good."""
        self._acks = {sender: acks for sender, acks in self._acks.items()
                      if (acks[0] or acks[1] or acks[2]) and not self._send_acks(sender, acks)}

    def _send_acks(self, sender: str, acks: tuple[list[int], list[int], list[list[Any]]]
                   ) -> bool:
        body = pack(acks)
        if len(body) <= self.limit:
            return self.send(sender, ACK, body)
        # in that order: receipts, failures, then DONEs (a failure before its frame's DONE);
        # a receipt or DONE sent twice, after a partial failure, is ignored the second time
        # (a failure sent twice finds its message gone from the frame)
        parts = bounded(acks[0], lambda keys: pack([keys, [], []]), self.limit) + \
            bounded(acks[2], lambda rows: pack([[], [], rows]), self.limit) + \
            bounded(acks[1], lambda keys: pack([[], keys, []]), self.limit)
        return all(self.send(sender, ACK, part) for _, part in parts)

    def _send_rows(self, peer: str, kind: bytes, rows: list[Any]) -> bool:
        """LOST and PART rows (each of bounded size: see fail, dead_letter), in frames no
        larger than a receiver takes."""
        return all(self.send(peer, kind, body)
                   for _, body in bounded(rows, pack, self.limit))

    def flush(self) -> None:
        for dispatcher in self.dispatchers.values():
            for worker, frames in dispatcher.dispatch().items():
                self._send_data(dispatcher, worker, frames)
        for origin, frames in self.results.dispatch().items():
            # kept rows [id, payload, request] (+ [stage] for a sink's finish value), a
            # frame of them at a time: the origin acknowledges each by its key
            self._send_frames(self.results, origin, RESULT, frames,
                              lambda f, envs: pack([f.key, _kept_rows(envs), [], []]))
        self._flush_acks()  # (failures before the DONEs of their frames)
        if self.replies or self.after_results:
            self._send_replies()

    def _send_replies(self) -> None:
        """The rows not kept, then the DONEs of the origin's frames that made them (see
        unpack_results), in frames of at most `limit` bytes. A row too large for any frame
        is dead-lettered. What cannot be sent now is kept for the next flush."""
        origin, replies, done = self.origin, self.replies, self.after_results
        body = pack([0, [], replies, done])
        if len(body) <= self.limit:
            if self.send(origin, RESULT, body):
                self.replies, self.after_results = [], []
            return
        frames: list[tuple[list[list[Any]], bytes]] = []
        for rows, part in bounded(replies, lambda r: pack([0, [], r, []]), self.limit):
            if part:
                frames.append((rows, part))
            else:
                [row] = rows
                env = [row[0], origin, 1, 0.0, row[1], row[2], 0]
                self.dead_letter([self._too_large(self._stage_of(env), env, len(pack(row)))])
        frames += [([], part) for _, part in bounded(done, lambda d: pack([0, [], [], d]),
                                                     self.limit)]
        self.replies, self.after_results = [], []
        for i, (_, part) in enumerate(frames):
            if not self.send(origin, RESULT, part):
                self.replies = [r for rows, _ in frames[i:] for r in rows]
                self.after_results = done
                return

    def _too_large(self, stage: str, env: Envelope, size: int) -> DeadLetter:
        """A message no frame can carry: it fails alone, with a clear error (its payload is
        not kept in the dead-letter file)."""
        env[PAYLOAD] = {"omitted": f"{size} bytes"}
        limit = self.spec.settings.max_message_bytes
        return DeadLetter(stage, env, f"a message of {size} bytes is over "
                                      f"settings.max_message_bytes ({limit})",
                          status=self.too_large_status)

    too_large_status = 500  # the answer a service's client gets; the acceptor says 413

    def _stage_of(self, result: Envelope) -> str:
        """The stage a result came from, for the books: a sink's finish value names it;
        otherwise this process's first stage."""
        if len(result) > FINAL:
            return str(result[FINAL])
        return self.me.stages[0] if self.me.stages else RESULTS

    def _send_data(self, dispatcher: Dispatcher, worker: str, frames: list[Frame]) -> None:
        held = dispatcher.backlog() + self.held_back(dispatcher)  # for the batching controller
        sent = self._send_frames(dispatcher, worker, DATA, frames,
                                 lambda f, envs: encode_data(f.stage, envs, held, f.key))
        for frame in sent:
            self.sent_to[frame.stage] = self.sent_to.get(frame.stage, 0) + len(frame.envs)

    def _send_frames(self, dispatcher: Dispatcher, peer: str, kind: bytes, frames: list[Frame],
                     body_of: Callable[[Frame, list[Envelope]], bytes]) -> list[Frame]:
        """Send `frames` (DATA to a worker, RESULT to the origin), each in one frame of at
        most `limit` bytes: one too large is split (each part a frame of its own, see
        Dispatcher.split), and a message too large for any frame fails alone. If a send
        fails (the peer is not connected), that frame and the rest go back to the
        dispatcher's queue. Returns the frames sent."""
        limit, sent = self.limit, list[Frame]()
        for i, frame in enumerate(frames):
            body = body_of(frame, frame.envs)
            if len(body) <= limit:
                parts = [(frame, body)]
            else:
                pieces = bounded(frame.envs, partial(body_of, frame), limit)
                new, large = dispatcher.split(peer, frame,
                                              [envs for envs, part in pieces if part])
                parts = [(f, body_of(f, f.envs)) for f in new]
                for env, book in large:  # (a message no frame can carry: it fails alone)
                    stage = frame.stage if kind == DATA else self._stage_of(env)
                    letter = self._too_large(stage, env, len(pack(env)))
                    letter.book = book  # (its input's frame waits for it no more)
                    self.dead_letter([letter])
            for j, (part, part_body) in enumerate(parts):
                if not self.send(peer, kind, part_body):
                    dispatcher.unreachable(peer, [p for p, _ in parts[j:]] + frames[i + 1:])
                    return sent
                sent.append(part)
        return sent

    def dead_letter(self, letters: list[DeadLetter]) -> None:
        if letters:
            waited = [(letter.book, 1) for letter in letters if letter.book is not None]
            if waited:  # outputs that will never arrive downstream: settled all the same
                self.on_received(waited)
            self.counters["dead_letters"] += len(letters)
            lost: dict[str, list[list[Any]]] = {}
            for letter in letters:
                self.count_dropped(letter.stage, "dead_letters")
                lost.setdefault(letter.env[ORIGIN], []).append(
                    [letter.env[REQUEST], letter.error[:ERROR_MAX], letter.status])
            if self.spec.acceptor is not None:  # a service: its client is answered now
                for origin, items in lost.items():
                    if origin == self.name:
                        self.on_lost(items)
                    else:  # best effort: if this frame is lost, the request's deadline holds
                        self._send_rows(origin, LOST, items)
            why = self._keep(letters)
            for letter in letters:
                self._say_dead(letter)
            if why:
                self.counters["dead_letters_unwritten"] += len(letters)
                self.throttle.say("dead letters", f"{why}: {len(letters)} dead letters lost")

    def _keep(self, letters: list[DeadLetter]) -> str:
        """Into the run's dead-letter file (why not, or ""). A worker that joined from another
        host sends them to the supervisor, which writes them where the run keeps them (this
        host's disk is not that place); only if that cannot be sent now are they written
        here, at the same path."""
        if not self.parent:  # (a report each: one is at most a message and its error)
            letters = [lt for lt in letters if not self.send(
                SUPERVISOR, STATUS, pack_record(DeadLetters(
                    [deadletter.record(self.plan.graph, lt)]), self.name))]
        return deadletter.append(self.plan.dead_letter, self.plan.graph, letters)

    def _say_dead(self, letter: DeadLetter) -> None:
        """One line on stderr, with the traceback, per stage and error type every 10 s (the
        rest are counted on the next line of their kind): a handler that fails is seen where
        the run was started, not only in the dead-letter file."""
        parts = letter.error.split(": ", 2)  # "stage: ErrorType: text" from a handler
        kind = f"{letter.stage}: {parts[1] if len(parts) == 3 else letter.status}"
        where = os.path.abspath(self.plan.dead_letter)
        trace = "\n" + letter.traceback.rstrip() if letter.traceback else ""
        runs = letter.env[ATTEMPT] - 1
        self.throttle.say(kind, f"gave up on a message of stage '{letter.stage}' after "
                                f"{runs} attempt{'' if runs == 1 else 's'}: {letter.error} "
                                f"(dead letter in {where}){trace}", logging.ERROR)

    def count_dropped(self, stage: str, reason: str, n: int = 1) -> None:
        reasons = self.dropped.setdefault(stage, {})
        reasons[reason] = reasons.get(reason, 0) + n

    def pending(self) -> int:
        """Messages this process is still responsible for (zero everywhere = finished)."""
        queued = sum(d.backlog() + d.in_flight() for d in self.dispatchers.values())
        return (queued + self.results.backlog() + self.results.in_flight() + len(self.tracker)
                + len(self.after_results))

    def sent_total(self) -> int:
        return sum(d.sent for d in self.dispatchers.values()) + self.results.sent

    def _timers(self) -> None:
        now = time.monotonic()
        if now >= self._next_hello:
            self._next_hello = now + (HELLO_EVERY_AT_START if now - self.started_at < START_PHASE
                                      else HELLO_EVERY)
            for dispatcher in self.dispatchers.values():
                for link in dispatcher.links.values():
                    if not link.up:
                        self.send(link.name, HELLO, b"")
            if not self.results.links[self.origin].up:
                self.results.grant(self.origin, ORIGIN_WINDOW)
            if self.failing:
                self._say_unreachable(now)
        if now >= self._next_stats:
            self._next_stats = now + STATS_EVERY
            self.report()
        if now >= self._next_parent:
            self._next_parent = now + PARENT_CHECK_EVERY
            if not self.parent:  # joined from elsewhere: the supervisor's beats say it lives
                if now - self.heard_supervisor > SUPERVISOR_SILENCE:
                    LOG.error(f"no word from the supervisor at "
                              f"{self.plan.endpoint(SUPERVISOR)} for {SUPERVISOR_SILENCE:g} "
                              f"s: exiting (its run is over, or it is unreachable)")
                    os._exit(1)
            elif os.getppid() != self.parent:
                os._exit(1)  # the supervisor is gone: never outlive it
