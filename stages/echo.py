"""Echo: answers each request with its payload (graphs/echo.yaml, the `line` protocol)."""

from __future__ import annotations

from typing import Any


def echo(payload: Any, ctx: Any) -> Any:
    return payload
