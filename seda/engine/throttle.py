"""Error lines that a flood cannot turn into a flood: at most one line per kind per period,
with a count of the ones held back. For faults a client or a handler can repeat at will (bad
replies, dropped frames). No state but the time and count per kind; kinds are chosen by the
code, never by a peer, so the table stays small.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from seda.log import LOG

MAX_KINDS = 256  # kinds remembered at once (more, and the table starts afresh)


class Throttle:
    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[int, str], None] | None = None) -> None:
        self.every, self.clock = every, clock
        self.write = write or LOG.log  # (level, line)
        self.kinds: dict[str, tuple[float, int]] = {}  # kind -> (last said, held back since)

    def say(self, kind: str, text: str, level: int = logging.WARNING) -> bool:
        """Log `text` unless a line of this kind went out less than `every` seconds ago
        (then count it); True if written."""
        now = self.clock()
        last, held = self.kinds.get(kind, (float("-inf"), 0))
        if now - last < self.every:
            self.kinds[kind] = (last, held + 1)
            return False
        more = f" ({held} more of this kind since the last line)" if held else ""
        self.write(level, f"{text}{more}")
        if len(self.kinds) >= MAX_KINDS and kind not in self.kinds:
            self.kinds.clear()  # (kinds a handler names, such as error types, are many)
        self.kinds[kind] = (now, 0)
        return True
