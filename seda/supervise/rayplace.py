"""Ray as the placement engine (seda run --ray; docs/cluster.md): each worker slot of a
stage with `placement:` becomes a Ray actor that runs `seda worker --join` on the node Ray
chose, with the resources the stage asks for. Ray places, watches and replaces the actors
(one whose node dies is started again elsewhere: it joins the run's free slot); seda's own
data plane carries the messages. Imported only with --ray: the default install does not
need ray (`pip install 'seda[ray]'`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from seda.log import LOG

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before it execs: SIGKILL when its parent (the actor) dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _SlotActor:
    """One worker of a run, on a Ray node: runs `seda worker --join` there and lives as long
    as it does (when it ends, the actor ends itself, so Ray starts it again: it joins the
    run's free slot)."""

    def __init__(self, url: str, stage: str, secret: str) -> None:  # (on the Ray node)
        import ray

        argv = [sys.executable, "-m", "seda.cli", "worker", "--join", url, "--stage", stage,
                "--host", ray.util.get_node_ip_address()]  # type: ignore[no-untyped-call]
        if secret:  # (the run's secret key through a pipe: never in a file of the node's
            argv += ["--keys", "-"]  # that outlives the worker's start, however it ends)
        env = {**os.environ, "SEDA_RAY_NODE": ray.get_runtime_context().get_node_id()}
        # it dies with the actor (a node removed kills the actor, not its children: an
        # orphan worker would keep its slot's name alive beside its replacement)
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        assert self.proc.stdin is not None
        with self.proc.stdin:
            self.proc.stdin.write(secret.encode("ascii"))
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        code = self.proc.wait()
        os._exit(code or 1)  # (an actor that exits is restarted by Ray: max_restarts)

    def pid(self) -> int:
        return int(self.proc.pid)


class Placer:
    """The run's Ray actors: one per worker slot that Ray places."""

    def __init__(self, address: str, url: str, secret: str,
                 slots: Sequence[tuple[str, str, dict[str, float], str]]) -> None:
        """`slots`: (slot name, stage, resources, strategy) for each worker Ray places."""
        import ray

        ray.init(address=None if address == "local" else address, log_to_driver=True,
                 logging_level=logging.WARNING)
        self.ray = ray
        actor = ray.remote(_SlotActor)
        self.actors: list[Any] = []
        for name, stage, resources, strategy in slots:
            need = dict(resources)
            cpus = need.pop("CPU", 0.0)
            gpus = need.pop("GPU", 0.0)
            memory = need.pop("memory", 0.0)
            options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "resources": need,
                                       "max_restarts": -1, "name": f"seda-{os.getpid()}-{name}"}
            if memory:
                options["memory"] = memory
            if strategy == "spread":
                options["scheduling_strategy"] = "SPREAD"
            self.actors.append(actor.options(**options).remote(url, stage, secret))
            LOG.info(f"worker slot {name} ({stage}): placed by Ray"
                     f"{' with ' + str(resources) if resources else ''}")

    def close(self) -> None:
        for handle in self.actors:
            with contextlib.suppress(Exception):  # (gone already: nothing to end)
                self.ray.kill(handle, no_restart=True)
        self.ray.shutdown()
