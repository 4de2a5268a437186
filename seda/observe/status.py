"""The live figures of a running graph: one snapshot the supervisor keeps up to date from its
children's reports (about twice a second), read by `/api/status`, `/metrics` and `seda top`.

Pure: reports in, a JSON-able snapshot out (the clock is passed in). Columns follow Cassandra's
`nodetool tpstats`: per stage Active (workers busy, averaged over the last interval), Pending
(messages in front of the stage not yet run: held by their senders for lack of credit, plus
received by a worker and waiting in its inbox), Completed, Blocked (senders holding work for
the stage with no credit left), Dropped (by reason: past their deadline, refused at the
acceptor by admission control, dead-lettered after their last attempt, duplicates at a sink),
Errors (handler exceptions). Messages in transit between two processes are in neither place
and are not counted. Queue wait is the time from a message's birth (emitted upstream, or
accepted) to the start of its handler: time held by the sender, in transit and in the inbox.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

from seda.engine.stage import FRONT_FIGURES, bucket_upper
from seda.plan.deployment import Plan

HISTORY = 60  # samples kept per stage (about 30 s at two reports a second)
STAGE_FIGURES = ("received", "completed", "errors", "emitted", "results", "duplicates",
                 "expired", "dead_letters", "rejected", "busy")
# why messages for a stage were dropped: reason -> the figure that counts it
DROP_REASONS = {"deadline": "expired", "admission": "rejected", "dead_letter": "dead_letters",
                "duplicate": "duplicates"}


RECENT = 10  # updates (about 5 s) over which service-time percentiles are taken


def percentiles(hist: dict[int, int], qs: tuple[float, ...] = (0.5, 0.9, 0.99)
                ) -> dict[str, float]:
    """Percentiles (ms, the upper edge of the bucket: within 25%) of a service-time
    histogram (time_bucket -> count); empty when nothing was timed."""
    total = sum(hist.values())
    if not total:
        return {}
    out: dict[str, float] = {}
    items = sorted(hist.items())
    for q in qs:
        rank, seen = q * total, 0
        for key, count in items:
            seen += count
            if seen >= rank:
                out[f"p{round(q * 100)}"] = round(bucket_upper(key) / 1e6, 3)
                break
    return out


def _minus(now: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0) > 0}


class Status:
    """Turns reports into snapshots; keeps peaks and a short history per stage."""

    def __init__(self, plan: Plan, started: float) -> None:
        self.plan, self.started = plan, started
        self.spec = plan.graph_spec()
        self.pool_of = {w: p for p, ws in plan.pool_procs.items() for w in ws}
        self.peaks: dict[str, int] = {}
        self.history: dict[str, deque[tuple[float, int]]] = {
            s: deque(maxlen=HISTORY) for s in self.spec.stages}
        self.snapshot: dict[str, Any] = {}
        self.past: deque[tuple[float, dict[str, Any]]] = deque(maxlen=RECENT)  # (time, totals)
        self.queues = self._queues()  # every edge that is a queue, shown even when empty
        self.seen: dict[str, tuple[int, float]] = {}  # worker -> (pid, busy) at the last update

    def _queues(self) -> list[tuple[str, str]]:
        """(from, stage) for every queue of the plan: front door or source to the entry
        stages, and between stages in different pools (fused stages call each other)."""
        pool = self.plan.stage_pool
        if not pool:
            return []  # sped, symped, mp: the graph runs inline, no queues
        origin = "source" if self.spec.source is not None else "acceptor"
        out = [(origin, entry) for entry in self.spec.entries()]
        for name, stage in self.spec.stages.items():
            out += [(pool[name], to) for to in stage.to if pool[to] != pool[name]]
        return list(dict.fromkeys(out))

    def update(self, now: float, reports: dict[str, dict[str, Any]], totals: dict[str, Any],
               restarts: dict[str, int], alive: dict[str, int]) -> dict[str, Any]:
        """`reports`: each live process's last stats; `totals`: stage.figure summed over live
        and retired incarnations; `restarts`: per process; `alive`: process -> pid (0 when
        down). Returns (and keeps) the new snapshot."""
        dt = now - self.past[-1][0] if self.past else 0.0
        before = self.past[-1][1] if self.past else {}
        stages: dict[str, dict[str, Any]] = {}
        edges = dict.fromkeys(self.queues, 0)
        pending = dict.fromkeys(self.spec.stages, 0)
        blocked = dict.fromkeys(self.spec.stages, 0)
        def add(source: str, stage: str, count: int) -> None:
            if stage in pending:
                pending[stage] += count
                edges[(source, stage)] = edges.get((source, stage), 0) + count

        for name, report in reports.items():
            for stage, count in report.get("waiting", {}).items():  # held for credit
                add(self._role_of(name), stage, int(count))
            for stage in report.get("blocked", []):
                if stage in blocked:
                    blocked[stage] += 1
            for stage, senders in report.get("inbox", {}).items():  # received, not yet run
                for sender, count in senders.items():
                    add(self._role_of(sender), stage, int(count))
        for stage, spec in self.spec.stages.items():
            figures = {f: totals.get(f"{stage}.{f}", 0) for f in STAGE_FIGURES}
            done = figures["completed"] - before.get(f"{stage}.completed", 0)
            busy = figures["busy"] - before.get(f"{stage}.busy", 0)
            workers = self._workers(stage, alive)
            self.peaks[stage] = max(self.peaks.get(stage, 0), pending[stage])
            rate = done / dt if dt > 0 else 0.0
            self.history[stage].append((round(rate, 1), pending[stage]))
            times, recent = self._histogram(f"{stage}.times", totals)
            waits, recent_waits = self._histogram(f"{stage}.waits", totals)
            dropped = {reason: int(figures[f]) for reason, f in DROP_REASONS.items()}
            stages[stage] = {
                **{f: int(v) if f != "busy" else round(v, 3) for f, v in figures.items()},
                "service_ms": percentiles(recent), "service_ms_all": percentiles(times),
                "wait_ms": percentiles(recent_waits), "wait_ms_all": percentiles(waits),
                "times": {str(k): v for k, v in sorted(times.items())},
                "waits": {str(k): v for k, v in sorted(waits.items())},
                "workers": workers, "pool": self.plan.stage_pool.get(stage, ""),
                "active": round(busy / dt, 2) if dt > 0 else 0.0,
                "utilisation": round(busy / (dt * workers), 3) if dt > 0 and workers else 0.0,
                "pending": pending[stage], "peak_pending": self.peaks[stage],
                "blocked": blocked[stage],
                "dropped": sum(dropped.values()), "dropped_by": dropped,
                "throughput": round(rate, 1),
                "history": list(self.history[stage]), "to": list(spec.to)}
        front: dict[str, Any] = {f: 0 for f in (*FRONT_FIGURES, "connections", "in_flight")}
        statuses: dict[str, int] = {}
        for name in self.plan.front_doors():
            for figure in (*FRONT_FIGURES, "connections", "in_flight"):
                front[figure] += int(reports.get(name, {}).get(figure, 0) or 0)
            for status, count in reports.get(name, {}).get("statuses", {}).items():
                statuses[status] = statuses.get(status, 0) + int(count)
        front["statuses"] = dict(sorted(statuses.items()))
        # admission by response time, per front door: rate (None: open), target, last change
        front["admission"] = {name: reports[name]["admission"]
                              for name in self.plan.front_doors()
                              if reports.get(name, {}).get("admission")} or None
        # request classes, summed over front doors: priority, requests, rejected (503)
        classes: dict[str, dict[str, int]] = {}
        for name in self.plan.front_doors():
            for cls, figures in (reports.get(name, {}).get("classes") or {}).items():
                mine = classes.setdefault(cls, {"priority": int(figures["priority"]),
                                                "requests": 0, "rejected": 0})
                mine["requests"] += int(figures["requests"])
                mine["rejected"] += int(figures["rejected"])
        front["classes"] = classes or None
        found = diagnosis(stages)
        snapshot = {
            "graph": self.plan.graph, "model": self.plan.model, "time": round(now, 3),
            "uptime": round(now - self.started, 1), "stages": stages,
            "edges": [{"from": src, "to": dst, "depth": depth,
                       "peak": self._edge_peak(src, dst, depth),
                       "sent": int(totals.get(f"{dst}.sent_in", {}).get(src, 0))}
                      for (src, dst), depth in sorted(edges.items())],
            "front": front if self.spec.acceptor is not None else None,
            "processes": {name: {"pid": alive.get(name, 0), "restarts": restarts.get(name, 0),
                                 "role": proc.role,
                                 "malformed": int(reports.get(name, {}).get("malformed", 0)),
                                 "rss": int(reports.get(name, {}).get("rss", 0)),
                                 "address": str(reports.get(name, {}).get("address", "")),
                                 "refused_peers": int(reports.get(name, {}).get(
                                     "refused_peers", 0))}
                          for name, proc in self.plan.procs.items()},
            "workers": self._worker_rows(reports, restarts, alive, dt),
            "restarts": sum(restarts.values()),
            "dead_letters": sum(int(r.get("dead_letters", 0)) for r in reports.values()),
            # frames dropped as malformed on internal sockets (by live incarnations)
            "malformed": sum(int(r.get("malformed", 0)) for r in reports.values()),
            # peers refused by CURVE/ZAP: they presented a key that is not the run's
            "refused_peers": sum(int(r.get("refused_peers", 0)) for r in reports.values()),
            "bottleneck": found["stage"] if found else None, "diagnosis": found,
        }
        self.past.append((now, totals))
        self.snapshot = snapshot
        return snapshot

    def _histogram(self, key: str, totals: dict[str, Any]
                   ) -> tuple[dict[int, int], dict[int, int]]:
        """A merged histogram since the start, and its part from the last RECENT updates."""
        whole = totals.get(key, {})
        return whole, _minus(whole, self.past[0][1].get(key, {})) if self.past else whole

    def _worker_rows(self, reports: dict[str, dict[str, Any]], restarts: dict[str, int],
                     alive: dict[str, int], dt: float) -> list[dict[str, Any]]:
        """One row per worker process: what its current incarnation did, and how busy it was
        since the last update (its pool is fair when the rows look alike)."""
        rows = []
        for pool, names in sorted(self.plan.pool_procs.items()):
            for name in names:
                figures = reports.get(name, {}).get("stages", {}).values()
                pid, busy = alive.get(name, 0), sum(f.get("busy", 0.0) for f in figures)
                last_pid, last_busy = self.seen.get(name, (0, 0.0))
                share = (busy - last_busy) / dt if dt > 0 and pid == last_pid else 0.0
                self.seen[name] = (pid, busy)
                rows.append({"name": name, "pool": pool, "pid": pid,
                             "restarts": restarts.get(name, 0),
                             "received": sum(f.get("received", 0) for f in figures),
                             "completed": sum(f.get("completed", 0) for f in figures),
                             "errors": sum(f.get("errors", 0) for f in figures),
                             "queued": int(reports.get(name, {}).get("queued", 0)),
                             "window": int(reports.get(name, {}).get("window", 0)),
                             "rss": int(reports.get(name, {}).get("rss", 0)) if pid else 0,
                             "utilisation": round(min(max(share, 0.0), 1.0), 3)})
        return rows

    def _role_of(self, process: str) -> str:
        """What an edge starts from: a worker's pool, or the source / acceptor."""
        if process in self.pool_of:
            return self.pool_of[process]
        return "source" if process == "source" else "acceptor"

    def _workers(self, stage: str, alive: dict[str, int]) -> int:
        """Worker processes of the stage's pool running now (a pool may have slots parked
        by its controller)."""
        pool = self.plan.stage_pool.get(stage)
        return sum(1 for n in self.plan.pool_procs.get(pool, []) if alive.get(n)) if pool \
            else 0

    def _edge_peak(self, src: str, dst: str, depth: int) -> int:
        key = f"{src}->{dst}"
        self.peaks[key] = max(self.peaks.get(key, 0), depth)
        return self.peaks[key]


