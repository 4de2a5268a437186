"""Error lines a flood cannot turn into a flood (seda/engine/throttle.py), on a fake clock."""

from __future__ import annotations

import logging

from seda.engine.throttle import MAX_KINDS, Throttle


def test_one_line_per_kind_per_period_and_the_rest_counted() -> None:
    now, lines = [0.0], []
    say = Throttle(every=10.0, clock=lambda: now[0],
                   write=lambda level, line: lines.append(f"{level} {line}")).say
    assert say("a", "one") and not say("a", "two") and not say("a", "three")
    assert say("b", "other", logging.ERROR)  # kinds are apart
    now[0] = 9.9
    assert not say("a", "four")
    now[0] = 10.0
    assert say("a", "five")
    assert lines == ["30 one", "40 other", "30 five (3 more of this kind since the last line)"]


def test_the_table_of_kinds_stays_bounded() -> None:
    throttle = Throttle(clock=lambda: 0.0, write=lambda level, line: None)
    for i in range(10 * MAX_KINDS):
        throttle.say(f"kind {i}", "x")
        assert len(throttle.kinds) <= MAX_KINDS
