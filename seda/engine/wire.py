"""Envelopes and wire frames between seda processes: msgpack only, size-limited, no IO here.

An envelope is a plain list on the hot path (cheap to build, pack and index):
    [id, origin, attempt, deadline, payload, request, born]
`request` is the id the origin gave the work this message descends from (the acceptor's
request, the source's item): replies find their client by it. `born` is when the message was
made (wall clock, ns; one clock for every process of the machine), on one message in eight
(chosen by id, see SAMPLE; 0 on the others): the stage that runs it counts the time since as
the message's queue wait. A sample, because timing every message cost ~5% of a fast chain.
Every frame on a mailbox is [sender routing id, kind (1 byte), body (msgpack)]. Messages
travel in DATA (and RESULT) frames, each with a key its sender chose: receipts and DONEs
name frames by their keys, not messages by their ids (see seda.engine.credit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

import msgpack

from seda.errors import ProtocolError

ID, ORIGIN, ATTEMPT, DEADLINE, PAYLOAD, REQUEST, BORN, FINAL = range(8)  # FINAL: a sink's
# finish() value names its stage there (only on the way to the origin)
Envelope = list[Any]

# frame kinds
DATA = b"D"      # body: [stage, held, key, ids, origins, attempts, deadlines, payloads,
#                  requests, borns] (columns: see encode_data)   sender -> worker
ACK = b"A"       # body: [[received keys], [done keys], [[key, id, error, traceback,
#                  status], ...]] (see unpack_ack)              receiver -> sender
CREDIT = b"C"    # body: window (int, absolute)               worker -> sender
HELLO = b"H"     # body: nil                                  sender -> worker
RESULT = b"R"    # body: [key, kept rows, sent rows, done keys]  any -> origin (unpack_results)
LOST = b"L"      # body: [[request, error, status], ...]      any -> origin (dead-lettered)
PART = b"P"      # body: [[request, seq, head, data], ...]    any -> origin (a streamed part)
BOUNCE = b"B"    # body: nil                                  either way (see Node.lost_frame)
CONTROL = b"X"   # body: an Order, {"op": ...} (see below)    supervisor -> process
STATUS = b"S"    # body: a Report, {"op": ..., "name": ...}   process -> supervisor
JOIN = b"J"      # body: {"host", "pid"} / {"name", "plan"} or {"error"}  joining worker <->
#                  supervisor (seda worker --join: the only frame before it has a name)

# the frames' format: every process of a run must speak the same one. A worker that joins
# from another host says which it speaks, and one that speaks another is refused (see
# seda.runtime.join). Changed whenever a frame's layout does: 2 since frames have keys, 3
# since a DATA frame carries its messages as columns.
WIRE = 3
SAMPLE = 7  # a message whose id & SAMPLE == 0 carries its birth time (one in eight)
# in a request id (the REQUEST field, which every message a request causes carries): the
# request may not be run twice -- an HTTP POST or PATCH, a RESP write, a line or length
# request (nothing says they are idempotent). A stage with `retry: idempotent` (the default)
# runs such a message again neither after its handler raised nor after its worker died.
ONCE = 1 << 62
ID_MASK = (1 << 63) - 1
ID_MIX = 0x9E3779B97F4A7C15


def child_id(parent: int, index: int) -> int:
    """Deterministic id of the index-th output of a message: a re-run of the same message
    yields the same ids, which is what lets sinks and acceptors spot duplicates."""
    return ((parent * 1_000_003) ^ ((index + 1) * ID_MIX)) & ID_MASK


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


T = TypeVar("T")
FRAME_OVERHEAD = 4096  # bytes a frame may hold beyond settings.max_message_bytes (ids, names)


def bounded(rows: list[T], body_of: Callable[[list[T]], bytes], limit: int
            ) -> list[tuple[list[T], bytes]]:
    """`rows` packed into frames of at most `limit` bytes each, in order: [(rows, body)].
    One pack when they fit (nearly always); otherwise halves, packed again until each fits. A
    single row over the limit comes back alone with an empty body: the caller fails it (a
    frame over the limit would be dropped by its receiver, and its messages with it)."""
    body = body_of(rows)
    if len(body) <= limit or not rows:  # (nothing to split: an empty frame is the least)
        return [(rows, body)]
    if len(rows) == 1:
        return [(rows, b"")]
    half = len(rows) // 2
    return bounded(rows[:half], body_of, limit) + bounded(rows[half:], body_of, limit)


def unpack(body: bytes, limit: int) -> Any:
    """Decode one frame body; anything oversized or malformed is a ProtocolError."""
    if len(body) > limit:
        raise ProtocolError(f"frame of {len(body)} bytes is over the {limit}-byte limit")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from None


# Shape checks run on every frame: a column (a DATA frame's fields, a list of keys) with
# set(map(type, ...)), in C; rows (failures, results) with plain loops over `type(x) is T`.
# Both compare exact types, which keeps bools out of int fields.
def _ints(values: Any) -> bool:
    return type(values) is list and set(map(type, values)) <= {int}


def _rows(obj: Any, types: tuple[type, ...], what: str) -> list[Any]:
    """A list of rows whose columns have `types` (for the rare frames: LOST)."""
    if type(obj) is list:
        for row in obj:
            if (type(row) is not list or len(row) != len(types)
                    or any(type(v) is not t for v, t in zip(row, types, strict=True))):
                break
        else:
            return obj
    raise ProtocolError(f"malformed {what} frame")


class Batch:
    """Messages of one stage, as columns (what a DATA frame carries, and what the stage core
    runs): the i-th message is ids[i], origins[i], ... -- the fields of an envelope. No list
    is made per message: a frame of 256 messages unpacks to ten lists, not 256, and is
    checked a column at a time in C (set(map(type, ...))), not an envelope at a time in
    Python. `envelope(i)` makes one message's envelope, for the rare paths (a failure, a
    drop, a handler that emits or replies through its ctx)."""

    __slots__ = ("attempts", "borns", "deadlines", "ids", "origins", "payloads", "requests")

    def __init__(self, ids: list[int], origins: list[str], attempts: list[int],
                 deadlines: list[float], payloads: list[Any], requests: list[int],
                 borns: list[int]) -> None:
        self.ids, self.origins, self.attempts, self.deadlines = ids, origins, attempts, \
            deadlines
        self.payloads, self.requests, self.borns = payloads, requests, borns

    @classmethod
    def of(cls, envs: list[Envelope]) -> Batch:
        """The columns of these envelopes (a transposition in C)."""
        if not envs:
            return cls([], [], [], [], [], [], [])
        ids, origins, attempts, deadlines, payloads, requests, borns = map(
            list, zip(*envs, strict=True))
        return cls(ids, origins, attempts, deadlines, payloads, requests, borns)

    def __len__(self) -> int:
        return len(self.ids)

    def envelope(self, i: int) -> Envelope:
        return [self.ids[i], self.origins[i], self.attempts[i], self.deadlines[i],
                self.payloads[i], self.requests[i], self.borns[i]]

    def envelopes(self) -> list[Envelope]:
        return [list(row) for row in zip(self.ids, self.origins, self.attempts, self.deadlines,
                                         self.payloads, self.requests, self.borns,
                                         strict=True)]

    def take(self, keep: list[int]) -> Batch:
        """The messages at these positions, in this order."""
        return Batch([self.ids[i] for i in keep], [self.origins[i] for i in keep],
                     [self.attempts[i] for i in keep], [self.deadlines[i] for i in keep],
                     [self.payloads[i] for i in keep], [self.requests[i] for i in keep],
                     [self.borns[i] for i in keep])


def _same(column: tuple[Any, ...]) -> Any:
    """A column whose values are all one: that value, sent once; else the column."""
    first = column[0]
    return first if column.count(first) == len(column) else column


def encode_data(stage: str, envs: list[Envelope], held: int, key: int) -> bytes:
    """A DATA frame of these messages: [stage, held, key, ids, origins,
    attempts, deadlines, payloads, requests, borns], each field a column of one value a
    message -- origins, attempts and deadlines as one value when every message has the same
    (one origin, first attempts, no deadline: nearly always). The envelopes are transposed
    in C (zip), each column counted in C."""
    if not envs:
        return pack([stage, held, key, [], [], [], [], [], [], []])
    ids, origins, attempts, deadlines, payloads, requests, borns = zip(*envs, strict=True)
    return pack([stage, held, key, ids, _same(origins), _same(attempts), _same(deadlines),
                 payloads, requests, borns])


_INT: set[type] = {int}
_STR: set[type] = {str}
_NUMBER: set[type] = {int, float}


def _column(values: Any, n: int, types: set[type]) -> list[Any] | None:
    """A column of n values of these types, sent as a list or (all one) a single value."""
    if type(values) is list:
        return values if len(values) == n and set(map(type, values)) <= types else None
    return [values] * n if type(values) in types else None


def unpack_data(body: bytes, limit: int) -> tuple[str, Batch, int, int]:
    """Decode a DATA body into (stage, messages, held back, key), checking its shape.
    `held back`: messages the sender still held for the receiver's pool once this frame
    went, for lack of credit (the batching controller's sign that the window keeps work
    away); `key`: the frame's, which its receipt and its DONE name."""
    obj = unpack(body, limit)
    if type(obj) is list and len(obj) == 10:
        stage, held, key, ids, origins, attempts, deadlines, payloads, requests, borns = obj
        if (type(stage) is str and type(held) is int and held >= 0 and type(key) is int
                and type(ids) is list and set(map(type, ids)) <= _INT
                and type(payloads) is list and len(payloads) == len(ids)):
            n = len(ids)
            columns = (_column(origins, n, _STR), _column(attempts, n, _INT),
                       _column(deadlines, n, _NUMBER), _column(requests, n, _INT),
                       _column(borns, n, _INT))
            if None not in columns:
                o, a, d, r, b = columns
                return stage, Batch(ids, o, a, d, payloads, r, b), held, key  # type: ignore[arg-type]
    raise ProtocolError("malformed DATA frame: expected [stage, held back, key, [id, ...], "
                        "origins, attempts, deadlines, [payload, ...], [request, ...], "
                        "[born, ...]]")


