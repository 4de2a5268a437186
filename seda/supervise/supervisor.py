"""The supervisor: what `seda run` is. Executes a plan, restarts crashed children, turns
signals into one drain path, detects the end of a pipeline, and reports.

It does no data-plane work. Resource handling: it owns the private run directory (0700,
removed on exit), one control ROUTER (children report to it) and one outbox (it sends CONTROL
to children). Every child it starts is ended before `run` returns, on every path.

Theory of operation (end of a pipeline): once the source is exhausted, the supervisor sends
numbered probe waves; every process answers with what it still holds and how many messages it
has sent so far. Two complete waves in a row that show nothing held anywhere and identical
send counts mean no message is in flight (the four-counter method): then sinks `finish`, the
results reach the source, and everything stops.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq
from setproctitle import setproctitle

from seda import __version__
from seda.engine import ending
from seda.engine.ending import Ending
from seda.engine.restarts import Backoff, Intensity
from seda.engine.wire import (
    CONTROL,
    JOIN,
    STATUS,
    WIRE,
    Beat,
    DeadLetters,
    Exhausted,
    Failed,
    Finish,
    Flush,
    Order,
    PeerDown,
    Peers,
    Probe,
    ProbeReply,
    Ready,
    Report,
    Retire,
    Stats,
    Stop,
    StopIntake,
    pack,
    pack_record,
    unpack,
    unpack_report,
)
from seda.errors import ProtocolError
from seda.log import LOG
from seda.observe.progress import Progress
from seda.observe.status import Status
from seda.observe.statusserver import StatusServer
from seda.plan import rundir
from seda.plan.deployment import (
    SUPERVISOR,
    make_plan,
    not_applied,
    over_tcp,
    supervisor_endpoint,
)
from seda.runtime import deadletter, join, secure
from seda.runtime.listener import address, bind, raise_fd_limit, url
from seda.runtime.watchdog import EXIT_RECYCLE, EXIT_STUCK, beat_path, read_note
from seda.spec.models import GraphSpec
from seda.supervise.scaling import Scaler
from seda.supervise.sdnotify import Notifier
from seda.supervise.spawn import ForkServer, become_subreaper

STOP_GRACE = 2.0
SILENT_AFTER = 1.5  # s without a report after which a worker is taken to be inside a call
STUCK_GRACE = 2.0  # s a silent process gets beyond its handler timeout (see _stuck)
STATUS_EVERY = 0.5  # s between snapshots (children report every 0.5 s)
WAVE_PATIENCE = 0.5  # s before a probe wave that has not completed is sent again
BEAT_EVERY = 1.0  # s between the beats sent to joined workers
REMOTE_SILENCE = 3.0  # s without a report before a joined worker is taken for gone
VACANT_SAY = (5.0, 30.0)  # s: a slot empty this long is said, then again every so often
TICK = 0.05  # s between the supervisor's rounds of checks
TICK_ENDING = 0.005  # the same, once the source is exhausted or the run is ending


@dataclass
class RunOptions:
    model: str | None = None
    workers: dict[str, int] = field(default_factory=dict)
    output: str = ""
    progress: bool = False
    base_dir: str = "."  # where relative settings paths (dead letters) are resolved
    dead_letter: str | None = None  # the dead-letter file, instead of settings.dead_letter
    search_path: list[str] = field(default_factory=list)
    listen: str | None = None  # overrides acceptor.listen
    processes: int | None = None  # symped: event loops; mp: cap on connection processes
    file: str = "<graph>"  # the graph file, named in errors
    status: str | None = "127.0.0.1:0"  # where /api/status and /metrics are served (None: off)
    status_token: str = ""  # required by the status endpoint when set (and beyond loopback)
    log_level: str = "info"  # seda.log, for every process of the run
    log_format: str = "text"
    access_log: bool = False
    log_time: bool = False
    tcp: str = ""  # the processes' inboxes on TCP at this host ("": ipc)
    keys: str = ""  # the run's secret key file: CURVE on every socket ("": none)
    join_at: str = ""  # HOST:PORT where workers from elsewhere join (seda worker --join)
    remote: list[str] = field(default_factory=list)  # stages whose workers join, not start
    ray: str = ""  # a Ray cluster's address ("auto", "local": a new one) that places the
    # workers of the stages with placement: ("": no Ray)


@dataclass
class Child:
    """A process handle: start, watch (pidfd), stop."""

    name: str
    argv: list[str]
    popen: Any = None
    pidfd: int = -1
    ready: bool = False
    backoff: Backoff = field(default_factory=Backoff)  # its wait after a crash
    restarts: int = 0
    restart_at: float = 0.0
    forks: ForkServer | None = None  # workers are forked from it when it runs
    started: float = 0.0  # monotonic time of the current incarnation's start
    down_at: float = 0.0  # when it was found dead, until its next incarnation is ready
    outages: deque[float] = field(default_factory=lambda: deque(maxlen=50))  # seconds
    pass_fds: tuple[int, ...] = ()
    remote: bool = False  # a slot filled by a worker that joins (seda worker --join)
    remote_pid: int = 0  # the joined worker's pid on its host (0: the slot is free)
    host: str = ""  # ... and that host's name

    def start(self) -> None:
        if self.remote:  # a worker joining from elsewhere starts it (see Supervisor._join)
            return
        self.popen = self.forks.start(*self.argv[3:]) if self.forks is not None else None
        if self.popen is None:
            self._start_fresh()
        self.pidfd = os.pidfd_open(self.popen.pid)
        self.ready = False
        self.started = time.monotonic()

    def _start_fresh(self) -> None:
        import subprocess

        # the child starts with stop signals blocked and ignores them before unblocking
        # (seda.runtime.child): a signal to the process group is the supervisor's alone
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                          pass_fds=self.pass_fds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    @property
    def pid(self) -> int:
        if self.remote:
            return self.remote_pid
        return int(self.popen.pid) if self.popen is not None else 0

    def alive(self) -> bool:
        if self.remote:
            return self.remote_pid != 0
        return self.popen is not None and self.popen.poll() is None

    def reap(self) -> int:
        code = int(self.popen.wait())
        os.close(self.pidfd)
        self.pidfd = -1
        return code

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)


def _held_by(report: dict[str, Any]) -> str:
    """Where a process's unfinished messages are: ' (at W: n, ...; k suspects)'."""
    at = [f"{w}: {link[2]}{'' if link[0] else ' (down)'}"
          for w, link in report.get("links", {}).items() if link[2]]
    if report.get("suspects"):
        at.append(f"{report['suspects']} suspects")
    return f" (at {', '.join(at)})" if at else ""


