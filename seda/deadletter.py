"""The dead-letter file: one JSON line per message that exhausted its attempts.

Every process may append; each record is written with one O_APPEND write, so lines from
different processes do not interleave.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from seda.envelope import ATTEMPT, ID, ORIGIN, PAYLOAD
from seda.flow import DeadLetter


def _jsonable(payload: Any) -> Any:
    try:
        json.dumps(payload)
        return payload
    except (TypeError, ValueError):
        if isinstance(payload, bytes):
            return {"base64": base64.b64encode(payload).decode()}
        return {"repr": repr(payload)[:10_000]}


def record(graph: str, letter: DeadLetter) -> dict[str, Any]:
    env = letter.env
    return {"time": round(time.time(), 3), "graph": graph, "stage": letter.stage,
            "id": env[ID], "origin": env[ORIGIN], "attempts": env[ATTEMPT] - 1,
            "error": letter.error, "traceback": letter.traceback,
            "payload": _jsonable(env[PAYLOAD])}


def append(path: str, graph: str, letters: list[DeadLetter]) -> None:
    """Append `letters` to the file at `path` (created 0600 if missing)."""
    if not letters:
        return
    data = "".join(json.dumps(record(graph, lt)) + "\n" for lt in letters).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: str) -> list[dict[str, Any]]:
    """All records of a dead-letter file (for tests and `seda` tooling)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
