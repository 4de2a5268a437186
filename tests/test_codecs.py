"""Protocol codecs without sockets: exact bytes in, exact requests and bytes out."""

from __future__ import annotations

import pytest

from seda.engine.codec import encode_reply
from seda.engine.codec.http import HttpCodec, head
from seda.engine.codec.resp import RespCodec, encode_value
from seda.engine.codec.simple import LengthCodec, LineCodec
from seda.errors import ProtocolError
from seda.spec.models import Limits


def http(**limits: int) -> HttpCodec:
    return HttpCodec(Limits(**limits))  # type: ignore[arg-type]


def test_http_request_payload() -> None:
    [req] = http().feed(b"GET /items/7?x=1&y=2 HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n")
    assert req == {"method": "GET", "path": "/items/7", "query": "x=1&y=2",
                   "headers": {"host": "a", "x-two": "1, 2"}, "body": b"", "keep_alive": True,
                   "client": None}


def test_http_pipelined_and_split_requests() -> None:
    codec = http()
    first = codec.feed(b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe")
    assert [r["path"] for r in first] == ["/a"]
    assert codec.partial()
    [second] = codec.feed(b"llo")
    assert (second["method"], second["body"]) == ("POST", b"hello")
    assert not codec.partial()


def test_http_chunked_body() -> None:
    [req] = http().feed(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    assert req["body"] == b"abcdefg"


@pytest.mark.parametrize(("data", "status"), [
    (b"BREW /pot HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 100\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n80\r\n" + b"a" * 128, 413),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 600 + b"\r\n\r\n", 431),
    (b"GET /" + b"p" * 600 + b" HTTP/1.1\r\n\r\n", 431),  # the request target is head
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400),
], ids=["method", "length", "chunked", "header", "target", "upgrade"])
def test_http_faults_have_statuses(data: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        http(max_request_bytes=64, max_header_bytes=512).feed(data)
    assert caught.value.status_hint == status


def test_http_fault_keeps_the_requests_before_it() -> None:
    with pytest.raises(ProtocolError) as caught:
        http().feed(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nNOPE\r\n\r\n")
    assert [r["path"] for r in caught.value.requests] == ["/1", "/2"]


def test_http_reply_shorthands() -> None:
    codec, get = http(), {"method": "GET", "keep_alive": True}
    assert codec.encode("hi", get) == (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; "
                                       b"charset=utf-8\r\ncontent-length: 2\r\n\r\nhi", False)
    assert codec.encode(None, get)[0] == b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"
    assert codec.encode({"json": [1]}, get)[0].endswith(b"content-length: 3\r\n\r\n[1]")
    assert codec.encode(b"\x00", get)[0].startswith(b"HTTP/1.1 200 OK\r\ncontent-type: "
                                                    b"application/octet-stream")
    created = codec.encode({"status": 201, "headers": {"X-Id": "9"}, "body": "made"}, get)[0]
    assert created == (b"HTTP/1.1 201 Created\r\nx-id: 9\r\ncontent-type: text/plain; "
                       b"charset=utf-8\r\ncontent-length: 4\r\n\r\nmade")
    assert encode_reply(codec, {"status": 999}, get)[0].startswith(b"HTTP/1.1 500 ")
    assert codec.encode({"a": 1}, get)[0].endswith(b'\r\n\r\n{"a": 1}')


def test_http_remembered_heads_change_nothing() -> None:
    """Heads of {status, headers, body} replies are made once per (status, headers, close):
    the second encoding of each reply (from the cache) is the first's, byte for byte, and
    values that merely compare equal (1 and True, 200 and 200.0) never share a head."""
    get, head_ = {"method": "GET", "keep_alive": True}, {"method": "HEAD", "keep_alive": False}
    replies: list[object] = [
        {"status": 200, "headers": {"content-type": "text/plain"}, "body": "hello"},
        {"status": 200, "headers": {"content-type": "text/plain"}, "body": b"other body"},
        {"status": 404, "body": "gone"}, {"body": b""}, {"status": 201},
        {"status": 200, "headers": {"x-flag": True}, "body": "t"},
        {"status": 200, "headers": {"x-flag": 1}, "body": "t"},
        {"status": 200, "headers": {"x-flag": "1"}, "body": "t"},
        {"status": 200, "headers": {"X-Upper": "v", "Content-Length": "99"}, "body": "ab"},
        {"status": 200, "headers": {"x-list": [1]}, "body": "unhashable"},
        {"status": 200.0, "body": "float"}, {"status": 999, "body": "bad"},
    ]
    for request in (get, head_):
        first = [encode_reply(http(), r, request) for r in replies]
        again = [encode_reply(http(), r, request) for r in replies]
        assert first == again
    out = {r: http().encode({"status": 200, "headers": {"x-flag": v}, "body": "t"}, get)[0]
           for r, v in (("true", True), ("one", 1), ("text", "1"))}
    assert b"x-flag: True\r\n" in out["true"] and b"x-flag: 1\r\n" in out["one"]
    assert b"x-flag: 1\r\n" in out["text"]
    upper = http().encode(replies[8], get)[0]
    assert b"x-upper: v\r\n" in upper and upper.endswith(b"content-length: 2\r\n\r\nab")
    assert b"99" not in upper  # the stage's own content-length never reaches the client
    assert http().encode(replies[4], head_)[0].endswith(b"content-length: 0\r\n\r\n")


@pytest.mark.parametrize(("reply", "why"), [
    ({"headers": {"x-a": "1\r\nset-cookie: stolen=1"}, "body": "x"}, "CR, LF or NUL"),
    ({"headers": {"x-a": "1\nx"}, "body": "x"}, "CR, LF or NUL"),
    ({"headers": {"x-a": "a\x00b"}, "body": "x"}, "CR, LF or NUL"),
    ({"headers": {"bad name": "1"}, "body": "x"}, "header name"),
    ({"headers": {"x:y": "1"}, "body": "x"}, "header name"),
    ({"headers": {b"x": "1"}, "body": "x"}, "header name"),
    ({"headers": ["x", "1"], "body": "x"}, "mapping of headers"),
    ({"headers": {"x-a": "\u20ac"}, "body": "x"}, "latin-1"),
    ({"body": 12345}, "text or bytes"),
    ({"body": [1, 2]}, "text or bytes"),
    ({"status": "200"}, "int status"),
    ({"status": True, "body": ""}, "int status"),
    ({"status": 101, "body": ""}, "int status"),
    ({"status": 200.0, "body": "x"}, "int status"),
    ({"json": {b"k": 1}}, "keys must be"),
])
def test_http_replies_that_cannot_be_sent_are_a_500(reply: object, why: str) -> None:
    """A reply that would break the head (response splitting), or that is not what its
    shorthand takes, is answered 500 with the reason for the log -- never sent as it is."""
    for request in ({"method": "GET", "keep_alive": True}, {"method": "GET",
                                                             "keep_alive": False}):
        out, close, reason = encode_reply(http(), reply, request)
        assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), out
        assert not close and why in reason, reason
        assert b"stolen" not in out and b"12345" not in out


def test_http_no_body_where_the_status_forbids_one() -> None:
    get = {"method": "GET", "keep_alive": True}
    for reply in ({"status": 204, "body": "x"}, {"status": 304, "body": b"xyz"}):
        for _ in range(2):  # the second time from the remembered heads
            out, _close, why = encode_reply(http(), reply, get)
            assert not why and out.endswith(b"content-length: 0\r\n\r\n"), out


def test_resp_simple_strings_stay_on_one_line() -> None:
    assert encode_value({"ok": "O\r\n+INJECTED"}) == b"+O  +INJECTED\r\n"
    assert encode_value({"error": "x\r\n:1"}) == b"-ERR x  :1\r\n"


def test_http_head_and_connection_close() -> None:
    out, close = http().encode("body", {"method": "HEAD", "keep_alive": False})
    assert close
    assert out.endswith(b"\r\n\r\n") and b"\r\ncontent-length: 4\r\n" in out
    assert b"\r\nconnection: close\r\n" in out


def test_http_error_replies() -> None:
    codec = http()
    busy = codec.error_reply(ProtocolError("overloaded, try again", 503))
    assert busy.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"retry-after: 1\r\n" in busy and b"connection: close" not in busy
    assert b"connection: close" not in codec.error_reply(ProtocolError("failed", 500))
    bad = codec.error_reply(ProtocolError("malformed request", 400))
    assert b"connection: close\r\n" in bad
    assert bad.endswith(b"400 Bad Request: malformed request\n")


def test_line_codec() -> None:
    codec = LineCodec(Limits(max_request_bytes=64))
    assert codec.feed(b"one\r\ntw") == ["one"]
    assert codec.partial()
    assert codec.feed(b"o\n") == ["two"]
    assert codec.encode("a\nb", None) == (b"a b\n", False)
    assert codec.encode({"error": "no"}, None) == (b"ERROR no\n", False)
    with pytest.raises(ProtocolError) as caught:
        codec.feed(b"x" * 100)
    assert caught.value.status_hint == 413


def test_length_codec() -> None:
    codec = LengthCodec(Limits(max_request_bytes=64))
    assert codec.feed(b"\x00\x00\x00\x03abc\x00\x00") == [b"abc"]
    assert codec.feed(b"\x00\x01z") == [b"z"]
    assert codec.encode(b"ok", None) == (b"\x00\x00\x00\x02ok", False)
    with pytest.raises(ProtocolError):
        codec.feed(b"\x00\x00\x01\x00")


def test_resp_codec() -> None:
    codec = RespCodec(Limits())
    assert codec.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xff\x00\r\nPING\r\n") == [
        ["SET", "k", b"\xff\x00"], ["PING"]]
    assert codec.feed(b"*2\r\n$3\r\nGET\r\n$1") == []
    assert codec.feed(b"\r\nk\r\n") == [["GET", "k"]]
    with pytest.raises(ProtocolError):
        codec.feed(b"*1\r\n:5\r\n")


