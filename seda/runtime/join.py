"""`seda worker --join tcp://HOST:PORT --keys FILE`: a worker process that joins a run from
anywhere (docs/cluster.md). It asks the run's supervisor for a slot (a JOIN frame, over
CurveZMQ with the run's key), receives the run's plan and its name, binds its inbox on TCP
at its own host, and from then on is a worker like the local ones: the supervisor learns
its address from its first report and tells its peers. It exits when its run stops it, or
when it hears nothing from the supervisor for a few seconds (node.SUPERVISOR_SILENCE).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq

from seda.engine.wire import JOIN, pack, unpack
from seda.errors import ProtocolError
from seda.log import LOG, configure
from seda.plan.deployment import Plan
from seda.runtime import secure

ANSWER_WITHIN = 10.0  # s: how long a joining worker waits for the supervisor's answer


def ask(url: str, keys: secure.Keys | None, stage: str = "", timeout: float = ANSWER_WITHIN
        ) -> dict[str, Any]:
    """The supervisor's answer to a JOIN: {"name", "plan"} or {"error"}."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            secure.connect_as(sock, keys)
        sock.connect(url)
        sock.send_multipart([JOIN, pack({"host": socket.gethostname(), "pid": os.getpid(),
                                         "stage": stage,
                                         "node": os.environ.get("SEDA_RAY_NODE", "")})])
        if not sock.poll(int(timeout * 1000)):
            return {"error": f"no answer from {url} within {timeout:g} s: is a run accepting "
                             f"workers there (seda run --join-at), and is this its key? (a "
                             f"peer with another key is refused: the run counts it in "
                             f"refused_peers)"}
        frames = sock.recv_multipart()
        if len(frames) != 2 or frames[0] != JOIN:
            return {"error": f"{url} answered with something other than a seda run's JOIN"}
        answer = unpack(frames[1], 64 << 20)
        if type(answer) is not dict:
            raise ProtocolError("not a map")
        return answer
    except ProtocolError as exc:
        return {"error": f"a malformed answer from {url}: {exc}"}
    finally:
        context.destroy(linger=0)


def joined_plan(answer: dict[str, Any], url: str, host: str, keys: str, run_dir: str
                ) -> tuple[Plan, str]:
    """The run's plan as this process runs it: its inbox on TCP at `host`, the supervisor at
    `url`, this host's key file and a run folder of its own."""
    plan = Plan.from_json(str(answer["plan"]))
    name = str(answer["name"])
    where = f"[{host}]" if ":" in host else host
    plan.procs[name] = replace(plan.procs[name], endpoint=f"tcp://{where}:*")
    plan.supervisor_address, plan.keys, plan.run_dir = url, keys, run_dir
    return plan, name


def main(url: str, keys_path: str, host: str, stage: str = "") -> int:
    configure("worker", "", "info", "text", False)
    keys = secure.load_keys(keys_path) if keys_path else None
    answer = ask(url, keys, stage)
    if "error" in answer:
        LOG.error(f"seda worker: {answer['error']}")
        return 1
    run_dir = tempfile.mkdtemp(prefix="seda-joined-")
    try:
        plan, name = joined_plan(answer, url, host, str(secure.secret_file(keys_path).resolve())
                                 if keys_path else "", run_dir)
        configure(name, plan.graph, plan.log_level, plan.log_format, plan.log_time)
        for folder in search_path_note(plan):
            LOG.warning(f"the run imports handlers from {folder}, which this host lacks: "
                        f"its handlers must be importable here too")
        sys.path[:0] = [p for p in plan.search_path if p not in sys.path]
        from seda.handler import resolve
        from seda.runtime.child import tune_gc
        from seda.runtime.worker import Worker

        tune_gc()
        LOG.info(f"joined run '{plan.graph}' at {url} as {name}")
        worker = Worker(plan, name, 0, resolve)
        worker.run()
        return worker.exit_code
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def search_path_note(plan: Plan) -> list[str]:
    """The plan's handler folders that this host lacks (its handlers must be here too)."""
    return [p for p in plan.search_path if not Path(p).is_dir()]
