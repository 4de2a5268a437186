"""The sans-IO stage core: a batch of envelopes in, emits / results / failures out.

Knows nothing of sockets or processes: the zmq worker drives it today; inline (`sped`, `mp`)
execution can drive the same object. Stages fused into one pool call each other directly
through a local FIFO (no serialisation, no recursion, so allowed cycles cannot blow the stack).

Async handlers (`async def`): a pool with one runs every message through `run_async`, a
coroutine the runtime awaits on an event loop, many at once: each message gets a context of
its own, and fused stages are called (and awaited) in turn. The engine never imports asyncio:
it only awaits what handlers return; the runtime owns the loop, deadlines and time limits.

Theory of operation: each input envelope is processed atomically. Everything it causes -- the
handler's return value, `ctx.emit`, `ctx.reply`, and whatever fused stages do with those -- is
collected in a `Group`. If any handler raises, the group's outputs are thrown away and the
input is reported failed; a retry regenerates the same outputs with the same (deterministic)
ids, so a receiver can recognise a duplicate.
"""

from __future__ import annotations

import inspect
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from msgpack import packb

from seda.calls import handler_is_async, is_coroutine
from seda.engine.config import CONCURRENCY, Graph
from seda.engine.credit import SeenIds
from seda.engine.wire import (
    ATTEMPT,
    BORN,
    DEADLINE,
    ID,
    ID_MASK,
    ID_MIX,
    ONCE,
    ORIGIN,
    PAYLOAD,
    REQUEST,
    SAMPLE,
    Batch,
    Envelope,
    child_id,
    packable,
)
from seda.log import StageLog


def _unpackable(emits: list[tuple[str, Envelope]], results: list[Envelope], limit: int
                ) -> str | None:
    """Why a frame cannot carry one of these outputs' payloads, or None."""
    for target, env in emits:
        why = packable(env[PAYLOAD], limit)
        if why is not None:
            return f"to '{target}': {why}"
    for env in results:
        why = packable(env[PAYLOAD], limit)
        if why is not None:
            return f"as a reply: {why}"
    return None


def _without(batch: Batch, positions: list[int], dropped: list[Envelope]) -> Batch:
    """`batch` without the messages at `positions`, whose envelopes go to `dropped`."""
    if not positions:
        return batch
    dropped.extend(batch.envelope(i) for i in positions)
    skip = set(positions)
    return batch.take([i for i in range(len(batch)) if i not in skip])


class HandlerUsageError(Exception):
    """A handler used the API wrongly (emit to a stage it has no route to, ...)."""


@dataclass(slots=True)
class Group:
    """What one batch caused: the inputs handled, their outputs, and the inputs that failed
    or were dropped (both are finished with at once; handled ones once outputs arrive).
    `inputs` are positions in `batch`, the messages run: a Batch, or the one envelope of an
    async call (see run_async)."""

    inputs: list[int]
    emits: list[tuple[str, Envelope]] = field(default_factory=list)  # to other pools
    results: list[Envelope] = field(default_factory=list)  # envelopes for the origin
    failed: list[tuple[Envelope, str, str]] = field(default_factory=list)  # (env, error, tb)
    dropped: list[Envelope] = field(default_factory=list)  # expired, or duplicate at a sink
    # (env, error): ran past its stage's time limit (async: no retry, answered 504)
    overran: list[tuple[Envelope, str]] = field(default_factory=list)
    # where each input's outputs start in emits and results (run one at a time)
    starts: list[tuple[int, int]] = field(default_factory=list)
    batch: Batch | Envelope | None = None

    def input(self, at: int) -> Envelope:
        """The envelope of the input at position `at` (made on demand: the rare paths)."""
        batch = self.batch
        assert batch is not None
        return batch.envelope(at) if isinstance(batch, Batch) else batch

    def handled(self) -> list[Envelope]:
        """The envelopes of the inputs handled (tests, rare paths)."""
        return [self.input(at) for at in self.inputs]


# the figures a front door (acceptor, mp master) counts and reports, summed by the status
FRONT_FIGURES = ("accepted", "refused", "requests", "responses", "rejected", "timeouts",
                 "failed", "late", "protocol_errors", "idle_closed")