def test_resp_values() -> None:
    assert encode_value({"ok": "OK"}) == b"+OK\r\n"
    assert encode_value({"error": "unknown command"}) == b"-ERR unknown command\r\n"
    assert encode_value(7) == b":7\r\n"
    assert encode_value(None) == b"$-1\r\n"
    assert encode_value("hi") == b"$2\r\nhi\r\n"
    assert encode_value(["a", 1]) == b"*2\r\n$1\r\na\r\n:1\r\n"


# ---------------------------------------------------------------- exact bytes (mutation testing
# found what the tests above did not pin down: default types, dropped headers, reason phrases)

GET = {"method": "GET", "keep_alive": True}
GOLDEN: list[tuple[object, dict[str, object], bytes, bool]] = [
    ({"json": {"a": [1, 2]}}, GET, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
     b"content-length: 13\r\n\r\n{\"a\": [1, 2]}", False),
    ({"body": "h\u00e9"}, GET, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8"
     b"\r\ncontent-length: 3\r\n\r\nh\xc3\xa9", False),
    ({"body": b"\x00\x01"}, GET, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; "
     b"charset=utf-8\r\ncontent-length: 2\r\n\r\n\x00\x01", False),
    ({"status": 201}, GET, b"HTTP/1.1 201 Created\r\ncontent-type: text/plain; charset=utf-8"
     b"\r\ncontent-length: 0\r\n\r\n", False),
    ({"status": 200, "body": "x"}, GET, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; "
     b"charset=utf-8\r\ncontent-length: 1\r\n\r\nx", False),
    ({"status": 599, "body": "x"}, GET, b"HTTP/1.1 599 Unknown\r\ncontent-type: text/plain; "
     b"charset=utf-8\r\ncontent-length: 1\r\n\r\nx", False),
    ({"status": 200, "headers": {"X-Bin": b"\xe9", "Content-Length": "5", "Connection": "x",
                                 "x-n": 7}, "body": "ab"}, GET,
     b"HTTP/1.1 200 OK\r\nx-bin: \xe9\r\nx-n: 7\r\ncontent-type: text/plain; charset=utf-8\r\n"
     b"content-length: 2\r\n\r\nab", False),
    ({"a": 1}, GET, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 8"
     b"\r\n\r\n{\"a\": 1}", False),
    ({"body": "x"}, {"method": "GET"}, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; "
     b"charset=utf-8\r\ncontent-length: 1\r\n\r\nx", False),  # keep-alive unless it says so
    ({"body": "x"}, {"method": "GET", "keep_alive": False}, b"HTTP/1.1 200 OK\r\ncontent-type:"
     b" text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx", True),
    ({"status": 404, "headers": {"content-type": "text/html"}, "body": "<p>"}, GET,
     b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 3\r\n\r\n<p>",
     False),
    ({"status": 200, "headers": {"x-a": "1"}}, GET, b"HTTP/1.1 200 OK\r\nx-a: 1\r\n"
     b"content-type: text/plain; charset=utf-8\r\ncontent-length: 0\r\n\r\n", False),
]


