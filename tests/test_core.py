"""The sans-IO stage core: handler styles, routing of return values, fusion, failures."""

from __future__ import annotations

from typing import Any

import pytest

from seda.engine.stage import StageCore
from seda.engine.wire import ID, PAYLOAD
from seda.spec.builder import Graph
from seda.spec.models import GraphSpec


def core(spec: GraphSpec, stages: list[str], handlers: dict[str, Any],
         now: float = 1000.0) -> StageCore:
    c = StageCore(spec, stages, 0, lambda ref: handlers[ref], clock=lambda: now)
    c.setup()
    return c


def env(i: int, payload: Any, deadline: float = 0.0) -> list[Any]:
    return [i, "source", 1, deadline, payload, i, 1]


def chain() -> GraphSpec:
    return (Graph("c").source("m:src", to=["a"])
            .stage("a", "m:a", to=["b"]).stage("b", "m:b", to=["c"])
            .stage("c", "m:c", sink=True)).build()


def test_return_value_goes_to_the_single_route() -> None:
    c = core(chain(), ["a"], {"m:a": lambda x, ctx: x + 1})
    group = c.process("a", [env(1, 41)])
    assert [(s, e[PAYLOAD]) for s, e in group.emits] == [("b", 42)]
    assert group.failed == [] and c.stats["a"].completed == 1


def test_fused_stages_call_each_other_directly() -> None:
    handlers = {"m:a": lambda x, ctx: x + 1, "m:b": lambda x, ctx: x * 10}
    c = core(chain(), ["a", "b"], handlers)
    group = c.process("a", [env(1, 1)])
    assert [(s, e[PAYLOAD]) for s, e in group.emits] == [("c", 20)]
    assert c.stats["b"].received == 1


def test_sink_return_is_a_result_and_duplicates_are_dropped() -> None:
    c = core(chain(), ["c"], {"m:c": lambda x, ctx: x})
    group = c.process("c", [env(5, "x"), env(5, "x"), env(6, "y")])
    assert [r[PAYLOAD] for r in group.results] == ["x", "y"]
    assert [e[ID] for e in group.dropped] == [5]
    assert c.stats["c"].duplicates == 1


def test_child_ids_are_deterministic() -> None:
    handlers = {"m:a": lambda x, ctx: x}
    first = core(chain(), ["a"], handlers).process("a", [env(9, 0)]).emits[0][1][ID]
    again = core(chain(), ["a"], handlers).process("a", [env(9, 0)]).emits[0][1][ID]
    assert first == again != 9


def test_exception_discards_outputs_and_names_the_stage() -> None:
    def b(x: int, ctx: Any) -> int:
        raise ValueError(f"bad {x}")

    def a(x: int, ctx: Any) -> int:
        ctx.reply("early")  # taken back too when the message fails later
        return x

    c = core(chain(), ["a", "b"], {"m:a": a, "m:b": b})
    group = c.process("a", [env(1, 2), env(2, 3)])
    assert [e[ID] for e in group.handled()] == []
    assert group.emits == [] and group.results == []
    [(e1, err1, tb1), (_, err2, _)] = group.failed
    assert (e1[ID], err1, err2) == (1, "b: ValueError: bad 2", "b: ValueError: bad 3")
    assert "Traceback" in tb1
    assert c.stats["b"].errors == 2 and c.stats["a"].errors == 0


def test_one_failing_input_does_not_take_its_batch_neighbours_down() -> None:
    def a(x: int, ctx: Any) -> int:
        if x == 2:
            raise KeyError(x)
        return x

    c = core(chain(), ["a"], {"m:a": a})
    group = c.process("a", [env(1, 1), env(2, 2), env(3, 3)])
    assert [e[ID] for e in group.handled()] == [1, 3]
    assert [e[PAYLOAD] for _, e in group.emits] == [1, 3]
    assert [e[ID] for e, _, _ in group.failed] == [2]


def test_emit_to_a_stage_without_a_route_is_an_error() -> None:
    c = core(chain(), ["a"], {"m:a": lambda x, ctx: ctx.emit("c", x)})
    [(_, error, _)] = c.process("a", [env(1, 3)]).failed
    assert "stage 'a' has no route to 'c' (its routes: b)" in error


def test_unpackable_payload_is_an_error_at_the_emitting_stage() -> None:
    c = core(chain(), ["a"], {"m:a": lambda x, ctx: {"x": object()}})
    [(_, error, _)] = c.process("a", [env(1, 3)]).failed
    assert "no frame can carry" in error and "to 'b'" in error


