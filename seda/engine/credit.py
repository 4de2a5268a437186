"""Credit-based, load-aware flow between processes, and the bookkeeping that makes it lossless.

Pure (clock injected); the node shell moves the bytes. Two pieces:

`Dispatcher` -- one per downstream pool, in every sender. Each worker grants the sender a
window (its prefetch); the sender keeps every message it sent until the worker says DONE, so
when the supervisor reports the worker dead, those messages go out again (attempt + 1). Work
goes to the least-loaded worker with credit, and never to a *stalled* one (its oldest
message has waited far longer than the pool's usual round trip) while another can take it:
a worker stuck on a 2 s message does not collect a queue behind it.

`Tracker` -- a worker reports an input DONE only once every output of that input has been
RECEIVED by the next process. Until then the input stays pending upstream, so a worker killed
with outputs still in its socket buffers loses nothing: its input is simply run again.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from seda.engine.wire import ATTEMPT, ID, Envelope

Pending = tuple[str, Envelope, float]  # (stage, envelope, sent at)


@dataclass(slots=True)
class Link:
    """The sender's view of one worker."""

    name: str
    window: int = 0
    up: bool = False
    pid: int = 0  # incarnation that granted the window
    isolated: bool = False  # holds one group of suspects and nothing else
    down_at: float = 0.0  # when it was last reported down (a restart is expected)
    pending: dict[int, Pending] = field(default_factory=dict)  # insertion order = age order

    def available(self) -> int:
        return self.window - len(self.pending) if self.up else 0

    def oldest_age(self, now: float) -> float:
        if not self.pending:
            return 0.0
        return now - next(iter(self.pending.values()))[2]


@dataclass(slots=True)
class DeadLetter:
    stage: str
    env: Envelope
    error: str
    traceback: str = ""
    status: int = 500  # what a service's client is answered (413, 500, 504)


