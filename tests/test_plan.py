"""The deployment plan is pure: graph + overrides -> processes, stages, peers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from seda.errors import SpecError
from seda.names import MP_DEFAULT_PROCESSES
from seda.plan.deployment import Plan, make_plan
from seda.spec.builder import check_file


def pipeline(root: Path):  # type: ignore[no-untyped-def]
    return check_file(root / "graphs" / "pipeline.yaml", imports=False).spec


def test_seda_model_gives_a_pool_per_stage(root: Path) -> None:
    plan = make_plan(pipeline(root), "/run/x")
    assert plan.pool_procs == {"tokenize": ["tokenize.0", "tokenize.1"],
                               "normalize": ["normalize.0", "normalize.1"],
                               "measure": ["measure.0"], "count": ["count.0"]}
    assert plan.procs["tokenize.1"].title == "seda: worker tokenize#1"
    assert plan.procs["tokenize.1"].endpoint == "ipc:///run/x/tokenize.1"
    assert plan.origin() == "source"
    # tokenize sends to normalize and measure, acks the source, reports to the supervisor
    assert set(plan.procs["tokenize.0"].peers) == {"normalize.0", "normalize.1", "measure.0",
                                                   "source", "supervisor"}
    # count acks normalize and measure; results go to the source
    assert set(plan.procs["count.0"].peers) == {"normalize.0", "normalize.1", "measure.0",
                                                "source", "supervisor"}
    assert set(plan.procs["source"].peers) == {"tokenize.0", "tokenize.1", *plan.procs,
                                               "supervisor"} - {"source"}


def test_fused_pools_and_amped(root: Path) -> None:
    shop = check_file(root / "graphs" / "shop.yaml", imports=False).spec
    plan = make_plan(shop, "/run/y")
    assert plan.stage_pool == {"parse": "front", "catalog": "front", "checkout": "checkout"}
    assert plan.procs["front.0"].stages == ("parse", "catalog")
    amped = make_plan(shop, "/run/y", model="amped")
    assert list(amped.pool_procs) == ["all"]
    assert len(amped.pool_procs["all"]) == 4  # the largest pool asked for
    assert amped.procs["all.0"].stages == ("parse", "catalog", "checkout")


def test_worker_overrides(root: Path) -> None:
    plan = make_plan(pipeline(root), "/r", workers={"count": 3, "tokenize": 1})
    assert plan.pool_procs["count"] == ["count.0", "count.1", "count.2"]
    assert plan.pool_procs["tokenize"] == ["tokenize.0"]
    with pytest.raises(SpecError, match="unknown stage or pool 'cont' \\(did you mean"):
        make_plan(pipeline(root), "/r", workers={"cont": 2})


def test_plan_survives_json(root: Path) -> None:
    plan = make_plan(pipeline(root), "/run/z")
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.graph_spec() == pipeline(root)


def test_sped_is_one_process_running_every_stage(root: Path) -> None:
    shop = check_file(root / "graphs" / "shop.yaml", imports=False).spec
    plan = make_plan(shop, "/run/s", model="sped")
    assert list(plan.procs) == ["acceptor.0"]
    assert plan.procs["acceptor.0"].stages == ("parse", "catalog", "checkout")
    assert plan.workers() == []
    with pytest.raises(SpecError, match="model 'sped' runs services"):
        make_plan(pipeline(root), "/r", model="sped")


def test_symped_is_n_acceptors_each_running_every_stage(root: Path) -> None:
    shop = check_file(root / "graphs" / "shop.yaml", imports=False).spec
    plan = make_plan(shop, "/run/s", model="symped", processes=3)
    assert plan.front_doors() == ["acceptor.0", "acceptor.1", "acceptor.2"]
    assert all(p.stages == ("parse", "catalog", "checkout") and p.peers == ("supervisor",)
               for p in plan.procs.values())
    assert [p.title for p in plan.procs.values()] == [
        "seda: acceptor#0", "seda: acceptor#1", "seda: acceptor#2"]
    assert plan.processes == 3 and plan.workers() == []
    assert len(make_plan(shop, "/r", model="symped").front_doors()) == (os.cpu_count() or 1)


def test_mp_is_a_master_with_a_cap(root: Path) -> None:
    shop = check_file(root / "graphs" / "shop.yaml", imports=False).spec
    plan = make_plan(shop, "/run/m", model="mp", processes=7)
    assert list(plan.procs) == ["master"] and plan.front_doors() == ["master"]
    assert plan.procs["master"].role == "master"
    assert plan.procs["master"].stages == ("parse", "catalog", "checkout")
    assert plan.processes == 7
    assert make_plan(shop, "/r", model="mp").processes == MP_DEFAULT_PROCESSES
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(("model", "kwargs", "message"), [
    ("mp", {}, "'mp' runs services .* only"),
    ("symped", {}, "'symped' runs services .* only"),
    ("nope", {}, "unknown model 'nope'; models: seda, amped, sped, symped, mp"),
    ("sped", {"processes": 2}, "--processes: model 'sped' is one process"),
    ("amped", {"processes": 2}, "--processes: only models symped and mp take it"),
    ("mp", {"workers": {"parse": 2}}, "--workers: model 'mp' runs no worker pools"),
])
def test_model_misuse_is_a_clear_error(root: Path, model: str, kwargs: dict[str, Any],
                                       message: str) -> None:
    graph = "pipeline.yaml" if "services" in message else "shop.yaml"
    spec = check_file(root / "graphs" / graph, imports=False).spec
    with pytest.raises(SpecError, match=message):
        make_plan(spec, "/r", model=model, file=graph, **kwargs)
    try:
        make_plan(spec, "/r", model=model, file=graph, **kwargs)
    except SpecError as exc:
        assert str(exc.problems[0]).startswith(graph) or "command line" in str(exc)


def test_a_scaled_pool_has_slots_up_to_its_max_and_starts_its_workers_count() -> None:
    from seda.spec.loader import load_text

    spec, _ = load_text("""
