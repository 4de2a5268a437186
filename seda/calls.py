"""What kind of callable a handler is: sync or async. Pure (a leaf every layer may use: the
stage core runs by it, `seda validate` and `seda plan` report it)."""

from __future__ import annotations

import inspect
from typing import Any


def is_coroutine(fn: Any) -> bool:
    """A coroutine function: `async def`, a bound one, or an object whose __call__ is."""
    return inspect.iscoroutinefunction(fn) or (
        fn is not None and not inspect.isroutine(fn) and not isinstance(fn, type) and
        inspect.iscoroutinefunction(type(fn).__call__ if callable(fn) else None))


def handler_is_async(obj: Any) -> bool:
    """Whether a resolved handler (a function, a class or an instance) handles messages
    with a coroutine: its handle_batch if it has one, else its handle, else itself."""
    batch = getattr(obj, "handle_batch", None)
    return is_coroutine(batch if batch is not None else getattr(obj, "handle", obj))
