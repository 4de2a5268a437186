"""SEDA, the default: a pool of worker processes per stage (or per `pool:`, whose stages are
fused), bounded queues with credit between them, and a SPED acceptor (or a source) in
front. Each stage boundary that is a process boundary costs a msgpack hop and an
acknowledgement; in return a slow stage holds up only its own queue, and each pool can be
sized, scaled (`scale:`) and restarted apart.

Run by: seda/runtime/acceptor.py (the front door) or seda/runtime/source.py, and
seda/runtime/worker.py (each pool), over seda/runtime/node.py (the queues).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from seda.plan.deployment import Plan, pooled_plan

if TYPE_CHECKING:
    from seda.spec.models import GraphSpec


def plan(spec: GraphSpec, run_dir: str, *, workers: Mapping[str, int],
         processes: int | None, base_dir: str) -> Plan:
    pools: dict[str, list[str]] = {}
    for name, stage in spec.stages.items():
        pools.setdefault(stage.pool or name, []).append(name)
    return pooled_plan(spec, run_dir, pools, "seda", workers, base_dir, scaling=True)