@pytest.mark.parametrize(("reply", "request_", "out", "close"), GOLDEN)
def test_http_replies_byte_for_byte(reply: object, request_: dict[str, object], out: bytes,
                                    close: bool) -> None:
    for _ in range(2):  # made, then from the remembered heads
        assert encode_reply(http(), reply, request_) == (out, close, "")


def test_http_remembers_plain_heads_only_and_only_so_many() -> None:
    import seda.engine.codec.http as h

    h._PREFIXES.clear()
    http().encode({"status": 202, "headers": {"x-k": "v"}, "body": "b"}, GET)
    assert (202, (("x-k", "v"),), False) in h._PREFIXES
    http().encode({"status": 202, "headers": {"x-k": 1}, "body": "b"}, GET)
    http().encode({"status": 202, "body": b"b"}, {"method": "GET", "keep_alive": False})
    assert (202, (("x-k", 1),), False) not in h._PREFIXES  # not plain text: not shared
    assert (202, (), True) in h._PREFIXES
    for i in range(h._PREFIXES_MAX + 5):
        http().encode({"status": 200, "headers": {"x-i": str(i)}, "body": ""}, GET)
        assert len(h._PREFIXES) <= h._PREFIXES_MAX


@pytest.mark.parametrize(("status", "ok"), [(200, True), (599, True), (199, False),
                                            (600, False), (101, False)])