def _fails(rows: Any) -> bool:
    if type(rows) is not list:
        return False
    for row in rows:
        if (type(row) is not list or len(row) != 5 or type(row[0]) is not int
                or type(row[1]) is not int or type(row[2]) is not str
                or type(row[3]) is not str or type(row[4]) is not int):
            return False
    return True


def unpack_ack(body: bytes, limit: int) -> tuple[list[int], list[int], list[list[Any]]]:
    """[[received keys], [done keys], [[key, id, error, traceback, status], ...]]: frames
    received, frames DONE, and the messages of frames that failed (a handler raised). A
    failure comes before, or in one frame with, its frame's DONE; a receiver acts on the
    three in the order received, failed, done. `status` 0: retried as the stage's `retry`
    says; else the message fails now, its client answered with that status (504: a call
    past its time limit)."""
    obj = unpack(body, limit)
    if not (type(obj) is list and len(obj) == 3 and _ints(obj[0]) and _ints(obj[1])
            and _fails(obj[2])):
        raise ProtocolError("malformed ACK frame")
    return obj[0], obj[1], obj[2]


def unpack_credit(body: bytes, limit: int) -> tuple[int, int]:
    """[window, pid]"""
    obj = unpack(body, limit)
    if not (_ints(obj) and len(obj) == 2 and obj[0] >= 0):
        raise ProtocolError("malformed CREDIT frame")
    return obj[0], obj[1]