def add_figures(out: dict[str, Any], report: dict[str, Any]) -> None:
    """Add a process's per-stage figures into `out` (stage.figure -> total)."""
    for stage, figures in report.get("stages", {}).items():
        for key, value in figures.items():
            tag = f"{stage}.{key}"
            if isinstance(value, dict):  # a histogram: bucket -> count
                merged = out.setdefault(tag, {})
                for bucket, count in value.items():
                    merged[bucket] = merged.get(bucket, 0) + count
            else:
                out[tag] = out.get(tag, 0) + value


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class Outcome:
    code: int
    summary: str


class Supervisor:
    def __init__(self, spec: GraphSpec, options: RunOptions) -> None:
        self.spec, self.options = spec, options
        # a report's size limit: a dead-letter record (from a joined worker) holds a message
        self.report_limit = max(1 << 20, 4 * spec.settings.max_message_bytes + (1 << 20))
        self.run_dir = rundir.create(spec.name)
        try:
            self.plan = make_plan(spec, self.run_dir, model=options.model,
                                  workers=options.workers, base_dir=options.base_dir,
                                  processes=options.processes, file=options.file)
            self._prepare(spec, options)
        except BaseException:  # (nothing may leave its run directory behind)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def _prepare(self, spec: GraphSpec, options: RunOptions) -> None:
        self.plan.search_path = options.search_path
        self.plan.output = options.output
        if options.dead_letter is not None:
            self.plan.dead_letter = options.dead_letter
        self.plan.log_level, self.plan.log_format = options.log_level, options.log_format
        self.plan.access_log, self.plan.log_time = options.access_log, options.log_time
        self.plan.keys = options.keys
        if options.tcp:
            over_tcp(self.plan, options.tcp)
        self.plan.remote = [n for stage in options.remote
                            for n in self.plan.pool_procs[self.plan.stage_pool[stage]]]
        self.join_url = ""
        self.next_beat = 0.0
        self.vacancy_note = 0.0  # when empty slots are said next (0: none empty)
        self.children: dict[str, Child] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        self.retired: dict[str, Any] = {}  # figures of dead incarnations (see totals)
        limit = spec.settings.restarts
        self.intensity = Intensity(limit.max, limit.within)  # crashes against settings.restarts
        self.restart_count = 0
        self.stop_signal = 0
        self.exhausted = False
        self.next_tick = 0.0  # when the loop next runs its checks (_tick)
        self.failure: str | None = None
        self.waves: list[dict[str, ProbeReply]] = []
        self.wave = self.wave_seq = 0
        self.wave_started = 0.0
        self.wave_replies: dict[str, ProbeReply] = {}
        # the end of the run: running -> draining -> finishing -> done (seda.engine.ending)
        self.ending = Ending(spec.is_service, spec.settings.drain_timeout)
        self.finished: set[str] = set()
        self.flushed = False
        self.started = time.monotonic()
        self.progress = Progress(enabled=options.progress)
        self.status = Status(self.plan, time.monotonic())
        self.scaler = Scaler(self.plan, spec)
        self.status_server: StatusServer | None = None
        self.listening = ""  # the 'listening on' line, until it is said
        self.notify = Notifier()  # systemd, when it asked (Type=notify)
        self.ready_once = False  # every process was up once: READY=1 sent
        self.readiness = "starting"  # why the graph is not ready now ("" when it is: /readyz)
        self.next_status = 0.0
        self.dead_before = deadletter.count(self.plan.dead_letter)
        self.listeners: dict[str, socket.socket] = {}  # front door -> its listening socket
        self.lost_state: list[str] = []  # sink state that died with a worker (see _lost_state)
        self.forks: ForkServer | None = None
        self.next_reap = 0.0
        self.undelivered: dict[str, list[Order]] = {}  # child -> see deliver
        self.heard: dict[str, float] = {}  # child -> when it last reported
        self.addresses: dict[str, str] = {}  # child -> where its inbox is (see _learn_address)
        self.gate: secure.Gate | None = None
        self.monitor: zmq.Socket[bytes] | None = None
        self.refused = 0
        self.placer: Any = None  # seda.supervise.rayplace.Placer, under --ray
        self.lost_on: dict[str, int] = {}  # host -> joined workers taken for gone there
        # processes with a watchdog (seda.runtime.watchdog) -> their longest handler call limit
        conf = self.plan.conf()
        self.watched = {name: max(limits) for name, proc in self.plan.procs.items()
                        if proc.role in ("worker", "acceptor") and proc.stages and all(
                            limits := [conf.call_limit(s) or 0.0 for s in proc.stages])}
        self.next_stuck = 0.0

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> Outcome:
        setproctitle(f"seda: supervisor {self.spec.name}")
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.zmq = zmq.Context()
        try:
            self._open_sockets()
            self._listen()
            # workers -- and, where there are workers, acceptors -- are forked from a warm
            # fork server and adopted by us (seda.supervise.spawn): we must be a subreaper
            # before the first one starts. Without worker pools (sped, symped, mp) it would
            # sit idle.
            if self.plan.workers() and not os.environ.get("SEDA_PROFILE") and \
                    become_subreaper():
                self.forks = ForkServer(os.getpid(), tuple(
                    s.fileno() for s in self.listeners.values()))
            self._serve_status()
            self._start_all()
            if self.options.ray:
                self._place_with_ray()
            outcome = self._loop()
            self._stop_all()
            if not outcome.summary:  # a service: its front doors' final figures are in now
                self._read_status()
                outcome.summary = self._service_summary()
            return outcome
        finally:
            self._stop_all()
            for s, handler in old.items():
                signal.signal(s, handler)
            # the sockets before the ZAP handler: a handshake still waiting for its answer
            # would keep the context from ending (zmq_ctx_term waits for it)
            if self.placer is not None:
                self.placer.close()
            monitor = getattr(self, "monitor", None)
            if monitor is not None:
                self.inbox.disable_monitor()
                monitor.close(linger=0)
            for sock in (getattr(self, "inbox", None), getattr(self, "outbox", None)):
                if sock is not None:
                    sock.close(linger=0)
            if self.gate is not None:
                self.gate.close()
            self.zmq.destroy(linger=0)
            if self.status_server is not None:
                self.status_server.close()
            for sock in self.listeners.values():
                sock.close()
            self.progress.close()
            if self.forks is not None:
                self.forks.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_signal:  # a second signal: stop now
            raise KeyboardInterrupt
        self.stop_signal = signum

    def _open_sockets(self) -> None:
        plan_file = Path(self.run_dir) / "plan.json"
        plan_file.write_text(self.plan.to_json(), encoding="utf-8")
        self.plan_file = str(plan_file)
        # with the run's keys, the supervisor's sockets speak CURVE like everyone's
        keys = secure.load_keys(self.plan.keys) if self.plan.keys else None
        self.gate = secure.Gate(self.zmq, keys) if keys is not None else None
        self.inbox = self.zmq.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.ROUTING_ID, SUPERVISOR.encode())  # children address it so
        self.inbox.setsockopt(zmq.ROUTER_HANDOVER, 1)  # see seda.runtime.node
        self.inbox.setsockopt(zmq.RCVHWM, 0)
        if keys is not None:
            secure.serve(self.inbox, keys)
        self.inbox.bind(supervisor_endpoint(self.run_dir))
        # failed handshakes on the inbox (a peer without the run's keys): counted, as the
        # children's ZAP handlers count theirs (refused_peers)
        self.monitor = self.inbox.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL |
            zmq.EVENT_HANDSHAKE_FAILED_AUTH) if keys is not None else None
        self.refused = 0
        if self.options.join_at:  # workers from elsewhere reach it here (JOIN, then STATUS)
            self.inbox.bind(f"tcp://{self.options.join_at}")
            self.join_url = self.inbox.getsockopt_string(zmq.LAST_ENDPOINT)
            (Path(self.run_dir) / "join.url").write_text(self.join_url + "\n")
            LOG.info(f"workers join at {self.join_url} (seda worker --join {self.join_url}"
                     f"{' --keys FILE' if keys is not None else ''}); slots: "
                     f"{', '.join(self.plan.remote) or 'none'}")
        self.outbox = self.zmq.socket(zmq.ROUTER)
        self.outbox.setsockopt(zmq.ROUTING_ID, SUPERVISOR.encode())
        self.outbox.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.outbox.setsockopt(zmq.ROUTER_HANDOVER, 1)  # see seda.runtime.node
        self.outbox.setsockopt(zmq.SNDHWM, 0)
        if any(secure.wildcard(proc.endpoint) for proc in self.plan.procs.values()):
            secure.moving_peers(self.outbox)
        if keys is not None:
            secure.connect_as(self.outbox, keys)
        for proc in self.plan.procs.values():
            if not secure.wildcard(proc.endpoint):  # (a tcp inbox: once it says where)
                self.outbox.connect(proc.endpoint)
                self.addresses[proc.name] = proc.endpoint

    def _place_with_ray(self) -> None:
        """Under --ray: an actor per worker slot of the stages with placement:, each running
        `seda worker --join` on the node Ray chose (seda.supervise.rayplace)."""
        from seda.supervise.rayplace import Placer

        secret = Path(self.plan.keys).read_text(encoding="ascii") if self.plan.keys else ""
        slots = []
        for name in self.plan.remote:
            stage = self.plan.procs[name].stages[0]
            placement = self.spec.stages[stage].placement
            if placement is not None:
                slots.append((name, stage, dict(placement.resources), placement.strategy))
        self.placer = Placer(self.options.ray, self.join_url, secret, slots)

    def _count_refused(self, monitor: zmq.Socket[bytes]) -> None:
        while True:
            try:
                monitor.recv_multipart(zmq.NOBLOCK)  # (only handshake failures are asked)
            except zmq.Again:
                return
            self.refused += 1

    def _join(self, ident: bytes, body: bytes) -> None:
        """A worker from elsewhere asks for a slot: the first free one of a remote stage gets
        it, with the run's plan (seda.runtime.join); no free slot, no plan."""
        try:
            asked = unpack(body, 1 << 16)
            if "failed" in asked:
                self._remote_failed(str(asked["failed"]), int(asked["pid"]),
                                    str(asked.get("error", ""))[:2000])
                return
            host, pid = str(asked["host"])[:200], int(asked["pid"])
            stage, node = str(asked.get("stage", ""))[:200], str(asked.get("node", ""))[:64]
            address = str(asked.get("address", ""))[:200]
            said: dict[str, Any] = {"version": str(asked["version"])[:40]} \
                if "version" in asked else {}
            if "wire" in asked:
                said["wire"] = int(asked["wire"])
        except (ProtocolError, KeyError, TypeError, ValueError, AttributeError):
            return
        if said.get("wire") != WIRE:  # (frames it could not read, nor we its)
            why = join.mismatch("this run", "the worker", said)
            LOG.warning(f"refused a worker from {host} (pid {pid}): {why}")
            with contextlib.suppress(zmq.ZMQError):
                self.inbox.send_multipart([ident, JOIN, pack(
                    {"error": why, "wire": WIRE, "version": __version__})], zmq.NOBLOCK)
            return
        if node:  # (placed by Ray: its node, to tell the nodes of one host apart)
            host = f"{host} (ray node {node[:12]})"
        free = [n for n in self.plan.remote if not self.children[n].alive()
                and n not in self.scaler.parked and
                (not stage or stage in self.plan.procs[n].stages)] \
            if self.phase == "running" else []
        answer: dict[str, Any]
        if not free:
            answer = {"error": (f"no free worker slot in this run"
                                f"{f' for stage {stage!r}' if stage else ''}")
                      if self.phase == "running" else "the run is ending"}
        else:
            child = self.children[free[0]]
            child.remote_pid, child.host, child.ready = pid, host, False
            child.started = time.monotonic()
            self.heard[child.name] = child.started
            answer = {"name": child.name, "plan": self.plan.to_json(), "wire": WIRE,
                      "version": __version__}
            title = self.plan.procs[child.name].title.removeprefix("seda: ")
            LOG.info(f"{title} joined from {host}{f' at {address}' if address else ''} "
                     f"(pid {pid})")
        with contextlib.suppress(zmq.ZMQError):
            self.inbox.send_multipart([ident, JOIN, pack(answer)], zmq.NOBLOCK)

    def _check_remote(self, now: float) -> None:
        """Joined workers: a beat to each every BEAT_EVERY (they exit without one); one
        silent for REMOTE_SILENCE is gone -- what it held goes out again, and its slot waits
        for a worker to join in its place (nothing here can restart a process on another
        host)."""
        beat = now >= self.next_beat
        if beat:
            self.next_beat = now + BEAT_EVERY
        vacant = []
        for name in self.plan.remote:
            child = self.children[name]
            if not child.alive():
                if name not in self.scaler.parked:
                    vacant.append(name)
                continue
            if now - self.heard.get(name, child.started) > REMOTE_SILENCE:
                self._remote_gone(child, now)
            elif beat:
                self.send(name, Beat())
        self._say_vacant(vacant, now)

    def _say_vacant(self, vacant: list[str], now: float) -> None:
        """Slots that no worker has filled for VACANT_SAY[0] s, said then and every
        VACANT_SAY[1] s while they stay empty: a run waiting for workers says so."""
        if not vacant or self.phase != "running":
            self.vacancy_note = 0.0
            return
        if not self.vacancy_note:
            self.vacancy_note = now + VACANT_SAY[0]
        elif now >= self.vacancy_note:
            self.vacancy_note = now + VACANT_SAY[1]
            how = ("Ray has not started their workers yet: does a node offer what the "
                   "stage's placement: asks for?") if self.placer is not None else \
                f"start them with seda worker --join {self.join_url}"
            LOG.warning(f"{len(vacant)} worker slot{'' if len(vacant) == 1 else 's'} "
                        f"still empty ({', '.join(vacant)}): {how}")

    def _remote_failed(self, name: str, pid: int, error: str) -> None:
        """A joined worker could not start (its handlers failed to import or to set up on its
        host): a crash of its slot, counted against the restart intensity -- a host that
        cannot run the stage ends the run at the limit, not after joins without end."""
        child = self.children.get(name)
        if child is None or name not in self.plan.remote or child.remote_pid != pid or \
                self.phase != "running":
            return
        title = self.plan.procs[name].title.removeprefix("seda: ")
        now = time.monotonic()
        what = f"{title} on {child.host} (pid {pid}) failed to start: {error}"
        self._remote_gone(child, now, what)
        if not self.intensity.crashed(now):
            self.failure = self._over_limit(what)

    def _over_limit(self, last: str) -> str:
        intensity = self.intensity
        return (f"restart limit reached: {len(intensity)} restarts within "
                f"{intensity.within:g} s (settings.restarts allows {intensity.max}); "
                f"last: {last}")

    def _remote_gone(self, child: Child, now: float, failed: str = "") -> None:
        title = self.plan.procs[child.name].title.removeprefix("seda: ")
        lost = self._lost_state(child.name)
        self._retire(child.name)
        self.undelivered.pop(child.name, None)
        self.broadcast(PeerDown(child.name, child.remote_pid), reliable=True)
        self.wave_replies.clear()
        self.waves.clear()
        self.wave = 0
        if failed:
            LOG.error(f"{failed}; its slot waits for a worker to join")
        else:
            LOG.warning(f"{title} on {child.host} (pid {child.remote_pid}) "
                        f"stopped answering: what it held goes out again; its slot waits "
                        f"for a worker to join")
        if lost:
            self.lost_state.append(f"{title} died holding {lost}")
            LOG.error(f"{lost} was lost with it: the pipeline's result will be incomplete")
        self.lost_on[child.host] = self.lost_on.get(child.host, 0) + 1
        child.remote_pid, child.ready = 0, False
        child.restarts += 1
        child.down_at = child.down_at or now
        self.restart_count += 1

    def _learn_address(self, name: str, address: str) -> None:
        """Where `name`'s inbox is bound, as it reported. In a tcp run each incarnation
        binds a port of its own: connect to the new one, and tell every process (the new
        incarnation learns the whole book)."""
        old = self.addresses.get(name)
        if not address or address == old or not secure.wildcard(self.plan.procs[name].endpoint):
            return
        # (the old endpoint is not disconnected: zmq_disconnect of a ROUTER's pipe to a dead
        # peer left zmq_ctx_term hanging at the end of the run; a dead one only retries)
        self.outbox.connect(address)
        self.addresses[name] = address
        self.broadcast(Peers({name: address}), reliable=True)
        self.deliver(name, Peers(dict(self.addresses)))

    def _start_all(self) -> None:
        # fresh interpreters (the source, mp's master) first: they import seda while the
        # fork server, started just before, does the same, and the forks follow
        forked = ("worker", "acceptor") if self.forks is not None else ()
        for name in sorted(self.plan.procs, key=lambda n: self.plan.procs[n].role in forked):
            argv = [sys.executable, "-m", "seda.runtime.child", self.plan_file, name,
                    str(os.getpid())]
            fds: tuple[int, ...] = ()
            if name in self.listeners:
                fds = (self.listeners[name].fileno(),)
                argv.append(str(fds[0]))
            forks = self.forks if self.plan.procs[name].role in ("worker", "acceptor") \
                else None
            child = self.children[name] = Child(name, argv, pass_fds=fds, forks=forks,
                                                remote=name in self.plan.remote)
            if name not in self.scaler.parked:  # a parked slot starts when its pool grows
                child.start()

    def _active(self) -> dict[str, Child]:
        """The children meant to run now (not the parked worker slots)."""
        return {n: c for n, c in self.children.items() if n not in self.scaler.parked}

    def _listen(self) -> None:
        acc = self.plan.conf().acceptor
        if acc is None:
            return
        raise_fd_limit(acc.limits.max_connections + 1024)
        doors = self.plan.front_doors()
        many = len(doors) > 1  # symped: one socket per process, one port (SO_REUSEPORT)
        first = self.listeners[doors[0]] = bind(acc, self.options.listen, reuseport=many)
        for name in doors[1:]:
            self.listeners[name] = bind(acc, address(first), reuseport=True)
        shared = f", {len(doors)} listeners" if many else ""
        (Path(self.run_dir) / "listen.url").write_text(url(first, acc.protocol) + "\n")
        # said once every process is up (see _tick): the port is held from now on, but a
        # request sent before then waits for the workers to start (up to a second or two)
        self.listening = (f"listening on {url(first, acc.protocol)} (graph "
                          f"{self.spec.name}, model {self.plan.model}{shared})")
        for what in not_applied(self.spec, self.plan.model):
            LOG.warning(what)

    def _check_ready(self) -> None:
        """Ready: every process is up and the graph is not draining. Said once on stderr
        (the 'listening on' line) and to systemd (READY=1); /readyz asks every time."""
        if self.phase != "running":
            return
        down = [n for n, c in self._active().items() if not c.ready]
        self.readiness = f"not up yet: {', '.join(sorted(down)[:5])}" if down else ""
        if down or self.ready_once:
            return
        self.ready_once = True
        if self.listening:
            LOG.info(self.listening)
            self.listening = ""
        self.notify("READY=1", f"STATUS=graph {self.spec.name} running, model {self.plan.model}",
                    f"MAINPID={os.getpid()}")

    def _serve_status(self) -> None:
        if not self.options.status:
            return
        self.status_server = StatusServer(self.status, self.options.status,
                                          self.options.status_token, self.scaler.request,
                                          ready=lambda: self.readiness)
        run = Path(self.run_dir)
        if self.options.status_token:  # for `seda top NAME`; the run directory is 0700
            fd = os.open(run / "status.token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.options.status_token + "\n")
        (run / "status.url").write_text(self.status_server.url + "\n")
        LOG.info(f"status on {self.status_server.url} (dashboard; /api/status, /metrics; "
                 f"seda top {self.spec.name})")

    def _update_status(self, now: float) -> None:
        alive = {n: c.pid for n, c in self.children.items() if c.alive()}
        reports = self._reports(now)
        snapshot = self.status.update(now, reports, self.totals(reports),
                                      {n: c.restarts for n, c in self.children.items()}, alive)
        for name, child in self.children.items():  # from found dead to restarted and ready
            snapshot["processes"][name].update(outages=list(child.outages), ready=child.ready)
            if child.remote:
                snapshot["processes"][name]["host"] = child.host
        for row in snapshot["workers"]:  # (a worker that joined: where it runs)
            row["host"] = self.children[row["name"]].host if row["name"] in self.children \
                else ""
        snapshot["refused_peers"] += self.refused  # (e.g. a worker with another key that
        # tried to join: it failed the handshake with the supervisor)
        if self.phase != "running":
            return  # no scaling while draining or finishing
        actions, log = self.scaler.decide(snapshot, now)
        snapshot["scaling"] = list(self.scaler.history)
        for line in log:
            LOG.info(line)
        for what, name in actions:
            if what == "start":
                self.children[name].start()
            else:
                self.deliver(name, Retire())

    def _stop_all(self) -> None:
        """Stop every child (CONTROL stop, SIGKILL after STOP_GRACE); idempotent."""
        for name, child in self.children.items():
            if child.remote and child.alive():
                self.send(name, Stop())
            if child.popen is None or child.pidfd < 0:
                continue
            self.send(name, Stop())
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children.values():
            if child.popen is None:
                continue
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                child.signal(signal.SIGKILL)
                child.popen.wait()
            if child.pidfd >= 0:
                os.close(child.pidfd)
                child.pidfd = -1

    def _reap_orphans(self) -> None:
        """A subreaper adopts the orphans of its whole tree (the processes a killed worker's
        handler started, mp's connection processes when their master dies): reap the ones
        that have exited, so none stays a zombie."""
        if self.forks is None:
            return
        known = {c.pid for c in self.children.values()} | {self.forks.pid}
        try:
            adopted = [p.pid for p in psutil.Process().children() if p.pid not in known]
        except psutil.Error:
            return
        for pid in adopted:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def send(self, name: str, order: Order) -> bool:
        try:
            self.outbox.send_multipart([name.encode(), CONTROL, pack_record(order)],
                                       zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def deliver(self, name: str, msg: Order) -> None:
        """Send `msg` to child `name` now, or -- when its socket is not connected yet (a child
        started a moment ago, or our connection to a fresh child still on its way) -- keep it
        and send it again, in order after anything kept before, until it is delivered or the
        child exits (its next incarnation starts afresh). Every order that must arrive goes
        this way: peer_down (a lost one left a sender holding a dead worker's messages
        forever -- seen once workers restarted in 0.1 s), finish, flush, retire,
        stop_intake."""
        queued = self.undelivered.get(name)
        if queued:
            queued.append(msg)
        elif not self.send(name, msg):
            self.undelivered[name] = [msg]

    def broadcast(self, msg: Order, reliable: bool = False) -> bool:
        """Send `msg` to every live child; a `reliable` one through deliver. False if a send
        failed (an unreliable one is then lost: probes are asked again, see _quiet)."""
        went = True
        for name, child in self.children.items():
            if not child.alive():
                continue
            if reliable:
                self.deliver(name, msg)
            elif not self.send(name, msg):
                went = False
        return went

    def _redeliver(self) -> None:
        for name in list(self.undelivered):
            queued = self.undelivered[name]
            while queued and self.send(name, queued[0]):
                queued.pop(0)
            if not queued:
                del self.undelivered[name]

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> Outcome:
        self.next_tick = 0.0
        while True:
            poller = zmq.Poller()
            poller.register(self.inbox, zmq.POLLIN)
            if self.monitor is not None:
                poller.register(self.monitor, zmq.POLLIN)
            for child in self.children.values():
                if child.pidfd >= 0:
                    poller.register(child.pidfd, zmq.POLLIN)
            wait = min(20, max(0, math.ceil((self.next_tick - time.monotonic()) * 1000)))  # ms
            events = dict(poller.poll(wait))
            if self.inbox in events:
                self._read_status()
            if self.monitor is not None and self.monitor in events:
                self._count_refused(self.monitor)
            for child in list(self.children.values()):
                if child.pidfd >= 0 and child.pidfd in events:
                    self._on_exit(child)
            self._restart_due()
            if self.undelivered:
                self._redeliver()
            if self.failure is not None:
                return Outcome(1, self.failure)
            now = time.monotonic()
            if now >= self.next_reap:
                self.next_reap = now + 1.0
                self._reap_orphans()
            if self.watched and now >= self.next_stuck:
                self.next_stuck = now + 0.5
                self._stuck()
            if now >= self.next_tick:
                # at the end of a run, every tick may be the one that sees it quiet: faster
                # ticks then end a short pipeline ~0.3 s sooner
                closing = self.exhausted or self.phase != "running"
                self.next_tick = now + (TICK_ENDING if closing else TICK)
                outcome = self._tick(now)
                if outcome is not None:
                    return outcome

    def _read_status(self) -> None:
        for _ in range(1000):
            try:
                frames = self.inbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 3 and frames[1] == JOIN and self.join_url:
                self._join(frames[0], frames[2])
                continue
            if len(frames) != 3 or frames[1] != STATUS:
                continue
            try:
                _, report = unpack_report(frames[2], self.report_limit)
                self._on_status(frames[0].decode(), report)
            except (ProtocolError, KeyError, TypeError, ValueError, AttributeError):
                continue

    def _on_status(self, name: str, report: Report) -> None:
        child = self.children.get(name)
        if child is None:
            return
        if child.remote and not child.alive():  # taken for gone (or never joined): it stops
            self.send(name, Stop())
            return
        self.heard[name] = time.monotonic()
        if not child.ready:
            if child.down_at:  # back after a crash: how long it was out
                child.outages.append(round(time.monotonic() - child.down_at, 3))
                child.down_at = 0.0
            if self.phase != "running" and name in self.plan.front_doors():
                # restarted while the run drains: this incarnation must not take work either
                self.deliver(name, StopIntake())
        child.ready = True  # any word from it will do; "ready" itself may be lost at start
        if isinstance(report, Ready):
            self._learn_address(name, report.address)
        if isinstance(report, Stats):
            self._learn_address(name, str(report.figures.get("address", "")))
            figures = self.stats[name] = {**report.figures, "name": name}
            # one-shot reports can be lost while sockets connect: stats repeat them
            self.exhausted = self.exhausted or bool(figures.get("exhausted"))
            if figures.get("finished"):
                self.finished.add(name)
            if figures.get("flushed"):
                self.flushed = True
            if figures.get("failure"):
                self.failure = str(figures["failure"])
        elif isinstance(report, ProbeReply) and report.wave == self.wave:
            self.wave_replies[name] = report
        elif isinstance(report, Exhausted):
            self.exhausted = True
            self.next_tick = 0.0  # the end of the run starts now: the probe waves at once
        elif isinstance(report, Failed):
            self.failure = report.error.rstrip()
        elif isinstance(report, DeadLetters):  # from a worker on another host
            records = [r for r in report.records if type(r) is dict]
            why = deadletter.append_records(self.plan.dead_letter, records)
            if why:
                LOG.error(f"{why}: {len(records)} dead letters of {name} lost")

    def _on_exit(self, child: Child) -> None:
        pid = child.pid
        code = child.reap()
        lost = self._lost_state(child.name)
        self._retire(child.name)
        self.undelivered.pop(child.name, None)  # its next incarnation starts afresh
        title = self.plan.procs[child.name].title.removeprefix("seda: ")
        down = PeerDown(child.name, pid)
        note = read_note(self.run_dir, child.name) if code == EXIT_STUCK else {}
        if note:  # its watchdog ended it: those messages fail, the rest go out again
            limit, stage = note.get("limit"), note.get("stage")
            why = (f"stage '{stage}': the handler ran over its timeout of {limit:g} s; its "
                   f"worker was replaced")
            down = PeerDown(child.name, pid, why, str(note.get("sender") or ""),
                            [int(i) for i in note.get("ids", [])])
            LOG.warning(f"{title}: a call to stage '{stage}' ran over its timeout of "
                        f"{limit:g} s: replacing the process")
        self.broadcast(down, reliable=True)
        self.wave_replies.clear()
        self.waves.clear()
        self.wave = 0  # the new incarnation never saw the current probe: start another
        if self.phase == "done":
            return
        if self.scaler.exited(child.name):  # retired by the pool controller: parked
            child.popen = None
            return
        what = f"{title} {describe_exit(code)}"
        if self.plan.procs[child.name].role == "source":
            self.failure = f"{what}; a finite source cannot be resumed, so the run stops"
            return
        if note or code == EXIT_RECYCLE:  # ended on purpose, not a crash: no backoff, and
            child.restarts += 1  # not counted against the restart intensity
            child.restart_at = time.monotonic()
            child.down_at = child.down_at or child.restart_at
            child.popen = None
            self.restart_count += 1
            return
        now = time.monotonic()
        self.restart_count += 1
        if not self.intensity.crashed(now):
            self.failure = self._over_limit(what)
            return
        LOG.warning(f"{what}; restarting")
        if lost:
            self.lost_state.append(f"{title} died holding {lost}")
            LOG.error(f"{lost} was lost with it: the pipeline's result will be incomplete")
        child.restarts += 1
        child.restart_at = now + child.backoff.delay(now - child.started)
        child.down_at = child.down_at or now  # killed again before it was ready: one outage
        child.popen = None

    def _restart_due(self) -> None:
        now = time.monotonic()
        for name, child in self.children.items():
            if child.popen is None and child.restart_at <= now and not child.remote and \
                    name not in self.scaler.parked:
                child.start()

    def _stuck(self) -> None:
        """A handler call stuck in C code that holds the GIL starves its process's watchdog
        too; its heartbeat stops. Past the process's longest call limit (and a grace), the
        process is ended from outside: what it held goes out again as after any crash."""
        wall = time.time()
        for name, limit in self.watched.items():
            child = self.children[name]
            if not child.ready or not child.alive():
                continue
            try:
                age = wall - beat_path(self.run_dir, name).stat().st_mtime
            except OSError:
                continue  # its watchdog has not started yet
            if age > limit + STUCK_GRACE:
                title = self.plan.procs[name].title.removeprefix("seda: ")
                LOG.warning(f"{title}: silent for {age:.1f} s, over its handler timeout of "
                            f"{limit:g} s (a call that holds the GIL): killing it")
                child.signal(signal.SIGKILL)

    def _lost_state(self, name: str) -> str:
        """What a dying worker took with it that no re-run brings back: the in-memory state
        of a sink with finish() (its inputs were acknowledged as they were counted). Empty
        when none, or when its finish() value is already out."""
        last = self.stats.get(name, {})
        if self.spec.is_service or not last.get("keeps") or name in self.finished:
            return ""
        counted = sum(last["stages"].get(s, {}).get("completed", 0) for s in last["keeps"])
        stages = ", ".join(f"'{s}'" for s in last["keeps"])
        return f"the finish() state of {stages} ({counted} items as of its last report)"

    def _retire(self, name: str) -> None:
        """Keep the counters of a dead incarnation, so totals survive restarts."""
        last = self.stats.pop(name, None)
        if last:
            add_figures(self.retired, last)

    # ------------------------------------------------------------------ progress and end
    def totals(self, reports: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """stage.figure -> the sum over every process (its last report, or `reports`) and
        dead incarnation (a number, or a merged histogram for `stage.times`)."""
        out: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v
                               for k, v in self.retired.items()}
        for msg in (self.stats if reports is None else reports).values():
            add_figures(out, msg)
        return out

    def _reports(self, now: float) -> dict[str, dict[str, Any]]:
        """The children's last reports for the live view. A worker reports every 0.5 s
        between handler calls, so one silent for longer is inside a call: the time since its
        report counts as busy (for its pool's first stage), and a stuck worker shows busy,
        not idle."""
        out = dict(self.stats)
        for name, report in self.stats.items():
            silent = now - self.heard.get(name, now)
            if silent > SILENT_AFTER and self.plan.procs[name].role == "worker" and \
                    report.get("stages"):
                stages = dict(report["stages"])
                first = next(iter(stages))
                stages[first] = {**stages[first], "busy": stages[first]["busy"] + silent}
                out[name] = {**report, "stages": stages}
        return out

    def _show_progress(self) -> None:
        errors = int(sum(v for k, v in self.totals().items() if k.endswith(".errors")))
        dead = sum(m.get("dead_letters", 0) for m in self.stats.values())
        if self.spec.is_service:  # requests read by the front doors, and not answered yet
            doors = [self.stats.get(n, {}) for n in self.plan.front_doors()]
            count = sum(d.get("requests", 0) for d in doors)
            answered = sum(d.get(k, 0) for d in doors
                           for k in ("responses", "rejected", "timeouts", "failed"))
            self.progress.update("requests", count, max(0, count - answered), errors, dead,
                                 self.restart_count)
        else:
            source = self.stats.get("source", {})
            self.progress.update("read", source.get("read", 0), source.get("pending", 0),
                                 errors, dead, self.restart_count)

    def _tick(self, now: float) -> Outcome | None:
        self._check_ready()
        if self.plan.remote:
            self._check_remote(now)
        if (self.status_server is not None or self.scaler.controllers) and \
                now >= self.next_status:
            self.next_status = now + STATUS_EVERY
            self._update_status(now)
        if self.progress.enabled:
            self._show_progress()
        workers = {w.name for w in self.plan.workers()} - self.scaler.parked
        for action in self.ending.step(now, stopping=bool(self.stop_signal),
                                       exhausted=self.exhausted, quiet=self._quiet,
                                       workers_finished=workers <= self.finished,
                                       flushed=self.flushed):
            outcome = self._carry_out(action)
            if outcome is not None:
                return outcome
        return None

    def _carry_out(self, action: str) -> Outcome | None:
        """Do what the end of the run asks (seda.engine.ending); the Outcome if the run is over."""
        if action == ending.DRAIN:
            self.readiness = "draining"
            self.notify("STOPPING=1", f"STATUS=draining ({signal.Signals(self.stop_signal).name})")
            for door in self.plan.front_doors() or [self.plan.origin()]:
                self.deliver(door, StopIntake())
        elif action == ending.FINISH:
            self.broadcast(Finish(), reliable=True)
        elif action == ending.FLUSH:
            self.deliver(self.plan.origin(), Flush())
        elif action == ending.STOPPED:
            return Outcome(0, "")  # the summary is made once the front doors stopped
        elif action == ending.DRAIN_TIMEOUT:
            held = ", ".join(f"{n}: {m.get('pending')}{_held_by(m)}"
                             for n, m in self.stats.items() if m.get("pending"))
            why = "drain timeout: stopped with work still in flight"
            return Outcome(self._interrupted_code(), f"{why} ({held or 'in transit'})")
        elif action == ending.FINISHED:
            code = self._interrupted_code() or (1 if self.lost_state else 0)
            return Outcome(code, self._summary())
        elif action == ending.SINKS_LATE:
            return Outcome(1, "sinks did not finish in time")
        return None

    @property
    def phase(self) -> str:
        return self.ending.phase

    def _interrupted_code(self) -> int:
        return 128 + self.stop_signal if self.stop_signal else 0

    def _quiet(self) -> bool:
        """Run probe waves; True once two complete waves in a row show nothing in flight."""
        alive = {n for n, c in self.children.items() if c.alive() and c.ready}
        if not set(self._active()) <= alive:
            return False
        if self.wave and alive <= set(self.wave_replies):
            self.waves.append(dict(self.wave_replies))
            self.waves = self.waves[-2:]
            self.wave_replies = {}
            self.wave = 0
        now = time.monotonic()
        if self.wave and now - self.wave_started > WAVE_PATIENCE:
            self.wave, self.wave_replies = 0, {}  # a probe or a reply was lost: ask again
        if self.wave == 0:
            self.wave = self.wave_seq = self.wave_seq + 1
            self.wave_started = now
            if not self.broadcast(Probe(self.wave)):
                # a child was not reachable yet (it has just started): ask again at the next
                # tick rather than after WAVE_PATIENCE -- a short pipeline ends 0.5 s sooner
                self.wave_started = now - WAVE_PATIENCE
        if len(self.waves) < 2:
            return False
        first, second = self.waves
        if any(m.pending for m in second.values()):
            return False
        return all(first[n].sent == second[n].sent and first[n].pending == 0
                   for n in second)

    def _service_summary(self) -> str:
        doors = [self.stats.get(n, {}) for n in self.plan.front_doors()]
        figures = ", ".join(f"{sum(d.get(k, 0) for d in doors)} {k.replace('_', ' ')}"
                            for k in ("requests", "responses", "rejected", "timeouts",
                                      "failed", "protocol_errors"))
        dead = deadletter.count(self.plan.dead_letter) - self.dead_before
        return (f"service '{self.spec.name}' stopped after draining: {figures}, "
                f"{dead} dead-lettered{' -> ' + self.plan.dead_letter if dead else ''}, "
                f"{self.restart_count} restarts{self._by_host()}")

    def _by_host(self) -> str:
        """Where the restarts were, when workers joined from other hosts: ' (host: n, ...)'
        (a joined worker taken for gone counts one for the host it ran on)."""
        if not self.lost_on:
            return ""
        hosts = dict(self.lost_on)
        here = self.restart_count - sum(hosts.values())
        if here:
            hosts["this host"] = here
        return " (" + ", ".join(f"{h}: {n}" for h, n in sorted(hosts.items())) + ")"

    def _summary(self) -> str:
        source = self.stats.get("source", {})
        totals = self.totals()
        first = source.get("first_item_at") or 0.0
        elapsed = time.time() - first if first else time.monotonic() - self.started
        read = source.get("read", 0)
        errors = int(sum(v for k, v in totals.items() if k.endswith(".errors")))
        dups = int(sum(v for k, v in totals.items() if k.endswith(".duplicates")))
        dups += source.get("duplicates", 0)
        dead = deadletter.count(self.plan.dead_letter) - self.dead_before
        last = self.waves[-1].get("source") if self.waves else None
        read = int(last.extra.get("read", read)) if last is not None else read
        word = "interrupted" if self.stop_signal else "finished"
        startup = time.monotonic() - self.started - elapsed if first else 0.0
        return (f"pipeline '{self.spec.name}' {word}: {read} items in {elapsed:.2f} s "
                f"({read / elapsed:.0f}/s; start-up {startup:.2f} s); {errors} handler errors, "
                f"{dead} dead-lettered"
                f"{' -> ' + self.plan.dead_letter if dead else ''}, {dups} duplicates "
                f"dropped, {self.restart_count} restarts{self._by_host()}"
                + (f"; RESULT INCOMPLETE: {'; '.join(self.lost_state)}" if self.lost_state
                   else ""))
