"""HTTP/1.1, sans-IO, parsed with httptools (llhttp, the parser Node.js uses).

Request payload given to the entry stage:
    {"method": "GET", "path": "/x", "query": "a=1", "headers": {"host": "..."}, "body": b"",
     "keep_alive": True, "client": ["127.0.0.1", 50412]}
(header names lower-cased; repeated headers joined with ", "; `client` is the peer's
[host, port], None where the socket has none -- a Unix socket). Reply shorthands:
    {"status": 201, "headers": {...}, "body": str|bytes}  or  {"json": value}
    {"file": "/path"}    streamed with sendfile by the acceptor
    "text"  -> 200 text/plain     b"..." -> 200 application/octet-stream
    None    -> 204                 anything else -> 200 application/json
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

import httptools

from seda.engine.config import Limits
from seda.errors import ProtocolError

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_PREFIXES: dict[tuple[Any, ...], bytes] = {}  # (status, headers, close) -> head prefix
_PREFIXES_MAX = 512
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH",
                                     "OPTIONS")}


class HttpCodec:
    name = "http"

    def __init__(self, limits: Limits) -> None:
        self.max_header = limits.max_header_bytes
        self.max_body = limits.max_request_bytes
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[dict[str, Any]] = []
        self.client: list[Any] | None = None  # [host, port] of the peer (set by the runtime)
        self.on_message_begin()  # the per-request fields, at their defaults
        self.started = False

    # ---------------------------------------------------------- httptools callbacks
    # (called once per request or per header: kept flat, no helper calls)
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.header_bytes = self.body_bytes = 0
        self.method = ""
        self.keep_alive = self.started = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.max_header:
            raise ProtocolError("request headers too large", 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header:
            raise ProtocolError("request headers too large", 431)
        key = name.lower().decode("latin-1")
        text = value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        raw = self.parser.get_method()
        self.method = _METHODS.get(raw) or raw.decode()
        self.keep_alive = self.parser.should_keep_alive()
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise ProtocolError("request body too large", 413)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body:
            raise ProtocolError("request body too large", 413)
        self.body.append(body)

    def on_message_complete(self) -> None:
        url = self.url
        if url[:1] == b"/":  # origin form, nearly every request: split it here
            target, _, query = url.partition(b"#")[0].partition(b"?")
        else:  # absolute form (a proxy request), or garbage
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise ProtocolError("invalid request target") from None
            target, query = parsed.path or b"/", parsed.query or b""
        body = self.body
        self.done.append({"method": self.method, "path": target.decode("latin-1"),
                          "query": query.decode("latin-1"), "headers": self.headers,
                          "body": (body[0] if len(body) == 1 else b"".join(body)) if body
                          else b"", "keep_alive": self.keep_alive, "client": self.client})
        self.started = False

    # ---------------------------------------------------------- codec interface
    def feed(self, data: bytes) -> list[Any]:
        try:
            self._feed(data)
        except ProtocolError as exc:
            exc.requests, self.done = self.done, []
            raise
        out, self.done = self.done, []
        return out

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except ProtocolError:
            raise
        except httptools.HttpParserUpgrade:
            raise ProtocolError("protocol upgrades are not supported") from None
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolError):  # raised inside a callback
                raise cause from None
            raise ProtocolError(f"malformed request: {exc}") from None

    def partial(self) -> bool:
        return self.started

    def held(self) -> int:
        """The head and body bytes of the request being read (httptools itself keeps no
        more than a header's worth)."""
        return self.header_bytes + self.body_bytes if self.started else 0

    def encode(self, reply: Any, request: Any) -> tuple[bytes, bool]:
        close = not request.get("keep_alive", True)
        parts = _remembered(reply, close)
        if parts is None:
            status, headers, body = reply_parts(reply)
            parts = _prefix(status, headers, close), body
        prefix, body = parts
        return b"%scontent-length: %d\r\n\r\n%s" % (
            prefix, len(body), b"" if request.get("method") == "HEAD" else body), close

    def file_head(self, reply: dict[str, Any], request: Any, size: int
                  ) -> tuple[bytes, bool, bool]:
        """The head of a `{"file": path}` reply whose file has `size` bytes: (head, close,
        whether the file follows -- not for HEAD, nor a 204 or 304, which have no body).
        ValueError: a status or header that cannot be sent (see reply_parts)."""
        status, headers = status_and_headers(reply)
        headers.setdefault("content-type", "application/octet-stream")
        close = not request.get("keep_alive", True)
        if status in _NO_BODY:  # (the file's bytes would be read as the next response)
            return head(status, headers, 0, close), close, False
        return head(status, headers, size, close), close, request.get("method") != "HEAD"

    # ---------------------------------------------------------- streamed replies
    # A stage that sends its reply in parts (ctx.stream): the head once, with chunked
    # transfer coding, then a chunk per part, then the last part and the end chunk.
    def stream_head(self, reply: dict[str, Any], request: Any) -> tuple[bytes, bool]:
        """(head, close) of a streamed reply {"status", "headers"}; ValueError as
        reply_parts (and for a status that has no body: 204, 304)."""
        status, headers = status_and_headers(reply)
        if status in _NO_BODY:
            raise ValueError(f"a {status} reply has no body to stream")
        headers.pop("transfer-encoding", None)
        headers.setdefault("content-type", "text/plain; charset=utf-8")
        close = not request.get("keep_alive", True)
        return _prefix(status, headers, close) + b"transfer-encoding: chunked\r\n\r\n", close

    def stream_part(self, data: bytes, request: Any) -> bytes:
        """One part as a chunk (none for an empty part, nor in answer to HEAD)."""
        if not data or request.get("method") == "HEAD":
            return b""
        return b"%x\r\n%s\r\n" % (len(data), data)

    def stream_end(self, last: Any, request: Any) -> bytes:
        """The last part (the handler's value: None, text or bytes) and the end chunk.
        ValueError: a value of another kind."""
        end = self.stream_part(_body(last), request)
        return end if request.get("method") == "HEAD" else end + b"0\r\n\r\n"

    def error_reply(self, exc: ProtocolError) -> bytes:
        status = exc.status_hint
        body = f"{status} {_REASONS.get(status, 'Error')}: {exc}\n".encode()
        extra = {"retry-after": str(exc.retry_after)} if status == 503 else {}
        # a fault of the request's bytes ends the connection; the server's own (500, 503,
        # 504) leave it usable
        return head(status, {"content-type": "text/plain; charset=utf-8", **extra}, len(body),
                    close=status < 500) + body


def reply_parts(reply: Any) -> tuple[int, dict[str, Any], bytes]:
    """A stage's reply -> (status, headers, body bytes). See the module docstring. A reply
    that cannot be sent as it is (a status that is not an int from 200 to 599, headers that
    are not a mapping of names to values, a header that would break the head: CR, LF or NUL,
    a body that is not text or bytes) raises ValueError: the caller answers 500."""
    if reply is None:
        return 204, {}, b""
    if isinstance(reply, str):
        return 200, {"content-type": "text/plain; charset=utf-8"}, reply.encode()
    if isinstance(reply, bytes):
        return 200, {"content-type": "application/octet-stream"}, reply
    if isinstance(reply, dict) and ("status" in reply or "body" in reply or "json" in reply):
        status, headers = status_and_headers(reply)
        if "json" in reply:
            body = json.dumps(reply["json"]).encode()
            headers.setdefault("content-type", "application/json")
        else:
            body = _body(reply.get("body"))
            headers.setdefault("content-type", "text/plain; charset=utf-8")
        if status in _NO_BODY:  # a body there would be read as the next response's start
            body = b""
        return status, headers, body
    return 200, {"content-type": "application/json"}, json.dumps(reply, default=str).encode()


_NO_BODY = frozenset((204, 304))
# a header name is an RFC 9110 token; a value may not end the line or the head early
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BREAKS = re.compile(r"[\r\n\x00]")


def status_and_headers(reply: dict[Any, Any]) -> tuple[int, dict[str, Any]]:
    """The status and headers of a dict reply (`file` replies too), checked; ValueError
    says what is wrong. A header's value may be a list: one line each (set-cookie)."""
    status = reply.get("status", 200)
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError(f"expected an int status from 200 to 599, got {status!r:.40}")
    raw = reply.get("headers")
    if raw is None:
        return status, {}
    if not isinstance(raw, dict):
        raise ValueError(f"expected a mapping of headers, got {type(raw).__name__}")
    headers: dict[str, Any] = {}
    for key, value in raw.items():
        if type(key) is not str or not _TOKEN.fullmatch(key):
            raise ValueError(f"expected a header name (a token), got {key!r:.40}")
        if type(value) is list:
            headers[key.lower()] = [_header_value(key, v) for v in value]
        else:
            headers[key.lower()] = _header_value(key, value)
    return status, headers


def _header_value(key: str, value: Any) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    if _BREAKS.search(text):
        raise ValueError(f"header '{key}' holds CR, LF or NUL (response splitting)")
    return text


def _body(raw: Any) -> bytes:
    if isinstance(raw, str):
        return raw.encode()
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    if raw is None:
        return b""
    raise ValueError(f"expected text or bytes for 'body', got {type(raw).__name__}")


def _remembered(reply: Any, close: bool) -> tuple[bytes, bytes] | None:
    """(head prefix, body) of a reply of the common shape {"status", "headers", "body"}
    (str or bytes body): its head, but for the length, is the same for every reply with the
    same status, headers and close, so it is made once. None: another shape, the long way."""
    if type(reply) is not dict or "json" in reply or "file" in reply or not (
            "status" in reply or "body" in reply):
        return None
    raw = reply.get("body", b"")
    body = raw.encode() if type(raw) is str else raw if type(raw) is bytes else None
    if body is None:
        return None
    headers, status = reply.get("headers"), reply.get("status", 200)
    if (headers is not None and type(headers) is not dict) or type(status) is not int or \
            status in _NO_BODY:  # (200.0 == 200: it would find 200's head)
        return None
    key = (status, tuple(headers.items()) if headers else (), close)
    try:
        prefix = _PREFIXES.get(key)
    except TypeError:  # an unhashable header value
        return None
    if prefix is None:
        status, normal, _ = reply_parts({**reply, "body": b""})
        prefix = _prefix(status, normal, close)
        if status == key[0] and type(key[0]) is int and all(
                type(k) is str and type(v) is str for k, v in key[1]):
            # only plain ones are remembered (1 == True would share an entry), and not a
            # bad status (answered 500)
            if len(_PREFIXES) >= _PREFIXES_MAX:
                _PREFIXES.clear()
            _PREFIXES[key] = prefix
    return prefix, body


def head(status: int, headers: dict[str, Any], length: int, close: bool) -> bytes:
    return _prefix(status, headers, close) + b"content-length: %d\r\n\r\n" % length


def _prefix(status: int, headers: dict[str, Any], close: bool) -> bytes:
    """A reply's head up to its content-length line (which the caller adds)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    for k, v in headers.items():
        if k not in ("content-length", "connection"):
            lines += [f"{k}: {x}" for x in v] if type(v) is list else [f"{k}: {v}"]
    if close:
        lines.append("connection: close")
    lines.append("")
    return "\r\n".join(lines).encode("latin-1")
