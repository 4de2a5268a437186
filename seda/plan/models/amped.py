"""AMPED: an event-driven front door (the SPED acceptor) in front of one pool of worker
processes, each running the whole graph fused: no queue between stages, one hop from the
acceptor to a worker and back. A slow stage holds a worker, not a queue of its own. The
pool's size is the largest `workers` of the graph's stages.

Run by: seda/runtime/acceptor.py and seda/runtime/worker.py, as SEDA with one pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from seda.plan.deployment import AMPED_POOL, Plan, pooled_plan

if TYPE_CHECKING:
    from seda.spec.models import GraphSpec


def plan(spec: GraphSpec, run_dir: str, *, workers: Mapping[str, int],
         processes: int | None, base_dir: str) -> Plan:
    pools = {AMPED_POOL: list(spec.stages)}
    return pooled_plan(spec, run_dir, pools, "amped", workers, base_dir, scaling=False)