def _result_rows(rows: Any) -> bool:
    if type(rows) is not list:
        return False
    for row in rows:
        if (type(row) is not list or not 3 <= len(row) <= 4 or type(row[0]) is not int
                or type(row[2]) is not int or (len(row) == 4 and type(row[3]) is not str)):
            return False
    return True


def unpack_results(body: bytes, limit: int) -> tuple[int, list[list[Any]], list[list[Any]],
                                                     list[int]]:
    """[key, kept, sent, done]: rows [id, payload, request(, stage)] the sender keeps until the
    origin acknowledges this frame (by `key`); rows it does not keep; and keys of the
    origin's own frames that are DONE -- their messages made only the rows of this frame (or
    of earlier ones), so one frame carries both and the origin never sees the DONE without
    the results."""
    obj = unpack(body, limit)  # every reply passes here: explicit loops, not _rows
    if (type(obj) is list and len(obj) == 4 and type(obj[0]) is int and _result_rows(obj[1])
            and _result_rows(obj[2]) and _ints(obj[3])):
        return obj[0], obj[1], obj[2], obj[3]
    raise ProtocolError("malformed RESULT frame")


def unpack_lost(body: bytes, limit: int) -> list[list[Any]]:
    """[[request, error, status], ...] (status: the answer its client gets, 500, 504, ...)"""
    return _rows(unpack(body, limit), (int, str, int), "LOST")


