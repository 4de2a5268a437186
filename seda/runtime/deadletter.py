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

from seda.engine.credit import DeadLetter
from seda.engine.wire import ATTEMPT, ID, ORIGIN, PAYLOAD


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


def append(path: str, graph: str, letters: list[DeadLetter]) -> str:
    """Append `letters` to the file at `path` (created 0600 if missing). Returns why they
    could not be written ("" when they were): a full disk or a folder gone must not take
    the process that holds them down (the caller says so in its log and counts them)."""
    return append_records(path, [record(graph, lt) for lt in letters])


def append_records(path: str, records: list[dict[str, Any]]) -> str:
    """append() for records made already (by a worker on another host: see DeadLetters)."""
    if not records:
        return ""
    data = "".join(json.dumps(rec) + "\n" for rec in records).encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut short before
                data = b"\n" + data  # (ours starts on a line of its own)
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"cannot write the dead-letter file {path}: {exc.strerror}"
    return ""


def read(path: str) -> list[dict[str, Any]]:
    """The records of a dead-letter file (for tests and tools). A line that is not a JSON
    record (cut short by a full disk or a kill, or edited by hand) is skipped."""
    records = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    except FileNotFoundError:
        return []
    return records


def count(path: str) -> int:
    """How many records the file holds (its non-empty lines; 0 when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0



def show(record: dict[str, Any], traceback: bool = False, width: int = 200) -> str:
    """One record, readable: when, where, how often, the error, the payload (cut to `width`
    characters), and the traceback if asked."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("time") or 0)))
    payload = json.dumps(record.get("payload"), ensure_ascii=False)
    if len(payload) > width:
        payload = payload[:width] + f"... ({len(payload):,} characters)"
    lines = [f"{when}  graph {record.get('graph', '?')}  stage {record.get('stage', '?')}  "
             f"id {record.get('id', '?')}  attempts {record.get('attempts', '?')}",
             f"  error: {record.get('error', '')}", f"  payload: {payload}"]
    if traceback and record.get("traceback"):
        lines += ["  " + line for line in str(record["traceback"]).rstrip().splitlines()]
    return "\n".join(lines)
