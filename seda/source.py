"""The source process: the origin of a finite pipeline. Reads items from the source handler
(only as fast as credit allows, so a slow sink slows it), and writes the results that sinks
send back, dropping duplicates.

Must not run stage handlers; it only feeds the entry stages and collects results.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any

from seda.envelope import ACK as ACK_KIND
from seda.envelope import RESULT, child_id, unpack
from seda.envelope import pack as pack_frame
from seda.flow import SeenIds
from seda.node import Node
from seda.plan import Plan

READ_AHEAD = 256  # items read but not yet sent, at most
DEDUP_WINDOW = 1 << 18


class Source(Node):
    def __init__(self, plan: Plan, name: str, parent: int, resolve: Callable[[str], Any],
                 output: IO[str] | None = None) -> None:
        super().__init__(plan, name, parent)
        assert self.spec.source is not None
        self.entries = list(self.spec.source.to)
        self.make_items = resolve(self.spec.source.handler)
        self.items: Iterator[Any] | None = None
        self.out = output or sys.stdout
        self.read = self.results_written = self.duplicates = 0
        self.exhausted = False
        self.failure = ""
        self.seen = SeenIds(DEDUP_WINDOW)

    def targets(self) -> set[str]:
        assert self.spec.source is not None
        return set(self.spec.source.to)

    def queued(self) -> int:
        return sum(len(d.queue) for d in self.dispatchers.values())

    def has_work(self) -> bool:
        return not self.exhausted and self.queued() < READ_AHEAD

    def step(self) -> None:
        if self.exhausted:
            return
        try:
            if self.items is None:
                self.items = iter(self.make_items(dict(self.spec.source.options)))  # type: ignore[union-attr]
            while self.queued() < READ_AHEAD:
                item = next(self.items)
                self.read += 1
                for k, entry in enumerate(self.entries):
                    msg_id = self.read if k == 0 else child_id(self.read, k)
                    self.dispatchers[self.plan.stage_pool[entry]].submit(
                        entry, [msg_id, self.name, 1, 0.0, item])
        except StopIteration:
            self.exhausted = True
            self.status({"op": "exhausted", "read": self.read})
        except Exception as exc:  # the user's source failed: report it, stop reading
            self.exhausted = True
            self.failure = (f"source: {type(exc).__name__}: {exc}\n"
                            + "".join(traceback.format_exception(exc)))
            self.status({"op": "failed", "error": self.failure})

    def on_other(self, sender: str, kind: bytes, body: bytes) -> None:
        if kind != RESULT:
            super().on_other(sender, kind, body)
            return
        items = unpack(body, self.limit)
        ids = [int(i) for i, _ in items]
        self.send(sender, ACK_KIND, pack_frame([ids, ids]))
        for msg_id, payload in items:
            if self.seen.first_time(msg_id):
                self.out.write(json.dumps(payload, default=str) + "\n")
                self.results_written += 1
            else:
                self.duplicates += 1
        self.out.flush()

    def on_control(self, msg: dict[str, Any]) -> None:
        if msg.get("op") == "stop_intake":
            self.exhausted = True
        else:
            super().on_control(msg)

    def probe_extra(self) -> dict[str, Any]:
        return {"exhausted": self.exhausted, "read": self.read}

    def stats(self) -> dict[str, Any]:
        return {"read": self.read, "results": self.results_written,
                "duplicates": self.duplicates, "exhausted": self.exhausted,
                "failure": self.failure}
