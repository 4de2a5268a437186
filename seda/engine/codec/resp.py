"""RESP (the Redis protocol), sans-IO, so redis-cli and redis-benchmark can drive a graph.

Requests are arrays of bulk strings (or inline commands); the payload given to the entry
stage is a list of str (bytes where not UTF-8). Replies: {"ok": "OK"} -> +OK,
{"error": "msg"} -> -ERR msg (an error whose first word is upper case, such as
"WRONGTYPE ...", keeps it as its code), int -> :n, None -> null bulk, str/bytes -> bulk string,
list -> array.
"""

from __future__ import annotations

from typing import Any

from seda.engine.codec import Buffered
from seda.engine.config import Limits
from seda.errors import ProtocolError

MAX_ARGS = 1 << 16


def _arg(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


class RespCodec(Buffered):
    """Incremental: what was parsed of a command that is still arriving is kept (its
    arguments, where the next one starts, how many bytes must come before it can go on), so
    a command trickled in pieces costs time in proportion to its size, not its size
    squared; the buffer is trimmed once per feed, not once per command."""

    name = "resp"

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.pos = 0  # where parsing goes on in the buffer
        self.args: list[Any] | None = None  # the arguments of an array command so far
        self.remaining = 0  # arguments it still lacks
        self.need = 0  # bytes the buffer must hold before parsing can go on
        self.scanned = 0  # the buffer holds no CRLF from pos up to here (less one byte)

    def parse(self, out: list[Any]) -> None:
        buf = self.buffer
        try:
            if len(buf) >= self.need:
                while self._command(out):
                    pass
        finally:
            done = self.pos if self.args is None else self.start
            if done:  # drop what is parsed, once
                del buf[:done]
                self.pos -= done
                self.need = max(0, self.need - done)
                self.scanned = max(0, self.scanned - done)
                self.start -= done
        if len(buf) > self.limit:
            raise ProtocolError(f"request over {self.limit} bytes", 413)

    start = 0  # where the array command being read began

    def _command(self, out: list[Any]) -> bool:
        """Parse on from `pos`; True if a command was completed (there may be another)."""
        buf = self.buffer
        if self.args is None:
            if self.pos >= len(buf):
                return False
            line = self._line()
            if line is None:
                return False
            text, after = line
            if text[:1] != b"*":  # an inline command: words on a line
                self.pos = after
                words = [_arg(w) for w in text.split()]
                if words:
                    out.append(words)
                return True
            count = self._int(text[1:], "array length")
            if not 0 <= count <= MAX_ARGS:
                raise ProtocolError(f"array of {count} items is not accepted")
            self.start, self.pos, self.args, self.remaining = self.pos, after, [], count
        args = self.args
        while self.remaining:
            line = self._line()
            if line is None:
                return False
            text, after = line
            if text[:1] != b"$":
                raise ProtocolError(f"expected a bulk string, got {text[:20]!r}")
            size = self._int(text[1:], "bulk length")
            if not 0 <= size <= self.limit:
                raise ProtocolError(f"bulk string of {size} bytes is not accepted", 413)
            end = after + size
            if len(buf) < end + 2:
                self.need = end + 2  # nothing to do until the whole string is here
                return False
            if buf[end:end + 2] != b"\r\n":
                raise ProtocolError("bulk string not followed by CRLF")
            args.append(_arg(bytes(buf[after:end])))
            self.pos, self.remaining = end + 2, self.remaining - 1
        self.args = None
        if args:
            out.append(args)
        return True

    def _line(self) -> tuple[bytes, int] | None:
        """The line at `pos` and where the next starts, or None until its CRLF is here."""
        buf, pos = self.buffer, self.pos
        end = buf.find(b"\r\n", max(pos, self.scanned - 1))
        if end < 0:
            self.scanned = len(buf)
            if len(buf) - pos > 64 * 1024:
                raise ProtocolError("line too long", 431)
            return None
        self.scanned = 0
        return bytes(buf[pos:end]), end + 2

    def _int(self, raw: bytes, what: str) -> int:
        try:
            return int(raw)
        except ValueError:
            raise ProtocolError(f"expected a number for {what}, got {raw[:20]!r}") from None

    def encode(self, reply: Any, request: Any) -> tuple[bytes, bool]:
        return encode_value(reply), False

    def error_reply(self, exc: ProtocolError) -> bytes:
        kind = "BUSY" if exc.status_hint == 503 else "ERR"
        return f"-{kind} {_one_line(exc)}\r\n".encode()


def _one_line(value: Any) -> str:
    """Text for a simple string or an error: CR and LF would end it early."""
    return str(value).replace("\r", " ").replace("\n", " ")


def encode_value(value: Any) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bool):
        return f":{int(value)}\r\n".encode()
    if isinstance(value, int):
        return f":{value}\r\n".encode()
    if isinstance(value, dict) and "ok" in value:  # a simple string: one line, always
        return f"+{_one_line(value['ok'])}\r\n".encode()
    if isinstance(value, dict) and "error" in value:
        text = _one_line(value["error"])  # an upper-case first word is the error's code
        return f"-{text if text.partition(' ')[0].isupper() else 'ERR ' + text}\r\n".encode()
    if isinstance(value, (list, tuple)):
        return f"*{len(value)}\r\n".encode() + b"".join(encode_value(v) for v in value)
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)
