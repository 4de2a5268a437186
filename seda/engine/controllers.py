"""SEDA's controllers, pure: state + samples (+ an injected clock) -> decisions.

No IO and no processes here: the acceptor drives the admission controller, and tests drive
every controller with synthetic traces (tests/simulated.py: a simulated server). Each rule
and its constants are in docs/overload.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seda.engine.config import RequestClass


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of `values` (nearest rank), 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


EARLY_EVERY = 20  # responses between looks at a window that is not yet full
EARLY_FACTOR = 2.0  # a window whose p90 is already this far over the target is judged now
MIN_IN_FLIGHT = 2.0  # the admission controller's in-flight limit never goes below this
ROOMY = 0.5  # a p90 under this share of the target leaves room for more in flight


def _lower(new: float | None, old: float | None) -> bool:
    """Is limit `new` tighter than `old`? (None: no limit.)"""
    return (math.inf if new is None else new) < (math.inf if old is None else old)


@dataclass
class Decision:
    """One adjustment of a controller, for the log and the views."""

    at: float
    what: str  # "cut" | "raise" | "open"
    p90: float  # seconds, of the window that led to it
    rate: float | None  # req/s after it (None: no limit)
    limit: float | None = None  # admitted requests in flight after it (None: no limit)

    def describe(self, target: float) -> str:
        rate = "no limit" if self.rate is None else f"{self.rate:,.1f} req/s"
        room = "" if self.limit is None else f", at most {self.limit:,.0f} in flight"
        return (f"admission: p90 {self.p90 * 1000:.0f} ms against a {target * 1000:.0f} ms "
                f"target -> {self.what} to {rate}{room}")


@dataclass
class AdmissionController:
    """Admit requests at a rate that keeps the 90th-percentile response time under `target`
    (after Welsh and Culler's adaptive overload control in SEDA; the rule is AIMD with a fast
    return to the last known capacity, as TCP's slow start returns to its threshold).

    Response times of admitted requests are collected into a window -- only requests
    admitted since the last change of rate, so a cut is judged by what it caused, not by the
    backlog before it. Every `samples` responses, or every `period` seconds with at least
    one, the window's p90 is compared with the target:

    - above `cut_above` x target, the server is saturated and the responses per second of
      the window estimate its capacity (an estimate that falls by at most a tenth a window:
      see `_next_rate`): the rate becomes that capacity times `headroom` x target / p90,
      bounded to [`deepest_cut`, `headroom`] x capacity, so the backlog drains (the further
      over the target, the deeper the cut);
    - below `raise_below` x target, and if the window answered about as many requests as
      it admitted (else a backlog is building that the p90 will show only later), the
      rate grows: straight back to `headroom` x the last capacity measured (the backlog a
      cut drains is gone once the p90 is low), then by `increase_share` of itself (plus
      `increase` req/s) per second -- probing slowly past what is known to work. With no
      `max_rate`, a rate past twice the best throughput seen opens the door again;
    - in between, it holds (hysteresis).

    There is no rate at first (the door is open) unless `max_rate` is set, which is also a
    ceiling. A token bucket (`burst` seconds' worth of tokens) spends the rate. Rejected
    requests are never timed: the p90 is that of the answers clients get.

    The rate acts late: a window's p90 shows a queue only once the requests in it have
    waited through it. So a second gate acts on the queue as it is: once a window has been
    over the target, at most `limit` admitted requests may be unanswered at once, where
    `limit` = `queue_share` x target x the capacity measured -- by Little's law, a queue
    that the server clears within `queue_share` of the target. Each window over the target
    sets it so again (from the capacity, not from the limit before: repeated cuts do not
    spiral down). A window in which the limit turned requests away kept the server busy:
    its throughput updates the capacity (smoothed), and a p90 over the target there moves
    the limit, not the rate (the queue is the one the limit holds). A window under half the
    target in which the limit turned requests away makes it 1.2x larger (a pipeline that
    needs more in flight to stay busy).
    """

    target: float  # seconds
    min_rate: float = 1.0
    max_rate: float | None = None
    increase: float = 0.5
    increase_share: float = 0.2
    headroom: float = 0.9
    deepest_cut: float = 0.25
    capacity_decay: float = 0.9
    cut_above: float = 1.0
    raise_below: float = 0.9
    samples: int = 100
    period: float = 1.0
    burst: float = 0.1
    rate: float | None = None  # req/s; None: admit everything
    capacity: float = 0.0  # responses/s measured in the last saturated window
    best: float = 0.0  # the most responses/s any window measured
    window: list[float] = field(default_factory=list)
    window_start: float | None = None
    changed: float = float("-inf")  # when the rate last changed
    tokens: float = 0.0
    refilled: float = 0.0
    admitted: int = 0  # in the current window
    answered: int = 0  # in the current window, whenever admitted
    queue_share: float = 0.8
    limit: float | None = None  # admitted requests unanswered at once (None: no limit yet)
    capped: int = 0  # requests the limit turned away in the current window

    def __post_init__(self) -> None:
        if self.rate is None and self.max_rate is not None:
            self.rate = self.max_rate  # a ceiling from the start

    def admit(self, now: float, reserve: float = 0.0, in_flight: int = 0) -> bool:
        """May a request that arrives now go in? (Spends a token when it may.) `reserve` is
        the share of the bucket, and of the in-flight limit, it must leave to more important
        requests (request classes: a lower priority goes in only while the bucket is that
        much fuller and the queue that much shorter). `in_flight`: admitted requests not
        answered yet."""
        if self.limit is not None and in_flight >= max(1.0, self.limit * (1.0 - reserve)):
            self.capped += 1
            return False
        if self.rate is None:
            self.admitted += 1
            return True
        capacity = max(1.0, self.rate * self.burst)
        self.tokens = min(capacity, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens >= 1.0 + reserve * capacity:
            self.tokens -= 1.0
            self.admitted += 1
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds a rejected client should wait (HTTP Retry-After)."""
        return 1 if self.rate is None else math.ceil(1.0 / self.rate)  # (rate > 0)

    def observe(self, latency: float, now: float) -> Decision | None:
        """An admitted request was answered after `latency` s; maybe adjust the rate."""
        if self.window_start is None:
            self.window_start = now
        self.answered += 1
        if now - latency >= self.changed:  # admitted under the current rate
            self.window.append(latency)
            if len(self.window) % EARLY_EVERY == 0:
                return self.tick(now)
        return self.tick(now) if now - self.window_start >= self.period else None

    def tick(self, now: float) -> Decision | None:
        """Judge the window when it is full, or its period is over, or it already shows the
        target badly missed (a quick cut keeps the backlog small). Call this now and then
        too: a stalled server must be cut even when few responses come back."""
        if self.window_start is None:
            self.window_start = now
            return None
        elapsed = now - self.window_start
        if len(self.window) < self.samples and elapsed < self.period and not (
                len(self.window) >= EARLY_EVERY
                and quantile(self.window, 0.9) > EARLY_FACTOR * self.target):
            return None
        if not self.window or elapsed <= 0:
            self.window, self.window_start, self.admitted, self.answered = [], now, 0, 0
            self.capped = 0
            return None
        p90, served = quantile(self.window, 0.9), self.answered / elapsed
        flow = self.admitted - self.answered  # > 0: a backlog builds; < 0: it drains
        self.best = max(self.best, served)
        if self.capped:
            # the in-flight limit turned requests away: the queue is the one it holds, and
            # the server was kept busy -- what it answered measures its capacity (smoothed:
            # short windows are noisy), and a p90 over the target is the limit's to fix
            self.capacity = served if not self.capacity else \
                (1 - SMOOTHING) * self.capacity + SMOOTHING * served
            over = p90 > self.cut_above * self.target
            rate = self.rate if over else self._next_rate(p90, served, flow, elapsed)
        else:
            rate = self._next_rate(p90, served, flow, elapsed)
        limit = self._next_limit(p90)
        self.window, self.window_start, self.admitted, self.answered = [], now, 0, 0
        self.capped = 0
        if rate == self.rate and limit == self.limit:
            return None
        what = "cut" if _lower(rate, self.rate) or _lower(limit, self.limit) else \
            "open" if rate is None and self.rate is not None else "raise"
        if rate != self.rate:
            self.changed = now
            self.tokens, self.refilled = min(self.tokens, 1.0), now
        self.rate, self.limit = rate, limit
        return Decision(now, what, p90, rate, limit)

    def _next_limit(self, p90: float) -> float | None:
        """The in-flight limit after a window with this p90 (see the class text); call it
        once the capacity is measured."""
        if p90 > self.cut_above * self.target and self.capacity > 0:
            return max(MIN_IN_FLIGHT, self.queue_share * self.target * self.capacity)
        if self.limit is not None and self.capped and p90 < ROOMY * self.target:
            return self.limit * 1.2  # it turned requests away while answers were quick
        return self.limit

    def _next_rate(self, p90: float, served: float, flow: int, elapsed: float
                   ) -> float | None:
        """The rate after a window with this p90 and throughput (None: no limit). `flow`,
        admitted minus answered in the window: more in than out means a backlog is building
        even if the p90 does not show it yet (it lags); more out than in, that a backlog
        is draining -- the p90 of the requests queued behind it says nothing new."""
        tolerance = 0.05 * (self.admitted + self.answered) / 2 + 1
        if p90 > self.cut_above * self.target:
            if flow < -tolerance and self.rate is not None:
                return self.rate  # draining since the last cut: let it
            # saturated: what was served is the capacity now -- unless a backlog from before
            # kept the p90 up while little was admitted: the estimate then decays, by a
            # tenth a window, so it follows a server that really slowed down
            self.capacity = max(served, self.capacity * self.capacity_decay)
            share = min(self.headroom, max(self.deepest_cut,
                                           self.headroom * self.target / p90))
            rate = max(self.min_rate, self.capacity * share)
            return rate if self.max_rate is None else min(rate, self.max_rate)
        if p90 >= self.raise_below * self.target or self.rate is None or flow > tolerance:
            return self.rate  # hold
        if self.rate < self.headroom * self.capacity:  # the backlog is gone: straight back
            rate = self.headroom * self.capacity  # to what is known to work
        else:  # past it, probe slowly: per second of window, +increase_share and +increase
            rate = self.rate + (self.rate * self.increase_share + self.increase) * elapsed
        if self.max_rate is not None:
            return min(rate, self.max_rate)
        return None if rate >= 2 * self.best else rate


SATURATED = 0.9  # busy share of a pool that counts as saturated
SMOOTHING = 0.3  # weight of the newest period in a smoothed throughput (batching, admission)
JUMP_COUNT = 20  # completions a period needs before a change of load can be called
DEMAND_LIMITED = 0.5  # a worker busier than this share of a period may need bigger batches
BUSY_FULL = 0.95  # a worker busy this share of a period has no time to spare
WARM_PERIODS = 8  # a window is judged this many times a period while it starts (see below)
WARM_FOR = 4  # periods from the first look during which it starts (unless it reached its cap)
SHRINK_FLOOR = 16  # with a time budget, rule 3 shrinks a window no lower (unless capped)
WINDOW_BYTES = 8 << 20  # what one window of messages may weigh, about (see BatchController)


@dataclass
class PoolController:
    """Keeps a stage's pool between `min` and `max` workers (after Sandstorm's thread pool
    controller: a queue threshold, a sampling period, an idle timeout).

    Fed with the stage's figures at every status update (twice a second): add a worker once
    the messages pending in front of the stage have stayed above `queue` -- or the workers
    have stayed saturated (busy >= 0.9 x live) -- for `after` seconds;
    retire one once, for `idle` seconds, nothing was pending and the pool's busy time would
    keep one worker fewer at most `busy_share` busy (busy <= busy_share x (live - 1)). After
    a change, the
    next waits `after` seconds (the new worker needs time to take work, the queue time to
    drain): hysteresis, so it does not flap.
    """

    min: int
    max: int
    queue: int
    after: float = 1.0
    idle: float = 5.0
    busy_share: float = 0.7
    over_since: float | None = None
    calm_since: float | None = None
    changed: float = float("-inf")

    def observe(self, now: float, pending: int, busy: float, live: int) -> int:
        """`pending`: messages in front of the stage; `busy`: workers busy on average since
        the last update (Active); `live`: workers running. Returns +1 (add one), -1 (retire
        one) or 0."""
        # credit pushes a backlog upstream (into the acceptor, or a source that does not
        # read ahead), so the queue in front of a stage is capped by its senders' windows
        # and may stay short while the stage is the bottleneck: a saturated pool is over too
        over = pending > self.queue or busy >= SATURATED * live
        self.over_since = (self.over_since if self.over_since is not None else now) \
            if over else None
        quiet = pending == 0 and busy <= self.busy_share * (live - 1)
        self.calm_since = (self.calm_since if self.calm_since is not None else now) \
            if quiet else None
        if now - self.changed < self.after:
            return 0
        if live < self.min:
            return self._change(now, +1)
        if live > self.max:
            return self._change(now, -1)
        if self.over_since is not None and now - self.over_since >= self.after \
                and live < self.max:
            return self._change(now, +1)
        if self.calm_since is not None and now - self.calm_since >= self.idle \
                and live > self.min:
            return self._change(now, -1)
        return 0

    def _change(self, now: float, step: int) -> int:
        self.changed, self.over_since, self.calm_since = now, None, None
        return step


@dataclass
class BatchController:
    """Adapts a worker's credit window -- how many messages its senders may hand it at once,
    which is how big its batches get (after Sandstorm's batching controller, with one more
    signal: whether the senders held work back).

    Every `period` seconds:
    - a sudden change of throughput (more than `jump` x up or down from one period to the
      next, both periods with at least 20 completions) is a new load: the best throughput
      seen is forgotten and the window goes back to `max`;
    - if a sender held work back for lack of credit (`held_back`: DATA frames that came while
      their sender still had messages for this pool) while the worker had time to spare
      (busy less than 95% of the period), the window is what keeps the work away: it grows
      by `fast` (x2: the senders are waiting, so it gets there within a few periods);
    - otherwise Sandstorm's rule: while the throughput (smoothed over periods) stays >=
      `keep` x the best seen, the window shrinks by `factor` (smaller batches: less work
      waits behind a slow message in one worker's inbox, where no other worker can take
      it); below that, it grows by `factor` (bigger batches: less overhead per message).
      A worker that was busy less than half the period is limited by demand: a lower
      throughput there means less work came, so the window shrinks instead of growing;
    - an idle period (nothing completed) changes nothing.

    Two caps bound the window whatever the rules say, so that the defaults suit cheap and
    slow stages alike: it holds at most `budget` seconds of handler work (a stage taking
    10 ms a message gets a window of 1, one taking 10 us up to 1,000: a cheap stage batches
    hundreds, a slow one stays small for latency), and about WINDOW_BYTES of messages.

    A worker whose outputs wait for the next stage's credit (`backlog`: half its window or
    more) has time to spare only because of that: its window is not grown for it (a big
    window there would only pile work up in front of the slow stage, and a drain must
    finish it all).

    It starts warm: for its first WARM_FOR periods, or until the window reaches its cap,
    periods are `period / WARM_PERIODS` long, so a window that must grow from a small start
    gets there in a fraction of a second (a 200,000-message pipeline lasts about two).

    So a saturated worker's window settles at the smallest that keeps it busy, and a worker
    that waits for work while its senders hold it back gets a bigger one at once.
    (Sandstorm's rule alone shrank the window of workers that an acceptor could not feed
    fast enough -- they were never saturated, so throughput "held" -- and every smaller
    window cost the acceptor more frames per request: 0.60x the fixed window's throughput.)
    """

    min: int = 1
    max: int = 64
    period: float = 0.25
    budget: float = 0.0  # s of handler work a window may hold (0: no such cap)
    factor: float = 1.2
    fast: float = 2.0
    keep: float = 0.9
    jump: float = 3.0
    window: float = 0.0  # 0: starts at max
    best: float = 0.0
    last_rate: float = 0.0  # smoothed
    last_raw: float = 0.0
    counted: int = 0  # completions in the last period
    started: float | None = None
    done_at_start: int = 0
    busy_at_start: float = 0.0
    held_at_start: int = 0
    warm_until: float | None = None  # short periods until then (see WARM_FOR)
    cap: float = 0.0  # the caps' bound on the window (0: none known yet)

    def __post_init__(self) -> None:
        if not self.window:
            self.window = float(self.max)

    def observe(self, now: float, completed: int, busy: float | None = None,
                held_back: int = 0, message_bytes: float = 0.0, backlog: int = 0
                ) -> int | None:
        """`completed`: the worker's running total; `busy`: its running total of seconds in
        handlers, if known; `held_back`: running total of frames that came while their
        sender held more for this pool; `message_bytes`: the mean size of the messages it
        receives, if known; `backlog`: its outputs that wait for credit now. The new window
        when it changes."""
        if self.started is None:
            self.started, self.done_at_start = now, completed
            self.busy_at_start, self.held_at_start = busy or 0.0, held_back
            self.warm_until = now + WARM_FOR * self.period
            return None
        elapsed = now - self.started
        warm = self.warm_until is not None and now < self.warm_until
        if elapsed < (self.period / WARM_PERIODS if warm else self.period):
            return None
        count = completed - self.done_at_start
        rate = count / elapsed
        share = None if busy is None else (busy - self.busy_at_start) / elapsed
        held = held_back > self.held_at_start
        self.started, self.done_at_start = now, completed
        self.busy_at_start, self.held_at_start = busy or 0.0, held_back
        if count == 0:
            return None  # idle: nothing to learn, the window stays
        before = round(self.window)
        # a few completions a period are noise: smooth the rate, and only call a change of
        # load from periods that counted enough
        smooth = rate if not self.last_rate else SMOOTHING * rate + \
            (1 - SMOOTHING) * self.last_rate
        jumped = count >= JUMP_COUNT and self.counted >= JUMP_COUNT and (
            rate > self.jump * self.last_raw or rate * self.jump < self.last_raw)
        top = self._top(count, share, elapsed, message_bytes)
        if jumped:
            self.best, self.window, smooth = rate, top, rate  # a new load
        elif held and (share is None or share < BUSY_FULL) and backlog * 2 < self.window:
            self.best = max(self.best, smooth)
            self.window = min(top, self.window * self.fast)
        elif smooth >= self.keep * self.best or (share is not None and share < DEMAND_LIMITED):
            self.best = max(self.best, smooth)
            floor = min(float(SHRINK_FLOOR), top) if self.budget else float(self.min)
            self.window = max(float(self.min), min(self.window, floor),
                              self.window / self.factor)
        else:
            self.window = min(top, self.window * self.factor)
        self.window = max(float(self.min), min(self.window, top))
        if self.window >= top:
            self.warm_until = None
        self.last_rate, self.last_raw, self.counted = smooth, rate, count
        now_window = round(self.window)
        return now_window if now_window != before else None

    def _top(self, count: int, share: float | None, elapsed: float,
             message_bytes: float) -> float:
        """The largest window allowed now: `max`, the time budget at the handler's cost per
        message in this period, and the bytes bound at the messages' mean size."""
        top = float(self.max)
        if self.budget and share is not None and share > 0:
            top = min(top, self.budget / (share * elapsed / count))
        if message_bytes > 0:
            top = min(top, WINDOW_BYTES / message_bytes)
        self.cap = max(float(self.min), top)
        return self.cap


class Classifier:
    """Which request class a request is in: the first class whose `match` it meets, else the
    catch-all (the last class, if it has no match; otherwise an implicit `default` class of
    priority 0). Pure: a request payload in, a class index out.

    With L priority levels (the largest priority + 1), a class of priority p may use
    (L - p) / L of the entry queue's bound and must leave p / L of the admission token
    bucket to more important classes: under overload the least important requests are
    turned away first, and a class alone on the server can still use all of it (a bucket
    fills up when nobody more important spends it; the queue bound does not move).
    """

    def __init__(self, classes: Sequence[RequestClass]) -> None:
        self.rules = [(c.match.path, c.match.method,
                       tuple((k.lower(), v) for k, v in c.match.header.items()),
                       c.match.command.upper() if c.match.command is not None else None)
                      for c in classes if c.match is not None]
        self.names = [c.name for c in classes]
        self.priorities = [c.priority for c in classes]
        if not classes or classes[-1].match is not None:
            self.names.append("default")
            self.priorities.append(0)
        self.levels = max(self.priorities) + 1
        self.reserve = [p / self.levels for p in self.priorities]

    def bound(self, index: int, queue_bound: int) -> int:
        """The entry queue length at which requests of class `index` get 503."""
        return max(1, queue_bound * (self.levels - self.priorities[index]) // self.levels)

    def classify(self, request: Any) -> int:
        for i, (path, method, headers, command) in enumerate(self.rules):
            if command is not None:
                if not (type(request) is list and request and type(request[0]) is str
                        and request[0].upper() == command):
                    continue
            elif type(request) is dict:
                if path is not None and not request.get("path", "").startswith(path):
                    continue
                if method is not None and request.get("method") != method:
                    continue
                if headers:
                    have = request.get("headers", {})
                    if any(have.get(k) != v for k, v in headers):
                        continue
            else:
                continue
            return i
        return len(self.rules)
