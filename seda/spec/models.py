"""The graph spec: pydantic models of what a user declares (no IO, no topology checks here).

Field-level rules live here (types, ranges, formats); rules that span fields or stages
(routes, reachability, cycles, pools) live in `seda.spec.topology`. Unknown fields are errors.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from seda.names import parse_listen

Model = Literal["seda", "amped", "sped", "symped", "mp"]
Protocol = Literal["http", "line", "length", "resp"]

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
HANDLER_RE = re.compile(r"^(asgi:)?[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              use_attribute_docstrings=True)


class Limits(_Spec):
    """Acceptor limits; each has a clear answer when exceeded (see docs/acceptor.md)."""

    max_connections: int = Field(10_000, ge=1, le=1_000_000)
    """Client connections open at once; past it a new one is closed at once (counted as
    refused)."""
    max_request_bytes: int = Field(1 << 20, ge=64)
    """The largest request (head and body); past it: 413 (HTTP) or a protocol error, and the
    connection closes."""
    max_header_bytes: int = Field(64 << 10, ge=256)
    """The largest HTTP head; past it: 431."""
    max_inflight: int = Field(64, ge=1, le=65_536)
    """Requests one connection may have unanswered (pipelined); past it the acceptor stops
    reading from it until answers go out."""
    header_timeout: float = Field(10.0, gt=0)
    """Seconds a started request may take to arrive whole; past it: 408 and the connection
    closes (slowloris)."""
    idle_timeout: float = Field(60.0, gt=0)
    """Seconds a connection may stay idle (nothing to answer) before it is closed."""
    request_timeout: float = Field(30.0, gt=0)
    """Seconds from a request's arrival to its answer; past it: 504. Its deadline travels with
    it through the graph."""


class AdmissionSpec(_Spec):
    """Admission by response time at the acceptor (docs/overload.md): admit at a rate that
    keeps the p90 response time of admitted requests under `target` seconds."""

    enabled: bool = True
    """false keeps the section but turns admission off."""
    target: float = Field(gt=0, le=3600)
    """The p90 response time (seconds) of admitted requests that admission keeps to."""
    min_rate: float = Field(1.0, gt=0)
    """Requests per second always let in, however slow the answers."""
    max_rate: float | None = Field(None, gt=0)
    """Requests per second never exceeded (null: no cap)."""


class ClassMatch(_Spec):
    """What puts a request in a class: every field given must match."""

    path: str | None = None  # HTTP: the path starts with this
    """HTTP: the path starts with this."""
    method: str | None = None  # HTTP: the method, exactly (upper case)
    """HTTP: the method, exactly (upper case)."""
    header: dict[str, str] = {}  # HTTP: each header (name in any case) has exactly this value
    """HTTP: each header (name in any case) has exactly this value."""
    command: str | None = None  # RESP: the command name (any case)
    """RESP: the command name (any case)."""


class RequestClass(_Spec):
    """A class of requests with a priority (0 is the most important): under overload the
    acceptor turns lower priorities away first (docs/overload.md)."""

    name: str
    """The class's name (letters, digits, '_' or '-'), shown in the views and /metrics."""
    priority: int = Field(ge=0, le=9)
    """0 is the most important. Under overload the less important are turned away first;
    waiting requests go on in turns weighted 4:1 per level."""
    match: ClassMatch | None = None  # None: every request no class before it matched
    """What puts a request in this class (every field given must match); null: every request
    that no class before matched (the last class)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError(f"expected a name of letters, digits, '_' or '-', got '{value}'")
        return value


class AcceptorSpec(_Spec):
    """The SPED front door: where it listens, which protocol it speaks, where requests go."""

    entry: str
    """The stage that receives every request."""
    listen: str = "127.0.0.1:8080"
    """HOST:PORT to listen on (port 0: any free port; `seda run --listen` overrides it)."""
    protocol: Protocol = "http"
    """How requests are framed: http (HTTP/1.1), line (one request a line), length (a 4-byte
    length prefix), resp (Redis)."""
    backlog: int = Field(1024, ge=1, le=65_535)
    """The listen backlog: connections the kernel queues before they are accepted."""
    nodelay: bool = True
    """TCP_NODELAY on client connections (answers are not held back to fill packets)."""
    reuseport: bool = False
    """Bind with SO_REUSEPORT (symped always does, one socket per event loop)."""
    defer_accept: int = Field(0, ge=0, le=3600)
    """TCP_DEFER_ACCEPT seconds: a connection is accepted once it has sent data (0: off)."""
    linger: int | None = Field(None, ge=0, le=3600)
    """SO_LINGER seconds on client connections (null: the system's default)."""
    congestion: str | None = None
    """The TCP congestion control algorithm of client connections (e.g. bbr; null: the
    system's)."""
    limits: Limits = Limits()
    """Per-connection and per-request limits, each with a clear answer when passed."""
    admission: AdmissionSpec | None = None
    """Admission by response time (docs/overload.md); null: off."""
    classes: list[RequestClass] = []
    """Request classes with priorities, first match wins (docs/overload.md)."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


def _check_handler(value: str) -> str:
    if not HANDLER_RE.fullmatch(value):
        raise ValueError(f"expected an import string 'module:attribute' (or "
                         f"'asgi:module:app' for an ASGI app), got '{value}'")
    return value


class SourceSpec(_Spec):
    """The input of a finite pipeline: a callable(options) returning an iterable of payloads."""

    handler: str
    """'module:attribute' of a callable(options) that returns an iterable of payloads."""
    to: list[str] = Field(min_length=1)
    """The stages each item goes to."""
    options: dict[str, Any] = {}
    """Passed to the handler."""

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        return _check_handler(value)


class _Bounded(_Spec):
    """A controller section with a `min` and a `max` (each subclass sets their ranges)."""

    min: int
    max: int

    @model_validator(mode="after")
    def _bounds(self) -> _Bounded:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class ScaleSpec(_Bounded):
    """The pool controller of a stage (docs/overload.md): between `min` and `max` workers;
    one more once over `queue` messages wait for `after` s, one fewer once idle `idle` s."""

    enabled: bool = True
    """false keeps the section but turns the pool controller off."""
    min: int = Field(1, ge=1, le=256)
    """The fewest workers the controller keeps."""
    max: int = Field(ge=1, le=256)
    """The most workers the controller starts (slots up to it are planned at start)."""
    queue: int | None = Field(None, ge=0)  # default: 2 x prefetch
    """Messages waiting for the stage above which it adds a worker (null: 2 x prefetch)."""
    after: float = Field(1.0, gt=0)
    """Seconds the queue must stay over `queue` (or the pool saturated) before one more worker
    starts."""
    idle: float = Field(5.0, gt=0)
    """Seconds the pool must be calm before one worker fewer."""


class BatchingSpec(_Bounded):
    """The batching controller of a stage (docs/overload.md): adapts each worker's credit
    window -- its batch size -- between `min` and `max`, starting from `prefetch`, holding
    at most `budget` seconds of handler work. On by default for a stage that sets neither
    `prefetch` nor `batching`."""

    enabled: bool = True
    """false keeps the section but pins the window at `prefetch`."""
    min: int = Field(1, ge=1, le=10_000)
    """The smallest window."""
    max: int = Field(1024, ge=1, le=10_000)
    """The largest window."""
    period: float = Field(0.25, gt=0)
    """Seconds between the controller's decisions (a quarter of that while a window starts)."""
    budget: float = Field(0.01, ge=0, le=60)
    """Seconds of handler work one window may hold, at the cost per message seen: a slow stage
    stays small (0: no such cap)."""


class PlacementSpec(_Spec):
    """Where a stage's workers run when Ray places them (seda run --ray; docs/cluster.md):
    what each worker needs of a node, and how the workers spread."""

    resources: dict[str, float] = {}
    """What one worker needs of a Ray node: CPU, GPU, memory or any custom resource the
    cluster's nodes declare ({CPU: 1, GPU: 1}, {far: 1})."""
    strategy: Literal["default", "spread"] = "default"
    """spread: the stage's workers on as many nodes as can take them; default: Ray's choice
    (it fills a node before it takes the next)."""

    @field_validator("resources")
    @classmethod
    def _amounts(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not v > 0 or not k]
        if bad:
            raise ValueError(f"resource amounts must be above 0: {', '.join(bad)}")
        return value


class StageSpec(_Spec):
    """One stage: a handler run by a pool of worker processes, and where its output goes."""

    handler: str
    """'module:attribute' of a function handle(payload, ctx) or a class with
    setup/handle/teardown (and finish for sinks), sync or async; or 'asgi:module:app', an
    ASGI 3 application (Starlette, FastAPI) serving the stage's HTTP requests; imported from
    the graph's folder."""
    workers: int = Field(1, ge=1, le=256)
    """Worker processes of the stage's pool at start."""
    prefetch: int = Field(8, ge=1, le=10_000)
    """Messages a worker may hold at once (its credit window). Given alone it pins the window;
    left out, the batching controller adapts it from 8."""
    queue: int | None = Field(None, ge=1, le=10_000_000)
    """Bound on messages waiting for this stage: in a service, past it an emit to the stage is
    answered 503 at once; at the entry, past it requests get 503 (null: max(1024, 4 x
    workers x prefetch))."""
    to: list[str] = []
    """The stages its outputs go to: with one, a return value goes there; with several,
    ctx.emit(stage, value) chooses. None: in a service, a return value is the reply."""
    sink: bool = False
    """A pipeline's terminal stage: consumes without passing on."""
    pool: str | None = None
    """Stages with the same pool run in the same processes and call each other directly."""
    max_attempts: int | None = Field(None, ge=1, le=100)
    """Runs of one message before it is dead-lettered (null: settings.max_attempts)."""
    # run a message again after its handler raised or its worker died: "idempotent" (only
    # when its request may be run twice: not a POST, PATCH or RESP write), "always", "never"
    retry: Literal["idempotent", "always", "never"] = "idempotent"
    """Run a message again after its handler raised or its worker died: idempotent (only
    requests that may run twice: not POST, PATCH or a RESP write), always, never."""
    timeout: float | None = Field(None, gt=0, le=86_400)
    """Seconds one handler call may take; past it the worker is replaced and the message fails
    without a retry (null: in a service, the larger of request_timeout and 30; in a
    pipeline, none)."""
    concurrency: int | None = Field(None, ge=1, le=10_000)
    """Async handlers (async def): messages one worker runs at once on its event loop, and
    its credit window (null: 100). No effect on a sync handler, which runs one at a time."""
    max_memory_mb: int | None = Field(None, ge=16, le=1 << 20)
    """A worker whose resident memory passes this is recycled: it finishes what it holds and a
    fresh one takes its place (null: no limit)."""
    scale: ScaleSpec | None = None
    """The pool controller (model seda; docs/overload.md); null: a fixed pool."""
    placement: PlacementSpec | None = None
    """Under seda run --ray, Ray places this stage's workers (docs/cluster.md); null: they run
    on the supervisor's host."""
    batching: BatchingSpec | None = None
    """The batching controller (docs/overload.md); on by default when neither prefetch nor
    batching is given; null: off."""
    options: dict[str, Any] = {}
    """Passed to the handler as ctx.options."""

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        return _check_handler(value)

    @model_validator(mode="before")
    @classmethod
    def _adaptive_by_default(cls, data: Any) -> Any:
        """A stage that says nothing of its window gets the batching controller: `prefetch`
        alone pins the window; `batching: null` (or `enabled: false`) turns it off."""
        if isinstance(data, dict) and "prefetch" not in data and "batching" not in data:
            return {**data, "batching": {}}
        return data


class Restarts(_Spec):
    """Restart intensity (Erlang/OTP): more than `max` restarts within `within` s fails the run."""

    max: int = Field(10, ge=0, le=10_000)
    """Restarts allowed within `within` seconds; one more fails the run."""
    within: float = Field(10.0, gt=0)
    """The window (seconds) over which restarts are counted."""


class Settings(_Spec):
    """Graph-wide settings."""

    dead_letter: str = "dead-letter.jsonl"
    """The dead-letter file (JSON lines); a relative path is taken from the graph file's folder
    (or seda run -o's)."""
    max_attempts: int = Field(3, ge=1, le=100)
    """Runs of one message before it is dead-lettered."""
    allow_cycles: bool = False
    """Allow routes that form cycles (each message still has a bounded number of attempts)."""
    drain_timeout: float = Field(10.0, ge=0)
    """Seconds a drain (SIGTERM, seda stop) may take to finish the work in flight before the
    run stops anyway."""
    max_message_bytes: int = Field(16 << 20, ge=1024)
    """The largest message (payload) between processes; a larger one fails alone with an error
    naming this limit."""
    restarts: Restarts = Restarts()
    """Restart intensity: more restarts than max within `within` seconds fails the run."""


class GraphSpec(_Spec):
    """A whole application: stages plus an acceptor (a service) or a source (a pipeline)."""

    name: str = Field(pattern=NAME_RE.pattern)
    """The graph's name: process titles, run directory, seda top/stop, metric labels."""
    description: str = ""
    """Free text, shown by seda graph."""
    model: Model = "seda"
    """The server model it runs under by default: seda, amped, sped, symped or mp (seda run
    --model overrides it)."""
    acceptor: AcceptorSpec | None = None
    """The network front door: a service. Exactly one of acceptor and source."""
    source: SourceSpec | None = None
    """The input of a finite pipeline. Exactly one of acceptor and source."""
    stages: dict[str, StageSpec] = Field(min_length=1)
    """The stages, by name."""
    settings: Settings = Settings()
    """Graph-wide settings: dead letters, attempts, cycles, the drain, message size, restarts."""
    path: list[str] = Field(default=[], max_length=64)
    """Folders handlers are imported from, relative to this file (e.g. ['..'] for a graphs/
    folder beside the stages' package); searched after seda run --app-dir and before the
    graph's own folder and the working directory."""

    def entries(self) -> list[str]:
        """The stages that receive work from outside (acceptor entry or source routes)."""
        if self.acceptor is not None:
            return [self.acceptor.entry]
        return list(self.source.to) if self.source is not None else []

    @property
    def is_service(self) -> bool:
        return self.acceptor is not None


def reference() -> str:
    """Every section and field of a graph file, as Markdown: what `seda schema --markdown`
    prints and docs/spec-reference.md holds (a test keeps the two equal)."""
    sections: list[tuple[str, type[BaseModel]]] = [("(top level)", GraphSpec)]
    seen: set[type[BaseModel]] = {GraphSpec}
    out = ["# Graph file reference", "",
           "Generated from seda's spec (`seda schema --markdown`); every field, its type, its "
           "default and what it does. `seda schema` prints the same as a JSON Schema for "
           "editors. The annotated example and the error messages are in "
           "[spec.md](spec.md).", ""]
    i = 0
    while i < len(sections):
        where, model = sections[i]
        i += 1
        out += [f"## {where}: {model.__name__}", "", (model.__doc__ or "").split("\n\n")[0]
                .replace("\n", " ").strip(), "", "| field | type | default | meaning |",
                "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            kind = _type_name(info.annotation)
            default = "required" if info.is_required() else _default_text(info.default)
            text = " ".join((info.description or "").split()).replace("|", "\\|")
            out.append(f"| `{name}` | {kind} | {default} | {text} |")
            for sub in _models_in(info.annotation):
                if sub not in seen:
                    seen.add(sub)
                    sections.append((f"`{name}`", sub))
        out.append("")
    return "\n".join(out)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__} of " + " to ".join(_type_name(a) for a in args)
    return "any" if annotation is Any else str(annotation).replace("typing.", "")


def _default_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "(its defaults)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value!r}`" if value not in ({}, []) else f"`{value}`"
