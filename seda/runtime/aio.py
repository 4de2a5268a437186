"""The event loop of a worker whose pool has async handlers: a `Lane`.

A worker's own loop is a ZeroMQ poll loop (its sockets belong to its main thread). A pool
with an `async def` handler gets a second thread that runs an asyncio event loop (uvloop
where installed): the worker hands it each frame's messages, the lane runs each as a task
(up to the credit window at once: the stage's `concurrency`), and hands back, per message,
the group of outputs it made -- or its failure, or its drop -- for the main thread to send
and acknowledge exactly as a sync batch's. The hand-over is a deque each way and a pipe
that wakes the main thread's poller when a group is ready (written once per burst).

Time: a message's deadline (a service's request_timeout) and its stage's `timeout` both
bound its task. Past the deadline it is cancelled and dropped (the client has had its 504
from the acceptor); past the time limit it is cancelled and fails without a retry (504).
A handler that blocks the loop (a sync call inside `async def`) stops every task of the
worker: the lane's heartbeat stops, and the worker ends itself once it is older than the
shortest time limit (see Worker.step); the supervisor starts a fresh one and what it held
goes out again as suspects, so a message that blocks every time is caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

from seda.engine.config import Graph
from seda.engine.stage import Group, StageCore
from seda.engine.wire import DEADLINE, Envelope

T = TypeVar("T")
BEAT_EVERY = 0.05  # s between the loop's heartbeats


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Lane:
    def __init__(self, core: StageCore, spec: Graph) -> None:
        self.core = core
        self.limits = {s: spec.call_limit(s) for s in core.local}
        self.loop = new_loop()
        self.cutoffs = Cutoffs(self.loop)
        # loop -> main, in the order they were made: (tag, group) when a message is through
        # (the tag its frame was submitted with), (origin, row) for a part of a streamed
        # reply (sent before its reply)
        self.done: deque[tuple[Any, Group | list[Any]]] = deque()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.signalled = False  # a wake-up byte is in the pipe
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0  # messages handed over and not yet back (main thread's count)
        self.beat = time.monotonic()
        self.thread = threading.Thread(target=self._serve, name="seda-async", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ main thread
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the lane's loop and wait for it (setup, finish, teardown)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def submit(self, tag: Any, stage: str, envs: list[Envelope]) -> None:
        """Run a frame's messages; each one's group comes back with `tag` (see collect)."""
        self.in_flight += len(envs)
        self.loop.call_soon_threadsafe(self._start, tag, stage, envs)

    def collect(self) -> list[tuple[Any, Group | list[Any]]]:
        """The groups that are ready. (Order matters: the pipe is emptied, then the flag
        cleared, then the deque: a group added meanwhile is either taken now or wakes the
        poller again.)"""
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 4096)
        self.signalled = False
        out = []
        while self.done:
            out.append(self.done.popleft())
        self.in_flight -= sum(len(g.inputs) + len(g.failed) + len(g.dropped) + len(g.overran)
                              for _, g in out if type(g) is Group)
        return out

    def stalled(self) -> float:
        """Seconds since the loop's last heartbeat (more than a few ms: something blocks it)."""
        return time.monotonic() - self.beat

    def stop(self) -> None:
        async def cancel() -> None:
            for task in list(self.tasks):
                task.cancel()

        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(1.0)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(1.0)
        os.close(self.wake_r)
        os.close(self.wake_w)

    # ------------------------------------------------------------ the loop's thread
    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._heartbeat)
        self.loop.run_forever()

    def _heartbeat(self) -> None:
        self.beat = time.monotonic()
        self.loop.call_later(BEAT_EVERY, self._heartbeat)

    def _start(self, tag: Any, stage: str, envs: list[Envelope]) -> None:
        if self.core.runners[stage].batch is not None:  # handle_batch: one call, one task
            self._spawn(self._run(tag, stage, envs, True))
        else:
            for env in envs:
                self._spawn(self._run(tag, stage, [env], False))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, tag: Any, stage: str, envs: list[Envelope], batch: bool) -> None:
        group = await self.cutoffs.run(self.core, stage, envs, batch, self.limits[stage])
        self.done.append((tag, group))
        self._wake()

    def part(self, origin: str, row: list[Any]) -> None:
        """The core's streamer: a part of a streamed reply, for the main thread to send."""
        self.done.append((origin, row))
        self._wake()

    def _wake(self) -> None:
        if not self.signalled:
            self.signalled = True
            with contextlib.suppress(BlockingIOError):
                os.write(self.wake_w, b"!")


class Cutoffs:
    """The time limits of the calls a loop runs: each call's cutoff (the earlier of its
    messages' deadline and its stage's time limit) is kept here, and one timer of the loop,
    armed at the soonest cutoff, cancels the calls past theirs. A call that ends in time
    (nearly all) costs a dict entry set and popped: asyncio.timeout, a timer per call, cost
    ~5 us a call, ~8% of a small ASGI request served inline. For every runtime that runs
    async pools: a worker's lane, an inline front door (sped, symped), an mp connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls: dict[asyncio.Task[Any], tuple[float, bool]] = {}  # (cutoff, it is the
        # stage's time limit), monotonic; by the task that runs the call
        self.fired: dict[asyncio.Task[Any], bool] = {}  # cancelled by us, not yet told
        self.timer: asyncio.TimerHandle | None = None
        self.armed = float("inf")  # when the timer goes off

    async def run(self, core: StageCore, stage: str, envs: list[Envelope], batch: bool,
                  limit: float | None) -> Group:
        """`envs` through an async pool's `stage` (one message, or a batch for
        handle_batch) within the earliest of their deadlines and the stage's time limit:
        past the deadline they are dropped, past the limit they fail without a retry
        (504)."""
        task = asyncio.current_task()
        assert task is not None
        due = min((env[DEADLINE] for env in envs if env[DEADLINE]), default=0.0)
        left = due - time.time() if due else None
        wait = limit if left is None or (limit is not None and limit <= left) else left
        if wait is not None:
            cutoff = time.monotonic() + wait
            self.calls[task] = (cutoff, wait == limit)
            if cutoff < self.armed:
                self._arm(cutoff)
        try:
            group = await (core.run_batch_async(stage, envs) if batch
                           else core.run_async(stage, envs[0]))
        except asyncio.CancelledError:
            over = self.fired.pop(task, None)
            if over is None:
                if task.cancelling():
                    raise  # the runtime stops
                # the handler let a CancelledError of its own out: a failure like any other
                core.stats[stage].errors += 1
                return Group([], failed=[(env, f"{stage}: CancelledError: raised by the "
                                               f"handler", "") for env in envs])
            task.uncancel()
            assert limit is not None or not over
            return core.overran(stage, envs, limit) if over and limit is not None \
                else core.expired(stage, envs)
        finally:
            self.calls.pop(task, None)
        if self.fired.pop(task, None) is not None:  # it was cut, and swallowed the
            task.uncancel()                         # cancellation: what it made stands
        return group

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed = when
        # (monotonic and the loop's clock are the same clock in asyncio and uvloop; a
        # hair late rather than early: the check below compares with monotonic)
        self.timer = self.loop.call_at(when + 0.001, self._check)

    def _check(self) -> None:
        self.timer, self.armed = None, float("inf")
        now, soonest = time.monotonic(), float("inf")
        for task, (cutoff, over) in list(self.calls.items()):
            if cutoff <= now:
                del self.calls[task]
                if not task.done():
                    self.fired[task] = over
                    task.cancel()
            elif cutoff < soonest:
                soonest = cutoff
        if soonest != float("inf"):
            self._arm(soonest)
