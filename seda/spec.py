"""The graph spec: pydantic models of what a user declares (no IO, no topology checks here).

Field-level rules live here (types, ranges, formats); rules that span fields or stages
(routes, reachability, cycles, pools) live in `seda.topology`. Unknown fields are errors.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from seda.names import parse_listen

Model = Literal["seda", "amped", "sped", "symped", "mp"]
Protocol = Literal["http", "line", "length", "resp"]

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
HANDLER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Limits(_Spec):
    """Acceptor limits; each has a clear answer when exceeded (see docs/acceptor.md)."""

    max_connections: int = Field(10_000, ge=1, le=1_000_000)
    max_request_bytes: int = Field(1 << 20, ge=64)
    max_header_bytes: int = Field(64 << 10, ge=256)
    max_inflight: int = Field(64, ge=1, le=65_536)
    header_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(60.0, gt=0)
    request_timeout: float = Field(30.0, gt=0)


class AdmissionSpec(_Spec):
    """Admission by response time at the acceptor (docs/overload.md): admit at a rate that
    keeps the p90 response time of admitted requests under `target` seconds."""

    enabled: bool = True
    target: float = Field(gt=0, le=3600)
    min_rate: float = Field(1.0, gt=0)
    max_rate: float | None = Field(None, gt=0)


class ClassMatch(_Spec):
    """What puts a request in a class: every field given must match."""

    path: str | None = None  # HTTP: the path starts with this
    method: str | None = None  # HTTP: the method, exactly (upper case)
    header: dict[str, str] = {}  # HTTP: each header (name in any case) has exactly this value
    command: str | None = None  # RESP: the command name (any case)


class RequestClass(_Spec):
    """A class of requests with a priority (0 is the most important): under overload the
    acceptor turns lower priorities away first (docs/overload.md)."""

    name: str
    priority: int = Field(ge=0, le=9)
    match: ClassMatch | None = None  # None: every request no class before it matched

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError(f"expected a name of letters, digits, '_' or '-', got '{value}'")
        return value


class AcceptorSpec(_Spec):
    """The SPED front door: where it listens, which protocol it speaks, where requests go."""

    entry: str
    listen: str = "127.0.0.1:8080"
    protocol: Protocol = "http"
    backlog: int = Field(1024, ge=1, le=65_535)
    nodelay: bool = True
    reuseport: bool = False
    defer_accept: int = Field(0, ge=0, le=3600)
    linger: int | None = Field(None, ge=0, le=3600)
    congestion: str | None = None
    limits: Limits = Limits()
    admission: AdmissionSpec | None = None
    classes: list[RequestClass] = []

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


def _check_handler(value: str) -> str:
    if not HANDLER_RE.fullmatch(value):
        raise ValueError(f"expected an import string 'module:attribute', got '{value}'")
    return value


class SourceSpec(_Spec):
    """The input of a finite pipeline: a callable(options) returning an iterable of payloads."""

    handler: str
    to: list[str] = Field(min_length=1)
    options: dict[str, Any] = {}

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
    min: int = Field(1, ge=1, le=256)
    max: int = Field(ge=1, le=256)
    queue: int | None = Field(None, ge=0)  # default: 2 x prefetch
    after: float = Field(1.0, gt=0)
    idle: float = Field(5.0, gt=0)


class BatchingSpec(_Bounded):
    """The batching controller of a stage (docs/overload.md): adapts each worker's credit
    window -- its batch size -- between `min` and `max`, starting from `prefetch`, holding
    at most `budget` seconds of handler work. On by default for a stage that sets neither
    `prefetch` nor `batching`."""

    enabled: bool = True
    min: int = Field(1, ge=1, le=10_000)
    max: int = Field(1024, ge=1, le=10_000)
    period: float = Field(0.25, gt=0)
    budget: float = Field(0.01, ge=0, le=60)


class StageSpec(_Spec):
    """One stage: a handler run by a pool of worker processes, and where its output goes."""

    handler: str
    workers: int = Field(1, ge=1, le=256)
    prefetch: int = Field(8, ge=1, le=10_000)
    queue: int | None = Field(None, ge=1, le=10_000_000)
    to: list[str] = []
    sink: bool = False
    pool: str | None = None
    max_attempts: int | None = Field(None, ge=1, le=100)
    # run a message again after its handler raised or its worker died: "idempotent" (only
    # when its request may be run twice: not a POST, PATCH or RESP write), "always", "never"
    retry: Literal["idempotent", "always", "never"] = "idempotent"
    timeout: float | None = Field(None, gt=0, le=86_400)
    max_memory_mb: int | None = Field(None, ge=16, le=1 << 20)
    scale: ScaleSpec | None = None
    batching: BatchingSpec | None = None
    options: dict[str, Any] = {}

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
    within: float = Field(10.0, gt=0)


class Settings(_Spec):
    """Graph-wide settings."""

    dead_letter: str = "dead-letter.jsonl"
    max_attempts: int = Field(3, ge=1, le=100)
    allow_cycles: bool = False
    drain_timeout: float = Field(10.0, ge=0)
    max_message_bytes: int = Field(16 << 20, ge=1024)
    restarts: Restarts = Restarts()


class GraphSpec(_Spec):
    """A whole application: stages plus an acceptor (a service) or a source (a pipeline)."""

    name: str = Field(pattern=NAME_RE.pattern)
    description: str = ""
    model: Model = "seda"
    acceptor: AcceptorSpec | None = None
    source: SourceSpec | None = None
    stages: dict[str, StageSpec] = Field(min_length=1)
    settings: Settings = Settings()

    def entries(self) -> list[str]:
        """The stages that receive work from outside (acceptor entry or source routes)."""
        if self.acceptor is not None:
            return [self.acceptor.entry]
        return list(self.source.to) if self.source is not None else []

    @property
    def is_service(self) -> bool:
        return self.acceptor is not None
