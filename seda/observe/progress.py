"""Terminal progress for `seda run` (rich), shown only when stderr is a terminal."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console
from rich.progress import Progress as RichProgress
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

RATE_OVER = 2.0  # s: the rate shown is that of the last this many seconds


def line(what: str, count: int, in_flight: int, rate: float, errors: int, dead: int,
         restarts: int) -> str:
    """The status line: `what` is "read" (a pipeline's items) or "requests" (a service's)."""
    return (f"{what} {count:,} · in flight {in_flight:,} · {rate:,.0f}/s · errors {errors:,} · "
            f"dead {dead:,} · restarts {restarts:,}")


class Progress:
    """A one-line live status: items read (or requests), in flight, the recent rate, errors,
    dead letters, restarts."""

    def __init__(self, enabled: bool, clock: Any = time.monotonic) -> None:
        self.enabled, self.clock = enabled, clock
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._seen: deque[tuple[float, int]] = deque()  # (time, count) of recent updates

    def rate(self, count: int) -> float:
        """Per second over about the last RATE_OVER seconds (from the updates seen)."""
        now = self.clock()
        seen = self._seen
        seen.append((now, count))
        while len(seen) > 2 and now - seen[1][0] >= RATE_OVER:
            seen.popleft()
        then, before = seen[0]
        return (count - before) / (now - then) if now > then else 0.0

    def update(self, what: str, count: int, in_flight: int, errors: int, dead: int,
               restarts: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                     TimeElapsedColumn(), console=Console(stderr=True),
                                     transient=True)
            self._bar.start()
            self._task = self._bar.add_task("starting")
        text = line(what, count, in_flight, self.rate(count), errors, dead, restarts)
        self._bar.update(self._task, description=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
