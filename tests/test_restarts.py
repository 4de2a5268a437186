"""Restart intensity and backoff (seda.engine.restarts), with a clock the test moves."""

from __future__ import annotations

import pytest

from seda.engine.restarts import FIRST, MOST, STABLE_AFTER, Backoff, Intensity


def test_more_crashes_than_max_within_the_window_stop_the_run() -> None:
    intensity = Intensity(max=2, within=10.0)
    assert intensity.crashed(0.0) and intensity.crashed(1.0)  # 2 of 2 allowed
    assert not intensity.crashed(2.0)  # the third within 10 s: stop
    assert len(intensity) == 3


def test_crashes_that_leave_the_window_no_longer_count() -> None:
    intensity = Intensity(max=2, within=10.0)
    assert intensity.crashed(0.0) and intensity.crashed(5.0)
    assert intensity.crashed(10.5)  # the one at 0 is out of the window: 2 in it
    assert len(intensity) == 2
    assert not intensity.crashed(11.0)  # 5, 10.5, 11: three within 10 s
    assert Intensity(max=0, within=1.0).crashed(0.0) is False  # max 0: no crash allowed


def test_backoff_doubles_while_a_child_crashes_soon_and_resets_once_it_lived() -> None:
    backoff = Backoff()
    soon = STABLE_AFTER / 10
    waits = [backoff.delay(soon) for _ in range(8)]
    assert waits[:3] == [FIRST, 2 * FIRST, 4 * FIRST]
    assert waits[-1] == MOST and max(waits) == MOST  # capped
    assert backoff.delay(STABLE_AFTER) == FIRST  # it lived: the next restart is quick again
    assert backoff.delay(soon) == 2 * FIRST


@pytest.mark.parametrize("lived", [0.0, STABLE_AFTER - 0.001])
def test_a_short_life_is_a_crash_in_a_row(lived: float) -> None:
    backoff = Backoff(failures=3)
    assert backoff.delay(lived) == min(MOST, FIRST * 8)
