"""MP (a process per connection, Apache prefork's way): a master accepts and forks a process
for each connection (at most `--processes N`, default 1024), which reads a request, runs
the graph inline, writes the reply, in lock-step, until the client closes. Blocking work
is simple and isolated; many connections cost many processes.

Run by: seda/runtime/mp.py (the master and its connection processes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from seda.names import MP_DEFAULT_PROCESSES
from seda.plan.deployment import MASTER, SUPERVISOR, Plan, ProcPlan, front_plan

if TYPE_CHECKING:
    from seda.spec.models import GraphSpec


def plan(spec: GraphSpec, run_dir: str, *, workers: Mapping[str, int],
         processes: int | None, base_dir: str) -> Plan:
    procs = {MASTER: ProcPlan(MASTER, "master", f"ipc://{Path(run_dir) / MASTER}",
                              stages=tuple(spec.stages), peers=(SUPERVISOR,))}
    return front_plan(spec, run_dir, base_dir, "mp", procs, processes or MP_DEFAULT_PROCESSES)
