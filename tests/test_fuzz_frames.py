"""Property: whatever reaches a mailbox -- random bytes, msgpack of the wrong shape, a valid
frame mutated, too few frames, a sender nobody knows -- the frame decoders give the frame's
shape or a ProtocolError, and a live worker counts the bad frame and goes on working."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seda.engine import wire as e
from seda.errors import ProtocolError
from seda.handler import resolve
from seda.plan.deployment import make_plan
from seda.runtime.worker import Worker
from seda.spec.builder import check_file

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 1 << 16
GOOD_ENV = [7, "source", 1, 0.0, ["Hello", "world"], 7, 0]
VALID: dict[bytes, Any] = {
    e.DATA: ["normalize", 0, 1 << 41, [7], "source", 1, 0.0, [["Hello", "world"]], [7], [0]],
    e.ACK: [[1, 2], [3], [[1 << 41, 5, "ValueError: x", "Traceback ...", 0]]],
    e.CREDIT: [16, 1234],
    e.RESULT: [1 << 41, [[1, {"a": 1}, 9], [2, 3, 9, "count"]], [[3, None, 4]], [4]],
    e.LOST: [[9, "dead-lettered", 500]],
    e.HELLO: None,
    e.CONTROL: {"op": "probe", "wave": 1},
}
DECODERS: dict[bytes, Callable[[bytes, int], Any]] = {
    e.DATA: e.unpack_data, e.ACK: e.unpack_ack, e.CREDIT: e.unpack_credit,
    e.RESULT: e.unpack_results, e.LOST: e.unpack_lost,
    e.CONTROL: e.unpack_order,
}

# any msgpack value: the wrong shapes a buggy or hostile peer could send
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=20)


def mutate(data: st.DataObject, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        if out:
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
    return bytes(out[:data.draw(st.integers(0, len(out)))])  # and maybe truncated


def body(data: st.DataObject, kind: bytes) -> bytes:
    """Random bytes, any msgpack value, or this kind's valid body mutated or truncated."""
    choice = data.draw(st.sampled_from(["bytes", "value", "mutated"]))
    if choice == "bytes":
        return data.draw(st.binary(max_size=200))
    if choice == "value":
        return e.pack(data.draw(values))
    return mutate(data, e.pack(VALID.get(kind)))


def _ints(v: Any) -> bool:
    return type(v) is list and all(type(x) is int for x in v)


def _batch(b: Any) -> bool:
    """Columns of one length, each value of its field's type (what the stage core and the
    dispatcher index and compute with): ids, origins, attempts, deadlines, payloads,
    requests, borns."""
    if type(b) is not e.Batch:
        return False
    n = len(b.ids)
    types = [(b.ids, (int,)), (b.origins, (str,)), (b.attempts, (int,)),
             (b.deadlines, (int, float)), (b.requests, (int,)), (b.borns, (int,))]
    return len(b.payloads) == n and all(
        type(column) is list and len(column) == n and all(type(v) in ok for v in column)
        for column, ok in types)


def _result_rows(rows: Any) -> bool:
    return type(rows) is list and all(
        type(r) is list and len(r) in (3, 4) and type(r[0]) is int and type(r[2]) is int
        and (len(r) == 3 or type(r[3]) is str) for r in rows)


# what each decoder promises about what it returns: written here, apart from the decoders,
# so that a decoder that stops checking a field is caught
SHAPES: dict[bytes, Callable[[Any], bool]] = {
    e.DATA: lambda d: (type(d) is tuple and type(d[0]) is str and _batch(d[1])
                       and type(d[2]) is int and d[2] >= 0 and type(d[3]) is int),
    e.ACK: lambda d: type(d) is tuple and _ints(d[0]) and _ints(d[1]) and type(d[2]) is list
    and all(type(r) is list and [type(x) for x in r] == [int, int, str, str, int]
            for r in d[2]),
    e.CREDIT: lambda d: type(d) is tuple and type(d[0]) is int and d[0] >= 0
    and type(d[1]) is int,
    e.RESULT: lambda d: (type(d) is tuple and type(d[0]) is int and _result_rows(d[1])
                         and _result_rows(d[2]) and _ints(d[3])),
    e.LOST: lambda d: type(d) is list and all(
        type(r) is list and [type(x) for x in r] == [int, str, int] for r in d),
    e.CONTROL: lambda d: _order_fields(d),
}


def _order_fields(d: Any) -> bool:
    """An order whose every field has its declared type (a bool is not an int here)."""
    if isinstance(d, e.Probe):
        return type(d.wave) is int
    if isinstance(d, e.PeerDown):
        return (type(d.name) is str and type(d.pid) is int and type(d.why) is str
                and type(d.sender) is str and (d.timed_out is None or (
                    type(d.timed_out) is list and all(type(i) is int for i in d.timed_out))))
    return type(d) in (e.Stop, e.Retire, e.Finish, e.StopIntake, e.Flush)


