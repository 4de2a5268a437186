"""The stage core with async handlers (sans-IO: the test owns the event loop)."""

from __future__ import annotations

import asyncio
from typing import Any

from seda.engine.stage import StageCore, is_coroutine
from seda.engine.wire import ID, PAYLOAD, REQUEST
from seda.spec.builder import Graph
from seda.spec.models import GraphSpec
from tests.test_core import chain, core, env


def service() -> GraphSpec:
    return (Graph("s").acceptor(entry="a").stage("a", "m:a", to=["b"])
            .stage("b", "m:b")).build()


def test_coroutine_functions_are_recognised_in_every_form() -> None:
    async def f(x: Any, ctx: Any) -> Any:
        return x

    class Handler:
        async def handle(self, x: Any, ctx: Any) -> Any:
            return x

    class Callable:
        async def __call__(self, x: Any, ctx: Any) -> Any:
            return x

    assert is_coroutine(f) and is_coroutine(Handler().handle) and is_coroutine(Callable())
    assert not is_coroutine(lambda x, ctx: x) and not is_coroutine(None)
    assert core(chain(), ["a"], {"m:a": Handler}).is_async
    assert not core(chain(), ["a"], {"m:a": lambda x, ctx: x}).is_async


def test_messages_in_flight_at_once_each_have_their_own_context() -> None:
    """Two messages interleave at their awaits: each emit, reply and request id is its
    own message's, and the ids are those the sync path makes for the same input."""
    order: list[str] = []

    async def a(x: Any, ctx: Any) -> None:
        order.append(f"start {x}")
        await asyncio.sleep(0.02 if x == 1 else 0.0)
        order.append(f"end {x}")
        ctx.emit("b", {"x": x, "request": ctx.request_id})

    c = core(chain(), ["a"], {"m:a": a})

    async def both() -> list[Any]:
        return await asyncio.gather(c.run_async("a", env(1, 1)), c.run_async("a", env(2, 2)))

    first, second = asyncio.run(both())
    assert order == ["start 1", "start 2", "end 2", "end 1"]
    assert [e[PAYLOAD] for _, e in first.emits] == [{"x": 1, "request": 1}]
    assert [e[PAYLOAD] for _, e in second.emits] == [{"x": 2, "request": 2}]
    sync = core(chain(), ["a"], {"m:a": lambda x, ctx: ctx.emit("b", {"x": x, "request": 1})})
    assert first.emits[0][1][ID] == sync.process("a", [env(1, 1)]).emits[0][1][ID]
    assert c.stats["a"].completed == 2 and first.handled()[0][ID] == 1


def test_a_sync_stage_fused_behind_an_async_one_runs_in_turn() -> None:
    async def a(x: Any, ctx: Any) -> Any:
        await asyncio.sleep(0)
        return x + 1

    c = core(chain(), ["a", "b"], {"m:a": a, "m:b": lambda x, ctx: x * 10})
    group = asyncio.run(c.run_async("a", env(1, 1)))
    assert [(s, e[PAYLOAD]) for s, e in group.emits] == [("c", 20)]
    assert c.stats["b"].received == 1 and c.stats["b"].completed == 1


def test_an_async_failure_takes_back_its_outputs_and_costs_only_itself() -> None:
    async def a(x: Any, ctx: Any) -> None:
        ctx.emit("b", x)
        await asyncio.sleep(0)
        if x == "bad":
            raise ValueError("no")

    c = core(chain(), ["a"], {"m:a": a})

    async def run() -> list[Any]:
        return await asyncio.gather(c.run_async("a", env(1, "bad")),
                                    c.run_async("a", env(2, "good")))

    bad, good = asyncio.run(run())
    assert bad.emits == [] and bad.inputs == []
    assert [(e[ID], error) for e, error, _ in bad.failed] == [(1, "a: ValueError: no")]
    assert [e[PAYLOAD] for _, e in good.emits] == ["good"] and good.failed == []
    assert c.stats["a"].errors == 1


def test_a_terminal_async_stage_of_a_service_replies_with_its_value() -> None:
    async def b(x: Any, ctx: Any) -> Any:
        await asyncio.sleep(0)
        return {"status": 201, "body": x}

    async def quiet(x: Any, ctx: Any) -> None:
        await asyncio.sleep(0)

    group = asyncio.run(core(service(), ["b"], {"m:b": b}).run_async("b", env(3, "hi")))
    assert [(r[PAYLOAD], r[REQUEST]) for r in group.results] == [
        ({"status": 201, "body": "hi"}, 3)]
    empty = asyncio.run(core(service(), ["b"], {"m:b": quiet}).run_async("b", env(4, "x")))
    assert [r[PAYLOAD] for r in empty.results] == [None]  # an empty reply: 204


def test_expired_and_duplicate_messages_are_not_run() -> None:
    ran: list[Any] = []

    async def c_(x: Any, ctx: Any) -> None:
        ran.append(x)

    c = core(chain(), ["c"], {"m:c": c_}, now=1000.0)
    late = asyncio.run(c.run_async("c", env(1, "late", deadline=999.0)))
    once = asyncio.run(c.run_async("c", env(2, "x")))
    twice = asyncio.run(c.run_async("c", env(2, "x")))
    assert ran == ["x"] and [e[ID] for e in late.dropped] == [1]
    assert once.inputs and [e[ID] for e in twice.dropped] == [2]
    assert c.stats["c"].expired == 1 and c.stats["c"].duplicates == 1


