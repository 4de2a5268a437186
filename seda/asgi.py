"""An existing ASGI 3 application (Starlette, FastAPI, Quart, ...) as a seda stage.

`handler: asgi:module:app` in a graph names the app; `seda.handler.resolve` wraps it in an
`App`, an async handler class: each worker (or inline front door) runs the app's lifespan
once (`setup`/`teardown`), and every HTTP request the acceptor gives the stage becomes an
ASGI `http` scope with `receive`/`send`; what the app sends becomes the stage's reply.

What it does not do (yet), said plainly:
- a streamed response (several `http.response.body` messages) goes to the client part by
  part (chunked), through ctx.stream -- under mp it is sent whole once the app is done;
- the request body arrives whole (the acceptor reads it before the stage runs), so
  `receive()` gives it in one `http.request` message;
- websockets are refused: the acceptor's HTTP codec answers an `Upgrade` request 400
  ("protocol upgrades are not supported"), so no `websocket` scope is ever made;
- the scope's `client` is the peer's [host, port] (None on a Unix socket); its `server` is
  None; repeated request headers arrive joined with ", " (seda's request payload is a
  mapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from seda.calls import is_coroutine

Message = MutableMapping[str, Any]
ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]

PREFIX = "asgi:"
LIFESPAN_TIMEOUT = 30.0  # s a lifespan startup or shutdown may take
# headers the acceptor writes itself (the reply's length, the connection's fate)
_OWN = frozenset((b"content-length", b"connection", b"transfer-encoding", b"keep-alive"))


class NotAnASGIApp(ValueError):
    """The object named is not an ASGI 3 application (why is in the message)."""


def check_app(obj: Any) -> None:
    """Refuse what is not an ASGI 3 app -- a class (ASGI 2 style, or an app not made yet),
    a sync callable, one that does not take (scope, receive, send) -- with the reason."""
    if isinstance(obj, type):
        raise NotAnASGIApp("it is a class; name the application object (app = App()), "
                           "an ASGI 3 callable app(scope, receive, send)")
    if not is_coroutine(obj):
        # (middleware stacks built by frameworks are objects with an async __call__)
        raise NotAnASGIApp("it is not async: an ASGI 3 app is `async def app(scope, "
                           "receive, send)` or an object with such a __call__")
    try:
        inspect.signature(obj).bind(None, None, None)
    except (TypeError, ValueError) as exc:
        raise NotAnASGIApp(f"it does not take (scope, receive, send): {exc}") from None


class App:
    """An ASGI app run as an async stage handler (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}  # the lifespan's state, given to every request
        self.lifespan: asyncio.Task[None] | None = None
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()

    # ------------------------------------------------------------ lifespan
    async def setup(self, ctx: Any) -> None:
        """Run the app's lifespan startup (an app without lifespan support is fine: like
        uvicorn's `--lifespan auto`, an error before it answers means it has none)."""
        self.to_app, self.from_app = asyncio.Queue(), asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        self.lifespan = asyncio.get_running_loop().create_task(self._lifespan(scope))
        await self.to_app.put({"type": "lifespan.startup"})
        answer = await asyncio.wait_for(self.from_app.get(), LIFESPAN_TIMEOUT)
        if answer["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the app's lifespan startup failed: "
                               f"{answer.get('message', '')}")
        if answer["type"] == "unsupported":
            self.lifespan = None

    async def _lifespan(self, scope: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self.app(scope, self.to_app.get, self._lifespan_send)
        # it ended: before it answered the startup, it has no lifespan; after, this is
        # read by nobody (or by teardown, as the end of the shutdown)
        await self.from_app.put({"type": "unsupported"})

    async def _lifespan_send(self, message: Message) -> None:
        await self.from_app.put(message)

    async def teardown(self, ctx: Any) -> None:
        if self.lifespan is None or self.lifespan.done():
            return
        await self.to_app.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self.from_app.get(), LIFESPAN_TIMEOUT)
        finally:
            self.lifespan.cancel()

    # ------------------------------------------------------------ requests
    async def handle(self, request: dict[str, Any], ctx: Any) -> dict[str, Any] | bytes:
        if type(request) is not dict or "method" not in request:
            raise TypeError("an ASGI stage serves HTTP requests (acceptor protocol: http): "
                            f"got {type(request).__name__}")
        path = request.get("path") or "/"
        headers = request.get("headers") or {}
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1", "method": request["method"], "scheme": "http",
            "path": unquote(path) if "%" in path else path,
            "raw_path": path.encode("latin-1", "replace"),
            "query_string": (request.get("query") or "").encode("latin-1", "replace"),
            "root_path": "", "client": request.get("client"), "server": None,
            "state": self.state.copy(),
            "headers": [(k.encode("latin-1"), (v if type(v) is str else str(v)).encode(
                "latin-1", "replace")) for k, v in headers.items()],
        }
        exchange = _Exchange(request.get("body") or b"",
                             ctx if getattr(ctx, "can_stream", False) else None)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception:
            if not exchange.done:
                raise  # no whole response: the stage fails (500, retried as `retry` says)
            # the response was sent (a framework's error page): the client gets it, and
            # the error is logged, as uvicorn does
            ctx.log.exception(f"the app raised after its response to {request['method']} "
                              f"{path}")
        finally:
            exchange.finish()
        if not exchange.status:
            raise RuntimeError("the app returned without sending a response")
        if exchange.streamed:  # the parts went out already: this is the last one
            return b"".join(exchange.chunks)
        return {"status": exchange.status, "headers": exchange.headers,
                "body": b"".join(exchange.chunks)}


class _Exchange:
    """One request's `receive` and `send`: the body given once, the response collected.
    (A small object rather than closures and an asyncio.Event per request: this runs for
    every request, and an app rarely calls receive() a second time.)"""

    __slots__ = ("body", "chunks", "ctx", "done", "headers", "status", "streamed", "waiter")

    def __init__(self, body: bytes, ctx: Any) -> None:
        self.body: bytes | None = body  # None once given to the app
        self.ctx = ctx  # the stage's context, when it can stream the reply (else None)
        self.streamed = False  # parts of the body went out already (ctx.stream)
        self.done = False  # the whole response is in
        self.status = 0
        self.headers: dict[str, Any] = {}
        self.chunks: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None  # a receive() after the body

    async def receive(self) -> Message:
        body = self.body
        if body is not None:
            self.body = None
            return {"type": "http.request", "body": body, "more_body": False}
        if not self.done:  # (the client is not read again: it is gone once answered)
            if self.waiter is None or self.waiter.done():  # (done: one that was cancelled)
                self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return {"type": "http.disconnect"}

    def finish(self) -> None:
        self.done = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.status:
                raise RuntimeError("the app sent a body before http.response.start")
            raw = message.get("body", b"")
            body = raw if type(raw) is bytes else bytes(raw)
            if not message.get("more_body", False):
                self.chunks.append(body)
                self.finish()
            elif self.ctx is not None:  # a part: to the client now
                if self.streamed:
                    self.ctx.stream(body)
                else:
                    self.streamed = True
                    self.ctx.stream(body, status=self.status, headers=self.headers)
            else:
                self.chunks.append(body)
        elif kind == "http.response.start":
            self.status = int(message["status"])
            out = self.headers
            for name, value in message.get("headers", ()):
                key = bytes(name).lower()
                if key in _OWN:
                    continue
                field, text = key.decode("latin-1"), bytes(value).decode("latin-1")
                known = out.get(field)
                if known is None:
                    out[field] = text
                else:  # repeated (set-cookie): each sent on a line of its own
                    out[field] = [*(known if isinstance(known, list) else [known]), text]
