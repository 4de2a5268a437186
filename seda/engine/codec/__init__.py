"""Protocol codecs, sans-IO: bytes in -> requests out; replies in -> bytes out.

No sockets here. The acceptor owns one codec per connection and calls:
  feed(data) -> list of request payloads (raises ProtocolError: answer `error_reply`, close)
  encode(reply, request) -> (bytes to write, close after writing?)
  error_reply(exc) -> bytes for a protocol error, an overload (503) or a timeout (504)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from seda.engine.config import Limits
from seda.errors import ProtocolError


class Codec(Protocol):
    name: str

    def feed(self, data: bytes) -> list[Any]: ...

    def encode(self, reply: Any, request: Any) -> tuple[bytes, bool]: ...

    def error_reply(self, exc: ProtocolError) -> bytes: ...

    def partial(self) -> bool:
        """True while a request has started arriving but is not complete (header timeout)."""
        ...

    def held(self) -> int:
        """Bytes of a request still arriving that the codec holds (bounded by its limits)."""
        ...


class Buffered:
    """Base of the byte-buffer codecs (line, length, resp): one `feed` that keeps the requests
    complete before a fault (so they are still answered), one `partial`."""

    def __init__(self, limits: Limits) -> None:
        self.limit = limits.max_request_bytes
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        out: list[Any] = []
        try:
            self.buffer += data
            self.parse(out)
        except ProtocolError as exc:
            exc.requests = out
            raise
        return out

    def parse(self, out: list[Any]) -> None:
        """Move every complete request from the buffer to `out`."""
        raise NotImplementedError

    def partial(self) -> bool:
        return bool(self.buffer)

    def held(self) -> int:
        return len(self.buffer)


BAD_REPLY = ProtocolError("the handler's reply could not be sent", 500)


def encode_reply(codec: Codec, reply: Any, request: Any) -> tuple[bytes, bool, str]:
    """`codec.encode`, where a reply the codec cannot write is the stage's fault: a 500 (the
    connection stays usable), and the third value says why, for the log ("" when fine)."""
    try:
        out, close = codec.encode(reply, request)
        return out, close, ""
    except Exception as exc:  # any shape a handler can return: the fault is its own
        return codec.error_reply(BAD_REPLY), False, f"{type(exc).__name__}: {exc}"[:300]


def encode_streamed(codec: Any, head: dict[str, Any], parts: list[bytes], last: Any,
                    request: Any) -> tuple[bytes, bool, str]:
    """A streamed reply (ctx.stream) written whole, where parts cannot go out one by one
    (mp): its head, its parts and its last part, as encode_reply answers."""
    try:
        out, close = codec.stream_head(head, request)
        return b"".join([out, *(codec.stream_part(p, request) for p in parts),
                         codec.stream_end(last, request)]), close, ""
    except Exception as exc:
        return codec.error_reply(BAD_REPLY), False, f"{type(exc).__name__}: {exc}"[:300]


def make_codec(protocol: str, limits: Limits) -> Codec:
    if protocol == "http":
        from seda.engine.codec.http import HttpCodec

        return HttpCodec(limits)
    if protocol == "resp":
        from seda.engine.codec.resp import RespCodec

        return RespCodec(limits)
    from seda.engine.codec.simple import LengthCodec, LineCodec

    return LineCodec(limits) if protocol == "line" else LengthCodec(limits)


# HTTP methods that RFC 9110 makes idempotent, and RESP commands that only read: a request of
# these may be run twice (again after a failure) without its client seeing a difference
IDEMPOTENT_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
READ_COMMANDS = frozenset((
    "GET", "MGET", "EXISTS", "STRLEN", "GETRANGE", "TTL", "PTTL", "TYPE", "KEYS", "SCAN",
    "DBSIZE", "PING", "ECHO", "TIME", "HGET", "HMGET", "HGETALL", "HKEYS", "HVALS", "HLEN",
    "HEXISTS", "LRANGE", "LLEN", "LINDEX", "SMEMBERS", "SISMEMBER", "SCARD", "ZRANGE",
    "ZSCORE", "ZCARD", "ZRANK"))


def _http_repeatable(request: Any) -> bool:
    return request["method"] in IDEMPOTENT_METHODS


def _resp_repeatable(request: Any) -> bool:
    name = request[0] if request else None
    return type(name) is str and name.upper() in READ_COMMANDS


def repeatable(protocol: str) -> Callable[[Any], bool]:
    """Whether a request of `protocol` may be run twice: an idempotent HTTP method, a RESP
    command that only reads. A line or length request: nothing says, so no."""
    if protocol == "http":
        return _http_repeatable
    if protocol == "resp":
        return _resp_repeatable
    return lambda request: False
