"""The wire format, exactly: what each frame kind decodes to, every field it refuses, the
size bounds, child ids, and how rows are split into frames by bytes (pure, no sockets)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from seda.engine import wire as e
from seda.errors import ProtocolError

LIMIT = 1 << 16
ENV = [7, "source", 1, 0.0, {"k": [1, b"\x00"]}, 7, 0]
KEY = (1 << 41) + 5  # a frame's key


def data(stage: str, envs: list[Any], held: int = 0, key: int = KEY) -> tuple[Any, ...]:
    """A DATA frame of these envelopes, encoded and decoded: (stage, envelopes, held, key)."""
    got, batch, held_back, got_key = e.unpack_data(e.encode_data(stage, envs, held, key),
                                                   LIMIT)
    return got, batch.envelopes(), held_back, got_key


def test_each_kind_decodes_to_exactly_what_was_sent() -> None:
    assert data("s", [ENV], 3) == ("s", [ENV], 3, KEY)
    fails = [[KEY, 5, "err", "tb", 504]]
    assert e.unpack_ack(e.pack([[1, 2], [3], fails]), LIMIT) == ([1, 2], [3], fails)
    assert e.unpack_credit(e.pack([0, 99]), LIMIT) == (0, 99)
    kept, sent, done = [[1, {"a": 1}, 9], [2, 3, 9, "count"]], [[3, None, 4]], [4]
    assert e.unpack_results(e.pack([KEY, kept, sent, done]), LIMIT) == (KEY, kept, sent, done)
    assert e.unpack_lost(e.pack([[9, "why", 504]]), LIMIT) == [[9, "why", 504]]
    assert e.unpack_order(e.pack({"op": "probe", "wave": 2}), LIMIT) == e.Probe(2)


def test_orders_and_reports_are_records_that_round_trip() -> None:
    orders = [e.Stop(), e.Retire(), e.Finish(), e.StopIntake(), e.Flush(), e.Probe(7),
              e.PeerDown("count.0", 41), e.PeerDown("count.1", 42, "ran over", "split.0", [5])]
    for order in orders:
        assert e.unpack_order(e.pack_record(order), LIMIT) == order
    reports = [e.Ready(12), e.Failed("boom"), e.Exhausted(100),
               e.ProbeReply(3, 0, 55, {"read": 9, "exhausted": True}),
               e.Stats({"pending": 1, "stages": {"a": {"received": 2}}}),
               e.DeadLetters([{"stage": "a", "payload": b"\x00", "error": "a: E: x"}])]
    for report in reports:
        assert e.unpack_report(e.pack_record(report, "w.0"), LIMIT) == ("w.0", report)
    # on the wire a record is a map with its op: what a reader of the frames sees
    assert e.unpack(e.pack_record(e.PeerDown("a.0", 1)), LIMIT) == {
        "op": "peer_down", "name": "a.0", "pid": 1, "why": "", "sender": ""}
    assert e.unpack(e.pack_record(e.Stats({"x": 1}), "w"), LIMIT) == {
        "op": "stats", "name": "w", "x": 1}
    with pytest.raises(ProtocolError, match="malformed STATUS frame"):
        e.unpack_report(e.pack({"op": "dead_letters", "records": {"a": 1}}), LIMIT)


def test_bytes_stay_bytes_text_stays_text_and_int_keys_are_kept() -> None:
    value = {"t": "text", "b": b"\xff\x00", 3: "int key", "n": [b"", ""]}
    assert e.unpack(e.pack(value), LIMIT) == value
    assert type(e.unpack(e.pack(b"x"), LIMIT)) is bytes
    assert type(e.unpack(e.pack("x"), LIMIT)) is str


def test_a_frame_is_refused_past_its_limit_and_accepted_at_it() -> None:
    body = e.pack("x" * 100)
    assert e.unpack(body, len(body)) == "x" * 100
    with pytest.raises(ProtocolError, match=f"frame of {len(body)} bytes is over the "
                                            f"{len(body) - 1}-byte limit"):
        e.unpack(body, len(body) - 1)
    with pytest.raises(ProtocolError, match=r"^malformed frame: \w+Error: "):
        e.unpack(b"\xc1", LIMIT)


def test_a_data_frame_carries_columns_and_sends_a_column_of_one_value_once() -> None:
    other = [8, "source", 1, 0.0, "x", 9, 123]
    body = e.encode_data("s", [ENV, other], 2, KEY)
    assert e.unpack(body, LIMIT) == ["s", 2, KEY, [7, 8], "source", 1, 0.0,
                                     [ENV[4], "x"], [7, 9], [0, 123]]
    third = [9, "acceptor.1", 2, 5.5, None, 10, 0]
    assert e.unpack(e.encode_data("s", [ENV, third], 0, KEY), LIMIT)[3:7] == [
        [7, 9], ["source", "acceptor.1"], [1, 2], [0.0, 5.5]]
    assert data("s", [ENV, other, third]) == ("s", [ENV, other, third], 0, KEY)
    assert data("s", []) == ("s", [], 0, KEY)


def test_a_batch_is_its_envelopes_as_columns() -> None:
    envs = [[i, "o", 1, 0.0, {"n": i}, 100 + i, 0] for i in range(4)]
    batch = e.Batch.of([list(env) for env in envs])
    assert len(batch) == 4 and batch.ids == [0, 1, 2, 3] and batch.requests[2] == 102
    assert batch.envelope(1) == envs[1] and batch.envelopes() == envs
    assert batch.take([3, 1]).envelopes() == [envs[3], envs[1]]
    assert len(e.Batch.of([])) == 0 and e.Batch.of([]).envelopes() == []


MALFORMED_DATA = (r"^malformed DATA frame: expected \[stage, held back, key, \[id, \.\.\.\], "
                  r"origins, attempts, deadlines, \[payload, \.\.\.\], \[request, \.\.\.\], "
                  r"\[born, \.\.\.\]\]$")


@pytest.mark.parametrize(("field", "bad"), [
    (0, "7"), (0, 7.0), (0, True), (1, 5), (1, b"source"), (2, "1"), (2, None),
    (3, "0"), (3, None), (5, "7"), (5, 7.5), (6, None), (6, "0")])
def test_every_envelope_field_is_type_checked(field: int, bad: Any) -> None:
    env = list(ENV)
    env[field] = bad
    with pytest.raises(ProtocolError, match=MALFORMED_DATA):  # in a column of many values
        e.unpack_data(e.encode_data("s", [ENV, env], 0, KEY), LIMIT)
    with pytest.raises(ProtocolError, match=MALFORMED_DATA):  # or the column's one value
        e.unpack_data(e.encode_data("s", [env, env], 0, KEY), LIMIT)


def test_a_deadline_may_be_an_int_or_a_float() -> None:
    for deadline in (0, 12, 1.5):
        env = list(ENV)
        env[3] = deadline
        assert data("s", [env])[1] == [env]
        assert data("s", [ENV, env])[1] == [ENV, env]


GOOD = ["s", 0, 1, [7], "o", 1, 0.0, [None], [7], [0]]


def _with(at: int, value: Any) -> list[Any]:
    body = list(GOOD)
    body[at] = value
    return body


@pytest.mark.parametrize("body", [
    GOOD[:9], [*GOOD, 0], _with(0, 1), _with(1, -1), _with(1, "0"), _with(2, "1"),
    _with(2, 1.0), _with(3, 7), _with(3, [7, 8]), _with(4, ["o", "p"]), _with(5, [1, 1]),
    _with(6, [0.0, 0.0]), _with(7, None), _with(7, [1, 2]), _with(8, [7, 8]), _with(8, 7.5),
    _with(9, []), _with(9, [0, 0]), {"s": 1}])
def test_data_frames_of_another_shape_are_refused(body: Any) -> None:
    assert e.unpack_data(e.pack(GOOD), LIMIT)[1].envelopes() == [[7, "o", 1, 0.0, None, 7, 0]]
    with pytest.raises(ProtocolError, match="malformed DATA frame"):
        e.unpack_data(e.pack(body), LIMIT)


@pytest.mark.parametrize(("kind", "body"), [
    ("ACK", [[1], [2]]), ("ACK", [[1], [2], [3], []]), ("ACK", [[1, "2"], [], []]),
    ("ACK", [[], ["2"], []]), ("ACK", [[1]]), ("ACK", [[], [], 5]),
    ("ACK", [[], [], [[1, 5, "e", "t"]]]), ("ACK", [[], [], [[1, 5, "e", 3, 0]]]),
    ("ACK", [[], [], [[1, "5", "e", "t", 0]]]), ("ACK", [[], [], [["1", 5, "e", "t", 0]]]),
    ("ACK", [[], [], [[1, 5, "e", "t", "504"]]]),
    ("CREDIT", [-1, 5]), ("CREDIT", [1]), ("CREDIT", [1, "p"]), ("CREDIT", ["1", 5]),
    ("RESULT", [1, [], []]), ("RESULT", [[], [], []]), ("RESULT", ["1", [], [], []]),
    ("RESULT", [1, [[1, 2]], [], []]), ("RESULT", [1, [], [["1", 2, 3]], []]),
    ("RESULT", [1, [[1, 2, 3, 4]], [], []]), ("RESULT", [1, [[1, 2, 3, "s", 5]], [], []]),
    ("RESULT", [1, [], [], ["4"]]), ("RESULT", [1, [[1, 2, "3"]], [], []]),
    ("LOST", [[9, "why"]]), ("LOST", [[9, "why", "504"]]), ("LOST", [["9", "why", 500]]),
    ("CONTROL", ["op"]), ("CONTROL", {"op": 1}), ("CONTROL", {"wave": 1}),
    ("CONTROL", {"op": "reboot"}), ("CONTROL", {"op": "probe"}),
    ("CONTROL", {"op": "probe", "wave": "1"}), ("CONTROL", {"op": "peer_down", "name": "a"}),
    ("CONTROL", {"op": "peer_down", "name": "a", "pid": 1, "timed_out": ["1"]}),
    ("STATUS", {"op": "ready"}), ("STATUS", {"op": "probe", "wave": 1, "pending": 0}),
    ("STATUS", {"op": "failed", "error": 3}), ("STATUS", {"op": "stop"})])
def test_frames_of_another_shape_are_refused_with_their_kind_named(kind: str, body: Any
                                                                   ) -> None:
    decode = {"ACK": e.unpack_ack, "CREDIT": e.unpack_credit,
              "RESULT": e.unpack_results, "LOST": e.unpack_lost,
              "CONTROL": e.unpack_order, "STATUS": e.unpack_report}[kind]
    with pytest.raises(ProtocolError, match=f"^malformed {kind} frame$"):
        decode(e.pack(body), LIMIT)


def test_a_credit_of_zero_is_a_window_of_zero() -> None:
    assert e.unpack_credit(e.pack([0, 0]), LIMIT) == (0, 0)
    assert e.unpack_credit(e.pack([3, -1]), LIMIT) == (3, -1)  # (a pid is the sender's word)


def test_child_ids_are_deterministic_distinct_and_fit_63_bits() -> None:
    """A re-run must make the same ids (that is how duplicates are known), siblings and
    cousins must not collide, and ids stay positive int64s for msgpack."""
    assert e.child_id(1, 0) == ((1 * 1_000_003) ^ (1 * e.ID_MIX)) & e.ID_MASK
    assert [e.child_id(12345, i) for i in range(3)] == [
        ((12345 * 1_000_003) ^ ((i + 1) * e.ID_MIX)) & e.ID_MASK for i in range(3)]
    assert e.child_id(0, 0) == e.ID_MIX & e.ID_MASK  # the first child of 0 is not 0
    ids = {e.child_id(p, i) for p in range(200) for i in range(50)}
    assert len(ids) == 200 * 50
    assert all(0 <= i < 1 << 63 for i in ids)
    assert e.child_id((1 << 63) - 1, 7) < 1 << 63


def test_packable_names_the_type_or_the_size() -> None:
    assert e.packable({"a": [1, b"x"]}, 100) is None
    assert e.packable(object(), 100) == ("TypeError: can not serialize 'object' object")
    size = len(msgpack.packb("x" * 50))
    assert e.packable("x" * 50, size) is None  # at the limit: fits
    assert e.packable("x" * 50, size - 1) == (f"{size} bytes, over settings.max_message_bytes "
                                              f"({size - 1})")


def test_bounded_splits_rows_into_frames_no_larger_than_the_limit() -> None:
    def body(rows: list[str]) -> bytes:
        return e.pack(rows)

    rows = [f"row{i:02}" * 10 for i in range(10)]  # 60 characters each
    assert e.bounded(rows, body, 10_000) == [(rows, body(rows))]  # one frame when it fits
    whole = len(body(rows))
    assert e.bounded(rows, body, whole) == [(rows, body(rows))]  # at the limit: still one
    parts = e.bounded(rows, body, 200)
    assert [r for part, _ in parts for r in part] == rows  # every row once, in order
    assert all(raw == body(part) and len(raw) <= 200 for part, raw in parts)
    assert [len(part) for part, _ in parts] == [2, 3, 2, 3]  # halves of halves
    big = ["x" * 300, "small", "y" * 300]
    assert e.bounded(big, body, 200) == [(["x" * 300], b""), (["small"], body(["small"])),
                                         (["y" * 300], b"")]
    assert e.bounded([], body, 0) == [([], body([]))]  # (an empty list packs to one byte)


@pytest.mark.parametrize("column", [{}, {"a": 1}, 5, "x", None])
def test_data_frames_whose_ids_or_payloads_are_not_a_list_are_refused(column: Any) -> None:
    for at in (3, 7):
        with pytest.raises(ProtocolError, match="malformed DATA frame"):
            e.unpack_data(e.pack(_with(at, column)), 1 << 20)


@pytest.mark.parametrize("rows", [{}, {"a": 1}, 5, "x", None])
def test_result_frames_whose_rows_are_not_a_list_are_refused(rows: Any) -> None:
    for frame in ([KEY, rows, [], []], [KEY, [], rows, []]):
        with pytest.raises(ProtocolError, match="malformed RESULT frame"):
            e.unpack_results(e.pack(frame), 1 << 20)
