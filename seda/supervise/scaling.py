"""Pool sizes while a graph runs: the pool controllers' decisions and `seda scale` requests,
turned into processes to start and workers to retire. The supervisor executes them.

A pool has as many worker slots as its `scale.max` (the plan's `pool_procs`); the slots not
started are *parked*. Growing starts the lowest parked slot (its endpoint is already known
to every sender, which simply gets credit from it once it is up); shrinking asks the highest
running one to retire: it grants its senders zero credit, finishes what it holds, reports
and exits, and the supervisor parks it instead of restarting it. Only model `seda` scales
(the other models have no per-stage pools).
"""

from __future__ import annotations

import queue
import time
from collections import deque
from typing import Any

from seda.engine.controllers import PoolController
from seda.plan.deployment import Plan
from seda.spec.models import GraphSpec

Action = tuple[str, str]  # ("start" | "retire", worker name)


class Scaler:
    def __init__(self, plan: Plan, spec: GraphSpec) -> None:
        self.plan = plan
        self.parked = plan.parked()
        self.retiring: set[str] = set()
        self.requests: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self.history: deque[str] = deque(maxlen=10)  # the last decisions, for the views
        self.controllers: dict[str, tuple[str, PoolController]] = {}  # pool -> (stage, ctl)
        if plan.model != "seda":
            return
        for name, stage in spec.stages.items():
            scale = stage.scale
            if scale is not None and scale.enabled:
                threshold = scale.queue if scale.queue is not None else 2 * stage.prefetch
                self.controllers[plan.stage_pool[name]] = (name, PoolController(
                    scale.min, scale.max, threshold, scale.after, scale.idle))

    def live(self, pool: str) -> list[str]:
        """Workers of `pool` running and not retiring, in slot order."""
        return [n for n in self.plan.pool_procs[pool]
                if n not in self.parked and n not in self.retiring]

    def request(self, stage: str, workers: int) -> dict[str, Any]:
        """`seda scale STAGE=N` (from the status server's thread): checked here, done by
        the supervisor's loop. ValueError says what is wrong."""
        pool = self.plan.stage_pool.get(stage)
        if pool is None:
            known = ", ".join(self.plan.stage_pool) or "none (this model runs no pools)"
            raise ValueError(f"no stage '{stage}' runs in a pool here (stages: {known})")
        slots = len(self.plan.pool_procs[pool])
        if not 1 <= workers <= slots:
            raise ValueError(f"stage '{stage}' can run between 1 and {slots} workers (its "
                             f"scale.max, or its workers without a scale section); asked "
                             f"for {workers}")
        before = len(self.live(pool))
        self.requests.put((stage, workers))
        return {"stage": stage, "from": before, "to": workers}

    def decide(self, snapshot: dict[str, Any], now: float) -> tuple[list[Action], list[str]]:
        """What to start and retire now, and the lines to log."""
        actions: list[Action] = []
        log: list[str] = []
        while not self.requests.empty():
            stage, workers = self.requests.get()
            self._resize(stage, workers, "seda scale", actions, log)
        stages = snapshot.get("stages", {})
        for pool, (stage, ctl) in self.controllers.items():
            figures = stages.get(stage)
            if figures is None:
                continue
            live = len(self.live(pool))
            step = ctl.observe(now, int(figures["pending"]), float(figures["active"]), live)
            if step > 0:
                why = f"queue over {ctl.queue}, or saturated, for {ctl.after:g} s"
            elif step < 0:
                why = f"idle for {ctl.idle:g} s"
            else:
                continue
            self._resize(stage, live + step, why, actions, log)
        return actions, log

    def _resize(self, stage: str, workers: int, why: str, actions: list[Action],
                log: list[str]) -> None:
        pool = self.plan.stage_pool[stage]
        live = self.live(pool)
        before = len(live)
        if workers == before:
            return
        while len(live) < workers:
            name = next(n for n in self.plan.pool_procs[pool] if n in self.parked)
            self.parked.discard(name)
            live.append(name)
            actions.append(("start", name))
        while len(live) > workers:
            name = live.pop()
            self.retiring.add(name)
            actions.append(("retire", name))
        log.append(f"scale: {stage} {before} -> {workers} workers ({why})")
        self.history.append(f"{time.strftime('%H:%M:%S')} {log[-1]}")

    def exited(self, name: str) -> bool:
        """A worker exited: True if it was retiring (park it; do not restart it)."""
        if name not in self.retiring:
            return False
        self.retiring.discard(name)
        self.parked.add(name)
        return True
