"""When a crashed child is started again, and when the run gives up: pure, the clock passed in.

Two rules, after Erlang/OTP supervisors:
- **restart intensity** (`Intensity`): more than `max` crashes within `within` seconds (the
  graph's `settings.restarts`) fails the run: a crash loop is a bug to see, not to hide;
- **backoff** (`Backoff`, per child): a child that crashes again soon waits longer before its
  next start, from FIRST s doubling to MOST; one that lived STABLE_AFTER s or more was doing
  well, so its next restart is immediate-ish again (FIRST).

Exits on purpose (a worker recycled over its memory limit, a call past its timeout) are not
crashes: the supervisor counts them apart and restarts them at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

FIRST, MOST = 0.05, 2.0  # s: the first backoff, and the longest
STABLE_AFTER = 1.0  # s: an incarnation that lived this long ends a run of crashes


@dataclass
class Intensity:
    """Crashes in the last `within` seconds, against the most allowed (`max`)."""

    max: int
    within: float
    recent: deque[float] = field(default_factory=deque)

    def crashed(self, now: float) -> bool:
        """Count a crash at `now`; False once the crashes within the window are more than
        `max` (the run must stop)."""
        self.recent.append(now)
        while self.recent and self.recent[0] < now - self.within:
            self.recent.popleft()
        return len(self.recent) <= self.max

    def __len__(self) -> int:
        return len(self.recent)


@dataclass
class Backoff:
    """One child's wait before its next start after a crash."""

    failures: int = 0  # crashes in a row, each soon after its start

    def delay(self, lived: float) -> float:
        """The wait before the next start, for an incarnation that lived `lived` seconds."""
        if lived >= STABLE_AFTER:  # it was doing well: not a crash loop
            self.failures = 0
        wait: float = min(MOST, FIRST * 2.0 ** self.failures)
        self.failures += 1
        return wait
