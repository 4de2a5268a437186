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

from seda import __version__
from seda.engine import wire
from seda.engine.wire import JOIN, pack, unpack
from seda.errors import ProtocolError
from seda.log import LOG, configure
from seda.plan.deployment import Plan
from seda.runtime import secure

ANSWER_WITHIN = 10.0  # s: how long a joining worker waits for the supervisor's answer
JOINED = "seda-joined-"  # a joined worker's own folder: JOINED + its pid + "-" + a random tail


def remove_stale(folder: str) -> None:
    """Remove the folders that joined workers which died unable to clean up (SIGKILL, their
    node gone) left in `folder`: those whose pid is not a live process."""
    for path in Path(folder).glob(f"{JOINED}*-*"):
        pid = path.name[len(JOINED):].partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # (alive, another user's)
            pass


def address_towards(url: str) -> str:
    """This host's address on the route to `url`'s host (tcp://HOST:PORT): the one the run's
    processes reach a worker here by, unless told otherwise. (A UDP socket's connect picks
    the route and sends nothing.)"""
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, int(port), 0,
                                                           socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(where)
            return str(probe.getsockname()[0])
    except (OSError, ValueError):
        return "127.0.0.1"


def _dealer(context: zmq.Context[zmq.Socket[bytes]], url: str, keys: secure.Keys | None
            ) -> zmq.Socket[bytes]:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        secure.connect_as(sock, keys)
    sock.connect(url)
    return sock


def ask(url: str, keys: secure.Keys | None, stage: str = "", timeout: float = ANSWER_WITHIN,
        address: str = "") -> dict[str, Any]:
    """The supervisor's answer to a JOIN: {"name", "plan"} or {"error"}. `address`: where
    this worker will bind (hosts with one name, as network namespaces, are told apart by
    it)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = _dealer(context, url, keys)
        sock.send_multipart([JOIN, pack({"host": socket.gethostname(), "pid": os.getpid(),
                                         "stage": stage, "address": address,
                                         "node": os.environ.get("SEDA_RAY_NODE", ""),
                                         "wire": wire.WIRE, "version": __version__})])
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
        if "error" not in answer and answer.get("wire") != wire.WIRE:
            return {"error": mismatch("this worker", f"the run at {url}", answer)}
        return answer
    except ProtocolError as exc:
        return {"error": f"a malformed answer from {url}: {exc}"}
    finally:
        context.destroy(linger=0)


def mismatch(us: str, them: str, said: dict[str, Any]) -> str:
    """Why a run and a worker that speak different frame formats cannot work together:
    `us` speaks this process's format, `them` what `said` says (its "wire" and "version",
    absent from a seda older than both)."""
    theirs = f"format {said['wire']}" if "wire" in said else "an older format"
    version = f"seda {said['version']}" if "version" in said else "an older seda"
    return (f"{us} speaks frame format {wire.WIRE} (seda {__version__}), {them} {theirs} "
            f"({version}): install the same seda version on every host")


def report_failure(url: str, keys: secure.Keys | None, name: str, error: str,
                   within: float = 2.0) -> None:
    """Tell the supervisor that this worker, which took slot `name`, could not start (its
    handlers failed to import or to set up here): it counts a crash of the slot, so a host
    that cannot run the stage ends the run at the restart limit instead of joining for
    ever. Best effort: sent, and given `within` s to leave."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = _dealer(context, url, keys)
        sock.setsockopt(zmq.LINGER, int(within * 1000))
        sock.send_multipart([JOIN, pack({"failed": name, "pid": os.getpid(),
                                         "error": error[:2000]})])
        sock.close()  # (lingers until it is sent, or `within`)
    finally:
        context.term()


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
    """`keys_path` "-": the secret key read from stdin (as a Ray actor hands it over): in a
    file of this worker's private folder only until its sockets have it."""
    configure("worker", "", "info", "text", False)
    remove_stale(tempfile.gettempdir())
    run_dir = tempfile.mkdtemp(prefix=f"{JOINED}{os.getpid()}-")
    try:
        given = keys_path == "-"
        if given:
            keys_path = os.path.join(run_dir, "run.key_secret")
            fd = os.open(keys_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(sys.stdin.read(1 << 16))
        keys = secure.load_keys(keys_path) if keys_path else None
        answer = ask(url, keys, stage, address=host)
        if "error" in answer:
            LOG.error(f"seda worker: {answer['error']}")
            return 1
        plan, name = joined_plan(answer, url, host, str(secure.secret_file(keys_path).resolve())
                                 if keys_path else "", run_dir)
        configure(name, plan.graph, plan.log_level, plan.log_format, plan.log_time)
        for folder in search_path_note(plan):
            LOG.warning(f"the run imports handlers from {folder}, which this host lacks: "
                        f"its handlers must be importable here too")
        sys.path[:0] = [p for p in plan.search_path if p not in sys.path]
        from seda.handler import HandlerImportError, resolve
        from seda.runtime.child import tune_gc
        from seda.runtime.worker import Worker

        tune_gc()
        LOG.info(f"joined run '{plan.graph}' at {url} as {name}")
        try:
            worker = Worker(plan, name, 0, resolve)
        except Exception as exc:  # its handlers fail to import or to set up on this host
            error = str(exc) if isinstance(exc, HandlerImportError) else \
                f"{type(exc).__name__}: {exc}"
            LOG.error(f"cannot run {name} here: {error}")
            report_failure(url, keys, name, error)
            return 3
        if given:  # (its sockets have the keys now)
            os.unlink(keys_path)
        worker.run()
        return worker.exit_code
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def search_path_note(plan: Plan) -> list[str]:
    """The plan's handler folders that this host lacks (its handlers must be here too)."""
    return [p for p in plan.search_path if not Path(p).is_dir()]