def unpack_parts(body: bytes, limit: int) -> list[list[Any]]:
    """[[request, seq, head, data], ...]: parts of replies sent before the replies
    themselves (ctx.stream). seq counts a message's parts from 0 in each run of it; head
    (the reply's status and headers) comes with part 0 only, else nil."""
    obj = unpack(body, limit)
    if type(obj) is list:
        for row in obj:
            if (type(row) is not list or len(row) != 4 or type(row[0]) is not int
                    or type(row[1]) is not int or type(row[3]) is not bytes
                    or (row[2] is not None and type(row[2]) is not dict)):
                break
        else:
            return obj
    raise ProtocolError("malformed PART frame")


# ---------------------------------------------------------------- orders and reports
# What the supervisor orders a process (CONTROL frames) and what a process reports to it
# (STATUS frames), each a typed record declared once, here. On the wire a record is a map
# {"op": its name, its fields...}; a process or the supervisor matches on the record's
# class, never on a key of a map. (The figures of a Stats report are a map on purpose: the
# status API serves them as JSON, and each process kind has its own.)


class Order:
    """An order from the supervisor to a process."""

    __slots__ = ()
    OP = ""


class Report:
    """A report from a process to the supervisor."""

    __slots__ = ()
    OP = ""


@dataclass(frozen=True, slots=True)
class Stop(Order):
    """End now (the run is over, or was stopped)."""

    OP = "stop"


@dataclass(frozen=True, slots=True)
class Retire(Order):
    """The pool shrinks: take no new work, finish what is held, exit."""

    OP = "retire"


@dataclass(frozen=True, slots=True)
class Finish(Order):
    """The pipeline's input is all through: sinks send their finish() values."""

    OP = "finish"


@dataclass(frozen=True, slots=True)
class StopIntake(Order):
    """A drain begins: a front door (source, acceptor, mp master) takes no more input."""

    OP = "stop_intake"


@dataclass(frozen=True, slots=True)
class Flush(Order):
    """The origin writes the sinks' finish() values and closes its output."""

    OP = "flush"


@dataclass(frozen=True, slots=True)
class PeerDown(Order):
    """Process `name` (pid `pid`) is gone: what it held goes out again. `timed_out`: the
    ids its watchdog blamed (they fail, with `why`), of messages from `sender`."""

    name: str
    pid: int
    why: str = ""
    sender: str = ""
    timed_out: list[int] | None = None
    OP = "peer_down"


@dataclass(frozen=True, slots=True)
class Probe(Order):
    """Say what you hold (the quiet check at the end of a run, in numbered waves)."""

    wave: int
    OP = "probe"


@dataclass(frozen=True, slots=True)
class Beat(Order):
    """The supervisor is there (sent every second to a worker that joined from elsewhere:
    with no word from its supervisor for a few seconds, it exits)."""

    OP = "beat"


@dataclass(frozen=True, slots=True)
class Peers(Order):
    """Where processes of the run are now ({name: endpoint}): a process connects to those
    it sends to (a tcp run's inboxes bind at a port chosen then, see Ready.address)."""

    addresses: dict[str, Any]
    OP = "peers"


@dataclass(frozen=True, slots=True)
class Ready(Report):
    """The process is up (its sockets bound, its setup done); `address`: where its inbox is
    bound (what its peers connect to)."""

    pid: int
    address: str = ""
    OP = "ready"


