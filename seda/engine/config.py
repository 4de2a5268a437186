"""What a running process reads of its graph: plain frozen dataclasses, decoded from the plan.

The graph spec (`seda.spec.models`, pydantic) is validated once, by the command that starts a run;
the plan carries it as plain JSON, and every child decodes it into these records. So no child
imports pydantic or networkx (a test checks it): a child starts faster (the spec module and
pydantic are ~0.12 s of imports, paid by the fork server, the source and every fresh
interpreter), and the data plane depends on nothing but data.

Only the fields a process reads are declared here; the decoder skips the others. Defaults
and checks live in the spec alone: the plan always carries every field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

# a service's handler call past this (or past request_timeout, if longer) is stuck: its
# worker is replaced (gunicorn's worker timeout has the same default; see docs/runtime.md)
SERVICE_CALL_LIMIT = 30.0
# messages an async stage runs at once per worker (its credit window) unless it says
CONCURRENCY = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    max_request_bytes: int
    max_header_bytes: int
    max_inflight: int
    header_timeout: float
    idle_timeout: float
    request_timeout: float


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    enabled: bool
    target: float
    min_rate: float
    max_rate: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class ClassMatch:
    path: str | None
    method: str | None
    header: dict[str, str]
    command: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class RequestClass:
    name: str
    priority: int
    match: ClassMatch | None


@dataclasses.dataclass(frozen=True, slots=True)
class Acceptor:
    entry: str
    listen: str
    protocol: str
    backlog: int
    nodelay: bool
    reuseport: bool
    defer_accept: int
    linger: int | None
    congestion: str | None
    limits: Limits
    admission: Admission | None
    classes: tuple[RequestClass, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Batching:
    enabled: bool
    min: int
    max: int
    period: float
    budget: float


@dataclasses.dataclass(frozen=True, slots=True)
class Stage:
    handler: str
    prefetch: int
    queue: int | None
    to: tuple[str, ...]
    sink: bool
    max_attempts: int | None
    retry: str
    timeout: float | None
    concurrency: int | None
    max_memory_mb: int | None
    batching: Batching | None
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    handler: str
    to: tuple[str, ...]
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    max_attempts: int
    max_message_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class Graph:
    """A graph as its processes see it (see the module docstring)."""

    name: str
    acceptor: Acceptor | None
    source: Source | None
    stages: dict[str, Stage]
    settings: Settings

    def entries(self) -> list[str]:
        """The stages that receive work from outside (acceptor entry or source routes)."""
        if self.acceptor is not None:
            return [self.acceptor.entry]
        return list(self.source.to) if self.source is not None else []

    @property
    def is_service(self) -> bool:
        return self.acceptor is not None

    def call_limit(self, stage: str) -> float | None:
        """The most one call of `stage`'s handler may take: its `timeout`. By default, in a
        service, the larger of the acceptor's request_timeout (a handler may take up to the
        deadline) and SERVICE_CALL_LIMIT; in a pipeline, none."""
        own = self.stages[stage].timeout
        if own is not None or self.acceptor is None:
            return own
        return max(self.acceptor.limits.request_timeout, SERVICE_CALL_LIMIT)


T = TypeVar("T")


def decode(cls: type[T], doc: dict[str, Any]) -> T:
    """`doc` (the spec as JSON: `GraphSpec.model_dump(mode="json")`, or any part of it) as
    the record `cls`, nested records and containers included. Keys `cls` does not declare
    are skipped. KeyError/TypeError: `doc` lacks a field or has the wrong shape (a plan that
    did not come from the spec)."""
    return typing.cast(T, _value(cls, doc))


def _value(kind: Any, value: Any) -> Any:
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = _hints(kind)
        return kind(**{f.name: _value(hints[f.name], value[f.name])
                       for f in dataclasses.fields(kind)})
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is types.UnionType or origin is typing.Union:
        if value is None:
            return None
        return _value(next(a for a in args if a is not type(None)), value)
    if origin is dict:
        return {k: _value(args[1], v) for k, v in value.items()}
    if origin is tuple:
        return tuple(_value(args[0], v) for v in value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(kind: type) -> dict[str, Any]:
    if kind not in _HINTS:
        _HINTS[kind] = typing.get_type_hints(kind)
    return _HINTS[kind]