BUSY = 0.8  # utilisation of a stage's workers that makes it a bottleneck, with work waiting
TREND = 4  # updates (2 s) over which a queue that keeps growing is called growing


def diagnosis(stages: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The stage that limits the graph now, why, and the knob to turn -- or None. Only a
    stage with work waiting in front of it qualifies:
    - *busy*: its workers are busy >= 80% of the time: the busiest such stage; more workers;
    - else *starved*: its queue grew at every update of the last 2 s while its workers had
      time to spare (the window keeps work away from them, or a sender is slow to feed them):
      the one with the longest queue; a larger window (prefetch, or batching:).
    A stage with work waiting but neither busy nor a growing queue is not the bottleneck:
    its queue is a burst being worked off."""
    busy = [(s["utilisation"], s["pending"], name) for name, s in stages.items()
            if s["pending"] > 0 and s["utilisation"] >= BUSY]
    if busy:
        share, pending, name = max(busy)  # the busiest, then the most pending
        return {"stage": name, "reason": "busy",
                "why": f"workers {share:.0%} busy, {pending:,} waiting",
                "knob": "more workers (workers:, scale:, or seda scale)"}
    starved = []
    for name, s in stages.items():
        queue = [pending for _, pending in s["history"][-TREND - 1:]]
        if s["pending"] > 0 and len(queue) == TREND + 1 and all(
                a < b for a, b in pairwise(queue)):
            starved.append((s["pending"], name))
    if starved:
        pending, name = max(starved)
        share = stages[name]["utilisation"]
        return {"stage": name, "reason": "starved",
                "why": f"queue growing to {pending:,} while its workers are {share:.0%} busy",
                "knob": "a larger window (prefetch:, or batching:)"}
    return None


def metric_families(snapshot: dict[str, Any]) -> Iterable[Any]:
    """The snapshot as Prometheus metric families (prometheus_client), names by convention:
    `seda_stage_*{graph,stage}`, `seda_edge_queue_depth{graph,from,to}`, `seda_acceptor_*`."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    graph = snapshot.get("graph", "")
    stages = snapshot.get("stages", {})
    counters = {"received": "messages received by the stage",
                "completed": "messages the stage has finished (seda_stage_processed_total)",
                "errors": "handler exceptions", "emitted": "messages the stage sent on"}
    for figure, text in counters.items():
        name = "processed" if figure == "completed" else figure
        family = CounterMetricFamily(f"seda_stage_{name}", text, labels=["graph", "stage"])
        for stage, figures in stages.items():
            family.add_metric([graph, stage], figures[figure])
        yield family
    busy = CounterMetricFamily("seda_stage_busy_seconds", "time spent in the stage's handler",
                               labels=["graph", "stage"])
    for stage, figures in stages.items():
        busy.add_metric([graph, stage], figures["busy"])
    yield busy
    dropped = CounterMetricFamily("seda_stage_dropped", "messages for the stage dropped, by "
                                  "reason", labels=["graph", "stage", "reason"])
    for stage, figures in stages.items():
        for reason, count in figures.get("dropped_by", {}).items():
            dropped.add_metric([graph, stage, reason], count)
    yield dropped
    for figure, name, text in (("times", "service", "handler time per message"),
                               ("waits", "queue_wait", "time from a message's birth to the "
                                "start of its handler")):
        histogram = HistogramMetricFamily(f"seda_stage_{name}_seconds", text,
                                          labels=["graph", "stage"])
        for stage, figures in stages.items():
            buckets, total = _buckets(figures.get(figure, {}))
            histogram.add_metric([graph, stage], buckets, sum_value=total)
        yield histogram
    gauges = {"queue_depth": ("pending", "messages queued in front of the stage"),
              "queue_depth_peak": ("peak_pending", "largest queue depth seen"),
              "workers": ("workers", "worker processes of the stage's pool"),
              "utilisation": ("utilisation", "share of the pool's time spent in handlers"),
              "blocked": ("blocked", "senders holding work for the stage with no credit")}
    for name, (figure, text) in gauges.items():
        gauge = GaugeMetricFamily(f"seda_stage_{name}", text, labels=["graph", "stage"])
        for stage, figures in stages.items():
            gauge.add_metric([graph, stage], figures[figure])
        yield gauge
    labels = ["graph", "pool", "worker", "host"]  # host: where a joined worker runs
    per_worker: list[GaugeMetricFamily | CounterMetricFamily] = [
        GaugeMetricFamily("seda_worker_utilisation", "share of the time the worker spent in "
                          "handlers", labels=labels),
        CounterMetricFamily("seda_worker_processed", "messages finished by the worker (since "
                            "it last started)", labels=labels),
        GaugeMetricFamily("seda_worker_rss_bytes", "the worker's resident memory",
                          labels=labels)]
    for row in snapshot.get("workers", []):
        values = [graph, row["pool"], row["name"], row.get("host") or "local"]
        per_worker[0].add_metric(values, row["utilisation"])
        per_worker[1].add_metric(values, row["completed"])
        per_worker[2].add_metric(values, row.get("rss", 0))
    yield from per_worker
    memory = GaugeMetricFamily("seda_process_rss_bytes", "resident memory of each process "
                               "(workers, acceptors, source)", labels=["graph", "process",
                                                                       "role"])
    for name, proc in snapshot.get("processes", {}).items():
        memory.add_metric([graph, name, proc["role"]], proc.get("rss", 0))
    yield memory
    edge = GaugeMetricFamily("seda_edge_queue_depth", "messages on an edge (queued + in flight)",
                             labels=["graph", "from", "to"])
    sent = CounterMetricFamily("seda_edge_sent", "messages sent on an edge (re-sends "
                               "included)", labels=["graph", "from", "to"])
    for item in snapshot.get("edges", []):
        edge.add_metric([graph, item["from"], item["to"]], item["depth"])
        sent.add_metric([graph, item["from"], item["to"]], item.get("sent", 0))
    yield edge
    yield sent
    def one(family: Any, value: float) -> Any:
        family.add_metric([graph], value)
        return family

    front = snapshot.get("front")
    if front:
        yield one(GaugeMetricFamily("seda_acceptor_connections", "open client connections",
                                    labels=["graph"]), front["connections"])
        for figure in ("requests", "responses", "rejected", "timeouts", "failed",
                       "protocol_errors", "refused"):
            yield one(CounterMetricFamily(f"seda_acceptor_{figure}", f"acceptor: {figure}",
                                          labels=["graph"]), front[figure])
        admitting = GaugeMetricFamily("seda_acceptor_admission_rate", "requests/s the "
                                      "admission controller lets in (+Inf: all)",
                                      labels=["graph", "door"])
        room = GaugeMetricFamily("seda_acceptor_admission_in_flight_limit", "admitted "
                                 "requests the admission controller lets be unanswered at once "
                                 "(+Inf: no limit)", labels=["graph", "door"])
        for door, figures in (front.get("admission") or {}).items():
            rate, limit = figures.get("rate"), figures.get("limit")
            admitting.add_metric([graph, door], float("inf") if rate is None else rate)
            room.add_metric([graph, door], float("inf") if limit is None else limit)
        yield admitting
        yield room
        offered = CounterMetricFamily("seda_acceptor_class_requests", "requests by request "
                                      "class", labels=["graph", "class", "priority"])
        turned = CounterMetricFamily("seda_acceptor_class_rejected", "requests turned away "
                                     "(503) by request class", labels=["graph", "class",
                                                                       "priority"])
        for cls, figures in (front.get("classes") or {}).items():
            offered.add_metric([graph, cls, str(figures["priority"])], figures["requests"])
            turned.add_metric([graph, cls, str(figures["priority"])], figures["rejected"])
        yield offered
        yield turned
        answers = CounterMetricFamily("seda_acceptor_answers", "answers by status code (HTTP; "
                                      "'reply' in other protocols)", labels=["graph", "status"])
        for status, count in front.get("statuses", {}).items():
            answers.add_metric([graph, status], count)
        yield answers
    yield one(CounterMetricFamily("seda_restarts", "child process restarts",
                                  labels=["graph"]), snapshot.get("restarts", 0))
    yield one(CounterMetricFamily("seda_dead_letters", "messages written to the dead-letter "
                                  "file", labels=["graph"]), snapshot.get("dead_letters", 0))
    yield one(CounterMetricFamily("seda_malformed_frames", "frames dropped as malformed on "
                                  "seda's internal sockets", labels=["graph"]),
              snapshot.get("malformed", 0))
    yield one(CounterMetricFamily("seda_refused_peers", "peers refused by CurveZMQ (a key "
                                  "that is not the run's; --keys)", labels=["graph"]),
              snapshot.get("refused_peers", 0))


def _buckets(hist: dict[str, int]) -> tuple[list[tuple[str, float]], float]:
    """A time_bucket histogram as cumulative Prometheus buckets (seconds) and an approximate
    sum (each count at its bucket's upper edge)."""
    buckets: list[tuple[str, float]] = []
    seen, total = 0, 0.0
    for key, count in sorted((int(k), v) for k, v in hist.items()):
        seen += count
        upper = (bucket_upper(key) + 1) / 1e9
        total += count * upper
        buckets.append((repr(upper), seen))
    buckets.append(("+Inf", seen))
    return buckets, total
