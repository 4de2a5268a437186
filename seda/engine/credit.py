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
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from itertools import count as counter

from seda.engine.wire import ATTEMPT, ID, Envelope

FRAME_MAX = 256  # messages per frame (and at most a receiver's byte limit: see the node)


def first_key() -> int:
    """Where a sender's frame keys start: random, so that a restarted sender's keys are not
    its predecessor's (a receiver may still answer those), and at least 2**40, so that
    every key packs to the same size."""
    return (1 << 40) + (random.SystemRandom().getrandbits(46) << 16)


@dataclass(slots=True, eq=False)
class Book:
    """A frame a worker received: DONE to its sender once `remaining` is 0 -- its messages
    not yet settled (run, failed or dropped), plus their outputs not yet received by the
    next process."""

    sender: str
    key: int
    remaining: int


# (stage, envelope, sent at, the book of the frame it is an output of, until its receipt;
# None: nobody waits for it)
Pending = tuple[str, Envelope, float, "Book | None"]
Chunk = tuple[str, list[Envelope], "Book | None"]  # messages of one stage, and their book


def runs(books: list[Book | None]) -> list[tuple[Book, int]]:
    """Per-message books as (book, how many) for each run of the same book (None left
    out)."""
    out: list[tuple[Book, int]] = []
    for book in books:
        if book is None:
            continue
        if out and out[-1][0] is book:
            out[-1] = (book, out[-1][1] + 1)
        else:
            out.append((book, 1))
    return out


def chunks(items: list[tuple[str, Envelope, Book | None]]) -> list[Chunk]:
    """Messages (stage, env, book) as chunks of consecutive ones of the same stage and
    book."""
    out: list[Chunk] = []
    for stage, env, book in items:
        if out and out[-1][0] == stage and out[-1][2] is book:
            out[-1][1].append(env)
        else:
            out.append((stage, [env], book))
    return out