def test_http_reply_statuses_from_200_to_599(status: int, ok: bool) -> None:
    out, _close, why = encode_reply(http(), {"status": status, "body": ""}, GET)
    assert out.startswith(b"HTTP/1.1 %d " % status if ok else b"HTTP/1.1 500 ")
    assert (why == "") is ok


@pytest.mark.parametrize(("status", "message", "out"), [
    (503, "busy", b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8"
     b"\r\nretry-after: 7\r\ncontent-length: 30\r\n\r\n503 Service Unavailable: busy\n"),
    (500, "bad", b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; "
     b"charset=utf-8\r\ncontent-length: 31\r\n\r\n500 Internal Server Error: bad\n"),
    (599, "odd", b"HTTP/1.1 599 Unknown\r\ncontent-type: text/plain; charset=utf-8\r\n"
     b"content-length: 15\r\n\r\n599 Error: odd\n"),
    (400, "no", b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
     b"connection: close\r\ncontent-length: 20\r\n\r\n400 Bad Request: no\n"),
])
def test_http_error_replies_byte_for_byte(status: int, message: str, out: bytes) -> None:
    assert http().error_reply(ProtocolError(message, status, 7)) == out


def test_http_faults_say_what_was_wrong() -> None:
    with pytest.raises(ProtocolError, match=r"^protocol upgrades are not supported$"):
        http().feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    with pytest.raises(ProtocolError, match=r"^malformed request: ") as caught:
        http().feed(b"BREW /pot HTTP/1.1\r\n\r\n")
    assert caught.value.status_hint == 400
    codec = http()
    assert not codec.partial() and codec.held() == 0
    codec.feed(b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert codec.partial() and codec.held() > 3


def test_http_header_values_as_bytes_are_latin_1_and_bad_header_types_are_named() -> None:
    from seda.engine.codec.http import status_and_headers

    assert status_and_headers({"headers": {"X": b"caf\xe9"}}) == (200, {"x": "caf\u00e9"})
    assert status_and_headers({}) == (200, {})
    with pytest.raises(ValueError, match=r"^expected a mapping of headers, got list$"):
        status_and_headers({"headers": [1]})
    with pytest.raises(ValueError, match=r"^expected text or bytes for 'body', got int$"):
        encode_reply_raising({"body": 5})


def test_a_header_with_a_list_of_values_is_sent_once_per_value() -> None:
    """set-cookie, repeated (what an ASGI app sends as two headers of one name); each value
    is checked like any other."""
    data, _ = http().encode({"status": 200, "headers": {"Set-Cookie": ["a=1", b"b=2"]},
                             "body": "x"}, GET)
    head_text = data.split(b"\r\n\r\n")[0].decode()
    assert head_text.splitlines()[1:3] == ["set-cookie: a=1", "set-cookie: b=2"]
    with pytest.raises(ValueError, match="response splitting"):
        encode_reply_raising({"body": "", "headers": {"set-cookie": ["a=1", "b=2\r\nx: y"]}})


def encode_reply_raising(reply: object) -> None:
    http().encode(reply, GET)


# ---------------------------------------------------------------- RESP, line, length: every fault
# with its exact answer, and each limit exactly at and just past it

@pytest.mark.parametrize(("data", "message", "status"), [
    (b"*x\r\n", "expected a number for array length, got b'x'", 400),
    (b"*70000\r\n", "array of 70000 items is not accepted", 400),
    (b"*-2\r\n", "array of -2 items is not accepted", 400),
    (b"*1\r\n:5\r\n", "expected a bulk string, got b':5'", 400),
    (b"*1\r\n$x\r\n", "expected a number for bulk length, got b'x'", 400),
    (b"*1\r\n$-1\r\n", "bulk string of -1 bytes is not accepted", 413),
    (b"*1\r\n$300\r\n", "bulk string of 300 bytes is not accepted", 413),
    (b"*1\r\n$1\r\nab\r\n", "bulk string not followed by CRLF", 400),
])
def test_resp_faults(data: bytes, message: str, status: int) -> None:
    codec = RespCodec(Limits(max_request_bytes=256))
    with pytest.raises(ProtocolError) as caught:
        codec.feed(b"PING\r\n" + data)
    assert (str(caught.value), caught.value.status_hint) == (message, status)
    assert caught.value.requests == [["PING"]]  # what came before the fault is answered


def test_resp_limits_exactly() -> None:
    limit = 256
    codec = RespCodec(Limits(max_request_bytes=limit))
    assert codec.feed(b"*0\r\n*1\r\n$0\r\n\r\n") == [[""]]  # an empty array is no command
    at = b"x" * limit
    assert codec.feed(b"*1\r\n$%d\r\n%s\r\n" % (limit, at)) == [[at.decode()]]
    head = b"*1\r\n$%d\r\n" % limit
    partial = head + b"y" * (limit - len(head))  # a command still arriving, at the limit
    assert codec.feed(partial) == [] and codec.held() == limit
    with pytest.raises(ProtocolError, match=f"^request over {limit} bytes$") as caught:
        codec.feed(b"y")
    assert caught.value.status_hint == 413
    line = RespCodec(Limits())
    assert line.feed(b"P" * (64 * 1024)) == []  # an inline command of 64 KiB: waited for
    with pytest.raises(ProtocolError, match=r"^line too long$") as caught:
        line.feed(b"P")
    assert caught.value.status_hint == 431
    many = RespCodec(Limits())
    args = b"*65536\r\n" + b"$0\r\n\r\n" * 65536
    assert [len(c) for c in many.feed(args)] == [65536]  # MAX_ARGS is allowed


def test_resp_inline_commands_start_anywhere() -> None:
    codec = RespCodec(Limits())
    assert codec.feed(b"\r\nPING\r\n  \r\nGET k\r\n") == [["PING"], ["GET", "k"]]
    assert codec.feed(b"\r") == [] and codec.feed(b"\n") == []


def test_resp_replies_and_errors_exactly() -> None:
    codec = RespCodec(Limits())
    assert codec.encode({"ok": "OK"}, ["SET"]) == (b"+OK\r\n", False)
    assert codec.error_reply(ProtocolError("slow down", 503)) == b"-BUSY slow down\r\n"
    assert codec.error_reply(ProtocolError("bad\r\nthing", 400)) == b"-ERR bad  thing\r\n"
    assert codec.error_reply(ProtocolError("late", 504)) == b"-ERR late\r\n"
    assert encode_value(True) == b":1\r\n" and encode_value(False) == b":0\r\n"
    assert encode_value({"error": "WRONGTYPE no"}) == b"-WRONGTYPE no\r\n"
    assert encode_value({"error": "Wrong"}) == b"-ERR Wrong\r\n"
    assert encode_value({"x": 1}) == b"$8\r\n{'x': 1}\r\n"
    assert encode_value("error") == b"$5\r\nerror\r\n"
    assert encode_value(b"\xff") == b"$1\r\n\xff\r\n"
    assert encode_value((1, "a")) == b"*2\r\n:1\r\n$1\r\na\r\n"


def test_line_limits_and_faults_exactly() -> None:
    codec = LineCodec(Limits(max_request_bytes=64))
    assert codec.feed(b"\nab\r\n" + b"x" * 64 + b"\n") == ["", "ab", "x" * 64]
    assert codec.feed(b"y" * 64) == [] and codec.held() == 64  # still arriving, at the limit
    with pytest.raises(ProtocolError, match=r"^line over 64 bytes$") as caught:
        codec.feed(b"y")
    assert caught.value.status_hint == 413
    with pytest.raises(ProtocolError, match=r"^line of 65 bytes is over the limit$") as caught:
        LineCodec(Limits(max_request_bytes=64)).feed(b"ok\n" + b"z" * 65 + b"\n")
    assert (caught.value.status_hint, caught.value.requests) == (413, ["ok"])
    with pytest.raises(ProtocolError, match=r"^line is not UTF-8$") as caught:
        LineCodec(Limits()).feed(b"\xff\n")
    assert caught.value.status_hint == 400
    assert codec.encode({"error": "no"}, None) == (b"ERROR no\n", False)
    assert codec.encode("my error", None) == (b"my error\n", False)
    assert codec.encode({"a": b"x"}, None) == (b"{\"a\": \"b'x'\"}\n", False)
    assert codec.error_reply(ProtocolError("slow", 503)) == b"ERROR 503 slow\n"


def test_length_limits_and_faults_exactly() -> None:
    codec = LengthCodec(Limits(max_request_bytes=64))
    frames = [b"a", b"", b"x" * 64]
    data = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    assert codec.feed(data[:11]) == [b"a", b""] and codec.held() == 2
    assert codec.feed(data[11:]) == [b"x" * 64] and codec.held() == 0
    with pytest.raises(ProtocolError, match=r"^frame of 65 bytes is over the limit$") as caught:
        codec.feed(b"\x00\x00\x00\x41")
    assert caught.value.status_hint == 413
    assert codec.encode("hi", None) == (b"\x00\x00\x00\x02hi", False)
    assert codec.error_reply(ProtocolError("x", 504)) == b"\x00\x00\x00\x0bERROR 504 x"


def test_a_reply_that_cannot_be_encoded_says_why_in_one_short_line() -> None:
    out, close, why = encode_reply(http(), {"status": "x" * 1000}, GET)
    assert out.startswith(b"HTTP/1.1 500 ") and not close
    assert why.startswith("ValueError: expected an int status from 200 to 599, got ")
    assert len(why) <= 300


def test_http_request_targets_of_every_form() -> None:
    def one(data: bytes) -> dict[str, object]:
        [request] = http().feed(data)
        return {k: request[k] for k in ("method", "path", "query")}

    assert one(b"GET /a?b=1#frag HTTP/1.1\r\n\r\n") == {"method": "GET", "path": "/a",
                                                         "query": "b=1"}
    assert one(b"GET /a#frag?x HTTP/1.1\r\n\r\n") == {"method": "GET", "path": "/a",
                                                       "query": ""}
    assert one(b"GET http://host/p?q=1#f HTTP/1.1\r\n\r\n") == {"method": "GET", "path": "/p",
                                                                 "query": "q=1"}
    assert one(b"GET http://host HTTP/1.1\r\n\r\n") == {"method": "GET", "path": "/",
                                                        "query": ""}
    assert one(b"OPTIONS * HTTP/1.1\r\n\r\n") == {"method": "OPTIONS", "path": "*",
                                                  "query": ""}
    assert one(b"PROPFIND /x HTTP/1.1\r\n\r\n")["method"] == "PROPFIND"
    with pytest.raises(ProtocolError, match=r"^invalid request target$") as caught:
        http().feed(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    assert caught.value.status_hint == 400


def test_http_head_limit_exactly_and_across_pieces() -> None:
    """What counts: the request target, and each header's name and value plus 4 (': ' and
    CRLF). A head of exactly the limit passes; one byte more is a 431 -- also when the
    target or a header arrives in pieces."""
    def head(url_len: int) -> bytes:
        return b"GET /" + b"u" * (url_len - 1) + b" HTTP/1.1\r\nX: v\r\n\r\n"

    assert len(http(max_header_bytes=256).feed(head(250))) == 1  # 250 + (1 + 1 + 4)
    with pytest.raises(ProtocolError, match=r"^request headers too large$") as caught:
        http(max_header_bytes=256).feed(head(251))
    assert caught.value.status_hint == 431
    codec = http(max_header_bytes=256)
    data = head(251)
    with pytest.raises(ProtocolError, match=r"^request headers too large$"):
        for i in range(0, len(data), 10):
            codec.feed(data[i:i + 10])
    pieces = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 40)
                                              for i in range(6)) + b"\r\n"
    with pytest.raises(ProtocolError, match=r"^request headers too large$"):
        http(max_header_bytes=256).feed(pieces)  # six headers of 47: only their sum is over
    assert len(http(max_header_bytes=512).feed(pieces)) == 1


