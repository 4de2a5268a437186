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

from collections.abc import Callable
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rows(obj: Any, check: Callable[[Any], bool], what: str) -> list[Any]:
    if not isinstance(obj, list) or not all(isinstance(r, list) and check(r) for r in obj):
        raise ProtocolError(f"malformed {what} frame")
    return obj


def _envelope(env: Any) -> bool:
    return (isinstance(env, list) and len(env) == 7 and _is_int(env[ID])
            and isinstance(env[ORIGIN], str) and _is_int(env[ATTEMPT])
            and isinstance(env[DEADLINE], (int, float)) and _is_int(env[REQUEST])
            and _is_int(env[BORN]))


def unpack_data(body: bytes, limit: int) -> tuple[str, list[Envelope]]:
    """Decode a DATA body into (stage, envelopes), checking its shape."""
    obj = unpack(body, limit)
    if (not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[0], str)
            or not isinstance(obj[1], list) or not all(_envelope(e) for e in obj[1])):
        raise ProtocolError("malformed DATA frame: expected [stage, [[id, origin, attempt, "
                            "deadline, payload, request, born], ...]]")
    return obj[0], obj[1]


def unpack_ack(body: bytes, limit: int) -> tuple[list[int], list[int]]:
    """[[received ids], [done ids]]"""
    obj = unpack(body, limit)
    if not (isinstance(obj, list) and len(obj) == 2
            and all(isinstance(ids, list) and all(map(_is_int, ids)) for ids in obj)):
        raise ProtocolError("malformed ACK frame")
    return obj[0], obj[1]


def unpack_credit(body: bytes, limit: int) -> tuple[int, int]:
    """[window, pid]"""
    obj = unpack(body, limit)
    if not (isinstance(obj, list) and len(obj) == 2 and all(map(_is_int, obj))
            and obj[0] >= 0):
        raise ProtocolError("malformed CREDIT frame")
    return obj[0], obj[1]


def unpack_fail(body: bytes, limit: int) -> list[list[Any]]:
    """[[id, error, traceback], ...]"""
    return _rows(unpack(body, limit), lambda r: len(r) == 3 and _is_int(r[0])
                 and isinstance(r[1], str) and isinstance(r[2], str), "FAIL")


def unpack_results(body: bytes, limit: int) -> list[list[Any]]:
    """[[id, payload, request(, stage)], ...]"""
    return _rows(unpack(body, limit), lambda r: len(r) in (3, 4) and _is_int(r[0])
                 and _is_int(r[2]) and (len(r) == 3 or isinstance(r[3], str)), "RESULT")


def unpack_lost(body: bytes, limit: int) -> list[list[Any]]:
    """[[request, error], ...]"""
    return _rows(unpack(body, limit), lambda r: len(r) == 2 and _is_int(r[0])
                 and isinstance(r[1], str), "LOST")


def unpack_control(body: bytes, limit: int) -> dict[str, Any]:
    """{"op": name, ...}"""
    obj = unpack(body, limit)
    if not (isinstance(obj, dict) and isinstance(obj.get("op"), str)):
        raise ProtocolError("malformed CONTROL frame")
    return obj


def packable(payload: Any) -> str | None:
    """None if msgpack can carry `payload`, else why not (checked where handlers emit)."""
    try:
        msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
