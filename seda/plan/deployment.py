"""The deployment plan: (graph, model, overrides) -> which processes run which stages, where.

Pure: nothing here starts a process or opens a socket. The supervisor executes a plan and
every child reads the same plan (as JSON) to find its stages and its peers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seda.engine import config
from seda.errors import Problem, SpecError, did_you_mean
from seda.names import MAX_PROCESSES, MAX_WORKERS, MODELS

if TYPE_CHECKING:
    from seda.spec.models import GraphSpec

SUPERVISOR = "supervisor"
SOURCE = "source"
ACCEPTOR = "acceptor"
MASTER = "master"
AMPED_POOL = "all"
FRONT_ROLES = ("acceptor", "master")  # processes that own client sockets


@dataclass(frozen=True)
class ProcPlan:
    """One process: its name (also its zmq routing id), role, stages and peers."""

    name: str
    role: str  # "source" | "acceptor" | "master" | "worker"
    endpoint: str
    pool: str = ""
    index: int = 0
    stages: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()  # processes this one sends to (its outbox connects to them)

    @property
    def title(self) -> str:
        if self.role == "worker":
            return f"seda: worker {self.pool}#{self.index}"
        if self.pool:  # one of symped's acceptors
            return f"seda: {self.role}#{self.index}"
        return f"seda: {self.role}"


@dataclass
class Plan:
    """A whole deployment. `stage_pool` and `pool_procs` are the routing table."""

    graph: str
    model: str
    run_dir: str
    procs: dict[str, ProcPlan]
    stage_pool: dict[str, str]
    pool_procs: dict[str, list[str]]
    spec: dict[str, Any] = field(default_factory=dict)
    dead_letter: str = "dead-letter.jsonl"
    search_path: list[str] = field(default_factory=list)  # where handlers are imported from
    output: str = ""  # pipeline results file ("" = the supervisor's stdout)
    processes: int = 0  # symped: event loops; mp: most connection processes alive at once
    initial: dict[str, int] = field(default_factory=dict)  # pool -> workers started at first
    # (the pool has more slots, up to its scale.max: the pool controller starts the rest)
    log_level: str = "info"  # seda.log: every process's level and format (seda run's options)
    log_format: str = "text"
    access_log: bool = False  # acceptors log each answer (seda.runtime.access)
    log_time: bool = False  # text lines start with the time
    keys: str = ""  # the run's secret key file: every socket speaks CURVE (seda.runtime.secure)
    supervisor_address: str = ""  # where a joined worker reaches the supervisor ("": ipc)
    remote: list[str] = field(default_factory=list)  # worker slots filled by joining workers

    def parked(self) -> set[str]:
        """Worker slots not started at first (the pool controller may start them)."""
        return {n for pool, count in self.initial.items() for n in self.pool_procs[pool][count:]}

    def workers(self) -> list[ProcPlan]:
        return [p for p in self.procs.values() if p.role == "worker"]

    def front_doors(self) -> list[str]:
        """The processes that own client sockets (one, or N under symped)."""
        return [n for n, p in self.procs.items() if p.role in FRONT_ROLES]

    def origin(self) -> str:
        """The process that owns the work: the source of a pipeline or the (first) acceptor."""
        return SOURCE if SOURCE in self.procs else self.front_doors()[0]

    def endpoint(self, name: str) -> str:
        if name == SUPERVISOR:
            return self.supervisor_address or supervisor_endpoint(self.run_dir)
        return self.procs[name].endpoint

    def to_json(self) -> str:
        doc = asdict(self)
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        doc = json.loads(text)
        procs = {n: ProcPlan(**{**p, "stages": tuple(p["stages"]), "peers": tuple(p["peers"])})
                 for n, p in doc.pop("procs").items()}
        return cls(procs=procs, **doc)

    def graph_spec(self) -> GraphSpec:
        """The spec, validated (the supervisor's side; children read `conf`)."""
        from seda.spec.models import GraphSpec

        return GraphSpec.model_validate(self.spec)

    def conf(self) -> config.Graph:
        """The graph as a process reads it: plain records, no pydantic (seda.engine.config)."""
        return config.decode(config.Graph, self.spec)


def over_tcp(plan: Plan, host: str) -> None:
    """Every process's inbox on TCP at `host`, at a port chosen when it binds: its peers
    learn the address from the supervisor (wire.Ready.address, wire.Peers). The supervisor
    stays on ipc (its children are on this machine)."""
    where = f"[{host}]" if ":" in host else host
    plan.procs = {n: replace(p, endpoint=f"tcp://{where}:*") for n, p in plan.procs.items()}


def supervisor_endpoint(run_dir: str) -> str:
    return f"ipc://{Path(run_dir) / 'supervisor'}"


def _pool_size(spec: GraphSpec, pool: str, stages: list[str], workers: Mapping[str, int]) -> int:
    for key in (pool, *stages):
        if key in workers:
            return workers[key]
    return max(spec.stages[s].workers for s in stages)


def _scale_max(spec: GraphSpec, stages: list[str]) -> int:
    """The most workers a pool may grow to (its stages' scale.max), 0 without scale."""
    return max((spec.stages[s].scale.max for s in stages  # type: ignore[union-attr]
                if spec.stages[s].scale is not None), default=0)


def not_applied(spec: GraphSpec, model: str) -> list[str]:
    """What the spec asks of its acceptor that `model` does not do. Said when the run starts
    and by `seda plan`, not refused: the same graph runs under every model."""
    acc = spec.acceptor
    if acc is None or model != "mp":
        return []
    what = []
    if acc.admission is not None and acc.admission.enabled:
        what.append("admission by response time (acceptor.admission): its connection "
                    "processes share no request clock, so every request is admitted")
    if acc.classes:
        what.append("request classes (acceptor.classes): its connection processes share no "
                    "queue, so no class goes first")
    return [f"model mp does not apply {w}" for w in what]


def make_plan(spec: GraphSpec, run_dir: str, *, model: str | None = None,
              workers: Mapping[str, int] | None = None, base_dir: str = ".",
              processes: int | None = None, file: str = "<graph>") -> Plan:
    """Decide the processes for `spec` under `model` (default: the graph's). `workers`
    overrides pool sizes by pool or stage name; `processes` is symped's number of event
    loops (default: CPU count) or mp's cap. Problems name `file` (the graph file). Each
    model's own plan is in seda/plan/models/, a module per model."""
    from seda.plan.models import PLANS

    model = model or spec.model
    workers = dict(workers or {})
    if model not in MODELS:
        raise SpecError([Problem(f"unknown model '{model}'; models: "
                                 f"{', '.join(MODELS)}", file, None, "model")])
    most = MAX_PROCESSES.get(model, 1 << 30)  # (other models refuse it below)
    if processes is not None and not 1 <= processes <= most:
        raise SpecError([Problem(f"--processes: expected a count from 1 to {most}, got "
                                 f"{processes}", "<command line>")])
    if model in ("sped", "symped", "mp"):
        if workers:
            raise SpecError([Problem(f"--workers: model '{model}' runs no worker pools "
                                     f"(use --processes)", "<command line>")])
        if spec.acceptor is None:
            raise SpecError([Problem(f"model '{model}' runs services (graphs with an "
                                     f"acceptor) only; a pipeline runs under seda or amped",
                                     file, None, "model")])
    elif processes is not None:
        raise SpecError([Problem(f"--processes: only models symped and mp take it (model "
                                 f"'{model}' sizes its pools with --workers)", "<command line>")])
    return PLANS[model](spec, run_dir, workers=workers, processes=processes,
                        base_dir=base_dir)


def pooled_plan(spec: GraphSpec, run_dir: str, pools: dict[str, list[str]], model: str,
                workers: Mapping[str, int], base_dir: str, scaling: bool) -> Plan:
    """The models with queues (seda, amped): an origin (source or acceptor) and a pool of
    worker processes per entry of `pools` (pool -> its stages); with `scaling`, a pool has
    slots up to its stages' scale.max (started on demand)."""
    known = set(pools) | set(spec.stages)
    for key, count in workers.items():
        if key not in known or not 1 <= count <= MAX_WORKERS:
            raise _override_error(key, count, known)
    stage_pool = {s: pool for pool, stages in pools.items() for s in stages}
    run = Path(run_dir)
    initial = {pool: _pool_size(spec, pool, stages, workers) for pool, stages in pools.items()}
    slots = {pool: max(initial[pool], _scale_max(spec, stages) if scaling else 0)
             for pool, stages in pools.items()}
    pool_procs = {pool: [f"{pool}.{i}" for i in range(slots[pool])] for pool in pools}
    origin = SOURCE if spec.source is not None else f"{ACCEPTOR}.0"
    procs: dict[str, ProcPlan] = {}
    for pool, stages in pools.items():
        downstream = sorted({stage_pool[t] for s in stages for t in spec.stages[s].to} - {pool})
        upstream = sorted({stage_pool[s] for s in spec.stages
                           for t in spec.stages[s].to if stage_pool[t] == pool} - {pool})
        targets = [n for p in downstream + upstream for n in pool_procs[p]]
        peers = tuple(dict.fromkeys([*targets, origin, SUPERVISOR]))
        for index, name in enumerate(pool_procs[pool]):
            procs[name] = ProcPlan(name, "worker", f"ipc://{run / name}", pool, index,
                                   tuple(stages), peers)
    entry_procs = [n for e in spec.entries() for n in pool_procs[stage_pool[e]]]
    everyone = tuple(dict.fromkeys([*entry_procs, *procs, SUPERVISOR]))
    role = "source" if spec.source is not None else "acceptor"
    procs[origin] = ProcPlan(origin, role, f"ipc://{run / origin}", peers=everyone)
    dead_letter = str(Path(base_dir) / spec.settings.dead_letter)
    return Plan(spec.name, model, str(run), procs, stage_pool, pool_procs,
                spec.model_dump(mode="json"), dead_letter,
                initial={p: n for p, n in initial.items() if n < slots[p]})


def front_plan(spec: GraphSpec, run_dir: str, base_dir: str, model: str,
               procs: dict[str, ProcPlan], count: int) -> Plan:
    """The models without queues (sped, symped, mp): the front door processes `procs` run
    the whole graph inline; `count` is how many event loops (symped) or connection
    processes at most (mp) there are."""
    return Plan(spec.name, model, run_dir, procs, {}, {}, spec.model_dump(mode="json"),
                str(Path(base_dir) / spec.settings.dead_letter), processes=count)


def _override_error(key: str, count: int, known: set[str]) -> SpecError:
    if key not in known:
        return SpecError([Problem(f"--workers: unknown stage or pool '{key}'"
                                  f"{did_you_mean(key, known)}", "<command line>")])
    return SpecError([Problem(f"--workers: expected a count from 1 to {MAX_WORKERS} for "
                              f"'{key}', got {count}", "<command line>")])
