"""A worker process: one member of a stage pool. Receives batches, runs the stage core, sends
outputs on with credit, and acknowledges its inputs only once their outputs are received.

Must not touch client sockets or decide its own lifetime: the supervisor starts, stops and
restarts it.
"""

from __future__ import annotations

import os
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import zmq

from seda.engine.config import CONCURRENCY
from seda.engine.controllers import BatchController
from seda.engine.credit import Book
from seda.engine.stage import Group, StageCore
from seda.engine.wire import (
    CREDIT,
    DATA,
    HELLO,
    ID,
    PAYLOAD,
    REQUEST,
    Batch,
    Finish,
    Order,
    Retire,
    child_id,
    pack,
    unpack_data,
)
from seda.log import LOG
from seda.plan.deployment import Plan
from seda.runtime.aio import Lane
from seda.runtime.node import RESULTS, Node
from seda.runtime.watchdog import EXIT_RECYCLE, EXIT_STUCK, Watchdog

STEP_SLICE = 0.002  # s of handler work per loop turn
BACKLOG_LIMIT = 1024  # outputs queued for credit before this worker stops taking inputs
RECEIPT_WAIT = 0.001  # s: the longest a receipt waits for the work of its turn (see
# receipts_first)
RETIRE_QUIET = 0.2  # s with nothing held and nothing arriving before a retiring worker exits