def test_an_output_over_the_message_limit_fails_its_input_alone() -> None:
    """A payload larger than settings.max_message_bytes could never travel: its input fails
    with the sizes named. Outputs that are each within the limit pass however large their
    batch is (frames are split by bytes when sent)."""
    spec = (Graph("c", ).source("m:src", to=["a"]).stage("a", "m:a", to=["b"])
            .stage("b", "m:b", sink=True).settings(max_message_bytes=1024)).build()
    c = core(spec, ["a"], {"m:a": lambda x, ctx: "y" * x})
    group = c.process("a", [env(i, size) for i, size in enumerate([900] * 10 + [2000, 5])])
    assert [e[ID] for e in group.handled()] == [*range(10), 11]
    [(failed, error, _)] = group.failed
    assert failed[ID] == 10
    assert "2003 bytes, over settings.max_message_bytes (1024)" in error


def test_an_unpackable_payload_fails_only_its_own_input() -> None:
    """The check runs once per batch; when the batch does not pack, only the inputs whose
    outputs msgpack cannot carry fail (their outputs withdrawn), the rest go on intact."""
    def a(x: int, ctx: Any) -> None:
        ctx.emit("b", x)
        ctx.emit("b", object() if x == 2 else x * 10)

    c = core(chain(), ["a"], {"m:a": a})
    group = c.process("a", [env(1, 1), env(2, 2), env(3, 3)])
    assert [e[ID] for e in group.handled()] == [1, 3]
    assert [e[PAYLOAD] for _, e in group.emits] == [1, 10, 3, 30]
    assert group.starts == [(0, 0), (2, 0)]
    assert [e[ID] for e, _, _ in group.failed] == [2]
    assert (c.stats["a"].completed, c.stats["a"].errors) == (2, 1)
    assert c.process("a", [env(4, 4)]).emits  # and the next batch is checked afresh

    service = (Graph("s").acceptor(listen="127.0.0.1:0", protocol="line", entry="r")
               .stage("r", "m:r")).build()
    replies = core(service, ["r"], {"m:r": lambda x, ctx: {1, 2} if x == "bad" else x})
    group = replies.process("r", [env(1, "ok"), env(2, "bad")])
    assert [e[PAYLOAD] for e in group.results] == ["ok"]
    assert "as a reply" in group.failed[0][1]


def test_a_batch_handler_with_an_unpackable_output_fails_as_one() -> None:
    class Batch:
        def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            return [object() if x == 2 else x for x in xs]

    c = core(chain(), ["a"], {"m:a": Batch})
    group = c.process("a", [env(1, 1), env(2, 2)])
    assert group.inputs == [] and group.emits == [] and len(group.failed) == 2


def test_class_handler_lifecycle_and_batches() -> None:
    calls: list[str] = []

    class Batcher:
        def setup(self, ctx: Any) -> None:
            calls.append(f"setup {ctx.options}")

        def handle_batch(self, items: list[int], ctx: Any) -> list[int]:
            calls.append(f"batch {items}")
            return [i * 2 for i in items]

        def teardown(self, ctx: Any) -> None:
            calls.append("teardown")

    spec = (Graph("b").source("m:src", to=["a"]).stage("a", "m:a", to=["c"], options={"k": 1})
            .stage("c", "m:c", sink=True)).build()
    c = core(spec, ["a"], {"m:a": Batcher})
    group = c.process("a", [env(1, 1), env(2, 2)])
    c.teardown()
    assert len(group.inputs) == 2
    assert [e[PAYLOAD] for _, e in group.emits] == [2, 4]
    assert calls == ["setup {'k': 1}", "batch [1, 2]", "teardown"]


def test_expired_messages_are_dropped_and_counted() -> None:
    c = core(chain(), ["a"], {"m:a": lambda x, ctx: x}, now=1000.0)
    group = c.process("a", [env(1, 1, deadline=999.0), env(2, 2, deadline=1001.0)])
    assert [e[ID] for e in group.handled()] == [2]
    assert [e[ID] for e in group.dropped] == [1]
    assert c.stats["a"].expired == 1