def typed_data(data: st.DataObject) -> bytes:
    """A DATA body of the right structure whose columns hold values of any type (each a
    list of one to three, or one value) -- what a peer with a bug would send, and what must
    never reach the stage core."""
    field = values | st.integers(0, 1 << 40)
    column = st.lists(field, min_size=1, max_size=3) | field
    return e.pack(["normalize", data.draw(st.integers(-2, 5)),
                   data.draw(st.integers(0, 1 << 50) | values),
                   *[data.draw(column) for _ in range(7)]])


@pytest.mark.parametrize("kind", sorted(DECODERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_decoder_gives_its_shape_or_a_protocol_error(kind: bytes, data: st.DataObject
                                                       ) -> None:
    raw = typed_data(data) if kind == e.DATA and data.draw(st.booleans()) else body(data, kind)
    try:
        decoded = DECODERS[kind](raw, LIMIT)
    except ProtocolError:
        return
    assert SHAPES[kind](decoded), decoded


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_valid_bodies_decode_and_oversized_ones_do_not(kind: bytes) -> None:
    raw = e.pack(VALID[kind])
    assert DECODERS[kind](raw, LIMIT) is not None
    with pytest.raises(ProtocolError, match="over the"):
        DECODERS[kind](raw, len(raw) - 1)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """A real worker of graphs/pipeline.yaml's normalize stage, in this process, with its
    sockets bound in a private run directory (its peers are not running: what it sends is
    counted as unreachable, which is not what is tested here)."""
    run_dir = tempfile.mkdtemp(prefix="seda-fuzz-")
    spec = check_file(ROOT / "graphs" / "pipeline.yaml", imports=False).spec
    plan = make_plan(spec, run_dir, base_dir=str(ROOT))
    w = Worker(plan, "normalize.0", os.getpid(), resolve)
    try:
        yield w
    finally:
        w.close()
        shutil.rmtree(run_dir, ignore_errors=True)


# who sends a kind to normalize.0 in a real run (upstream: data; downstream: receipts with
# failures, credit), and senders it does not know
SENDS = {e.DATA: "tokenize.1", e.HELLO: "tokenize.0", e.ACK: "count.0", e.CREDIT: "count.0",
         e.RESULT: "source", e.LOST: "source", e.CONTROL: "count.0"}
STRANGERS = ["stranger", "\udcff", "supervisor-ish", ""]


@pytest.mark.parametrize("kind", [*VALID, b"Z", b""])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_worker_counts_bad_frames_and_keeps_working(worker: Worker, kind: bytes,
                                                      data: st.DataObject) -> None:
    usual = SENDS.get(kind, "tokenize.0")
    sender = data.draw(st.sampled_from([usual] * 4 + STRANGERS)).encode(
        "utf-8", "surrogateescape")
    raw = typed_data(data) if kind == e.DATA and data.draw(st.booleans()) else body(data, kind)
    frames = [sender, kind, raw][:data.draw(st.sampled_from([3, 3, 3, 2, 1]))]
    frames += [b"extra"] * data.draw(st.sampled_from([0, 0, 0, 1]))
    before = worker.counters["malformed"]
    worker.take(frames)  # must not raise
    if bad_frame(frames):  # whatever else, a frame that cannot be read is counted
        assert worker.counters["malformed"] == before + 1, frames
    worker.step()  # and what was taken runs without an error (a wrongly typed envelope
    worker.flush()  # that got past the decoder would raise here)
    assert worker.running


def bad_frame(frames: list[bytes]) -> bool:
    """A frame no worker can read: wrong part count, a sender that is not UTF-8, a kind that
    does not exist, a body its kind's decoder rejects."""
    if len(frames) != 3:
        return True
    sender, kind, raw = frames
    try:
        sender.decode()
    except UnicodeDecodeError:
        return True
    if kind not in VALID:
        return True
    if kind in DECODERS:
        try:
            DECODERS[kind](raw, LIMIT)
        except ProtocolError:
            return True
    return False


def test_after_the_fuzz_a_good_frame_is_still_run(worker: Worker) -> None:
    stats = worker.core.stats["normalize"]
    completed, malformed = stats.completed, worker.counters["malformed"]
    worker.take([b"tokenize.0", e.DATA, e.encode_data("normalize", [GOOD_ENV[:]], 0, 1 << 41)])
    worker.step()
    assert stats.completed == completed + 1
    worker.take([b"tokenize.0", e.CONTROL, e.pack({"op": "stop"})])  # only the supervisor
    worker.take([b"tokenize.0", e.DATA, b"\xc1"])  # a byte msgpack never uses
    assert worker.counters["malformed"] == malformed + 2 and worker.running
