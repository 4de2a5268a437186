"""A deterministic simulated server for the controllers' tests (not shipped with seda)."""

from __future__ import annotations

from seda.engine.controllers import AdmissionController, quantile


def simulate(ctl: AdmissionController | None, capacity: int, offered: int, seconds: int,
             settle: float) -> tuple[float, float]:
    """A FIFO server doing `capacity` req/s (1 ms per step), offered `offered` req/s evenly,
    admission by `ctl` (None: everything admitted). Returns (goodput in req/s, p90 response
    time in s) over the time after `settle`. Deterministic: for tests and docs."""
    from collections import deque

    queue: deque[float] = deque()
    done: list[float] = []
    credit = 0.0
    for step in range(seconds * 1000):
        now = step / 1000
        for k in range(offered // 1000):
            t = now + k / offered
            if ctl is None or ctl.admit(t, 0.0, len(queue)):
                queue.append(t)
        credit += capacity / 1000
        while credit >= 1 and queue:
            credit -= 1
            latency = now + 0.001 - queue.popleft()  # a step of service
            if now >= settle:
                done.append(latency)
            if ctl is not None:
                ctl.observe(latency, now + 0.001)
        if ctl is not None:
            ctl.tick(now)
    return len(done) / (seconds - settle), quantile(done, 0.9)
