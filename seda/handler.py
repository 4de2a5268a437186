"""Handler import strings ('module:attr') -> callables, with errors a user can act on.

Importing runs user code, so only `seda validate`, `seda run` and workers call this; the
pure spec and topology checks never do. Kept light: worker processes import it.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from seda.errors import SedaError, did_you_mean


class HandlerImportError(SedaError):
    """A handler import string does not name a callable."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"cannot use handler '{ref}': {reason}")
        self.ref, self.reason = ref, reason


@contextmanager
def search_path(dirs: Sequence[str]) -> Iterator[None]:
    """Temporarily put `dirs` in front of sys.path (graph file's folder, working directory)."""
    added = [d for d in dirs if d not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)


def _import_reason(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f for f in reversed(frames) if "importlib" not in f.filename), None)
    at = f" ({where.filename}:{where.lineno})" if where is not None else ""
    return f"{type(exc).__name__}: {exc}{at}"


IMPORT_TIMEOUT = 30.0  # s a handler's module may take to import when a graph is checked


class ImportTimeout(BaseException):
    """Raised into an import that ran past its time (a BaseException: user code's
    `except Exception` must not swallow it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ImportTimeout in the main thread once `seconds` pass (SIGALRM: an import that
    hangs in Python code, a sleep or a blocking call is interrupted). Elsewhere, no limit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(_signum: int, _frame: Any) -> None:
        raise ImportTimeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def import_timeout() -> float:
    """IMPORT_TIMEOUT, or $SEDA_IMPORT_TIMEOUT (seconds) when set."""
    try:
        return float(os.environ.get("SEDA_IMPORT_TIMEOUT", IMPORT_TIMEOUT))
    except ValueError:
        return IMPORT_TIMEOUT


def resolve_in_time(ref: str, seconds: float) -> Any:
    """`resolve`, failing with HandlerImportError when the import takes over `seconds`."""
    try:
        with time_limit(seconds):
            return resolve(ref)
    except ImportTimeout:
        raise HandlerImportError(ref, f"importing '{ref.partition(':')[0]}' did not finish "
                                      f"in {seconds:g} s (does it wait for something at "
                                      f"import time?)") from None


def resolve(ref: str) -> Any:
    """'pkg.mod:attr.sub' -> the object; 'asgi:pkg.mod:app' -> the ASGI app, as a handler
    (seda.asgi.App). Raises HandlerImportError with the module's error."""
    if ref.startswith("asgi:"):
        from seda import asgi

        app = resolve(ref[len("asgi:"):])
        try:
            asgi.check_app(app)
        except asgi.NotAnASGIApp as exc:
            raise HandlerImportError(ref, f"not an ASGI 3 app: {exc}") from None
        return asgi.App(app)
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise HandlerImportError(ref, f"no module named '{exc.name}'") from None
        raise HandlerImportError(ref, _import_reason(exc)) from None
    except Exception as exc:  # user code at import time: any error is the user's
        raise HandlerImportError(ref, _import_reason(exc)) from None
    except SystemExit as exc:  # (it would end `seda validate` with the module's own code)
        raise HandlerImportError(ref, f"importing '{module_name}' called sys.exit({exc.code!r})"
                                 ) from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            hint = did_you_mean(part, names)
            raise HandlerImportError(ref, f"'{module_name}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise HandlerImportError(ref, f"not callable (it is {type(obj).__name__})")
    return obj

