"""Entry point of every child process: `python -m seda.runtime.child PLAN NAME SUPERVISOR_PID`.

A fresh interpreter per child (no fork, nothing inherited but the environment): it reads the
plan, dies with its supervisor, imports the handlers and runs its role.

Stop signals: the supervisor starts children with SIGINT and SIGTERM blocked; a child ignores
both before unblocking them (first thing, before any import of weight), so a signal sent to
the whole process group while a child starts is never the child's to act on.
"""

from __future__ import annotations

import gc
import io
import os
import signal
import sys
from contextlib import suppress
from pathlib import Path

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def ignore_stop_signals() -> None:
    """The supervisor alone decides when a child stops (CONTROL `stop`): a Ctrl-C or a SIGTERM
    to the whole process group (systemd, timeout, a shell) stops the graph once, through the
    supervisor's drain, instead of ending children it would then restart."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


GC_YOUNG = 20_000  # container allocations between young collections (Python's default: 700)


def tune_gc() -> None:
    """A data-plane process allocates a few short-lived containers per message; with
    Python's defaults the cyclic collector ran every ~700 allocations and rescanned every
    imported module's objects in its older generations. So: what exists at start-up (imports,
    the plan) is frozen out of collection, and the young generation is collected every
    GC_YOUNG allocations -- a few MB of garbage at most, and ~3-8% more throughput measured
    on the chain pipeline and behind the acceptor (docs/runtime.md)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 50, 100)


def main(argv: list[str]) -> int:
    ignore_stop_signals()
    from seda.handler import HandlerImportError, resolve
    from seda.log import LOG, configure
    from seda.plan.deployment import Plan
    from seda.runtime.node import die_with_parent

    plan_path, name, parent = argv[1], argv[2], int(argv[3])
    die_with_parent(parent)
    plan = Plan.from_json(Path(plan_path).read_text(encoding="utf-8"))
    sys.path[:0] = [p for p in plan.search_path if p not in sys.path]
    role = plan.procs[name].role
    configure(name, plan.graph, plan.log_level, plan.log_format, plan.log_time)
    tune_gc()
    # what handlers print goes to stderr: stdout carries a pipeline's results alone (the
    # source writes them to the stdout it was given, kept here as `results`)
    try:
        results = os.dup(1)
    except OSError:  # (started with stdout closed)
        results = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    with suppress(OSError):
        os.dup2(2, 1)
    # one write a line (also under PYTHONUNBUFFERED, which writes a print's text and its
    # newline apart): lines from several processes never cut into each other, and none
    # waits in a buffer when a process ends
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, write_through=False)
    try:
        if role == "worker":
            from seda.runtime.worker import Worker

            worker = Worker(plan, name, parent, resolve)
            worker.run()
            return worker.exit_code
        elif role == "source":
            from seda.runtime.source import Source

            target: str | int = plan.output or results
            with open(target, "a" if plan.output else "w", encoding="utf-8",
                      closefd=bool(plan.output)) as out:
                Source(plan, name, parent, resolve, out).run()
        elif role == "acceptor":
            from seda.runtime.acceptor import Acceptor

            Acceptor(plan, name, parent, int(argv[4]), resolve).run()
        elif role == "master":
            from seda.runtime.mp import Master

            Master(plan, name, parent, int(argv[4]), resolve).run()
        else:
            LOG.error(f"unknown role '{role}'")
            return 3
    except HandlerImportError as exc:
        LOG.error(str(exc))
        return 3
    finally:
        os.close(results)
    return 0


def profiled(argv: list[str]) -> int:
    """With SEDA_PROFILE=DIR, each child writes DIR/NAME.prof (cProfile) when it stops."""
    import cProfile

    folder = os.environ["SEDA_PROFILE"]
    profile = cProfile.Profile()
    try:
        return int(profile.runcall(main, argv))
    finally:
        profile.dump_stats(os.path.join(folder, f"{argv[2]}.prof"))


if __name__ == "__main__":
    sys.exit(profiled(sys.argv) if os.environ.get("SEDA_PROFILE") else main(sys.argv))