SAMPLED_BATCH = 64  # from this many messages a batch, service times are timed on a sample


def time_bucket(ns: int) -> int:
    """Histogram bucket of a duration in ns: four per power of two (within 25%)."""
    b = ns.bit_length()
    return b * 4 + ((ns >> (b - 3)) & 3) if b > 3 else ns


def bucket_upper(key: int) -> int:
    """The largest duration (ns) that falls in bucket `key`."""
    if key < 16:
        return key
    b, sub = divmod(key, 4)
    return ((5 + sub) << (b - 3)) - 1


@dataclass(slots=True)
class StageStats:
    received: int = 0
    completed: int = 0
    errors: int = 0
    emitted: int = 0
    results: int = 0
    duplicates: int = 0
    expired: int = 0
    busy: float = 0.0
    times: list[int] = field(default_factory=lambda: [0] * 256)  # service: time_bucket -> n
    waits: list[int] = field(default_factory=lambda: [0] * 256)  # queue wait: the same

    def figures(self) -> dict[str, Any]:
        """What a process reports: the counters, and the histograms' non-empty buckets."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                               if f.name not in _HISTOGRAMS}
        for f in _HISTOGRAMS:
            out[f] = {k: n for k, n in enumerate(getattr(self, f)) if n}
        return out


_HISTOGRAMS = ("times", "waits")


class Context:
    """What a handler sees as `ctx`: its options, and emit/reply for the current message."""

    __slots__ = ("_batch", "_core", "_env", "_group", "_i", "_log", "_n", "_pending",
                 "options", "stage", "worker")

    def __init__(self, core: StageCore, stage: str, options: dict[str, Any]) -> None:
        self._core, self.stage, self.options = core, stage, options
        self.worker = core.worker
        # the current message: the i-th of `_batch` (a batch run by the stage core: its
        # envelope is made only if asked for), or `_env` when _batch is None (a message of a
        # fused stage, or of an async pool)
        self._env: Envelope = [0, "", 1, 0.0, None, 0, 0]
        self._batch: Batch | None = None
        self._i = 0
        self._group = Group([])
        self._n = 0
        self._pending = core._pending  # what fused stages are sent, run in turn
        self._log: StageLog | None = None

    @property
    def log(self) -> StageLog:
        """The stage's logger: each record says the stage and the current request."""
        if self._log is None:
            self._log = StageLog(self.stage, lambda: self._message()[REQUEST] & ~ONCE)
        return self._log

    def _message(self) -> Envelope:
        batch = self._batch
        return self._env if batch is None else batch.envelope(self._i)

    def call_mark(self) -> tuple[Any, int]:
        """What tells one call from the next (for the watchdog): the same while one message
        runs, another for the next."""
        batch = self._batch
        return (self._env, 0) if batch is None else (batch, self._i)

    def _fork(self, env: Envelope, group: Group,
              pending: deque[tuple[str, Envelope]] | None = None) -> Context:
        """A context for one message of an async pool: many run at once, each its own."""
        ctx = Context.__new__(Context)
        ctx._core, ctx.stage, ctx.options, ctx.worker = self._core, self.stage, self.options, \
            self.worker
        ctx._env, ctx._group, ctx._n, ctx._log = env, group, 0, None
        ctx._batch, ctx._i = None, 0
        ctx._pending = deque() if pending is None else pending
        return ctx

    @property
    def request_id(self) -> int:
        batch = self._batch
        return int(self._env[ID] if batch is None else batch.ids[self._i])

    @property
    def attempt(self) -> int:
        batch = self._batch
        return int(self._env[ATTEMPT] if batch is None else batch.attempts[self._i])

    def emit(self, stage: str, payload: Any) -> None:
        """Send `payload` to `stage`, which must be one of this stage's routes."""
        if stage not in self._core.routes[self.stage]:
            routes = ", ".join(self._core.routes[self.stage]) or "none"
            raise HandlerUsageError(f"stage '{self.stage}' has no route to '{stage}' "
                                    f"(its routes: {routes})")
        self._core._emit(self, stage, payload)

    def reply(self, payload: Any) -> None:
        """Answer the origin of this message (the client, or the pipeline's output)."""
        self._core._result(self, payload)

    @property
    def can_stream(self) -> bool:
        """Whether `stream` can send parts here: the stage's value is the reply to an HTTP
        client, and the runtime passes parts on (every model does)."""
        return self._core._can_stream(self.stage)

    def stream(self, body: str | bytes, *, status: int = 200,
               headers: dict[str, Any] | None = None) -> None:
        """Send a part of this request's reply now (HTTP chunked transfer coding): the
        first part's `status` and `headers` are the reply's; the handler's value (None,
        text or bytes) is the last part. For replies made over time (server-sent events,
        tokens of a model, a long export): the client gets each part as it is sent."""
        self._core._stream(self, body, status, headers)