def test_http_body_limit_exactly_and_across_chunks() -> None:
    exact = b"POST /p HTTP/1.1\r\nContent-Length: 64\r\n\r\n" + b"b" * 64
    [request] = http(max_request_bytes=64).feed(exact)
    assert request["body"] == b"b" * 64
    with pytest.raises(ProtocolError, match=r"^request body too large$") as caught:
        http(max_request_bytes=64).feed(exact.replace(b": 64", b": 65") + b"b")
    assert caught.value.status_hint == 413
    chunked = (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"20\r\n" + b"c" * 32 + b"\r\n") * 1
    body = chunked + b"20\r\n" + b"d" * 32 + b"\r\n0\r\n\r\n"
    [request] = http(max_request_bytes=64).feed(body)
    assert request["body"] == b"c" * 32 + b"d" * 32  # two chunks, joined
    with pytest.raises(ProtocolError, match=r"^request body too large$"):
        http(max_request_bytes=64).feed(chunked * 1 + b"21\r\n" + b"e" * 33 + b"\r\n0\r\n\r\n")
    codec = http()
    [one] = codec.feed(b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert one["body"] == b"abc" and codec.held() == 0 and not codec.partial()


def test_http_file_heads() -> None:
    codec = http()
    assert codec.file_head({"file": "/f"}, GET, 1234) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1234"
        b"\r\n\r\n", False, True)
    assert codec.file_head({"file": "/f", "status": 206, "headers": {"Content-Type": "x/y"}},
                           {"method": "HEAD", "keep_alive": False}, 5) == (
        b"HTTP/1.1 206 Partial Content\r\ncontent-type: x/y\r\nconnection: close\r\n"
        b"content-length: 5\r\n\r\n", True, False)
    assert codec.file_head({"file": "/f"}, {"method": "GET"}, 0)[1] is False
    for status in (204, 304):  # no body: the file's bytes would start the next response
        assert codec.file_head({"file": "/f", "status": status}, GET, 1234) == (
            head(status, {"content-type": "application/octet-stream"}, 0, False), False,
            False)


