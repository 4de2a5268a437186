"""The handler-call watchdog: a thread of a worker (or of an inline front door) that ends its
process when one handler call outlives its stage's `timeout`.

A call that never returns keeps its process forever while everything looks alive; only the
process's own death frees what it holds. Theory of operation: the stage core names the stage
it is running (`StageCore.running`) and each call's mark (the context's `call_mark()`);
the watchdog samples the pair a few times per limit. The same pair for longer than the
stage's limit means one call has run that long: the watchdog writes a note (which messages,
which stage) into the run directory and exits the process with EXIT_STUCK. The supervisor
reads the note, tells the senders (those messages fail without a retry: 504 to a client, a
dead letter in a pipeline; the rest go out again uncharged) and starts a new process.

No per-message cost: the core already sets both fields for its own use. A call stuck in C
code that holds the GIL (a catastrophic regular expression) starves this thread too, so the
thread also touches a heartbeat file; the supervisor ends a process whose heartbeat is older
than its limit from outside (see Supervisor._stuck).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_STUCK = 86  # a process ended by its watchdog (a note says why)
EXIT_RECYCLE = 87  # a worker that retired itself over its memory limit (see Worker)


def note_path(run_dir: str, name: str) -> Path:
    return Path(run_dir) / f"{name}.stuck"


def beat_path(run_dir: str, name: str) -> Path:
    return Path(run_dir) / f"{name}.beat"


BEAT_EVERY = 0.25  # s between touches of the heartbeat file


def read_note(run_dir: str, name: str) -> dict[str, Any]:
    """The note a process's watchdog left (and remove it); {} when there is none."""
    path = note_path(run_dir, name)
    try:
        note: dict[str, Any] = json.loads(path.read_text())
        path.unlink()
        return note
    except (OSError, ValueError):
        return {}


class Watchdog(threading.Thread):
    """Watches `core` (a StageCore); `limits` maps a stage to its call limit in seconds
    (stages without one are absent); `culprits()` says who sent the call running now and
    which of its messages it holds, as (sender, [ids]). Without a `run_dir` (an mp
    connection process) it leaves no note and keeps no heartbeat."""

    def __init__(self, core: Any, limits: dict[str, float], run_dir: str, name: str,
                 culprits: Callable[[], tuple[str, list[int]]],
                 clock: Callable[[], float] = time.monotonic,
                 beat: Callable[[], float] | None = None) -> None:
        super().__init__(name="seda-watchdog", daemon=True)
        self.core, self.limits, self.run_dir, self.proc = core, limits, run_dir, name
        self.culprits, self.clock = culprits, clock
        # an event loop's last turn (async handlers run inline): silent for longer than the
        # shortest limit, something blocks the loop (a sync call in an async handler)
        self.beat = beat
        self.period = min(0.5, max(0.01, min(limits.values()) / 10))

    def run(self) -> None:
        last: tuple[str, Any, int] = ("", None, 0)
        since = beat = self.clock()
        heart = beat_path(self.run_dir, self.proc) if self.run_dir else None
        if heart is not None:
            heart.touch()
        while True:
            time.sleep(self.period)
            if heart is not None and self.clock() - beat >= BEAT_EVERY:
                beat = self.clock()
                with contextlib.suppress(OSError):  # (the run directory is gone: the
                    os.utime(heart)                 # supervisor ended; so will this)
            stage = self.core.running
            runner = self.core.runners.get(stage) if stage else None
            now = self.clock()
            if self.beat is not None and now - self.beat() > min(self.limits.values()):
                blocked = next((s for s, r in self.core.runners.items() if r.is_async), "")
                self.stuck(blocked, min(self.limits.values()), now - self.beat())
            if runner is None:
                last = ("", None, 0)
                continue
            mark, at = runner.ctx.call_mark()
            if last[0] != stage or last[1] is not mark or last[2] != at:
                last, since = (stage, mark, at), now
                continue
            limit = self.limits.get(stage)
            if limit is not None and now - since > limit:
                self.stuck(stage, limit, now - since)

    def stuck(self, stage: str, limit: float, seconds: float) -> None:
        if not self.run_dir:  # (an mp connection process: its client sees the close)
            os._exit(EXIT_STUCK)
        sender, ids = self.culprits()
        note = {"pid": os.getpid(), "stage": stage, "limit": limit,
                "seconds": round(seconds, 3), "sender": sender, "ids": ids}
        path = note_path(self.run_dir, self.proc)
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(note))
            tmp.rename(path)
        finally:
            os._exit(EXIT_STUCK)