name: s
acceptor: {entry: web}
stages:
  web: {handler: "m:web", workers: 2, to: [tail], scale: {min: 1, max: 4}}
  tail: {handler: "m:tail"}
""")
    plan = make_plan(spec, "/run/s")
    assert plan.pool_procs["web"] == ["web.0", "web.1", "web.2", "web.3"]
    assert plan.initial == {"web": 2} and plan.parked() == {"web.2", "web.3"}
    assert "web.3" in plan.procs["acceptor.0"].peers  # senders know every slot from the start
    assert Plan.from_json(plan.to_json()).parked() == {"web.2", "web.3"}
    assert make_plan(spec, "/run/s", workers={"web": 4}).parked() == set()
    amped = make_plan(spec, "/run/s", model="amped")  # one fused pool: nothing to scale
    assert amped.parked() == set() and len(amped.workers()) == 2


def test_what_mp_does_not_apply_is_said(root: Path, tmp_path: Path) -> None:
    """Admission and request classes need one request clock and one queue, which mp's
    connection processes do not share: `seda plan` (and the run, at start) says so rather than
    ignoring them silently; under the other models, and without them, nothing is said."""
    import subprocess
    import sys

    from seda.plan.deployment import not_applied
    from seda.spec.loader import load_text

    text = """
name: s
acceptor:
  entry: web
  admission: {target: 0.25}
  classes:
    - {name: checkout, priority: 0, match: {path: /checkout}}
    - {name: rest, priority: 1}
stages:
  web: {handler: "m:web"}
"""
    spec, _ = load_text(text)
    said = not_applied(spec, "mp")
    assert len(said) == 2
    assert "admission by response time (acceptor.admission)" in said[0]
    assert "request classes (acceptor.classes)" in said[1]
    for model in ("seda", "amped", "sped", "symped"):
        assert not_applied(spec, model) == []
    off, _ = load_text("""
name: s
acceptor: {entry: web, admission: {target: 0.25, enabled: false}}
stages:
  web: {handler: "m:web"}
""")
    assert not_applied(off, "mp") == []
    graph = tmp_path / "s.yaml"
    graph.write_text(text)
    plan = subprocess.run([sys.executable, "-m", "seda.cli", "plan", str(graph), "--model",
                           "mp"], capture_output=True, text=True, cwd=root, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("warning: model mp does not apply") == 2
