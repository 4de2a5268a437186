"""RESP (the Redis protocol), sans-IO, so redis-cli and redis-benchmark can drive a graph.

Requests are arrays of bulk strings (or inline commands); the payload given to the entry
stage is a list of str (bytes where not UTF-8). Replies: {"ok": "OK"} -> +OK,
{"error": "msg"} -> -ERR msg, int -> :n, None -> null bulk, str/bytes -> bulk string,
list -> array.
"""

from __future__ import annotations

from typing import Any

from seda.codec import Buffered
from seda.errors import ProtocolError

MAX_ARGS = 1 << 16


def _arg(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


class RespCodec(Buffered):
    name = "resp"

    def parse(self, out: list[Any]) -> None:
        while self.buffer:
            parsed = self._one()
            if parsed is None:
                break
            command, used = parsed
            del self.buffer[:used]
            if command:
                out.append(command)
        if len(self.buffer) > self.limit:
            raise ProtocolError(f"request over {self.limit} bytes", 413)

    def _line(self, start: int) -> tuple[bytes, int] | None:
        end = self.buffer.find(b"\r\n", start)
        if end < 0:
            if len(self.buffer) - start > 64 * 1024:
                raise ProtocolError("line too long", 431)
            return None
        return bytes(self.buffer[start:end]), end + 2

    def _int(self, raw: bytes, what: str) -> int:
        try:
            return int(raw)
        except ValueError:
            raise ProtocolError(f"expected a number for {what}, got {raw[:20]!r}") from None

    def _one(self) -> tuple[list[Any], int] | None:
        if self.buffer[:1] != b"*":  # inline command: words on a line
            line = self._line(0)
            if line is None:
                return None
            return [_arg(w) for w in line[0].split()], line[1]
        head = self._line(0)
        if head is None:
            return None
        count, pos = self._int(head[0][1:], "array length"), head[1]
        if not 0 <= count <= MAX_ARGS:
            raise ProtocolError(f"array of {count} items is not accepted")
        args: list[Any] = []
        for _ in range(count):
            line = self._line(pos)
            if line is None:
                return None
            if line[0][:1] != b"$":
                raise ProtocolError(f"expected a bulk string, got {line[0][:20]!r}")
            size, pos = self._int(line[0][1:], "bulk length"), line[1]
            if not 0 <= size <= self.limit:
                raise ProtocolError(f"bulk string of {size} bytes is not accepted", 413)
            if len(self.buffer) < pos + size + 2:
                return None
            if self.buffer[pos + size:pos + size + 2] != b"\r\n":
                raise ProtocolError("bulk string not followed by CRLF")
            args.append(_arg(bytes(self.buffer[pos:pos + size])))
            pos += size + 2
        return args, pos

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
        text = _one_line(value["error"])
        return f"-{text if text[:4].isupper() else 'ERR ' + text}\r\n".encode()
    if isinstance(value, (list, tuple)):
        return f"*{len(value)}\r\n".encode() + b"".join(encode_value(v) for v in value)
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)
