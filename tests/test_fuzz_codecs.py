"""Property: whatever bytes arrive, in whatever pieces, a codec gives requests or a
ProtocolError -- never another exception, never unbounded buffering."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seda.codec import make_codec
from seda.errors import ProtocolError
from seda.spec import Limits

VALID = {
    "http": b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n"
            b"\r\nabcPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "line": b"hello\nworld\r\n",
    "length": b"\x00\x00\x00\x02hi\x00\x00\x00\x00",
    "resp": b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n",
}
LIMITS = Limits(max_request_bytes=4096, max_header_bytes=1024)


def feed_all(protocol: str, pieces: list[bytes]) -> None:
    codec = make_codec(protocol, LIMITS)
    for piece in pieces:
        try:
            requests: list[Any] = codec.feed(piece)
        except ProtocolError as exc:
            assert 400 <= exc.status_hint < 600
            assert isinstance(codec.error_reply(exc), bytes)
            return
        assert isinstance(requests, list)
    buffered = getattr(codec, "buffer", b"")
    assert len(buffered) <= LIMITS.max_request_bytes + 64 * 1024


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.parametrize("protocol", sorted(VALID))
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_random_bytes(protocol: str, data: bytes, cuts: list[int]) -> None:
    feed_all(protocol, split(data, cuts))


@pytest.mark.parametrize("protocol", sorted(VALID))
@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_valid_input(protocol: str, data: st.DataObject) -> None:
    raw = bytearray(VALID[protocol])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=5))
    feed_all(protocol, split(bytes(raw), cuts))


@pytest.mark.parametrize("protocol", sorted(VALID))
def test_valid_input_in_every_split(protocol: str) -> None:
    whole = make_codec(protocol, LIMITS).feed(VALID[protocol])
    assert whole
    for cut in range(len(VALID[protocol]) + 1):
        codec = make_codec(protocol, LIMITS)
        got = codec.feed(VALID[protocol][:cut]) + codec.feed(VALID[protocol][cut:])
        assert got == whole, cut
