"""Property: whatever bytes arrive, in whatever pieces, a codec gives requests or a
ProtocolError -- never another exception, never unbounded buffering."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seda.engine.codec import make_codec
from seda.errors import ProtocolError
from seda.spec.models import Limits

VALID = {
    "http": b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n"
            b"\r\nabcPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "line": b"hello\nworld\r\n",
    "length": b"\x00\x00\x00\x02hi\x00\x00\x00\x00",
    "resp": b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n",
}
# small limits, so the random inputs (up to 600 bytes) pass them and the bound on what a
# codec holds is put to the test
LIMITS = Limits(max_request_bytes=256, max_header_bytes=256)


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
    # what a codec holds of a request still arriving stays within its limits (head + body)
    assert codec.held() <= LIMITS.max_request_bytes + LIMITS.max_header_bytes + 4


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


def _resp_command(args: list[bytes], inline: bool) -> bytes:
    if inline:
        return b" ".join(args) + b"\r\n"
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


words = st.text(st.characters(codec="utf-8", exclude_characters=" \t\n\r\x0b\x0c"),
                min_size=1, max_size=8).map(str.encode)


@settings(max_examples=200, deadline=None)
@given(commands=st.lists(st.tuples(st.lists(words, min_size=1, max_size=5), st.booleans())
                         .filter(lambda c: not (c[1] and c[0][0][:1] == b"*")),  # (an array)
                         min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 400), max_size=12))
def test_resp_and_line_give_the_same_requests_in_any_pieces(
        commands: list[tuple[list[bytes], bool]], cuts: list[int]) -> None:
    """The incremental parsers keep what they parsed of a command still arriving: in any
    pieces (one byte at a time included) they give exactly what the whole input gives."""
    data = b"".join(_resp_command(args, inline) for args, inline in commands)
    lines = b"".join(b"%s\n" % b"-".join(args).replace(b"\r", b"") for args, _ in commands)
    for protocol, raw in (("resp", data), ("line", lines)):
        whole = make_codec(protocol, LIMITS).feed(raw)
        for pieces in (split(raw, cuts), [raw[i:i + 1] for i in range(len(raw))]):
            codec = make_codec(protocol, LIMITS)
            got = [r for piece in pieces for r in codec.feed(piece)]
            assert got == whole
            assert not codec.partial()


def test_a_command_trickled_in_pieces_is_parsed_once(monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """A RESP command of 20,000 arguments arriving in 300 pieces: each argument is decoded
    once (re-parsing from the start on every read decoded ~3 million, enough for a few
    clients trickling legal commands to take the acceptor's CPU)."""
    import seda.engine.codec.resp as resp

    decoded = 0
    real = resp._arg

    def counting(raw: bytes) -> str | bytes:
        nonlocal decoded
        decoded += 1
        return real(raw)

    monkeypatch.setattr(resp, "_arg", counting)
    data = _resp_command([b"SET"] + [b"v%d" % i for i in range(19_999)], inline=False)
    codec = make_codec("resp", Limits())
    step = len(data) // 300 + 1
    got = [r for i in range(0, len(data), step) for r in codec.feed(data[i:i + step])]
    assert len(got) == 1 and len(got[0]) == 20_000
    assert decoded == 20_000