def test_an_async_batch_handler_is_awaited_and_fails_as_one() -> None:
    class Batch:
        async def handle_batch(self, xs: list[Any], ctx: Any) -> list[Any]:
            await asyncio.sleep(0)
            if "bad" in xs:
                raise RuntimeError("batch")
            return [x * 2 for x in xs]

    c = core(chain(), ["a"], {"m:a": Batch})
    assert c.is_async
    group = asyncio.run(c.run_batch_async("a", [env(1, 1), env(2, 2)]))
    assert [e[PAYLOAD] for _, e in group.emits] == [2, 4] and len(group.inputs) == 2
    failed = asyncio.run(c.run_batch_async("a", [env(3, "bad"), env(4, 4)]))
    assert failed.emits == [] and [e[ID] for e, _, _ in failed.failed] == [3, 4]


def test_async_lifecycle_hooks_are_left_to_the_async_twins() -> None:
    calls: list[str] = []

    class Sink:
        async def setup(self, ctx: Any) -> None:
            calls.append("setup")

        def handle(self, x: Any, ctx: Any) -> None:
            calls.append("handle")

        async def finish(self, ctx: Any) -> Any:
            return {"done": True}

        def teardown(self, ctx: Any) -> None:
            calls.append("teardown")

    c = StageCore(chain(), ["c"], 0, lambda ref: Sink)
    assert c.needs_loop and not c.is_async
    c.setup()
    assert calls == []  # the async setup is not called by the sync one
    asyncio.run(c.setup_async())
    assert c.finish() == [] and asyncio.run(c.finish_async()) == [("c", {"done": True})]
    asyncio.run(c.teardown_async())
    c.teardown()
    assert calls == ["setup", "teardown"]


def test_overran_and_expired_groups_say_what_happened() -> None:
    c = core(chain(), ["a"], {"m:a": lambda x, ctx: x})
    over = c.overran("a", [env(1, 1)], 2.5)
    assert over.overran == [(env(1, 1), "a: the handler ran over its time limit (2.5 s)")]
    assert c.expired("a", [env(2, 2)]).dropped == [env(2, 2)]
    assert c.stats["a"].errors == 1 and c.stats["a"].expired == 1


def test_cutoffs_cut_only_the_calls_past_their_limit_or_deadline() -> None:
    """One timer of the loop for every call's cutoff (seda.runtime.aio.Cutoffs): past the
    stage's time limit a call fails without a retry, past its message's deadline it is
    dropped; the calls that end in time keep their results and leave nothing behind."""
    import time

    from seda.runtime.aio import Cutoffs

    async def a(x: Any, ctx: Any) -> Any:
        await asyncio.sleep(x)
        return x

    c = core(chain(), ["a"], {"m:a": a})

    async def run() -> tuple[list[Any], Cutoffs, float]:
        cutoffs = Cutoffs(asyncio.get_running_loop())
        began = time.monotonic()
        groups = await asyncio.gather(
            cutoffs.run(c, "a", [env(1, 0.01)], False, 0.3),     # in time
            cutoffs.run(c, "a", [env(2, 5.0)], False, 0.3),      # past the limit
            cutoffs.run(c, "a", [env(3, 5.0, time.time() + 0.1)], False, 0.3),  # deadline
            cutoffs.run(c, "a", [env(4, 0.05)], False, None))    # no limit at all
        return list(groups), cutoffs, time.monotonic() - began

    (done, over, late, free), cutoffs, took = asyncio.run(run())
    assert [e[PAYLOAD] for e in done.results] == [] and done.handled() == [env(1, 0.01)]
    assert over.overran == [(env(2, 5.0), "a: the handler ran over its time limit (0.3 s)")]
    assert [e[ID] for e in late.dropped] == [3] and not late.overran
    assert free.handled() == [env(4, 0.05)]
    assert took < 2.0  # cut at 0.3 s, not run for their 5 s
    assert cutoffs.calls == {} and cutoffs.fired == {}
    assert c.stats["a"].errors == 1 and c.stats["a"].expired == 1


def test_cutoffs_tell_their_cut_from_a_stop_and_from_a_handlers_own_cancel() -> None:
    from seda.runtime.aio import Cutoffs

    async def swallow(x: Any, ctx: Any) -> Any:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "kept"  # a handler that will not be cancelled

    async def own(x: Any, ctx: Any) -> Any:
        raise asyncio.CancelledError  # its own, not the runtime's

    async def wait(x: Any, ctx: Any) -> Any:
        await asyncio.sleep(5)

    async def run() -> tuple[Any, Any, bool]:
        cutoffs = Cutoffs(asyncio.get_running_loop())
        kept = await cutoffs.run(core(chain(), ["a"], {"m:a": swallow}), "a", [env(1, 0)],
                                 False, 0.1)
        failed = await cutoffs.run(core(chain(), ["a"], {"m:a": own}), "a", [env(2, 0)],
                                   False, 0.1)
        task = asyncio.ensure_future(cutoffs.run(
            core(chain(), ["a"], {"m:a": wait}), "a", [env(3, 0)], False, 10))
        await asyncio.sleep(0.05)
        task.cancel()  # the runtime stops: this is not a cutoff
        try:
            await task
            stopped = False
        except asyncio.CancelledError:
            stopped = True
        assert cutoffs.fired == {} and cutoffs.calls == {}
        return kept, failed, stopped

    kept, failed, stopped = asyncio.run(run())
    assert [e[PAYLOAD] for e in kept.results] == [] and kept.handled() == [env(1, 0)]
    assert failed.failed[0][1] == "a: CancelledError: raised by the handler"
    assert stopped
