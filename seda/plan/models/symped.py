"""SYMPED (nginx-style): N independent SPED loops (`--processes N`, default: the CPU count),
each with its own listening socket on the one port (SO_REUSEPORT: the kernel spreads the
connections over them), each running the whole graph inline. All cores, no hop; a slow
sync handler stalls the connections of its loop.

Run by: seda/runtime/acceptor.py, N times; the sockets are bound by the supervisor
(seda/runtime/listener.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from seda.plan.deployment import ACCEPTOR, SUPERVISOR, Plan, ProcPlan, front_plan

if TYPE_CHECKING:
    from seda.spec.models import GraphSpec


def plan(spec: GraphSpec, run_dir: str, *, workers: Mapping[str, int],
         processes: int | None, base_dir: str) -> Plan:
    count = processes or os.cpu_count() or 1
    names = [f"{ACCEPTOR}.{i}" for i in range(count)]
    procs = {n: ProcPlan(n, "acceptor", f"ipc://{Path(run_dir) / n}", ACCEPTOR, i,
                         tuple(spec.stages), (SUPERVISOR,)) for i, n in enumerate(names)}
    return front_plan(spec, run_dir, base_dir, "symped", procs, count)
