"""Credit-based, load-aware flow between processes, and the bookkeeping that makes it lossless.

Pure (clock injected); the node shell moves the bytes. Two pieces:

The books are kept per *frame*, not per message: messages go to a worker in frames (one
stage, up to FRAME_MAX messages, each with a key unique to its sender), and the worker
acknowledges frames by their keys -- RECEIVED when a frame arrives, DONE once every message
in it is settled. A message that fails is reported by its frame's key and its id, before
(or with) that frame's DONE. So receipts, DONEs and the sender's pending entries cost a
little per frame, not per message.

`Dispatcher` -- one per downstream pool, in every sender. Each worker grants the sender a
window (messages); the sender keeps every frame it sent until the worker says DONE, so when
the supervisor reports the worker dead, the messages of those frames go out again (attempt
+ 1). Work goes to the least-loaded worker with credit, and never to a *stalled* one (its
oldest frame has waited far longer than the pool's usual round trip) while another can take
it: a worker stuck on a 2 s message does not collect a queue behind it.

`Tracker` -- a worker reports a frame DONE only once every output of its messages has been
RECEIVED by the next process. Until then the frame stays pending upstream, so a worker
killed with outputs still in its socket buffers loses nothing: its input is simply run
again.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from itertools import count as counter
from itertools import repeat

from seda.engine.wire import ATTEMPT, ID, Envelope

Pending = tuple[str, Envelope, float]  # (stage, envelope, sent at)
FRAME_MAX = 256  # messages per frame (and at most a receiver's byte limit: see the node)


def first_key() -> int:
    """Where a sender's frame keys start: random, so that a restarted sender's keys are not
    its predecessor's (a receiver may still answer those), and at least 2**40, so that
    every key packs to the same size."""
    return (1 << 40) + (random.SystemRandom().getrandbits(46) << 16)


@dataclass(slots=True, eq=False)
class Frame:
    """Messages of one stage sent to one worker together: what the books keep until the
    worker says the frame is DONE. `received`: its receipt came (the tracker was told)."""

    key: int
    stage: str
    envs: list[Envelope]
    sent: float
    received: bool = False


@dataclass(slots=True)
class Link:
    """The sender's view of one worker."""

    name: str
    window: int = 0
    up: bool = False
    pid: int = 0  # incarnation that granted the window
    isolated: bool = False  # holds one group of suspects and nothing else
    down_at: float = 0.0  # when it was last reported down (a restart is expected)
    pending: dict[int, Frame] = field(default_factory=dict)  # insertion order = age order
    held: int = 0  # messages in the pending frames

    def available(self) -> int:
        return self.window - self.held if self.up else 0

    def oldest_age(self, now: float) -> float:
        if not self.pending:
            return 0.0
        return now - next(iter(self.pending.values())).sent

    def take_all(self) -> list[Pending]:
        """Every message it holds, oldest first; it holds none after."""
        back = [(f.stage, env, f.sent) for f in self.pending.values() for env in f.envs]
        self.pending.clear()
        self.held = 0
        return back


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
                 rerun: Callable[[str, Envelope], bool] = lambda stage, env: True,
                 keys: int | None = None, frame_max: int = FRAME_MAX) -> None:
        """`keys`: the first frame key (default: random, see first_key); `frame_max`: the
        most messages a frame holds. `rerun(stage, env)`: may this message run again once
        it may have run (its handler raised, or its worker died or lost frames while
        holding it)? Not: it fails there (a dead letter; see the stage's `retry`)."""
        self.pool, self.clock, self.max_attempts, self.rerun = pool, clock, max_attempts, rerun
        self.frame_max = frame_max
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
        self._keys = counter(first_key() if keys is None else keys)

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
        back = link.take_all()
        alone, suspected = link.isolated and len(back) == 1, link.isolated
        link.up, link.window, link.isolated = False, 0, False
        link.down_at = self.clock()
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

    def unreachable(self, worker: str, frames: list[Frame]) -> None:
        """A send failed (the peer is not connected): take these frames back (those not
        sent yet), wait for credit."""
        link = self.links[worker]
        back = self.suspects if link.isolated else self.queue
        mine = [f for f in frames if link.pending.pop(f.key, None) is not None]
        held = sum(len(f.envs) for f in mine)
        link.held -= held
        if link.isolated and held:
            self.groups.appendleft(held)
        link.up, link.isolated = False, False
        back.extendleft(reversed([(f.stage, env) for f in mine for env in f.envs]))

    def bounced(self, worker: str) -> list[DeadLetter]:
        """A frame between us and `worker` was dropped (see Node.lost_frame): what it holds of
        ours may never be acknowledged, so it goes out again, charged an attempt (so a fault
        that repeats ends in the dead-letter file, not in a loop). Copies it did receive are
        dropped as duplicates downstream, by id."""
        link = self.links.get(worker)
        if link is None:
            return []
        back = link.take_all()
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

    def split(self, worker: str, frame: Frame, parts: list[list[Envelope]]) -> list[Frame]:
        """A frame too large to send as one: in its place, a frame (with a key of its own)
        for each of `parts`; a message of `frame` in no part (too large for any frame: it
        fails alone, see the node) leaves the books."""
        link = self.links[worker]
        del link.pending[frame.key]
        link.held -= len(frame.envs)
        out = [Frame(next(self._keys), frame.stage, envs, frame.sent) for envs in parts]
        for new in out:
            link.pending[new.key] = new
            link.held += len(new.envs)
        return out

    def received(self, worker: str, keys: list[int]) -> list[int]:
        """Receipts of frames: the ids of their messages, the first time each frame's
        receipt comes (the tracker's outputs that are now downstream)."""
        link = self.links.get(worker)
        if link is None:
            return []
        out: list[int] = []
        get = link.pending.get
        for key in keys:
            frame = get(key)
            if frame is not None and not frame.received:
                frame.received = True
                out += [env[ID] for env in frame.envs]
        return out

    def done(self, worker: str, keys: list[int]) -> int:
        """Frames the worker is through with: their messages leave the books (how many)."""
        link = self.links.get(worker)
        if link is None:
            return 0
        pop, released, last = link.pending.pop, 0, None
        for key in keys:
            frame = pop(key, None)
            if frame is not None:
                released += len(frame.envs)
                last = frame
        if last is not None:  # one round-trip sample per acknowledgement frame
            link.held -= released
            if not link.pending:  # its group of suspects is done: none of them is a poison
                link.isolated = False
            sample = self.clock() - last.sent
            self.rtt = 0.9 * self.rtt + 0.1 * sample
        return released

    def failed(self, worker: str, key: int, msg_id: int, error: str, tb: str,
               status: int = 0) -> DeadLetter | None:
        """The handler raised on message `msg_id` of frame `key`: retry elsewhere, or give
        up after max_attempts. A `status` (504: the call ran past its time limit) fails it
        now, its client answered so."""
        link = self.links.get(worker)
        frame = link.pending.get(key) if link else None
        if link is None or frame is None:
            return None
        envs = frame.envs
        at = next((i for i, env in enumerate(envs) if env[ID] == msg_id), None)
        if at is None:
            return None
        env = envs.pop(at)
        link.held -= 1
        stage = frame.stage
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
        return sum(link.held for link in self.links.values())

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

    def dispatch(self) -> dict[str, list[Frame]]:
        """Assign queued messages to workers; returns worker -> frames to send now."""
        out: dict[str, list[Frame]] = {}
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
            ready.sort(key=lambda lk: (lk.held, lk.oldest_age(now)))
            link = ready[0]
            share = math.ceil(len(self.queue) / len(ready))
            self._turn += 1
            self._assign(link, self.queue, min(link.available(), share), now, out)
            ready = [lk for lk in ready if lk.available() > 0]
        return out

    def _assign(self, link: Link, source: deque[tuple[str, Envelope]], count: int, now: float,
                out: dict[str, list[Frame]]) -> None:
        """`count` messages from the front of `source` to `link`, in frames of one stage
        and at most frame_max messages each."""
        if count <= 0:
            return
        take = source.popleft
        entries = [take() for _ in range(count)]
        frames = out.setdefault(link.name, [])
        step, keys, pending = self.frame_max, self._keys, link.pending
        stage = entries[0][0]
        if entries[-1][0] == stage and all(e[0] == stage for e in entries):  # one stage
            runs = [(stage, [env for _, env in entries])]
        else:
            runs = []
            for stage, env in entries:
                if runs and runs[-1][0] == stage:
                    runs[-1][1].append(env)
                else:
                    runs.append((stage, [env]))
        for stage, envs in runs:
            for start in range(0, len(envs), step):
                frame = Frame(next(keys), stage, envs[start:start + step]
                              if len(envs) > step else envs, now)
                pending[frame.key] = frame
                frames.append(frame)
        link.held += count
        self.sent += count


