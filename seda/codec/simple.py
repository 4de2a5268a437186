"""Two framing codecs: `line` (one request per newline-terminated line) and `length`
(4-byte big-endian length prefix). Sans-IO; payloads are text (line) or bytes (length)."""

from __future__ import annotations

import json
from typing import Any

from seda.codec import Buffered
from seda.errors import ProtocolError


def _text(reply: Any) -> bytes:
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):
        return reply.encode()
    if isinstance(reply, dict) and "error" in reply:
        return f"ERROR {reply['error']}".encode()
    return json.dumps(reply, default=str).encode()


class LineCodec(Buffered):
    """Requests are lines (UTF-8, without the newline); replies are written as one line."""

    name = "line"

    def parse(self, out: list[Any]) -> None:
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end]).rstrip(b"\r")
            del self.buffer[:end + 1]
            if len(line) > self.limit:
                raise ProtocolError(f"line of {len(line)} bytes is over the limit", 413)
            try:
                out.append(line.decode())
            except UnicodeDecodeError:
                raise ProtocolError("line is not UTF-8", 400) from None
        if len(self.buffer) > self.limit:
            raise ProtocolError(f"line over {self.limit} bytes", 413)

    def encode(self, reply: Any, request: Any) -> tuple[bytes, bool]:
        return _text(reply).replace(b"\n", b" ") + b"\n", False

    def error_reply(self, exc: ProtocolError) -> bytes:
        return f"ERROR {exc.status_hint} {exc}\n".encode()


class LengthCodec(Buffered):
    """Frames are a 4-byte big-endian length, then that many bytes (the payload)."""

    name = "length"

    def parse(self, out: list[Any]) -> None:
        while len(self.buffer) >= 4:
            size = int.from_bytes(self.buffer[:4], "big")
            if size > self.limit:
                raise ProtocolError(f"frame of {size} bytes is over the limit", 413)
            if len(self.buffer) < 4 + size:
                break
            out.append(bytes(self.buffer[4:4 + size]))
            del self.buffer[:4 + size]

    def encode(self, reply: Any, request: Any) -> tuple[bytes, bool]:
        body = _text(reply)
        return len(body).to_bytes(4, "big") + body, False

    def error_reply(self, exc: ProtocolError) -> bytes:
        body = f"ERROR {exc.status_hint} {exc}".encode()
        return len(body).to_bytes(4, "big") + body
