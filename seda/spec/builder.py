"""The Python front end (a builder) and the whole-file check both front ends share.

`Graph("shop").acceptor(...).stage(...).build()` gives the same GraphSpec as the YAML file
declaring the same graph; `to_yaml` writes either back out. Errors from the builder point at
the line of the Python call that declared the field.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seda.calls import handler_is_async
from seda.errors import Problem, SpecError
from seda.handler import HandlerImportError, import_timeout, resolve_in_time, search_path
from seda.spec import topology
from seda.spec.loader import FieldPath, LineMap, load_file, spec_from_data
from seda.spec.models import GraphSpec
from seda.spec.pyfile import is_python, load_python


def handler_ref(handler: str | Callable[..., Any]) -> str:
    """A callable -> its 'module:qualname' import string (workers import it by name)."""
    if isinstance(handler, str):
        return handler
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", "")
    if not module or "<" in qualname:
        raise SpecError([Problem(f"handler {handler!r} must be defined at module level so "
                                 f"worker processes can import it")])
    if module == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is None or not spec.name:
            raise SpecError([Problem(f"handler '{qualname}' is defined in a script; put it in "
                                     f"a module (or run the script with python -m) so worker "
                                     f"processes can import it")])
        module = spec.name
    return f"{module}:{qualname}"


def _user_line() -> int:
    """The line of user code that called a builder method (which called `_mark`)."""
    return sys._getframe(3).f_lineno


class Graph:
    """Builder for a GraphSpec. Each method returns the builder, so calls chain."""

    def __init__(self, name: str, *, description: str = "", model: str = "seda",
                 path: Sequence[str] = ()) -> None:
        frame = sys._getframe(1)
        self._lines = LineMap(frame.f_code.co_filename)
        self._lines.lines[()] = frame.f_lineno
        self._data: dict[str, Any] = {"name": name, "stages": {}}
        if description:
            self._data["description"] = description
        if model != "seda":
            self._data["model"] = model
        if path:
            self._data["path"] = list(path)

    def _mark(self, path: FieldPath, fields: dict[str, Any]) -> None:
        line = _user_line()
        self._lines.lines[path] = line
        for key in fields:
            self._lines.lines[(*path, key)] = line

    def acceptor(self, entry: str, **fields: Any) -> Graph:
        """The network front door: `entry` stage, plus listen, protocol, limits, ..."""
        self._mark(("acceptor",), {"entry": entry, **fields})
        self._data["acceptor"] = {"entry": entry, **fields}
        return self

    def source(self, handler: str | Callable[..., Any], to: list[str], **options: Any) -> Graph:
        """The input of a finite pipeline; `options` reach the source callable."""
        body: dict[str, Any] = {"handler": handler_ref(handler), "to": to}
        if options:
            body["options"] = options
        self._mark(("source",), body)
        self._data["source"] = body
        return self

    def stage(self, name: str, handler: str | Callable[..., Any], **fields: Any) -> Graph:
        """One stage; fields as in YAML (workers, to, sink, pool, options, ...)."""
        path: FieldPath = ("stages", name)
        if name in self._data["stages"]:
            first = self._lines.lines[path]
            raise SpecError([Problem(f"duplicate stage name '{name}' (first on line {first})",
                                     self._lines.file, sys._getframe(1).f_lineno,
                                     f"stages.{name}")])
        self._mark(path, fields)
        self._data["stages"][name] = {"handler": handler_ref(handler), **fields}
        return self

    def settings(self, **fields: Any) -> Graph:
        self._mark(("settings",), fields)
        self._data["settings"] = fields
        return self

    @property
    def lines(self) -> LineMap:
        """Where each field was given (file and line of the calls), for error messages."""
        return self._lines

    def build(self) -> GraphSpec:
        """Validate fields and topology; raise SpecError listing every error."""
        spec = spec_from_data(self._data, self._lines)
        errors = [p for p in topology.check(spec, self._lines) if p.severity == "error"]
        if errors:
            raise SpecError(errors)
        _BUILT.append((spec, self._lines))
        del _BUILT[:-16]
        return spec


_BUILT: list[tuple[GraphSpec, LineMap]] = []  # the last specs built here, with their lines


def built_lines(spec: GraphSpec) -> LineMap | None:
    """The lines of a spec a Graph built in this process (for warnings that name them)."""
    return next((lines for built, lines in _BUILT if built is spec), None)


def amped(handler: str | Callable[..., Any], *, workers: int = 4, name: str = "amped",
          listen: str = "127.0.0.1:8080", protocol: str = "http", **stage: Any) -> GraphSpec:
    """The AMPED shape from one handler: an acceptor in front of one pool of `workers`."""
    return (Graph(name, description="acceptor -> one worker pool (AMPED)")
            .acceptor(entry="handle", listen=listen, protocol=protocol)
            .stage("handle", handler=handler, workers=workers, **stage)
            .build())


def to_yaml(spec: GraphSpec) -> str:
    """Write a spec as YAML, leaving out fields that hold their defaults."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data["name"] = spec.name
    data["stages"] = {n: s.model_dump(mode="json", exclude_defaults=True)
                      for n, s in spec.stages.items()}
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    return text