def test_a_message_that_expires_while_others_run_is_dropped_at_its_turn() -> None:
    import time as _time

    c = StageCore(chain(), ["a"], 0, lambda ref: lambda x, ctx: _time.sleep(0.05) or x)
    soon = _time.time() + 0.02  # passes while the first message runs
    group = c.process("a", [env(1, 1), env(2, 2, deadline=soon), env(3, 3)])
    assert [e[ID] for e in group.handled()] == [1, 3] and [e[ID] for e in group.dropped] == [2]
    assert c.stats["a"].expired == 1 and c.stats["a"].completed == 2


def test_several_routes_need_explicit_emit() -> None:
    spec = (Graph("f").source("m:src", to=["a"]).stage("a", "m:a", to=["b", "c"])
            .stage("b", "m:b", sink=True).stage("c", "m:c", sink=True)).build()
    c = core(spec, ["a"], {"m:a": lambda x, ctx: x})
    [(_, error, _)] = c.process("a", [env(1, 1)]).failed
    assert "use ctx.emit" in error


def test_service_reply_keeps_the_request_id() -> None:
    spec = Graph("s").acceptor("a").stage("a", "m:a").build()
    c = core(spec, ["a"], {"m:a": lambda req, ctx: {"status": 200}})
    group = c.process("a", [[76, "acceptor.0", 1, 0.0, {"path": "/"}, 77, 1]])
    [result] = group.results
    assert result[1:] == ["acceptor.0", 1, 0.0, {"status": 200}, 77, 0]


def test_finish_collects_sink_values() -> None:
    class Total:
        def setup(self, ctx: Any) -> None:
            self.n = 0

        def handle(self, x: int, ctx: Any) -> None:
            self.n += x

        def finish(self, ctx: Any) -> int:
            return self.n

    c = core(chain(), ["c"], {"m:c": Total})
    c.process("c", [env(1, 2), env(2, 3)])
    assert c.finish() == [("c", 5)]


@pytest.mark.parametrize("bad", [b"", b"\xc1", b"\x93\x01\x02"])
def test_malformed_frames_are_protocol_errors(bad: bytes) -> None:
    from seda.engine.wire import unpack_data
    from seda.errors import ProtocolError

    with pytest.raises(ProtocolError):
        unpack_data(bad, 1 << 20)


def test_oversized_frames_are_refused() -> None:
    from seda.engine.wire import encode_data, unpack_data
    from seda.errors import ProtocolError

    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        unpack_data(encode_data("s", [[1, "o", 1, 0.0, "x" * 200, 1, 1]], 0, 1), 100)




def test_a_terminal_service_stage_that_returns_none_still_answers() -> None:
    spec = Graph("s").acceptor("a").stage("a", "m:a", to=["b"]).stage("b", "m:b").build()
    handlers = {"m:a": lambda req, ctx: req, "m:b": lambda req, ctx: None}
    group = core(spec, ["a", "b"], handlers).process("a", [[1, "acceptor.0", 1, 0.0, "x", 1, 1]])
    assert [r[PAYLOAD] for r in group.results] == [None]
    replied = {"m:a": lambda req, ctx: req, "m:b": lambda req, ctx: ctx.reply("once")}
    group = core(spec, ["a", "b"], replied).process("a", [[1, "acceptor.0", 1, 0.0, "x", 1, 1]])
    assert [r[PAYLOAD] for r in group.results] == ["once"]


def test_queue_wait_counts_from_birth_to_the_start_of_the_handler() -> None:
    """A message born 50 ms ago waited 50 ms; in a batch, each also waits for those run
    before it (20 ms each here)."""
    import time as _time

    from seda.engine.stage import bucket_upper
    from seda.observe.status import percentiles

    c = StageCore(chain(), ["a"], 0, lambda ref: lambda m, ctx: _time.sleep(0.02))
    born = _time.time_ns() - 50_000_000
    c.process("a", [[i, "source", 1, 0.0, "x", i, born] for i in range(3)])
    waits = {k: n for k, n in enumerate(c.stats["a"].waits) if n}
    assert sum(waits.values()) == 3
    ms = sorted(bucket_upper(k) / 1e6 for k, n in waits.items() for _ in range(n))
    assert 50 <= ms[0] <= 70 and 90 <= ms[2] <= 130, ms
    assert percentiles(waits)["p50"] >= 70


# ---------------------------------------------------------------- exact books (what mutation
# testing found unguarded: counters, histogram buckets, the fields of what a handler makes)

