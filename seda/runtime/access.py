"""The access log of a service (`seda run --access-log`): one line per answer written.

Each acceptor (every model's front door) logs, through the `seda.access` logger at info, the
client, the request, its status, the bytes written and the time from the request's last
byte read to its answer's write -- the server's own time, queues included:

    seda: acceptor.0: 127.0.0.1:50114 "GET /item/7?x=1" 200 31 B 1.4 ms

In `--log-format json` the same fields are keys of the line's object: client, request,
status, bytes, ms (and id, the request's id in the graph, where it has one). The status is
the HTTP code; RESP answers are "ok" or "error" (a `-` reply); line answers "ok". Answers the
server makes itself (400, 408, 503, 504) are logged like the others.

It is off by default: a line per request costs the acceptor about as much as serving a small
request (it halves a hello service's throughput under sped).
"""

from __future__ import annotations

import logging
from typing import Any

LOG = logging.getLogger("seda.access")


def describe(request: Any) -> str:
    """A request as the access log names it: `GET /path?query`, a RESP command with its
    first argument, or a line's first 80 characters. None (an answer with no request of its
    own: a protocol error) is `-`."""
    if request is None:
        return "-"
    if type(request) is dict:
        path, query = str(request.get("path", ""))[:200], request.get("query")
        return f"{request.get('method')} {path}{'?' + str(query)[:200] if query else ''}"
    if type(request) is list and request:
        words = [w.decode("latin-1") if isinstance(w, bytes) else str(w) for w in request[:2]]
        return " ".join(w[:80] for w in words)
    return str(request)[:80]


def status_of(out: bytes, http: bool) -> int | str:
    """The status of an answer's bytes (our own encoders wrote them): an HTTP code, or ok /
    error for RESP (`-...` is an error) and lines."""
    if http:
        try:
            return int(out[9:12])
        except ValueError:
            return "-"
    return "error" if out[:1] == b"-" else "ok"


def log(client: str, request: Any, out: bytes, size: int, seconds: float, http: bool,
        request_id: int = 0) -> None:
    """One answer written (`size`: its bytes, a file's included)."""
    status, what = status_of(out, http), describe(request)
    fields: dict[str, Any] = {"client": client, "request": what, "status": status,
                              "bytes": size, "ms": round(seconds * 1000, 3)}
    if request_id:
        fields["id"] = request_id
    LOG.info('%s "%s" %s %d B %.1f ms', client, what, status, size, seconds * 1000,
             extra={"fields": fields})


def address(name: Any) -> list[Any] | None:
    """[host, port] of a socket's peer name (IPv4 or IPv6), None when it has none."""
    if isinstance(name, tuple) and len(name) >= 2:
        return [name[0], name[1]]
    return None


def peer(name: Any) -> str:
    """`host:port` of a client from its socket's peer name ('-' when it has none)."""
    if isinstance(name, tuple) and len(name) >= 2:
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in str(host) else f"{host}:{name[1]}"
    return "-"
