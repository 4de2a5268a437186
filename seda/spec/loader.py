"""YAML front end: text -> GraphSpec, with every error pointing at file, line and field.

Theory of operation: PyYAML composes a node tree (which knows line numbers); we turn it into
plain data while recording the line of every field path, rejecting duplicate keys on the way.
pydantic then validates the data, and its errors are translated into `Problem`s whose line
comes from that map. No process is started and no handler imported here.
"""

from __future__ import annotations

import os
import re
import stat
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from seda.errors import Problem, SpecError, did_you_mean
from seda.spec.models import GraphSpec

FieldPath = tuple[str | int, ...]

# A graph file is a few kB. These bounds stop hostile or mistaken YAML (an alias bomb, deep
# nesting, a huge file or a device) before anything is built from it.
MAX_GRAPH_BYTES = 1 << 20
MAX_DEPTH = 64  # nested mappings and lists
MAX_VALUES = 100_000  # values built, aliases expanded


class LineMap:
    """Field path -> 1-based line in the source text."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[FieldPath, int] = {(): 1}

    def line(self, path: FieldPath) -> int:
        """The line of `path`, or of its closest ancestor that has one."""
        while path not in self.lines:
            path = path[:-1]
        return self.lines[path]

    def problem(self, path: FieldPath, message: str, severity: str = "error") -> Problem:
        return Problem(message, self.file, self.line(path), format_path(path), severity)


def format_path(path: FieldPath) -> str:
    """('stages', 'parse', 'to', 0) -> 'stages.parse.to[0]'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    """Turns a composed YAML node tree into plain data, filling a LineMap. Aliases are
    expanded here (the node tree shares them), so the values built are counted: a few
    hundred bytes of nested aliases would otherwise build billions."""

    def __init__(self, lines: LineMap) -> None:
        self.map = lines
        self.constructor = yaml.SafeLoader("")
        self.built = 0

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        self.node = node  # (for the line of a scalar that fails to convert)
        self.built += 1
        if self.built > MAX_VALUES:
            raise SpecError([Problem(f"invalid YAML: expands to over {MAX_VALUES:,} values "
                                     f"(aliases of aliases?)", self.map.file,
                                     node.start_mark.line + 1)])
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.map.lines[(*path, index)] = item.start_mark.line + 1
                items.append(self.build(item, (*path, index)))
            return items
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[Any, Any]:
        self.constructor.flatten_mapping(node)  # resolve YAML merge keys (<<)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.constructor.construct_object(key_node, deep=True)
            where = (*path, key) if isinstance(key, str) else path
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise SpecError([self.map.problem(path, f"expected a text key, got {key!r}")])
            if key in out:
                first = self.map.lines[where]
                noun = "stage name" if path == ("stages",) else "key"
                raise SpecError([Problem(f"duplicate {noun} '{key}' (first on line {first})",
                                         self.map.file, line, format_path(where))])
            self.map.lines[where] = line
            out[key] = self.build(value_node, where)
        return out


