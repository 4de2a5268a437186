"""The no-pickle guard. Python imports `sitecustomize` at start-up from the path; the tests put
this folder first on PYTHONPATH for every `seda run` they start (tests/runkit.py), so the
supervisor and every child it starts load it. With $SEDA_PICKLE_LOG set, any use of pickle
(pickle.dumps/loads/dump/load, a Pickler or Unpickler, which is what multiprocessing queues
and pyzmq's send_pyobj/recv_pyobj use) is written to that file with where it came from; the
run's test then fails. seda's wire format is msgpack only: an unpickler fed by a socket runs
whatever code the bytes name. (Ray pickles in its own control plane when a run is placed by
Ray: --ray; calls from inside the ray package are not recorded.)"""

from __future__ import annotations

import os
import pickle
import traceback
from typing import Any

LOG = os.environ.get("SEDA_PICKLE_LOG", "")


def _record(what: str) -> None:
    stack = traceback.format_stack(limit=10)
    if any(f"{os.sep}ray{os.sep}" in frame for frame in stack):
        return  # Ray's own control plane under --ray (its actors' classes and arguments)
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"pid {os.getpid()}: {what}\n{''.join(stack)}\n")


def _watch(name: str) -> None:
    original = getattr(pickle, name)

    def watched(*args: Any, **kwargs: Any) -> Any:
        _record(f"pickle.{name}")
        return original(*args, **kwargs)

    setattr(pickle, name, watched)


class _Pickler(pickle.Pickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _record("pickle.Pickler")
        super().__init__(*args, **kwargs)


class _Unpickler(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _record("pickle.Unpickler")
        super().__init__(*args, **kwargs)


if LOG:
    for _name in ("dumps", "loads", "dump", "load"):
        _watch(_name)
    pickle.Pickler = _Pickler  # type: ignore[misc]
    pickle.Unpickler = _Unpickler  # type: ignore[misc]
