"""Graphs written in Python, for the command line: `seda run app.py` (the module's `graph`,
or its one graph) or `seda run pkg.app:graph` (a module on the path and an attribute), as
uvicorn takes `module:app`. The attribute may be a built GraphSpec, a Graph builder (built
here) or a function that returns either. Errors name the file and line they come from."""

from __future__ import annotations

import importlib
import re
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seda.errors import Problem, SpecError
from seda.handler import ImportTimeout, import_timeout, search_path, time_limit
from seda.spec.loader import LineMap, read_graph_text
from seda.spec.models import GraphSpec

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_python(target: str | Path) -> bool:
    """A Python file, or `module:attribute` (not a file of that name)."""
    text = str(target)
    return text.endswith(".py") or (_TARGET.fullmatch(text) is not None
                                    and not Path(text).exists())


def load_python(target: str | Path, app_dirs: Sequence[str] = ()
                ) -> tuple[GraphSpec, LineMap]:
    """Import the module (from `app_dirs` first) and return its graph, validated. Raises
    SpecError."""
    from seda.spec.builder import Graph, built_lines

    text = str(target)
    if text.endswith(".py"):
        read_graph_text(text)  # a regular, readable file of bounded size (else SpecError)
        path = Path(text).resolve()
        folders, name, attr, file = [str(path.parent)], path.stem, "", text
    else:
        name, _, attr = text.partition(":")
        folders, path, file = [*app_dirs, str(Path.cwd())], None, text
    module = _import(name, folders, path, file)
    obj: Any
    if attr:
        obj = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise SpecError([Problem(f"'{name}' has no attribute '{part}'", file)])
            obj = getattr(obj, part)
    else:
        found = {k: v for k, v in vars(module).items() if isinstance(v, (Graph, GraphSpec))}
        if "graph" in found:
            obj = found["graph"]
        elif len(found) == 1:
            obj = next(iter(found.values()))
        else:
            why = (f"several graphs ({', '.join(sorted(found))}): name one as {file}:NAME"
                   if found else "no graph in it: define `graph = Graph(...)...build()`")
            raise SpecError([Problem(why, file)])
    if callable(obj) and not isinstance(obj, (Graph, GraphSpec)):
        obj = _call(obj, path, file)
    if isinstance(obj, Graph):
        return obj.build(), obj.lines  # SpecError from build names the builder's lines
    if isinstance(obj, GraphSpec):
        return obj, built_lines(obj) or LineMap(file)
    raise SpecError([Problem(f"'{attr or 'graph'}' is not a graph (it is "
                             f"{type(obj).__name__}): expected Graph(...).build()", file)])


def _import(name: str, folders: list[str], path: Path | None, file: str) -> Any:
    seconds = import_timeout()
    try:
        with search_path(folders), time_limit(seconds):
            module = importlib.import_module(name)
    except SpecError:
        raise
    except ImportTimeout:
        raise SpecError([Problem(f"importing it did not finish in {seconds:g} s (does it "
                                 f"wait for something at import time?)", file)]) from None
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise SpecError([Problem(f"no module named '{name}'", file)]) from None
        raise SpecError([_at(exc, path, file)]) from None
    except SystemExit as exc:
        raise SpecError([Problem(f"importing it called sys.exit({exc.code!r})", file)]) from None
    except Exception as exc:  # the user's code at import time: any error is theirs
        raise SpecError([_at(exc, path, file)]) from None
    where = getattr(module, "__file__", None)
    if path is not None and (where is None or Path(where).resolve() != path):
        raise SpecError([Problem(f"a module named '{name}' is already imported from {where}: "
                                 f"rename the file", file)])
    return module


def _call(factory: Any, path: Path | None, file: str) -> Any:
    try:
        return factory()
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError([_at(exc, path, file)]) from None


def _at(exc: BaseException, path: Path | None, file: str) -> Problem:
    """The error, at the line of the user's file where it happened (its last frame there)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if path is not None and Path(frame.filename).resolve() == path:
            line = frame.lineno
    return Problem(f"{type(exc).__name__}: {exc}", file, line)