def _check_depth(text: str, file: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the event stream (which is not recursive)
    before composing (which is, and ends in a RecursionError some 500 levels down)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else None
                raise SpecError([Problem(f"invalid YAML: nested more than {MAX_DEPTH} levels "
                                         f"deep", file, line)])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def parse_yaml(text: str, file: str = "<graph>") -> tuple[Any, LineMap]:
    """YAML text -> (plain data, line map). Raises SpecError for syntax errors and for
    input past the bounds above (size, depth, values)."""
    lines = LineMap(file)
    if len(text) > MAX_GRAPH_BYTES:
        raise SpecError([Problem(f"a graph file of {len(text):,} characters is over the "
                                 f"{MAX_GRAPH_BYTES:,} a graph may have", file)])
    try:
        _check_depth(text, file)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context
        if "block" in str(reason):
            reason = f"{reason} (check the indentation)"
        raise SpecError([Problem(f"invalid YAML: {reason}", file, line)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(f"invalid YAML: {exc}", file, 1)]) from None
    if node is None:
        return None, lines
    builder = _Builder(lines)
    try:
        return builder.build(node, ()), lines
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise SpecError([Problem(f"invalid YAML: {exc.problem}", file, line)]) from None
    except ValueError as exc:  # a scalar Python will not convert (an int of 5,000 digits)
        raise SpecError([Problem(f"invalid YAML: {str(exc).partition(';')[0]}", file,
                                 builder.node.start_mark.line + 1)]) from None
    except RecursionError:
        raise SpecError([Problem("invalid YAML: nested too deeply", file, 1)]) from None


# ---------------------------------------------------------------- pydantic error translation

def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap(annotation: Any) -> Any:
    """Optional[X] -> X; leaves other annotations alone."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def model_at(path: FieldPath, root: type[BaseModel] = GraphSpec) -> type[BaseModel] | None:
    """The spec model that sits at `path` (to list its fields for 'did you mean')."""
    current: Any = root
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _unwrap(field.annotation)
        elif typing.get_origin(current) in (dict, list):
            current = _unwrap(typing.get_args(current)[-1])
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


_PLAIN = {
    "int_type": "expected an integer", "int_parsing": "expected an integer",
    "int_from_float": "expected an integer", "float_type": "expected a number",
    "float_parsing": "expected a number", "bool_type": "expected true or false",
    "bool_parsing": "expected true or false", "string_type": "expected text",
    "dict_type": "expected a mapping", "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping", "list_type": "expected a list",
}


def _message(error: Any, path: FieldPath) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    got = f", got {_describe(value)}"
    if kind == "extra_forbidden":
        parent = model_at(path[:-1])
        hint = did_you_mean(str(path[-1]), parent.model_fields) if parent else ""
        return f"unknown field '{path[-1]}'{hint}"
    if kind == "missing":
        return f"missing required field '{path[-1]}'"
    if kind in _PLAIN:
        return _PLAIN[kind] + got
    if kind == "literal_error":
        hint = did_you_mean(str(value), re.findall(r"'([^']*)'", str(ctx.get("expected"))))
        return f"expected one of {ctx.get('expected')}, got {_describe(value)}{hint}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"expected a number {bounds[kind]} {limit}{got}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s){got}"
    if kind == "string_pattern_mismatch" and path[-1:] == ("name",):
        return f"expected a name of letters, digits, '_' or '-' (starting with a letter){got}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}{got}"


def translate(exc: ValidationError, lines: LineMap) -> list[Problem]:
    """pydantic errors -> Problems with lines, one per error, in file order."""
    problems, misspelt = [], set()
    for error in exc.errors():
        path = tuple(error["loc"])
        message = _message(error, path)
        if error["type"] == "extra_forbidden" and "did you mean '" in message:
            misspelt.add((*path[:-1], message.rsplit("'", 2)[-2]))
        problems.append((path, error["type"], lines.problem(path, message)))
    # 'stage:' instead of 'stages:' is one mistake, not an unknown field plus a missing one
    kept = [p for path, kind, p in problems if not (kind == "missing" and path in misspelt)]
    return sorted(kept, key=lambda p: (p.line or 0, p.path))


def spec_from_data(data: Any, lines: LineMap) -> GraphSpec:
    """Plain data -> GraphSpec (field rules only). Raises SpecError."""
    if not isinstance(data, dict):
        raise SpecError([lines.problem((), f"expected a mapping at the top level, got "
                                            f"{_describe(data)}")])
    try:
        return GraphSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(translate(exc, lines)) from None


def load_text(text: str, file: str = "<graph>") -> tuple[GraphSpec, LineMap]:
    data, lines = parse_yaml(text, file)
    return spec_from_data(data, lines), lines


def read_graph_text(path: str | Path) -> str:
    """The text of a graph file: a regular file (opening never blocks: a FIFO would wait
    for a writer, /dev/zero never ends), at most MAX_GRAPH_BYTES, UTF-8. Raises SpecError."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise SpecError([Problem(f"cannot read graph file: {exc.strerror}", name)]) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise SpecError([Problem(f"cannot read graph file: {what}", name)])
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_GRAPH_BYTES + 1)
    if len(data) > MAX_GRAPH_BYTES:
        raise SpecError([Problem(f"a graph file is at most {MAX_GRAPH_BYTES:,} bytes", name)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(f"cannot read graph file: not UTF-8 ({exc.reason} at byte "
                                 f"{exc.start})", name)]) from None


def load_file(path: str | Path) -> tuple[GraphSpec, LineMap]:
    """Read and validate the fields of one graph file. Raises SpecError."""
    return load_text(read_graph_text(path), str(path))