def check_imports(spec: GraphSpec, lines: LineMap, search: Sequence[str] = ()) -> list[Problem]:
    """Import every handler of `spec`; one Problem per handler that cannot be used."""
    refs: list[tuple[tuple[str, ...], str]] = []
    if spec.source is not None:
        refs.append((("source", "handler"), spec.source.handler))
    refs += [(("stages", n, "handler"), s.handler) for n, s in spec.stages.items()]
    problems = []
    seconds = import_timeout()
    with search_path(search):
        for path, ref in refs:
            try:
                obj = resolve_in_time(ref, seconds)
            except HandlerImportError as exc:
                problems.append(lines.problem(path, str(exc)))
                continue
            stage = spec.stages[path[1]] if path[0] == "stages" else None
            if stage is None:
                continue
            if stage.concurrency is not None and not handler_is_async(obj):
                problems.append(lines.problem(
                    ("stages", path[1], "concurrency"), "has no effect: the handler is not "
                    "async (async def), so it runs one message at a time", "warning"))
            if handler_is_async(obj) and "prefetch" in stage.model_fields_set:
                problems.append(lines.problem(
                    ("stages", path[1], "prefetch"), "has no effect: the handler is async, "
                    "and an async stage's window is its concurrency", "warning"))
    return problems


def handler_kinds(spec: GraphSpec, search: Sequence[str] = ()) -> dict[str, str]:
    """stage -> 'async', 'sync' or why its handler could not be imported (seda plan)."""
    kinds = {}
    with search_path(search):
        for name, stage in spec.stages.items():
            try:
                obj = resolve_in_time(stage.handler, import_timeout())
            except HandlerImportError as exc:
                kinds[name] = f"not imported: {exc.reason}"
                continue
            kinds[name] = "async" if handler_is_async(obj) else "sync"
    return kinds


@dataclass
class Checked:
    """A graph file after every check: the spec, and the warnings that did not stop it."""

    spec: GraphSpec
    lines: LineMap
    warnings: list[Problem] = field(default_factory=list)


def home(path: str | Path, app_dirs: Sequence[str] = ()) -> Path:
    """A graph's project root: the folder of its file (a module:attr graph: the first
    --app-dir, else the current folder). Handlers import from it, and the run's relative
    paths (the dead-letter file) are resolved against it, wherever the command starts."""
    if is_python(path) and not str(path).endswith(".py"):
        return Path(app_dirs[0]) if app_dirs else Path.cwd()
    return Path(path).resolve().parent


def check_place(path: str) -> str | None:
    """Why dead letters could not be written at `path` (None: they can): its folder must
    exist and be writable, and the path must not be a folder."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    if os.path.isdir(path):
        return f"{path} is a folder"
    if not os.access(folder, os.W_OK):
        return f"the folder {folder} is not writable"
    return None


def import_dirs(path: str | Path, spec: GraphSpec, app_dirs: Sequence[str] = ()) -> list[str]:
    """Where a graph's handlers are imported from, first to last: --app-dir, the graph's
    own `path` (relative to its home), its home, the working directory."""
    root = home(path, app_dirs)
    return [*app_dirs, *(str((root / folder).resolve()) for folder in spec.path), str(root),
            str(Path.cwd())]


def check_file(path: str | Path, *, imports: bool = True, app_dirs: Sequence[str] = (),
               dead_letter: str | None = None) -> Checked:
    """Load, validate fields and topology, and (optionally) import handlers and check that
    the dead-letter file can be written where the run will put it (`dead_letter`, default
    settings.dead_letter in the graph's home). Raises SpecError."""
    spec, lines = load_python(path, app_dirs) if is_python(path) else load_file(path)
    problems = topology.check(spec, lines)
    if imports and not any(p.severity == "error" for p in problems):
        root = home(path, app_dirs)
        for i, folder in enumerate(spec.path):
            if not (root / folder).is_dir():
                problems.append(lines.problem(
                    ("path", i), f"no folder {folder} ({root / folder}): paths are relative "
                    "to the graph file"))
        problems += check_imports(spec, lines, import_dirs(path, spec, app_dirs))
        place = dead_letter or str(home(path, app_dirs) / spec.settings.dead_letter)
        why = check_place(place)
        if why is not None:  # (found before any process starts, not inside one)
            problems.append(lines.problem(("settings", "dead_letter"),
                                          f"dead letters could not be written: {why}"))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise SpecError(errors)
    return Checked(spec, lines, [p for p in problems if p.severity == "warning"])