class Backlog:
    """Messages waiting for credit, in chunks (a worker's outputs of one frame for one
    stage, the items a source read at once, an acceptor's turn): added, counted and taken a
    chunk at a time, not a message at a time. Iterating gives (stage, envelope) pairs."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: deque[Chunk] = deque()
        self.size = 0  # messages

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[str, Envelope]]:
        return ((stage, env) for stage, envs, _ in self.chunks for env in envs)

    def add(self, stage: str, envs: list[Envelope], book: Book | None = None) -> None:
        """`envs` is handed over: it may become (and grow into) a frame's list."""
        if envs:
            self.chunks.append((stage, envs, book))
            self.size += len(envs)

    def add_front(self, items: list[tuple[str, Envelope, Book | None]]) -> None:
        """Messages back at the front of the line, in this order."""
        self.chunks.extendleft(reversed(chunks(items)))
        self.size += len(items)

    def take(self, count: int) -> list[Chunk]:
        """Up to `count` messages from the front, in chunks (the last one cut if need be)."""
        out: list[Chunk] = []
        line = self.chunks
        while count > 0 and line:
            stage, envs, book = line[0]
            if len(envs) <= count:
                line.popleft()
                out.append((stage, envs, book))
                count -= len(envs)
                self.size -= len(envs)
            else:
                out.append((stage, envs[:count], book))
                line[0] = (stage, envs[count:], book)
                self.size -= count
                count = 0
        return out

    def by_stage(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for stage, envs, _ in self.chunks:
            out[stage] = out.get(stage, 0) + len(envs)
        return out


@dataclass(slots=True, eq=False)
class Frame:
    """Messages of one stage sent to one worker together: what the books keep until the
    worker says the frame is DONE. `received`: its receipt came (the tracker was told)."""

    key: int
    stage: str
    envs: list[Envelope]
    sent: float
    received: bool = False
    # the books its messages are outputs of (runs, in order), told once its receipt comes
    books: list[tuple[Book, int]] = field(default_factory=list)

    def message_books(self) -> list[Book | None]:
        """Each message's book, or None (nobody waits for it, or its receipt came)."""
        if self.received or not self.books:
            return [None] * len(self.envs)
        return [book for book, n in self.books for _ in range(n)]

    def members(self) -> list[tuple[str, Envelope, Book | None]]:
        """Its messages one by one, each with its book (the rare paths: redelivery)."""
        return [(self.stage, env, book)
                for env, book in zip(self.envs, self.message_books(), strict=True)]


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
        back = [(stage, env, f.sent, book) for f in self.pending.values()
                for stage, env, book in f.members()]
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
    book: Book | None = None  # the book that waits for it (it will never arrive: settled)


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
        self.queue = Backlog()
        self.suspects = Backlog()  # held by a worker that died
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
            dead = [DeadLetter(s, e, why, status=504, book=b) for s, e, _, b in back
                    if e[ID] in culprits]
            for letter in dead:
                letter.env[ATTEMPT] += 1  # its run is over: it counts
            back = [entry for entry in back if entry[1][ID] not in culprits]
        once = self._once(back, f"worker {worker} died while it held it")
        if once:  # (it may have run them: a batch runs one message after another)
            dead += once
            back = [entry for entry in back if self.rerun(entry[0], entry[1])]
        if culprits is not None:
            self.queue.add_front([(s, e, b) for s, e, _, b in back])
            return dead
        kept = []
        for stage, env, _, book in back:
            if alone:
                env[ATTEMPT] += 1
                if env[ATTEMPT] > self.max_attempts(stage):
                    dead.append(DeadLetter(stage, env, f"worker {worker} died while running "
                                                       f"it (alone) {env[ATTEMPT] - 1} times",
                                           book=book))
                    continue
            kept.append((stage, env, book))
        self.suspects.add_front(kept)
        count = len(kept)
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
        back.add_front([member for f in mine for member in f.members()])

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
        for stage, env, _, book in back:
            env[ATTEMPT] += 1
            if env[ATTEMPT] > self.max_attempts(stage):
                dead.append(DeadLetter(stage, env, f"frames between this process and "
                                                   f"{worker} were dropped {env[ATTEMPT] - 1} "
                                                   f"times while it held this message",
                                       book=book))
            else:
                again.append((stage, env, book))
        self.queue.add_front(again)  # first in line again, in their order
        return dead

    def _once(self, held: list[Pending], what: str) -> list[DeadLetter]:
        """The messages of `held` that may have run and may not run again: each fails, as a
        502 to its client (a gateway whose upstream died, as nginx answers)."""
        dead = [DeadLetter(stage, env, f"{what}; not run again (its request may not run "
                                       f"twice: see the stage's retry)", status=502,
                           book=book)
                for stage, env, _, book in held if not self.rerun(stage, env)]
        for letter in dead:
            letter.env[ATTEMPT] += 1  # (it may have run: count it)
        return dead

    def split(self, worker: str, frame: Frame, parts: list[list[Envelope]]
              ) -> tuple[list[Frame], list[tuple[Envelope, Book | None]]]:
        """A frame too large to send as one: in its place, a frame (with a key of its own)
        for each of `parts`. Returns those, and the messages of `frame` in no part (too
        large for any frame: each fails alone, see the node) with their books: they leave
        the books here."""
        link = self.links[worker]
        del link.pending[frame.key]
        link.held -= len(frame.envs)
        book_of = {id(env): book for _, env, book in frame.members()}
        out = [Frame(next(self._keys), frame.stage, envs, frame.sent, frame.received,
                     runs([book_of.pop(id(env)) for env in envs])) for envs in parts]
        for new in out:
            link.pending[new.key] = new
            link.held += len(new.envs)
        left = [(env, book_of[id(env)]) for env in frame.envs if id(env) in book_of]
        return out, left

    def received(self, worker: str, keys: list[int]) -> list[tuple[Book, int]]:
        """Receipts of frames: the books their messages are outputs of, with how many, the
        first time each frame's receipt comes (for the tracker)."""
        link = self.links.get(worker)
        if link is None:
            return []
        out: list[tuple[Book, int]] = []
        get = link.pending.get
        for key in keys:
            frame = get(key)
            if frame is not None and not frame.received:
                frame.received = True
                out += frame.books
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
        books = frame.message_books()  # (its receipt came first: None, nearly always)
        book = books.pop(at)
        frame.books = runs(books)
        env = envs.pop(at)
        link.held -= 1
        stage = frame.stage
        env[ATTEMPT] += 1
        if status:
            return DeadLetter(stage, env, error, tb, status=status, book=book)
        if env[ATTEMPT] > self.max_attempts(stage) or not self.rerun(stage, env):
            return DeadLetter(stage, env, error, tb, book=book)
        self.queue.add(stage, [env], book)
        return None

    # ------------------------------------------------------------ sending
    def submit(self, stage: str, env: Envelope) -> None:
        self.queue.add(stage, [env])

    def submit_many(self, stage: str, envs: list[Envelope], book: Book | None = None) -> None:
        """Messages for `stage`; `book`: the frame they are outputs of, told when their
        receipts come (see Tracker)."""
        self.queue.add(stage, envs, book)

    def backlog(self) -> int:
        return self.queue.size + self.suspects.size

    def in_flight(self) -> int:
        return sum(link.held for link in self.links.values())

    def available(self) -> int:
        """Credit left over all live workers."""
        return sum(link.available() for link in self.links.values())

    def waiting(self) -> dict[str, int]:
        """stage -> messages held here for lack of credit (this sender's part of the queue in
        front of each stage; the status views add the receivers' inboxes)."""
        out = self.queue.by_stage()
        for stage, n in self.suspects.by_stage().items():
            out[stage] = out.get(stage, 0) + n
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

    def _assign(self, link: Link, source: Backlog, count: int, now: float,
                out: dict[str, list[Frame]]) -> None:
        """`count` messages from the front of `source` to `link`, in frames of one stage
        and at most frame_max messages each."""
        if count <= 0:
            return
        frames = out.setdefault(link.name, [])
        step, keys, pending = self.frame_max, self._keys, link.pending
        frame: Frame | None = None
        taken = 0
        for stage, envs, book in source.take(count):
            taken += len(envs)
            while envs:
                if frame is None or frame.stage != stage or len(frame.envs) >= step:
                    frame = Frame(next(keys), stage, [], now)
                    pending[frame.key] = frame
                    frames.append(frame)
                room = step - len(frame.envs)
                piece, envs = (envs, []) if len(envs) <= room else (envs[:room], envs[room:])
                if frame.envs:
                    frame.envs += piece
                else:
                    frame.envs = piece
                if book is not None:
                    frame.books.append((book, len(piece)))
        link.held += taken  # (what there was: never more than asked)
        self.sent += taken


class Tracker:
    """Frames whose messages are not all settled, or whose outputs are not all RECEIVED
    downstream (so not yet DONE upstream). Counted per frame: the outputs of a frame's
    messages go out tagged with its book, and each receipt (or a dead letter: an output
    that will never arrive) counts them off -- no book of outputs by id."""

    def __init__(self) -> None:
        self._open: set[Book] = set()

    def __len__(self) -> int:
        return len(self._open)

    def open(self, sender: str, key: int, messages: int) -> Book:
        """A frame of `messages` messages arrived from `sender`."""
        book = Book(sender, key, messages)
        self._open.add(book)
        return book

    def settle(self, book: Book, settled: int, outputs: int) -> bool:
        """`settled` messages of the frame are through, with `outputs` messages sent on
        (tagged with the book): whether the frame is DONE now."""
        book.remaining += outputs - settled
        if book.remaining <= 0:
            self._open.discard(book)
            return True
        return False

    def received(self, books: list[tuple[Book, int]]) -> list[Book]:
        """Outputs arrived downstream (or will never arrive), by book and count; returns the
        frames that are now DONE."""
        done: list[Book] = []
        for book, n in books:
            if book in self._open:
                book.remaining -= n
                if book.remaining <= 0:
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