from seda.engine.stage import Context, StageStats, bucket_upper, time_bucket  # noqa: E402
from seda.engine.wire import (  # noqa: E402
    ATTEMPT,
    BORN,
    DEADLINE,
    ORIGIN,
    REQUEST,
    SAMPLE,
    child_id,
)


def test_time_buckets_are_exact_below_8_and_within_a_quarter_above() -> None:
    assert [time_bucket(ns) for ns in range(8)] == list(range(8))
    assert [bucket_upper(k) for k in range(16)] == list(range(16))
    assert [time_bucket(ns) for ns in (8, 16, 19, 20, 23, 24, 31, 32, 1000)] == [
        16, 20, 20, 21, 21, 22, 23, 24, 43]
    assert [bucket_upper(k) for k in (20, 21, 22, 23, 24, 43)] == [19, 23, 27, 31, 39, 1023]
    for ns in range(1, 100_000, 37):  # every duration falls in the bucket that holds it
        key = time_bucket(ns)
        assert bucket_upper(key - 1) < ns <= bucket_upper(key), ns
        assert bucket_upper(key) <= ns * 1.25 + 1


class FakeClocks:
    """perf_counter_ns steps by `step` on each reading; time_ns is fixed."""

    def __init__(self, step: int) -> None:
        self.now, self.step = 0, step

    def perf(self) -> int:
        self.now += self.step
        return self.now


def test_the_books_of_a_batch_add_up_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    clocks = FakeClocks(1000)
    monkeypatch.setattr(time, "perf_counter_ns", clocks.perf)
    monkeypatch.setattr(time, "time_ns", lambda: 7)

    def a(x: int, ctx: Any) -> int | None:
        if x == 3:
            raise ValueError("three")
        return x * 10 if x != 4 else None

    c = core(chain(), ["a"], {"m:a": a}, now=1000.0)
    born = int(1000.0 * 1e9) - 5000
    batch = [env(1, 1), env(2, 2, deadline=999.0), env(3, 3), env(4, 4), env(5, 5)]
    for e in batch:
        e[BORN] = 0  # (only sampled messages carry a birth time)
    batch[0][BORN] = born
    for _ in range(2):  # the books accumulate
        group = c.process("a", [list(e) for e in batch])
    stats = c.stats["a"]
    assert (stats.received, stats.completed, stats.errors, stats.expired, stats.emitted) == (
        10, 6, 2, 2, 4)
    assert stats.times[time_bucket(1000)] == 6  # one step of the fake clock per call
    assert sum(stats.times) == 6 + 2 * 0  # (a failed call is not timed)
    # its wait: born 5,000 ns before the batch began, its call began one clock step later
    assert stats.waits[time_bucket(6000)] == 2 and sum(stats.waits) == 2
    assert [(s, e[ID], e[ORIGIN], e[ATTEMPT], e[DEADLINE], e[PAYLOAD], e[REQUEST], e[BORN])
            for s, e in group.emits] == [
        ("b", cid, "source", 1, 0.0, p, r, 0 if cid & SAMPLE else 7)
        for cid, p, r in ((child_id(1, 0), 10, 1), (child_id(5, 0), 50, 5))]
    assert [e[ID] for e in group.dropped] == [2] and [f[0][ID] for f in group.failed] == [3]
    assert c.running == ""  # between batches, nothing runs
    figures = stats.figures()
    assert figures["times"] == {time_bucket(1000): 6}
    assert figures["waits"] == {time_bucket(6000): 2}
    assert {k: v for k, v in figures.items() if k not in ("times", "waits", "busy")} == {
        "received": 10, "completed": 6, "errors": 2, "emitted": 4, "results": 0,
        "duplicates": 0, "expired": 2}


def test_emits_and_replies_number_their_children_in_order() -> None:
    def a(x: int, ctx: Any) -> None:
        ctx.emit("b", "first")
        ctx.emit("c", "second")

    spec = (Graph("f").acceptor(entry="a", listen="127.0.0.1:0")
            .stage("a", "m:a", to=["b", "c"]).stage("b", "m:b").stage("c", "m:c")).build()
    c = core(spec, ["a"], {"m:a": a})
    group = c.process("a", [[9, "acceptor.0", 2, 1055.0, "x", 41, 0]])
    assert [(s, e[ID], e[ATTEMPT], e[DEADLINE], e[REQUEST]) for s, e in group.emits] == [
        ("b", child_id(9, 0), 1, 1055.0, 41), ("c", child_id(9, 1), 1, 1055.0, 41)]
    assert c.stats["a"].emitted == 2

    def r(x: str, ctx: Any) -> None:
        ctx.reply("one")
        ctx.reply("two")

    replies = core(spec, ["b"], {"m:b": r}).process("b", [[9, "acceptor.0", 2, 1055.0, "x",
                                                           41, 0]])
    assert [list(e) for e in replies.results] == [
        [child_id(9, 0), "acceptor.0", 1, 0.0, "one", 41, 0],
        [child_id(9, 1), "acceptor.0", 1, 0.0, "two", 41, 0]]