class Dispatcher:
    """Queue, credit and pending messages for the workers of one pool."""

    STALL_FLOOR = 0.05  # s: never call a worker stalled sooner than this
    STALL_FACTOR = 8.0  # x the pool's smoothed round trip
    SPARE_WAIT = 3.0  # s: how long suspects wait for a dead worker's restart rather than
    # take a pool's last free worker

    def __init__(self, pool: str, workers: list[str], max_attempts: Callable[[str], int],
                 clock: Callable[[], float] = time.monotonic,
                 rerun: Callable[[str, Envelope], bool] = lambda stage, env: True) -> None:
        """`rerun(stage, env)`: may this message run again once it may have run (its
        handler raised, or its worker died or lost frames while holding it)? Not: it fails
        there (a dead letter; see the stage's `retry`)."""
        self.pool, self.clock, self.max_attempts, self.rerun = pool, clock, max_attempts, rerun
        self.links = {w: Link(w) for w in workers}
        self.queue: deque[tuple[str, Envelope]] = deque()
        self.suspects: deque[tuple[str, Envelope]] = deque()  # held by a worker that died
        # the suspects in groups, front to back: sizes that add up to len(suspects)
        self.groups: deque[int] = deque()
        # smoothed round trip (send -> DONE). It starts where the stall limit is the floor,
        # and every sample moves it a tenth of the way: the first answer of a cold worker
        # (imports, caches) can be ten times the usual one and must not set it alone
        self.rtt = self.STALL_FLOOR / self.STALL_FACTOR
        self.sent = 0
        self._turn = 0

    # ------------------------------------------------------------ state from the network
    def grant(self, worker: str, window: int, pid: int = 0) -> list[DeadLetter]:
        """A worker grants its window. A new incarnation (pid) means the old one died, even
        if the supervisor's word of it has not arrived yet."""
        link = self.links[worker]
        dead = self.down(worker) if pid and link.pid and pid != link.pid else []
        link.window, link.up, link.pid = window, True, pid or link.pid
        return dead

    def down(self, worker: str, pid: int = 0, culprits: Collection[int] | None = None,
             why: str = "") -> list[DeadLetter]:
        """The worker died. What it held goes out again as a group of *suspects*, on a worker
        that holds nothing else; if that worker dies too, the group is split in halves, each
        sent the same way (a bisection: a poison message among n is alone after log2(n)
        deaths, and n innocent ones need one run, not n one after another -- an async worker
        holds hundreds). Only a message that was alone on a worker when it died is charged
        an attempt. So a poison message is caught without charging its innocent neighbours,
        and (see dispatch) without taking every worker of its pool down with it. A report
        about an older incarnation than the one we know is ignored.

        `culprits` (not None): the cause is known -- the worker was ended because a call on
        these messages ran over its time limit (`why`). They fail at once, without a retry
        (504); everything else it held goes out again uncharged, as no suspect.

        Either way, a message that may not run twice (`rerun`) fails instead of going out
        again (502): the worker may have run it before it died."""
        link = self.links[worker]
        if pid and link.pid and pid != link.pid:
            return []
        back = list(link.pending.values())
        alone, suspected = link.isolated and len(back) == 1, link.isolated
        link.up, link.window, link.isolated = False, 0, False
        link.down_at = self.clock()
        link.pending.clear()
        dead = []
        if culprits is not None:
            dead = [DeadLetter(s, e, why, status=504) for s, e, _ in back if e[ID] in culprits]
            for letter in dead:
                letter.env[ATTEMPT] += 1  # its run is over: it counts
            back = [entry for entry in back if entry[1][ID] not in culprits]
        once = self._once(back, f"worker {worker} died while it held it")
        if once:  # (it may have run them: a batch runs one message after another)
            dead += once
            back = [entry for entry in back if self.rerun(entry[0], entry[1])]
        if culprits is not None:
            self.queue.extendleft(reversed([(s, e) for s, e, _ in back]))
            return dead
        count = 0
        for stage, env, _ in reversed(back):
            if alone:
                env[ATTEMPT] += 1
                if env[ATTEMPT] > self.max_attempts(stage):
                    dead.append(DeadLetter(stage, env, f"worker {worker} died while running "
                                                       f"it (alone) {env[ATTEMPT] - 1} times"))
                    continue
            self.suspects.appendleft((stage, env))
            count += 1
        if count > 1 and suspected:  # a group that killed its worker: halves, in turn
            self.groups.extendleft((count - count // 2, count // 2))
        elif count:
            self.groups.appendleft(count)
        return dead

    def unreachable(self, worker: str, batch: list[Pending]) -> None:
        """A send failed (the peer is not connected): take the batch back, wait for credit."""
        link = self.links[worker]
        back = self.suspects if link.isolated else self.queue
        if link.isolated:
            self.groups.appendleft(sum(env[ID] in link.pending for _, env, _ in batch))
        link.up, link.isolated = False, False
        for stage, env, _ in reversed(batch):
            if link.pending.pop(env[ID], None) is not None:  # (not one failed as too large)
                back.appendleft((stage, env))

    def bounced(self, worker: str) -> list[DeadLetter]:
        """A frame between us and `worker` was dropped (see Node.lost_frame): what it holds of
        ours may never be acknowledged, so it goes out again, charged an attempt (so a fault
        that repeats ends in the dead-letter file, not in a loop). Copies it did receive are
        dropped as duplicates downstream, by id."""
        link = self.links.get(worker)
        if link is None:
            return []
        back = list(link.pending.values())
        link.pending.clear()
        dead = self._once(back, f"frames between this process and {worker} were dropped "
                                f"while it held it")
        if dead:
            back = [entry for entry in back if self.rerun(entry[0], entry[1])]
        again = []
        for stage, env, _ in back:
            env[ATTEMPT] += 1
            if env[ATTEMPT] > self.max_attempts(stage):
                dead.append(DeadLetter(stage, env, f"frames between this process and "
                                                   f"{worker} were dropped {env[ATTEMPT] - 1} "
                                                   f"times while it held this message"))
            else:
                again.append((stage, env))
        self.queue.extendleft(reversed(again))  # first in line again, in their order
        return dead

    def _once(self, held: list[Pending], what: str) -> list[DeadLetter]:
        """The messages of `held` that may have run and may not run again: each fails, as a
        502 to its client (a gateway whose upstream died, as nginx answers)."""
        dead = [DeadLetter(stage, env, f"{what}; not run again (its request may not run "
                                       f"twice: see the stage's retry)", status=502)
                for stage, env, _ in held if not self.rerun(stage, env)]
        for letter in dead:
            letter.env[ATTEMPT] += 1  # (it may have run: count it)
        return dead

    def forget(self, worker: str, msg_id: int) -> None:
        """Stop tracking a message assigned to `worker` that will not be sent (too large)."""
        link = self.links.get(worker)
        if link is not None:
            link.pending.pop(msg_id, None)

    def done(self, worker: str, ids: list[int]) -> int:
        link = self.links.get(worker)
        if link is None:
            return 0
        pop, released, last = link.pending.pop, 0, None
        for msg_id in ids:
            entry = pop(msg_id, None)
            if entry is not None:
                released += 1
                last = entry
        if last is not None:  # one round-trip sample per acknowledgement frame
            if not link.pending:  # its group of suspects is done: none of them is a poison
                link.isolated = False
            sample = self.clock() - last[2]
            self.rtt = 0.9 * self.rtt + 0.1 * sample
        return released

    def failed(self, worker: str, msg_id: int, error: str, tb: str,
               status: int = 0) -> DeadLetter | None:
        """The handler raised: retry elsewhere, or give up after max_attempts. A `status`
        (504: the call ran past its time limit) fails it now, its client answered so."""
        link = self.links.get(worker)
        entry = link.pending.pop(msg_id, None) if link else None
        if entry is None:
            return None
        stage, env, _ = entry
        env[ATTEMPT] += 1
        if status:
            return DeadLetter(stage, env, error, tb, status=status)
        if env[ATTEMPT] > self.max_attempts(stage) or not self.rerun(stage, env):
            return DeadLetter(stage, env, error, tb)
        self.queue.append((stage, env))
        return None

    # ------------------------------------------------------------ sending
    def submit(self, stage: str, env: Envelope) -> None:
        self.queue.append((stage, env))

    def backlog(self) -> int:
        return len(self.queue) + len(self.suspects)

    def in_flight(self) -> int:
        return sum(len(link.pending) for link in self.links.values())

    def available(self) -> int:
        """Credit left over all live workers."""
        return sum(link.available() for link in self.links.values())

    def waiting(self) -> dict[str, int]:
        """stage -> messages held here for lack of credit (this sender's part of the queue in
        front of each stage; the status views add the receivers' inboxes)."""
        out: dict[str, int] = {}
        for items in (self.queue, self.suspects):
            for stage, _ in items:
                out[stage] = out.get(stage, 0) + 1
        return out

    def stalled(self, link: Link, now: float) -> bool:
        limit = max(self.STALL_FLOOR, self.STALL_FACTOR * self.rtt)
        return link.oldest_age(now) > limit

    def dispatch(self) -> dict[str, list[Pending]]:
        """Assign queued messages to workers; returns worker -> batch to send now."""
        out: dict[str, list[Pending]] = {}
        if not self.queue and not self.suspects:
            return out
        now = self.clock()
        healthy = [lk for lk in self.links.values() if lk.up and not self.stalled(lk, now)]
        pool = healthy or [lk for lk in self.links.values() if lk.up]
        ready = [lk for lk in pool if lk.available() > 0 and not lk.isolated]
        if self.suspects:
            # a suspect may be a poison that kills whoever runs it: it never takes a pool's
            # last free worker while another is expected back, so the pool keeps serving
            free = sum(lk.up and not lk.isolated for lk in self.links.values())
            back_soon = any(not lk.up and lk.pid and now - lk.down_at < self.SPARE_WAIT
                            for lk in self.links.values())
            for link in [lk for lk in ready if not lk.pending]:
                if not self.suspects or (free <= 1 and back_soon):
                    break
                link.isolated = True
                free -= 1
                group = self.groups.popleft()
                take = min(group, link.available())
                if group > take:
                    self.groups.appendleft(group - take)
                self._assign(link, self.suspects, take, now, out)
        ready = [lk for lk in ready if not lk.isolated]
        while self.queue and ready:
            # least loaded first; among equals, the one whose oldest message is youngest;
            # rotating the start first shares work evenly between idle workers
            turn = self._turn % len(ready)
            ready = ready[turn:] + ready[:turn]
            ready.sort(key=lambda lk: (len(lk.pending), lk.oldest_age(now)))
            link = ready[0]
            share = math.ceil(len(self.queue) / len(ready))
            self._turn += 1
            self._assign(link, self.queue, min(link.available(), share), now, out)
            ready = [lk for lk in ready if lk.available() > 0]
        return out

    def _assign(self, link: Link, source: deque[tuple[str, Envelope]], count: int, now: float,
                out: dict[str, list[Pending]]) -> None:
        take = source.popleft
        entries = [(*take(), now) for _ in range(count)]
        link.pending.update({entry[1][ID]: entry for entry in entries})
        out.setdefault(link.name, []).extend(entries)
        self.sent += count


@dataclass(slots=True)
class _Group:
    sender: str
    inputs: list[int]  # ids of the inputs, all from `sender`
    remaining: int


class Tracker:
    """Inputs whose outputs are not yet RECEIVED downstream (so not yet DONE upstream). A
    group is what one batch from one sender caused: its inputs are DONE together, once the
    last of its outputs is received."""

    def __init__(self) -> None:
        self._groups: dict[int, _Group] = {}
        self._waiting: dict[int, int] = {}  # output id -> group key
        self._next = 0

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, sender: str, inputs: list[int], outputs: list[int]) -> list[int]:
        """Register a processed group; returns the inputs that are DONE right away."""
        if not outputs:
            return inputs
        if not self._waiting.keys().isdisjoint(outputs):  # rare: a duplicate still in flight
            outputs = [o for o in outputs if o not in self._waiting]
            if not outputs:
                return inputs
        key = self._next
        self._next += 1
        self._groups[key] = _Group(sender, inputs, len(set(outputs)))
        self._waiting.update(dict.fromkeys(outputs, key))
        return []

    def received(self, outputs: list[int]) -> list[_Group]:
        """Outputs arrived downstream; returns the groups whose inputs are now DONE."""
        done: list[_Group] = []
        waiting, groups = self._waiting, self._groups
        for output in outputs:
            key = waiting.pop(output, None)
            if key is None:
                continue
            group = groups[key]
            group.remaining -= 1
            if group.remaining == 0:
                del groups[key]
                done.append(group)
        return done


class SeenIds:
    """Message ids seen lately, to drop duplicates that re-runs upstream cause: at least the
    last `window` ids, at most twice as many. Two generations of sets: when the young one
    holds `window` ids it becomes the old one and the old one is dropped -- a batch is
    checked and recorded in a few set operations in C, not a loop in Python (a deque of
    ids in arrival order cost a sink ~0.5 us a message)."""

    def __init__(self, window: int = 1 << 18) -> None:
        self._young: set[int] = set()
        self._old: set[int] = set()
        self._window = window

    def first_time(self, msg_id: int) -> bool:
        return not self.repeats([msg_id])

    def repeats(self, ids: list[int]) -> list[int]:
        """Record `ids`; return the positions of those seen before (in the window, or
        earlier in `ids`): empty when all are new, the usual case."""
        young, old = self._young, self._old
        before = len(young)
        if young.isdisjoint(ids) and old.isdisjoint(ids):
            young.update(ids)
            if len(young) - before == len(ids):
                self._age()
                return []
            young.difference_update(ids)  # (a repeat within `ids`: sorted out below)
        out = []
        for i, msg_id in enumerate(ids):
            if msg_id in young or msg_id in old:
                out.append(i)
            else:
                young.add(msg_id)
        self._age()
        return out

    def _age(self) -> None:
        if len(self._young) >= self._window:
            self._old, self._young = self._young, set()
