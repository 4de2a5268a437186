"""Property: whatever reaches a mailbox -- random bytes, msgpack of the wrong shape, a valid
frame mutated, too few frames, a sender nobody knows -- the frame decoders give the frame's
shape or a ProtocolError, and a live worker counts the bad frame and goes on working."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seda import envelope as e
from seda.errors import ProtocolError
from seda.graph import check_file
from seda.handler import resolve
from seda.plan import make_plan
from seda.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 1 << 16
GOOD_ENV = [7, "source", 1, 0.0, ["Hello", "world"], 7, 0]
VALID: dict[bytes, Any] = {
    e.DATA: ["normalize", [GOOD_ENV], 0],
    e.ACK: [[1, 2], [3]],
    e.CREDIT: [16, 1234],
    e.FAIL: [[5, "ValueError: x", "Traceback ..."]],
    e.RESULT: [[[1, {"a": 1}, 9], [2, 3, 9, "count"]], [[3, None, 4]], [4]],
    e.LOST: [[9, "dead-lettered", 500]],
    e.HELLO: None,
    e.CONTROL: {"op": "probe", "wave": 1},
}
DECODERS: dict[bytes, Callable[[bytes, int], Any]] = {
    e.DATA: e.unpack_data, e.ACK: e.unpack_ack, e.CREDIT: e.unpack_credit,
    e.FAIL: e.unpack_fail, e.RESULT: e.unpack_results, e.LOST: e.unpack_lost,
    e.CONTROL: e.unpack_control,
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


@pytest.mark.parametrize("kind", sorted(DECODERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_decoder_gives_its_shape_or_a_protocol_error(kind: bytes, data: st.DataObject
                                                       ) -> None:
    with contextlib.suppress(ProtocolError):
        DECODERS[kind](body(data, kind), LIMIT)


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


# who sends a kind to normalize.0 in a real run (upstream: data; downstream: receipts, credit,
# failures), and senders it does not know
SENDS = {e.DATA: "tokenize.1", e.HELLO: "tokenize.0", e.ACK: "count.0", e.CREDIT: "count.0",
         e.FAIL: "count.0", e.RESULT: "source", e.LOST: "source", e.CONTROL: "count.0"}
STRANGERS = ["stranger", "\udcff", "supervisor-ish", ""]


@pytest.mark.parametrize("kind", [*VALID, b"Z", b""])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_worker_counts_bad_frames_and_keeps_working(worker: Worker, kind: bytes,
                                                      data: st.DataObject) -> None:
    usual = SENDS.get(kind, "tokenize.0")
    sender = data.draw(st.sampled_from([usual] * 4 + STRANGERS)).encode(
        "utf-8", "surrogateescape")
    frames = [sender, kind, body(data, kind)][:data.draw(st.sampled_from([3, 3, 3, 2, 1]))]
    frames += [b"extra"] * data.draw(st.sampled_from([0, 0, 0, 1]))
    before = worker.counters["malformed"]
    worker.take(frames)  # must not raise
    if len(frames) != 3:
        assert worker.counters["malformed"] == before + 1
    worker.step()
    worker.flush()
    assert worker.running


def test_after_the_fuzz_a_good_frame_is_still_run(worker: Worker) -> None:
    stats = worker.core.stats["normalize"]
    completed, malformed = stats.completed, worker.counters["malformed"]
    worker.take([b"tokenize.0", e.DATA, e.pack(["normalize", [GOOD_ENV[:]], 0])])
    worker.step()
    assert stats.completed == completed + 1
    worker.take([b"tokenize.0", e.CONTROL, e.pack({"op": "stop"})])  # only the supervisor
    worker.take([b"tokenize.0", e.DATA, b"\xc1"])  # a byte msgpack never uses
    assert worker.counters["malformed"] == malformed + 2 and worker.running