@pytest.mark.parametrize(("reply", "out"), [
    ({"status": 201, "json": [1]}, b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
     b"content-length: 3\r\n\r\n[1]"),
    ({"body": "ignored", "json": 1}, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
     b"content-length: 1\r\n\r\n1"),
    ({"status": 202, "file": "/x"}, b"HTTP/1.1 202 Accepted\r\ncontent-type: text/plain; "
     b"charset=utf-8\r\ncontent-length: 0\r\n\r\n"),  # (a file reply outside the acceptor)
])
def test_http_json_wins_over_body_and_is_never_cached_as_one(reply: object, out: bytes
                                                              ) -> None:
    for _ in range(2):
        assert encode_reply(http(), reply, GET)[0] == out


# ---------------------------------------------------------------- what mutation testing found
# unguarded (see docs/testing.md)

def test_http_holds_the_head_and_the_body_so_far_of_a_request_still_arriving() -> None:
    codec = http()
    codec.feed(b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    # the head: the target (2) and the header (14 + 2 + 4); the body so far: 3
    assert codec.held() == 2 + 20 + 3
    codec.feed(b"defg")
    assert codec.held() == 2 + 20 + 7


def test_http_a_target_alone_over_the_head_limit_is_a_431() -> None:
    with pytest.raises(ProtocolError, match=r"^request headers too large$") as caught:
        http(max_header_bytes=256).feed(b"GET /" + b"u" * 300 + b" HTTP/1.1\r\n\r\n")
    assert caught.value.status_hint == 431


def test_http_a_plain_object_reply_is_json_with_what_json_lacks_as_text() -> None:
    out, close = http().encode({"raw": b"x", "n": 1}, GET)
    assert out.endswith(b'\r\n\r\n{"raw": "b\'x\'", "n": 1}') and not close


def test_a_reply_whose_encoding_fails_at_length_is_cut_to_300_characters() -> None:
    class Loud:
        def __str__(self) -> str:
            raise ValueError("x" * 1000)

    out, close, why = encode_reply(http(), {"v": Loud()}, GET)
    assert out.startswith(b"HTTP/1.1 500 ") and not close
    assert why == ("ValueError: " + "x" * 1000)[:300]


def test_resp_errors_keep_an_upper_case_first_word_as_their_code() -> None:
    assert encode_value({"error": "NOPERM not allowed"}) == b"-NOPERM not allowed\r\n"
    assert encode_value({"error": "ABCDe went wrong"}) == b"-ERR ABCDe went wrong\r\n"
    assert encode_value({"error": ""}) == b"-ERR \r\n"


def test_line_codec_keeps_trailing_spaces_and_drops_only_the_cr() -> None:
    assert LineCodec(Limits()).feed(b"a b  \r\n\tc\t\nmaX\r\n") == ["a b  ", "\tc\t", "maX"]


def test_length_codec_waits_for_a_body_that_follows_a_whole_frame() -> None:
    codec = LengthCodec(Limits(max_request_bytes=64))
    data = b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x0a" + b"012"
    assert codec.feed(data) == [b"ab"] and codec.held() == 7
    assert codec.feed(b"3456789") == [b"0123456789"] and codec.held() == 0


def test_http_statuses_up_to_599_are_checked_by_value() -> None:
    from seda.engine.codec.http import status_and_headers

    assert status_and_headers({"status": 599}) == (599, {})
    assert status_and_headers({"status": 200}) == (200, {})
    with pytest.raises(ValueError, match="expected an int status from 200 to 599"):
        status_and_headers({"status": 600})


def test_http_a_target_exactly_at_the_head_limit_passes() -> None:
    [request] = http(max_header_bytes=256).feed(b"GET /" + b"u" * 255 + b" HTTP/1.1\r\n\r\n")
    assert len(request["path"]) == 256


def test_which_requests_may_run_twice() -> None:
    from seda.engine.codec import repeatable

    http_ok = repeatable("http")
    assert [http_ok({"method": m}) for m in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST",
                                             "PATCH", "PROPFIND")] == [True] * 5 + [False] * 3
    resp_ok = repeatable("resp")
    assert [resp_ok(r) for r in (["get", "k"], ["GET", "k"], ["SET", "k", "v"], ["INCR", "k"],
                                 [b"GET", "k"], [])] == [True, True, False, False, False, False]
    assert not repeatable("line")("anything") and not repeatable("length")(b"x")
