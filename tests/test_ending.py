"""The end of a run (seda.engine.ending): one test per row of its table, the clock and the facts
passed in; `quiet` records whether it was asked (it runs the probe waves)."""

from __future__ import annotations

from typing import Any

from seda.engine.ending import (
    DONE,
    DRAIN,
    DRAIN_TIMEOUT,
    DRAINING,
    FINISH,
    FINISHED,
    FINISHING,
    FLUSH,
    RUNNING,
    SINKS_LATE,
    STOPPED,
    Ending,
)


class Quiet:
    def __init__(self, answer: bool) -> None:
        self.answer, self.asked = answer, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answer


def step(ending: Ending, now: float, quiet: bool = False, **facts: Any) -> tuple[list[str], int]:
    q = Quiet(quiet)
    args = {"stopping": False, "exhausted": False, "workers_finished": False,
            "flushed": False, **facts}
    return ending.step(now, quiet=q, **args), q.asked


def test_running_waits_and_does_not_probe_before_the_source_is_exhausted() -> None:
    ending = Ending(service=False, drain_timeout=10)
    assert step(ending, 1.0, quiet=True) == ([], 0)
    assert ending.phase == RUNNING


def test_a_stop_signal_starts_the_drain_with_its_deadline() -> None:
    ending = Ending(service=True, drain_timeout=10)
    assert step(ending, 5.0, stopping=True) == ([DRAIN], 1)
    assert (ending.phase, ending.deadline) == (DRAINING, 15.0)
    assert step(ending, 6.0, stopping=True) == ([], 1)  # said once


def test_an_exhausted_source_and_a_quiet_run_finish_the_sinks() -> None:
    ending = Ending(service=False, drain_timeout=0.2)
    assert step(ending, 1.0, exhausted=True) == ([], 1)  # not quiet yet
    assert step(ending, 2.0, exhausted=True, quiet=True) == ([FINISH], 1)
    assert (ending.phase, ending.deadline) == (FINISHING, 3.0)  # at least 1 s for the sinks


def test_a_quiet_service_that_drains_is_done() -> None:
    ending = Ending(service=True, drain_timeout=10)
    step(ending, 0.0, stopping=True)
    assert step(ending, 1.0, quiet=True) == ([STOPPED], 1)
    assert ending.phase == DONE


def test_a_pipeline_stopped_by_a_signal_finishes_its_sinks_once_quiet() -> None:
    ending = Ending(service=False, drain_timeout=10)
    assert step(ending, 0.0, stopping=True, quiet=True) == ([DRAIN, FINISH], 1)
    assert ending.phase == FINISHING


def test_a_drain_that_does_not_end_in_time_stops_the_run() -> None:
    ending = Ending(service=True, drain_timeout=10)
    step(ending, 0.0, stopping=True)
    assert step(ending, 10.0) == ([], 1)  # at the deadline: not yet
    assert step(ending, 10.01) == ([DRAIN_TIMEOUT], 1)
    assert ending.phase == DONE


def test_finishing_flushes_once_every_worker_finished_then_ends_when_flushed() -> None:
    ending = Ending(service=False, drain_timeout=10, phase=FINISHING, deadline=20.0)
    assert step(ending, 1.0) == ([], 0)  # (no probe waves any more)
    assert step(ending, 2.0, workers_finished=True) == ([FLUSH], 0)
    assert step(ending, 3.0, workers_finished=True) == ([], 0)  # flush said once
    assert step(ending, 4.0, workers_finished=True, flushed=True) == ([FINISHED], 0)
    assert ending.phase == DONE


def test_sinks_that_do_not_finish_in_time_end_the_run() -> None:
    ending = Ending(service=False, drain_timeout=10, phase=FINISHING, deadline=20.0)
    assert step(ending, 20.5) == ([SINKS_LATE], 0)
    assert ending.phase == DONE
