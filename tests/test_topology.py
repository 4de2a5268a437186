"""Topology rules that are legal but suspicious (warnings), and legal shapes."""

from __future__ import annotations

import pytest

from seda.errors import SpecError
from seda.spec.builder import Graph
from seda.spec.topology import check


def fan_in() -> Graph:
    return (Graph("fan", description="fan-in")
            .source("stages.text:read_lines", to=["tokenize"])
            .stage("tokenize", "stages.text:tokenize", to=["a", "b"])
            .stage("a", "stages.text:normalize", to=["count"])
            .stage("b", "stages.text:measure", to=["count"])
            .stage("count", "stages.text:Count", sink=True))


def test_fan_in_without_bound_is_a_warning() -> None:
    spec = fan_in().build()
    problems = check(spec)
    assert [(p.severity, p.path) for p in problems] == [("warning", "stages.count")]
    assert "fan-in from a, b without a 'queue' bound" in problems[0].message


def test_queue_below_window_is_a_warning() -> None:
    spec = Graph("q").source("stages.text:read_lines", to=["s"]).stage(
        "s", "stages.text:Count", sink=True, workers=2, prefetch=8, queue=4).build()
    [problem] = check(spec)
    assert problem.severity == "warning"
    assert problem.path == "stages.s.queue"
    assert "below workers x prefetch (16)" in problem.message


def test_cycles_are_legal_when_declared() -> None:
    spec = (Graph("loop").acceptor("a")
            .stage("a", "stages.hello:handle", to=["b"])
            .stage("b", "stages.hello:handle", to=["a", "c"])
            .stage("c", "stages.hello:handle")
            .settings(allow_cycles=True)).build()
    assert [p for p in check(spec) if p.severity == "error"] == []


def test_sink_side_branch_in_a_service_is_fine() -> None:
    spec = (Graph("svc").acceptor("front")
            .stage("front", "stages.hello:handle", to=["log", "answer"])
            .stage("log", "stages.text:Count", sink=True)
            .stage("answer", "stages.hello:handle")).build()
    assert check(spec) == []


def test_cycle_without_exit_in_a_service_is_a_dead_end() -> None:
    g = (Graph("loop").acceptor("a")
         .stage("a", "stages.hello:handle", to=["b"])
         .stage("b", "stages.hello:handle", to=["a"])
         .settings(allow_cycles=True))
    with pytest.raises(SpecError) as caught:
        g.build()
    assert [(p.path, p.message[:9]) for p in caught.value.problems] == [
        ("acceptor.entry", "no stage "), ("stages.a", "dead end:"), ("stages.b", "dead end:")]
