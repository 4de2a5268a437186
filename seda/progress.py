"""Terminal progress for `seda run` (rich), shown only when stderr is a terminal."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import Progress as RichProgress
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn


class Progress:
    """A one-line live status: items read, in flight, rate, errors, dead letters, restarts."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._start = time.monotonic()

    def update(self, **figures: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                     TimeElapsedColumn(), console=Console(stderr=True),
                                     transient=True)
            self._bar.start()
            self._task = self._bar.add_task("starting")
        rate = figures.get("read", 0) / max(1e-9, time.monotonic() - self._start)
        text = (f"read {figures.get('read', 0)} · in flight {figures.get('pending', 0)} · "
                f"{rate:,.0f}/s · errors {figures.get('errors', 0)} · dead {figures.get('dead', 0)}"
                f" · restarts {figures.get('restarts', 0)}")
        self._bar.update(self._task, description=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
