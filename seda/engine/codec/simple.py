"""Two framing codecs: `line` (one request per newline-terminated line) and `length`
(4-byte big-endian length prefix). Sans-IO; payloads are text (line) or bytes (length)."""

from __future__ import annotations

import json
from typing import Any

from seda.engine.codec import Buffered
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
    scanned = 0  # the buffer holds no newline before this offset

    def parse(self, out: list[Any]) -> None:
        """Every complete line to `out`. A line still arriving is not searched again from
        its start on every feed (`scanned`), and the buffer is trimmed once per feed: a line
        trickled in pieces, or many lines in one read, cost time in proportion to their
        size."""
        buf, start = self.buffer, 0
        try:
            while True:
                end = buf.find(b"\n", max(start, self.scanned))
                if end < 0:
                    self.scanned = len(buf)
                    break
                line = bytes(buf[start:end]).rstrip(b"\r")
                start = end + 1
                if len(line) > self.limit:
                    raise ProtocolError(f"line of {len(line)} bytes is over the limit", 413)
                try:
                    out.append(line.decode())
                except UnicodeDecodeError:
                    raise ProtocolError("line is not UTF-8") from None
        finally:
            if start:
                del buf[:start]
                self.scanned = max(0, self.scanned - start)
        if len(buf) > self.limit:
            raise ProtocolError(f"line over {self.limit} bytes", 413)

    def encode(self, reply: Any, request: Any) -> tuple[bytes, bool]:
        return _text(reply).replace(b"\n", b" ") + b"\n", False

    def error_reply(self, exc: ProtocolError) -> bytes:
        return f"ERROR {exc.status_hint} {exc}\n".encode()


class LengthCodec(Buffered):
    """Frames are a 4-byte big-endian length, then that many bytes (the payload)."""

    name = "length"

    def parse(self, out: list[Any]) -> None:
        buf, start = self.buffer, 0  # trimmed once per feed, not once per frame
        try:
            while len(buf) - start >= 4:
                size = int.from_bytes(buf[start:start + 4], "big")
                if size > self.limit:
                    raise ProtocolError(f"frame of {size} bytes is over the limit", 413)
                if len(buf) - start < 4 + size:
                    break
                out.append(bytes(buf[start + 4:start + 4 + size]))
                start += 4 + size
        finally:
            del buf[:start]

    def encode(self, reply: Any, request: Any) -> tuple[bytes, bool]:
        body = _text(reply)
        return len(body).to_bytes(4, "big") + body, False

    def error_reply(self, exc: ProtocolError) -> bytes:
        body = f"ERROR {exc.status_hint} {exc}".encode()
        return len(body).to_bytes(4, "big") + body