class _Runner:
    """One stage's handler, called the way it wants to be called."""

    __slots__ = ("awaits", "batch", "call", "ctx", "is_async", "obj", "returns")

    def __init__(self, obj: Any, ctx: Context, returns: str) -> None:
        self.ctx, self.returns = ctx, returns
        target = obj() if isinstance(obj, type) else obj  # a class: one instance per worker
        self.obj = target
        self.batch: Callable[..., Any] | None = getattr(target, "handle_batch", None)
        self.call: Callable[..., Any] = getattr(target, "handle", target)
        # handle (or handle_batch) is a coroutine function: the pool runs on an event loop
        self.is_async = handler_is_async(target)
        self.awaits = is_coroutine(self.call)  # handle itself is a coroutine function


LIFECYCLE = ("setup", "teardown", "finish")


def return_route(spec: Graph, stage: str) -> str:
    """Where a handler's return value goes: '->next', 'reply', 'result', 'drop' or 'error'."""
    s = spec.stages[stage]
    if len(s.to) == 1:
        return "->" + s.to[0]
    if s.to:
        return "error"
    if s.sink:
        return "result" if not spec.is_service else "drop"
    return "reply"


class StageCore:
    """Runs the stages of one pool for one worker. `resolve` turns import strings into
    objects (injected so tests can pass plain functions)."""

    def __init__(self, spec: Graph, stages: Iterable[str], worker: int,
                 resolve: Callable[[str], Any], clock: Callable[[], float] = time.time,
                 dedup_window: int = 1 << 18) -> None:
        self.spec, self.worker, self.clock = spec, worker, clock
        self._pending: deque[tuple[str, Envelope]] = deque()
        self.local = tuple(stages)
        self.routes = {s: tuple(spec.stages[s].to) for s in spec.stages}
        self.stats = {s: StageStats() for s in self.local}
        self.runners = {s: _Runner(resolve(spec.stages[s].handler),
                                   Context(self, s, dict(spec.stages[s].options)),
                                   return_route(spec, s)) for s in self.local}
        self.sinks = {s for s in self.local if spec.stages[s].sink}
        # sinks that build a value in memory for finish(): that state dies with the process
        self.keeps = sorted(s for s in self.sinks if hasattr(self.runners[s].obj, "finish"))
        self.seen = SeenIds(dedup_window)
        self.max_bytes = spec.settings.max_message_bytes  # the most one payload may pack to
        # where the parts of streamed replies go (ctx.stream), set by the runtime: to the
        # front door, at once or in PART frames; None: this runtime does not stream
        self.streamer: Callable[[str, list[Any]], None] | None = None
        self.streams = spec.acceptor is not None and spec.acceptor.protocol == "http"
        self._parts: dict[int, int] = {}  # message id -> parts it has sent in this run
        # the stage whose handler runs now ('' between batches): the watchdog reads it, with
        # that stage's ctx.call_mark(), to see how long one call has run (see
        # seda.runtime.watchdog)
        self.running = ""
        # an async handler anywhere in the pool: every message goes through run_async
        self.is_async = any(r.is_async for r in self.runners.values())
        # messages it runs at once (its credit window): a message's time counts as busy
        # for 1/slots of the worker, so a worker with every slot taken is 100% busy
        self.slots = max((spec.stages[s].concurrency or CONCURRENCY for s in self.local),
                         default=CONCURRENCY)
        # an async setup/teardown/finish: the runtime needs a loop for those, too
        self.needs_loop = self.is_async or any(
            is_coroutine(getattr(r.obj, name, None))
            for r in self.runners.values() for name in LIFECYCLE)

    # ---------------------------------------------------------------- lifecycle
    # An async setup/teardown/finish is left to the *_async twin, which the runtime awaits
    # on its loop; the plain one calls the sync ones. A runtime with a loop calls both.
    def _hooks(self, name: str, want_async: bool) -> list[tuple[str, Any]]:
        return [(stage, getattr(r.obj, name)) for stage, r in self.runners.items()
                if (name != "finish" or stage in self.sinks) and hasattr(r.obj, name)
                and is_coroutine(getattr(r.obj, name)) == want_async]

    def setup(self) -> None:
        for stage, hook in self._hooks("setup", False):
            hook(self.runners[stage].ctx)

    async def setup_async(self) -> None:
        for stage, hook in self._hooks("setup", True):
            await hook(self.runners[stage].ctx)

    def teardown(self) -> None:
        for stage, hook in self._hooks("teardown", False):
            hook(self.runners[stage].ctx)

    async def teardown_async(self) -> None:
        for stage, hook in self._hooks("teardown", True):
            await hook(self.runners[stage].ctx)

    def finish(self) -> list[tuple[str, Any]]:
        """End of a pipeline: each sink's `finish(ctx)` value, as (stage, value)."""
        values = [(stage, hook(self.runners[stage].ctx))
                  for stage, hook in self._hooks("finish", False)]
        return [(stage, value) for stage, value in values if value is not None]

    async def finish_async(self) -> list[tuple[str, Any]]:
        values = [(stage, await hook(self.runners[stage].ctx))
                  for stage, hook in self._hooks("finish", True)]
        return [(stage, value) for stage, value in values if value is not None]

    # ---------------------------------------------------------------- processing
    def process(self, stage: str, batch: Batch | list[Envelope]) -> Group:
        """Run `batch` (all for `stage`, from outside this pool; envelopes are made into a
        Batch) and return what it caused. Each input is atomic: a handler that raises takes
        back that input's outputs."""
        if type(batch) is list:
            batch = Batch.of(batch)
        assert type(batch) is Batch
        stats = self.stats[stage]
        stats.received += len(batch)
        group = Group([])
        batch = group.batch = self._fresh(stage, batch, group.dropped)
        started = time.perf_counter()
        runner = self.runners[stage]
        if runner.batch is not None:
            batch = group.batch = self._unexpired(stage, batch, group.dropped)
            self._run_batch(stage, runner, batch, group)
        else:
            self._run_each(stage, runner, batch, group)
        self.running = ""
        if group.emits or group.results:
            self._check_packable(stage, group)
        stats.busy += time.perf_counter() - started
        if self._parts:  # (the batch streamed: its counts of parts end with it)
            self._parts.clear()
        return group

    def _check_packable(self, stage: str, group: Group) -> None:
        """Every payload leaving this pool must be one a frame can carry: of a type msgpack
        has, and no larger than settings.max_message_bytes. Checked once per batch (one
        packb call, not one per message: that cost ~10% of a fast stage); if the batch does
        not pack, or packs larger than one payload may be, the inputs whose outputs do not
        fit are failed like any handler error (their outputs withdrawn), and the others go
        on."""
        try:
            blob = packb([[e[PAYLOAD] for _, e in group.emits],
                          [e[PAYLOAD] for e in group.results]], use_bin_type=True)
            if len(blob) <= self.max_bytes:  # then every payload in it fits too
                return
        except (TypeError, ValueError, OverflowError):
            pass
        limit = self.max_bytes
        if len(group.starts) != len(group.inputs):  # a batch handler's batch fails as one
            why = _unpackable(group.emits, group.results, limit)
            if why is not None:
                for at in group.inputs:
                    self._unpackable_input(stage, group.input(at), why, group)
                group.inputs, group.emits, group.results = [], [], []
            return
        bounds = [*group.starts, (len(group.emits), len(group.results))]
        inputs: list[int] = []
        emits: list[tuple[str, Envelope]] = []
        results: list[Envelope] = []
        starts: list[tuple[int, int]] = []
        for i, at in enumerate(group.inputs):
            (e0, r0), (e1, r1) = bounds[i], bounds[i + 1]
            why = _unpackable(group.emits[e0:e1], group.results[r0:r1], limit)
            if why is not None:
                self._unpackable_input(stage, group.input(at), why, group)
                continue
            starts.append((len(emits), len(results)))
            inputs.append(at)
            emits.extend(group.emits[e0:e1])
            results.extend(group.results[r0:r1])
        group.inputs, group.emits, group.results, group.starts = inputs, emits, results, starts

    def _unpackable_input(self, stage: str, env: Envelope, why: str, group: Group) -> None:
        error = HandlerUsageError(f"stage '{stage}' (or a stage fused with it) sent a payload "
                                  f"no frame can carry {why}")
        self.stats[stage].errors += 1
        self.stats[stage].completed -= 1
        group.failed.append((env, f"{stage}: {type(error).__name__}: {error}", ""))

    def _run_each(self, stage: str, runner: _Runner, batch: Batch, group: Group) -> None:
        """The hot loop: one handler call per message, read from the batch's columns (no
        envelope is made for it), locals hoisted out of the loop. A returned value's usual
        routes -- on to a stage of another pool, or back to the origin -- are inlined here
        (what _emit and _result do); the rest go through _route_return."""
        call, ctx, route = runner.call, runner.ctx, self._route_return
        returns = runner.returns
        replies = returns == "reply"  # a request always gets an answer here
        onward = returns[2:] if returns[:2] == "->" and returns[2:] not in self.runners \
            else ""
        answers = replies or returns == "result"
        emits, results, inputs, pending = group.emits, group.results, group.inputs, \
            self._pending
        starts = group.starts
        stats = self.stats[stage]
        times, waits, clock, wall_ns = stats.times, stats.waits, time.perf_counter_ns, \
            time.time_ns
        origins, requests = batch.origins, batch.requests
        ctx._group, ctx._batch = group, batch
        done = made = 0
        # service times: every message's in a small batch; in a large one (a fast stage's),
        # those of one message in eight, chosen by id as the queue waits are (timing every
        # message cost a fast stage about a tenth of its Python: see
        # docs/measurements/columns-2026-12-08.md)
        sample = SAMPLE if len(batch) >= SAMPLED_BATCH else 0
        now = clock()
        wall = int(self.clock() * 1e9) - now  # + a perf_counter_ns reading = wall clock
        self.running = stage
        columns = zip(batch.ids, batch.deadlines, batch.borns, batch.payloads, strict=True)
        for i, (msg_id, due, born, payload) in enumerate(columns):
            timed = not msg_id & sample
            if timed:  # (`now` is then this message's start; else a timed one's before it)
                now = clock()
            if due and due * 1e9 < now + wall:  # past its deadline: dropped, unrun
                stats.expired += 1
                group.dropped.append(batch.envelope(i))
                continue
            if born:  # set on a sample of messages (the timed ones): their queue wait
                ns = now + wall - born
                if ns >= 0:  # (< 0: the wall clock was set back)
                    b = ns.bit_length()  # time_bucket(ns), inlined on the hot path
                    waits[b * 4 + ((ns >> (b - 3)) & 3) if b > 3 else ns] += 1
            marks = len(emits), len(results)
            ctx._i, ctx._n = i, 0
            try:
                value = call(payload, ctx)
                if value is not None and (onward or answers):
                    # child_id(msg_id, ctx._n), inlined
                    cid = ((msg_id * 1_000_003) ^ ((ctx._n + 1) * ID_MIX)) & ID_MASK
                    if onward:
                        emits.append((onward, [cid, origins[i], 1, due, value, requests[i],
                                               0 if cid & SAMPLE else wall_ns()]))
                    else:
                        results.append([cid, origins[i], 1, 0.0, value, requests[i], 0])
                    made += 1
                elif value is not None or (replies and not ctx._n):
                    route(stage, ctx, value)
                done += 1
                if pending:
                    self._drain_local(group)
                    self.running = stage
                    ctx._batch = batch  # (a fused stage may be this one: its ctx moved)
                inputs.append(i)
                starts.append(marks)
                if timed:
                    ns = clock() - now
                    b = ns.bit_length()  # time_bucket(ns), inlined on the hot path
                    times[b * 4 + ((ns >> (b - 3)) & 3) if b > 3 else ns] += 1
            except Exception as exc:
                del emits[marks[0]:], results[marks[1]:]
                group.failed.append((batch.envelope(i), *self._failure(exc)))
                self.running = stage
                ctx._batch = batch
        stats.completed += done
        if onward:
            stats.emitted += made
        else:
            stats.results += made

    def _fresh(self, stage: str, batch: Batch, dropped: list[Envelope]) -> Batch:
        """Drop duplicates at sinks (a re-run upstream re-sends)."""
        if stage not in self.sinks:
            return batch
        repeats = self.seen.repeats(batch.ids)
        self.stats[stage].duplicates += len(repeats)
        return _without(batch, repeats, dropped)

    def _unexpired(self, stage: str, batch: Batch, dropped: list[Envelope]) -> Batch:
        """Drop messages past their deadline (a batch handler runs the rest at once; one
        message at a time, each is checked as its turn comes)."""
        now = self.clock()
        late = [i for i, due in enumerate(batch.deadlines) if due and due < now]
        self.stats[stage].expired += len(late)
        return _without(batch, late, dropped)

    def _run_batch(self, stage: str, runner: _Runner, batch: Batch, group: Group) -> None:
        if not len(batch):
            return
        ctx = runner.ctx
        ctx._batch, ctx._i, ctx._group, ctx._n = batch, 0, group, 0
        self.running = stage
        try:
            assert runner.batch is not None
            self._waited(stage, batch)
            start = time.perf_counter_ns()
            values = runner.batch(list(batch.payloads), ctx)
            key = time_bucket((time.perf_counter_ns() - start) // len(batch))  # the mean
            self.stats[stage].times[key] += len(batch)
            if values is not None:
                self._route_values(stage, runner, ctx, batch, values)
            self.stats[stage].completed += len(batch)
            self._drain_local(group)
            group.inputs.extend(range(len(batch)))
        except Exception as exc:
            group.emits.clear()
            group.results.clear()
            failure = self._failure(exc)
            group.failed.extend((env, *failure) for env in batch.envelopes())

    def _route_values(self, stage: str, runner: _Runner, ctx: Context, batch: Batch,
                      values: Any) -> None:
        """A batch handler's values, one a message, each routed as its message's."""
        replies = runner.returns == "reply"
        ctx._batch = batch
        for i, value in zip(range(len(batch)), values, strict=True):
            if value is not None or replies:
                ctx._i, ctx._n = i, 0
                self._route_return(stage, ctx, value)

    def _call(self, stage: str, env: Envelope, group: Group) -> None:
        runner = self.runners[stage]
        ctx = runner.ctx
        ctx._env, ctx._batch, ctx._group, ctx._n = env, None, group, 0
        self.running = stage
        start = time.perf_counter_ns()
        value = runner.call(env[PAYLOAD], ctx)
        self.stats[stage].times[time_bucket(time.perf_counter_ns() - start)] += 1
        if value is not None or (runner.returns == "reply" and not ctx._n):
            self._route_return(stage, ctx, value)
        self.stats[stage].completed += 1

    def _route_return(self, stage: str, ctx: Context, value: Any) -> None:
        """Route a handler's value. None only gets here at a terminal stage of a service
        whose handler neither replied nor emitted: it becomes an empty reply."""
        route = self.runners[stage].returns
        if route[:2] == "->":
            self._emit(ctx, route[2:], value)
        elif route == "reply" or route == "result":
            self._result(ctx, value)
        elif route == "error":
            raise HandlerUsageError(f"stage '{stage}' returned a value but has several routes; "
                                    f"use ctx.emit(stage, payload) to choose one")

    def _emit(self, ctx: Context, stage: str, payload: Any) -> None:
        env = ctx._message()
        cid = child_id(env[ID], ctx._n)
        child = [cid, env[ORIGIN], 1, env[DEADLINE], payload, env[REQUEST],
                 0 if cid & SAMPLE else time.time_ns()]
        ctx._n += 1
        self.stats[ctx.stage].emitted += 1
        if stage in self.runners:
            ctx._pending.append((stage, child))
        else:  # msgpack must carry it: checked once per batch (see _check_packable)
            ctx._group.emits.append((stage, child))

    def _result(self, ctx: Context, payload: Any) -> None:
        env = ctx._message()
        result_id = child_id(env[ID], ctx._n)
        ctx._n += 1
        self.stats[ctx.stage].results += 1
        ctx._group.results.append([result_id, env[ORIGIN], 1, 0.0, payload, env[REQUEST], 0])

    def _can_stream(self, stage: str) -> bool:
        return self.streams and self.streamer is not None and \
            self.runners[stage].returns == "reply"

    def _stream(self, ctx: Context, body: str | bytes, status: int,
                headers: dict[str, Any] | None) -> None:
        if not self._can_stream(ctx.stage):
            raise HandlerUsageError(f"stage '{ctx.stage}' cannot stream: only the stage whose "
                                    f"value is the reply to an HTTP client can "
                                    f"(ctx.can_stream says)")
        data = body.encode() if isinstance(body, str) else bytes(body)
        if len(data) > self.max_bytes:
            raise HandlerUsageError(f"a part of {len(data)} bytes is over "
                                    f"settings.max_message_bytes ({self.max_bytes}): send "
                                    f"smaller parts")
        env = ctx._message()
        seq = self._parts.get(env[ID], 0)
        self._parts[env[ID]] = seq + 1
        head = {"status": status, "headers": dict(headers or {})} if seq == 0 else None
        assert self.streamer is not None
        self.streamer(env[ORIGIN], [env[REQUEST], seq, head, data])

    def _drain_local(self, group: Group) -> None:
        """Run what fused stages emitted to each other, first in first out."""
        while self._pending:
            stage, env = self._pending.popleft()
            self.stats[stage].received += 1
            self._call(stage, env, group)

    def _failure(self, exc: Exception, failed_in: str = "") -> tuple[str, str]:
        """Count the error against the stage that raised (the one running: a fused stage's
        failure is its own); (message, traceback)."""
        if not failed_in:  # (a sync batch: what it sent to fused stages is dropped)
            failed_in = self.running
            self._pending.clear()
        self.stats[failed_in].errors += 1
        message = f"{failed_in}: {type(exc).__name__}: {exc}"
        return message, "".join(traceback.format_exception(exc))

    # ---------------------------------------------------------------- async pools
    async def run_async(self, stage: str, env: Envelope) -> Group:
        """One message through a pool with async handlers, awaited on the runtime's loop
        (many at once: each has its own context). Like `process` for one input: its outputs,
        or its failure, or its drop; a sync handler fused in the pool is called in turn.
        Cancelling it (a deadline, a time limit) is the runtime's: CancelledError passes.
        (Per request of an inline ASGI app, so the checks of _fresh, _unexpired and _waited
        are written out here for the one message.)"""
        group = Group([])
        group.batch = env
        stats = self.stats[stage]
        stats.received += 1
        if stage in self.sinks and not self.seen.first_time(env[ID]):
            stats.duplicates += 1
            group.dropped.append(env)
            return group
        now = self.clock()
        due, born = env[DEADLINE], env[BORN]
        if due and due < now:
            stats.expired += 1
            group.dropped.append(env)
            return group
        if born and (ns := int(now * 1e9) - born) >= 0:
            stats.waits[time_bucket(ns)] += 1
        runner = self.runners[stage]
        ctx = runner.ctx._fork(env, group)
        at, started = stage, time.perf_counter()
        try:
            await self._call_async(stage, runner, ctx, env)
            while ctx._pending:  # what it sent to fused stages, first in first out
                at, child = ctx._pending.popleft()
                self.stats[at].received += 1
                fused = self.runners[at]
                await self._call_async(at, fused, fused.ctx._fork(child, group, ctx._pending),
                                       child)
                if self._parts:
                    self._parts.pop(child[ID], None)
            group.inputs.append(0)
            group.starts.append((0, 0))
        except Exception as exc:
            group.emits.clear()
            group.results.clear()
            group.failed.append((env, *self._failure(exc, at)))
        finally:  # (a cancelled message held its slot too)
            stats.busy += (time.perf_counter() - started) / self.slots
            if self._parts:  # (it streamed: its count of parts ends with it)
                self._parts.pop(env[ID], None)
        if group.emits or group.results:
            self._check_packable(stage, group)
        return group

    async def run_batch_async(self, stage: str, envs: list[Envelope]) -> Group:
        """A batch for a stage with `handle_batch` (async or not) in an async pool: one call,
        failed as one, as `process` does."""
        group = Group([])
        self.stats[stage].received += len(envs)
        batch = self._unexpired(stage, self._fresh(stage, Batch.of(envs), group.dropped),
                                group.dropped)
        group.batch = batch
        if not len(batch):
            return group
        self._waited(stage, batch)
        runner = self.runners[stage]
        assert runner.batch is not None
        ctx = runner.ctx._fork(envs[0], group)
        ctx._batch = batch  # (its message is the batch's first, as in a sync batch)
        at, started = stage, time.perf_counter()
        try:
            start = time.perf_counter_ns()
            values = runner.batch(list(batch.payloads), ctx)
            if inspect.isawaitable(values):
                values = await values
            key = time_bucket((time.perf_counter_ns() - start) // len(batch))
            self.stats[stage].times[key] += len(batch)
            if values is not None:
                self._route_values(stage, runner, ctx, batch, values)
            self.stats[stage].completed += len(batch)
            while ctx._pending:
                at, child = ctx._pending.popleft()
                self.stats[at].received += 1
                fused = self.runners[at]
                await self._call_async(at, fused, fused.ctx._fork(child, group, ctx._pending),
                                       child)
            group.inputs.extend(range(len(batch)))
        except Exception as exc:
            group.emits.clear()
            group.results.clear()
            failure = self._failure(exc, at)
            group.failed.extend((env, *failure) for env in batch.envelopes())
        finally:
            self.stats[stage].busy += (time.perf_counter() - started) * len(batch) / self.slots
            if self._parts:
                for msg_id in batch.ids:
                    self._parts.pop(msg_id, None)
        if group.emits or group.results:
            self._check_packable(stage, group)
        return group

    def _waited(self, stage: str, batch: Batch) -> None:
        """Queue waits of the sampled messages (those with a birth time)."""
        waits, now = self.stats[stage].waits, int(self.clock() * 1e9)
        for born in batch.borns:
            if born and now >= born:
                waits[time_bucket(now - born)] += 1

    async def _call_async(self, stage: str, runner: _Runner, ctx: Context,
                          env: Envelope) -> None:
        start = time.perf_counter_ns()
        value = runner.call(env[PAYLOAD], ctx)
        if runner.awaits or inspect.isawaitable(value):  # (else: a sync handler fused in)
            value = await value
        stats = self.stats[stage]
        stats.times[time_bucket(time.perf_counter_ns() - start)] += 1
        stats.completed += 1
        if value is not None or (runner.returns == "reply" and not ctx._n):
            self._route_return(stage, ctx, value)

    def overran(self, stage: str, envs: list[Envelope], limit: float) -> Group:
        """Messages whose call (async) ran past their stage's time limit: they fail without
        a retry (504 to their clients), their outputs withdrawn."""
        self.stats[stage].errors += len(envs)
        why = f"{stage}: the handler ran over its time limit ({limit:g} s)"
        return Group([], overran=[(env, why) for env in envs])

    def expired(self, stage: str, envs: list[Envelope]) -> Group:
        """Messages whose deadline passed while their call (async) ran: cancelled, dropped."""
        self.stats[stage].expired += len(envs)
        return Group([], dropped=list(envs))
