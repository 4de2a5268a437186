"""Handler import strings ('module:attr') -> callables, with errors a user can act on.

Importing runs user code, so only `seda validate`, `seda run` and workers call this; the
pure spec and topology checks never do. Kept light: worker processes import it.
"""

from __future__ import annotations

import importlib
import sys
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


def resolve(ref: str) -> Any:
    """'pkg.mod:attr.sub' -> the object. Raises HandlerImportError with the module's error."""
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise HandlerImportError(ref, f"no module named '{exc.name}'") from None
        raise HandlerImportError(ref, _import_reason(exc)) from None
    except Exception as exc:  # user code at import time: any error is the user's
        raise HandlerImportError(ref, _import_reason(exc)) from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            hint = did_you_mean(part, names)
            raise HandlerImportError(ref, f"'{module_name}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise HandlerImportError(ref, f"not callable (it is {type(obj).__name__})")
    return obj
