"""The status server: `/api/status` (JSON), `/metrics` (Prometheus text), the dashboard and
`POST /api/scale`, served by the supervisor from one thread that runs an event loop.

It only reads the latest snapshot (replaced whole by the supervisor) and calls the scaler's
thread-safe `request`. Requests are framed by seda's own sans-IO HTTP codec.

Resource handling: at most MAX_CONNECTIONS open connections (past it the one idle longest
makes room for the new one), each closed after IDLE_TIMEOUT without a request; a request's
head and body are bounded by the codec's limits (431/413), so no client can make it hold a
thread, unbounded memory, or a read that waits for bytes that never come.

Error handling (who may ask what): beyond loopback every request needs the run's token
(`status_access`). Without a token only the names a loopback client uses are accepted as
`Host` (a page on another site that resolves its own name to 127.0.0.1 -- DNS rebinding --
is refused). A change (`POST /api/scale`) must say `Content-Type: application/json`, which a
cross-site form cannot send without a CORS preflight this server never grants, and an
`Origin`, when a browser sends one, must be this server's own: a cross-site page cannot
resize pools (CSRF).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, cast
from urllib.parse import parse_qs

from seda.engine.codec.http import HttpCodec
from seda.engine.config import Limits
from seda.errors import ProtocolError, RunError
from seda.names import parse_listen
from seda.observe.status import Status, metric_families

TOKEN_MIN = 16  # characters: a status token shorter than this is refused
MAX_CONNECTIONS = 128
IDLE_TIMEOUT = 15.0  # s without a request before a connection is closed
LIMITS = Limits(max_connections=10_000, max_request_bytes=4096, max_header_bytes=8192,
                max_inflight=8, header_timeout=IDLE_TIMEOUT, idle_timeout=IDLE_TIMEOUT,
                request_timeout=30.0)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def status_access(listen: str, token: str) -> str | None:
    """Why the status endpoint may not be served at `listen` with `token` (None: it may).
    Loopback needs nothing; any other address needs a token, which every request then
    carries (`Authorization: Bearer TOKEN`, or `?token=TOKEN` for a browser)."""
    try:
        host, _port = parse_listen(listen)
    except ValueError as exc:
        return str(exc)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if token and len(token) < TOKEN_MIN:
        return f"the status token is too short ({len(token)} characters; at least {TOKEN_MIN})"
    if not loopback and not token:
        return (f"{host} is not a loopback address: the status endpoint shows the graph's "
                f"figures to anyone who can reach it, so it needs --status-token "
                f"(or SEDA_STATUS_TOKEN) there")
    return None


def _answer(status: int, body: bytes | str, kind: str = "text/plain; charset=utf-8",
            **headers: str) -> dict[str, Any]:
    return {"status": status, "body": body,
            "headers": {"content-type": kind, "cache-control": "no-store", **headers}}


class Pages:
    """What the server answers: a request (the codec's dict) in, a reply dict out. No IO."""

    def __init__(self, status: Status, token: str, port: int,
                 scale: Callable[[str, int], dict[str, Any]] | None,
                 ready: Callable[[], str] = lambda: "") -> None:
        from prometheus_client.registry import Collector, CollectorRegistry

        from seda.spec.render import to_svg

        class Snapshot(Collector):
            def collect(self) -> Iterable[Any]:
                return metric_families(status.snapshot)

        self.status, self.token, self.port, self.scale = status, token, port, scale
        self.ready = ready  # "" when the graph is ready, else why not
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Snapshot())
        page = resources.files("seda.observe") / "web" / "dashboard.html"
        self.dashboard = page.read_bytes()
        self.drawing = to_svg(status.spec).encode()  # the layout of `seda graph -f svg`
        self.hosts = {f"{name}:{port}" for name in LOOPBACK_NAMES}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        path = request["path"]
        if path in ("/healthz", "/readyz") and request["method"] in ("GET", "HEAD"):
            # probes (a load balancer, Kubernetes) reach the pod's address with no token:
            # these say alive/ready and nothing else, so they need neither
            if path == "/healthz":
                return _answer(200, "ok\n")
            why = self.ready()
            return _answer(503, f"not ready: {why}\n") if why else _answer(200, "ready\n")
        headers = request["headers"]
        if not self.token and headers.get("host", "").lower() not in self.hosts:
            return _answer(403, "403 this status server answers to localhost only (Host)\n")
        if not self.allowed(headers, request["query"]):
            return _answer(401, "", **{"www-authenticate": 'Bearer realm="seda"'})
        method = request["method"]
        if method == "POST" and path == "/api/scale" and self.scale is not None:
            return self.resize(request)
        if method not in ("GET", "HEAD"):
            return _answer(405, "405 GET, or POST /api/scale\n", allow="GET, HEAD, POST")
        if path == "/api/status":
            return _answer(200, json.dumps(self.status.snapshot), "application/json")
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return _answer(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path in ("/", "/index.html"):
            return _answer(200, self.dashboard, "text/html; charset=utf-8")
        if path == "/graph.svg":
            return _answer(200, self.drawing, "image/svg+xml")
        return _answer(404, "404 try /, /api/status, /metrics, /healthz or /readyz\n")

    def allowed(self, headers: dict[str, str], query: str) -> bool:
        if not self.token:
            return True
        given = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not given:
            given = parse_qs(query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def resize(self, request: dict[str, Any]) -> dict[str, Any]:
        """`POST /api/scale` {"stage": S, "workers": N}: what `seda scale` sends."""
        headers = request["headers"]
        kind = headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            return _answer(415, "415 send Content-Type: application/json\n")
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{headers.get('host', '')}".lower():
            return _answer(403, "403 a change must come from this server's own pages\n")
        expected = 'expected {"stage": name, "workers": count}'
        try:
            asked = json.loads(request["body"] or b"{}")
            stage, workers = asked["stage"], asked["workers"]
            if not isinstance(stage, str) or type(workers) is not int:
                raise ValueError(expected)
            assert self.scale is not None
            done = self.scale(stage, workers)
        except (ValueError, KeyError, TypeError) as exc:
            message = str(exc) if isinstance(exc, ValueError) else expected
            return _answer(400, json.dumps({"error": message}), "application/json")
        return _answer(200, json.dumps(done), "application/json")


class _Connection(asyncio.Protocol):
    def __init__(self, server: StatusServer) -> None:
        self.server = server
        self.codec = HttpCodec(LIMITS)
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.active = 0.0  # loop time of its last request (or its start)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        connections = self.server.connections
        if len(connections) >= MAX_CONNECTIONS:  # the one idle longest makes room
            oldest = min(connections, key=lambda c: c.active)
            connections.discard(oldest)
            if oldest.transport is not None:
                oldest.transport.abort()
        connections.add(self)
        self._rearm()

    def _rearm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.active = self.server.loop.time()
        if self.transport is not None:
            self.idle = self.server.loop.call_later(IDLE_TIMEOUT, self.transport.close)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self._rearm()
        try:
            requests = self.codec.feed(data)
        except ProtocolError as exc:
            self.transport.write(self.codec.error_reply(exc))
            self.transport.close()
            return
        for request in requests:
            out, close = self.codec.encode(self.server.pages.answer(request), request)
            self.transport.write(out)
            if close:
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.server.connections.discard(self)


class StatusServer:
    """Serves `Pages` from a thread of its own running an event loop. The socket is bound
    here, before the thread starts, so a bad address fails `seda run` at once."""

    def __init__(self, status: Status, listen: str, token: str = "",
                 scale: Callable[[str, int], dict[str, Any]] | None = None,
                 ready: Callable[[], str] = lambda: "") -> None:
        why = status_access(listen, token)
        if why is not None:
            raise RunError(f"--status {listen}: {why}")
        host, port = parse_listen(listen)
        try:
            self.sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                             else socket.AF_INET)
        except OSError as exc:
            raise RunError(f"--status {listen}: {exc.strerror}") from None
        bound_host, bound_port = self.sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        self.pages = Pages(status, token, bound_port, scale, ready)
        self.connections: set[_Connection] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="status", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(self.loop.create_server(
            lambda: _Connection(self), sock=self.sock, backlog=128))
        try:
            self.loop.run_forever()
        finally:
            server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
