"""The front door's request book, sans-IO: every request a front door (an acceptor) has read
and not yet answered.

Two views of the same requests:
- per connection, its **reply order** (a deque of `Slot`s): HTTP/1.1 and the other
  protocols answer in request order, so a reply waits until those before it are out;
  `take_ready` gives the finished ones at the head, up to the first that needs more than
  bytes written (a file to send, a connection to close);
- per request in the graph, the **book** (`Book`): its slot by id, and the deadlines in
  arrival order (every request gets the same timeout, so a FIFO is the priority queue).
  A result settles its request once (`settle`; a second one, or one after the deadline, is
  late), a deadline passed answers it 504 (`expired`).
No sockets and no clock of its own: the acceptor owns the transport and passes `now`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Slot:
    """One request's place in its connection's reply order."""

    conn: Any  # the connection it came on (the runtime's; opaque here)
    request: Any
    out: bytes = b""
    close: bool = False
    done: bool = False
    start: float = 0.0  # monotonic, when the request was read
    timed: bool = False  # admitted: its response time goes to the admission controller
    file: tuple[int, int] | None = None  # (fd, size): a file that follows `out` (sendfile)
    rid: int = 0  # its id in the graph (0: answered without entering it)
    # a streamed reply (ctx.stream): its bytes not yet written (None: not streamed), the
    # number of the part it expects next, and the bytes waiting in `parts`
    parts: list[bytes] | None = None
    next_part: int = 0
    held: int = 0


# what a client is told when its request was lost in the graph (a dead letter's status)
LOST_TEXT = {500: "the handler failed", 504: "the handler ran over its time limit",
             502: "a worker died while it held the request, which is not run twice",
             413: "the request is over the graph's settings.max_message_bytes",
             503: "overloaded, try again"}


def wants_close(slot: Slot) -> bool:
    """The request asked for the connection to close after its answer (HTTP keep-alive
    off)."""
    return type(slot.request) is dict and slot.request.get("keep_alive") is False


def server_answer(slot: Slot, out: bytes) -> None:
    """The server's own answer to a request (500, 503, 504): the connection stays open
    unless the request asked to close it. A streamed reply already begun cannot change
    its status: it is cut instead."""
    if slot.parts is not None:
        cut(slot)
        return
    slot.out = out
    slot.close = wants_close(slot)
    slot.done = True


def next_part(slot: Slot, seq: int) -> bool:
    """Whether part `seq` of a streamed reply is the one expected next (then it is
    counted). A part 0 after others means the message ran again (its worker died, another
    began it anew); what was written cannot be taken back, so the caller cuts the reply."""
    if seq != slot.next_part:
        return False
    slot.next_part += 1
    return True


def cut(slot: Slot) -> None:
    """End a streamed reply that cannot be finished (its handler failed or ran again, its
    deadline passed, its client does not read): what was made is written, then the
    connection closes -- the client sees a reply cut short, never a wrong one."""
    slot.out = b"".join(slot.parts or ())
    slot.parts, slot.held = [], 0
    slot.close = slot.done = True


def unsent_parts(order: deque[Slot]) -> bytes:
    """The parts of the streamed reply at the head of a connection's order that are not
    written yet, taken (b"" when the head is not a stream under way)."""
    if not order or order[0].done or not order[0].parts:
        return b""
    slot = order[0]
    assert slot.parts is not None
    data = b"".join(slot.parts)
    slot.parts.clear()
    slot.held = 0
    return data


def take_ready(order: deque[Slot]) -> list[Slot]:
    """The finished replies at the head of a connection's order, taken out of it: all of
    them, or up to and including the first that has a file to follow or closes the
    connection (what comes after it must wait for that). [] when the head is not done."""
    out = []
    while order and order[0].done:
        slot = order.popleft()
        out.append(slot)
        if slot.file is not None or slot.close:
            break
    return out


class Book:
    """The requests a front door has in the graph, by id, with their deadlines."""

    __slots__ = ("deadlines", "slots")

    def __init__(self) -> None:
        self.slots: dict[int, Slot] = {}
        self.deadlines: deque[tuple[float, int]] = deque()  # (expires, id), oldest first

    def __len__(self) -> int:
        return len(self.slots)

    def enter(self, slot: Slot, rid: int, expires: float) -> None:
        slot.rid = rid
        self.slots[rid] = slot
        self.deadlines.append((expires, rid))

    def settle(self, rid: int) -> Slot | None:
        """The request a result (or a loss) is for, now out of the book; None: it was
        settled already (a duplicate) or its deadline passed (late)."""
        return self.slots.pop(rid, None)

    def expired(self, now: float) -> list[Slot]:
        """The requests whose deadline is `now` or earlier and that are still unanswered,
        taken out of the book (their clients get 504)."""
        deadlines, slots, out = self.deadlines, self.slots, []
        while deadlines and deadlines[0][0] <= now:
            slot = slots.pop(deadlines.popleft()[1], None)
            if slot is not None:
                out.append(slot)
        return out
