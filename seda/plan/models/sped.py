"""SPED: one process, one event loop: it accepts, reads, runs the whole graph inline and
writes. No hop at all, one core at most, and a slow sync handler stalls every connection
(async handlers wait on the same loop, up to their `concurrency`).

Run by: seda/runtime/acceptor.py (`run_inline`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from seda.errors import Problem, SpecError
from seda.plan.deployment import ACCEPTOR, SUPERVISOR, Plan, ProcPlan, front_plan

if TYPE_CHECKING:
    from seda.spec.models import GraphSpec


def plan(spec: GraphSpec, run_dir: str, *, workers: Mapping[str, int],
         processes: int | None, base_dir: str) -> Plan:
    if processes not in (None, 1):
        raise SpecError([Problem("--processes: model 'sped' is one process (symped runs "
                                 "several)", "<command line>")])
    name = f"{ACCEPTOR}.0"
    procs = {name: ProcPlan(name, "acceptor", f"ipc://{Path(run_dir) / name}", "", 0,
                            tuple(spec.stages), (SUPERVISOR,))}
    return front_plan(spec, run_dir, base_dir, "sped", procs, 1)
