"""Topology rules over a GraphSpec, with networkx: routes, reachability, cycles, dead ends, pools.

Pure: takes a spec and a line map, returns Problems (errors and warnings). Imports no handler
and starts nothing; `seda.handler.check_imports` does the importing part.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import networkx as nx

from seda.errors import Problem, did_you_mean
from seda.spec.loader import FieldPath, LineMap
from seda.spec.models import NAME_RE, GraphSpec

ACCEPTOR = "@acceptor"
SOURCE = "@source"


def build_graph(spec: GraphSpec) -> nx.DiGraph[Any]:
    """Stages as nodes (plus '@acceptor' or '@source'); only routes to known stages as edges."""
    graph: nx.DiGraph[Any] = nx.DiGraph(name=spec.name)
    for name, stage in spec.stages.items():
        graph.add_node(name, kind="stage", workers=stage.workers, pool=stage.pool or name,
                       sink=stage.sink)
    front = ACCEPTOR if spec.acceptor is not None else SOURCE
    if spec.acceptor is not None or spec.source is not None:
        graph.add_node(front, kind=front[1:])
        graph.add_edges_from((front, e) for e in spec.entries() if e in spec.stages)
    for name, stage in spec.stages.items():
        graph.add_edges_from((name, t) for t in stage.to if t in spec.stages)
    return graph


def replies(spec: GraphSpec, stage: str) -> bool:
    """In a service, a stage without routes answers the client with what it returns."""
    s = spec.stages[stage]
    return spec.is_service and not s.to and not s.sink


class _Checker:
    def __init__(self, spec: GraphSpec, lines: LineMap) -> None:
        self.spec, self.lines = spec, lines
        self.problems: list[Problem] = []
        self.graph = build_graph(spec)

    def error(self, path: FieldPath, message: str) -> None:
        self.problems.append(self.lines.problem(path, message))

    def warn(self, path: FieldPath, message: str) -> None:
        self.problems.append(self.lines.problem(path, message, "warning"))

    def run(self) -> list[Problem]:
        self.names()
        # later checks would only echo a broken route, so they wait until routes are sound
        if self.front() and self.routes():
            self.reachability()
            self.cycles()
            self.dead_ends()
        self.pools()
        self.scaling()
        self.bounds()
        self.classes()
        return sorted(self.problems, key=lambda p: (p.severity != "error", p.line or 0, p.path))

    def names(self) -> None:
        for name in self.spec.stages:
            if name.startswith("@") or not NAME_RE.fullmatch(name):
                self.error(("stages", name), f"expected a stage name of letters, digits, '_' or "
                                             f"'-' (starting with a letter), got '{name}'")

    def front(self) -> bool:
        spec = self.spec
        if spec.acceptor is None and spec.source is None:
            self.error((), "a graph needs an 'acceptor' (a network service) or a 'source' "
                           "(a finite pipeline)")
            return False
        if spec.acceptor is not None and spec.source is not None:
            self.error(("source",), "a graph has an 'acceptor' or a 'source', not both")
            return False
        return True

    def classes(self) -> None:
        """Request classes: unique names, a catch-all only last, matches the protocol has."""
        acc = self.spec.acceptor
        if acc is None:
            return
        names: set[str] = set()
        for i, c in enumerate(acc.classes):
            path: FieldPath = ("acceptor", "classes", i)
            if c.name in names:
                self.error((*path, "name"), f"a second class named '{c.name}'")
            names.add(c.name)
            if c.match is None:
                if i != len(acc.classes) - 1:
                    self.error(path, f"class '{c.name}' has no match, so it takes every "
                                     f"request: the classes after it could never match (put "
                                     f"it last)")
                continue
            if c.name == "default":
                self.error((*path, "name"), "'default' names the class of requests no class "
                                            "matches; a class with a match needs another name")
            http = [f for f in ("path", "method", "header") if getattr(c.match, f)]
            if http and acc.protocol != "http":
                self.error((*path, "match", http[0]), f"match.{http[0]} is for protocol http, "
                                                      f"not {acc.protocol}")
            if c.match.command is not None and acc.protocol != "resp":
                self.error((*path, "match", "command"), f"match.command is for protocol resp, "
                                                        f"not {acc.protocol}")
            if not http and c.match.command is None:
                self.error((*path, "match"), "match names nothing to match (path, method, "
                                             "header or command); leave match out for a "
                                             "catch-all class")

    def unknown(self, path: FieldPath, target: str) -> None:
        hint = did_you_mean(target, self.spec.stages)
        self.error(path, f"unknown stage '{target}'{hint}")

    def routes(self) -> bool:
        spec, before = self.spec, len(self.problems)
        if spec.acceptor is not None and spec.acceptor.entry not in spec.stages:
            self.unknown(("acceptor", "entry"), spec.acceptor.entry)
        if spec.source is not None:
            self.route_list(("source", "to"), spec.source.to)
        for name, stage in spec.stages.items():
            self.route_list(("stages", name, "to"), stage.to)
            if stage.sink and stage.to:
                self.error(("stages", name, "sink"), "a sink has no routes: remove 'to' or "
                                                     "'sink: true'")
        return len(self.problems) == before

    def route_list(self, path: FieldPath, targets: list[str]) -> None:
        seen: set[str] = set()
        for index, target in enumerate(targets):
            if target not in self.spec.stages:
                self.unknown((*path, index), target)
            elif target in seen:
                self.error((*path, index), f"stage '{target}' is listed twice")
            seen.add(target)

    def reachability(self) -> None:
        front = ACCEPTOR if self.spec.acceptor is not None else SOURCE
        reached = nx.descendants(self.graph, front)
        noun = "the acceptor" if front == ACCEPTOR else "the source"
        for name in self.spec.stages:
            if name not in reached:
                self.error(("stages", name), f"unreachable: no route leads here from {noun}")

    def cycles(self) -> None:
        if self.spec.settings.allow_cycles:
            return
        stages = self.graph.subgraph(self.spec.stages)
        for component in nx.strongly_connected_components(stages):
            first = min(component, key=list(self.spec.stages).index)
            if len(component) == 1 and not stages.has_edge(first, first):
                continue
            edges = nx.find_cycle(stages.subgraph(component), source=first)
            ring = " -> ".join([*(u for u, _ in edges), first])
            last_from, last_to = edges[-1][0], edges[-1][1]
            index = self.spec.stages[last_from].to.index(last_to)
            self.error(("stages", last_from, "to", index),
                       f"cycle {ring} (set 'settings.allow_cycles: true' if it is meant)")

    def dead_ends(self) -> None:
        spec = self.spec
        if not spec.is_service:
            for name, stage in spec.stages.items():
                if not stage.to and not stage.sink:
                    self.error(("stages", name), "dead end: no route ('to') and not a sink, so "
                                                 "its output would be lost (add 'to' or "
                                                 "'sink: true')")
            return
        answering = {n for n in spec.stages if replies(spec, n)}
        for name, stage in spec.stages.items():
            if stage.sink or name in answering:
                continue
            if not answering & nx.descendants(self.graph, name):
                self.error(("stages", name), "dead end: no path from here reaches a stage that "
                                             "replies, so requests would never be answered")
        assert spec.acceptor is not None
        entry = spec.acceptor.entry
        if entry in spec.stages and not answering & (nx.descendants(self.graph, entry) | {entry}):
            self.error(("acceptor", "entry"), "no stage reachable from the entry replies, so "
                                              "requests would never be answered")

    def pools(self) -> None:
        members: dict[str, list[str]] = defaultdict(list)
        for name, stage in self.spec.stages.items():
            if stage.pool is not None:
                members[stage.pool].append(name)
        for pool, names in members.items():
            path: FieldPath = ("stages", names[0], "pool")
            if not NAME_RE.fullmatch(pool):
                self.error(path, f"expected a pool name of letters, digits, '_' or '-', got "
                                 f"'{pool}'")
            if pool in self.spec.stages and pool not in names:
                self.error(path, f"pool '{pool}' has the name of another stage")
            counts = {n: self.spec.stages[n].workers for n in names}
            if len(set(counts.values())) > 1:
                shown = ", ".join(f"{n}={c}" for n, c in counts.items())
                self.error(path, f"stages in pool '{pool}' ask for different worker counts "
                                 f"({shown}); fused stages share one pool of processes")

    def scaling(self) -> None:
        shared = {s.pool for s in self.spec.stages.values() if s.pool is not None}
        for name, stage in self.spec.stages.items():
            scale = stage.scale
            if scale is None:
                continue
            path: FieldPath = ("stages", name, "scale")
            if stage.pool is not None and stage.pool in shared and sum(
                    1 for s in self.spec.stages.values() if s.pool == stage.pool) > 1:
                self.error(path, f"a stage fused into pool '{stage.pool}' with others cannot "
                                 f"be scaled on its own")
            elif stage.sink and self.spec.source is not None:
                self.error(path, "a pipeline's sink keeps what finish() returns in each "
                                 "worker: its workers cannot be retired, so it cannot scale")
            elif not scale.min <= stage.workers <= scale.max:
                self.error(("stages", name, "workers"), f"{stage.workers} workers is outside "
                           f"scale's bounds [{scale.min}, {scale.max}]")

    def bounds(self) -> None:
        acc, most = self.spec.acceptor, self.spec.settings.max_message_bytes
        if acc is not None and acc.limits.max_request_bytes + acc.limits.max_header_bytes > most:
            self.error(("acceptor", "limits", "max_request_bytes"),
                       f"a request may be {acc.limits.max_request_bytes} bytes of body and "
                       f"{acc.limits.max_header_bytes} of headers, more than one message may "
                       f"carry to its stage (settings.max_message_bytes: {most}); raise that "
                       f"or lower these")
        for name, stage in self.spec.stages.items():
            upstream = list(self.graph.predecessors(name)) if name in self.graph else []
            if len(upstream) > 1 and stage.queue is None:
                self.warn(("stages", name), f"fan-in from {', '.join(upstream)} without a "
                                            f"'queue' bound: backlog is limited only by each "
                                            f"sender's credit window")
            window = stage.workers * stage.prefetch
            if stage.queue is not None and stage.queue < window:
                self.warn(("stages", name, "queue"), f"queue bound {stage.queue} is below "
                                                     f"workers x prefetch ({window}); the "
                                                     f"smaller of the two applies")


def check(spec: GraphSpec, lines: LineMap | None = None) -> list[Problem]:
    """Every topology error and warning of `spec`, errors first, in file order."""
    return _Checker(spec, lines or LineMap("<graph>")).run()
