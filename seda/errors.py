"""The error tree: one root, subclasses by who is at fault.

Spec errors are the user's, protocol errors the peer's, internal errors ours. Errors carry
fields, not just strings; only the CLI turns them into exit codes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_ONE_LINE = str.maketrans({"\n": "\\n", "\r": "\\r", "\x00": "\\x00"})


class SedaError(Exception):
    """Root of every error seda raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One finding about a graph spec: where it is, what is wrong, how bad it is."""

    message: str
    file: str = "<graph>"
    line: int | None = None
    path: str = ""
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        """One line, always: a name or value that holds a line break (a stage named
        "s\\n") is shown escaped."""
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        kind = "warning: " if self.severity == "warning" else ""
        field = f"{self.path}: " if self.path else ""
        return f"{where}: {kind}{field}{self.message}".translate(_ONE_LINE)


class SpecError(SedaError):
    """The user's graph spec is wrong. Holds every error found, not just the first."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ProtocolError(SedaError):
    """A peer sent bytes that break the protocol; `status_hint` is the answer to give."""

    def __init__(self, message: str, status_hint: int = 400, retry_after: int = 1) -> None:
        super().__init__(message)
        self.status_hint = status_hint
        self.retry_after = retry_after  # seconds, for a 503
        self.requests: list[Any] = []  # complete requests that came before the fault


class RunError(SedaError):
    """A run failed for a reason the operator must see (restart limit hit, port in use...)."""


class InternalError(SedaError):
    """seda itself is wrong; please report it."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` suffix when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
