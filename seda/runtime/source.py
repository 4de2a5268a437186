"""The source process: the origin of a finite pipeline. Reads items from the source handler
(only as fast as credit allows, so a slow sink slows it), and writes the results that sinks
send back, dropping duplicates.

Must not run stage handlers; it only feeds the entry stages and collects results.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from seda.engine.credit import SeenIds
from seda.engine.wire import SAMPLE, Exhausted, Failed, Flush, Order, StopIntake, child_id
from seda.plan.deployment import Plan
from seda.runtime.node import Node

READ_AHEAD = 1024  # items read but not yet sent, at most (about)
CHUNK = 128  # items per hand-over from the reader thread
DEDUP_WINDOW = 1 << 18


class Source(Node):
    def __init__(self, plan: Plan, name: str, parent: int, resolve: Callable[[str], Any],
                 output: IO[str] | None = None) -> None:
        super().__init__(plan, name, parent)
        assert self.spec.source is not None
        self.entries = list(self.spec.source.to)
        self.resolve = resolve
        self.make_items = resolve(self.spec.source.handler)
        self.finals: dict[str, list[Any]] = {}
        self.flushed = self.started = False
        self.parked = plan.parked()  # slots a pool controller may start later
        self.first_item_at = 0.0
        self.inbound: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=READ_AHEAD // CHUNK)
        self.items: deque[Any] = deque()
        self.reader: threading.Thread | None = None
        self.stop_reading = threading.Event()
        self.out = output or sys.stdout
        self.read = self.results_written = self.duplicates = 0
        self.exhausted = False
        self.failure = ""
        self.seen = SeenIds(DEDUP_WINDOW)

    def targets(self) -> set[str]:
        assert self.spec.source is not None
        return set(self.spec.source.to)

    def queued(self) -> int:
        return sum(d.backlog() for d in self.dispatchers.values())

    def room(self) -> int:
        """Items worth reading now: as many as the entry workers have credit for (reading
        further ahead would only hold items in memory). Nothing is read until every entry
        worker has granted credit once, so the first items are not all given to whichever
        worker happened to start first."""
        if not self.started:  # (a parked worker slot of a scaled stage is not waited for)
            self.started = all(lk.pid for d in self.dispatchers.values()
                               for lk in d.links.values() if lk.name not in self.parked)
            if not self.started:
                return 0
        credit = min(sum(lk.available() for lk in d.links.values())
                     for d in self.dispatchers.values())
        return min(credit, READ_AHEAD) - self.queued()

    def held_back(self, dispatcher: Any) -> int:
        """Items read and ready that wait for credit (the batching controller's sign that a
        window keeps work from its worker: the source never reads further than credit
        allows, so its queue alone would never show it)."""
        return len(self.items) + self.inbound.qsize() * CHUNK if not self.exhausted else 0

    def has_work(self) -> bool:
        return not self.exhausted and self.room() > 0 and bool(self.items
                                                               or not self.inbound.empty())

    def step(self) -> None:
        if self.exhausted:
            return
        if self.reader is None:
            self.reader = threading.Thread(target=self._read, name="source-reader", daemon=True)
            self.reader.start()
        room = self.room()
        while room > 0:
            if not self.items:
                try:
                    kind, value = self.inbound.get_nowait()
                except queue.Empty:
                    return
                if kind != "items":
                    self._end(kind, value)
                    return
                self.items.extend(value)
            take = min(room, len(self.items))
            if take == len(self.items):
                batch = list(self.items)
                self.items.clear()
            else:
                batch = [self.items.popleft() for _ in range(take)]
            self._submit(batch)
            room -= take

    def _end(self, kind: str, value: Any) -> None:
        self.exhausted = True
        if kind == "error":
            self.failure = str(value)
            self.tell(Failed(self.failure))
        else:
            self.tell(Exhausted(self.read))

    def _read(self) -> None:
        """Reader thread: runs the user's generator, so a slow or blocking source never stalls
        the loop that sends, acknowledges and answers the supervisor. Items travel in chunks
        (one lock round per chunk, not per item); a chunk goes as soon as the loop is idle,
        so a slow source's items are not held back. The queue is bounded, so the thread
        blocks when the loop is behind."""
        assert self.spec.source is not None
        chunk: list[Any] = []
        try:
            for item in self.make_items(dict(self.spec.source.options)):
                if self.stop_reading.is_set():
                    return
                chunk.append(item)
                if len(chunk) >= CHUNK or self.inbound.empty():
                    self.inbound.put(("items", chunk))
                    chunk = []
            if chunk:
                self.inbound.put(("items", chunk))
            self.inbound.put(("end", None))
        except Exception as exc:  # the user's source failed: report it, stop reading
            if chunk:
                self.inbound.put(("items", chunk))
            tb = "".join(traceback.format_exception(exc))
            self.inbound.put(("error", f"source: {type(exc).__name__}: {exc}\n{tb}"))

    def _submit(self, items: list[Any]) -> None:
        """Items read, to their entry stages' queues: the n-th item read is request n, and
        its message to the k-th entry has id n (k = 0) or child_id(n, k). One clock read
        for the batch: the birth time of those that carry one (see wire.SAMPLE)."""
        if not self.read:
            self.first_item_at = time.time()
        first, name, now = self.read + 1, self.name, time.time_ns()
        self.read += len(items)
        for k, entry in enumerate(self.entries):
            dispatcher = self._route[entry]
            if k == 0:
                dispatcher.submit_many(entry, [[n, name, 1, 0.0, item, n,
                                                0 if n & SAMPLE else now]
                                               for n, item in enumerate(items, first)])
            else:
                ids = [child_id(n, k) for n in range(first, first + len(items))]
                dispatcher.submit_many(entry, [[i, name, 1, 0.0, item, n,
                                                0 if i & SAMPLE else now]
                                               for i, n, item in zip(
                                                   ids, range(first, first + len(items)),
                                                   items, strict=True)])

    def on_results(self, items: list[list[Any]]) -> None:
        repeats = self.seen.repeats([item[0] for item in items])
        if repeats:
            self.duplicates += len(repeats)
            skip = set(repeats)
            items = [item for i, item in enumerate(items) if i not in skip]
        for _msg_id, payload, _request, *final in items:
            if final:  # a sink's finish() value: merged with its siblings' at the end
                self.finals.setdefault(str(final[0]), []).append(payload)
            else:
                self.write(payload)
        self.out.flush()

    def write(self, payload: Any) -> None:
        self.out.write(json.dumps(payload, default=str) + "\n")
        self.results_written += 1

    def flush_finals(self) -> None:
        """Write each sink's finish() values: merged by the handler's `merge` if it has one
        (one value per sink worker otherwise)."""
        for stage, values in self.finals.items():
            handler = self.resolve(self.spec.stages[stage].handler)
            merge = getattr(handler, "merge", None)
            for value in [merge(values)] if merge is not None else values:
                self.write(value)
        self.finals.clear()
        self.out.flush()
        self.flushed = True
        self.report()

    def on_control(self, order: Order) -> None:
        if isinstance(order, StopIntake):
            self.exhausted = True
            self.stop_reading.set()
        elif isinstance(order, Flush):
            self.flush_finals()
        else:
            super().on_control(order)

    def probe_extra(self) -> dict[str, Any]:
        return {"exhausted": self.exhausted, "read": self.read}

    def stats(self) -> dict[str, Any]:
        return {"read": self.read, "results": self.results_written,
                "duplicates": self.duplicates, "exhausted": self.exhausted,
                "failure": self.failure, "flushed": self.flushed,
                "first_item_at": self.first_item_at}