class Worker(Node):
    def __init__(self, plan: Plan, name: str, parent: int,
                 resolve: Callable[[str], Any]) -> None:
        super().__init__(plan, name, parent)
        self.core = StageCore(self.spec, self.me.stages, self.me.index, resolve)
        self.window = max(self.spec.stages[s].prefetch for s in self.me.stages)
        # async handlers run on an event loop of their own (see seda.runtime.aio); the
        # credit window is then the messages in flight at once: the stages' concurrency
        self.lane = Lane(self.core, self.spec) if self.core.needs_loop else None
        if self.lane is not None:
            self.poller.register(self.lane.wake_r, zmq.POLLIN)
        if self.core.is_async:
            self.window = max(self.spec.stages[s].concurrency or CONCURRENCY
                              for s in self.me.stages)
        # parts of streamed replies: from the loop's thread through the lane, else at once
        self.core.streamer = self.lane.part if self.lane is not None and self.core.is_async \
            else self.send_part
        rules = [r for s in self.me.stages if (r := self.spec.stages[s].batching) is not None
                 and r.enabled and not self.core.is_async]
        self.batching = BatchController(
            min(r.min for r in rules), max(r.max for r in rules), min(r.period for r in rules),
            budget=max(r.budget for r in rules),
            window=float(min(max(self.window, min(r.min for r in rules)),
                             max(r.max for r in rules)))) if rules else None
        self.bytes_in = self.messages_in = 0  # DATA received: the messages' mean size
        if self.batching is not None:
            self.window = round(self.batching.window)
        # what the senders were last granted: the window, and in a service as much again as
        # this worker's outputs that wait for another stage's credit (see _grant)
        self.granted = self.window
        # frames received, not run yet: (sender, stage, envelopes, the frame's book)
        self.work: deque[tuple[str, str, Batch, Book]] = deque()
        self.frames_held_back = 0  # frames that came while their sender held more for us
        self.finishing = self.finished = False
        self.senders: set[str] = set()  # who asked for credit (HELLO)
        self.retiring = False
        self.quiet_since: float | None = None
        memory = [m for s in self.me.stages if (m := self.spec.stages[s].max_memory_mb)]
        self.max_rss = min(memory) << 20 if memory else 0  # bytes; 0: no limit
        self.recycling = False  # over max_rss: retiring, to be replaced (see recycle)
        self.core.setup()
        if self.lane is not None:
            self.lane.run(self.core.setup_async())
        self.current: tuple[str, str, Batch] = ("", "", Batch.of([]))  # the frame being run
        limits = {s: lim for s in self.me.stages if (lim := self.spec.call_limit(s))}
        # the longest a blocked event loop is waited for (see step)
        self.loop_limit = min(limits.values()) if limits and self.core.is_async else 0.0
        if limits and not self.core.is_async:
            Watchdog(self.core, limits, plan.run_dir, name, self._culprits).start()

    def _culprits(self) -> tuple[str, list[int]]:
        """For the watchdog: who sent the call that runs now, and its messages (a batch
        handler's call holds the whole frame)."""
        sender, stage, batch = self.current
        runner = self.core.runners[stage]
        if runner.batch is not None:
            return sender, list(batch.ids)
        return sender, [runner.ctx.request_id]

    def targets(self) -> set[str]:
        mine = set(self.me.stages)
        return {t for s in self.me.stages for t in self.spec.stages[s].to} - mine

    def on_other(self, sender: str, kind: bytes, body: bytes) -> None:
        if kind == DATA:
            stage, batch, held, key = unpack_data(body, self.limit)
            if stage not in self.core.runners:
                self.counters["malformed"] += 1
                return
            if held:
                self.frames_held_back += 1
            self.bytes_in += len(body)
            self.messages_in += len(batch)
            if sender != self.origin:  # an origin tracks nothing: it needs no receipts
                self.ack_received(sender, key)
            self.work.append((sender, stage, batch, self.tracker.open(sender, key,
                                                                      len(batch))))
        elif kind == HELLO:
            self.senders.add(sender)
            window = 0 if self.retiring else self.granted
            self.send(sender, CREDIT, pack([window, os.getpid()]))
        else:
            super().on_other(sender, kind, body)

    def receipts_first(self) -> bool:
        """At once, unless the frame this turn runs first is known to take less than
        RECEIPT_WAIT: then the receipts go after it, with its DONEs (a cheap stage's sink
        sent two ACK frames a DATA frame, ~20% of its CPU time). A sender waits for a
        receipt at most that long more: the step sends every acknowledgement after each
        frame it runs."""
        if not self.work or self.core.is_async:
            return True
        _, stage, batch, _ = self.work[0]
        stats = self.core.stats[stage]
        return not stats.completed or stats.busy / stats.completed * len(batch) > RECEIPT_WAIT

    def backlog(self) -> int:
        return sum(d.backlog() for d in self.dispatchers.values())

    def has_work(self) -> bool:
        return bool(self.work) and self.backlog() < BACKLOG_LIMIT

    def step(self) -> None:
        if self.lane is not None and self.core.is_async:
            self._step_async(self.lane)
        else:
            # a short slice, then the loop sends what it produced and reads what came in
            until = time.perf_counter() + STEP_SLICE
            while self.has_work() and time.perf_counter() < until:
                sender, stage, batch, book = self.work.popleft()
                self.current = (sender, stage, batch)
                self._settle(book, self.core.process(stage, batch))
                if self.work:  # send what this frame made while the next one runs
                    self.flush()
        if self.finishing and not self.finished and self.pending() == 0:
            self.finished = True
            self.report()  # final figures, so the run's summary is exact
        if self.retiring:
            self._retire_when_done()
            return
        backlog = self.backlog()  # outputs waiting for another stage's credit
        if self.batching is not None:
            stats = self.core.stats.values()
            window = self.batching.observe(
                time.monotonic(), sum(st.completed for st in stats),
                sum(st.busy for st in stats), self.frames_held_back,
                self.bytes_in / self.messages_in if self.messages_in else 0.0, backlog)
            if window is not None:
                LOG.debug(f"batching: window {self.window} -> {window} (cap "
                          f"{self.batching.cap:.0f})")
                self.window = window
        self._grant(backlog)

    def _grant(self, backlog: int) -> None:
        """Grant every sender the window (absolute, not a delta) when it changed. In a
        service, outputs that wait for another stage's credit do not count against it: an
        input whose outputs wait is held here until they are received (so that it is sent
        again if this worker dies), and in a full window of such inputs nothing else could
        reach this worker -- a slow route (checkouts) held up every other (page views). The
        route's bound (node.route_bound) caps what may wait."""
        granted = self.window + (backlog if self.spec.is_service else 0)
        if granted != self.granted and (granted < self.granted or
                                        granted - self.granted >= max(1, self.window // 4)):
            self.granted = granted
            for sender in self.senders:
                self.send(sender, CREDIT, pack([granted, os.getpid()]))

    def _retire_when_done(self) -> None:
        """Exit once nothing is held and nothing came for a moment (a frame sent before our
        zero credit reached its sender may still be on its way; one that comes after we are
        gone is sent again by its sender when the supervisor reports us down)."""
        if self.work or self.pending():
            self.quiet_since = None
            return
        now = time.monotonic()
        if self.quiet_since is None:
            self.quiet_since = now
        elif now - self.quiet_since >= RETIRE_QUIET:
            self.report()  # final figures: the supervisor keeps them in its totals
            self.stop()

    def _step_async(self, lane: Lane) -> None:
        """An async pool: hand every frame to the event loop at once (the window bounds how
        many messages are in flight), settle what came back."""
        while self.has_work():
            _, stage, batch, book = self.work.popleft()
            lane.submit(book, stage, batch.envelopes())
        for tag, item in lane.collect():
            if type(item) is Group:
                self._settle(tag, item)
            else:  # a part of a streamed reply
                self.send_part(tag, cast(list[Any], item))
        if self.loop_limit and lane.in_flight and lane.stalled() > self.loop_limit:
            LOG.error(f"the event loop was blocked for {lane.stalled():.1f} s, longer than "
                      f"the time limit ({self.loop_limit:g} s): a sync call in an async "
                      f"handler? The worker is replaced; what it held goes out again")
            self.report()
            os._exit(EXIT_STUCK)

    def pending(self) -> int:
        return super().pending() + (self.lane.in_flight if self.lane is not None else 0)

    def _settle(self, book: Book, group: Group) -> None:
        """Send on, or fail, what messages of a frame (all of it, or one async message)
        caused; the frame is DONE once all of its messages are settled and their outputs
        received downstream."""
        sender, key = book.sender, book.key
        for env, why in group.overran:
            self.fail(sender, key, env[ID], why, "", 504)
        for env, error, tb in group.failed:
            self.fail(sender, key, env[ID], error, tb)
        settled = len(group.inputs) + len(group.failed) + len(group.dropped) + \
            len(group.overran)
        outputs = 0
        if group.inputs:
            if sender == self.origin and not group.emits:
                # every output is a result for the sender itself: they go to it in one frame
                # with the frame's DONE, so they need no receipt (see Node.flush)
                self.replies.extend([env[ID], env[PAYLOAD], env[REQUEST]]
                                    for env in group.results)
            else:
                outputs = self.submit_outputs(group.emits, group.results, book)
        if self.tracker.settle(book, settled, outputs):
            self.ack_done(sender, key)

    def report(self) -> None:
        super().report()
        if self.max_rss and self.rss > self.max_rss and not self.retiring:
            self.recycle()

    def recycle(self) -> None:
        """Over the pool's max_memory_mb: take no new work, finish (or hand back, as
        retiring does) what is held, then exit with EXIT_RECYCLE -- the supervisor starts a
        fresh process in this one's place at once, not counted as a crash."""
        LOG.info(f"resident memory {self.rss >> 20} MiB is over max_memory_mb "
                 f"({self.max_rss >> 20}): it finishes what it holds, then a fresh process "
                 f"takes its place")
        self.recycling = True
        self.retire()

    def retire(self) -> None:
        """No new work (credit 0 to every sender), finish what is held, exit."""
        self.retiring = True
        for sender in self.senders:
            self.send(sender, CREDIT, pack([0, os.getpid()]))

    @property
    def exit_code(self) -> int:
        return EXIT_RECYCLE if self.recycling else 0

    def on_control(self, order: Order) -> None:
        if isinstance(order, Retire):  # the pool shrinks: no new work, finish, exit
            self.retire()
        elif isinstance(order, Finish):
            seed = zlib.crc32(self.name.encode())
            values = self.core.finish()
            if self.lane is not None:
                values += self.lane.run(self.core.finish_async())
            for i, (stage, value) in enumerate(values):
                final = [child_id(seed, i), self.origin, 1, 0.0, value, 0, 0, stage]
                self.results.submit(RESULTS, final)
            self.finishing = True
        else:
            super().on_control(order)

    def stats(self) -> dict[str, Any]:
        stages = {s: st.figures()
                  for s, st in self.core.stats.items()}
        inbox: dict[str, dict[str, int]] = {}  # stage -> sender -> received, not yet run
        for sender, stage, envs, _ in self.work:
            senders = inbox.setdefault(stage, {})
            senders[sender] = senders.get(sender, 0) + len(envs)
        return {"stages": stages, "queued": sum(len(w[2]) for w in self.work),
                "finished": self.finished, "inbox": inbox, "window": self.window,
                "keeps": self.core.keeps}

    def close(self) -> None:
        try:
            if self.lane is not None:
                try:
                    self.lane.run(self.core.teardown_async())
                finally:
                    self.lane.stop()
            self.core.teardown()
        finally:
            super().close()