@dataclass(frozen=True, slots=True)
class Failed(Report):
    """The source's iterable raised: the run stops, and says why."""

    error: str
    OP = "failed"


@dataclass(frozen=True, slots=True)
class Exhausted(Report):
    """The source has read every item (`read` of them)."""

    read: int
    OP = "exhausted"


@dataclass(frozen=True, slots=True)
class ProbeReply(Report):
    """The answer to Probe(wave): messages held, messages sent so far, and the front
    door's own figures (`extra`: exhausted, read)."""

    wave: int
    pending: int
    sent: int
    extra: dict[str, Any] = field(default_factory=dict)
    OP = "probe"


@dataclass(frozen=True, slots=True)
class DeadLetters(Report):
    """Dead-letter records (seda.runtime.deadletter.record) for the run's file: sent by a
    worker that joined from another host, whose own disk is not where the run keeps them."""

    records: list[Any]
    OP = "dead_letters"


@dataclass(frozen=True, slots=True)
class Stats(Report):
    """A process's figures, every ~0.5 s (the live view, the summary, the end of a run)."""

    figures: dict[str, Any]
    OP = "stats"


ORDERS: dict[str, type[Order]] = {c.OP: c for c in (Stop, Retire, Finish, StopIntake, Flush,
                                                    PeerDown, Probe, Peers, Beat)}
REPORTS: dict[str, type[Report]] = {c.OP: c for c in (Ready, Failed, Exhausted, ProbeReply,
                                                      Stats, DeadLetters)}
# the fields of the records whose maps are open (their extra keys are theirs)
_OPEN: dict[type, str] = {ProbeReply: "extra", Stats: "figures"}


def pack_record(record: Order | Report, name: str = "") -> bytes:
    """An order or a report as its frame body (`name`: the sender, on reports)."""
    out: dict[str, Any] = {"op": record.OP}
    if name:
        out["name"] = name
    opened = _OPEN.get(type(record))
    for f in fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if f.name == opened:
            out.update(value)
        elif value is not None:
            out[f.name] = value
    return pack(out)


# what each declared field type may hold on the wire
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: type(v) is str,
    "int": lambda v: type(v) is int,
    "list[int] | None": lambda v: v is None or _ints(v),
    "dict[str, Any]": lambda v: type(v) is dict,
    "list[Any]": lambda v: type(v) is list,
}


Rec = TypeVar("Rec", Order, Report)


def _record(obj: Any, kinds: dict[str, type[Rec]], what: str) -> Rec:
    if type(obj) is not dict or type(obj.get("op")) is not str or obj["op"] not in kinds:
        raise ProtocolError(f"malformed {what} frame")
    cls = kinds[obj["op"]]
    opened = _OPEN.get(cls)
    values: dict[str, Any] = {}
    declared = {f.name for f in fields(cls)} | {"op", "name"}  # type: ignore[arg-type]
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name == opened:
            values[f.name] = {k: v for k, v in obj.items() if k not in declared}
        elif f.name in obj:
            if not _CHECKS[str(f.type)](obj[f.name]):
                raise ProtocolError(f"malformed {what} frame")
            values[f.name] = obj[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ProtocolError(f"malformed {what} frame")
    return cls(**values)


def unpack_order(body: bytes, limit: int) -> Order:
    """A CONTROL body as its order (ProtocolError: not one of ORDERS, or a field of the
    wrong type)."""
    return _record(unpack(body, limit), ORDERS, "CONTROL")


def unpack_report(body: bytes, limit: int) -> tuple[str, Report]:
    """A STATUS body as (its sender's name, its report)."""
    obj = unpack(body, limit)
    name = obj.get("name", "") if type(obj) is dict else ""
    return (name if type(name) is str else ""), _record(obj, REPORTS, "STATUS")


def packable(payload: Any, limit: int) -> str | None:
    """None if msgpack can carry `payload` in a frame, else why not (checked where handlers
    emit): a type msgpack has no form for, or a size over `limit` bytes."""
    try:
        size = len(msgpack.packb(payload, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if size > limit:
        return f"{size} bytes, over settings.max_message_bytes ({limit})"
    return None
