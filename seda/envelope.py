"""Envelopes and wire frames between seda processes: msgpack only, size-limited, no IO here.

An envelope is a plain list on the hot path (cheap to build, pack and index):
    [id, origin, attempt, deadline, payload, request, born]
`request` is the id the origin gave the work this message descends from (the acceptor's
request, the source's item): replies find their client by it. `born` is when the message was
made (wall clock, ns; one clock for every process of the machine), on one message in eight
(chosen by id, see SAMPLE; 0 on the others): the stage that runs it counts the time since as
the message's queue wait. A sample, because timing every message cost ~5% of a fast chain.
Every frame on a mailbox is [sender routing id, kind (1 byte), body (msgpack)].
"""

from __future__ import annotations

from typing import Any

import msgpack

from seda.errors import ProtocolError

ID, ORIGIN, ATTEMPT, DEADLINE, PAYLOAD, REQUEST, BORN, FINAL = range(8)  # FINAL: a sink's
# finish() value names its stage there (only on the way to the origin)
Envelope = list[Any]

# frame kinds
DATA = b"D"      # body: [stage, [envelope, ...]]            sender -> worker
ACK = b"A"       # body: [[received ids], [done ids]]         worker -> sender
FAIL = b"F"      # body: [[id, error, traceback], ...]        worker -> sender (handler raised)
CREDIT = b"C"    # body: window (int, absolute)               worker -> sender
HELLO = b"H"     # body: nil                                  sender -> worker
RESULT = b"R"    # body: [[id, payload, request(, stage)]]   any -> origin (reply / result)
LOST = b"L"      # body: [[request, error], ...]              any -> origin (dead-lettered)
CONTROL = b"X"   # body: {"op": ...}                          supervisor -> process
STATUS = b"S"    # body: {"op": ...}                          process -> supervisor

SAMPLE = 7  # a message whose id & SAMPLE == 0 carries its birth time (one in eight)
_MASK = (1 << 63) - 1
_MIX = 0x9E3779B97F4A7C15


def child_id(parent: int, index: int) -> int:
    """Deterministic id of the index-th output of a message: a re-run of the same message
    yields the same ids, which is what lets sinks and acceptors spot duplicates."""
    return ((parent * 1_000_003) ^ ((index + 1) * _MIX)) & _MASK


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(body: bytes, limit: int) -> Any:
    """Decode one frame body; anything oversized or malformed is a ProtocolError."""
    if len(body) > limit:
        raise ProtocolError(f"frame of {len(body)} bytes is over the {limit}-byte limit")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from None


def unpack_data(body: bytes, limit: int) -> tuple[str, list[Envelope]]:
    """Decode a DATA body into (stage, envelopes), checking its shape."""
    obj = unpack(body, limit)
    if (not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[0], str)
            or not isinstance(obj[1], list)):
        raise ProtocolError("malformed DATA frame: expected [stage, [envelope, ...]]")
    for env in obj[1]:
        if (not isinstance(env, list) or len(env) != 7 or not isinstance(env[ID], int)
                or not isinstance(env[ATTEMPT], int) or not isinstance(env[BORN], int)):
            raise ProtocolError("malformed envelope: expected [id, origin, attempt, deadline, "
                                "payload, request, born]")
    return obj[0], obj[1]


def packable(payload: Any) -> str | None:
    """None if msgpack can carry `payload`, else why not (checked where handlers emit)."""
    try:
        msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