def test_a_fused_stage_keeps_books_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    clocks = FakeClocks(500)
    monkeypatch.setattr(time, "perf_counter_ns", clocks.perf)
    handlers = {"m:a": lambda x, ctx: x + 1, "m:b": lambda x, ctx: x * 10}
    c = core(chain(), ["a", "b"], handlers)
    for _ in range(2):
        c.process("a", [env(1, 1), env(2, 2)])
    b = c.stats["b"]
    assert (b.received, b.completed, b.emitted) == (4, 4, 4)
    assert b.times[time_bucket(500)] == 4


def test_a_batch_handler_keeps_exact_books(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    clocks = FakeClocks(3000)
    monkeypatch.setattr(time, "perf_counter_ns", clocks.perf)
    seen: list[Any] = []

    class Batch:
        def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            seen.append((list(xs), ctx.request_id))
            return [None if x == 2 else x for x in xs]

    spec = (Graph("s").acceptor(entry="r", listen="127.0.0.1:0").stage("r", "m:r")).build()
    c = core(spec, ["r"], {"m:r": Batch}, now=1000.0)
    batch = [[i, "acceptor.0", 1, 0.0 if i != 3 else 999.0, i, i, 0] for i in (1, 2, 3)]
    batch[0][BORN] = int(1000.0 * 1e9) - 8000
    batch[1][BORN] = int(1000.0 * 1e9)  # born this very instant: a wait of 0, counted
    for _ in range(2):
        group = c.process("r", [list(e) for e in batch])
    assert seen == [([1, 2], 1), ([1, 2], 1)]  # the expired one is not run; ctx is the first
    stats = c.stats["r"]
    assert (stats.received, stats.completed, stats.expired) == (6, 4, 2)
    assert [e[PAYLOAD] for e in group.results] == [1, None]  # None: a reply all the same
    assert [e[ID] for e in group.dropped] == [3]
    assert stats.times[time_bucket(3000 // 2)] == 4  # the mean per message, for each
    assert stats.waits[time_bucket(8000)] == 2 and stats.waits[0] == 2
    assert sum(stats.waits) == 4  # (the unsampled one: none)
    assert c.running == ""


def test_a_failing_batch_handler_fails_its_whole_batch_with_its_error() -> None:
    class Batch:
        def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            raise KeyError("nope")

    c = core(chain(), ["a"], {"m:a": Batch})
    group = c.process("a", [env(1, 1), env(2, 2)])
    assert [(e[ID], error) for e, error, _ in group.failed] == [
        (1, "a: KeyError: 'nope'"), (2, "a: KeyError: 'nope'")]
    assert all("Traceback (most recent call last)" in tb and "\n" in tb
               for _, _, tb in group.failed)
    assert group.inputs == [] and c.stats["a"].errors == 1


def test_lifecycle_hooks_get_their_own_context_and_defaults() -> None:
    calls: list[tuple[str, str, int, int, int]] = []

    class Keep:
        def setup(self, ctx: Any) -> None:
            calls.append(("setup", ctx.stage, ctx.worker, ctx.request_id, ctx.attempt))

        def handle(self, x: int, ctx: Any) -> None:
            pass

        def finish(self, ctx: Any) -> int:
            calls.append(("finish", ctx.stage, ctx.worker, ctx.request_id, ctx.attempt))
            return 1

        def teardown(self, ctx: Any) -> None:
            calls.append(("teardown", ctx.stage, ctx.worker, 0, 0))

    c = StageCore(chain(), ["c"], 3, lambda ref: Keep)
    c.setup()
    assert c.keeps == ["c"]
    assert c.finish() == [("c", 1)]
    c.teardown()
    assert calls == [("setup", "c", 3, 0, 1), ("finish", "c", 3, 0, 1),
                     ("teardown", "c", 3, 0, 0)]


def test_a_stage_without_routes_says_so_when_it_emits() -> None:
    spec = (Graph("s").acceptor(entry="r", listen="127.0.0.1:0").stage("r", "m:r")).build()
    c = core(spec, ["r"], {"m:r": lambda x, ctx: ctx.emit("x", x)})
    [(_, error, _)] = c.process("r", [env(1, 1)]).failed
    assert "stage 'r' has no route to 'x' (its routes: none)" in error


def test_a_sink_in_a_service_answers_nobody() -> None:
    spec = (Graph("s").acceptor(entry="r", listen="127.0.0.1:0")
            .stage("r", "m:r", to=["log", "out"]).stage("log", "m:log", sink=True)
            .stage("out", "m:out")).build()
    c = core(spec, ["log"], {"m:log": lambda x, ctx: "ignored"})
    group = c.process("log", [env(1, 1)])
    assert group.results == [] and group.emits == [] and [e[ID] for e in group.handled()] == [1]


def test_an_output_no_frame_can_carry_is_charged_once() -> None:
    c = core(chain(), ["a"], {"m:a": lambda x, ctx: object() if x == 2 else x})
    c.process("a", [env(1, 1), env(2, 2), env(3, 3)])
    stats = c.stats["a"]
    assert (stats.completed, stats.errors) == (2, 1)


def test_a_fresh_context_and_fresh_stats() -> None:
    c = core(chain(), ["a"], {"m:a": lambda x, ctx: x})
    ctx = Context(c, "a", {"k": 1})
    assert (ctx.request_id, ctx.attempt, ctx.stage, ctx.options, ctx.worker) == (
        0, 1, "a", {"k": 1}, 0)
    assert StageStats().figures() == {
        "received": 0, "completed": 0, "errors": 0, "emitted": 0, "results": 0,
        "duplicates": 0, "expired": 0, "busy": 0.0, "times": {}, "waits": {}}


def test_busy_results_duplicates_and_errors_accumulate(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    import time

    ticks = iter(range(0, 10_000, 2))  # each reading 2 s after the last
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    c = core(chain(), ["c"], {"m:c": lambda x, ctx: x if x != "bad" else object()})
    for k in (0, 10):
        c.process("c", [env(1 + k, "x"), env(1 + k, "x"), env(2 + k, "bad"), env(3 + k, "y")])
    stats = c.stats["c"]
    assert stats.busy == pytest.approx(4.0)  # 2 s a batch, added up
    # (a result that no frame can carry was made, so it is counted, and failed: an error)
    assert (stats.results, stats.duplicates, stats.errors) == (6, 2, 2)


def test_a_batch_handler_whose_reply_cannot_travel_fails_its_batch_naming_why() -> None:
    class Batch:
        def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            return [{1, 2} if x == "bad" else x for x in xs]

    service = (Graph("s").acceptor(listen="127.0.0.1:0", protocol="line", entry="r")
               .stage("r", "m:r")).build()
    c = core(service, ["r"], {"m:r": Batch})
    for _ in range(2):  # the errors accumulate
        batch = [env(1, "ok"), env(2, "bad")]
        group = c.process("r", batch)
        assert group.inputs == [] and group.results == []
        assert [f[0] for f in group.failed] == batch
        assert all(f[1].startswith("r: HandlerUsageError: stage 'r' (or a stage fused with "
                                   "it) sent a payload no frame can carry as a reply: ")
                   and f[2] == "" for f in group.failed)
    assert (c.stats["r"].errors, c.stats["r"].completed) == (4, 0)


def test_every_child_of_one_input_has_its_own_id_and_every_result_is_counted() -> None:
    def a(x: int, ctx: Any) -> None:
        for i in range(3):
            ctx.emit("b", i)

    def r(x: int, ctx: Any) -> None:
        for i in range(3):
            ctx.reply(i)

    spec = (Graph("f").acceptor(entry="a", listen="127.0.0.1:0")
            .stage("a", "m:a", to=["b"]).stage("b", "m:b")).build()
    emits = core(spec, ["a"], {"m:a": a}).process("a", [env(9, 0)]).emits
    assert [e[ID] for _, e in emits] == [child_id(9, n) for n in range(3)]
    c = core(spec, ["b"], {"m:b": r, "m:a": a})
    for _ in range(2):
        results = c.process("b", [env(9, 0), env(10, 0)]).results
    assert [e[ID] for e in results] == [child_id(i, n) for i in (9, 10) for n in range(3)]
    assert c.stats["b"].results == 12
    returned = core(spec, ["b"], {"m:b": lambda x, ctx: x})  # the inlined route counts too
    for _ in range(2):
        returned.process("b", [env(1, 0), env(2, 0)])
    assert returned.stats["b"].results == 4


def test_sinks_count_every_duplicate() -> None:
    c = core(chain(), ["c"], {"m:c": lambda x, ctx: x})
    for _ in range(3):
        c.process("c", [env(5, "x"), env(5, "x")])
    assert (c.stats["c"].duplicates, c.stats["c"].results) == (5, 1)


def test_children_born_of_sampled_ids_carry_their_birth_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Queue wait is timed on a sample of messages: those whose id has no SAMPLE bit carry
    the wall clock of their birth; the others carry 0 (no clock read). Both the inlined
    route (a returned value) and ctx.emit stamp alike."""
    import time

    monkeypatch.setattr(time, "time_ns", lambda: 123_456)
    ids = range(1, 200)
    sampled = {i for i in ids if not child_id(i, 0) & SAMPLE}
    assert sampled and len(sampled) < len(ids)  # the test sees both kinds
    returned = core(chain(), ["a"], {"m:a": lambda x, ctx: x}).process(
        "a", [env(i, i) for i in ids]).emits
    emitted = core(chain(), ["a"], {"m:a": lambda x, ctx: ctx.emit("b", x)}).process(
        "a", [env(i, i) for i in ids]).emits
    for emits in (returned, emitted):
        assert {e[PAYLOAD] for _, e in emits if e[BORN] == 123_456} == sampled
        assert all(e[BORN] in (0, 123_456) for _, e in emits)


def test_the_top_of_the_exact_buckets_meets_the_first_quarter_bucket() -> None:
    assert bucket_upper(15) == 15 and bucket_upper(16) == 9
    for key in range(16, 200):
        assert time_bucket(bucket_upper(key)) == key, key


@pytest.mark.parametrize("ns", [0, 1, 2, 7, 8, 9, 13, 15, 16, 1500, 3100, 123_456_789])
def test_the_hot_loop_files_each_time_and_wait_in_time_buckets_bucket(
        monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    """The loop inlines time_bucket for speed: what it files must be what time_bucket
    says, for the exact small buckets and the quarter buckets above them alike."""
    import time

    monkeypatch.setattr(time, "perf_counter_ns", FakeClocks(ns).perf)
    c = core(chain(), ["a"], {"m:a": lambda x, ctx: x}, now=1000.0)
    # born as the batch began; its call began one step of the clock (ns) later: waited ns
    c.process("a", [[1, "source", 1, 0.0, 1, 1, int(1000.0 * 1e9)]])
    stats = c.stats["a"]
    assert {k: n for k, n in enumerate(stats.times) if n} == {time_bucket(ns): 1}
    assert {k: n for k, n in enumerate(stats.waits) if n} == {time_bucket(ns): 1}


def test_busy_time_adds_up_over_batches_and_within_the_time_they_took() -> None:
    import time

    c = core(chain(), ["a"], {"m:a": lambda x, ctx: time.sleep(0.005)})
    started = time.perf_counter()
    for _ in range(3):
        c.process("a", [env(1, 1), env(2, 2)])
    took = time.perf_counter() - started
    assert 6 * 0.005 <= c.stats["a"].busy <= took


def test_a_fused_sink_returns_results() -> None:
    handlers = {"m:b": lambda x, ctx: x + 1, "m:c": lambda x, ctx: x * 10}
    group = core(chain(), ["b", "c"], handlers).process("b", [env(1, 1), env(2, 2)])
    assert [r[PAYLOAD] for r in group.results] == [20, 30] and group.emits == []

    class Sink:
        def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            return [x * 10 for x in xs]

    group = core(chain(), ["c"], {"m:c": Sink}).process("c", [env(1, 1), env(2, 2)])
    assert [r[PAYLOAD] for r in group.results] == [10, 20]


def test_a_batch_handler_must_answer_each_input() -> None:
    class Short:
        def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            return xs[:-1]

    group = core(chain(), ["a"], {"m:a": Short}).process("a", [env(1, 1), env(2, 2)])
    assert group.emits == [] and [f[0][ID] for f in group.failed] == [1, 2]
    assert "ValueError" in group.failed[0][1]


def test_a_batch_handler_numbers_its_children_and_feeds_its_fused_stages() -> None:
    class Fan:
        def handle_batch(self, xs: list[Any], ctx: Any) -> None:
            for x in xs:
                ctx.emit("b", x)

    group = core(chain(), ["a", "b"], {"m:a": Fan, "m:b": lambda x, ctx: x * 10}).process(
        "a", [env(7, 1), env(8, 2)])
    # children of the batch are numbered from its first input; b's go on to c
    assert [(s, e[PAYLOAD]) for s, e in group.emits] == [("c", 10), ("c", 20)]
    alone = core(chain(), ["a"], {"m:a": Fan}).process("a", [env(7, 1), env(8, 2)])
    assert [e[ID] for _, e in alone.emits] == [child_id(7, 0), child_id(7, 1)]


def test_failures_in_a_row_are_each_counted_against_the_stage_that_raised() -> None:
    def a(x: int, ctx: Any) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    def b(x: int, ctx: Any) -> int:
        if x == 13:
            raise KeyError("thirteen")
        return x

    c = core(chain(), ["a", "b"], {"m:a": a, "m:b": b})
    group = c.process("a", [env(1, 1), env(2, -1), env(3, -2), env(4, 13), env(5, 5), env(6, -3)])
    assert [(f[0][ID], f[1].split(":")[0]) for f in group.failed] == [
        (2, "a"), (3, "a"), (4, "b"), (6, "a")]
    assert (c.stats["a"].errors, c.stats["b"].errors) == (3, 1)
    assert group.failed[0][2].startswith("Traceback (most recent call last):\n  File ")
    assert group.failed[0][2].endswith("ValueError: negative\n")


def test_a_message_due_exactly_now_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(time, "perf_counter_ns", FakeClocks(0).perf)  # (now stays now)

    class Batch:
        def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            return xs

    for handlers in ({"m:a": lambda x, ctx: x}, {"m:a": Batch}):
        group = core(chain(), ["a"], handlers, now=1000.0).process(
            "a", [env(1, 1, deadline=1000.0), env(2, 2, deadline=999.5)])
        assert [e[PAYLOAD] for _, e in group.emits] == [1]
        assert [e[ID] for e in group.dropped] == [2]


def test_emitting_where_no_route_goes_names_the_routes_there_are() -> None:
    spec = (Graph("f").acceptor(entry="a", listen="127.0.0.1:0")
            .stage("a", "m:a", to=["b", "c"]).stage("b", "m:b").stage("c", "m:c")).build()
    [(_, error, _)] = core(spec, ["a"], {"m:a": lambda x, ctx: ctx.emit("z", x)}).process(
        "a", [env(1, 1)]).failed
    assert error == "a: HandlerUsageError: stage 'a' has no route to 'z' (its routes: b, c)"


def test_a_batch_handler_times_no_wait_for_unsampled_messages() -> None:
    class Batch:
        def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            return xs

    c = core(chain(), ["a"], {"m:a": Batch})
    c.process("a", [[1, "source", 1, 0.0, 1, 1, 0], [2, "source", 1, 0.0, 2, 2, 0]])
    assert sum(c.stats["a"].waits) == 0 and sum(c.stats["a"].times) == 2


def test_a_large_batch_times_one_message_in_eight_and_a_small_one_every_message() -> None:
    """Service times cost two clock reads and a bucket a message: a fast stage's large
    batches time the messages the queue waits are sampled on (id & SAMPLE == 0); a small
    batch (a slow stage's, or a quiet one's) times each."""
    from seda.engine.stage import SAMPLED_BATCH

    c = core(chain(), ["a"], {"m:a": lambda x, ctx: x})
    large = range(1, SAMPLED_BATCH + 1)
    c.process("a", [env(i, i) for i in large])
    stats = c.stats["a"]
    assert sum(stats.times) == len([i for i in large if not i & SAMPLE]) == SAMPLED_BATCH // 8
    assert sum(stats.waits) == SAMPLED_BATCH  # (env() gives every message a birth time)
    small = range(1000, 1000 + SAMPLED_BATCH - 1)
    c.process("a", [env(i, i) for i in small])
    assert sum(stats.times) == SAMPLED_BATCH // 8 + len(small)
    assert stats.completed == 2 * SAMPLED_BATCH - 1