@dataclass(slots=True, eq=False)
class Book:
    """A frame a worker received: DONE to its sender once `remaining` is 0 -- its messages
    not yet settled (run, failed or dropped), plus their outputs not yet received by the
    next process."""

    sender: str
    key: int
    remaining: int


class Tracker:
    """Frames whose messages are not all settled, or whose outputs are not all RECEIVED
    downstream (so not yet DONE upstream)."""

    def __init__(self) -> None:
        self._open: set[Book] = set()
        self._waiting: dict[int, Book] = {}  # output id -> the book of the frame it came of

    def __len__(self) -> int:
        return len(self._open)

    def open(self, sender: str, key: int, messages: int) -> Book:
        """A frame of `messages` messages arrived from `sender`."""
        book = Book(sender, key, messages)
        self._open.add(book)
        return book

    def settle(self, book: Book, settled: int, outputs: list[int]) -> bool:
        """`settled` messages of the frame are through, with these outputs sent on (ids):
        whether the frame is DONE now."""
        if outputs:
            waiting = self._waiting
            if not waiting.keys().isdisjoint(outputs):  # rare: a duplicate still in flight
                outputs = [o for o in outputs if o not in waiting]
            fresh = dict.fromkeys(outputs, book)
            book.remaining += len(fresh)
            waiting.update(fresh)
        book.remaining -= settled
        if book.remaining == 0:
            self._open.discard(book)
            return True
        return False

    def received(self, outputs: list[int]) -> list[Book]:
        """Outputs arrived downstream; returns the frames that are now DONE."""
        done: list[Book] = []
        books = Counter(filter(None, map(self._waiting.pop, outputs, repeat(None))))
        for book, n in books.items():
            book.remaining -= n
            if book.remaining == 0:
                self._open.discard(book)
                done.append(book)
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
