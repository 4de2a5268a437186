"""The sans-IO stage core: handler styles, routing of return values, fusion, failures."""

from __future__ import annotations

from typing import Any

import pytest

from seda.core import StageCore
from seda.envelope import ID, PAYLOAD
from seda.graph import Graph
from seda.spec import GraphSpec


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
    assert [e[ID] for e in group.inputs] == []
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
    assert [e[ID] for e in group.inputs] == [1, 3]
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
    assert [e[ID] for e in group.inputs] == [*range(10), 11]
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
    assert [e[ID] for e in group.inputs] == [1, 3]
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
    assert [e[ID] for e in group.inputs] == [2]
    assert [e[ID] for e in group.dropped] == [1]
    assert c.stats["a"].expired == 1


def test_a_message_that_expires_while_others_run_is_dropped_at_its_turn() -> None:
    import time as _time

    c = StageCore(chain(), ["a"], 0, lambda ref: lambda x, ctx: _time.sleep(0.05) or x)
    soon = _time.time() + 0.02  # passes while the first message runs
    group = c.process("a", [env(1, 1), env(2, 2, deadline=soon), env(3, 3)])
    assert [e[ID] for e in group.inputs] == [1, 3] and [e[ID] for e in group.dropped] == [2]
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
    from seda.envelope import unpack_data
    from seda.errors import ProtocolError

    with pytest.raises(ProtocolError):
        unpack_data(bad, 1 << 20)


def test_oversized_frames_are_refused() -> None:
    from seda.envelope import pack, unpack_data
    from seda.errors import ProtocolError

    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        unpack_data(pack(["s", [[1, "o", 1, 0.0, "x" * 200, 1, 1]], 0]), 100)




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

    from seda.core import bucket_upper
    from seda.status import percentiles

    c = StageCore(chain(), ["a"], 0, lambda ref: lambda m, ctx: _time.sleep(0.02))
    born = _time.time_ns() - 50_000_000
    c.process("a", [[i, "source", 1, 0.0, "x", i, born] for i in range(3)])
    waits = {k: n for k, n in enumerate(c.stats["a"].waits) if n}
    assert sum(waits.values()) == 3
    ms = sorted(bucket_upper(k) / 1e6 for k, n in waits.items() for _ in range(n))
    assert 50 <= ms[0] <= 70 and 90 <= ms[2] <= 130, ms
    assert percentiles(waits)["p50"] >= 70
